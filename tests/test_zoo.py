"""The model zoo as the scripts see it: every registered network keeps the output contract, its recipe reaches
train.py, its authors' checkpoint formats load through the one loader, and the fast kernels equal the plain forms."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import train
from conftest import random_pair, randomise_batchnorm
from data.patches import PatchList, sample_patches
from evaluation import scene_scores
from models import DISPARITY_MODELS, MODEL_NAMES, STEREO_MODELS, StereoOutput, build_model, kernels, model_entry
from models.checkpoint import load_model, save_checkpoint
from training.flags import build_parser, resolve_config

# The authors' state_dict layouts (names, order and shapes, ../shared/reference/*_state_dict.json, read from their
# code), as sha256 of the 'key:[shape]' lines, first 16 hex digits, and the number of entries: CI checks every
# network against them without the reference files. NAFSSR x2: its x4 layout with up.0 at 3 * 2^2 channels (spec §4).
LAYOUTS = {
    ('ssrdefnet', 2): ('19b847181a91a6f1', 420), ('ssrdefnet', 4): ('b41aba349133df56', 420),
    ('ipassr', 2): ('5aae1df06343f6ab', 119), ('ipassr', 4): ('36a969bbcee63b87', 119),
    ('nafssr-t', 2): ('1ee03550f44dab82', 516), ('nafssr-t', 4): ('c3f7879c4b2c17d5', 516),
    ('nafssr-s', 2): ('b938ab84366dd424', 1028), ('nafssr-s', 4): ('16cb889fc0222b44', 1028),
    ('nafssr-b', 2): ('44f372f84c5b6beb', 2052), ('nafssr-b', 4): ('2026366e67bf2f10', 2052),
    ('nafssr-l', 2): ('1945fc190c23e5e1', 4100), ('nafssr-l', 4): ('5f487a6fcf747b0d', 4100),
    # ISRResCNet: no layer depends on the scale; the residual blocks listed twice (model.resblocks, fbblock.RBs)
    ('isrrescnet', 2): ('ece7f630c7835816', 92), ('isrrescnet', 4): ('ece7f630c7835816', 92),
    # SRNet: x4 = srnet_zoom_x4_state_dict.json; one upsampler conv per x2 (tail.0.{0,3,6}) in both branches
    ('srnet', 2): ('b4329673c2763073', 900), ('srnet', 4): ('183d19baab5af675', 904),
    ('srnet', 8): ('0c102c82b0d13dd8', 908),
    # DSDMSR (disparity maps): no authors' weights; our names (stages.{k}.units.{i}, fusion), 78 entries at x8 as the
    # third-party DSDMSR_x8 (spec 2.2), mapped onto theirs by models.dsdmsr.third_party_key
    ('dsdmsr', 4): ('dab530759bd48db2', 54), ('dsdmsr', 8): ('44e29418da1d0cc6', 78),
    # CVHSSR: cvhssr_{t,s}_x{2,4}_state_dict.json (x2: up.0 at 3 * 2^2 channels)
    ('cvhssr-t', 2): ('383b45563cab4d88', 836), ('cvhssr-t', 4): ('c28cc428fa4514b5', 836),
    ('cvhssr-s', 2): ('5365dea56cfb90f9', 1668), ('cvhssr-s', 4): ('595446216f6df6e0', 1668),
    # SCGLANet: x4 only (the authors configure no other scale) = scglanet_x4_state_dict.json
    ('scglanet', 4): ('3bca5e1e46b39807', 4128),
    # EHFSSR-S / EHFSSR: ehfssr{_s,}_x{2,4}_state_dict.json
    ('ehfssr-s', 2): ('cc074e5ed06340ba', 865), ('ehfssr-s', 4): ('01e7b2a25c452404', 865),
    ('ehfssr', 2): ('4551c3e54382d84e', 845), ('ehfssr', 4): ('3bbefce97a04eedf', 845),
    # SwinFIRSSR: swinfirssr_x{2,4}_state_dict.json, with the two int64 relative-position index buffers
    ('swinfirssr', 2): ('1381386689ec0265', 994), ('swinfirssr', 4): ('c66472acfc9f2c51', 996),
}


def layout_digest(items) -> tuple[str, int]:
    items = list(items)
    text = '\n'.join(f'{key}:{list(shape)}' for key, shape in items)
    return hashlib.sha256(text.encode()).hexdigest()[:16], len(items)


@pytest.mark.parametrize('name, scale', sorted(LAYOUTS))
def test_state_dict_layouts_equal_the_authors(name, scale):
    """So that the authors' checkpoints load strictly: every key, in order, with its shape."""
    model = build_model(name, scale)
    assert layout_digest((k, v.shape) for k, v in model.state_dict().items()) == LAYOUTS[name, scale]


def test_the_zoo_has_every_network():
    assert set(MODEL_NAMES) >= {'ssrdefnet', 'nafssr-t', 'nafssr-s', 'nafssr-b', 'nafssr-l', 'ipassr'}
    assert set(MODEL_NAMES) == {name for name, _ in LAYOUTS}       # a new network adds its layout here
    assert DISPARITY_MODELS == ('ssrdefnet',)
    with pytest.raises(ValueError, match='unknown model .*available: ssrdefnet'):
        build_model('passrnet', 4)


def test_an_option_shared_by_networks_is_defined_once():
    """`--help` shows an option once for every network that takes it (models.add_model_args), with the first
    definition's help: networks sharing an option name must share its definition, or the others' help and choices
    would be silently dropped (CVHSSR's --tlc used to be shown as 'NAFSSR: ...')."""
    definitions: dict[str, dict] = {}
    for name in MODEL_NAMES:
        for option in model_entry(name).options:
            first = definitions.setdefault(option.name, {'owner': name, 'option': option})
            assert option == first['option'], f'--{option.name} of {name} differs from {first["owner"]}\'s'
    assert {'tlc', 'drop_path', 'channel_order'} <= definitions.keys()


# Every stereo network of the registry, at its smallest scale: a new network is tested by being registered.
CONTRACT_CASES = [(name, min(model_entry(name).scales)) for name in STEREO_MODELS]


@pytest.mark.parametrize('name, scale', CONTRACT_CASES)
def test_every_network_returns_the_output_contract(name, scale):
    """Train and eval mode: the final SR pair (B, 3, sH, sW), finite; disparities exactly where the network
    estimates them. 30x30 is the smallest pair every network accepts. No gradients: a training step of ISRResCNet at
    this size needs several GiB (its own tests train on smaller crops)."""
    torch.manual_seed(0)
    model = build_model(name, scale)
    left, right = random_pair(2, 30, 30)
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            out = model(left, right)
        assert isinstance(out, StereoOutput)
        assert out.sr_left.shape == out.sr_right.shape == (2, 3, 30 * scale, 30 * scale)
        assert torch.isfinite(out.sr_left).all() and torch.isfinite(out.sr_right).all()
        if model_entry(name).estimates_disparity:
            assert out.disp_left.shape == out.disp_right.shape == (2, 1, 30 * scale, 30 * scale)
        else:
            assert out.disp_left is None and out.disp_right is None


@pytest.mark.parametrize('name', ['ssrdefnet', 'nafssr-t', 'ipassr'])    # the networks with an upsampled-input skip
@pytest.mark.parametrize('scale', [2, 4])
def test_sr_follows_the_lr_input_at_initialisation(name, scale):
    """Train and eval mode: the SR output is closer to the bicubic upsampling of its own LR view than to another
    image's (a network without a global skip, e.g. SRNet, starts from noise and is not held to it)."""
    torch.manual_seed(0)
    model = build_model(name, scale)
    left, right = random_pair(2, 30, 30)
    up = torch.nn.functional.interpolate(left, scale_factor=scale, mode='bicubic', align_corners=False)
    for training in (True, False):
        model.train(training)
        with torch.set_grad_enabled(training):
            out = model(left, right)
        assert (out.sr_left - up).abs().mean() < (out.sr_left - up.flip(-1)).abs().mean()


def test_larger_nafssr_variants_build_and_run():
    """S, B and L are the same code as T at other widths and depths; one forward each on a small pair. At
    initialisation every residual scale is zero, so each body is the identity: SR = up(intro(x)) + bilinear(x)."""
    left, right = random_pair(1, 12, 20)
    for name in ('nafssr-s', 'nafssr-b', 'nafssr-l'):
        model = build_model(name, 4).eval()
        with torch.no_grad():
            out = model(left, right)
            expected = model.up(model.intro(right)) + torch.nn.functional.interpolate(
                right, scale_factor=4, mode='bilinear', align_corners=False)
        assert out.sr_left.shape == (1, 3, 48, 80)
        assert (out.sr_right - expected).abs().max() < 1e-5


def resolved(argv: list[str]):
    return resolve_config(build_parser().parse_args(argv))[0]


def test_each_network_trains_with_its_authors_recipe_unless_overridden():
    ssrdef = resolved([])
    assert (ssrdef.model, ssrdef.optimizer, ssrdef.lr, ssrdef.batch_size, ssrdef.schedule, ssrdef.n_steps,
            ssrdef.gamma, ssrdef.n_epochs, ssrdef.grad_clip, ssrdef.channel_shuffle) == \
        ('ssrdefnet', 'adam', 2e-4, 12, 'step', 30, 0.5, 80, 0.0, False)
    naf = resolved(['--model', 'nafssr-s'])     # NAFSSR-S_x4.yml
    assert (naf.optimizer, naf.lr, naf.betas, naf.weight_decay, naf.schedule, naf.eta_min, naf.total_iters,
            naf.grad_clip, naf.channel_shuffle, naf.batch_size) == \
        ('adamw', 3e-3, (0.9, 0.9), 0.0, 'cosine', 1e-7, 100_000, 0.01, True, 32)
    assert resolved(['--model', 'nafssr-t']).total_iters == 400_000
    # --n_epochs alone counts epochs under an iteration-based recipe too; --total_iters, when given, still wins
    assert (resolved(['--model', 'nafssr-t', '--n_epochs', '1']).total_iters,
            resolved(['--model', 'nafssr-t', '--n_epochs', '1', '--total_iters', '5']).total_iters) == (0, 5)
    ipassr = resolved(['--model', 'ipassr'])    # iPASSR train.py defaults
    assert (ipassr.optimizer, ipassr.lr, ipassr.betas, ipassr.batch_size, ipassr.n_steps, ipassr.n_epochs) == \
        ('adam', 2e-4, (0.9, 0.999), 36, 30, 80)
    mine = resolved(['--model', 'nafssr-s', '--lr', '1e-3', '--no-channel_shuffle', '--batch_size', '4'])
    assert (mine.lr, mine.channel_shuffle, mine.batch_size, mine.optimizer) == (1e-3, False, 4, 'adamw')
    assert model_entry('nafssr-s').criterion.DEFAULT_WEIGHTS == {'mse': 1.0}


@pytest.mark.parametrize('name', ['nafssr-t', 'ipassr'])
def test_train_py_runs_every_network_and_resumes_its_recipe(name, tmp_path):
    """Two iterations of train.py on the built-in sample with the network's own loss, optimiser and schedule; the
    checkpoint records the network, and --resume takes it (and the recipe) from there."""
    run = tmp_path / 'run'
    argv = ['--model', name, '--scale_factor', '4', '--trainset', 'sample', '--batch_size', '2', '--num_workers', '0',
            '--max_iters_per_epoch', '1', '--n_epochs', '1', '--total_iters', '0', '--checkpoint_dir', str(run)]
    assert train.main(argv) == 0
    saved = torch.load(run / 'last.pth', weights_only=True)
    assert saved['args']['model'] == name and saved['epoch'] == 1
    assert saved['args']['optimizer'] == model_entry(name).recipe.optimizer
    assert train.main(['--resume', str(run / 'last.pth'), '--n_epochs', '2', '--num_workers', '0']) == 0
    resumed = torch.load(run / 'last.pth', weights_only=True)
    assert resumed['epoch'] == 2 and resumed['args']['model'] == name
    model, _ = load_model(run / 'last.pth', 4)                        # the checkpoint names its network
    assert model.zoo_name == name


def test_cosine_recipe_steps_every_iteration(tmp_path):
    """NAFSSR's schedule: cosine over total_iters, stepped every iteration (BasicSR: iteration k runs at lr(k-1))."""
    run = tmp_path / 'run'
    assert train.main(['--model', 'nafssr-t', '--trainset', 'sample', '--batch_size', '5', '--num_workers', '0',
                       '--total_iters', '8', '--lr', '1e-3', '--checkpoint_dir', str(run)]) == 0
    saved = torch.load(run / 'last.pth', weights_only=True)
    assert saved['epoch'] == 2                                      # 25 patches / 5 = 5 iterations per epoch
    expected = 1e-7 + (1e-3 - 1e-7) * (1 + np.cos(np.pi * 8 / 8)) / 2
    assert saved['scheduler']['_last_lr'][0] == pytest.approx(expected, abs=1e-12)
    assert saved['scheduler']['last_epoch'] == 8


def test_channel_shuffle_permutes_all_views_alike_and_keeps_the_flips():
    patches = sample_patches(4)[:6]
    plain, shuffled = PatchList(patches, 4, seed=3), PatchList(patches, 4, seed=3)
    shuffled.channel_shuffle = True
    permutations = set()
    for i in range(6):
        a, b = plain[i], shuffled[i]
        perm = next(p for p in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
                    if torch.equal(b[0], a[0][list(p)]))
        assert all(torch.equal(y, x[list(perm)]) for x, y in zip(a, b))    # same permutation for HR/LR, L/R
        permutations.add(perm)
    assert len(permutations) > 1


def test_authors_release_formats_load_with_what_they_imply(tmp_path):
    """NAFSSR's BasicSR file {'params': ...} with 'module.' keys feeds BGR; iPASSR's {'epoch', 'state_dict'} uses
    batch statistics at test time as its test.py; a project checkpoint names its network and options."""
    torch.manual_seed(0)
    naf = build_model('nafssr-t', 4)
    torch.save({'params': {'module.' + k: v for k, v in naf.state_dict().items()}}, tmp_path / 'NAFSSR-T_4x.pth')
    loaded, _ = load_model(tmp_path / 'NAFSSR-T_4x.pth', 4, name='nafssr-t')
    assert loaded.config.channel_order == 'bgr'
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in naf.state_dict().items())

    ipassr = build_model('ipassr', 4)
    torch.save({'epoch': 80, 'state_dict': ipassr.state_dict()}, tmp_path / 'iPASSR_4xSR.pth.tar')
    loaded, _ = load_model(tmp_path / 'iPASSR_4xSR.pth.tar', 4, name='ipassr')
    assert loaded.config.bn_batch_stats

    save_checkpoint(tmp_path / 'mine.pth', naf, args={'model': 'nafssr-t', 'channel_order': 'rgb'})
    loaded, _ = load_model(tmp_path / 'mine.pth', 4, options={'tlc': False, 'fix_right_cost_volume': True})
    assert loaded.zoo_name == 'nafssr-t' and loaded.config.channel_order == 'rgb' and not loaded.config.tlc
    with pytest.raises(ValueError, match='is a checkpoint of nafssr-t, not ipassr; use --model nafssr-t'):
        load_model(tmp_path / 'mine.pth', 4, name='ipassr')
    with pytest.raises(ValueError, match='does not fit'):
        load_model(tmp_path / 'NAFSSR-T_4x.pth', 4, name='nafssr-s')


@pytest.mark.parametrize('training', [False, True])
def test_fast_kernels_equal_the_plain_forms_of_ssrdefnet(training):
    """The seam of models/kernels.py: the whole network with its fast forms (banded, folded, rewritten) equals the
    network as its files write it, in float64, in evaluation and in training (values and gradients)."""
    torch.manual_seed(0)
    model = build_model('ssrdefnet', 2).double().train(training)   # x2: the same kernels, smaller HR maps
    randomise_batchnorm(model)
    left, right = (x.double() for x in random_pair(1, 30, 60))

    def run():
        model.zero_grad()
        with torch.set_grad_enabled(training):
            out = model(left, right)
        if training:
            (out.sr_left.square().mean() + out.disp_hr[0].right.mean() * 1e-3).backward()
            return [out.sr_left, out.disp_left, model.init_feature.weight.grad.clone()]
        return [out.sr_left, out.sr_right, out.disp_left]

    fast = run()
    with kernels.plain_forms():
        plain = run()
    for a, b in zip(fast, plain):   # relative to the values' size (HR disparities reach ~100 px)
        assert (a - b).abs().max() < 1e-10 * max(1.0, b.abs().max().item())


def test_nafssr_protocol_equals_basicsr_metrics():
    """--protocol nafssr: PSNR per view on rounded 8-bit images, averaged; SSIM = skimage over the 6-channel stack."""
    from skimage.metrics import structural_similarity
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (2, 40, 100, 3)).astype(np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-25, 25, hr.shape), 0, 255).astype(np.uint8)
    t = [torch.from_numpy(x.transpose(2, 0, 1)).double() / 255 for x in (*sr, *hr)]
    scores = scene_scores(t[0], t[2], t[1], t[3], protocol='nafssr')
    psnrs = [10 * np.log10(255 ** 2 / np.mean((s.astype(float) - h) ** 2)) for s, h in zip(sr, hr)]
    assert scores['psnr_avg'] == pytest.approx(np.mean(psnrs), abs=1e-9)
    stack = structural_similarity(np.concatenate(sr, 2), np.concatenate(hr, 2), channel_axis=-1, data_range=255)
    assert scores['ssim_avg'] == pytest.approx(stack, abs=1e-9)
    assert scene_scores(t[0], t[2], t[1], t[3])['ssim_avg'] != pytest.approx(stack, abs=1e-6)   # evaluation.m's
