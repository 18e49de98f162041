"""Row-wise parallax attention, the pieces shared by the stereo networks of the zoo (PASSRnet -> iPASSR ->
SSRDE-FNet): the attention transfer along epipolar rows, the +-2 px relaxation and the cycle-consistency valid mask.

A parallax-attention map M (N, W, W') holds, for each of the N = B*H image rows, the weight of column j of the
other view for column i of this view; its rows sum to one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Valid-mask relaxation: a left->right->left cycle that lands within +-2 px counts as consistent (official M_Relax).
RELAX_PIXELS = 2
# V = tanh(5 * cycle mass), the official soft valid mask.
VALID_MASK_GAIN = 5.0


def relax_rows(attention: Tensor, pixels: int = RELAX_PIXELS) -> Tensor:
    """Sum of `attention` (N, W, W') shifted by -pixels..pixels along the query axis (dim 1), zero-filled."""
    padded = F.pad(attention, (0, 0, pixels, pixels))              # (N, W + 2p, W')
    return padded.unfold(1, attention.shape[1], 1).sum(1).transpose(1, 2)


def cycle_valid_mask(forward_attention: Tensor, backward_attention: Tensor) -> Tensor:
    """Soft valid mask from the cycle a->b->a (official SSRDE-FNet model.py:661-671 and `M_Relax`
    model.py:721-734; iPASSR model.py:159-160), detached.

    forward_attention: (N, W_a, W_b), e.g. M_right_to_left for the left view; backward_attention: (N, W_b, W_a).
    Returns tanh(5 * V) with V[n, i] = sum_{|d|<=2} sum_j forward[n, i-d, j] * backward[n, j, i], shape (N, W_a).
    """
    mass = (relax_rows(forward_attention) * backward_attention.transpose(1, 2)).sum(2)
    return torch.tanh(VALID_MASK_GAIN * mass.detach())


def transfer(attention: Tensor, values: Tensor) -> Tensor:
    """Row-wise attention transfer: attention (B*H, W, W') applied to values (B, C, H, W') -> (B, C, H, W)."""
    b, c, h, w = values.shape
    out = torch.bmm(attention.to(values.dtype), values.permute(0, 2, 3, 1).reshape(b * h, w, c))  # (N, W, C)
    return out.view(b, h, -1, c).permute(0, 3, 1, 2)


def coordinates_to_disparity(coords: Tensor, view: str, max_disparity: float | None) -> Tensor:
    """Correspondence coordinates (B, 1, H, W) of the `view` ('left' or 'right') -> disparities in [0, max_disparity].

    Left: d = x - coord; right: d = coord - x, x being the pixel's own column, clamped as the official test mode
    does with max_disparity = 192 (values below 0 become 0, above it become it). max_disparity=None: not clamped (for
    a supervised loss, whose gradient must not vanish where an estimate leaves the range).
    """
    columns = torch.arange(coords.shape[-1], device=coords.device, dtype=coords.dtype)
    if view == 'left':
        disparity = columns - coords
    elif view == 'right':
        disparity = coords - columns
    else:
        raise ValueError(f"view must be 'left' or 'right', got {view!r}")
    return disparity if max_disparity is None else disparity.clamp(0.0, max_disparity)
