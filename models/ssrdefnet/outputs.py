"""The named output of SSRDE-FNet (the zoo's `StereoOutput` with everything its training objective needs)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from models.outputs import Pair, StereoOutput
from models.ssrdefnet.cost_volume import MAX_DISPARITY, coordinates_to_disparity


def coordinates_to_disparities(coords: Pair, clamp: bool = True) -> Pair:
    """Pair of correspondence coordinates -> Pair of positive disparities in [0, 192] (not clamped if not `clamp`;
    see cost_volume)."""
    limit = MAX_DISPARITY if clamp else None
    return Pair(coordinates_to_disparity(coords.left, 'left', limit), coordinates_to_disparity(coords.right, 'right',
                                                                                                limit))


@dataclass
class SSRDEFNetOutput(StereoOutput):
    """Everything one forward pass of SSRDE-FNet returns, in train and in eval mode.

    B is the batch, (H, W) the LR size and s the scale. Every list is ordered in time; every item is a `Pair`.

    sr:        the four SR estimates (B, 3, sH, sW), *not* clamped, in the official order
               [recursion 1 LR branch (out1), recursion 1 after HR interaction (out2),
                recursion 2 LR branch (out3), recursion 2 after HR interaction (out4)]. sr[-1] is the final output.
    attention: per recursion, the PAM attention maps as Pair(M_right_to_left, M_left_to_right), each (B, H, W, W);
               M_right_to_left[b, y, i, j] is the weight of right column j for left pixel (y, i).
    valid_lr:  per recursion, the PAM valid masks tanh(5 V) (B, 1, H, W), detached.
    valid_hr:  per recursion, the HR valid masks V2 (B, 1, sH, sW), detached; only the losses use them.
    coords_lr: per recursion, the PAM correspondence coordinates upsampled to HR (B, 1, sH, sW), in HR pixels: for a
               left pixel the matching column in the right image, for a right pixel the one in the left image.
    coords_hr: per recursion, the HR cost-volume correspondence coordinates (B, 1, sH, sW).
    coords_pam: per recursion, the PAM correspondence coordinates before upsampling (B, 1, H, W), in LR pixels
               (coords_lr = their bilinear upsampling x s): the LR disparity a map upsampler (DSDMSR) can take.
    """

    sr: list[Pair]
    attention: list[Pair]
    valid_lr: list[Pair]
    valid_hr: list[Pair]
    coords_lr: list[Pair]
    coords_hr: list[Pair]
    coords_pam: list[Pair] = field(default_factory=list)

    @property
    def sr_left(self) -> Tensor:
        """Final left SR image (B, 3, sH, sW), not clamped."""
        return self.sr[-1].left

    @property
    def sr_right(self) -> Tensor:
        """Final right SR image (B, 3, sH, sW), not clamped."""
        return self.sr[-1].right

    @property
    def disp_hr(self) -> list[Pair]:
        """Per recursion, the HR cost-volume disparities (B, 1, sH, sW) in HR pixels, clamped to [0, 192]."""
        return [coordinates_to_disparities(c) for c in self.coords_hr]

    @property
    def disp_lr(self) -> list[Pair]:
        """Per recursion, the upsampled PAM disparities (B, 1, sH, sW) in HR pixels, clamped to [0, 192]."""
        return [coordinates_to_disparities(c) for c in self.coords_lr]

    @property
    def disp_pam(self) -> list[Pair]:
        """Per recursion, the PAM disparities at LR (B, 1, H, W) in LR pixels, clamped to [0, 192 / s] (the official
        [0, 192] HR-pixel range, in LR pixels): what `disp_lr` upsamples bilinearly (and multiplies by s)."""
        scale = self.coords_lr[0].left.shape[-1] / self.coords_pam[0].left.shape[-1]
        return [Pair(coordinates_to_disparity(c.left, 'left', MAX_DISPARITY / scale),
                     coordinates_to_disparity(c.right, 'right', MAX_DISPARITY / scale)) for c in self.coords_pam]

    @property
    def disp_left(self) -> Tensor:
        """Final left disparity (B, 1, sH, sW): HR cost volume of recursion 2, as the official evaluation gives it."""
        return coordinates_to_disparity(self.coords_hr[-1].left, 'left', MAX_DISPARITY)

    @property
    def disp_right(self) -> Tensor:
        """Final right disparity (B, 1, sH, sW), positive, clamped to [0, 192]."""
        return coordinates_to_disparity(self.coords_hr[-1].right, 'right', MAX_DISPARITY)
