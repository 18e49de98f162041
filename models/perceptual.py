"""The NTIRE 2023 perceptual recipe, for any network of the zoo: frozen ImageNet feature networks (VGG-16/19,
AlexNet) read from local files, the perceptual, texture (Gram) and distillation terms, the LPIPS v0.1 metric, and
`RecipeObjective`, which adds those terms to a network's own objective.

Sources: BasicSR `VGGFeatureExtractor` / `PerceptualLoss` (basicsr/archs/vgg_arch.py, basicsr/losses/basic_loss.py),
the seed team's code `i-sahajmistry/NTIRE-SSR-DVision` (basicsr/models/losses/losses.py,
options/train/NTIRE/NTIRE-23.yml, basicsr/models/knowledge_distillation_model.py), the lpips 0.1.4 package
(lpips/pretrained_networks.py, lpips/lpips.py). What is decided here:
* Perceptual: sum over VGG-16 layers of weight x L1 (mean) between the features of SR and HR, ImageNet-normalised
  RGB input, per view (the two views are one batch, so the mean is the mean of the two views' means).
* Texture: sum over VGG-19 layers of weight x MSE between Gram matrices G = F F^T / (c h w) (BasicSR `_gram_mat`,
  the seed code), per view likewise. Unlike the seed code it has gradients (no `no_grad`) and, by default,
  ImageNet normalisation (the seed code fed raw [0, 1] images: `input_norm=False`).
* Distillation: lambda x sum_t w_t x d(student, teacher_t), d the mean of the two views' L1 (or MSE) distances,
  teachers frozen, run under no_grad on the student's own (augmented) input. The seed code's KD term compared two
  scalar losses (knowledge_distillation_model.py); this is the usual soft-label form, a project choice: the
  write-up gives no lambda, distance or rule for combining teachers.
The feature networks are frozen (no parameter takes a gradient, always in eval mode) but differentiable with
respect to their input, and they run under whatever autocast the training step uses; only the Gram products are
taken in float32, as float16 sums over h x w pixels can overflow.

Weights are never downloaded implicitly: `find_weights` looks for torchvision's exact file names in a folder given
on the command line, then in the torch-hub cache, and raises `MissingWeightsError` (a message naming the file, where
to put it and the flag) unless a download was asked for. `RANDOM` builds a seeded random network instead, for tests
and smoke runs only; every caller labels such numbers as meaningless.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from models.checkpoint import unreadable_file_message
from models.outputs import Pair

# ImageNet statistics of torchvision's classifiers (RGB in [0, 1]); BasicSR VGGFeatureExtractor use_input_norm.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's file names (the url= of VGG16_Weights / VGG19_Weights / AlexNet_Weights.IMAGENET1K_V1, 0.29).
WEIGHT_FILES = {'vgg16': 'vgg16-397923af.pth', 'vgg19': 'vgg19-dcbb9e9d.pth', 'alexnet': 'alexnet-owt-7be5be79.pth'}
TORCHVISION_URL = 'https://download.pytorch.org/models/'
# The LPIPS v0.1 linear heads of the AlexNet trunk: lpips package (PyPI lpips 0.1.4) file weights/v0.1/alex.pth,
# keys lin{k}.model.1.weight of shape (1, C_k, 1, 1).
LPIPS_HEADS_FILE = 'alex.pth'
LPIPS_HEADS_WHAT, LPIPS_TRUNK_WHAT = 'LPIPS v0.1 (its linear heads)', 'LPIPS (its AlexNet trunk)'   # in messages
DEFAULT_WEIGHTS_DIR = Path('checkpoints/pretrained')
RANDOM = 'random'          # weights value: a seeded random network (tests, smoke runs; numbers mean nothing)
RANDOM_SEED = 0            # the same random network in every process and after a resume

# Defaults of the recipe's terms (the seed team's NTIRE-SSR-DVision basicsr/models/losses/losses.py and NTIRE-23.yml).
PERCEPTUAL_LAYERS = ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3')  # VGGPerceptualLoss blocks features[0:23]
PERCEPTUAL_WEIGHT = 1e-4                                          # NTIRE-23.yml perceptual loss_weight
TEXTURE_LAYERS = ('relu2_2', 'relu3_4', 'relu4_4', 'relu5_4')     # TextureLossVGG19, features indices 8/17/26/35
TEXTURE_WEIGHT = 10.0      # NTIRE-23.yml loss_weight 5 on the *sum* of both views = 10 on their mean (ours)
TEXTURE_START = 50_000     # the seed training loop adds the texture loss from iteration 50,000 on
DISTILL_WEIGHT = 1.0       # project choice (the write-up gives no lambda)
# LPIPS v0.1 input scaling (lpips ScalingLayer): (x - shift) / scale on RGB in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10          # lpips normalize_tensor: f / (||f||_2 + eps) over channels
ALEXNET_TAPS = ('relu1', 'relu2', 'relu3', 'relu4', 'relu5')     # lpips alexnet slices 1-5


class MissingWeightsError(FileNotFoundError):
    """A pretrained file is not on this machine; the message says which, where to put it and which flag to use."""


# ----------------------------------------------------------------------------------------------------------------
# Finding the pretrained files

def hub_checkpoints() -> Path:
    """Where torchvision's downloads live: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / 'checkpoints'


def find_weights(file_name: str, location: str | Path | None, flag: str, what: str,
                 download: bool = False) -> Path:
    """The local file `file_name`: `location` if it is that file, or `location`/`file_name` for a folder (default
    checkpoints/pretrained/), else the torch-hub cache. Missing: with `download`, torchvision's usual download into
    the hub cache (`file_name` must then be a torchvision file); otherwise MissingWeightsError naming the file, the
    folders searched and `flag`. No network access unless `download`."""
    folder = Path(location) if location is not None else DEFAULT_WEIGHTS_DIR
    candidates = [folder] if folder.is_file() and folder.name == file_name else []
    candidates += [folder / file_name, hub_checkpoints() / file_name]
    for path in candidates:
        if path.is_file():
            return path
    if download and file_name in WEIGHT_FILES.values():
        torch.hub.load_state_dict_from_url(TORCHVISION_URL + file_name, map_location='cpu', check_hash=True)
        return hub_checkpoints() / file_name
    where = f'{folder}/' if not folder.is_file() else str(folder)
    source = (f'{TORCHVISION_URL}{file_name} (torchvision)' if file_name in WEIGHT_FILES.values()
              else 'the lpips package (pip download lpips; the wheel holds lpips/weights/v0.1/alex.pth) or '
                   'richzhang/PerceptualSimilarity lpips/weights/v0.1/alex.pth')
    raise MissingWeightsError(
        f'{what} needs the file {file_name}, not found in {where} nor in the torch-hub cache {hub_checkpoints()}/. '
        f'This machine does not download it: get it from {source} and put it, under exactly that name, in '
        f'{DEFAULT_WEIGHTS_DIR}/ or the torch-hub cache, or pass its folder with {flag} DIR'
        + (' (or add --download_weights on a machine with internet)' if file_name in WEIGHT_FILES.values() else '')
        + f'. {flag} {RANDOM} uses a random network instead (smoke tests only: the numbers then mean nothing)')


def load_file(path: Path) -> dict:
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001  any unreadable file: say which one
        raise ValueError(unreadable_file_message(path, err, 'weights file')) from None
    if not isinstance(state, dict):
        raise ValueError(f'{path}: not a state_dict')
    return state


def frozen_trunk(arch: str, last: int, weights: str | Path, what: str) -> nn.Sequential:
    """torchvision `arch`(weights=None).features[:last + 1], built on the meta device (the classifier is never
    initialised), with ReLUs out of place (pre-ReLU features stay intact), loaded from the torchvision file
    `weights` (path) or seeded-random (`RANDOM`: torchvision's own init of these layers), frozen, in eval mode."""
    with torch.device('meta'):
        trunk = getattr(torchvision.models, arch)(weights=None).features[:last + 1]
    trunk = trunk.to_empty(device='cpu')
    for layer in trunk:
        if isinstance(layer, nn.ReLU):
            layer.inplace = False
    if weights == RANDOM:
        generator = torch.Generator().manual_seed(RANDOM_SEED)
        for layer in trunk:
            if isinstance(layer, nn.Conv2d):
                if arch == 'alexnet':   # torchvision AlexNet: PyTorch's default conv init
                    bound = 1 / (layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]) ** 0.5
                    layer.weight.data.uniform_(-bound, bound, generator=generator)
                    layer.bias.data.uniform_(-bound, bound, generator=generator)
                else:                   # torchvision VGG: kaiming normal, fan_out, relu; zero bias
                    fan_out = layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
                    layer.weight.data.normal_(0, (2 / fan_out) ** 0.5, generator=generator)
                    layer.bias.data.zero_()
    else:
        state = load_file(Path(weights))
        wanted = trunk.state_dict()
        features = {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
        bad = [k for k in wanted if k not in features or features[k].shape != wanted[k].shape]
        if bad:
            raise ValueError(f'{weights} does not fit torchvision {arch} ({what}): {len(bad)} feature tensors missing '
                             f'or of another shape, e.g. {bad[:3]}; is it the file of another network?')
        trunk.load_state_dict({k: features[k] for k in wanted})
    trunk.requires_grad_(False)
    return trunk.eval()


def layer_names(trunk: nn.Sequential, style: str = 'vgg') -> list[str]:
    """Names of the layers of a torchvision VGG/AlexNet `features`: conv{block}_{k}, relu{block}_{k}, pool{block}
    (BasicSR's NAMES for VGG), or for AlexNet conv{k}, relu{k}, pool{k} by order."""
    names, block, index, count = [], 1, 0, {'conv': 0, 'relu': 0, 'pool': 0}
    for layer in trunk:
        kind = 'conv' if isinstance(layer, nn.Conv2d) else 'relu' if isinstance(layer, nn.ReLU) else 'pool'
        if style == 'vgg':
            if kind == 'conv':
                index += 1
            names.append(f'pool{block}' if kind == 'pool' else f'{kind}{block}_{index}')
            if kind == 'pool':
                block, index = block + 1, 0
        else:
            count[kind] += 1
            names.append(f'{kind}{count[kind]}')
    return names


def all_layer_names(arch: str) -> list[str]:
    with torch.device('meta'):
        return layer_names(getattr(torchvision.models, arch)(weights=None).features,
                           'alexnet' if arch == 'alexnet' else 'vgg')


class FrozenModule(nn.Module):
    """A module that stays in eval mode whatever `.train()` says (no dropout, no batch statistics)."""

    def train(self, mode: bool = True):
        return super().train(False)


class VGGFeatures(FrozenModule):
    """Named features of a frozen torchvision VGG (BasicSR `VGGFeatureExtractor` without its pooling options).

    `forward(x)`: x (B, 3, H, W) RGB in [0, 1] -> {layer name: (B, C, h, w)} for `layers`; `input_norm`: ImageNet
    mean/std first. Only the layers up to the deepest requested one are kept."""

    def __init__(self, arch: str, layers: tuple[str, ...], weights: str | Path, input_norm: bool = True):
        super().__init__()
        names = all_layer_names(arch)
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f'{arch} has no layer {unknown}; its layers: {", ".join(names)}')
        self.names = names[:max(names.index(n) for n in layers) + 1]
        self.layers = tuple(layers)
        self.trunk = frozen_trunk(arch, len(self.names) - 1, weights, f'{arch} features')
        self.input_norm = input_norm
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.input_norm:
            x = (x - self.mean) / self.std
        out = {}
        for name, layer in zip(self.names, self.trunk):
            x = layer(x)
            if name in self.layers:
                out[name] = x
        return out


# ----------------------------------------------------------------------------------------------------------------
# The loss terms: functions of features and outputs

def gram_matrix(features: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, C): F F^T / (C H W) with F = features as (B, C, HW) (BasicSR `_gram_mat`, seed code),
    in float32 whatever the autocast dtype (a float16 sum over H W products can overflow)."""
    b, c, h, w = features.shape
    flat = features.float().reshape(b, c, h * w)
    with torch.autocast(features.device.type, enabled=False):
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {'l1': F.l1_loss, 'l2': F.mse_loss}


def perceptual_loss(sr_features: dict[str, Tensor], hr_features: dict[str, Tensor], layer_weights: dict[str, float],
                    distance: str = 'l1') -> Tensor:
    """sum_k w_k d(phi_k(SR), phi_k(HR)), d = mean L1 (seed code, BasicSR 'l1') or MSE ('l2')."""
    d = DISTANCES[distance]
    return sum(w * d(sr_features[k].float(), hr_features[k].float()) for k, w in layer_weights.items())


def texture_loss(sr_features: dict[str, Tensor], hr_features: dict[str, Tensor], layer_weights: dict[str, float],
                 distance: str = 'l2') -> Tensor:
    """sum_k w_k d(G(phi_k(SR)), G(phi_k(HR))), G = `gram_matrix`, d = MSE (seed code) or mean L1."""
    d = DISTANCES[distance]
    return sum(w * d(gram_matrix(sr_features[k]), gram_matrix(hr_features[k])) for k, w in layer_weights.items())


def distillation_loss(student: Pair, teachers: list[Pair], weights: list[float], distance: str = 'l1') -> Tensor:
    """sum_t w_t (d(S_L, T_t,L) + d(S_R, T_t,R)) / 2: the student's SR views against each teacher's (soft labels,
    no gradient to the teachers), d = mean L1 (project default) or MSE (the seed KD ymls)."""
    d = DISTANCES[distance]
    return sum(w * (d(student.left, t.left.detach().to(student.left.dtype))
                    + d(student.right, t.right.detach().to(student.right.dtype))) / 2
               for t, w in zip(teachers, weights))


class FeatureTerm(nn.Module):
    """One feature-space term on both views: `forward(sr: Pair, hr: Pair)` -> scalar. The views are stacked into one
    batch for one VGG pass; the HR features are taken without gradient."""

    def __init__(self, features: VGGFeatures, layer_weights: dict[str, float], loss: Callable, distance: str):
        super().__init__()
        self.features, self.layer_weights, self.loss, self.distance = features, layer_weights, loss, distance

    def forward(self, sr: Pair, hr: Pair) -> Tensor:
        sr_features = self.features(torch.cat([sr.left, sr.right]))
        with torch.no_grad():
            hr_features = self.features(torch.cat([hr.left, hr.right]))
        return self.loss(sr_features, hr_features, self.layer_weights, self.distance)


class Teachers(FrozenModule):
    """Frozen teacher networks with weights: `forward(lr_left, lr_right)` -> one Pair of SR views per teacher,
    computed under no_grad (inside the caller's autocast)."""

    def __init__(self, networks: list[nn.Module], weights: list[float]):
        super().__init__()
        self.networks = nn.ModuleList(networks).requires_grad_(False)
        self.weights = list(weights)

    def forward(self, lr_left: Tensor, lr_right: Tensor) -> list[Pair]:
        with torch.no_grad():
            return [Pair(out.sr_left, out.sr_right) for out in (net(lr_left, lr_right) for net in self.networks)]


class RecipeObjective(nn.Module):
    """A network's own objective plus the recipe's named terms 'perceptual', 'texture', 'distill' (each logged
    unweighted, like the network's terms) and 'total' = the network's total + the weighted recipe terms.

    `forward(out, lr_left, lr_right, hr_left, hr_right, *, teacher=None, step=0, **supervision)`: `teacher`, a list
    of Pairs (one per teacher) read from the teacher cache, replaces running `teachers` online; the texture term
    counts from iteration `texture_start` on (before it is logged as 0 and not computed)."""

    def __init__(self, base: nn.Module, perceptual: FeatureTerm | None = None, perceptual_weight: float = 0.0,
                 texture: FeatureTerm | None = None, texture_weight: float = 0.0, texture_start: int = 0,
                 teachers: Teachers | None = None, teacher_weights: list[float] = (), distill_weight: float = 0.0,
                 distill_distance: str = 'l1'):
        super().__init__()
        self.base, self.perceptual, self.texture, self.teachers = base, perceptual, texture, teachers
        self.recipe_weights = {'perceptual': perceptual_weight, 'texture': texture_weight, 'distill': distill_weight}
        self.texture_start = texture_start
        self.teacher_weights, self.distill_distance = list(teacher_weights), distill_distance
        self.distill = bool(teacher_weights)

    @property
    def weights(self) -> dict[str, float]:
        return {**self.base.weights, **{k: w for k, w in self.recipe_weights.items() if self.term_on(k)}}

    def term_on(self, name: str) -> bool:
        return {'perceptual': self.perceptual is not None, 'texture': self.texture is not None,
                'distill': self.distill}[name]

    def forward(self, out, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor, hr_right: Tensor, *,
                teacher: list[Pair] | None = None, step: int = 0, **supervision) -> dict[str, Tensor]:
        terms = self.base(out, lr_left, lr_right, hr_left, hr_right, **supervision)
        total = terms.pop('total')
        sr, hr = Pair(out.sr_left, out.sr_right), Pair(hr_left, hr_right)
        if self.perceptual is not None:
            terms['perceptual'] = self.perceptual(sr, hr)
        if self.texture is not None:
            terms['texture'] = self.texture(sr, hr) if step >= self.texture_start else total.new_zeros(())
        if self.distill:
            if teacher is None:
                teacher = self.teachers(lr_left, lr_right)
            terms['distill'] = distillation_loss(sr, teacher, self.teacher_weights, self.distill_distance)
        for name, weight in self.recipe_weights.items():
            if name in terms:
                total = total + weight * terms[name]
        terms['total'] = total
        return terms


# ----------------------------------------------------------------------------------------------------------------
# LPIPS v0.1 (Zhang et al., CVPR 2018), AlexNet trunk: an exact reimplementation of lpips 0.1.4's forward

class LPIPS(FrozenModule):
    """LPIPS v0.1 with the AlexNet trunk: `forward(x, y)`, RGB (B, 3, H, W) in [0, 1] -> (B,) distances.

    As lpips.LPIPS(net='alex', version='0.1')(x, y, normalize=True): inputs mapped to [-1, 1], scaled by
    (x - shift) / scale, AlexNet features at relu1..relu5, each unit-normalised over channels
    (f / (||f|| + 1e-10)), squared difference, a 1x1 linear head (no bias), spatial mean, sum over the 5 layers.
    `backbone`: torchvision's alexnet-owt-7be5be79.pth or RANDOM; `heads`: the lpips package's v0.1 alex.pth, or
    None for unit heads (LPIPS's 'baseline' = plain sum over channels; used only with a random trunk)."""

    def __init__(self, backbone: str | Path, heads: str | Path | None):
        super().__init__()
        names = all_layer_names('alexnet')
        self.taps = [names.index(t) for t in ALEXNET_TAPS]
        self.trunk = frozen_trunk('alexnet', self.taps[-1], backbone, 'LPIPS AlexNet trunk')
        channels = [self.trunk[i - 1].out_channels for i in self.taps]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        if heads is None:
            for head in self.heads:
                nn.init.ones_(head.weight)
        else:
            state = load_file(Path(heads))
            try:
                for k, head in enumerate(self.heads):
                    head.weight.data.copy_(state[f'lin{k}.model.1.weight'])
            except (KeyError, RuntimeError) as err:
                raise ValueError(f'{heads} is not the LPIPS v0.1 AlexNet heads file (lin0..lin4.model.1.weight of '
                                 f'64/192/384/256/256 channels): {err}') from None
        self.requires_grad_(False)
        self.register_buffer('shift', torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('scale', torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> list[Tensor]:
        x = ((2 * x - 1) - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            if i in self.taps:
                taps.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + LPIPS_EPS))
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = 0
        for head, fx, fy in zip(self.heads, self.features(x), self.features(y)):
            total = total + head((fx - fy) ** 2).mean(dim=(2, 3))
        return total[:, 0]


def build_lpips(location: str | Path | None, flag: str = '--lpips_weights', download: bool = False) -> tuple[LPIPS,
                                                                                                             str]:
    """LPIPS from local files: the AlexNet trunk (alexnet-owt-7be5be79.pth) and the v0.1 heads (alex.pth) in
    `location` (a folder; default checkpoints/pretrained/), the torch-hub cache, or the installed lpips package's
    own heads. `RANDOM`: a seeded random trunk with the package's heads if found, else unit heads. Returns (module,
    a description for reports)."""
    heads = None
    try:
        heads = find_weights(LPIPS_HEADS_FILE, location if location != RANDOM else None, flag, LPIPS_HEADS_WHAT)
    except MissingWeightsError:
        heads = installed_lpips_heads()
        if heads is None and location != RANDOM:
            raise
    if location == RANDOM:
        return LPIPS(RANDOM, heads), (f'LPIPS v0.1 with a RANDOM AlexNet trunk (seed {RANDOM_SEED}) and '
                                      f'{"the v0.1 heads " + str(heads) if heads else "unit heads"}: NOT the metric, '
                                      f'numbers for smoke tests only')
    backbone = find_weights(WEIGHT_FILES['alexnet'], location, flag, LPIPS_TRUNK_WHAT, download)
    return LPIPS(backbone, heads), f'LPIPS v0.1, AlexNet ({backbone}), heads {heads}'


def missing_lpips_files(location: str | Path | None, flag: str = '--lpips_weights',
                        download: bool = False) -> list[str]:
    """The message of every file `build_lpips(location, flag, download)` would stop on (it stops at the first), for a
    script that names all its missing files at once: the v0.1 heads unless the installed lpips package has them,
    the AlexNet trunk unless `download` will fetch it. [] for RANDOM."""
    if location == RANDOM:
        return []
    lookups = [] if installed_lpips_heads() is not None else [(LPIPS_HEADS_FILE, LPIPS_HEADS_WHAT)]
    lookups += [] if download else [(WEIGHT_FILES['alexnet'], LPIPS_TRUNK_WHAT)]
    missing = []
    for name, what in lookups:
        try:
            find_weights(name, location, flag, what)
        except MissingWeightsError as err:
            missing.append(str(err))
    return missing


def installed_lpips_heads() -> Path | None:
    """weights/v0.1/alex.pth of an installed lpips package (found without importing it), or None."""
    import importlib.util
    spec = importlib.util.find_spec('lpips')
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / 'weights' / 'v0.1' / LPIPS_HEADS_FILE
    return path if path.is_file() else None

