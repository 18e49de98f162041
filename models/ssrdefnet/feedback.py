"""HR disparity information feedback (HRDIF): carry what the HR stage learned back to the LR features before the
second recursion (paper Sec. 3.5; official model.py:172-207, `FeedbackBlock` model.py:465-480).

Two paths, fused by the 1x1 `compress_in`:
* the *feedback* path projects the refined HR features down to LR (`down`) and boosts them with a high-pass
  attention (`FeedbackBlock`);
* the *draft* path warps the other view's LR features with the HR disparity at every one of the s*s sub-pixel
  phases, gates and fuses each warp, and averages the phases.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.kernels import memory_format
from models.layers import DeconvBlock, resize_bilinear
from models.ssrdefnet.cost_volume import sample_columns
from models.ssrdefnet.interaction import correlation_gate
from models.ssrdefnet.kernels import fold_phases, sum_phases

# b <- b + 0.1 * b * attention(b), the official weight of the feedback attention.
FEEDBACK_ATTENTION_WEIGHT = 0.1


class FeedbackBlock(nn.Module):
    """Positive high-pass of x: relu(x - blur(x)), blur = learned x4 deconvolution of a 4x4 average pool.

    The official constructor takes kernel/stride/padding arguments but ignores them: the pool is 4 and the deconv
    8/4/2 at every scale (official model.py:466-470). (B, 64, H, W) -> same.
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        self.avgpool_1 = nn.AvgPool2d(4, 4, 0)
        self.up_1 = DeconvBlock(channels, channels, 8, 4, 2)
        self.act_1 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        blurred = resize_bilinear(self.up_1(self.avgpool_1(x)), (x.shape[2], x.shape[3]))
        return self.act_1(x - blurred)


def feedback_features(refined_hr: Tensor, down: nn.Module, attention: FeedbackBlock) -> Tensor:
    """Feedback path: b = down(refined_hr); b + 0.1 * b * attention(b). (2B, 64, sH, sW) -> (2B, 64, H, W)."""
    projected = down(refined_hr)
    return projected + FEEDBACK_ATTENTION_WEIGHT * (projected * attention(projected))


def subpixel_draft(features: Tensor, other: Tensor, coords_hr: Tensor, scale: int, query: nn.Module, key: nn.Module,
                   fuse: nn.Module) -> Tensor:
    """Draft path: average over the s*s sub-pixel phases of the HR disparity of a gated cross-view warp.

    features: (N, C, H, W) recursion-1 LR deep features of one view, `other` those of the other view;
    coords_hr: (N, 1, sH, sW) HR coordinates of this view. For phase (u, v) the LR coordinate map is
    coords_hr[..., u::s, v::s] / s (no phase offset, official model.py:188-189); it warps `other`, a correlation
    gate between `query(features)` and `key(warp)` mixes the warp with the own features, and `fuse` (an RDB) refines the
    difference. All phases run as one batch: pixel-unshuffle puts phase u*s+v on the channel axis, which
    `sample_columns` treats as hypotheses. Returns (N, C, H, W) in the memory format of `features` (the sum over
    phases would give NCHW, and the fusion `compress_in` would then run the whole second LR stage in NCHW).
    """
    n, c, h, w = features.shape
    phases = scale * scale
    coords = F.pixel_unshuffle(coords_hr, scale) / scale                 # (N, s*s, H, W)
    warped = sample_columns(other, coords)                              # (N, C, s*s, H, W)
    warped = fold_phases(warped, memory_format(features))              # (N*s*s, C, H, W)
    own = features.unsqueeze(1)                                         # (N, 1, C, H, W)
    gate = correlation_gate(query(features).unsqueeze(1), key(warped).view(n, phases, -1, h, w))
    mixed = (1 - gate) * own + gate * warped.view(n, phases, c, h, w)   # (N, s*s, C, H, W)
    del warped, gate
    residual = fuse((mixed - own).reshape(n * phases, c, h, w)).view(n, phases, c, h, w)
    total = own + residual if torch.is_grad_enabled() else residual.add_(own)   # no autograd: in place, fresh
    return (sum_phases(total) / phases).contiguous(memory_format=memory_format(features))
