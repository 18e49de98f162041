"""HR feature interaction: warp the other view's HR features with the HR disparity and fuse them through a
correlation gate (paper Sec. 3.4; official model.py:141-168). Also the HR valid mask that only the losses use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.ssrdefnet.cost_volume import swap_views, warp

# Sharpness of the correlation gates: gate = (tanh(5 * <a, b>) + 1) / 2 (official constant, used by the HR
# interaction and by the HRDIF feedback).
GATE_GAIN = 5.0
# HR valid mask = 1 - tanh(0.1 * geometry error) (official constant).
GEOMETRY_ERROR_GAIN = 0.1


def correlation_gate(a: Tensor, b: Tensor) -> Tensor:
    """Per-pixel agreement of two embeddings (..., C, H, W), broadcastable -> gate (..., 1, H, W) in (0, 1)."""
    return (torch.tanh(GATE_GAIN * (a * b).sum(-3, keepdim=True)) + 1) / 2


def hr_valid_mask(coords: Tensor, valid_lr: Tensor, scale: int) -> Tensor:
    """HR valid mask V2 = max(nearest_up(V_lr), 1 - tanh(0.1 * e)), detached (official model.py:144-151).

    coords: (2B, 1, sH, sW) HR coordinates as [left; right]; valid_lr: (2B, 1, H, W) PAM valid mask.
    e = |coord - other_view_coord(coord)|. Because coordinates (not offsets) are compared, e is about the disparity
    magnitude rather than a left-right inconsistency (official model.py:144-145); we reproduce it because the losses
    were tuned with it. The mask only weights loss terms; it is not used in the forward computation.
    """
    error = (coords - warp(swap_views(coords), coords)).abs().detach()
    return torch.max(F.interpolate(valid_lr, scale_factor=scale, mode='nearest'),
                     1 - torch.tanh(GEOMETRY_ERROR_GAIN * error))
