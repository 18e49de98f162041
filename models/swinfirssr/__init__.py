"""SwinFIRSSR (Zhang et al., "SwinFIR: Revisiting the SwinIR with Fast Fourier Convolution and Improved Training for
Image Super-Resolution", arXiv 2208.11247; stereo variant in Zdafeng/SwinFIR): SwinFIR's transformer body on each
view, a stereo cross-attention module after every residual group, x2 and x4.

One file per concept: `attention.py` (HAT's hybrid and overlapping cross-attention blocks), `fourier.py` (the
spatial-frequency block), `scam.py` (the cross-view module), `network.py` (the groups wired together, the RGB mean,
the authors' test-time padding). This file holds the training objective and the zoo entry. Names and registration
order are the official ones, so the state_dict equals swinfirssr_x{2,4}_state_dict.json (index buffers included)
and the authors' BasicSR files load strictly; utils.read_checkpoint takes their 'params_ema' (the EMA weights their
test yml loads) before 'params'. Notes, quirks and parity figures: docs/models/swinfirssr.md.
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.outputs import StereoSROutput
from models.registry import ModelEntry, Recipe, register_model
from models.stereo_losses import Objective
from models.swinfirssr.network import SwinFIRSSR, SwinFIRSSRConfig

# Charbonnier epsilon of the official CharbonnierLossColor (swinfir/losses/charbonnier_loss.py 9, 33).
CHARBONNIER_EPS = 1e-6


class SwinFIRSSRLoss(Objective):
    """The authors' objective, CharbonnierLossColor on the 6-channel stack [left, right] (charbonnier_loss.py 9-15):
    the mean over pixels of sqrt(mean over the 6 channels of (SR - HR)^2 + 1e-6); both views' colour errors share one
    square root per pixel. Returns {'charbonnier': ..., 'total': ...}."""

    DEFAULT_WEIGHTS = {'charbonnier': 1.0}

    def forward(self, out: StereoSROutput, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor,
                hr_right: Tensor) -> dict[str, Tensor]:
        """out: the network's output; hr_left, hr_right: (B, 3, sH, sW) RGB targets."""
        error = torch.cat([out.sr_left - hr_left, out.sr_right - hr_right], dim=1)       # B, 6, sH, sW
        return self.weighted_total({'charbonnier': torch.sqrt(error.square().mean(1) + CHARBONNIER_EPS).mean()})


def build(scale_factor: int = 4) -> SwinFIRSSR:
    return SwinFIRSSR(SwinFIRSSRConfig(scale_factor=scale_factor))


register_model(ModelEntry(
    name='swinfirssr',
    build=build,
    criterion=SwinFIRSSRLoss,
    recipe=Recipe(
        source='official options/train/SwinFIRSSR/train_SwinFIRSSR_SSRx{2,4}_scratch.yml: Adam (0.9, 0.99) lr 2e-4, '
               '4 per GPU x 8 GPUs (README command), 800k iterations, channel shuffle (p 0.3 there), EMA 0.999 (not '
               'in this recipe: train.py keeps no EMA), MultiStepLR x0.5 at 600k and 700k iterations (not '
               'expressible: train.py steps per epoch; kept constant here, gamma 1), 64x64 LR patches',
        batch_size=32, optimizer='adam', lr=2e-4, betas=(0.9, 0.99), schedule='step', gamma=1.0,
        total_iters=800_000, channel_shuffle=True),
    scales=(2, 4),
    description='SwinFIR (HAT attention + Fourier residual blocks) per view + stereo cross-attention (SCAM)',
    paper='Zhang et al., SwinFIR: Revisiting the SwinIR with Fast Fourier Convolution and Improved Training for '
          'Image Super-Resolution, arXiv 2208.11247 (2022)',
    title='SwinFIRSSR',
))

__all__ = ['SwinFIRSSR', 'SwinFIRSSRConfig', 'SwinFIRSSRLoss']
