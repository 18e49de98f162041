"""ISRResCNet (Umer, Foresti, Micheloni, "Deep Iterative Residual Convolutional Network for Single Image
Super-Resolution", ICPR 2020), applied to each view of a stereo pair independently, its training objective and its
entry in the zoo.

The network unrolls K = 10 iterations of an accelerated proximal-gradient scheme on y = H x + n (official
`ISRResCNet.forward_all_iter`): extrapolation with learned weights exp(w[k]), a gradient step of size 1 on the data
term, then the subtraction of a residual CNN "denoiser" (ERD, official `ResFBNet`) whose output is projected onto an
L2 ball of radius exp(alpha[k]) sigma sqrt(N - 1), sigma being the noise level estimated once per image from the LR
input (WMAD). One denoiser serves all K iterations. Images run in 0-255 units inside, as the official code.

Quirks of the official code, kept by default (`RaoUmer/ISRResCNet` @8175bb9, isrrescnet_code_demo/: the file:line
citations below are of that folder; each *bug* has an opt-in correction, a model option off by default):
* H is decimation `x[::s, ::s]` (its bicubic routine sampled at integer positions), and the "gradient" is the
  back-projection U(D x) - U(y), with U a corner-aligned Catmull-Rom interpolation whose two axes' fractions are
  swapped (modules/problems.py:142-146): phase (a, b) of the output is interpolated as if it were (b, a).
  `fix_bicubic_axes`
* The initialisation is grid_sample bilinear on linspace(-1, 1) coordinates with align_corners=False and zero
  padding, which darkens the outermost HR rows and columns (corner x0.25, edge x0.5; problems.py:15-25).
  `fix_init_border`
* The "feedback" block is fed its own output as both halves of its concatenation (models/ISRResCNet.py:84-96,
  160-161).   `fix_feedback`
* Not a bug of their code but of its fit to ours: H = decimation at phase (0, 0) pins x[::s, ::s] to LR pixels that,
  under the MATLAB-bicubic degradation of every stereo-SR benchmark (and of this harness's data), lie at HR position
  s i + (s - 1) / 2. `bicubic_degradation` makes H that degradation (imresize.imresize by 1/s, antialiased) and U the
  MATLAB-bicubic upscaling: the data step is then Irani-Peleg back-projection, z = v - U(H v) + U(y).
* WMAD: DB7 high-pass along both axes (decimated by 2), median |HH| / 0.6745 per channel (torch's lower median),
  averaged over channels; on y / 255. Weight normalisation on every convolution (weight_g / weight_v; the
  transposed decoder's g is per *input* channel). These are not bugs and have no switch. The official `zeromean()`
  is a no-op under weight normalisation and is left out; the official sigma is rescaled only when y.max() > 1, ours
  always (inputs here are [0, 1] images scaled to 0-255).

The residual blocks are registered twice, as `model.resblocks` and `model.fbblock.RBs` (one module), so the
state_dict lists them under both names like the official one (isrrescnet_x4_state_dict.json, 92 entries) and the
authors' x4 file loads strictly; a file that holds only one of the aliases loads too (`_fill_block_aliases`).
Equivalence with the official code: tests/test_isrrescnet.py (parity tests skip without ISRRESCNET_OFFICIAL_DIR).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.imresize import resize_contributions
from models.outputs import Pair, StereoSROutput, validate_pair
from models.registry import GRAD_CHECKPOINT_OPTION, ModelEntry, Option, Recipe, register_model
from models.stereo_losses import Objective

SCALES = (2, 4)                     # the scales; the authors released x4 weights only
ITERATIONS = 10                     # K, official max_iter of the demo
SIGMA_MAX, SIGMA_MIN = 2.0, 1.0     # alpha init linspace(log 2, log 1, K) (demo: sigma_max=2, sigma_min=1)
DEPTH = 5                           # residual blocks of the denoiser (official ResFBNet(depth=5))
FEEDBACK_STEPS = 4                  # official ResFBNet num_steps
FEATURES = 64                       # official num_features
PRELU_INIT = 0.1                    # every PReLU slope at init (official)
RGB_RANGE = 255.0                   # images are 0-255 inside
# Truncated back-propagation (MMNet's TBPTT, k1 = k2 = 5 in the authors' base code): the state entering iteration
# 5 is detached, and the output of iteration 5 is supervised with weight 0.5 (the final one with 1).
TRUNCATION = 5
# WMAD: Daubechies-7 high-pass decomposition filter (pywt 'db7' dec_hi), MAD-to-sigma factor of a Gaussian.
DB7_HIGHPASS = (-0.07785205408506236, 0.39653931948230575, -0.7291320908465551, 0.4697822874053586,
                0.14390600392910627, -0.22403618499416572, -0.07130921926705004, 0.0806126091510659,
                0.03802993693503463, -0.01657454163101562, -0.012550998556013784, 0.00042957797300470274,
                0.0018016407039998328, 0.0003537138000010399)
MAD_TO_SIGMA = 0.6745
WMAD_MIN_SIZE = len(DB7_HIGHPASS) // 2 + 1      # reflect padding by 7 needs 8 rows and columns
# HR receptive-field radius of the denoiser: encoder 5x5 (2) + steps x depth x two 3x3 (1 each) + decoder 5x5 (2).
# A band of HR rows with this many extra rows on each side gives exactly the whole-image residual inside the band.


@dataclass
class ISRResCNetConfig:
    """Hyperparameters of ISRResCNet; defaults are the official demo's."""

    scale_factor: int = 4
    iterations: int = ITERATIONS
    depth: int = DEPTH
    feedback_steps: int = FEEDBACK_STEPS
    features: int = FEATURES
    fix_bicubic_axes: bool = False    # correction: U interpolates each axis with its own fraction
    fix_init_border: bool = False     # correction: bilinear initialisation with align_corners=True (no dark border)
    fix_feedback: bool = False        # correction: the feedback block sees the encoder features and its last output
    bicubic_degradation: bool = False  # H = MATLAB bicubic downscaling, U = MATLAB bicubic upscaling (our data's H)
    band: int = 0                     # evaluation: run the denoiser on bands of this many HR rows (0: whole image)
    grad_checkpoint: bool = False     # training: recompute each denoiser call in the backward pass
    truncation: int = TRUNCATION      # training: detach the state every `truncation` iterations (0: never)
    sigma_max: float = SIGMA_MAX
    sigma_min: float = SIGMA_MIN

    @property
    def receptive_radius(self) -> int:
        return 2 + self.feedback_steps * self.depth * 2 + 2


# ---------------------------------------------------------------------------------------------------------------
# The observation model: operators without weights


def decimate(x: Tensor, scale: int) -> Tensor:
    """The official 'bicubic' downscaling by an integer factor: its sample positions fall on pixels, so it is
    decimation at phase (0, 0). (B, C, sH, sW) -> (B, C, H, W)."""
    return x[..., ::scale, ::scale]


def resize_matrix(in_length: int, out_length: int, scale: float, like: Tensor) -> Tensor:
    """(out_length, in_length) matrix of MATLAB's imresize (bicubic, antialiased when shrinking) along one axis:
    resize_contributions as a dense matrix, with its mirrored border taps."""
    weights, indices = resize_contributions(in_length, out_length, scale)
    matrix = np.zeros((out_length, in_length))
    np.add.at(matrix, (np.arange(out_length)[:, None].repeat(indices.shape[1], 1), indices), weights)
    return torch.from_numpy(matrix).to(like)


def matlab_resize(x: Tensor, size: tuple[int, int], scale: float) -> Tensor:
    """MATLAB imresize(x, scale, 'bicubic') of (B, C, H, W) to `size`, differentiable (float, no rounding)."""
    rows = resize_matrix(x.shape[-2], size[0], scale, x)
    cols = resize_matrix(x.shape[-1], size[1], scale, x)
    return rows @ x @ cols.T


def cubic_weights(t: Tensor) -> Tensor:
    """Catmull-Rom (Keys, a = -0.5) weights of the taps at offsets -1, 0, +1, +2 for fractions t: (N,) -> (N, 4)."""
    t2, t3 = t * t, t * t * t
    return torch.stack([(-t3 + 2 * t2 - t) / 2, (3 * t3 - 5 * t2 + 2) / 2, (-3 * t3 + 4 * t2 + t) / 2,
                        (t3 - t2) / 2], dim=-1)


def _cubic_axis(n: int, scale: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Tap indices (s n, 4), clamped to the image, and weights (s n, 4) of the corner-aligned sampling f = i / s."""
    i = torch.arange(n * scale, device=like.device)
    taps = (torch.div(i, scale, rounding_mode='floor')[:, None] + torch.arange(-1, 3, device=like.device))
    fraction = (i % scale).to(like.dtype) / scale
    return taps.clamp(0, n - 1), cubic_weights(fraction)


def cubic_upsample(y: Tensor, scale: int, swap_axes: bool = True) -> Tensor:
    """U: the official `bicubic_interp_nd` upscaling by an integer factor, (B, C, H, W) -> (B, C, sH, sW).

    Output (i, j) samples the input at (i / s, j / s) (corner-aligned) with the Catmull-Rom kernel over the 4 x 4
    neighbours (clamped at the borders). With `swap_axes` (official, problems.py:142-146) the taps along the columns are
    weighted by the *row* fraction of i and the four row sums by the *column* fraction of j; U(y)[::s, ::s] = y
    either way. Sixteen gathers of the HR size: cheap next to the denoiser.
    """
    h, w = y.shape[-2:]
    rows, row_weights = _cubic_axis(h, scale, y)          # weights indexed by the output row i
    cols, col_weights = _cubic_axis(w, scale, y)          # weights indexed by the output column j
    by_row = [y[..., rows[:, r], :] for r in range(4)]    # row tap r of every output row: (B, C, sH, W)
    out = None
    for r in range(4):
        if swap_axes:   # column taps weighted by t_row(i), then row taps by t_col(j)
            inner = sum(by_row[r][..., cols[:, c]] * row_weights[:, c, None] for c in range(4))
            term = inner * col_weights[:, r]
        else:           # separable: row taps by t_row(i), column taps by t_col(j)
            inner = sum(by_row[r][..., cols[:, c]] * col_weights[:, c] for c in range(4))
            term = inner * row_weights[:, r, None]
        out = term if out is None else out + term
    return out


def bilinear_initialisation(y: Tensor, scale: int, align_corners: bool = False) -> Tensor:
    """The official initial estimate (`Super_Resolution.initialize`): grid_sample bilinear, zero padding, on the grid
    arange(n) / (n - 1) * 2 - 1 per axis. With align_corners=False (official) the outermost rows and columns are
    blended with the zero padding; align_corners=True (the correction) samples the corners exactly."""
    b, _, h, w = y.shape
    out_h, out_w = h * scale, w * scale
    gy = torch.arange(out_h, device=y.device).to(y.dtype) / max(out_h - 1, 1) * 2 - 1
    gx = torch.arange(out_w, device=y.device).to(y.dtype) / max(out_w - 1, 1) * 2 - 1
    grid = torch.stack([gx.expand(out_h, out_w), gy[:, None].expand(out_h, out_w)], dim=-1)   # (sH, sW, [x, y])
    return F.grid_sample(y, grid.expand(b, out_h, out_w, 2), mode='bilinear', padding_mode='zeros',
                         align_corners=align_corners)


def wmad_sigma(y: Tensor) -> Tensor:
    """Noise standard deviation of each image (official `Wmad_estimator`), y: (B, C, h, w) in [0, 1], h, w >= 8 ->
    (B,) in the same units, detached. The HH band of one DB7 level (reflect padding 7, stride 2 along each axis);
    per channel median |HH| / 0.6745 (torch's lower median), then the mean over channels."""
    b, c, h, w = y.shape
    if h < WMAD_MIN_SIZE or w < WMAD_MIN_SIZE:
        raise ValueError(f'the WMAD noise estimate needs LR images of at least {WMAD_MIN_SIZE}x{WMAD_MIN_SIZE}, got '
                         f'{h}x{w}')
    pad = len(DB7_HIGHPASS) // 2
    kernel = torch.tensor(DB7_HIGHPASS, dtype=y.dtype, device=y.device).view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    band = F.conv2d(F.pad(y, (0, 0, pad, pad), mode='reflect'), kernel, stride=(2, 1), groups=c)   # along H
    band = F.pad(band, (pad, pad, 0, 0), mode='reflect').transpose(2, 3)                            # along W
    band = F.conv2d(band, kernel, stride=(2, 1), groups=c)
    magnitudes = band.reshape(b, c, -1).abs()
    # torch's lower median, element (n - 1) // 2 of the sorted values: the same element as .median(dim=2), in a form
    # that ONNX export has (aten.median has no ONNX translation)
    per_channel = magnitudes.sort(dim=2).values[:, :, (magnitudes.shape[2] - 1) // 2] / MAD_TO_SIGMA
    return (per_channel.sum(1) / c).detach()


def l2_projection(residual: Tensor, sigma: Tensor, alpha: Tensor) -> Tensor:
    """Project each image of `residual` (B, C, H, W) onto the L2 ball of radius exp(alpha) sigma sqrt(C H W - 1)
    (official `L2Proj`); sigma (B,)."""
    radius = torch.exp(alpha) * sigma * math.sqrt(residual[0].numel() - 1)
    norm = residual.flatten(1).norm(dim=1)
    return residual * (radius / torch.maximum(norm, radius)).view(-1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------------------------
# The denoiser (ERD: encoder, residual blocks with feedback, decoder)


class WeightNormConv2d(nn.Module):
    """A convolution (or, `transposed`, a transposed convolution) with weight normalisation, weight = g v / ||v||,
    the norm over every dimension but the first (torch.nn.utils.weight_norm's dim=0): per output channel for a
    convolution, per *input* channel for a transposed one. Parameters in the official order: bias, weight_g,
    weight_v. Initialised like the wrapped PyTorch layer, with g = ||v||."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 transposed: bool = False):
        super().__init__()
        layer = (nn.ConvTranspose2d if transposed else nn.Conv2d)(in_channels, out_channels, kernel_size,
                                                                   padding=padding)
        self.transposed, self.padding = transposed, padding
        self.bias = nn.Parameter(layer.bias.detach().clone())
        v = layer.weight.detach().clone()
        self.weight_g = nn.Parameter(v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1)))
        self.weight_v = nn.Parameter(v)

    @property
    def weight(self) -> Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, self.weight, self.bias, padding=self.padding)
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


class ResidualBlock(nn.Module):
    """Pre-activation residual block (official `BasicBlock`): PReLU, reflect-pad 1, conv 3x3, PReLU, reflect-pad 1,
    conv 3x3, plus the input when `shortcut` (the first block of the denoiser has none, unlike the paper's figure)."""

    def __init__(self, channels: int, shortcut: bool = True):
        super().__init__()
        self.shortcut = shortcut
        self.conv1 = WeightNormConv2d(channels, channels, 3)
        self.relu1 = nn.PReLU(channels, init=PRELU_INIT)
        self.relu2 = nn.PReLU(channels, init=PRELU_INIT)
        self.conv2 = WeightNormConv2d(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        t = self.conv1(F.pad(self.relu1(x), (1, 1, 1, 1), mode='reflect'))
        t = self.conv2(F.pad(self.relu2(t), (1, 1, 1, 1), mode='reflect'))
        return x + t if self.shortcut else t


class FeedbackBlock(nn.Module):
    """The feedback block (official `FeedbackBlock`): PReLU (128 slopes) on [input; last output], a 1x1 compression
    and the shared residual blocks, run `steps` times. Official: the input of each step is the last output, so the
    concatenation is [h; h]. `fix_feedback`: the input is the encoder features at every step (SRFBN's feedback)."""

    def __init__(self, channels: int, blocks: nn.Sequential, fix_feedback: bool = False):
        super().__init__()
        self.compress_in = WeightNormConv2d(2 * channels, channels, 1)
        self.prelu = nn.PReLU(2 * channels, init=PRELU_INIT)     # official: 128, hard-coded (= 2 x 64)
        self.RBs = blocks                                   # the same module as the denoiser's `resblocks`
        self.fix_feedback = fix_feedback

    def forward(self, features: Tensor, steps: int) -> Tensor:
        last = features
        for _ in range(steps):
            current = features if self.fix_feedback else last
            last = self.RBs(self.compress_in(self.prelu(torch.cat([current, last], dim=1))))
        return last


class Denoiser(nn.Module):
    """The proximal network (official `ResFBNet`, "ERD"): z (B, 3, H, W) in 0-255 -> the residual to subtract,
    projected onto the L2 ball set by sigma (B,) and alpha."""

    def __init__(self, config: ISRResCNetConfig):
        super().__init__()
        c = config.features
        self.steps = config.feedback_steps
        self.conv = WeightNormConv2d(3, c, 5)                                  # encoder, reflect padding 2
        self.resblocks = nn.Sequential(*(ResidualBlock(c, shortcut=i > 0) for i in range(config.depth)))
        self.fbblock = FeedbackBlock(c, self.resblocks, config.fix_feedback)
        self.conv_out = WeightNormConv2d(c, 3, 5, padding=2, transposed=True)  # decoder

    def residual(self, z: Tensor) -> Tensor:
        """The decoder output before the projection; local (receptive radius `ISRResCNetConfig.receptive_radius`). On
        the CPU the feature maps run channels-last (the same numbers within float rounding): oneDNN's 3x3 convolutions,
        ~80 % of the time, run faster that way: the whole network 1.22-1.31x at 24x72 LR x4, A/B in one process, one
        thread (bench.py's fresh single-run processes did not resolve it: reports/2026-12-02-zoo-speed.md)."""
        if z.device.type == 'cpu':
            z = z.contiguous(memory_format=torch.channels_last)
        features = self.conv(F.pad(z, (2, 2, 2, 2), mode='reflect'))
        return self.conv_out(self.fbblock(features, self.steps)).contiguous()

    def forward(self, z: Tensor, sigma: Tensor, alpha: Tensor) -> Tensor:
        return l2_projection(self.residual(z), sigma, alpha)


# ---------------------------------------------------------------------------------------------------------------
# The unrolled scheme, per view


@dataclass
class ISRResCNetOutput(StereoSROutput):
    """sr_left, sr_right: (B, 3, sH, sW) in [0, 1] (clamped by the scheme itself); intermediate: the outputs of the
    iterations that end a truncation window before the last, as Pairs (training supervision); sigma: the WMAD
    noise level of each LR view, (2B,) as [left; right], in 0-255 units."""

    intermediate: list = field(default_factory=list)
    sigma: Tensor | None = None


class ISRResCNet(nn.Module):
    """ISRResCNet on each view of a stereo pair. forward(left, right, sigma=None): LR views (B, 3, H, W) in [0, 1],
    H, W >= 8 -> `ISRResCNetOutput`. `sigma` (2B,) in 0-255 units, [left; right], replaces the WMAD estimate (tiled
    inference passes the whole image's, see `global_inputs`)."""

    def __init__(self, config: ISRResCNetConfig | None = None):
        super().__init__()
        self.config = config = config or ISRResCNetConfig()
        if config.scale_factor < 1:
            raise ValueError(f'scale_factor must be a positive integer, got {config.scale_factor}')
        self.scale = config.scale_factor
        self.min_input_size = (WMAD_MIN_SIZE, WMAD_MIN_SIZE)
        self.input_multiple = 1
        k = config.iterations
        # Registration order = official: alpha, w, then the denoiser under `model`.
        self.alpha = nn.Parameter(torch.linspace(math.log(config.sigma_max), math.log(config.sigma_min), k))
        steps = torch.arange(k, dtype=torch.float64)
        steps[0] = 1                                  # "as in Boyd, Proximal Algorithms"; w[0] is never used
        self.w = nn.Parameter(torch.log(steps / (steps + 3)).float())
        self.model = Denoiser(config)
        self._register_load_state_dict_pre_hook(self._fill_block_aliases)

    # -- the authors' checkpoints list the residual blocks twice; accept either alias, refuse two different ones
    def _fill_block_aliases(self, state_dict, prefix, *args):
        names = (prefix + 'model.resblocks.', prefix + 'model.fbblock.RBs.')
        for a, b in (names, names[::-1]):
            for key in [k for k in state_dict if k.startswith(a)]:
                other = b + key[len(a):]
                if other not in state_dict:
                    state_dict[other] = state_dict[key]
                elif state_dict[other].shape == state_dict[key].shape and \
                        not torch.equal(state_dict[other], state_dict[key]):
                    raise ValueError(f'{key} and {other} name the same residual-block tensor of ISRResCNet but '
                                     f'hold different values')

    def global_inputs(self, left: Tensor, right: Tensor) -> dict[str, Tensor]:
        """What depends on the whole LR pair and must be computed once before tiling: {'sigma': (2B,)}."""
        return {'sigma': self.estimate_sigma(torch.cat([left, right]) * RGB_RANGE)}

    @staticmethod
    def estimate_sigma(y: Tensor) -> Tensor:
        """WMAD sigma (B,) of y in 0-255 units, in 0-255 units (official estimate_noise on y / 255)."""
        return wmad_sigma(y / RGB_RANGE) * RGB_RANGE

    def denoise(self, z: Tensor, sigma: Tensor, alpha: Tensor) -> Tensor:
        """The denoiser on z (N, 3, sH, sW): whole, recomputed in backward (`grad_checkpoint`), or in bands of HR
        rows with a halo of the receptive radius (`band`, evaluation), which gives the whole-image result."""
        if self.training and self.config.grad_checkpoint and torch.is_grad_enabled():
            return checkpoint(self.model, z, sigma, alpha, use_reentrant=False)
        band, height = self.config.band, z.shape[-2]
        if not band or band >= height or (self.training and torch.is_grad_enabled()):
            return self.model(z, sigma, alpha)
        halo = self.config.receptive_radius
        parts = []
        for top in range(0, height, band):
            bottom = min(height, top + band)
            start, stop = max(0, top - halo), min(height, bottom + halo)
            parts.append(self.model.residual(z[..., start:stop, :])[..., top - start:bottom - start, :])
        return l2_projection(torch.cat(parts, dim=-2), sigma, alpha)

    def forward(self, left: Tensor, right: Tensor, sigma: Tensor | None = None) -> ISRResCNetOutput:
        b, h, w = validate_pair(left, right)
        if min(h, w) < WMAD_MIN_SIZE:
            raise ValueError(f'ISRResCNet needs LR views of at least {WMAD_MIN_SIZE}x{WMAD_MIN_SIZE} (its WMAD noise '
                             f'estimate), got {h}x{w}')
        cfg, s = self.config, self.scale
        y = torch.cat([left, right]) * RGB_RANGE                              # (2B, 3, h, w), 0-255
        if sigma is None:
            sigma = self.estimate_sigma(y)
        elif sigma.shape != (2 * b,):
            raise ValueError(f'sigma must have shape (2B,) = ({2 * b},) for [left; right], got {tuple(sigma.shape)}')
        sigma = sigma.to(y)
        if cfg.bicubic_degradation:      # H and U of the data: MATLAB bicubic down- and upscaling
            lr_size, hr_size = (h, w), (s * h, s * w)
            down, up = (lambda v: matlab_resize(v, lr_size, 1 / s)), (lambda v: matlab_resize(v, hr_size, s))
        else:                            # official: decimation at phase (0, 0), the (swapped-axis) cubic U
            down = lambda v: decimate(v, s)                                              # noqa: E731
            up = lambda v: cubic_upsample(v, s, swap_axes=not cfg.fix_bicubic_axes)     # noqa: E731
        back_projected_y = up(y)
        x = bilinear_initialisation(y, s, align_corners=cfg.fix_init_border)
        previous, intermediate = x, []
        for k in range(cfg.iterations):
            if self.training and cfg.truncation and k and k % cfg.truncation == 0:
                x, previous = x.detach(), previous.detach()                 # TBPTT window boundary
            v = x if k == 0 else x + torch.exp(self.w[k]) * (x - previous)   # extrapolation
            previous = x
            # gradient step of size 1 = back-projection (official H: z[::s, ::s] = y)
            z = v - (up(down(v)) - back_projected_y)
            x = (z - self.denoise(z, sigma, self.alpha[k])).clamp(0.0, RGB_RANGE)
            if cfg.truncation and (k + 1) % cfg.truncation == 0 and k + 1 < cfg.iterations:
                intermediate.append(Pair.unfold(x / RGB_RANGE))
        sr = Pair.unfold(x / RGB_RANGE)
        return ISRResCNetOutput(sr_left=sr.left, sr_right=sr.right, intermediate=intermediate, sigma=sigma)


class ISRResCNetLoss(Objective):
    """L1 to the HR views (the authors' base code: nn.L1Loss) of the final estimate ('sr') and of the estimate at the
    end of each earlier truncation window ('intermediate', weight 0.5, MMNet's TBPTT), over both views as one batch.
    In [0, 1] units (the official 0-255 only rescales the loss, which Adam does not see)."""

    DEFAULT_WEIGHTS: ClassVar[dict[str, float]] = {'sr': 1.0, 'intermediate': 0.5}

    def forward(self, out: ISRResCNetOutput, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor,
                hr_right: Tensor) -> dict[str, Tensor]:
        hr = torch.cat([hr_left, hr_right])
        terms = {'sr': F.l1_loss(torch.cat([out.sr_left, out.sr_right]), hr)}
        terms['intermediate'] = sum((F.l1_loss(torch.cat(list(p)), hr) for p in out.intermediate),
                                    hr.new_zeros(()))
        return self.weighted_total(terms)


def build(scale_factor: int = 4, isrrescnet_fix_bicubic_axes: bool = False, isrrescnet_fix_init_border: bool = False,
          isrrescnet_fix_feedback: bool = False, isrrescnet_bicubic_degradation: bool = False,
          isrrescnet_band: int = 0, grad_checkpoint: bool = False,
          **config) -> ISRResCNet:
    return ISRResCNet(ISRResCNetConfig(scale_factor=scale_factor, fix_bicubic_axes=isrrescnet_fix_bicubic_axes,
                                       fix_init_border=isrrescnet_fix_init_border,
                                       fix_feedback=isrrescnet_fix_feedback,
                                       bicubic_degradation=isrrescnet_bicubic_degradation, band=isrrescnet_band or 0,
                                       grad_checkpoint=grad_checkpoint, **config))


register_model(ModelEntry(
    name='isrrescnet',
    build=build,
    criterion=ISRResCNetLoss,
    recipe=Recipe(
        source="not released for ISRResCNet; its README names cig-skoltech/deep_demosaick as the base of its training "
               "code, whose noisy run (pretrained_models/bayer_noisy/args.txt: batch_size=8, lr=0.001, epochs=300, "
               "depth=5, k1=k2=5) and main.py (Adam, L1, MultiStepLR([100, 200, 300], 0.1) per epoch = step 100 x0.1 "
               "over 300 epochs, clip_grad=None, Adam amsgrad=True) give these numbers",
        batch_size=8, optimizer='adam', amsgrad=True, lr=1e-3, schedule='step', n_steps=100, gamma=0.1, n_epochs=300),
    scales=SCALES,
    options=(
        Option('isrrescnet_fix_bicubic_axes', dict(
            action='store_true',
            help="ISRResCNet: interpolate each axis of the back-projection with its own fraction (the official "
                 "bicubic_interp_nd swaps the row and column fractions; kept by default for the authors' weights)"),
            of_weights=True),
        Option('isrrescnet_fix_init_border', dict(
            action='store_true',
            help='ISRResCNet: bilinear initialisation with align_corners=True (the official grid_sample call blends '
                 'the outermost HR rows and columns with zero padding; kept by default)'),
            of_weights=True),
        Option('isrrescnet_fix_feedback', dict(
            action='store_true',
            help='ISRResCNet: feed the encoder features and the last output to the feedback block (the official '
                 'one concatenates its last output with itself; kept by default)'),
            of_weights=True),
        Option('isrrescnet_bicubic_degradation', dict(
            action='store_true',
            help="ISRResCNet: the data term's H is the MATLAB bicubic downscaling that made the LR images (every "
                 'stereo-SR benchmark and this harness) and U the MATLAB bicubic upscaling, instead of the official '
                 'decimation at phase (0, 0), which pins every s-th HR pixel to an LR pixel that lies (s - 1) / 2 HR '
                 'pixels away under that degradation'),
            of_weights=True),
        Option('isrrescnet_band', dict(
            type=int, default=0,
            help='ISRResCNet evaluation: run the denoiser on bands of this many HR rows (with a halo of its '
                 '44-pixel receptive radius: the same result as the whole image, less memory); 0 = whole image')),
        GRAD_CHECKPOINT_OPTION,
    ),
    memory_options={'isrrescnet_band': 256},
    description='unrolled proximal-gradient SR with a shared residual feedback denoiser, per view',
    title='ISRResCNet',
    paper='Umer, Foresti, Micheloni, Deep Iterative Residual Convolutional Network for Single Image '
          'Super-Resolution, ICPR 2020',
))

__all__ = ['ISRResCNet', 'ISRResCNetConfig', 'ISRResCNetLoss', 'ISRResCNetOutput', 'bilinear_initialisation',
           'cubic_upsample', 'decimate', 'l2_projection', 'matlab_resize', 'wmad_sigma']
