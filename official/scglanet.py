"""Import helpers for the authors' SCGLANet code (fzuzyb/SCGLANet), used by tests/test_scglanet_parity.py and
bench.py.

Point SCGLANET_OFFICIAL_DIR at a checkout root of the official repository; nothing of it is committed here. Only
`basicsr/archs/scglanet_arch.py` is loaded, under a private module name: importing the `basicsr` package would pull in
cv2, lmdb and the rest of BasicSR, so while it loads `basicsr.utils.registry` is a stub whose ARCH_REGISTRY.register()
returns the class unchanged. The self-ensemble is the authors' `StereoSRModel.test_selfensemble`
(basicsr/models/stereo_sr_model.py), read from the file and run on a stand-in for the model object.
"""
from __future__ import annotations

import ast
import contextlib
import os
import textwrap
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from official.loading import load_module, official_names

OFFICIAL_ENV = 'SCGLANET_OFFICIAL_DIR'
OFFICIAL_DIR = os.environ.get(OFFICIAL_ENV)
OFFICIAL_NAMES = ('scglanet',)   # what bench.py can compare with
requires_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason='set SCGLANET_OFFICIAL_DIR to a checkout of fzuzyb/SCGLANet to run parity tests')
_cache: dict[str, object] = {}


def official_arch() -> types.ModuleType:
    """The official scglanet_arch module, imported once."""
    if 'arch' not in _cache:
        if not OFFICIAL_DIR:
            raise RuntimeError(f'{OFFICIAL_ENV} is not set')
        registry = types.ModuleType('basicsr.utils.registry')
        registry.ARCH_REGISTRY = types.SimpleNamespace(register=lambda *args, **kwargs: (lambda cls: cls))
        stubs = {'basicsr': types.ModuleType('basicsr'), 'basicsr.utils': types.ModuleType('basicsr.utils'),
                 'basicsr.utils.registry': registry}
        with official_names(stubs):
            _cache['arch'] = load_module('scglanet_official_arch',
                                         Path(OFFICIAL_DIR) / 'basicsr' / 'archs' / 'scglanet_arch.py',
                                         f'{OFFICIAL_ENV}={OFFICIAL_DIR}')
    return _cache['arch']


def official_scglanet(width: int, num_blocks: tuple[int, ...], temperature: float = 2.0,
                      drop_path_rate: float = 0.0, tlc: bool = True) -> nn.Module:
    """The authors' `SCGLANet` (x4, TLC converted at construction; the constructor consumes the global RNG and leaves
    the model in eval mode) or, with tlc=False, the `SCGLASRNet` it derives from (global pooling; no construction
    forward, left in eval mode too). It takes the 6-channel stack (B, 6, H, W), RGB per view, and returns
    (B, 6, 4H, 4W)."""
    arch = official_arch()
    if not tlc:
        return arch.SCGLASRNet(up_scale=4, width=width, num_blks=list(num_blocks), img_channel=3,
                               drop_path_rate=drop_path_rate, drop_out_rate=0.0, fusion_from=-1, fusion_to=1000,
                               dual=True, temperature=temperature).eval()
    return arch.SCGLANet(up_scale=4, width=width, num_blks=list(num_blocks), drop_path_rate=drop_path_rate,
                         train_size=[1, 6, 30, 90], drop_out_rate=0.0, temperature=temperature)


def official_forward(model: nn.Module, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One official forward on a pair of (B, 3, H, W) views; returns the two SR views."""
    out = model(torch.cat([left, right], dim=1))
    return out[:, :3], out[:, 3:]


def _selfensemble_function():
    if 'ensemble' not in _cache:
        path = Path(OFFICIAL_DIR) / 'basicsr' / 'models' / 'stereo_sr_model.py'
        source = path.read_text()
        tree = ast.parse(source)
        model_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == 'StereoSRModel')
        method = next(n for n in model_class.body
                      if isinstance(n, ast.FunctionDef) and n.name == 'test_selfensemble')
        namespace = {'torch': torch}
        exec(textwrap.dedent(ast.get_source_segment(source, method)), namespace)  # noqa: S102 (the authors' code)
        _cache['ensemble'] = namespace['test_selfensemble']
    return _cache['ensemble']


def official_self_ensemble(model: nn.Module, left: torch.Tensor, right: torch.Tensor):
    """The authors' 6-pass test-time self-ensemble on a pair of (1, 3, H, W) views (it averages over the batch, so
    batch 1 only; it converts through NumPy into tensors of the default dtype). Returns the two SR views."""
    state = types.SimpleNamespace(lq=torch.cat([left, right], dim=1), net_g=model, device=left.device)
    _selfensemble_function()(state)
    model.eval()   # the official method leaves net_g in training mode
    return state.output[:, :3], state.output[:, 3:]


def official_runner(name: str, scale: int, ours: nn.Module):
    """bench.py's handle (official.loading.OfficialRunner) on the official model with `ours`' weights, configured as
    `ours` is: evaluation as the test yml (`ensemble: true`: the authors' 6-pass self-ensemble, batch 1) or, where
    `ours` has its self-ensemble off, one forward; training: the forward in training mode and the L1 loss of the
    train yml (`pixel_opt: L1Loss`, mean over the 6-channel stack)."""
    from official.loading import OfficialRunner
    config = ours.config
    model = official_scglanet(config.width, config.num_blocks, config.temperature, config.drop_path, config.tlc)
    model.load_state_dict(ours.state_dict())

    def infer(left, right):
        if config.self_ensemble:
            return official_self_ensemble(model, left, right)
        model.eval()
        return official_forward(model, left, right)

    def train_loss(left, right, hr_left, hr_right):
        model.train()
        return F.l1_loss(torch.cat(official_forward(model, left, right), 1), torch.cat([hr_left, hr_right], 1))
    return OfficialRunner(model, infer, train_loss)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """The official code draws its rotations (and the self-ensemble builds its tensors) in the default dtype, so a
    float64 comparison runs with float64 as the default."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


@contextlib.contextmanager
def shared_hash_codes(ours: nn.Module):
    """Within: every official SCGLA.SBLSH call records its hash codes, and every `hash_codes` call of `ours` (made
    after the official forward) still draws its own rotation but returns the official codes of the same call.
    Yields {'differ', 'total'}: how many of our own codes differed from the official ones.

    Hashing is an argmax: where two projections of a token nearly tie, float32 rounding (different in any two
    implementations, or one implementation on two machines) may put the token in another bucket, and the sorted
    order of every later token shifts. With the codes shared, the comparison covers everything else."""
    from models.scglanet import SCGLA
    arch = official_arch()
    recorded, counts = [], {'differ': 0, 'total': 0}
    original = arch.SCGLA.SBLSH

    def record(self, n_buckets, x):
        codes = original(self, n_buckets, x)
        offsets = torch.arange(self.n_hashes, device=codes.device).view(1, -1, 1) * n_buckets
        recorded.append(codes.view(x.shape[0], self.n_hashes, -1) - offsets)
        return codes

    def replaying(own):
        def hash_codes(match, n_buckets, generator):
            codes, official = own(match, n_buckets, generator), recorded.pop(0)
            counts['differ'] += (codes != official).sum().item()
            counts['total'] += codes.numel()
            return official
        return hash_codes

    modules = [m for m in ours.modules() if isinstance(m, SCGLA)]
    arch.SCGLA.SBLSH = record
    for module in modules:
        module.hash_codes = replaying(module.hash_codes)
    try:
        yield counts
    finally:
        arch.SCGLA.SBLSH = original
        for module in modules:
            del module.hash_codes
