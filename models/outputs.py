"""The output contract shared by every network of the zoo, and the `Pair` container.

Every stereo network returns a `StereoOutput`: the final SR views `sr_left`, `sr_right` (B, 3, sH, sW), *not*
clamped, and, where the network estimates it, the HR disparity `disp_left`, `disp_right` (B, 1, sH, sW) in HR pixels
(None otherwise). Networks add their own named fields for their training objective (attention maps, masks...).
The scripts read only the contract, so they run every network without knowing which one it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

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
