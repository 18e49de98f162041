"""NAFSSR (Chu, Chen, Yu, "NAFSSR: Stereo Image Super-Resolution Using NAFNet", CVPRW 2022): NAFNet blocks applied to
each view with shared weights, a stereo cross-attention module (SCAM) after every block, a PixelShuffle upsampler and a
bilinear global skip. Quirks of the official code kept here (megvii-research/NAFNet @2b4af71,
basicsr/models/archs/NAFSSR_arch.py, NAFNet_arch.py and local_arch.py): every block has a SCAM, including the last;
SCAM's values take no LayerNorm and one score matrix serves both directions (transposed), scaled by c^-0.5; the
simplified channel attention has no sigmoid; every residual scale starts at zero; drop-path skips the whole stereo block
(both views, whole batch) on one coin per call and rescales kept blocks by 1/(1-p); at test time the channel attention
pools a local 45x135 window (TLC, the authors' test-time local converter) instead of the whole map; the skip is
bilinear, not bicubic; the authors' weights expect BGR views (`channel_order`). Both views run folded into the batch,
[left; right], so each stage is written once. Names and registration order equal the official modules', so the
state_dict matches nafssr_{t,s,b,l}_x4_state_dict.json and the authors' checkpoints load strictly;
tests/test_nafssr_parity.py checks equality with the official code.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import kernels
from models.outputs import StereoSROutput, validate_pair
from models.registry import ModelEntry, Option, Recipe, register_model
from models.stereo_losses import Objective

# NAFBlock expansions (official DW_Expand = FFN_Expand = 2): the depthwise and the feed-forward branches run at 2c
# channels, and SimpleGate halves them back to c.
DW_EXPAND = 2
FFN_EXPAND = 2
# LayerNorm2d epsilon of the official arch_util.py.
LAYER_NORM_EPS = 1e-6
# iPASSR's training patches (LR 30x90) are NAFSSR's `train_size`; TLC pools windows 1.5x that size (NAFSSR_arch.py).
TRAIN_LR_SIZE = (30, 90)
TLC_WINDOW_RATIO = 1.5
CHANNEL_ORDERS = ('rgb', 'bgr')

# Variants (official options/train/NAFSSR/NAFSSR-{T,S,B,L}_x{2,4}.yml): width c, blocks n, training drop-path rate.
VARIANTS = {
    't': dict(width=48, num_blocks=16, drop_path=0.0),
    's': dict(width=64, num_blocks=32, drop_path=0.1),
    'b': dict(width=96, num_blocks=64, drop_path=0.2),
    'l': dict(width=128, num_blocks=128, drop_path=0.3),
}


@dataclass
class NAFSSRConfig:
    """Hyperparameters of NAFSSR; defaults are NAFSSR-T's (the official configs). Networks of NAFSSR's layout with
    other blocks (models/cvhssr.py) subclass it with their own `variants`."""

    variants: ClassVar[dict[str, dict]] = VARIANTS
    scale_factor: int = 4
    width: int = 48
    num_blocks: int = 16
    # Probability of skipping a whole stereo block in training (the same rate for every block, no depth schedule).
    drop_path: float = 0.0
    # Test-time local converter: pool local windows of TLC_WINDOW_RATIO x train_size in the channel attention.
    # False pools globally (the NAFNetSR base class, before conversion).
    tlc: bool = True
    # LR training patch (H, W) that fixes the TLC window (official train_size=(1, 6, 30, 90)).
    train_size: tuple[int, int] = TRAIN_LR_SIZE
    # Colour order the weights expect: the authors' pipeline feeds BGR (official
    # basicsr/utils/img_util.py:29 swaps only 3-channel arrays, and paired_image_SR_LR_dataset.py:286 passes the
    # 6-channel stereo stack); forward always takes RGB.
    channel_order: str = 'rgb'

    @classmethod
    def variant(cls, name: str, scale_factor: int = 4, **overrides) -> 'NAFSSRConfig':
        """The config of a named variant (NAFSSR: 't', 's', 'b' or 'l'); `overrides` replace its fields."""
        return cls(scale_factor=scale_factor, **{**cls.variants[name], **overrides})

    @property
    def tlc_window(self) -> tuple[int, int]:
        """(45, 135) for the official 30x90 patches: int(1.5 * train size), fixed once (official local_arch.py)."""
        return int(self.train_size[0] * TLC_WINDOW_RATIO), int(self.train_size[1] * TLC_WINDOW_RATIO)


# ---------------------------------------------------------------------------------------------------------------
# NAFNet's building blocks


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel (biased variance, eps 1e-6), for (N, C, H, W) maps.

    The official module is a custom autograd.Function with the exact LayerNorm gradient; F.layer_norm on the
    channels-last view computes the same thing. Its output is stored channels-last, the layout the body runs in.
    """

    def __init__(self, channels: int, eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        normalised = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)  # N,H,W,C
        return normalised.permute(0, 3, 1, 2)


def simple_gate(x: Tensor) -> Tensor:
    """NAFNet's SimpleGate, the nonlinearity that replaces activations: (N, 2C, H, W) -> first half x second half."""
    a, b = x.chunk(2, dim=1)
    return a * b


def window_sums(x: Tensor, dim: int, window: int) -> Tensor:
    """Sums of `window` consecutive entries of x along `dim`, every valid position (n - window + 1 of them), from one
    cumulative sum: sum[j] = cumsum[j + window - 1] - cumsum[j - 1]."""
    n = x.shape[dim]
    cumsum = x.cumsum(dim)
    sums = cumsum.narrow(dim, window - 1, n - window + 1).clone()
    sums.narrow(dim, 1, n - window).sub_(cumsum.narrow(dim, 0, n - window))
    return sums


def local_mean(x: Tensor, window: tuple[int, int]) -> Tensor:
    """TLC's local average (official local_arch.AvgPool2d, exact form): x (N, C, H, W) -> (N, C, H, W).

    The mean over a window of min(H, window_h) x min(W, window_w) pixels at every valid position (stride 1), padded
    back to H x W by replicating the border values (extra row/column at the bottom/right), so each pixel gets the
    mean of the window nearest to being centred on it. Separable: rows first, then columns. The sums run on the
    channels-last view (N, H, W, C), which keeps channels-last maps channels-last (cumsum would not).
    """
    h, w = x.shape[2:]
    kh, kw = min(h, window[0]), min(w, window[1])
    sums = window_sums(window_sums(x.permute(0, 2, 3, 1), 1, kh), 2, kw)          # N, H-kh+1, W-kw+1, C
    means = (sums / (kh * kw)).permute(0, 3, 1, 2)                                # N, C, H-kh+1, W-kw+1
    pad_h, pad_w = h - means.shape[2], w - means.shape[3]
    return F.pad(means, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), mode='replicate')


class TLCPool(nn.Module):
    """The pooling of the simplified channel attention: a global mean, or with TLC (Chu et al., "Improving Image
    Restoration by Revisiting Global Information Aggregation", ECCV 2022) the local mean over a fixed window of 1.5x
    the training patch, so test images much larger than the patches see statistics like those seen in training.
    Maps no larger than the window (all training patches) are pooled globally either way: (N, C, 1, 1).
    """

    def __init__(self, window: tuple[int, int], tlc: bool = True):
        super().__init__()
        self.window = window
        self.tlc = tlc

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:]
        if not self.tlc or (h <= self.window[0] and w <= self.window[1]):
            return x.mean((2, 3), keepdim=True)
        return local_mean(x, self.window)

    def extra_repr(self) -> str:
        return f'window={self.window}, tlc={self.tlc}'


class NAFBlock(nn.Module):
    """NAFNet's block (Chen et al., ECCV 2022) on (N, c, H, W) maps; attribute names are the official ones.

    x + beta * conv3(SCA(SimpleGate(dwconv3x3(conv1(LN(x))))))  then  + gamma * conv5(SimpleGate(conv4(LN(.))))
    The official dropout layers are identities (drop_out_rate is 0 in every config) and are left out.
    """

    def __init__(self, c: int, window: tuple[int, int], tlc: bool = True):
        super().__init__()
        dw, ffn = DW_EXPAND * c, FFN_EXPAND * c
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        # Simplified channel attention: pooled statistics through a 1x1 conv, multiplied in (no sigmoid).
        self.sca = nn.Sequential(TLCPool(window, tlc), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        # Residual scales, zero at init: the block starts as the identity.
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        t = simple_gate(self.conv2(self.conv1(self.norm1(x))))                  # N, c, H, W
        x = torch.addcmul(x, self.conv3(t * self.sca(t)), self.beta)
        t = self.conv5(simple_gate(self.conv4(self.norm2(x))))
        return torch.addcmul(x, t, self.gamma)


class SCAM(nn.Module):
    """Stereo cross-attention module: each view attends to every position of the same row of the other view.

    Queries are LayerNorm-ed features through l_proj1 / r_proj1; the values are the raw features through
    l_proj2 / r_proj2. One score matrix A = Q_left Q_right^T / sqrt(c) serves both directions: softmax(A) brings the
    right view to the left, softmax(A^T) the left view to the right.
    """

    def __init__(self, c: int):
        super().__init__()
        self.scale = c ** -0.5
        self.norm_l = LayerNorm2d(c)
        self.norm_r = LayerNorm2d(c)
        self.l_proj1 = nn.Conv2d(c, c, 1)
        self.r_proj1 = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.l_proj2 = nn.Conv2d(c, c, 1)
        self.r_proj2 = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (2B, c, H, W), [left; right] -> the same, each view plus what it gathered from the other."""
        left, right = x.chunk(2)
        # The scale goes on the queries (B H W c numbers) rather than on the scores (B H W W).
        query_left = self.l_proj1(self.norm_l(left)).permute(0, 2, 3, 1) * self.scale  # B, H, W, c
        query_right_t = self.r_proj1(self.norm_r(right)).permute(0, 2, 1, 3)      # B, H, c, W
        value_left = self.l_proj2(left).permute(0, 2, 3, 1)                       # B, H, W, c
        value_right = self.r_proj2(right).permute(0, 2, 3, 1)                     # B, H, W, c
        scores = torch.matmul(query_left, query_right_t)                        # B, H, W_left, W_right
        if kernels.FAST:    # one exp serves both directions (models/kernels.py)
            right_to_left, left_to_right = kernels.two_way_attention(scores, value_left, value_right)
        else:
            right_to_left = torch.matmul(scores.softmax(-1), value_right)       # B, H, W_left, c
            # softmax(scores^T, -1) is softmax(scores, -2) transposed; the transpose is free inside the matmul.
            left_to_right = torch.matmul(scores.softmax(-2).transpose(-1, -2), value_left)  # B, H, W_right, c
        return torch.cat([torch.addcmul(left, right_to_left.permute(0, 3, 1, 2), self.beta),
                          torch.addcmul(right, left_to_right.permute(0, 3, 1, 2), self.gamma)])


class StereoBlock(nn.Module):
    """The official NAFBlockSR: one NAFBlock applied to each view (shared weights), then SCAM across the views."""

    def __init__(self, c: int, window: tuple[int, int], tlc: bool = True):
        super().__init__()
        self.blk = NAFBlock(c, window, tlc)
        self.fusion = SCAM(c)

    def forward(self, x: Tensor) -> Tensor:
        """x: (2B, c, H, W), [left; right]."""
        return self.fusion(self.blk(x))


class DropPath(nn.Module):
    """Stochastic depth as the authors apply it: in training, one coin per call skips the wrapped block for the whole
    batch (both views); kept outputs become x + (new - x) / (1 - p). In eval mode the block always runs, unscaled.

    The official code tosses the coin with the global NumPy RNG (np.random.rand); this uses the torch RNG, so
    torch.manual_seed governs it, and no coin is tossed when p = 0.
    """

    def __init__(self, drop_rate: float, module: nn.Module):
        super().__init__()
        self.drop_rate = drop_rate
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0:
            return self.module(x)
        if torch.rand(()).item() < self.drop_rate:
            return x
        factor = 1.0 / (1.0 - self.drop_rate)  # official rounding: factor * (new - x)
        return torch.add(x, self.module(x) - x, alpha=factor)


class NAFSSR(nn.Module):
    """NAFSSR for one scale: LR pair (B, 3, H, W) RGB in [0, 1], any size -> StereoSROutput with sr_left, sr_right
    (B, 3, sH, sW), not clamped. model.train() / model.eval() switch drop-path.

    The layout (intro conv, stereo blocks behind drop-path, PixelShuffle upsampler, bilinear skip, BGR handling) is
    shared by the networks built on NAFSSR: a subclass names its own `config_class` and `stereo_block` (a module
    (c, window, tlc) on [left; right] maps), and may choose another `body_format`.
    """

    config_class: ClassVar[type] = NAFSSRConfig
    stereo_block: ClassVar[type[nn.Module]] = StereoBlock

    def __init__(self, config: NAFSSRConfig | None = None):
        super().__init__()
        config = config or self.config_class()
        if config.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {config.channel_order!r}")
        if not 0 <= config.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {config.drop_path}")
        self.config = config
        self.scale = config.scale_factor
        self.min_input_size = (1, 1)
        self.input_multiple = 1
        c, window = config.width, config.tlc_window
        # One intro conv and one upsampler serve both views.
        self.intro = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(*(DropPath(config.drop_path, self.stereo_block(c, window, config.tlc))
                                    for _ in range(config.num_blocks)))
        self.up = nn.Sequential(nn.Conv2d(c, 3 * self.scale ** 2, 3, padding=1), nn.PixelShuffle(self.scale))

    def body_format(self, x: Tensor) -> torch.memory_format:
        """Memory format the body runs in. NAFSSR: always channels-last, where its 1x1 convs are plain matrix
        products and its LayerNorms and SCAM's attention read the channels of a pixel contiguously."""
        return torch.channels_last

    def forward(self, left: Tensor, right: Tensor) -> StereoSROutput:
        validate_pair(left, right)
        x = torch.cat([left, right])                                             # 2B, 3, H, W
        if self.config.channel_order == 'bgr':
            x = x.flip(1)
        skip = F.interpolate(x, scale_factor=self.scale, mode='bilinear', align_corners=False)  # 2B, 3, sH, sW
        features = self.body(self.intro(x.contiguous(memory_format=self.body_format(x))))  # 2B, c, H, W
        sr = self.up(features) + skip                                            # 2B, 3, sH, sW
        if self.config.channel_order == 'bgr':
            sr = sr.flip(1)
        sr_left, sr_right = sr.contiguous().chunk(2)
        return StereoSROutput(sr_left, sr_right)


# ---------------------------------------------------------------------------------------------------------------
# Training objective


class NAFSSRLoss(Objective):
    """The authors' objective: MSE (mean) over the 6-channel stack of both views, i.e. the mean of the two views'
    MSEs (official MSELoss, loss_weight 1). Returns {'mse': ..., 'total': ...}."""

    DEFAULT_WEIGHTS = {'mse': 1.0}

    def forward(self, out: StereoSROutput, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor,
                hr_right: Tensor) -> dict[str, Tensor]:
        """out: the network's output; hr_left, hr_right: (B, 3, sH, sW) targets in the network's colour order."""
        terms = {'mse': (F.mse_loss(out.sr_left, hr_left) + F.mse_loss(out.sr_right, hr_right)) / 2}
        return self.weighted_total(terms)


# ---------------------------------------------------------------------------------------------------------------
# The zoo's entries: nafssr-t, nafssr-s, nafssr-b, nafssr-l

# The options of NAFSSR's family (NAFSSR, CVHSSR, SCGLANet; EHFSSR's channel order): one definition each, so that
# `--help`, which shows an option once for all the networks that share it, says what holds for all of them.
TLC_OPTION = Option('tlc', dict(
    action=argparse.BooleanOptionalAction, default=True,
    help='test-time local converter: the channel attention pools local 45x135 windows (1.5x the training patch) '
         'instead of the whole map, as the official test configs do'))
DROP_PATH_OPTION = Option('drop_path', dict(
    type=float, default=None,
    help="drop-path rate of every stereo block in training (default: the variant's official training config, "
         "e.g. NAFSSR-T 0.0, S 0.1, B 0.2, L 0.3)"))
CHANNEL_ORDER_OPTION = Option('channel_order', dict(
    choices=CHANNEL_ORDERS, default='rgb',
    help="colour order the weights expect; the network always takes RGB and reorders inside. The authors' "
         "released weights expect 'bgr' (their BasicSR pipeline feeds BGR; set automatically for their "
         "{'params': ...} files); a project checkpoint records its own"),
    of_weights=True)
OPTIONS = (TLC_OPTION, DROP_PATH_OPTION, CHANNEL_ORDER_OPTION)


def release_options(checkpoint: dict) -> dict:
    """Options implied by a checkpoint: the authors' BasicSR files ({'params': state_dict}) were trained on BGR."""
    return {'channel_order': 'bgr'} if isinstance(checkpoint, dict) and 'params' in checkpoint else {}


def builder(network: type[NAFSSR], variant: str):
    """The registry's build function of `network`'s (NAFSSR or a subclass) variant `variant` ('t', 's', ...)."""
    def build(scale_factor: int = 4, tlc: bool = True, drop_path: float | None = None,
              channel_order: str = 'rgb') -> NAFSSR:
        overrides = {} if drop_path is None else {'drop_path': drop_path}
        return network(network.config_class.variant(variant, scale_factor, tlc=tlc, channel_order=channel_order,
                                                    **overrides))
    return build


for _variant, _iters in (('t', 400_000), ('s', 100_000), ('b', 100_000), ('l', 100_000)):
    register_model(ModelEntry(
        name=f'nafssr-{_variant}',
        build=builder(NAFSSR, _variant),
        criterion=NAFSSRLoss,
        recipe=Recipe(source=f'official options/train/NAFSSR/NAFSSR-{_variant.upper()}_x{{2,4}}.yml',
                      batch_size=32, optimizer='adamw', lr=3e-3, betas=(0.9, 0.9), weight_decay=0.0,
                      schedule='cosine', eta_min=1e-7, total_iters=_iters, grad_clip=0.01, channel_shuffle=True),
        scales=(2, 4),
        options=OPTIONS,
        release_options=release_options,
        description=f'NAFSSR-{_variant.upper()}: NAFNet blocks per view + stereo cross-attention (SCAM)',
        paper='Chu, Chen, Yu, NAFSSR: Stereo Image Super-Resolution Using NAFNet, CVPRW 2022',
        title=f'NAFSSR-{_variant.upper()}',
    ))

__all__ = ['NAFSSR', 'NAFSSRConfig', 'NAFSSRLoss', 'SCAM', 'NAFBlock', 'TLCPool', 'VARIANTS']
