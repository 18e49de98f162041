"""--precision: bf16 inference stays within the accuracy bounds of issue 32 on a real pair (Middlebury Motorcycle x4,
trained weights), fp32 is untouched, and a device without bfloat16 arithmetic is refused in one line.

The bf16 tests run where the CPU has AVX-512 BF16 or AMX (models/precision.has_bf16) and skip elsewhere (torch
emulates bfloat16 there, slower than float32, so the scripts refuse it). They use the centre of the pair (LR 64x96)
to stay short; reports/2026-12-07-bf16.md gives the whole pair's numbers."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

import bench
import demo
import test_disp
import test_sr
from evaluation import scene_scores
from metrics import epe
from models import build_model, precision
from models.checkpoint import load_model
from models.inference import predict
from models.ssrdefnet.cost_volume import MAX_DISPARITY
from utils import run_script

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = ROOT.parent / 'shared' / 'weights'
# Issue 32: bf16 against fp32 on a real pair with trained weights.
PSNR_BOUND_DB = 0.05
EPE_BOUND_PX = 0.1
# LR crop of the x4 Motorcycle pair (125x185): rows, columns. Wide enough for the pair's disparities (up to ~70 HR px).
CROP = (slice(30, 94), slice(40, 136))

needs_bf16 = pytest.mark.skipif(not precision.has_bf16('cpu'), reason='this CPU has no bfloat16 arithmetic')


def motorcycle(scale: int = 4) -> dict:
    """The demo's sample (LR pair, HR pair, ground truth), cropped to CROP in LR pixels."""
    sample = demo.load_inputs(Namespace(left=None, right=None), scale)
    rows, cols = CROP
    hr_rows, hr_cols = (slice(s.start * scale, s.stop * scale) for s in CROP)
    return {'lr': [torch.from_numpy(v[rows, cols].transpose(2, 0, 1).copy())[None].float() for v in sample['lr']],
            'hr': [torch.from_numpy(v[hr_rows, hr_cols].transpose(2, 0, 1).copy()).double() for v in sample['hr']],
            'gt': torch.from_numpy(np.asarray(sample['gt'], dtype=np.float32)[hr_rows, hr_cols].copy())}


def scores(model, pair: dict, precision_name: str) -> dict:
    """(L+R)/2 PSNR and, for networks that estimate it, the left view's disparity EPE (0 < gt < 192), as demo.py."""
    out = predict(model, *pair['lr'], precision=precision_name)
    result = {'psnr': scene_scores(out['sr_left'][0].double(), pair['hr'][0], out['sr_right'][0].double(),
                                   pair['hr'][1])['psnr_avg']}
    if 'disp_left' in out:
        gt = pair['gt']
        valid = torch.isfinite(gt) & (gt > 0) & (gt < MAX_DISPARITY)
        result['epe'] = epe(out['disp_left'][0, 0], gt, valid)
    return result


def assert_within_bounds(model, name: str) -> None:
    pair = motorcycle()
    fp32, bf16 = scores(model, pair, 'fp32'), scores(model, pair, 'bf16')
    print(f'\n[bf16] {name} Motorcycle x4 LR 64x96: fp32 {fp32}, bf16 {bf16}')
    assert abs(bf16['psnr'] - fp32['psnr']) <= PSNR_BOUND_DB
    if 'epe' in fp32:
        assert abs(bf16['epe'] - fp32['epe']) <= EPE_BOUND_PX


@needs_bf16
def test_demo_checkpoint_in_bf16_within_the_bounds():
    model, _ = load_model(ROOT / 'checkpoints' / 'ssrdefnet_demo_x4.pth', 4)
    assert_within_bounds(model, 'SSRDE-FNet demo checkpoint')


@needs_bf16
@pytest.mark.parametrize('name,file', [('cvhssr-t', 'CVHSSR_Tx4.pth'), ('ehfssr-s', 'EHFSSR_S_x4.pth')])
def test_authors_weights_in_bf16_within_the_bounds(name, file):
    path = WEIGHTS_DIR / file
    if not path.is_file():
        pytest.skip(f'the authors\' weights are not at {path}')
    model, _ = load_model(path, 4, name=name)
    assert_within_bounds(model, name)


def test_fp32_is_the_plain_forward():
    """--precision fp32 runs the network as it is: no autocast, outputs identical to a plain call."""
    torch.manual_seed(0)
    model = build_model('nafssr-t', 4).eval()
    left, right = torch.rand(2, 1, 3, 12, 16)
    with torch.inference_mode():
        expected = model(left, right).sr_left.clamp(0, 1)
    assert torch.equal(predict(model, left, right, precision='fp32')['sr_left'], expected)


@needs_bf16
def test_bf16_runs_the_convolutions_in_bfloat16_and_returns_float32():
    torch.manual_seed(0)
    model = build_model('nafssr-t', 4).eval()
    left, right = torch.rand(2, 1, 3, 12, 16)
    dtypes = []
    hook = model.intro.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    out = predict(model, left, right, precision='bf16')
    hook.remove()
    assert dtypes == [torch.bfloat16]               # the first convolution (both views in one batch)
    assert out['sr_left'].dtype == torch.float32
    with torch.inference_mode():
        reference = model(left, right).sr_left.clamp(0, 1)
    assert 0 < (out['sr_left'] - reference).abs().max() < 0.05


@pytest.mark.parametrize('main,argv', [(demo.main, []), (test_sr.main, ['--datasets', 'sample']),
                                       (test_disp.main, []), (bench.main, ['--cases', 'infer'])])
def test_bf16_is_refused_in_one_line_without_hardware_bf16(main, argv, monkeypatch, capsys):
    monkeypatch.setattr(precision, 'has_bf16', lambda device: False)
    status = run_script(main, argv + ['--device', 'cpu', '--precision', 'bf16'])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith('error: --precision bf16 needs hardware bfloat16 arithmetic') and 'AVX-512' in err[0]
