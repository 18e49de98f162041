"""DSDMSR (models/dsdmsr.py), disparity-map data (data/disparity_maps.py) and scoring (evaluation.py, metrics.rmse): the
interleaving against its loop form, stage shapes and parameter counts, pixel units end to end, mask-aware
downsampling on hand-made maps with holes, readers, metrics on hand-built maps, skipped all-invalid patches, the
masked deep-supervision loss, and one Adam step on real (SceneFlow) and synthetic maps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data.disparity_maps import DisparityMapPatches, fill_holes, make_lr_map, read_disparity_map
from models.dsdmsr import downsample_disparity, stage_targets
from data.readers import write_kitti_disparity, write_pfm
from evaluation import map_scores, score_table, upsample_bicubic, upsample_nearest
from metrics import rmse
from models.dsdmsr import (DSDMSR, VIEWS, DisparitySROutput, DSDMSRConfig, DSDMSRLoss, build, describe,
                           interleave, third_party_key)

INF, NAN = float('inf'), float('nan')


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py: small convolutions, shared cores


def interleave_loop(views: list[torch.Tensor]) -> torch.Tensor:
    """Reference: D[2i + r - 1, 2j + c - 1] = view (r, c)[i, j], pixel by pixel."""
    b, c, h, w = views[0].shape
    out = torch.zeros(b, c, 2 * h, 2 * w)
    for view, (r, col) in zip(views, VIEWS):
        for i in range(h):
            for j in range(w):
                out[:, :, 2 * i + r - 1, 2 * j + col - 1] = view[:, :, i, j]
    return out


def test_interleave_equals_loop():
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(2, 3, 4, 5, generator=g) for _ in VIEWS]
    assert torch.equal(interleave(views), interleave_loop(views))
    # view (1, 2) lands on even rows, odd columns
    assert torch.equal(interleave(views)[:, :, 0::2, 1::2], views[1])


@pytest.mark.parametrize('scale', [2, 4, 8, 16])
def test_stage_shapes(scale):
    torch.manual_seed(0)
    model = DSDMSR(DSDMSRConfig(scale_factor=scale)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 3, 5) * 10)
    assert isinstance(out, DisparitySROutput)
    assert [tuple(s.shape) for s in out.stages] == [(1, 1, 3 * 2 ** k, 5 * 2 ** k)
                                                    for k in range(1, int(math.log2(scale)) + 1)]
    assert out.fused.shape == (1, 1, 3 * scale, 5 * scale)
    assert all(torch.isfinite(s).all() for s in out.stages + [out.fused])


def test_parameter_counts_match_third_party():
    """Measured on the third-party models (spec 2.2): 744,653 (SRCNN x8), 973,777 (SRCNN x16), 3,848,832 (VDSR x8)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build(8)) == 744_653
    assert count(build(16)) == 973_777
    assert count(build(8, dsdmsr_unit='vdsr')) == 3_848_832


def test_third_party_keys_map_onto_ours():
    ours = set(build(8).state_dict())
    theirs = [f'dcnn_unit_{r}_{c}_x{f}.conv{i}.{p}' for f in (2, 4, 8) for r, c in VIEWS for i in (1, 2, 3)
              for p in ('weight', 'bias')] + [f'msf_dcnn.conv{i}.{p}' for i in (1, 2, 3) for p in ('weight', 'bias')]
    assert {third_party_key(k) for k in theirs} == ours
    assert third_party_key('module.dcnn_unit_2_1_x4.trunk.3.conv.weight') == 'stages.1.units.2.trunk.3.conv.weight'
    vdsr = set(build(8, dsdmsr_unit='vdsr').state_dict())
    assert 'stages.2.units.3.conv1.0.weight' in vdsr and 'fusion.trunk.7.conv.weight' in vdsr


def test_pixel_units_end_to_end():
    """VDSR units whose last conv is zero are identities: every stage is then nearest upsampling with the values
    multiplied by its factor, and a constant LR map c gives c x s everywhere (normalisation and its inverse)."""
    model = build(4, dsdmsr_unit='vdsr').eval()
    for m in model.modules():
        if hasattr(m, 'conv2') and isinstance(m.conv2, torch.nn.Conv2d):
            torch.nn.init.zeros_(m.conv2.weight)
    lr = torch.rand(2, 1, 4, 6) * 20 + 5
    with torch.no_grad():
        out = model(lr)
        constant = model(torch.full((1, 1, 4, 6), 7.5))
    torch.testing.assert_close(out.stages[0], upsample_nearest(lr, 2), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.stages[1], upsample_nearest(lr, 4), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(constant.fused, torch.full((1, 1, 16, 24), 30.0), rtol=1e-5, atol=1e-4)


def test_model_refuses_holes():
    with pytest.raises(ValueError, match='fill the holes'):
        build(2)(torch.tensor([[[[1.0, INF], [2.0, 3.0]]]]))
    with pytest.raises(ValueError, match='scale factor must be 2, 4, 8 or 16'):
        build(3)


# ---- mask-aware downsampling and targets

HOLEY = torch.tensor([[2.0, INF, 1.0, 2.0],
                      [4.0, NAN, 3.0, 4.0],
                      [INF, INF, 8.0, 8.0],
                      [NAN, INF, 8.0, 0.0]])
HOLEY_VALID = torch.isfinite(HOLEY)


def test_downsample_averages_valid_pixels_only():
    lr, valid = downsample_disparity(HOLEY[None, None], HOLEY_VALID[None, None], 2)
    # blocks: (2, 4) -> 3 / 2; (1, 2, 3, 4) -> 2.5 / 2; no valid pixel -> invalid 0; (8, 8, 8, 0) -> 6 / 2
    torch.testing.assert_close(lr[0, 0], torch.tensor([[1.5, 1.25], [0.0, 3.0]]))
    assert valid[0, 0].tolist() == [[True, True], [False, True]]
    assert torch.isfinite(lr).all()
    lr4, valid4 = downsample_disparity(HOLEY[None, None], HOLEY_VALID[None, None], 4)
    assert lr4.item() == pytest.approx((2 + 4 + 1 + 2 + 3 + 4 + 8 + 8 + 8 + 0) / 10 / 4)
    assert valid4.item()
    with pytest.raises(ValueError, match='not divisible by the factor 3'):
        downsample_disparity(HOLEY[None, None], HOLEY_VALID[None, None], 3)


def test_stage_targets():
    hr = HOLEY.repeat(2, 2)[None, None]                     # 8 x 8
    targets = stage_targets(hr, torch.isfinite(hr), 4)
    assert [tuple(t.shape[-2:]) for t, _ in targets] == [(4, 4), (8, 8)]
    torch.testing.assert_close(targets[0][0][0, 0, :2, :2], torch.tensor([[1.5, 1.25], [0.0, 3.0]]))
    assert torch.equal(targets[1][0], torch.where(torch.isfinite(hr), hr, torch.zeros_like(hr)))
    assert all(torch.isfinite(t).all() for t, _ in targets)


def test_fill_holes_and_lr_map():
    values = np.array([[1.0, 0.0, 0.0, 5.0]], dtype=np.float32)
    valid = np.array([[True, False, False, True]])
    assert fill_holes(values, valid).tolist() == [[1.0, 1.0, 5.0, 5.0]]
    with pytest.raises(ValueError, match='no valid pixel'):
        fill_holes(values, np.zeros_like(valid))
    lr, lr_valid = make_lr_map(torch.where(HOLEY_VALID, HOLEY, 0.0).numpy(), HOLEY_VALID.numpy(), 2)
    np.testing.assert_allclose(lr[0], [1.5, 1.25])
    assert lr[1, 1] == 3.0 and lr[1, 0] in (1.5, 3.0)        # the hole takes a nearest valid neighbour (a tie here)
    assert lr_valid.tolist() == [[True, True], [False, True]]


def test_readers_mark_holes(tmp_path):
    middlebury = np.array([[10.0, np.inf], [12.5, 7.0]], dtype=np.float32)
    write_pfm(tmp_path / 'disp0GT.pfm', middlebury)
    disparity, valid = read_disparity_map(tmp_path / 'disp0GT.pfm')
    assert valid.tolist() == [[True, False], [True, True]] and disparity.tolist() == [[10.0, 0.0], [12.5, 7.0]]
    write_kitti_disparity(tmp_path / 'kitti.png', np.array([[0.0, 3.5], [100.25, 0.0]], dtype=np.float32))
    disparity, valid = read_disparity_map(tmp_path / 'kitti.png')
    assert valid.tolist() == [[False, True], [True, False]] and disparity.tolist() == [[0.0, 3.5], [100.25, 0.0]]
    with pytest.raises(ValueError, match='unknown disparity map format'):
        read_disparity_map(tmp_path / 'x.npy')


# ---- metrics and baselines

def test_metrics_on_hand_built_maps():
    gt = torch.tensor([[10.0, 100.0, INF], [20.0, 40.0, 50.0]])
    pred = torch.tensor([[10.5, 104.0, 1000.0], [16.0, 40.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])      # the inf pixel drops out by itself
    scores = map_scores(pred, gt, mask)
    # errors 0.5, 4, 4, 0; D1 counts only the 4 px error on 20 (4 px is below 5 % of 100)
    assert scores == pytest.approx({'rmse': math.sqrt((0.25 + 16 + 16) / 4), 'epe': 8.5 / 4, 'bad1': 0.5,
                                    'bad3': 0.5, 'd1': 0.25})
    assert rmse(gt[1:], gt[1:], mask[1:]) == 0.0
    assert map_scores(pred, gt, torch.zeros_like(mask)) is None


def test_baselines_scale_values():
    lr = torch.tensor([[[[1.0, 2.0]]]])
    assert upsample_nearest(lr, 2)[0, 0].tolist() == [[2.0, 2.0, 4.0, 4.0], [2.0, 2.0, 4.0, 4.0]]
    torch.testing.assert_close(upsample_bicubic(torch.full((1, 1, 3, 4), 2.5), 4), torch.full((1, 1, 12, 16), 10.0))


def test_score_table_rows():
    hr = torch.where(HOLEY_VALID, HOLEY, 0.0).repeat(2, 2)[None, None]
    valid = HOLEY_VALID.repeat(2, 2)[None, None]
    lr = torch.from_numpy(make_lr_map(hr[0, 0].numpy(), valid[0, 0].numpy(), 4)[0])[None, None]
    targets = stage_targets(hr, valid, 4)
    perfect = DisparitySROutput(stages=[t for t, _ in targets], fused=hr)
    rows = score_table(perfect, lr, hr, valid, 4)
    assert list(rows) == ['nearest', 'bicubic', 'stage1', 'stage2', 'fused']
    assert rows['fused']['rmse'] == 0.0 and rows['stage1']['epe'] == 0.0
    assert rows['nearest']['epe'] > 0.5


# ---- loss

def test_loss_terms_exact_and_masked():
    hr = torch.where(HOLEY_VALID, HOLEY, INF).repeat(2, 2)[None, None]     # holes hold inf
    valid = HOLEY_VALID.repeat(2, 2)[None, None]
    targets = stage_targets(hr, valid, 4)
    criterion = DSDMSRLoss(4, weights={'fused': 2.0})
    perfect = DisparitySROutput(stages=[t for t, _ in targets], fused=torch.where(valid, hr, 0.0))
    assert criterion(perfect, None, hr, valid)['total'].item() == 0.0
    # +1 HR pixel everywhere = +1/2 pixel at x2: each term is 1 HR px^2
    shifted = DisparitySROutput(stages=[targets[0][0] + 0.5, targets[1][0] + 1.0],
                                fused=torch.where(valid, hr, 0.0) + 1.0)
    terms = criterion(shifted, None, hr, valid)
    assert set(terms) == {'stage1', 'stage2', 'fused', 'total'}
    assert [terms[k].item() for k in ('stage1', 'stage2', 'fused', 'total')] == pytest.approx([1, 1, 1, 4])
    with pytest.raises(ValueError, match='unknown loss terms'):
        DSDMSRLoss(4, weights={'stage_1': 1.0})


def test_loss_with_no_valid_pixel_is_zero_not_nan():
    model = build(2)
    out = model(torch.rand(1, 1, 4, 4))
    hr = torch.full((1, 1, 8, 8), NAN)
    total = DSDMSRLoss(2)(out, None, hr, torch.zeros_like(hr, dtype=torch.bool))['total']
    total.backward()
    assert total.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---- data

def test_synthetic_patches_are_seeded_and_consistent():
    data = DisparityMapPatches(2, lr_patch=12, length=3, seed=5)
    lr, hr, valid = data[1]
    assert lr.shape == (1, 12, 12) and hr.shape == valid.shape == (1, 24, 24)
    assert valid.all() and torch.isfinite(lr).all() and hr.min() > 0
    np.testing.assert_allclose(lr[0].numpy(), make_lr_map(hr[0].numpy(), valid[0].bool().numpy(), 2)[0])
    assert torch.equal(data[1][1], hr)
    data.set_epoch(1)
    assert not torch.equal(data[1][1], hr)


def test_all_invalid_crops_are_skipped_and_counted(tmp_path):
    disparity = np.full((40, 40), np.inf, dtype=np.float32)
    disparity[:20, :20] = 20.0                               # valid only in one corner
    write_pfm(tmp_path / 'sparse.pfm', disparity)
    data = DisparityMapPatches(2, folder=tmp_path, length=8, lr_patch=4, augment=False, seed=0)
    items = [data[i] for i in range(8)]
    assert data.skipped > 0
    for lr, hr, valid in items:
        assert valid.any() and torch.isfinite(lr).all() and torch.isfinite(hr).all()
        assert (hr[valid.bool()] == 20).all() and (hr[~valid.bool()] == 0).all()
    write_pfm(tmp_path / 'sparse.pfm', np.full((40, 40), np.inf, dtype=np.float32))
    with pytest.raises(ValueError, match='sparse.pfm: no crop with a valid pixel'):
        DisparityMapPatches(2, folder=tmp_path, length=1, lr_patch=4)[0]


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='no disparity maps'):
        DisparityMapPatches(4, folder=tmp_path)
    (tmp_path / 'left.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='left.png'):
        DisparityMapPatches(4, folder=tmp_path, lr_patch=2)[0]
    with pytest.raises(FileNotFoundError, match='not found'):
        DisparityMapPatches(4, folder=tmp_path / 'missing')


# ---- one optimiser step lowers the loss

def one_step_losses(batch, scale: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build(scale)
    criterion = DSDMSRLoss(scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lr, hr, valid = batch
    before = criterion(model(lr), lr, hr, valid)['total']
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = criterion(model(lr), lr, hr, valid)['total']
    return before.item(), after.item()


def test_one_step_lowers_loss_on_sceneflow(samples_dir):
    path = samples_dir / 'sceneflow_A-0032-0006' / 'disp_left.pfm'
    if not path.is_file():
        pytest.skip(f'SceneFlow sample not found: {path}')
    data = DisparityMapPatches(4, folder=path.parent, length=4, lr_patch=12, seed=0, pattern='disp_left.pfm')
    assert data.files == [path]
    batch = [torch.stack(x) for x in zip(*(data[i] for i in range(4)))]
    before, after = one_step_losses(batch, 4)
    assert math.isfinite(before) and after < 0.95 * before


def test_one_step_lowers_loss_on_synthetic():
    data = DisparityMapPatches(4, length=4, lr_patch=12, seed=3)
    batch = [torch.stack(x) for x in zip(*(data[i] for i in range(4)))]
    before, after = one_step_losses(batch, 4)
    assert math.isfinite(before) and after < 0.9 * before


def test_describe_is_plain_data():
    entry = describe()
    assert entry['name'] == 'dsdmsr' and entry['scales'] == (2, 4, 8, 16)
    assert set(entry['options']) == {'dsdmsr_unit', 'dsdmsr_vdsr_depth', 'dsdmsr_fusion_inputs',
                                     'dsdmsr_fusion_combine'}
    assert isinstance(entry['build'](2, dsdmsr_unit='vdsr'), DSDMSR)
