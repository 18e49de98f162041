"""Shared helpers: seeding, checkpoint save/load, metrics (pure functions) and MATLAB-compatible resizing."""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

# Version of the project's checkpoint format (the dict written by `save_checkpoint`).
CHECKPOINT_VERSION = 1
# Prefixes that wrappers add to state_dict keys: DataParallel/DDP ('module.') and torch.compile ('_orig_mod.').
WRAPPER_PREFIXES = ('module.', '_orig_mod.')


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

    Accepts the authors' release (`{'epoch', 'state_dict'}` with 'module.' keys), the project's own checkpoints
    (see `save_checkpoint`) and a bare state_dict. Raises FileNotFoundError / ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path}: cannot read this checkpoint ({type(err).__name__}: {err}). The file may be "
                         f"truncated (an interrupted download or copy) or not a PyTorch checkpoint") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
        state_dict = checkpoint['state_dict']
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        state_dict, checkpoint = checkpoint, {'state_dict': checkpoint}
    else:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: not a model checkpoint: expected a dict with a 'state_dict' entry or a bare "
                         f"state_dict, found {keys}")
    return strip_wrapper_prefixes(state_dict), checkpoint


def infer_scale_factor(state_dict: dict) -> int | None:
    """SR scale of an SSRDE-FNet state_dict, from its pixel-shuffle projection (64*s*s output channels)."""
    weight = state_dict.get('upscale.0.weight')
    if weight is None or weight.dim() != 4:
        return None
    return int(round((weight.shape[0] / weight.shape[1]) ** 0.5))


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load weights from `path` into `model` strictly; returns the whole checkpoint dict (epoch, args, ...).

    Official and project checkpoints both work. Only the BatchNorm `num_batches_tracked` counters may be missing
    (checkpoints written by PyTorch < 0.4.1); anything else that does not fit raises a ValueError that says what.
    """
    state_dict, checkpoint = read_checkpoint(path)
    target = unwrap_model(model)
    expected = target.state_dict()

    want_scale, have_scale = getattr(target, 'scale', None), infer_scale_factor(state_dict)
    if want_scale is not None and have_scale is not None and want_scale != have_scale:
        raise ValueError(f"{path} holds x{have_scale} weights but the model was built for x{want_scale}; "
                         f"use --scale_factor {have_scale}")
    missing = [k for k in expected if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit {type(target).__name__}: {len(missing)} missing keys "
                         f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}. Is it a checkpoint of "
                         f"another model?")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in state_dict.items() if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{path} does not fit {type(target).__name__}: {len(wrong)} tensors have other shapes, "
                         f"e.g. {wrong[:3]}")
    for key, value in expected.items():  # only num_batches_tracked can be absent here
        state_dict.setdefault(key, value)
    target.load_state_dict(state_dict, strict=True)
    return checkpoint


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> None:
    """Atomically write `{'state_dict': <unwrapped weights>, 'version': CHECKPOINT_VERSION, **extra}` to `path`.

    `extra` holds plain data only (epoch, args as a dict, optimizer/scheduler state_dicts, metrics) so that
    `torch.load(weights_only=True)` reads it. The file is written next to `path` and renamed over it, so a kill
    at any moment leaves either the old or the new checkpoint, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {'state_dict': unwrap_model(model).state_dict(), 'version': CHECKPOINT_VERSION, **extra}
    tmp = path.with_name(path.name + '.tmp')
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
