"""Inference helpers shared by the evaluation scripts and the demo: stereo-aware test-time augmentation."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.outputs import Pair


def stereo_flips(left: Tensor, right: Tensor, horizontal: bool, vertical: bool) -> Pair:
    """Flip a stereo pair. A horizontal flip mirrors both views *and* swaps them, so the result is again a rectified
    pair (the mirrored right view becomes the left view). The transform is its own inverse."""
    if horizontal:
        left, right = right.flip(-1), left.flip(-1)
    if vertical:
        left, right = left.flip(-2), right.flip(-2)
    return Pair(left, right)


@torch.inference_mode()
def super_resolve(model: nn.Module, left: Tensor, right: Tensor, tta: bool = False, amp: bool = False) -> Pair:
    """Final SR pair (B, 3, sH, sW), clamped to [0, 1]. `tta`: mean over the 4 stereo-aware flips (self-ensemble)."""
    flips = [(h, v) for h in (False, True) for v in (False, True)] if tta else [(False, False)]
    total = None
    for h, v in flips:
        with torch.autocast(left.device.type, enabled=amp and left.device.type == 'cuda'):
            out = model(*stereo_flips(left, right, h, v))
        sr = stereo_flips(out.sr_left.float(), out.sr_right.float(), h, v)
        total = sr if total is None else Pair(total.left + sr.left, total.right + sr.right)
    return total.map(lambda x: (x / len(flips)).clamp(0, 1))

