"""Shared helpers: seeding, checkpoint save/load, metrics (pure functions) and MATLAB-compatible resizing."""
from __future__ import annotations

import json
import os
import pickle
import random
import socket
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

# Version of the project's checkpoint format (the dict written by `save_checkpoint`).
CHECKPOINT_VERSION = 1
# Prefixes that wrappers add to state_dict keys: DataParallel/DDP ('module.') and torch.compile ('_orig_mod.').
WRAPPER_PREFIXES = ('module.', '_orig_mod.')
# Where checkpoint dicts keep their weights: ours and the SSRDE-FNet/iPASSR releases ('state_dict'), BasicSR/NAFSSR
# releases ('params'). BasicSR files of EMA-trained networks hold 'params_ema' beside 'params'; the authors' test
# ymls load the EMA weights (SwinFIRSSR: param_key_g 'params_ema'), so it is taken first.
WEIGHT_KEYS = ('state_dict', 'params_ema', 'params', 'model_state_dict')   # ..., ISRResCNet's {'model_state_dict'}


# ----------------------------------------------------------------------------------------------------------------
# Scripts: one way to fail. Every script's `if __name__ == '__main__'` is `sys.exit(run_script(main))`.

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(ValueError):
    """A bad command-line argument found after parsing (a value out of range, a combination that cannot work):
    exit status 2, as argparse's own errors."""


def run_script(main, argv=None) -> int:
    """The top-level handler of every script: `main(argv)` and its exit status. What the user can act on is one
    line on stderr, `error: ...`, never a traceback: UsageError exits 2 (argparse's own errors already do);
    a missing or unreadable file, bad data, no memory, a non-finite value or a full disk exits 1; Ctrl-C exits 130.
    Anything else is a bug: one line naming it, exit 1. `--debug` anywhere on the command line (or SR_DEBUG=1)
    re-raises every error with its traceback."""
    import sys
    args = sys.argv[1:] if argv is None else list(argv)
    debug = '--debug' in args or os.environ.get('SR_DEBUG') == '1'
    try:
        status = main([a for a in args if a != '--debug'])
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print('interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001  the one place that turns exceptions into messages
        if debug:
            raise
        message = str(err).strip() or type(err).__name__
        if isinstance(err, UsageError):
            print(f'error: {message}', file=sys.stderr)
            return EXIT_USAGE
        known = isinstance(err, (OSError, ValueError, MemoryError, torch.OutOfMemoryError)) or (
            isinstance(err, RuntimeError) and 'alloc' in message.lower())      # torch's CPU out-of-memory
        if known:
            print(f'error: {message}', file=sys.stderr)
        else:
            print(f'error: unexpected {type(err).__name__}: {message} (a bug: rerun with --debug for the traceback '
                  f'and report it)', file=sys.stderr)
        return EXIT_RUNTIME
    return status if isinstance(status, int) else 0


def worker_error_message(err: BaseException) -> str:
    """The message of an error raised in a DataLoader worker, without the worker's traceback that torch pastes into
    it ('Caught ValueError in DataLoader worker process 0. Original Traceback ...'): the original last line."""
    message = str(err)
    if 'Original Traceback' in message:
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(': ', 1)[1] if ': ' in last and last.split(': ', 1)[0].isidentifier() else last
    return message


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded(int, text, 1, 'an integer >= 1')


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded(int, text, 0, 'an integer >= 0')


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _bounded(float, text, 0.0, 'a finite number >= 0')


def _bounded(kind, text: str, low, what: str):
    import argparse
    import math
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not {what}') from None
    if value < low or (kind is float and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f'{text!r} is not {what}')
    return value


# ----------------------------------------------------------------------------------------------------------------
# Reproducibility

def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: derive each worker's NumPy/random seeds from its torch seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# Devices

def add_device_args(parser) -> None:
    """--device (default: cuda when available) and --amp, shared by every script."""
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (autocast) on CUDA; ignored on CPU')
    parser.add_argument('--debug', action='store_true',
                        help='show the Python traceback of an error (default: one line, error: ...)')


def resolve_device(name: str) -> torch.device:
    """torch.device for `name`, with a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f'--device {name!r} is not a valid torch device ({err})') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {name} asked for CUDA, but no CUDA device is available; use --device cpu')
    return device


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints

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
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path}: cannot read this checkpoint ({type(err).__name__}: {err}). The file may be "
                         f"truncated (an interrupted download or copy) or not a PyTorch checkpoint") from None
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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks): identifies the exact weights a run used (e.g. its teachers)."""
    import hashlib
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


def load_model(path: str | os.PathLike, scale_factor: int, device: str | torch.device = 'cpu', name: str | None = None,
               options: dict | None = None) -> tuple[nn.Module, dict]:
    """Build network `name` of the zoo for `scale_factor`, load `path` into it, move it to `device`, eval mode.

    `name` None: the network a project checkpoint records, else SSRDE-FNet. `options`: values of command-line options
    (e.g. vars(args)); the network's own are used. The options that define what the weights compute come from the
    file: recorded in a project checkpoint's args, or implied by an authors' release format (e.g. NAFSSR's BGR
    input); they win over `options`. Returns (model, checkpoint dict); `model.zoo_name` is the network's name.
    """
    from models import build_model, model_entry  # utils is imported by models' users; keep imports one-way
    from models.registry import option_values

    state_dict, checkpoint = read_checkpoint(path)
    recorded = checkpoint_model_name(checkpoint)
    if name is not None and recorded is not None and recorded != name:
        raise ValueError(f"{path} is a checkpoint of {recorded}, not {name}; use --model {recorded}")
    name = name or recorded or 'ssrdefnet'
    entry = model_entry(name)
    options = option_values(entry, options or {})
    if recorded is None:
        options.update(entry.release_options(checkpoint))
    else:
        stored = checkpoint.get('args') or {}
        options.update({o.name: stored[o.name] for o in entry.options if o.of_weights and o.name in stored})
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


# ----------------------------------------------------------------------------------------------------------------
# MATLAB-compatible resizing (the stereo-SR test and training sets are made with MATLAB's imresize)

def _matlab_cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's bicubic kernel: Keys' cubic convolution with a = -0.5."""
    ax = np.abs(x)
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def resize_contributions(in_length: int, out_length: int, scale: float,
                         antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_length, P) and 0-based source indices (out_length, P) of MATLAB's imresize along one axis.

    Output pixel j (1-based) is centred at u = j/scale + (1 - 1/scale)/2 in input coordinates. When shrinking with
    antialiasing the kernel is stretched by 1/scale. Weights are normalised to sum 1; indices outside the image are
    mirrored (symmetric padding); taps whose weight is zero for every output pixel are dropped, as MATLAB does.
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        kernel = lambda x: scale * _matlab_cubic(scale * x)  # noqa: E731
        kernel_width /= scale
    else:
        kernel = _matlab_cubic
    u = np.arange(1, out_length + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(np.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)                      # 1-based, may fall outside [1, in_length]
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _resize_axis(img: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Apply precomputed contributions along `axis`, accumulating the taps in order in float64."""
    src = np.moveaxis(img, axis, 0).astype(np.float64)
    shape = (weights.shape[0],) + (1,) * (src.ndim - 1)
    out = np.zeros((weights.shape[0],) + src.shape[1:], dtype=np.float64)
    for k in range(weights.shape[1]):
        out += weights[:, k].reshape(shape) * src[indices[:, k]]
    if img.dtype == np.uint8:  # MATLAB rounds (half away from zero) and saturates after every axis
        out = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float | None = None, output_shape: tuple[int, int] | None = None,
             antialiasing: bool = True) -> np.ndarray:
    """MATLAB `imresize(img, scale, 'bicubic')` for HxW or HxWxC NumPy images.

    uint8 in -> uint8 out, rounded after each axis as MATLAB does; float in -> float out (computed in float64,
    returned in the input dtype, not clipped). Output size is ceil(scale * size) unless `output_shape` is given.
    The axis with the smaller scale is resized first (rows first on ties), as in MATLAB.
    """
    if img.ndim not in (2, 3):
        raise ValueError(f'imresize expects an HxW or HxWxC image, got shape {img.shape}')
    if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f'imresize supports uint8 and floating-point images, got {img.dtype}')
    if (scale is None) == (output_shape is None):
        raise ValueError('give exactly one of scale and output_shape')
    if output_shape is None:
        scales = (float(scale), float(scale))
        output_shape = tuple(int(np.ceil(s * n)) for s, n in zip(scales, img.shape[:2]))
    else:
        scales = tuple(o / n for o, n in zip(output_shape, img.shape[:2]))
    out = img
    for axis in ((0, 1) if scales[0] <= scales[1] else (1, 0)):
        weights, indices = resize_contributions(img.shape[axis], output_shape[axis], scales[axis], antialiasing)
        out = _resize_axis(out, axis, weights, indices)
    return out if out.dtype == img.dtype else out.astype(img.dtype)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom rows and right columns so that height and width are multiples of `scale` (MATLAB modcrop)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


# ----------------------------------------------------------------------------------------------------------------
# Metrics: pure functions on tensors, one value per image over the last three (C, H, W) dimensions.

# Columns removed from the left of the left view for the "Left" scores: they have no match in the right view
# (iPASSR evaluation.m `stereo_boundary`, official test_sr.py `[:, :, :, 64:]`), the same at x2 and x4.
STEREO_BOUNDARY = 64
# SSIM of iPASSR's evaluation.m: 7x7 averaging window ('valid' filtering), K = (0.01, 0.03), L = 1.
SSIM_WINDOW = 7
SSIM_K = (0.01, 0.03)
# KITTI D1 outlier: error > 3 px and > 5 % of the true disparity.
D1_PIXELS, D1_RELATIVE = 3.0, 0.05


def quantize(img: Tensor) -> Tensor:
    """What an 8-bit PNG stores: clamp to [0, 1], scale to 255, round to nearest (not truncate), back to [0, 1]."""
    return torch.floor(img.clamp(0, 1) * 255 + 0.5) / 255  # half up, as data.readers.write_image


def psnr(sr: Tensor, hr: Tensor, data_range: float = 1.0, crop_left: int = 0) -> Tensor:
    """PSNR in dB on all channels, (..., C, H, W) -> (...). 10 log10(range^2 / MSE), MSE over C*H*W in float64.

    crop_left: columns removed from the left first (STEREO_BOUNDARY for the official "Left" score). No Y channel,
    no other border crop. Identical images give inf.
    """
    if sr.shape != hr.shape:
        raise ValueError(f'psnr: shapes differ, {tuple(sr.shape)} vs {tuple(hr.shape)}')
    diff = sr[..., crop_left:].double() - hr[..., crop_left:].double()
    mse = diff.pow(2).mean(dim=(-3, -2, -1))
    return 10 * torch.log10(data_range ** 2 / mse)


def ssim(sr: Tensor, hr: Tensor, data_range: float = 1.0, crop_left: int = 0, window: int = SSIM_WINDOW,
         sample_covariance: bool = False) -> Tensor:
    """SSIM with the convention of iPASSR's evaluation.m, (..., C, H, W) -> (...).

    Per channel: box (averaging) window `window` x `window`, statistics over 'valid' positions only (no padding),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, mean of the SSIM map; then the mean over channels. Computed in float64.
    `sample_covariance`: (co)variances with the n/(n-1) correction, n = window^2, as scikit-image's
    `structural_similarity` by default (NAFSSR's metric); with it, this equals skimage's value with
    `win_size=window, channel_axis`, whose mean also leaves out the (window-1)/2 border.
    """
    if sr.shape != hr.shape:
        raise ValueError(f'ssim: shapes differ, {tuple(sr.shape)} vs {tuple(hr.shape)}')
    x = sr[..., crop_left:].double()
    y = hr[..., crop_left:].double()
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    if h < window or w < window:
        raise ValueError(f'ssim needs images of at least {window}x{window}, got {h}x{w}')
    x, y = x.reshape(-1, c, h, w), y.reshape(-1, c, h, w)

    def local_mean(t):
        return torch.nn.functional.avg_pool2d(t, window, stride=1)

    c1, c2 = (SSIM_K[0] * data_range) ** 2, (SSIM_K[1] * data_range) ** 2
    mu_x, mu_y = local_mean(x), local_mean(y)
    norm = window * window / (window * window - 1) if sample_covariance else 1.0
    var_x = norm * (local_mean(x * x) - mu_x ** 2)
    var_y = norm * (local_mean(y * y) - mu_y ** 2)
    cov = norm * (local_mean(x * y) - mu_x * mu_y)
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-3, -2, -1)).reshape(lead)


def _masked_errors(pred: Tensor, gt: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    if not (pred.shape == gt.shape == mask.shape):
        raise ValueError(f'disparity metrics: shapes differ, pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, '
                         f'mask {tuple(mask.shape)}')
    mask = mask.bool()
    if not mask.any():
        raise ValueError('disparity metrics: the mask selects no pixel')
    return (pred[mask].double() - gt[mask].double()).abs(), gt[mask].double()


def epe(pred: Tensor, gt: Tensor, mask: Tensor) -> float:
    """End-point error: mean |pred - gt| in pixels over the pixels where `mask` is true."""
    error, _ = _masked_errors(pred, gt, mask)
    return error.mean().item()


def print_report(lines: list[str], results: dict, json_path: Path | None) -> None:
    """The evaluation scripts' ending: the markdown report on stdout, and `results` as JSON at `json_path` (its
    folder made) when one is given, saying where."""
    print('\n'.join(lines))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2))
        print(f'JSON: {json_path}')


def rmse(pred: Tensor, gt: Tensor, mask: Tensor) -> float:
    """Root mean squared error in pixels over the pixels where `mask` is true (computed in float64)."""
    if not (pred.shape == gt.shape == mask.shape):
        raise ValueError(f'rmse: shapes differ, pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, '
                         f'mask {tuple(mask.shape)}')
    mask = mask.bool()
    if not mask.any():
        raise ValueError('rmse: the mask selects no pixel')
    return (pred[mask].double() - gt[mask].double()).pow(2).mean().sqrt().item()


def bad_pixel_rate(pred: Tensor, gt: Tensor, mask: Tensor, threshold: float) -> float:
    """Fraction of masked pixels whose error exceeds `threshold` pixels (e.g. >1 px, >3 px)."""
    error, _ = _masked_errors(pred, gt, mask)
    return (error > threshold).double().mean().item()


def d1_error(pred: Tensor, gt: Tensor, mask: Tensor) -> float:
    """KITTI D1: fraction of masked pixels with error > 3 px and > 5 % of the true disparity."""
    error, truth = _masked_errors(pred, gt, mask)
    return ((error > D1_PIXELS) & (error > D1_RELATIVE * truth.abs())).double().mean().item()


# ----------------------------------------------------------------------------------------------------------------
# Pictures: colour-coded maps and figures (matplotlib, headless)

def pyplot():
    """matplotlib.pyplot with the headless Agg backend."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str = 'magma',
             invalid: np.ndarray | None = None) -> np.ndarray:
    """HxW map -> HxWx3 uint8 colour image with a fixed value range; `invalid` pixels (and non-finite ones) black."""
    import matplotlib
    normalised = (np.nan_to_num(values.astype(np.float64), nan=vmin) - vmin) / max(vmax - vmin, 1e-12)
    rgb = matplotlib.colormaps[cmap](np.clip(normalised, 0, 1))[:, :, :3]
    bad = ~np.isfinite(values) if invalid is None else (invalid | ~np.isfinite(values))
    rgb[bad] = 0
    return np.floor(rgb * 255 + 0.5).astype(np.uint8)


def save_figure(path: str | os.PathLike, panels: list[dict], columns: int = 2, title: str | None = None) -> None:
    """Grid of panels. A panel is {'title', 'image': HxWx3 in [0, 1]} or
    {'title', 'map': HxW, 'vmin', 'vmax', 'cmap', 'label'} (drawn with a colour bar labelled `label`)."""
    plt = pyplot()
    rows = (len(panels) + columns - 1) // columns
    first = panels[0].get('image', panels[0].get('map'))
    aspect = first.shape[0] / first.shape[1]
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 6 * aspect * rows + 0.8), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        ax.set_title(panel['title'], fontsize=10)
        ax.axis('off')
        if 'image' in panel:
            ax.imshow(np.clip(panel['image'], 0, 1))
        else:
            shown = np.ma.masked_invalid(panel['map'].astype(np.float64))
            im = ax.imshow(shown, cmap=panel.get('cmap', 'magma'), vmin=panel['vmin'], vmax=panel['vmax'])
            fig.colorbar(im, ax=ax, fraction=0.046 * aspect if aspect < 1 else 0.046, pad=0.02,
                         label=panel.get('label', ''))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
