"""CVHSSR (Zou et al., "Cross-View Hierarchy Network for Stereo Image Super-Resolution", CVPRW 2023,
arXiv 2304.06236): NAFSSR's layout with a richer block. Each view runs through Cross-Hierarchy Information Mining
Blocks (CHIMB, shared weights): a NAFNet-like block whose channel attention is joined by a large-kernel attention
(LKA, from VAN) and whose feed-forward branch is a depthwise-conv GELU gate. A Cross-View Interaction Module (CVIM)
after every block lets each view attend along its rows to the other. A PixelShuffle upsampler and a bilinear skip
finish the network.

Quirks of the official code (AlexZou14/CVHSSR @252cd38, basicsr/models/archs/CVHSSR_arch.py) kept here, as the
authors' weights need them: every block has a CVIM, the last included (fusion_from=-1, fusion_to=1000, 667-677);
CHIMB adds its two attentions, x * SCA(x) + LKA(x), and SCA has no sigmoid (579); every residual scale starts at
zero; drop-path skips the whole stereo block on one coin per call (611-626); at test time the channel attention
pools a local 45x135 window (TLC, 99-104), for x2 as for x4; the skip is bilinear (655); the released weights expect
BGR views (`channel_order`, as NAFSSR). The yml's drop_out_rate never reaches CHIMB (641-644), so there is none.
Both views run folded into the batch, [left; right], so each stage is written once. Names and registration order
equal the official modules', so the state_dict matches cvhssr_{t,s}_x{2,4}_state_dict.json and the authors'
checkpoints load strictly; tests/test_cvhssr_parity.py checks equality with the official code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import kernels
from models.kernels import DilatedDepthwiseConv2d, activation_format
from models.nafssr import (NAFSSR, OPTIONS, LayerNorm2d, NAFSSRConfig, TLCPool, builder, release_options,
                           simple_gate)  # release_options: BasicSR {'params'} files are BGR
from models.outputs import StereoSROutput
from models.registry import ModelEntry, Recipe, register_model
from models.stereo_losses import Objective

# CHIMB expansions (official DW_Expand = FFN_Expand = 2, CVHSSR_arch.py 532): both branches run at 2c channels and
# their gates halve them back to c.
DW_EXPAND = 2
FFN_EXPAND = 2

# Variants (official options/test/CVHSSR_{T,S}x{2,4}.yml, options/train/CVHSSR_Sx4.yml): width c, blocks n,
# training drop-path rate (S: 0.1 in its train yml; T: 0 in its test ymls, it has no published train yml).
VARIANTS = {
    't': dict(width=48, num_blocks=16, drop_path=0.0),
    's': dict(width=64, num_blocks=32, drop_path=0.1),
}


@dataclass
class CVHSSRConfig(NAFSSRConfig):
    """Hyperparameters of CVHSSR: NAFSSR's fields (width, blocks, drop-path, TLC window from the official 30x90
    training patches, channel order), its own variants; defaults are CVHSSR-T's (the official test configs), which
    equal NAFSSR-T's. The authors' pipeline feeds BGR here too (paired_image_SR_LR_dataset.py 322-324)."""

    variants: ClassVar[dict[str, dict]] = VARIANTS


# ---------------------------------------------------------------------------------------------------------------
# The blocks


class LargeKernelAttention(nn.Module):
    """LKA (Guo et al., "Visual Attention Network", 2022): a 21x21 receptive field from a depthwise 5x5, a depthwise
    7x7 with dilation 3 and a 1x1 conv; the result multiplies the input. (N, c, H, W) -> same. Official `LKA`
    (CVHSSR_arch.py 187-200); attribute names are its own."""

    def __init__(self, c: int):
        super().__init__()
        self.conv0 = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.conv_spatial = DilatedDepthwiseConv2d(c, 7, dilation=3)   # padding 9: 'same'
        self.conv1 = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        spatial = self.conv0(x)
        if torch.is_autocast_enabled('cpu') and x.device.type == 'cpu':
            # float32 under CPU autocast: oneDNN's bfloat16 kernel of this dilated depthwise conv ran 1.7x slower
            # than its float32 one (CVHSSR-T at 47x156: 4.1 s against 2.4 s, torch.profiler; reports/2026-12-07-bf16.md)
            with torch.autocast('cpu', enabled=False):
                spatial = self.conv_spatial(spatial.float())
        else:
            spatial = self.conv_spatial(spatial)
        return x * self.conv1(spatial)


class CHIMB(nn.Module):
    """Cross-Hierarchy Information Mining Block on (N, c, H, W) maps (official `CHIMB`, CVHSSR_arch.py 531-593).

    Hierarchy mining:  t = SimpleGate(dwconv3x3(conv1(LN(x))));  x + beta * conv3(SCA(t) * t + LKA(t)),
    where SCA is the simplified channel attention (pooled statistics through a 1x1 conv, no sigmoid).
    Feed-forward:      y + gamma * conv6(GELU(a) * b),  (a, b) = halves of dwconv3x3(conv4(LN(y))).
    """

    def __init__(self, c: int, window: tuple[int, int], tlc: bool = True):
        super().__init__()
        dw, ffn = DW_EXPAND * c, FFN_EXPAND * c
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        # The official names: sca1 is the spatial (LKA) branch, sca2 the channel one.
        self.sca1 = LargeKernelAttention(dw // 2)
        self.sca2 = nn.Sequential(TLCPool(window, tlc), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn, ffn, 3, padding=1, groups=ffn)
        self.conv6 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        # Residual scales, zero at init: the block starts as the identity.
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        t = simple_gate(self.conv2(self.conv1(self.norm1(x))))                  # N, c, H, W
        t = self.sca2(t) * t + self.sca1(t)
        x = torch.addcmul(x, self.conv3(t), self.beta)
        a, b = self.conv5(self.conv4(self.norm2(x))).chunk(2, dim=1)           # N, c, H, W each
        return torch.addcmul(x, self.conv6(F.gelu(a) * b), self.gamma)


def projection(c: int) -> nn.Sequential:
    """CVIM's query and value projections: a 1x1 conv then a depthwise 3x3 (official l_proj1/2, r_proj1/2)."""
    return nn.Sequential(nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1, groups=c))


class CVIM(nn.Module):
    """Cross-View Interaction Module (official `CVIM`, CVHSSR_arch.py 480-528): each view attends to every position
    of the same row of the other view.

    Queries are LayerNorm-ed features through l_proj1 / r_proj1, values the raw features through l_proj2 / r_proj2
    (each a 1x1 then a depthwise 3x3 conv). One score matrix A = Q_left Q_right^T / sqrt(c) serves both directions:
    softmax(A) brings the right view to the left, softmax(A^T) the left view to the right; a 1x1 conv (proj3)
    projects what each view gathered before its residual scale.
    """

    def __init__(self, c: int):
        super().__init__()
        self.scale = c ** -0.5
        self.norm_l = LayerNorm2d(c)
        self.norm_r = LayerNorm2d(c)
        self.l_proj1 = projection(c)
        self.r_proj1 = projection(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.l_proj2 = projection(c)
        self.r_proj2 = projection(c)
        self.l_proj3 = nn.Conv2d(c, c, 1)
        self.r_proj3 = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (2B, c, H, W), [left; right] -> the same, each view plus what it gathered from the other."""
        left, right = x.chunk(2)
        query_left = self.l_proj1(self.norm_l(left)).permute(0, 2, 3, 1)        # B, H, W, c
        query_right_t = self.r_proj1(self.norm_r(right)).permute(0, 2, 1, 3)    # B, H, c, W
        value_left = self.l_proj2(left).permute(0, 2, 3, 1)                     # B, H, W, c
        value_right = self.r_proj2(right).permute(0, 2, 3, 1)                   # B, H, W, c
        scores = torch.matmul(query_left, query_right_t) * self.scale           # B, H, W_left, W_right
        if kernels.FAST:    # one exp serves both directions (models/kernels.py)
            right_to_left, left_to_right = kernels.two_way_attention(scores, value_left, value_right)
        else:
            right_to_left = torch.matmul(scores.softmax(-1), value_right)       # B, H, W_left, c
            # softmax(scores^T, -1) is softmax(scores, -2) transposed; the transpose is free inside the matmul.
            left_to_right = torch.matmul(scores.softmax(-2).transpose(-1, -2), value_left)  # B, H, W_right, c
        return torch.cat([torch.addcmul(left, self.l_proj3(right_to_left.permute(0, 3, 1, 2)), self.beta),
                          torch.addcmul(right, self.r_proj3(left_to_right.permute(0, 3, 1, 2)), self.gamma)])


class StereoBlock(nn.Module):
    """The official CHIMBSR (596-608): one CHIMB applied to each view (shared weights), then CVIM across the views."""

    def __init__(self, c: int, window: tuple[int, int], tlc: bool = True):
        super().__init__()
        self.blk = CHIMB(c, window, tlc)
        self.fusion = CVIM(c)

    def forward(self, x: Tensor) -> Tensor:
        """x: (2B, c, H, W), [left; right]."""
        return self.fusion(self.blk(x))


class CVHSSR(NAFSSR):
    """CVHSSR for one scale: NAFSSR's layout (intro conv, stereo blocks behind drop-path, PixelShuffle upsampler,
    bilinear skip) with CHIMB + CVIM stereo blocks. LR pair (B, 3, H, W) RGB in [0, 1], any size -> StereoSROutput
    with sr_left, sr_right (B, 3, sH, sW), not clamped. model.train() / model.eval() switch drop-path."""

    config_class = CVHSSRConfig
    stereo_block = StereoBlock

    def body_format(self, x: Tensor) -> torch.memory_format:
        """Channels-last in CPU evaluation and on GPUs (`activation_format`), which LKA's dilated 7x7 needs for its
        fast form (`DilatedDepthwiseConv2d`); NCHW in CPU training and under `plain_forms`."""
        return activation_format(x, self)


# ---------------------------------------------------------------------------------------------------------------
# Training objective


def frequency_charbonnier(sr: Tensor, hr: Tensor, eps: float = 1e-12) -> Tensor:
    """Charbonnier distance of the real and of the imaginary parts of the 2-D FFTs (rfft2, unnormalised) of sr and hr,
    (B, C, H, W) each, averaged over every frequency and channel (official FrequencyCharLoss, losses.py 43-63)."""
    sr_fft, hr_fft = torch.fft.rfft2(sr, norm='backward'), torch.fft.rfft2(hr, norm='backward')
    return ((sr_fft.real - hr_fft.real).square().add(eps).sqrt()
            + (sr_fft.imag - hr_fft.imag).square().add(eps).sqrt()).mean()


class CVHSSRLoss(Objective):
    """The authors' objective (official ComposeLoss, losses.py 33-41, loss_weight 0.01 in CVHSSR_Sx4.yml): MSE plus
    0.01 x the frequency Charbonnier loss, each a mean over the 6-channel stack of both views, i.e. the mean of the
    two views' terms. Returns {'mse', 'fft', 'total'}."""

    DEFAULT_WEIGHTS = {'mse': 1.0, 'fft': 0.01}

    def forward(self, out: StereoSROutput, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor,
                hr_right: Tensor) -> dict[str, Tensor]:
        """out: the network's output; hr_left, hr_right: (B, 3, sH, sW) targets in the network's colour order."""
        terms = {'mse': (F.mse_loss(out.sr_left, hr_left) + F.mse_loss(out.sr_right, hr_right)) / 2,
                 'fft': (frequency_charbonnier(out.sr_left, hr_left)
                         + frequency_charbonnier(out.sr_right, hr_right)) / 2}
        return self.weighted_total(terms)


# ---------------------------------------------------------------------------------------------------------------
# The zoo's entries: cvhssr-t, cvhssr-s

# The one published recipe (options/train/CVHSSR_Sx4.yml, a fine-tuning stage) trains with Lion (lr 1e-4, betas
# (0.9, 0.9), wd 0; image_restoration_model.py 428-489). train.py offers Adam and AdamW only, so the recipe keeps
# Lion's numbers under AdamW, the closest optimiser it offers (not the same update rule: Lion steps by the sign).
RECIPE = Recipe(source='official options/train/CVHSSR_Sx4.yml (Lion optimiser there; AdamW here, the closest that '
                       'train.py offers, with the same lr and betas); no recipe for CVHSSR-T is published',
                batch_size=24, optimizer='adamw', lr=1e-4, betas=(0.9, 0.9), weight_decay=0.0,
                schedule='cosine', eta_min=1e-8, total_iters=200_000, grad_clip=0.01, channel_shuffle=True)

for _variant in VARIANTS:
    register_model(ModelEntry(
        name=f'cvhssr-{_variant}',
        build=builder(CVHSSR, _variant),
        criterion=CVHSSRLoss,
        recipe=RECIPE,
        scales=(2, 4),
        options=OPTIONS,
        release_options=release_options,
        description=f'CVHSSR-{_variant.upper()}: CHIMB blocks (channel + large-kernel attention) per view + '
                    'cross-view interaction (CVIM)',
        paper='Zou et al., Cross-View Hierarchy Network for Stereo Image Super-Resolution, CVPRW 2023',
        title=f'CVHSSR-{_variant.upper()}',
    ))

__all__ = ['CHIMB', 'CVHSSR', 'CVHSSRConfig', 'CVHSSRLoss', 'CVIM', 'LargeKernelAttention', 'VARIANTS',
           'frequency_charbonnier']
