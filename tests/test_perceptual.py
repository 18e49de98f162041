"""The NTIRE 2023 recipe (models/perceptual.py, train.py flags, test_sr.py scores): Gram and feature losses on
hand-made tensors, gradients into the student, the distillation term against its definition, the teacher cache
against online teachers bit for bit, LPIPS (zero on identical images, equal to the lpips package), the
stereo-consistency scores, and the messages when ImageNet weights are missing. Networks are random here; every VGG,
AlexNet and teacher below is seeded random, never ImageNet weights."""
from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from data.patches import PatchList, sample_patches
from data.teacher_cache import TeacherCache, write_teacher_cache
from evaluation import (block_matching_estimator, consistency_scorer, disparity_mae, ntire_track2_score,
                        stereo_consistency_error, warp_to_left)
from models import build_model, perceptual
from models.nafssr import NAFSSRLoss
from models.outputs import Pair
from models.checkpoint import save_checkpoint
from training.flags import build_parser, resolve_config
from training.objectives import build_criterion
from training.state import INTERRUPTED

FAILS = (ValueError, OSError)   # what a script's main raises; run_script prints it as one line, exit 1 or 2

TINY = ['--model', 'nafssr-t', '--scale_factor', '2', '--trainset', 'sample', '--batch_size', '2',
        '--num_workers', '0', '--max_iters_per_epoch', '2', '--n_epochs', '1', '--total_iters', '0']


def load(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py: small convolutions, shared cores


# ---- losses on hand-made tensors

def test_gram_matrix_and_texture_loss_by_hand():
    f = torch.tensor([[1., 2.], [3., 4.]]).view(1, 2, 1, 2)             # C = 2 channels, 1 x 2 pixels
    gram = perceptual.gram_matrix(f)
    torch.testing.assert_close(gram, torch.tensor([[[5., 11.], [11., 25.]]]) / 4)   # F F^T / (c h w)
    g = torch.zeros_like(f)
    # MSE between Grams: mean((G - 0)^2) = (25 + 121 + 121 + 625) / 16 / 4 entries
    expected = (25 + 121 + 121 + 625) / 16 / 4
    assert perceptual.texture_loss({'a': f}, {'a': g}, {'a': 3.0}).item() == pytest.approx(3 * expected)
    assert perceptual.texture_loss({'a': f}, {'a': g}, {'a': 1.0}, 'l1').item() == pytest.approx((5 + 22 + 25) / 16)
    # the Gram matrix ignores where things are: a spatial permutation of the features leaves it unchanged
    assert perceptual.texture_loss({'a': f}, {'a': f.flip(-1)}, {'a': 1.0}).item() == 0


def test_perceptual_loss_by_hand():
    a, b = torch.tensor([1., 2., 3., 4.]).view(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    c = torch.ones(1, 2, 1, 1)
    value = perceptual.perceptual_loss({'x': a, 'y': c}, {'x': b, 'y': -c}, {'x': 0.5, 'y': 2.0})
    assert value.item() == pytest.approx(0.5 * 2.5 + 2.0 * 2.0)          # L1 means: 2.5 and 2
    assert perceptual.perceptual_loss({'x': a}, {'x': b}, {'x': 1.0}, 'l2').item() == pytest.approx(30 / 4)


def test_layer_names_are_torchvisions_indices():
    """The spec's index tables (BasicSR NAMES; seed code blocks features[0:23] and texture taps 8/17/26/35)."""
    vgg16, vgg19, alex = (perceptual.all_layer_names(a) for a in ('vgg16', 'vgg19', 'alexnet'))
    assert [vgg16.index(n) for n in ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3', 'conv5_3', 'relu5_3')] == \
        [3, 8, 15, 22, 28, 29]
    assert [vgg19.index(n) for n in perceptual.TEXTURE_LAYERS] == [8, 17, 26, 35]
    assert [vgg19.index(n) for n in ('conv5_4', 'pool5')] == [34, 36]
    assert [alex.index(n) for n in perceptual.ALEXNET_TAPS] == [1, 4, 7, 9, 11]


@pytest.fixture(scope='module')
def vgg_files(tmp_path_factory):
    """Random VGG-16/19 state_dicts saved under torchvision's names (stand-ins for the ImageNet files)."""
    folder = tmp_path_factory.mktemp('pretrained')
    for arch in ('vgg16', 'vgg19'):
        trunk = perceptual.frozen_trunk(arch, 8, perceptual.RANDOM, arch)
        torch.save({f'features.{k}': v for k, v in trunk.state_dict().items()}, folder / perceptual.WEIGHT_FILES[arch])
    return folder


def test_vgg_features_are_frozen_loaded_by_name_and_keep_pre_relu_values(vgg_files):
    features = perceptual.VGGFeatures('vgg16', ('conv2_2', 'relu2_2'), vgg_files / 'vgg16-397923af.pth')
    features.train()
    assert not features.training and not any(p.requires_grad for p in features.parameters())
    assert len(features.trunk) == 9                                        # cut after relu2_2
    x = torch.rand(1, 3, 16, 16)
    out = features(x)
    assert out['conv2_2'].min() < 0 and torch.equal(out['relu2_2'], out['conv2_2'].clamp(min=0))
    # ImageNet normalisation: the same as feeding normalised pixels without it
    raw = perceptual.VGGFeatures('vgg16', ('conv2_2',), vgg_files / 'vgg16-397923af.pth', input_norm=False)
    mean, std = torch.tensor(perceptual.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(perceptual.IMAGENET_STD).view(
        1, 3, 1, 1)
    torch.testing.assert_close(raw((x - mean) / std)['conv2_2'], out['conv2_2'])
    with pytest.raises(ValueError, match=r'vgg16 has no layer \[.relu9_9.\]'):
        perceptual.VGGFeatures('vgg16', ('relu9_9',), perceptual.RANDOM)
    with pytest.raises(ValueError, match=r'vgg19-dcbb9e9d.pth does not fit torchvision vgg16'):
        perceptual.VGGFeatures('vgg16', ('relu3_1',), vgg_files / 'vgg19-dcbb9e9d.pth')


# ---- gradients and the distillation term with a tiny student and teachers

@pytest.fixture(scope='module')
def student_and_batch():
    torch.manual_seed(0)
    student = build_model('nafssr-t', 2).train()
    g = torch.Generator().manual_seed(1)
    lr = Pair(torch.rand(2, 3, 8, 16, generator=g), torch.rand(2, 3, 8, 16, generator=g))
    hr = Pair(torch.rand(2, 3, 16, 32, generator=g), torch.rand(2, 3, 16, 32, generator=g))
    teachers = [build_model('nafssr-t', 2).eval() for _ in range(2)]
    return student, lr, hr, teachers


def test_every_recipe_term_sends_gradients_to_the_student(student_and_batch):
    """Each term alone (the others weighted 0) gives the student a finite, non-zero gradient; the texture term too
    (the seed code computed it under no_grad), and no gradient reaches the frozen VGGs or teachers."""
    student, lr, hr, teachers = student_and_batch
    vgg16 = perceptual.FeatureTerm(perceptual.VGGFeatures('vgg16', ('relu1_2', 'relu2_2'), perceptual.RANDOM),
                                   {'relu1_2': 1.0, 'relu2_2': 1.0}, perceptual.perceptual_loss, 'l1')
    vgg19 = perceptual.FeatureTerm(perceptual.VGGFeatures('vgg19', ('relu2_2',), perceptual.RANDOM),
                                   {'relu2_2': 1.0}, perceptual.texture_loss, 'l2')
    group = perceptual.Teachers(teachers, [1.0, 1.0])
    for term in ('perceptual', 'texture', 'distill'):
        objective = perceptual.RecipeObjective(NAFSSRLoss(2, {'mse': 0.0}), vgg16, float(term == 'perceptual'),
                                               vgg19, float(term == 'texture'), 0, group, [1.0, 1.0],
                                               float(term == 'distill'))
        student.zero_grad(set_to_none=True)
        terms = objective(student(*lr), *lr, *hr)
        assert set(terms) == {'mse', 'perceptual', 'texture', 'distill', 'total'}
        assert terms['total'].item() == pytest.approx(terms[term].item())
        terms['total'].backward()
        grads = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])
        assert torch.isfinite(grads).all() and grads.abs().sum() > 0, term
    frozen = [*vgg16.parameters(), *vgg19.parameters(), *group.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_terms_under_autocast_follow_the_step_and_keep_float32_grams(student_and_batch):
    """Under the step's autocast (bfloat16 here, on the CPU) the VGG runs in bfloat16, the Gram products in float32;
    the terms stay close to their float32 values and still reach the student."""
    student, lr, hr, teachers = student_and_batch
    term = perceptual.FeatureTerm(perceptual.VGGFeatures('vgg19', ('relu1_2', 'relu2_2'), perceptual.RANDOM),
                                  {'relu1_2': 1.0, 'relu2_2': 1.0}, perceptual.texture_loss, 'l2')
    features = perceptual.VGGFeatures('vgg16', ('relu2_2',), perceptual.RANDOM)
    sr = Pair(*(torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(s)) for s in (3, 4)))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert features(sr.left)['relu2_2'].dtype == torch.bfloat16
        assert perceptual.gram_matrix(features(sr.left)['relu2_2']).dtype == torch.float32
        low = term(sr, hr.map(lambda x: torch.nn.functional.interpolate(x, size=(32, 48))))
    full = term(sr, hr.map(lambda x: torch.nn.functional.interpolate(x, size=(32, 48))))
    assert low.dtype == torch.float32 and low.item() == pytest.approx(full.item(), rel=0.05)
    objective = perceptual.RecipeObjective(NAFSSRLoss(2), term, 1.0, teachers=perceptual.Teachers(teachers, [1.0]),
                                           teacher_weights=[1.0], distill_weight=1.0)
    student.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        small = Pair(*(torch.nn.functional.interpolate(x, size=(16, 32)) for x in hr))
        terms = objective(student(*lr), *lr, *small)
    terms['total'].backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_flags_off_leave_every_networks_objective_as_it_was(tmp_path):
    """No recipe flag: build_criterion returns the network's own objective (every paper's recipe unchanged)."""
    from models import model_entry
    for name in ('nafssr-t', 'ipassr'):
        args, _ = resolve_config(build_parser().parse_args(['--model', name, '--scale_factor', '2']))
        entry = model_entry(name)
        assert type(build_criterion(args, entry, None)) is entry.criterion
        args.perceptual, args.vgg_weights = True, 'random'
        wrapped = build_criterion(args, entry, None)
        assert isinstance(wrapped, perceptual.RecipeObjective) and type(wrapped.base) is entry.criterion
        assert wrapped.weights == {**wrapped.base.weights, 'perceptual': perceptual.PERCEPTUAL_WEIGHT}


def test_distillation_term_equals_its_definition(student_and_batch):
    """distill = sum_t w_t (L1(S_L, T_t,L) + L1(S_R, T_t,R)) / 2 and total = MSE + lambda x distill."""
    student, lr, hr, teachers = student_and_batch
    weights, lam = [0.3, 2.0], 0.7
    objective = perceptual.RecipeObjective(NAFSSRLoss(2), teachers=perceptual.Teachers(teachers, weights),
                                           teacher_weights=weights, distill_weight=lam)
    student.eval()                                                     # no stochastic depth: one forward to compare
    out = student(*lr)
    terms = objective(out, *lr, *hr)
    expected = 0.0
    for teacher, w in zip(teachers, weights):
        t = teacher(*lr)
        expected += w * ((out.sr_left - t.sr_left).abs().mean() + (out.sr_right - t.sr_right).abs().mean()) / 2
    mse = ((out.sr_left - hr.left).pow(2).mean() + (out.sr_right - hr.right).pow(2).mean()) / 2
    assert terms['distill'].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms['total'].item() == pytest.approx((mse + lam * expected).item(), rel=1e-6)
    assert expected.item() > 0.01                                      # a real distance, not a zero by accident
    # given (cached) teacher outputs replace the online teachers
    cached = [Pair(t(*lr).sr_left, t(*lr).sr_right) for t in teachers]
    assert objective(out, *lr, *hr, teacher=cached)['distill'].item() == pytest.approx(expected.item(), rel=1e-6)
    student.train()


# ---- the teacher cache: augmented like the ground truth, bit for bit

def transforms():
    """The 24 augmentations of a view pair: (hflip with swap, vflip, channel permutation)."""
    return itertools.product((False, True), (False, True), itertools.permutations(range(3)))


def apply(pair, hflip, vflip, channels):
    left, right = (x[list(channels)] for x in pair)
    if hflip:
        left, right = right.flip(-1), left.flip(-1)
    if vflip:
        left, right = left.flip(-2), right.flip(-2)
    return left, right


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_cached_teacher_outputs_equal_online_ones_after_augmentation(tmp_path, dtype):
    torch.manual_seed(0)
    teacher = build_model('nafssr-t', 2).eval()
    patches = sample_patches(2)[:6]
    dataset = PatchList(patches, 2, augment=True, seed=3)
    dataset.channel_shuffle = True

    def predict(left, right):
        with torch.no_grad():
            out = teacher(left, right)
        return [(out.sr_left, out.sr_right), (out.sr_left * 0.5, out.sr_right * 0.5)]   # two "teachers"
    write_teacher_cache(dataset, predict, tmp_path, {'test': True, 'dtype': dtype}, batch_size=1)
    meta = json.loads((tmp_path / 'meta.json').read_text())
    assert meta['complete'] and meta['source'] == {'test': True, 'dtype': dtype}
    size = {'float32': 4, 'float16': 2}[dtype] * 6 * 2 * 2 * 60 * 180 * 3
    assert meta['arrays']['teacher_outputs.npy'] == {'shape': [6, 2, 2, 60, 180, 3], 'dtype': np.dtype(dtype).str,
                                                     'bytes': (tmp_path / 'teacher_outputs.npy').stat().st_size}
    assert meta['arrays']['teacher_outputs.npy']['bytes'] - size in (128, 256)       # the .npy header
    dataset.extras = TeacherCache(tmp_path)
    seen = set()
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for index in range(len(patches)):
            hr_l, hr_r, lr_l, lr_r, cached_l, cached_r = dataset[index]
            assert cached_l.shape == (2, 3, 60, 180) and cached_l.dtype == torch.float32
            raw = [torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1))).float() / 255 for v in patches[index]]
            # the augmentation this item got: the one transform that maps the raw HR pair onto the item's
            found = [t for t in transforms()
                     if all(torch.equal(a, b) for a, b in zip(apply(raw[:2], *t), (hr_l, hr_r)))]
            assert len(found) == 1
            seen.add(found[0][:2])
            online = predict(raw[2][None], raw[3][None])
            for k, (left, right) in enumerate(online):
                left, right = (x[0].to(getattr(torch, dtype)).float() for x in (left, right))
                expected = apply((left, right), *found[0])
                assert torch.equal(cached_l[k], expected[0]) and torch.equal(cached_r[k], expected[1])
    assert len(seen) >= 3                                              # several flip combinations were exercised
    # workers get a picklable source that opens its own memory map
    import pickle
    assert pickle.loads(pickle.dumps(dataset.extras)).array is None


# ---- train.py: the whole recipe trains, records its teachers, resumes; clear refusals

@pytest.fixture(scope='module')
def teacher_checkpoint(tmp_path_factory):
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp('teacher') / 'teacher_x2.pth'
    save_checkpoint(path, build_model('nafssr-s', 2), epoch=0, args={'model': 'nafssr-s', 'scale_factor': 2})
    return path


def test_training_with_every_term_records_teachers_and_resumes(tmp_path, teacher_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger='train')
    run = tmp_path / 'run'
    argv = TINY + ['--perceptual', '--perceptual_layers', 'relu1_2,relu2_2=0.5', '--texture', '--texture_layers',
                   'relu2_2', '--vgg_weights', 'random', '--teacher', str(teacher_checkpoint), '0.5',
                   '--checkpoint_dir', str(run), '--stop_after', '1']
    assert train.main(argv) == INTERRUPTED
    assert 'RANDOM-INITIALISED VGG16' in caplog.text and 'RANDOM-INITIALISED VGG19' in caplog.text
    saved = load(run / 'last.pth')
    assert saved['teachers'][0]['model'] == 'nafssr-s' and saved['teachers'][0]['weight'] == 0.5
    assert len(saved['teachers'][0]['sha256']) == 64
    assert saved['args']['teacher'] == [[str(teacher_checkpoint), '0.5']] and saved['args']['vgg_weights'] == 'random'
    caplog.clear()
    assert train.main(['--resume', str(run / 'last.pth'), '--num_workers', '0']) == 0
    assert f'teacher {teacher_checkpoint} (nafssr-s) x 0.5' in caplog.text
    row = json.loads((run / 'log.jsonl').read_text().splitlines()[-1])
    for term in ('mse', 'perceptual', 'texture', 'distill'):
        assert row[f'loss_{term}'] > 0, term
    weights = {'mse': 1.0, 'perceptual': perceptual.PERCEPTUAL_WEIGHT, 'texture': perceptual.TEXTURE_WEIGHT,
               'distill': perceptual.DISTILL_WEIGHT}
    assert row['loss_total'] == pytest.approx(sum(w * row[f'loss_{k}'] for k, w in weights.items()), rel=1e-5)
    # a resume with another teacher file is refused
    torch.manual_seed(6)
    save_checkpoint(teacher_checkpoint, build_model('nafssr-s', 2), epoch=0, args={'model': 'nafssr-s',
                                                                                     'scale_factor': 2})
    with pytest.raises(FAILS, match=r'teacher .*teacher_x2.pth is not the file the run was trained with'):
        train.main(['--resume', str(run / 'last.pth'), '--num_workers', '0', '--n_epochs', '2'])


def test_teacher_cache_run_builds_once_then_reuses(tmp_path, teacher_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger='train')
    import imageio.v3 as iio
    for i, views in enumerate(sample_patches(2)[:4]):                   # a 4-patch training folder
        (tmp_path / 'patches' / 'patches_x2' / f'{i:06d}').mkdir(parents=True)
        for name, view in zip(('hr0', 'hr1', 'lr0', 'lr1'), views):
            iio.imwrite(tmp_path / 'patches' / 'patches_x2' / f'{i:06d}' / f'{name}.png', view)
    cache = tmp_path / 'cache'
    argv = TINY + ['--trainset', 'patches', '--trainset_dir', str(tmp_path / 'patches'), '--teacher',
                   str(teacher_checkpoint), '--teacher_cache', str(cache), '--max_iters_per_epoch', '1']
    assert train.main(argv + ['--checkpoint_dir', str(tmp_path / 'a')]) == 0
    meta = json.loads((cache / 'meta.json').read_text())
    outputs = np.load(cache / 'teacher_outputs.npy', mmap_mode='r')
    assert meta['complete'] and meta['source']['trainset_patches'] == 4 and outputs.shape == (4, 1, 2, 60, 180, 3)
    assert meta['source']['teacher_networks'] == ['nafssr-s'] and meta['paths'] == [str(teacher_checkpoint)]
    stamp = (cache / 'teacher_outputs.npy').stat().st_mtime_ns
    assert train.main(argv + ['--checkpoint_dir', str(tmp_path / 'b')]) == 0
    assert 'teacher cache: reusing' in caplog.text and (cache / 'teacher_outputs.npy').stat().st_mtime_ns == stamp
    row = json.loads((tmp_path / 'b' / 'log.jsonl').read_text())
    assert row['loss_distill'] > 0
    with pytest.raises(FAILS, match=r'meta.json: dtype differs \(cache .float32., this run .float16.\)'):
        train.main(argv + ['--checkpoint_dir', str(tmp_path / 'c'), '--teacher_cache_dtype', 'float16'])


def test_refusals_name_the_flag(tmp_path, teacher_checkpoint):
    with pytest.raises(FAILS, match=r'--teacher_cache cannot be used with --trainset synthetic: its patches are '
                                         r'new every epoch'):
        train.main(TINY + ['--trainset', 'synthetic', '--teacher', str(teacher_checkpoint), '--teacher_cache',
                           str(tmp_path / 'c'), '--checkpoint_dir', str(tmp_path / 'r')])
    with pytest.raises(FAILS, match=r'--teacher .*: .nafssr-x. is neither a network of the zoo'):
        train.main(TINY + ['--teacher', str(teacher_checkpoint), 'nafssr-x', '--checkpoint_dir', str(tmp_path / 'r')])
    with pytest.raises(FAILS, match=r'--teacher: .*holds x2 weights but the model was built for x4'):
        train.main(TINY + ['--scale_factor', '4', '--teacher', str(teacher_checkpoint),
                           '--checkpoint_dir', str(tmp_path / 'r')])
    with pytest.raises(FAILS, match=r'--drop_path: ipassr has no stochastic depth'):
        train.main(TINY + ['--model', 'ipassr', '--drop_path', '0.1', '--checkpoint_dir', str(tmp_path / 'r')])
    with pytest.raises(FAILS, match=r'--perceptual_layers / --vgg_weights: vgg16 has no layer'):
        train.main(TINY + ['--perceptual', '--perceptual_layers', 'relu4_4', '--vgg_weights', 'random',
                           '--checkpoint_dir', str(tmp_path / 'r')])
    assert not (tmp_path / 'r' / 'last.pth').exists()


# ---- missing ImageNet weights: a message before training, never a download

def test_missing_weights_stop_the_run_with_the_file_the_place_and_the_flag(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('a download was attempted')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', no_network)
    monkeypatch.setattr(perceptual, 'hub_checkpoints', lambda: tmp_path / 'hub' / 'checkpoints')
    empty = tmp_path / 'weights'
    empty.mkdir()
    with pytest.raises(FAILS) as err:
        train.main(TINY + ['--texture', '--vgg_weights', str(empty), '--checkpoint_dir', str(tmp_path / 'run')])
    message = str(err.value)
    assert message.startswith('--texture (ImageNet VGG19) needs the file vgg19-dcbb9e9d.pth, not found in ')
    for part in (str(empty), str(tmp_path / 'hub' / 'checkpoints'), 'https://download.pytorch.org/models/'
                 'vgg19-dcbb9e9d.pth', 'checkpoints/pretrained/', '--vgg_weights DIR', '--download_weights',
                 '--vgg_weights random'):
        assert part in message, part
    assert not (tmp_path / 'run' / 'last.pth').exists()
    # the torch-hub cache is where torchvision's own download puts the file: found there without any flag
    hub = tmp_path / 'hub' / 'checkpoints'
    hub.mkdir(parents=True)
    (hub / 'vgg19-dcbb9e9d.pth').write_bytes(b'x')
    assert perceptual.find_weights('vgg19-dcbb9e9d.pth', empty, '--vgg_weights', 'x') == hub / 'vgg19-dcbb9e9d.pth'
    with pytest.raises(ValueError, match=r'--lpips: LPIPS \(its AlexNet trunk\) needs the file '
                                         r'alexnet-owt-7be5be79.pth.*--lpips_weights DIR'):
        import test_sr
        (empty / 'alex.pth').write_bytes(b'')
        test_sr.perceptual_scorers(test_sr.parse_args(['--lpips', '--lpips_weights', str(empty)]), torch.device('cpu'))


# ---- LPIPS

def crops(samples_dir: Path, size: int = 64):
    from data.readers import read_image
    out = []
    for name, (top, left) in (('flickr1024_0026', (300, 400)), ('kitti2012_000000', (150, 600))):
        pair = [read_image(samples_dir / name / f) for f in ('left.png', 'right.png')]
        out.append([torch.from_numpy(v[top:top + size, left:left + size].transpose(2, 0, 1).copy()) for v in pair])
    return torch.stack([a for a, _ in out]), torch.stack([b for _, b in out])


def test_lpips_is_zero_on_identical_images_and_positive_otherwise():
    metric = perceptual.LPIPS(perceptual.RANDOM, None)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(metric(x, x), torch.zeros(2))
    noisy = metric(x, (x + 0.1 * torch.randn_like(x)).clamp(0, 1))
    assert (noisy > 0).all() and (metric(x, (x + 0.3 * torch.randn_like(x)).clamp(0, 1)) > noisy).all()


def lpips_package():
    """The lpips package: installed, or unpacked (e.g. from `pip download lpips`) at $LPIPS_PACKAGE_DIR."""
    folder = os.environ.get('LPIPS_PACKAGE_DIR')
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    return pytest.importorskip('lpips', reason='lpips package not installed and LPIPS_PACKAGE_DIR not set')


def test_lpips_equals_the_reference_package_on_real_pairs(samples_dir):
    """Same random AlexNet trunk and the package's own v0.1 heads on both sides: every step of the computation
    (scaling, taps, normalisation, heads, averaging) equals lpips.LPIPS(net='alex', version='0.1')."""
    lpips = lpips_package()
    torch.manual_seed(0)
    reference = lpips.LPIPS(net='alex', version='0.1', pnet_rand=True, verbose=False).eval()
    trunk = {f'features.{k.split(".", 1)[1]}': v for k, v in reference.net.state_dict().items()}  # slice{k}.{i}.*
    heads = Path(lpips.__file__).parent / 'weights' / 'v0.1' / 'alex.pth'
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        torch.save(trunk, Path(folder) / 'alexnet-owt-7be5be79.pth')
        ours = perceptual.LPIPS(Path(folder) / 'alexnet-owt-7be5be79.pth', heads)
    left, right = crops(samples_dir)
    with torch.no_grad():
        expected = reference(left, right, normalize=True).flatten()
        torch.testing.assert_close(ours(left, right), expected, rtol=1e-5, atol=1e-7)
        assert (expected > 0.01).all()


def test_lpips_with_imagenet_weights_equals_the_package(samples_dir):
    """The real metric: only when torchvision's AlexNet file is on this machine (hub cache or
    checkpoints/pretrained/) and the lpips package is available."""
    lpips = lpips_package()
    try:
        metric, _ = perceptual.build_lpips(None)
    except perceptual.MissingWeightsError as err:
        pytest.skip(f'ImageNet AlexNet weights absent: {str(err)[:120]}')
    reference = lpips.LPIPS(net='alex', version='0.1', verbose=False).eval()   # reads the same file from the cache
    left, right = crops(samples_dir)
    with torch.no_grad():
        torch.testing.assert_close(metric(left, right), reference(left, right, normalize=True).flatten(),
                                   rtol=1e-5, atol=1e-7)


# ---- stereo consistency and the NTIRE 2023 Track-2 score

def shifted_pair(shift: int = 5):
    """A right view that is the left view shifted by `shift` pixels: left(x) = right(x - shift)."""
    g = torch.Generator().manual_seed(0)
    scene = torch.rand(1, 3, 24, 64 + shift, generator=g)
    left, right = scene[..., :-shift], scene[..., shift:]
    return left, right, torch.full((1, 1, 24, 64), float(shift))


def test_warp_by_an_integer_disparity_is_a_pixel_shift():
    left, right, disparity = shifted_pair(5)
    warped, inside = warp_to_left(right, disparity)
    assert torch.equal(warped[..., 5:], left[..., 5:]) and not inside[..., :5].any() and inside[..., 5:].all()
    half, _ = warp_to_left(right, disparity - 0.5)                     # half-pixel: the mean of two neighbours
    torch.testing.assert_close(half[..., 6:], (right[..., 1:-5] + right[..., 2:-4]) / 2)


def test_stereo_consistency_is_zero_for_a_shift_and_grows_with_noise():
    left, right, disparity = shifted_pair(5)
    assert stereo_consistency_error(left, right, disparity).item() == 0
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(right.shape, generator=g)
    errors = [stereo_consistency_error(left, right + s * noise, disparity).item() for s in (0.01, 0.05, 0.2)]
    assert 0 < errors[0] < errors[1] < errors[2]
    assert errors[1] == pytest.approx(0.05 * (2 / np.pi) ** 0.5, rel=0.1)   # E|N(0, s)| = s sqrt(2/pi)
    # occluded / unknown pixels (0, NaN) are left out: noise only there changes nothing
    occluded = disparity.clone()
    occluded[..., 30:] = float('nan')
    corrupted = right.clone()
    corrupted[..., 25:] += 1.0                                         # only seen from left columns >= 30
    assert stereo_consistency_error(left, corrupted, occluded).item() == 0


def test_ntire_disparity_term_and_score():
    left, right, _ = shifted_pair(5)
    estimate = block_matching_estimator(32)
    assert disparity_mae(estimate(left, right), estimate(left, right)) == 0
    assert disparity_mae(torch.tensor([1., 2., float('nan')]), torch.tensor([2., 4., 0.])) == pytest.approx(1.5)
    assert ntire_track2_score(0.2, 0.3, 0.1) == pytest.approx(0.65)
    from data.testsets import Scene
    scene = Scene('s', lr=(Path('a'), Path('b')), hr=(Path('c'), Path('d')))
    values = consistency_scorer(estimate)(scene, left[0], right[0], left[0], right[0])
    assert values == {'disp_s': 0.0}                                   # no ground truth: only the NTIRE term


def test_sr_prints_lpips_consistency_and_the_track2_score(tmp_path, capsys):
    """test_sr.py on a small Middlebury crop with ground truth: the bicubic pair's scores, and Track-2 = 1 - L/2 -
    R/2 - S from the same numbers."""
    import imageio.v3 as iio
    from skimage import data as skdata
    import test_sr
    from data import prepare_test
    from data.readers import write_pfm
    raw = tmp_path / 'raw' / 'motorcycle'
    raw.mkdir(parents=True)
    left, right, disparity = skdata.stereo_motorcycle()
    rows, cols = slice(200, 264), slice(300, 560)
    iio.imwrite(raw / 'im0.png', left[rows, cols])
    iio.imwrite(raw / 'im1.png', right[rows, cols])
    write_pfm(raw / 'disp0GT.pfm', disparity[rows, cols])
    prepare_test.main(['--preset', 'middlebury', '--src', str(raw.parent), '--out', str(tmp_path / 'test'),
                       '--no-halve', '--scale_factor', '2'])
    results = test_sr.main(['--model', 'bicubic', '--scale_factor', '2', '--testset_dir', str(tmp_path / 'test'),
                            '--lpips', '--lpips_weights', 'random', '--stereo_consistency', '--disparity_net',
                            'block_matching', '--no_save'])
    r = results['Middlebury']
    assert 0 < r['lpips_l'] < 1 and 0 < r['lpips_r'] < 1 and r['disp_s'] > 0
    assert r['track2'] == pytest.approx(1 - r['lpips_l'] / 2 - r['lpips_r'] / 2 - r['disp_s'])
    assert 0 < r['sc_hr'] < 0.2 and 0 < r['sc_sr'] < 0.2                 # Middlebury 2006: the views match well
    out = capsys.readouterr().out
    assert 'RANDOM AlexNet trunk' in out and 'NTIRE 2023 Track-2 score' in out and f"{r['track2']:.4f}" in out
