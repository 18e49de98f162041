"""Disparity supervision (train.py --disp_supervision W): the masked loss, its place in SSRDE-FNet's objective
(off by default), gradients into the disparity branches, the ground-truth patch loader, and the flag's errors."""
from __future__ import annotations

import json
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import train
from data.patches import SceneCrops
from data.readers import write_image, write_kitti_disparity, write_pfm
from models import build_model
from models.outputs import Pair
from models.ssrdefnet.losses import DISPARITY_PARTS, SSRDEFNetLoss
from models.stereo_losses import supervised_disparity

FAILS = (ValueError, OSError)   # what a script's main raises; run_script prints it as one line, exit 1 or 2


def maps(estimate, truth, width=100, at=45):
    """1-row maps of `width` columns holding the values from column `at` on; elsewhere the estimate is 0 and the
    ground truth NaN (unknown). Every match stays inside the other view for disparities below 45."""
    out = []
    for values, fill in ((estimate, 0.0), (truth, float('nan'))):
        row = torch.full((1, 1, 1, width), fill)
        row[..., at:at + len(values)] = torch.tensor(values, dtype=torch.float32)
        out.append(row)
    return out


def in_view(shape, max_disparity):
    """Random ground truth (left, right) whose matches all lie inside the other view."""
    columns = torch.arange(shape[-1], dtype=torch.float32)
    left = torch.rand(shape) * torch.clamp(columns, max=max_disparity)
    right = torch.rand(shape) * torch.clamp(shape[-1] - 1 - columns, max=max_disparity)
    return Pair(left, right)


def test_loss_is_zero_when_perfect_and_grows_with_the_error():
    truth = in_view((2, 1, 8, 64), 40)
    assert supervised_disparity(truth, truth) == 0
    values = [supervised_disparity(truth.map(lambda d: d + e), truth).item() for e in (0.5, 1, 3, 10)]
    assert values == pytest.approx([0.125, 0.5, 2.5, 9.5])      # Huber, beta 1: e^2/2 below 1 pixel, e - 1/2 above
    assert supervised_disparity(Pair(truth.left - 3, truth.right + 3), truth).item() == pytest.approx(2.5)


def test_loss_ignores_unknown_and_out_of_range_pixels():
    est, gt = maps([1, 2, 3, 4], [10, 20, 30, 40])
    nan = float('nan')
    full = supervised_disparity(Pair(est, est), Pair(gt, gt))
    assert full.item() == pytest.approx((8.5 + 17.5 + 26.5 + 35.5) / 4)
    # unknown (NaN, inf) and out-of-range (< 0, >= 192) ground truth: those pixels do not count, whatever is there
    est2, gt2 = maps([1, 2, 3, 4, 1e6, -7, 99, 5], [10, 20, 30, 40, nan, float('inf'), 500, -1])
    assert supervised_disparity(Pair(est2, est2), Pair(gt2, gt2)) == pytest.approx(full.item())
    # a view without any ground truth (KITTI's right view) averages over the other view's pixels only
    empty = torch.full_like(gt, nan)
    assert supervised_disparity(Pair(est, est * 100), Pair(gt, empty)) == pytest.approx(full.item())
    # no valid pixel at all: zero, with a gradient path (no NaN)
    est3 = est.clone().requires_grad_()
    loss = supervised_disparity(Pair(est3, est3), Pair(empty, empty))
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(est3.grad).all() and est3.grad.abs().sum() == 0


def test_loss_ignores_pixels_whose_match_is_outside_the_other_view():
    """Left pixel x matches right x - d, right pixel x matches left x + d: outside [0, W - 1] nothing can match."""
    width = 10
    gt = torch.full((1, 1, 1, width), 4.0)
    est = torch.zeros_like(gt)                                   # error 4 everywhere: 3.5 per counted pixel
    nan = torch.full_like(gt, float('nan'))
    zero = torch.zeros_like(gt)
    left_only = supervised_disparity(Pair(est, est), Pair(gt, nan))
    right_only = supervised_disparity(Pair(est, est), Pair(nan, gt))
    assert left_only.item() == right_only.item() == pytest.approx(3.5)
    # which pixels count: left x >= 4 (x - 4 >= 0), right x <= 5 (x + 4 <= 9); x = d and x + d = W - 1 included
    grad = est.clone().requires_grad_()
    supervised_disparity(Pair(grad, zero), Pair(gt, nan)).backward()
    assert (grad.grad[0, 0, 0] != 0).tolist() == [False] * 4 + [True] * 6
    grad = est.clone().requires_grad_()
    supervised_disparity(Pair(zero, grad), Pair(nan, gt)).backward()
    assert (grad.grad[0, 0, 0] != 0).tolist() == [True] * 6 + [False] * 4


def test_loss_is_the_same_after_the_left_right_swap():
    """A horizontal flip mirrors both views and swaps them; disparities stay positive and follow their views."""
    est, gt = Pair(torch.rand(1, 1, 6, 9) * 9, torch.rand(1, 1, 6, 9) * 9), Pair(torch.rand(1, 1, 6, 9) * 9,
                                                                                  torch.rand(1, 1, 6, 9) * 9)
    swap = lambda p: Pair(p.right.flip(-1), p.left.flip(-1))  # noqa: E731
    assert supervised_disparity(swap(est), swap(gt)) == pytest.approx(supervised_disparity(est, gt).item())


@pytest.fixture(scope='module')
def forward_x2():
    torch.manual_seed(0)
    model = build_model('ssrdefnet', 2).train()
    lr = [torch.rand(2, 3, 30, 48) for _ in range(2)]
    hr = [torch.rand(2, 3, 60, 96) for _ in range(2)]
    truth = Pair(torch.full((2, 1, 60, 96), 6.0), torch.full((2, 1, 60, 96), 6.0))
    return model, lr, hr, truth


def test_objective_adds_the_term_only_when_asked(forward_x2):
    model, lr, hr, truth = forward_x2
    out = model(*lr)
    plain = SSRDEFNetLoss(2)(out, *lr, *hr)
    assert 'disp_sup' not in plain
    off = SSRDEFNetLoss(2)(out, *lr, *hr, disparity=truth)            # weight 0: the paper's total
    assert off['disp_sup'] > 0 and off['total'].item() == pytest.approx(plain['total'].item(), rel=1e-6)
    on = SSRDEFNetLoss(2, {'disp_sup': 0.01})(out, *lr, *hr, disparity=truth)
    assert on['total'].item() == pytest.approx(plain['total'].item() + 0.01 * on['disp_sup'].item(), rel=1e-5)
    # the term is the weighted sum of the four estimates (PAM and HR cost volume, both recursions)
    from models.ssrdefnet.outputs import coordinates_to_disparities
    expected = sum(w * supervised_disparity(coordinates_to_disparities(c, clamp=False), truth)
                   for w, c in zip(DISPARITY_PARTS.values(), [*out.coords_lr, *out.coords_hr]))
    assert on['disp_sup'].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown disparity estimates \\['pam3'\\]"):
        SSRDEFNetLoss(2, disparity_parts={'pam3': 1.0})


@pytest.mark.parametrize('part,module,untouched', [('pam1', 'pam', ('reconstruct', 'upscale', 'dres0', 'final')),
                                                   ('hr2', 'dres', ('final', 'final2'))])
def test_gradients_reach_the_branch_of_each_estimate(forward_x2, part, module, untouched):
    """The PAM estimate of recursion 1 trains the features and the PAM only; the last HR estimate trains the cost
    volume's aggregation (and everything before it), never the SR heads."""
    model, lr, hr, truth = forward_x2
    model.zero_grad()
    parts = {name: float(name == part) for name in DISPARITY_PARTS}
    terms = SSRDEFNetLoss(2, {'disp_sup': 1.0}, parts)(model(*lr), *lr, *hr, disparity=truth)
    terms['disp_sup'].backward()
    grads = {n: p.grad.abs().sum().item() for n, p in model.named_parameters() if p.grad is not None}
    assert any(v > 0 for n, v in grads.items() if n.startswith(module)), sorted(grads)[:5]
    assert all(v == 0 for n, v in grads.items() if n.split('.')[0] in untouched)


def scene_folder(root, scale=2):
    """One KITTI-style and one Middlebury-style scene, whose ground truth encodes the HR position (for alignment)."""
    rng = np.random.default_rng(0)
    h, w = 36 * scale, 100 * scale
    for dataset, gt_name in (('KITTI2015', 'dispocc0.png'), ('Middlebury', 'disp0GT.pfm')):
        hr_dir, lr_dir = root / dataset / 'hr' / 'scene', root / dataset / f'lr_x{scale}' / 'scene'
        hr_dir.mkdir(parents=True), lr_dir.mkdir(parents=True)
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([xx % 256, yy % 256, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        for name in ('hr0.png', 'hr1.png'):
            write_image(hr_dir / name, image)
        for name in ('lr0.png', 'lr1.png'):
            write_image(lr_dir / name, image[::scale, ::scale])
        truth = (1 + xx / 8 + yy / 64).astype(np.float32)
        truth[:4] = 0 if gt_name.endswith('png') else np.inf              # unknown pixels
        if gt_name.endswith('png'):
            write_kitti_disparity(hr_dir / gt_name, truth)
        else:
            write_pfm(hr_dir / gt_name, truth)


def test_scene_crops_cut_images_and_ground_truth_together(tmp_path):
    scene_folder(tmp_path)
    data = SceneCrops(tmp_path, scale=2, augment=False, seed=3)
    assert data.has_disparity and len(data) >= 2
    for index in range(4):
        hr_left, _, lr_left, _, d_left, d_right = data[index]
        assert hr_left.shape == (3, 60, 180) and lr_left.shape == (3, 30, 90) and d_left.shape == (1, 60, 180)
        x = (hr_left[0] * 255).round()            # the HR column modulo 256, as written
        y = (hr_left[1] * 255).round()
        known = torch.isfinite(d_left[0])
        x0 = (d_left[0][known] - 1 - y[known] / 64) * 8 % 256          # invert the ground truth's formula
        assert torch.allclose(x0, x[known], atol=0.2)                  # KITTI quantises to 1/256 px
        assert (~known).sum() == (y < 4).sum() and torch.isnan(d_right).all()
        assert torch.equal(lr_left, hr_left[:, ::2, ::2])              # LR crop co-located with the HR crop
    data.set_epoch(1)
    assert not torch.equal(data[0][0], SceneCrops(tmp_path, 2, False, 3)[0][0])   # new positions each epoch


def test_the_flag_trains_and_says_what_it_needs(tmp_path):
    run = tmp_path / 'run'
    assert train.main(['--scale_factor', '2', '--trainset', 'synthetic', '--synthetic_size', '2', '--batch_size', '2',
                       '--num_workers', '0', '--n_epochs', '1', '--disp_supervision', '0.01',
                       '--disp_supervision_parts', 'pam1=0', '--checkpoint_dir', str(run)]) == 0
    row = json.loads((run / 'log.jsonl').read_text().splitlines()[-1])
    assert row['loss_disp_sup'] > 0 and np.isfinite(row['loss_total'])
    assert json.loads((run / 'args.json').read_text())['disp_supervision'] == 0.01
    with pytest.raises(FAILS, match='nafssr-t does not estimate disparity'):
        train.main(['--model', 'nafssr-t', '--trainset', 'synthetic', '--disp_supervision', '1', '--num_workers', '0',
                    '--checkpoint_dir', str(tmp_path / 'x')])
    with pytest.raises(FAILS, match='needs training data with ground-truth disparity.*not --trainset sample'):
        train.main(['--scale_factor', '2', '--trainset', 'sample', '--disp_supervision', '1', '--num_workers', '0',
                    '--checkpoint_dir', str(tmp_path / 'y')])
    with pytest.raises(FAILS, match=r"--disp_supervision_parts 'hr3=1'.*\['hr1', 'hr2', 'pam1', 'pam2'\]"):
        train.main(['--scale_factor', '2', '--trainset', 'synthetic', '--disp_supervision', '1',
                    '--disp_supervision_parts', 'hr3=1', '--num_workers', '0', '--checkpoint_dir', str(tmp_path / 'z')])
    with pytest.raises(FAILS, match='no scene with disparity ground truth'):
        train.main(['--scale_factor', '2', '--trainset', 'disparity', '--trainset_dir', str(tmp_path / 'run'),
                    '--num_workers', '0', '--checkpoint_dir', str(tmp_path / 'w')])


def test_matching_is_the_first_pam_estimate_of_the_full_forward():
    torch.manual_seed(1)
    model = build_model('ssrdefnet', 2).eval()
    lr = [torch.rand(1, 3, 30, 40) for _ in range(2)]
    with torch.no_grad():
        coords = model.matching(*lr)
        out = model(*lr)
    assert torch.allclose(coords.left, out.coords_lr[0].left, atol=1e-5)
    assert torch.allclose(coords.right, out.coords_lr[0].right, atol=1e-5)


def test_matching_stage_trains_only_the_matching_path(tmp_path):
    """--stage matching: the LR matching's modules learn, nothing else changes (weights or BatchNorm statistics),
    the log carries the supervised term and the EPE, and the checkpoint starts a joint run (--init)."""
    from models.stereo_losses import MatchingWarmupLoss
    from models.checkpoint import read_checkpoint
    torch.manual_seed(2)
    start = build_model('ssrdefnet', 2).state_dict()
    init = tmp_path / 'init.pth'
    torch.save(start, init)
    run = tmp_path / 'warmup'
    assert train.main(['--scale_factor', '2', '--trainset', 'synthetic', '--synthetic_size', '2', '--batch_size', '2',
                       '--num_workers', '0', '--n_epochs', '1', '--stage', 'matching', '--init', str(init),
                       '--checkpoint_dir', str(run)]) == 0
    after = read_checkpoint(run / 'last.pth')[0]
    matching = ('init_feature', 'deep_feature', 'transition', 'StereoFea', 'pam')
    changed = {k.split('.')[0] for k in start if not torch.equal(start[k], after[k])}
    assert changed == set(matching), changed
    row = json.loads((run / 'log.jsonl').read_text().splitlines()[-1])
    assert set(row) >= {'loss_disp_sup', 'loss_total', 'epe'} and 'psnr_left' not in row
    assert row['loss_disp_sup'] > 0 and row['epe'] > 0
    assert MatchingWarmupLoss.DEFAULT_WEIGHTS == {'disp_sup': 1.0}
    with pytest.raises(FAILS, match='--stage matching needs training data with ground-truth disparity'):
        train.main(['--scale_factor', '2', '--trainset', 'sample', '--stage', 'matching', '--num_workers', '0',
                    '--checkpoint_dir', str(tmp_path / 'a')])
    with pytest.raises(FAILS, match='--stage matching: nafssr-t has no separate LR matching stage'):
        train.main(['--model', 'nafssr-t', '--trainset', 'synthetic', '--stage', 'matching', '--num_workers', '0',
                    '--checkpoint_dir', str(tmp_path / 'b')])
    with pytest.raises(FAILS, match='supervised disparity loss alone: drop --loss_weight'):
        train.main(['--scale_factor', '2', '--trainset', 'synthetic', '--stage', 'matching', '--disp_supervision',
                    '1', '--num_workers', '0', '--checkpoint_dir', str(tmp_path / 'c')])


def test_export_carries_the_runs_it_started_from(tmp_path):
    """A joint run --init from a warm-up: the exported file holds the warm-up's args and log (its history)."""
    from models.checkpoint import read_checkpoint
    common = ['--scale_factor', '2', '--trainset', 'synthetic', '--synthetic_size', '2', '--batch_size', '2',
              '--num_workers', '0', '--n_epochs', '1']
    assert train.main([*common, '--stage', 'matching', '--checkpoint_dir', str(tmp_path / 'warm')]) == 0
    assert train.main([*common, '--init', str(tmp_path / 'warm' / 'last.pth'), '--disp_supervision', '0.01',
                       '--checkpoint_dir', str(tmp_path / 'joint'), '--export', str(tmp_path / 'demo.pth')]) == 0
    _, stored = read_checkpoint(tmp_path / 'demo.pth')
    assert [r['args']['stage'] for r in stored['lineage']] == ['matching']
    assert stored['lineage'][0]['run'] == str(tmp_path / 'warm') and len(stored['lineage'][0]['log']) == 1
    assert 'epe' in stored['lineage'][0]['log'][0] and 'psnr_left' in stored['log'][0]
    assert stored['args']['init'] == str(tmp_path / 'warm' / 'last.pth')
    # a resumed run keeps where its weights came from: exporting it again still carries the warm-up
    assert train.main(['--resume', str(tmp_path / 'joint' / 'last.pth'), '--export', str(tmp_path / 'again.pth')]) == 0
    assert read_checkpoint(tmp_path / 'again.pth')[1]['lineage'] == stored['lineage']
    # a run --init from the exported file (whose run folder is gone, as for the committed demo checkpoint) carries
    # the file's own history: its lineage, then its run
    (tmp_path / 'joint' / 'args.json').unlink()
    assert train.main([*common, '--init', str(tmp_path / 'demo.pth'), '--checkpoint_dir', str(tmp_path / 'more'),
                       '--export', str(tmp_path / 'more.pth')]) == 0
    chain = read_checkpoint(tmp_path / 'more.pth')[1]['lineage']
    assert [r['run'] for r in chain] == [str(tmp_path / 'warm'), str(tmp_path / 'joint')]
    assert chain[0] == stored['lineage'][0] and chain[1]['log'] == stored['log']
    assert chain[1]['checkpoint'] == str(tmp_path / 'demo.pth') and chain[1]['args'] == stored['args']
    import make_figs
    phases = make_figs.training_phases(stored)
    assert [label.split(',')[0] for label, _ in phases] == ['matching warm-up', 'joint']
    assert phases[1][0] == 'joint, synthetic, batch 2, lr 0.0002, disp_supervision 0.01'
    assert [len(rows) for _, rows in phases] == [1, 1]
    assert make_figs.training_figure(tmp_path / 'demo.pth', tmp_path / 'curve.png')
    assert iio.imread(tmp_path / 'curve.png').shape[:2] == (437, 1080)   # 12 x (4.5 + 0.18 per run) in at 90 dpi


def test_training_figure_teacher_line_is_the_teachers_score_on_fresh_patches(tmp_path, capsys):
    """make_figs.teacher_reference: the recorded teacher scored on patches of the run's trainset from an epoch the run
    never saw, as the training PSNR is; no line when the file is missing or is not the one the run recorded."""
    import make_figs
    from models import build_model
    from models.checkpoint import file_sha256, save_checkpoint
    from metrics import psnr
    from training.tasks import training_boundary
    from training.trainsets import stereo_dataset
    torch.manual_seed(0)
    teacher = build_model('nafssr-t', 2).eval()
    save_checkpoint(tmp_path / 'teacher.pth', teacher, args={'model': 'nafssr-t', 'scale_factor': 2})
    args = {'trainset': 'synthetic', 'scale_factor': 2, 'synthetic_size': 3, 'seed': 5, 'lr_crop': None,
            'teacher': [[str(tmp_path / 'teacher.pth'), 'nafssr-t', '1']]}
    stored = {'args': args, 'teachers': [{'path': str(tmp_path / 'teacher.pth'), 'model': 'nafssr-t', 'weight': 1.0,
                                          'sha256': file_sha256(tmp_path / 'teacher.pth')}]}
    label, value = make_figs.teacher_reference(stored, count=2)
    assert label == 'teacher nafssr-t on 2 fresh --trainset synthetic patches'
    stored['log'] = [{'epoch': 1, 'psnr_left': 20.0}]
    assert make_figs.training_phases(stored)[0][0] == 'joint, synthetic, batch ?, lr ?, teacher nafssr-t'
    for item, name in (['b.pth', '0.5'], 'b'), (['c.pth'], 'c'):     # no network given: the file's stem
        assert make_figs.training_phases({**stored, 'args': {**args, 'teacher': [item]}})[0][0].endswith(name)
    # the same score computed here directly: left views, the unmatched first columns cropped
    dataset = stereo_dataset(SimpleNamespace(**{**args, 'seed': make_figs.REFERENCE_SEED}, augment=False,
                                             channel_shuffle=False))
    dataset.epoch = 10 ** 6
    expected = []
    with torch.no_grad():
        for index in range(2):
            hr_left, _, lr_left, lr_right = (t[None] for t in dataset[index][:4])
            sr = teacher(lr_left, lr_right).sr_left.clamp(0, 1)
            expected.append(psnr(sr, hr_left, crop_left=training_boundary(hr_left.shape[-1])).item())
    assert value == pytest.approx(np.mean(expected), abs=1e-6) and 5 < value < 60
    # the same patches whatever seed the run trained with: the line stays put between runs
    assert make_figs.teacher_reference({**stored, 'args': {**args, 'seed': 6}}, count=2)[1] == value
    assert make_figs.teacher_reference({'args': {**args, 'teacher': None}, 'teachers': []}) is None
    (tmp_path / 'teacher.pth').write_bytes((tmp_path / 'teacher.pth').read_bytes() + b'x')
    assert make_figs.teacher_reference(stored) is None
    assert 'is not the file the run was trained with' in capsys.readouterr().out
    (tmp_path / 'teacher.pth').unlink()
    assert make_figs.teacher_reference(stored) is None
    assert "(the run's teacher) is not here" in capsys.readouterr().out
