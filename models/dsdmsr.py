"""DSDMSR: "Deeply Supervised Depth Map Super-Resolution as Novel View Synthesis" (Song, Dai, Qin; IEEE TCSVT 2019,
arXiv 1808.08688), for disparity maps. Sources: the paper's abstract and architecture figure (its method section
could not be read; no official code exists) and the third-party `asrimanth/DSDMSR-PyTorch` @69c5fe0 (model.py,
dcnn_srcnn.py, dcnn_vdsr.py, train_dtu.py), read for facts only; docs/models/dsdmsr.md lists our own choices.

A x2 stage has four DCNN units, (1,1), (1,2), (2,1), (2,2), that all read the stage input (h x w) and each predict
one h x w "novel view": the 2x2 polyphase component of the x2 map seen from a camera shifted by half an LR pixel.
The four views are interleaved (`interleave` = pixel_shuffle) into the 2h x 2w map, which is supervised and feeds the
next stage; x4 / x8 / x16 chain 2 / 3 / 4 stages with their own units. A multi-scale fusion (MSF) brings the maps of
every scale to the final size, combines them and refines them with one more DCNN unit, removing the blocking of the
interleaving.

What could not be checked, and what we decided:
* Only the paper's abstract and first lines were reachable; its unit design, MSF combination, loss, training data
  and result tables were not, and no official code or weights exist. The architecture follows the paper's figure
  (as reproduced in the third-party repository asrimanth/DSDMSR-PyTorch) and that repository's code, read for
  facts only. Parameter names here are our own (`stages.{k}.units.{i}`, `fusion`), with the units' inner names
  chosen like the third-party units' so `third_party_key` can map its (never published) checkpoints.
* Units (`unit`): 'srcnn' = the third-party SRCNN 9-5-5 (64/32 filters, biases, no residual); 'vdsr' = the
  third-party 10-layer VDSR-style unit (3x3, 64 filters, no biases, global residual), `vdsr_depth=20` for VDSR
  proper.
* MSF (`fusion_inputs`, `fusion_combine`): the paper figure feeds the LR input and every stage output (default
  'input_and_stages'); the third-party code feeds the stage outputs only ('stages'). The third-party code sums the
  bilinearly upsampled maps ('sum'); the paper's combination is unknown, and we default to their mean ('mean'),
  which keeps the units of a disparity so a residual unit starts from a sensible map. The figure's "depth field
  statistic" post-processing is not implemented (its formulation could not be read).
* Normalisation inside (stated because the third-party per-map min-max to [0, 1] discards pixel units): every map
  is expressed in HR pixels, the LR map's per-sample mean (in HR pixels) is subtracted and the result divided by
  DISPARITY_SCALE: z = (d x s_k - mu) / 192, with s_k the factor from that map's resolution to HR. One scene point
  has the same z at every scale, so stage maps can be upsampled and combined without rescaling; subtracting mu makes
  the network blind to a constant disparity offset. Inputs and outputs are in pixels of their own resolution.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import ModelEntry, Option, Recipe, register_model
from models.stereo_losses import Objective

DISPARITY_SCALE = 192.0      # HR pixels; SSRDE-FNet's maximum disparity (models/ssrdefnet/cost_volume.py), used only
                             # to bring values near [-1, 1] inside the network
UNITS = ('srcnn', 'vdsr')
VIEWS = ((1, 1), (1, 2), (2, 1), (2, 2))   # unit (r, c) fills rows r-1::2, columns c-1::2 of the x2 map
FUSION_INPUTS = ('input_and_stages', 'stages')
FUSION_COMBINES = ('mean', 'sum')
SRCNN_FILTERS = (64, 32)     # third-party dcnn_srcnn.py: 9x9 1->64, 5x5 64->32, 5x5 32->1
SRCNN_KERNELS = (9, 5, 5)
VDSR_FEATURES = 64           # third-party dcnn_vdsr.py (Lornatang/VDSR-PyTorch): 3x3, 64 filters, 10 layers
VDSR_DEPTH = 10


# ---- the stages' deep-supervision targets: mask-aware downsampling of the HR map (tensors, any batch);
#      data/disparity_maps.py makes the LR input with the same operator

def _check_map(disparity: Tensor, valid: Tensor, what: str) -> None:
    if disparity.dim() != 4 or disparity.shape[1] != 1:
        raise ValueError(f'{what}: expected a (B, 1, H, W) disparity map, got shape {tuple(disparity.shape)}')
    if valid.shape != disparity.shape:
        raise ValueError(f'{what}: valid mask shape {tuple(valid.shape)} differs from the map\'s '
                         f'{tuple(disparity.shape)}')


def downsample_disparity(disparity: Tensor, valid: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Mask-aware area downsampling of (B, 1, H, W) maps by an integer `factor` (H, W divisible by it).

    LR value = mean of the valid HR values of the factor x factor block / factor (LR pixels); LR valid = the block
    has a valid pixel. Invalid HR values (inf, NaN, anything) are replaced by 0 before summing and weighted 0.
    Invalid LR pixels are 0. Returns (map (B, 1, H/f, W/f) float, valid bool)."""
    _check_map(disparity, valid, 'downsample_disparity')
    h, w = disparity.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f'downsample_disparity: map size {h}x{w} is not divisible by the factor {factor}')
    valid = valid.bool()
    if factor == 1:
        return torch.where(valid, disparity, torch.zeros_like(disparity)), valid
    weight = valid.to(disparity.dtype)
    # sum_pool = avg_pool x factor^2; both pools share the factor^2, so it cancels in the ratio
    total = F.avg_pool2d(torch.where(valid, disparity, torch.zeros_like(disparity)), factor)
    count = F.avg_pool2d(weight, factor)
    lr_valid = count > 0
    lr = torch.where(lr_valid, total / count.clamp(min=torch.finfo(count.dtype).tiny), torch.zeros_like(total))
    return lr / factor, lr_valid


def stage_targets(hr: Tensor, hr_valid: Tensor, scale: int) -> list[tuple[Tensor, Tensor]]:
    """Deep-supervision targets of a x`scale` network with log2(scale) stages: for stage k = 1..n (resolution
    2^k x LR), the HR map downsampled by scale / 2^k, mask-aware and directly from HR (the last is the HR map itself,
    zeroed at invalid pixels). Each is (map in that resolution's pixels, valid)."""
    n = n_stages(scale)
    return [downsample_disparity(hr, hr_valid, scale >> k) for k in range(1, n + 1)]


def n_stages(scale: int) -> int:
    """Number of x2 stages of a x`scale` DSDMSR (scale a power of two, 2-16)."""
    if scale not in (2, 4, 8, 16):
        raise ValueError(f'DSDMSR scale factor must be 2, 4, 8 or 16, got {scale}')
    return scale.bit_length() - 1


@dataclass
class DSDMSRConfig:
    """Hyperparameters. Defaults: the third-party SRCNN-unit model (train_dtu.py) with the paper figure's MSF inputs
    and a mean combination (see the module docstring)."""

    scale_factor: int = 8                      # 2, 4, 8 or 16 = 1-4 x2 stages
    unit: str = 'srcnn'                        # 'srcnn' | 'vdsr'
    vdsr_depth: int = VDSR_DEPTH               # conv layers of a VDSR unit (third-party 10; VDSR paper 20)
    fusion_inputs: str = 'input_and_stages'    # paper figure; 'stages' = third-party
    fusion_combine: str = 'mean'               # 'sum' = third-party
    disparity_scale: float = DISPARITY_SCALE

    def __post_init__(self):
        n_stages(self.scale_factor)
        for name, value, allowed in (('unit', self.unit, UNITS), ('fusion_inputs', self.fusion_inputs, FUSION_INPUTS),
                                     ('fusion_combine', self.fusion_combine, FUSION_COMBINES)):
            if value not in allowed:
                raise ValueError(f'DSDMSR {name} must be one of {allowed}, got {value!r}')
        if self.vdsr_depth < 2:
            raise ValueError(f'DSDMSR vdsr_depth must be at least 2, got {self.vdsr_depth}')


@dataclass
class DisparitySROutput:
    """stages[k]: (B, 1, 2^(k+1) h, 2^(k+1) w) map of stage k+1, in pixels of its resolution (the last is HR);
    fused: (B, 1, s h, s w) the multi-scale fusion, in HR pixels (the network's answer)."""

    stages: list[Tensor] = field(default_factory=list)
    fused: Tensor | None = None


# ---- interleaving ("novel view synthesis" assembly)

def interleave(views: list[Tensor]) -> Tensor:
    """Four (B, C, h, w) views in VIEWS order -> (B, C, 2h, 2w): view (r, c) at rows r-1::2, columns c-1::2.
    pixel_shuffle reads channel group 2(r-1) + (c-1) as that sub-pixel position."""
    b, c, h, w = views[0].shape
    stacked = torch.stack(views, dim=2)                  # (B, C, 4, h, w)
    return F.pixel_shuffle(stacked.reshape(b, c * 4, h, w), 2)


# ---- DCNN units

class SRCNNUnit(nn.Module):
    """SRCNN 9-5-5 (64, 32 filters), ReLU, biases, zero padding; h x w -> h x w, no residual."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        (f1, f2), (k1, k2, k3) = SRCNN_FILTERS, SRCNN_KERNELS
        self.conv1 = nn.Conv2d(in_channels, f1, k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(f1, f2, k2, padding=k2 // 2)
        self.conv3 = nn.Conv2d(f2, 1, k3, padding=k3 // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))


class ConvReLU(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv = nn.Conv2d(features, features, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))


class VDSRUnit(nn.Module):
    """VDSR-style: conv 3x3 -> ReLU, (depth - 2) x [conv 3x3 -> ReLU], conv 3x3 -> 1; no biases; plus the input
    (global residual). He-normal init std sqrt(2 / (k k out_channels)), as the third-party unit."""

    def __init__(self, depth: int = VDSR_DEPTH, features: int = VDSR_FEATURES):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, features, 3, padding=1, bias=False), nn.ReLU())
        self.trunk = nn.Sequential(*(ConvReLU(features) for _ in range(depth - 2)))
        self.conv2 = nn.Conv2d(features, 1, 3, padding=1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.trunk(self.conv1(x))) + x


def build_unit(config: DSDMSRConfig) -> nn.Module:
    return SRCNNUnit() if config.unit == 'srcnn' else VDSRUnit(config.vdsr_depth)


class Stage(nn.Module):
    """One x2 stage: four DCNN units (VIEWS order) on the same input, interleaved."""

    def __init__(self, config: DSDMSRConfig):
        super().__init__()
        self.units = nn.ModuleList(build_unit(config) for _ in VIEWS)

    def forward(self, x: Tensor) -> Tensor:
        return interleave([unit(x) for unit in self.units])


# ---- the network

class DSDMSR(nn.Module):
    """forward(lr_map) with lr_map (B, 1, h, w): a dense, finite disparity map in LR pixels (fill holes first,
    data.disparity_maps.fill_holes) -> DisparitySROutput (stages and fused, pixels of their resolutions)."""

    def __init__(self, config: DSDMSRConfig | None = None):
        super().__init__()
        self.config = config = config or DSDMSRConfig()
        self.scale = config.scale_factor
        self.stages = nn.ModuleList(Stage(config) for _ in range(n_stages(self.scale)))
        self.fusion = build_unit(config)

    def forward(self, lr_map: Tensor) -> DisparitySROutput:
        if lr_map.dim() != 4 or lr_map.shape[1] != 1:
            raise ValueError(f'DSDMSR expects a (B, 1, h, w) disparity map, got shape {tuple(lr_map.shape)}')
        if not torch.isfinite(lr_map).all():
            raise ValueError('DSDMSR input has non-finite values: fill the holes of the LR map first '
                             '(data.disparity_maps.fill_holes)')
        s, scale = self.scale, self.config.disparity_scale
        mu = (lr_map * s).mean(dim=(1, 2, 3), keepdim=True)          # (B, 1, 1, 1) HR pixels
        z = (lr_map * s - mu) / scale                                 # normalised, HR-equivalent
        scales = [z]
        for stage in self.stages:
            scales.append(stage(scales[-1]))
        size = scales[-1].shape[-2:]
        parts = scales if self.config.fusion_inputs == 'input_and_stages' else scales[1:]
        parts = [p if p.shape[-2:] == size else F.interpolate(p, size=size, mode='bilinear', align_corners=False)
                 for p in parts]
        combined = torch.stack(parts).sum(0)
        if self.config.fusion_combine == 'mean':
            combined = combined / len(parts)
        fused = self.fusion(combined)
        # back to pixels: stage k (resolution 2^k h) is HR / 2^(n-k)
        stages = [(zk * scale + mu) * (2 ** (k + 1)) / s for k, zk in enumerate(scales[1:])]
        return DisparitySROutput(stages=stages, fused=fused * scale + mu)


def third_party_key(key: str) -> str:
    """A key of asrimanth/DSDMSR-PyTorch's state_dict (`dcnn_unit_{r}_{c}_x{f}.*`, `msf_dcnn.*`, optional
    `module.` prefix) -> ours (`stages.{k}.units.{i}.*`, `fusion.*`). Their models take per-map min-max [0, 1]
    maps, so converted weights also need that normalisation (not ours) to reproduce their outputs."""
    key = key.removeprefix('module.')
    if key.startswith('msf_dcnn.'):
        return 'fusion.' + key[len('msf_dcnn.'):]
    if key.startswith('dcnn_unit_'):
        head, rest = key.split('.', 1)
        r, c, factor = head[len('dcnn_unit_'):].split('_')
        stage = int(factor[1:]).bit_length() - 2
        return f'stages.{stage}.units.{VIEWS.index((int(r), int(c)))}.{rest}'
    raise ValueError(f'not a DSDMSR-PyTorch key: {key!r}')


# ---- training objective

def masked_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over the valid pixels of the whole batch; 0 (with a gradient path) when none is valid.
    Invalid target values are replaced before subtracting, so inf/NaN never reach the gradient."""
    valid = valid.bool()
    error = (pred - torch.where(valid, target, pred.detach())) ** 2
    return (error * valid).sum() / valid.sum().clamp(min=1)


class DSDMSRLoss(Objective):
    """Deep supervision: forward(out, lr_map, hr_map, hr_valid) -> {'stage1', ..., 'stage{n}', 'fused', 'total'}.

    out: DisparitySROutput; lr_map (B, 1, h, w) (unused; kept so that `criterion(out, *batch)` works with
    DisparityMapPatches items); hr_map (B, 1, sh, sw) HR pixels, any value where invalid; hr_valid (B, 1, sh, sw).
    Each stage is compared with the HR map mask-aware downsampled to its resolution (data.disparity_maps.
    stage_targets); every term is the masked MSE in HR pixels^2 (a stage's error is multiplied by its factor to HR),
    so sqrt(term) is an RMSE in HR pixels. The third-party scripts use MSE at every stage plus MSE of the MSF output,
    weights 1 (on min-max normalised maps); the paper's loss could not be read. Terms of stages a network does not
    have are absent; their weights are ignored."""

    DEFAULT_WEIGHTS = {'stage1': 1.0, 'stage2': 1.0, 'stage3': 1.0, 'stage4': 1.0, 'fused': 1.0}

    def forward(self, out: DisparitySROutput, lr_map: Tensor, hr_map: Tensor, hr_valid: Tensor) -> dict[str, Tensor]:
        if len(out.stages) != n_stages(self.scale):
            raise ValueError(f'DSDMSRLoss for x{self.scale} expects {n_stages(self.scale)} stage outputs, got '
                             f'{len(out.stages)}')
        if hr_map.shape != out.fused.shape:
            raise ValueError(f'DSDMSRLoss: HR map shape {tuple(hr_map.shape)} differs from the output\'s '
                             f'{tuple(out.fused.shape)}')
        terms = {}
        for k, (pred, (target, valid)) in enumerate(zip(out.stages, stage_targets(hr_map, hr_valid, self.scale))):
            to_hr = self.scale >> (k + 1)
            terms[f'stage{k + 1}'] = masked_mse(pred * to_hr, target * to_hr, valid)
        terms['fused'] = masked_mse(out.fused, hr_map, hr_valid.bool() & torch.isfinite(hr_map))
        return self.weighted_total(terms)


def build(scale_factor: int, dsdmsr_unit: str = 'srcnn', dsdmsr_vdsr_depth: int = VDSR_DEPTH,
          dsdmsr_fusion_inputs: str = 'input_and_stages', dsdmsr_fusion_combine: str = 'mean') -> DSDMSR:
    """The builder a registry entry would call: options named as command-line flags would be."""
    return DSDMSR(DSDMSRConfig(scale_factor, dsdmsr_unit, dsdmsr_vdsr_depth, dsdmsr_fusion_inputs,
                               dsdmsr_fusion_combine))


def describe() -> dict:
    """The zoo entry's facts as plain data (registered below with modality 'disparity_map'). 'recipe' is the
    third-party SRCNN script's (train_dtu.py), the entry's Recipe; 'recipe_vdsr' the VDSR script's
    (train_dtu_vdsr.py), for reference (SGD is not one of train.py's optimisers); neither is the paper's (not
    readable)."""
    return {
        'name': 'dsdmsr',
        'title': 'DSDMSR',
        'build': build,
        'criterion': DSDMSRLoss,
        'scales': (2, 4, 8, 16),
        'input': 'one LR disparity map (B, 1, h, w), LR pixels, dense',
        'paper': 'Song, Dai, Qin, Deeply Supervised Depth Map Super-Resolution as Novel View Synthesis, IEEE TCSVT '
                 '2019 (arXiv 1808.08688)',
        'recipe': dict(source='asrimanth/DSDMSR-PyTorch train_dtu.py (SRCNN units): Adam lr 1e-3, batch 32, '
                              '200 epochs, no schedule, MSE per stage + MSF, weights 1, seed 123',
                       optimizer='adam', lr=1e-3, batch_size=32, n_epochs=200, schedule='none', grad_clip=0.0),
        'recipe_vdsr': dict(source='asrimanth/DSDMSR-PyTorch train_dtu_vdsr.py: SGD momentum 0.9, weight decay '
                                   '1e-4, lr 0.01 x0.1 every 20 epochs, 80 epochs, batch 16, gradient L1-norm '
                                   'clipped to 1/lr, seed 42',
                            optimizer='sgd', lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=16, n_epochs=80,
                            schedule='step', n_steps=20, gamma=0.1),
        'options': {
            'dsdmsr_unit': dict(choices=UNITS, default='srcnn',
                                help='DSDMSR DCNN unit: SRCNN 9-5-5 or the 10-layer residual VDSR-style unit'),
            'dsdmsr_vdsr_depth': dict(type=int, default=VDSR_DEPTH,
                                      help='DSDMSR: conv layers per VDSR unit (third-party 10, VDSR paper 20)'),
            'dsdmsr_fusion_inputs': dict(choices=FUSION_INPUTS, default='input_and_stages',
                                         help='DSDMSR MSF inputs: LR input and all stages (paper figure) or the '
                                              'stages only (third-party code)'),
            'dsdmsr_fusion_combine': dict(choices=FUSION_COMBINES, default='mean',
                                          help='DSDMSR MSF combination: mean (ours; unknown in the paper) or sum '
                                               '(third-party code)'),
        },
    }


# ---- the zoo's entry: one LR disparity map in, DisparitySROutput out (train.py trains it on DisparityMapPatches,
# test_disp.py scores it; the stereo scripts refuse it by its modality)

def recipe() -> Recipe:
    """describe()['recipe'] as train.py's Recipe; its "no schedule" is a step schedule that never changes the
    learning rate (gamma 1)."""
    values = dict(describe()['recipe'])
    if values['schedule'] == 'none':
        values.update(schedule='step', n_steps=values['n_epochs'], gamma=1.0)
    values['source'] += '; "no schedule" = step schedule with gamma 1'
    return Recipe(**values)


register_model(ModelEntry(
    name='dsdmsr',
    build=build,
    criterion=DSDMSRLoss,
    recipe=recipe(),
    scales=describe()['scales'],
    # every option changes what the weights compute (the unit's layers, the fusion's inputs and combination)
    options=tuple(Option(name, kwargs, of_weights=True) for name, kwargs in describe()['options'].items()),
    modality='disparity_map',
    description='disparity-map SR: x2 stages of four "novel view" units interleaved, deep supervision, multi-scale '
                'fusion',
    title='DSDMSR',
    paper=describe()['paper'],
))
