"""Shared pytest fixtures. Tests run on CPU in float32 unless they say otherwise."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# ../shared beside the checkout holds the reference spec files and real stereo samples; users won't have it.
SHARED = ROOT.parent / 'shared'
REFERENCE_DIR = SHARED / 'reference'
SAMPLES_DIR = SHARED / 'data' / 'stereo_samples'


@pytest.fixture(scope='session')
def samples_dir() -> Path:
    if not SAMPLES_DIR.is_dir():
        pytest.skip(f'real stereo samples not found at {SAMPLES_DIR}')
    return SAMPLES_DIR


@pytest.fixture(scope='session')
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f'reference spec files not found at {REFERENCE_DIR}')
    return REFERENCE_DIR


def random_pair(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=g), torch.rand(batch, 3, height, width, generator=g)


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics, so eval mode is a real test."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread for a module of small convolutions (`pytestmark = pytest.mark.usefixtures('one_thread')`):
    on a shared 2-core machine a second thread made them up to 10x slower; the count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
