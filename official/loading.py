"""What the adapters of official/ share: loading the authors' files under private module names, and the uniform
handle (`OfficialRunner`) through which bench.py runs any of them."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@contextlib.contextmanager
def official_names(modules: dict[str, types.ModuleType]):
    """Make `modules` ({'package.module': module}) importable under those names for the duration, then restore
    sys.modules (shared by the official/ adapters: the authors' files import each other by package names)."""
    saved = {name: sys.modules[name] for name in modules if name in sys.modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in modules:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def load_module(name: str, path: Path, origin: str) -> types.ModuleType:
    """Execute the file `path` as a module named `name`; `origin` (e.g. 'NAFNET_OFFICIAL_DIR=/x') names the checkout
    in the error when the file is missing."""
    if not path.is_file():
        raise FileNotFoundError(f'{origin} has no {path}')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------
# bench.py's uniform handle on an official implementation (each official/<network>.py module provides one)

@dataclass
class OfficialRunner:
    """An official network with the same weights as ours: `infer(left, right)` runs its evaluation forward,
    `train_loss(left, right, hr_left, hr_right)` its training forward and loss (a scalar tensor)."""

    model: torch.nn.Module
    infer: Callable
    train_loss: Callable


