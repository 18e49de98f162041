"""The input and output contract shared by every network of the zoo, and the `Pair` container.

Every network takes an LR pair `left`, `right` (B, 3, H, W), RGB in [0, 1], and refuses anything else before any
computation (`validate_pair`, plus each network's own limits, e.g. SSRDE-FNet's 30x30 minimum).

Every stereo network returns a `StereoOutput`: the final SR views `sr_left`, `sr_right` (B, 3, sH, sW), *not*
clamped, and, where the network estimates it, the HR disparity `disp_left`, `disp_right` (B, 1, sH, sW) in HR pixels
(None otherwise). Networks add their own named fields for their training objective (attention maps, masks...).
The scripts read only the contract, so they run every network without knowing which one it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor


class Pair(NamedTuple):
    """A left/right pair of anything (tensors, metrics, file names)."""

    left: object
    right: object

    def map(self, fn: Callable) -> 'Pair':
        return Pair(fn(self.left), fn(self.right))

    def swapped(self) -> 'Pair':
        """Pair(right, left): for each view, the other one."""
        return Pair(self.right, self.left)

    @staticmethod
    def unfold(x: Tensor) -> 'Pair':
        """[left; right] stacked on dim 0 -> Pair(left, right)."""
        left, right = x.chunk(2)
        return Pair(left, right)


def validate_pair(left: Tensor, right: Tensor) -> tuple[int, int, int]:
    """Raise ValueError with a clear message unless left and right are non-empty finite float tensors of one shape
    (B, 3, H, W); returns (B, H, W)."""
    for name, x in (('left', left), ('right', right)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} image must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} image must have shape (B, 3, H, W) (RGB in [0, 1]), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} image must be a floating-point tensor in [0, 1], got dtype {x.dtype}")
    if left.shape != right.shape or left.dtype != right.dtype:
        raise ValueError(f"left and right images must have the same shape and dtype, got {tuple(left.shape)} "
                         f"{left.dtype} and {tuple(right.shape)} {right.dtype}")
    b, _, h, w = left.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"LR images must not be empty, got {tuple(left.shape)}")
    if torch.compiler.is_exporting():   # a value check cannot be traced into a graph (torch.export, ONNX)
        return b, h, w
    for name, x in (('left', left), ('right', right)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} image contains NaN or Inf values")
    return b, h, w


class NonFiniteError(FloatingPointError):
    """Raised where a network's values stop being finite before they would be used as indices (e.g. the HR
    disparity hypotheses of SSRDE-FNet's cost volume), so a diverging run stops with a message instead of an
    out-of-bounds index; train.py reports it with the step and the learning rate."""


class StereoOutput:
    """Base of every network's output: subclasses provide `sr_left` and `sr_right` (fields or properties) and,
    when the network estimates disparity, `disp_left` and `disp_right`."""

    sr_left: Tensor
    sr_right: Tensor
    disp_left: Tensor | None = None
    disp_right: Tensor | None = None


@dataclass
class StereoSROutput(StereoOutput):
    """The output of a network that returns only the SR pair (B, 3, sH, sW), not clamped."""

    sr_left: Tensor
    sr_right: Tensor
