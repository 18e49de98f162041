"""Checkpoint I/O of the zoo's networks: read any supported file (ours or an authors' release), load it strictly
with errors that say what does not fit, build a network from it (`load_model`), and write ours atomically
(`save_checkpoint`)."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import socket
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from models import build_model, model_entry
from models.registry import ModelEntry, option_values

# Version of the project's checkpoint format (the dict written by `save_checkpoint`).
CHECKPOINT_VERSION = 1
# Prefixes that wrappers add to state_dict keys: DataParallel/DDP ('module.') and torch.compile ('_orig_mod.').
WRAPPER_PREFIXES = ('module.', '_orig_mod.')
# Where checkpoint dicts keep their weights: ours and the SSRDE-FNet/iPASSR releases ('state_dict'), BasicSR/NAFSSR
# releases ('params'). BasicSR files of EMA-trained networks hold 'params_ema' beside 'params'; the authors' test
# ymls load the EMA weights (SwinFIRSSR: param_key_g 'params_ema'), so it is taken first.
WEIGHT_KEYS = ('state_dict', 'params_ema', 'params', 'model_state_dict')   # ..., ISRResCNet's {'model_state_dict'}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    """Remove 'module.' / '_orig_mod.' prefixes (official checkpoints are saved from DataParallel)."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a checkpoint file -> (state_dict without wrapper prefixes, the whole checkpoint dict).

    Accepts the project's own checkpoints (see `save_checkpoint`), the authors' release formats of the zoo
    (`{'epoch', 'state_dict'}` of SSRDE-FNet and iPASSR, with or without 'module.' keys; BasicSR's `{'params': ...}`
    of NAFSSR) and a bare state_dict. Raises FileNotFoundError / ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} is a folder, not a checkpoint file' if path.is_dir() else
                                f'checkpoint not found: {path}')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(unreadable_file_message(path, err)) from None
    key = next((k for k in WEIGHT_KEYS if isinstance(checkpoint, dict) and isinstance(checkpoint.get(k), dict)), None)
    if key is not None:
        state_dict = checkpoint[key]
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        state_dict, checkpoint = checkpoint, {'state_dict': checkpoint}
    else:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: not a model checkpoint: expected a dict with a 'state_dict' or 'params' entry or a "
                         f"bare state_dict, found {keys}")
    return strip_wrapper_prefixes(state_dict), checkpoint


def unreadable_file_message(path: str | os.PathLike, err: BaseException, what: str = 'checkpoint') -> str:
    """One line, naming the file, for a `torch.load(weights_only=True)` that failed. A file that pickles Python
    objects besides tensors is refused by name of the object, without torch's advice to load it with
    weights_only=False (which would run code from the file: a checkpoint of ours never needs it)."""
    message = str(err)
    first = next((line.strip() for line in message.splitlines() if line.strip()), '')
    if isinstance(err, pickle.UnpicklingError) and 'Weights only load failed' in message:
        found = re.search(r'Unsupported global: GLOBAL (\S+)', message)
        if found:
            return (f'{path}: this {what} holds pickled Python objects ({found.group(1)}) besides tensors, which are '
                    f'not loaded from a file because unpickling them can run code; save the weights alone, e.g. '
                    f'torch.save({{"state_dict": model.state_dict()}}, file)')
        # anything else the safe unpickler met is not a pickle at all (a text file, garbage): its own words only
        detail = re.search(r'WeightsUnpickler error:\s*(\S[^\n]*)', message)
        first = detail.group(1).strip() if detail else 'not a pickle'
    return (f'{path}: cannot read this {what} ({type(err).__name__}: {first[:200]}). The file may be truncated '
            f'(an interrupted download or copy) or not a PyTorch {what}')


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks): identifies the exact weights a run used (e.g. its teachers)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def infer_scale_factor(state_dict: dict) -> int | None:
    """SR scale of a zoo state_dict, from its pixel-shuffle projection: SSRDE-FNet and iPASSR `upscale.0` (64 -> 64 s^2
    channels), NAFSSR `up.0` (C -> 3 s^2); DSDMSR from its x2 stages (`stages.{k}.units.*`, s = 2^stages). None for
    other layouts (the strict load then names the shapes)."""
    stages = {int(k.split('.')[1]) for k in state_dict if k.startswith('stages.') and '.units.' in k}
    if stages and any(k.startswith('fusion.') for k in state_dict):
        return 2 ** (max(stages) + 1)
    for key, channels in (('upscale.0.weight', None), ('up.0.weight', 3)):
        weight = state_dict.get(key)
        if weight is not None and weight.dim() == 4:
            ratio = weight.shape[0] / (channels or weight.shape[1])
            scale = int(round(ratio ** 0.5))
            return scale if scale * scale == ratio else None
    return None


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Keys of the floating-point tensors of `state_dict` that hold a NaN or an Inf."""
    return [k for k, v in state_dict.items() if isinstance(v, Tensor) and v.is_floating_point()
            and not torch.isfinite(v).all()]


def load_state_dict_checked(model: nn.Module, state_dict: dict, source: str | os.PathLike) -> None:
    """Load `state_dict` into `model` strictly, with errors that say what does not fit and where it came from.

    Only the BatchNorm `num_batches_tracked` counters may be missing (checkpoints written by PyTorch < 0.4.1).
    """
    target = unwrap_model(model)
    expected = target.state_dict()
    want_scale, have_scale = getattr(target, 'scale', None), infer_scale_factor(state_dict)
    if want_scale is not None and have_scale is not None and want_scale != have_scale:
        raise ValueError(f"{source} holds x{have_scale} weights but the model was built for x{want_scale}; "
                         f"use --scale_factor {have_scale}")
    missing = [k for k in expected if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{source} does not fit {type(target).__name__}: {len(missing)} missing keys "
                         f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}. Is it a checkpoint of "
                         f"another model?")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in state_dict.items() if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{source} does not fit {type(target).__name__}: {len(wrong)} tensors have other shapes, "
                         f"e.g. {wrong[:3]}")
    bad = non_finite_tensors(state_dict)
    if bad:
        raise ValueError(f"{source} holds non-finite weights (NaN or Inf) in {len(bad)} tensors, e.g. {bad[:3]}: the "
                         f"run that wrote it diverged; use an earlier checkpoint")
    state_dict = dict(state_dict)
    for key, value in expected.items():  # only num_batches_tracked can be absent here
        state_dict.setdefault(key, value)
    target.load_state_dict(state_dict, strict=True)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load weights from `path` into `model` strictly; returns the whole checkpoint dict (epoch, args, ...).

    Reads the authors' release and the project's own checkpoints; see `load_state_dict_checked` for the errors.
    """
    state_dict, checkpoint = read_checkpoint(path)
    load_state_dict_checked(model, state_dict, path)
    return checkpoint


def describe_checkpoint(path: str | os.PathLike, checkpoint: dict) -> str:
    """One line saying which weights these are, for the header of every report."""
    args = checkpoint.get('args') or {}
    if checkpoint.get('demo'):
        kind = 'project demo checkpoint (NOT the paper\'s weights)'
    elif 'version' in checkpoint:
        kind = f"project checkpoint of {args.get('model', 'ssrdefnet')}, {checkpoint.get('epoch', '?')} epochs"
        if args.get('trainset'):
            kind += f", trained on {args['trainset']}"
    elif 'epoch' in checkpoint:
        kind = f"authors' release format, epoch {checkpoint['epoch']}"
    elif 'params' in checkpoint:
        kind = "authors' release format (BasicSR 'params')"
    else:
        kind = 'bare state_dict'
    return f'{path} ({kind})'


def checkpoint_model_name(checkpoint: dict) -> str | None:
    """The zoo name of the network a project checkpoint was trained as (None for other files)."""
    args = checkpoint.get('args') or {}
    return args.get('model', 'ssrdefnet') if 'version' in checkpoint else None


def results_name(path: str | os.PathLike, checkpoint: dict, scale: int) -> str:
    """The folder name of a checkpoint's evaluation results: '<file>_x<s>' for a file named by hand (an authors'
    release, an --export); for the files train.py names itself (last.pth, best.pth, epoch_NNN.pth) the run and the
    network too, '<network>_<run>_<file>', so the runs of a checkpoint folder never share one (the run name
    train.py gives already holds both the network and the scale: '<network>_x<s>_<trainset>_last')."""
    path = Path(path)
    stem = path.name.split('.')[0]
    args = checkpoint.get('args') or {}
    if 'version' not in checkpoint or not (stem in ('last', 'best') or stem.startswith('epoch_')):
        return f'{stem}_x{scale}'
    run = args.get('run_name') or path.resolve().parent.name
    model = checkpoint_model_name(checkpoint)
    name = run if model in run else f'{model}_{run}'
    return f'{name}_{stem}' if f'x{scale}' in name else f'{name}_x{scale}_{stem}'


def weights_options(entry: ModelEntry, checkpoint: dict) -> dict:
    """The options of `entry` that a checkpoint file fixes: those a project checkpoint recorded (Option.of_weights),
    or those an authors' release format implies (ModelEntry.release_options, e.g. BGR input for BasicSR 'params'
    files). They win over the command line wherever the weights are loaded."""
    if checkpoint_model_name(checkpoint) is None:
        return dict(entry.release_options(checkpoint))
    stored = checkpoint.get('args') or {}
    return {o.name: stored[o.name] for o in entry.options if o.of_weights and o.name in stored}


def load_model(path: str | os.PathLike, scale_factor: int, device: str | torch.device = 'cpu', name: str | None = None,
               options: dict | None = None) -> tuple[nn.Module, dict]:
    """Build network `name` of the zoo for `scale_factor`, load `path` into it, move it to `device`, eval mode.

    `name` None: the network a project checkpoint records, else SSRDE-FNet. `options`: values of command-line options
    (e.g. vars(args)); the network's own are used. The options that define what the weights compute come from the
    file: recorded in a project checkpoint's args, or implied by an authors' release format (e.g. NAFSSR's BGR
    input); they win over `options`. Returns (model, checkpoint dict); `model.zoo_name` is the network's name.
    """
    state_dict, checkpoint = read_checkpoint(path)
    recorded = checkpoint_model_name(checkpoint)
    if name is not None and recorded is not None and recorded != name:
        raise ValueError(f"{path} is a checkpoint of {recorded}, not {name}; use --model {recorded}")
    name = name or recorded or 'ssrdefnet'
    entry = model_entry(name)
    options = {**option_values(entry, options or {}), **weights_options(entry, checkpoint)}
    model = build_model(name, scale_factor, **options)
    load_state_dict_checked(model, state_dict, path)
    return model.to(device).eval(), checkpoint


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> None:
    """Atomically write `{'state_dict': <unwrapped weights>, 'version': CHECKPOINT_VERSION, **extra}` to `path`.

    `extra` holds plain data only (epoch, args as a dict, optimizer/scheduler state_dicts, metrics) so that
    `torch.load(weights_only=True)` reads it. The file is written next to `path` under a name of this writer's own
    (host and process) and renamed over it, so a kill at any moment leaves either the old or the new checkpoint,
    never a truncated one, and two writers never share a temporary file. A write that fails (full disk, read-only
    folder) removes its partial file and raises OSError saying so; the old checkpoint stays.
    """
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{socket.gethostname()}.{os.getpid()}.tmp')
    checkpoint = {'state_dict': unwrap_model(model).state_dict(), 'version': CHECKPOINT_VERSION, **extra}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        raise OSError(f'cannot write checkpoint {path} ({type(err).__name__}: {str(err)[:200]}); is the disk full or '
                      f'the folder not writable? The previous checkpoint, if any, is unchanged') from None
