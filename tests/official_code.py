"""Import helpers for the authors' code (MIVRC/SSRDEFNet-PyTorch), used only by the parity tests.

Point SSRDEF_OFFICIAL_DIR at a checkout of the official repository; nothing of it is committed here. The official
files are imported under private module names, with their own `utils`/`common` in place of ours while they load.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

OFFICIAL_DIR = os.environ.get('SSRDEF_OFFICIAL_DIR')
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set SSRDEF_OFFICIAL_DIR to a checkout of MIVRC/SSRDEFNet-PyTorch to run parity tests')
_SHADOWED = ('utils', 'common', 'model', 'loss')
_cache: dict[str, types.ModuleType] = {}


@contextlib.contextmanager
def _official_imports(directory: Path):
    saved = {name: sys.modules.pop(name) for name in _SHADOWED if name in sys.modules}
    sys.path.insert(0, str(directory))
    try:
        try:
            import torchvision.transforms  # noqa: F401  (official model.py imports it but never uses it)
        except ImportError:
            stub = types.ModuleType('torchvision')
            stub.transforms = types.ModuleType('torchvision.transforms')
            sys.modules.setdefault('torchvision', stub)
            sys.modules.setdefault('torchvision.transforms', stub.transforms)
        yield
    finally:
        sys.path.remove(str(directory))
        for name in _SHADOWED:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def official_module(name: str) -> types.ModuleType:
    """The official `model` or `loss` module, imported once."""
    if name not in _cache:
        directory = Path(OFFICIAL_DIR)
        path = directory / f'{name}.py'
        if not path.is_file():
            raise FileNotFoundError(f'SSRDEF_OFFICIAL_DIR={directory} has no {name}.py')
        with _official_imports(directory):
            spec = importlib.util.spec_from_file_location(f'ssrdef_official_{name}', path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        _cache[name] = module
    return _cache[name]
