"""The training objective of SSRDE-FNet, every term in one place (official train.py:145-253 + loss.py).

total = sr + 0.1 cons + 0.1 (photo + smooth + cycle) + 0.001 disp_smooth + 0.01 disp_unsup [+ W disp_sup, an option]

The photometric, cycle and consistency terms compare a view with the other view brought over by a correspondence:
the PAM attention maps at LR, the HR disparity warps at HR. `Correspondence` holds the two directions, so each term
is written once for both views and all recursions. As in the official code, masked L1 terms divide by all elements
(not by the mask sum) and every valid mask V is detached.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from models.outputs import Pair
from models.ssrdefnet.cost_volume import warp
from models.ssrdefnet.outputs import SSRDEFNetOutput, coordinates_to_disparities
from models.stereo_losses import (Correspondence, Objective, attention_smoothness, cycle_consistency,
                                  illumination_residuals, masked_l1, supervised_disparity, view_consistency)

# Paper / official weights of the terms.
DEFAULT_WEIGHTS = {'sr': 1.0, 'cons': 0.1, 'photo': 0.1, 'smooth': 0.1, 'cycle': 0.1, 'disp_smooth': 0.001,
                   'disp_unsup': 0.01}
# Disparity supervision (off unless train.py --disp_supervision W): the PAM (LR) and HR cost-volume estimates of
# both recursions, later ones weighted more, as GwcNet/PSMNet weight their successive outputs (0.5, 0.5, 0.7, 1.0).
DISPARITY_PARTS = {'pam1': 0.5, 'pam2': 0.5, 'hr1': 0.7, 'hr2': 1.0}
# Unsupervised disparity loss (MonoDepth-style): 0.15 L1 + 0.85 (1 - SSIM) / 2, SSIM with an 11x11 Gaussian, sigma 1.5.
PHOTO_L1_WEIGHT, PHOTO_SSIM_WEIGHT = 0.15, 0.85
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def warp_correspondence(coords: Pair) -> Correspondence:
    """HR: warps with the HR correspondence coordinates (not detached: these losses train the HR disparity)."""
    return Correspondence(lambda x: warp(x, coords.left), lambda x: warp(x, coords.right))


def edge_aware_smoothness(coords: Tensor, image: Tensor) -> Tensor:
    """sum(|grad d| * exp(-|grad I|)) / sum(exp(-|grad I|)) over x and y forward differences (official
    loss_disp_smoothness). Applied to correspondence coordinates, as the official code does (train.py:148-149)."""
    weight_x = torch.exp(-(image[..., :-1] - image[..., 1:]).abs().mean(1, keepdim=True))
    weight_y = torch.exp(-(image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True))
    grad_x = (coords[..., :-1] - coords[..., 1:]).abs()
    grad_y = (coords[..., :-1, :] - coords[..., 1:, :]).abs()
    return ((grad_x * weight_x).sum() + (grad_y * weight_y).sum()) / (weight_x.sum() + weight_y.sum())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """The normalised 1-D Gaussian (size,); the official 2-D window is its outer product with itself."""
    g = torch.tensor([math.exp(-(x - size // 2) ** 2 / (2 * sigma ** 2)) for x in range(size)])
    return g / g.sum()


def gaussian_blur(x: Tensor) -> Tensor:
    """Depthwise 11x11 Gaussian blur with zero padding, as two 1-D passes: the official 2-D window's weights are
    products of 1-D ones, so the result is the same up to rounding (2.6x faster forward + backward at training size)."""
    channels = x.shape[1]
    g = gaussian_window().to(x)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(channels, 1, SSIM_WINDOW, 1), padding=(SSIM_WINDOW // 2, 0),
                 groups=channels)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(channels, 1, 1, SSIM_WINDOW), padding=(0, SSIM_WINDOW // 2),
                    groups=channels)


def ssim_map(a: Tensor, b: Tensor) -> Tensor:
    """Per-pixel SSIM (B, C, H, W), depthwise 11x11 Gaussian window, zero padding (official loss.ssim).
    The five blurred maps (means, second moments) come from one batched blur."""
    mu_a, mu_b, aa, bb, ab = gaussian_blur(torch.cat([a, b, a * a, b * b, a * b], dim=1)).chunk(5, dim=1)
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def photometric_warp(image: Tensor, coords: Tensor) -> Tensor:
    """Official loss.warp_disp: border padding and x = 2 coord / W - 1, y = 2 row / (H - 1) - 1 (a different
    normalisation from the network's warps), grid_sample with align_corners=False."""
    b, _, h, w = image.shape
    y = torch.linspace(0, 1, h, device=image.device, dtype=image.dtype).view(1, h, 1).expand(b, h, w)
    grid = 2 * torch.stack([coords[:, 0] / w, y], dim=3) - 1
    return F.grid_sample(image, grid, mode='bilinear', padding_mode='border', align_corners=False)


def unsupervised_disparity(target: Tensor, source: Tensor, coords: Tensor, valid: Tensor) -> Tensor:
    """0.15 L1 + 0.85 (1 - SSIM)/2 between `target` and `source` warped by `coords`, masked by `valid`."""
    warped = photometric_warp(source, coords)
    return (PHOTO_L1_WEIGHT * masked_l1(warped, target, valid)
            + PHOTO_SSIM_WEIGHT * (valid * (1 - ssim_map(target, warped)) / 2).mean())


class SSRDEFNetLoss(Objective):
    """loss(out, lr_left, lr_right, hr_left, hr_right[, disparity]) -> {'sr', 'photo', 'smooth', 'cycle', 'cons',
    'disp_smooth', 'disp_unsup'[, 'disp_sup'], 'total'} for a training-mode `SSRDEFNetOutput`; 'disp_sup' when the
    ground-truth disparity Pair is given (weight 0 unless train.py --disp_supervision W).

    Deviation from the official train.py: the LR valid masks are upsampled by the real scale in `disp_unsup`
    (the official code hard-codes x4, so it cannot train at x2).
    """

    DEFAULT_WEIGHTS = {**DEFAULT_WEIGHTS, 'disp_sup': 0.0}
    DISPARITY_PARTS = DISPARITY_PARTS

    def forward(self, out: SSRDEFNetOutput, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor,
                hr_right: Tensor, disparity: Pair | None = None) -> dict[str, Tensor]:
        s = self.scale
        hr = Pair(hr_left, hr_right)
        down = lambda x: F.interpolate(x, scale_factor=1 / s, mode='bicubic', align_corners=False)  # noqa: E731
        residual_hr, residual_lr = illumination_residuals(hr, Pair(lr_left, lr_right), s)

        terms = dict.fromkeys(['sr', 'photo', 'smooth', 'cycle', 'cons', 'disp_smooth', 'disp_unsup'], 0)
        # 1. SR: L1 of all eight outputs
        for sr in out.sr:
            terms['sr'] = terms['sr'] + F.l1_loss(sr.left, hr.left) + F.l1_loss(sr.right, hr.right)

        for r in range(len(out.attention)):
            lr_corr = Correspondence.from_attention(out.attention[r])
            hr_corr = warp_correspondence(out.coords_hr[r])
            valid_lr, valid_hr = out.valid_lr[r], out.valid_hr[r]
            sr_lr, sr_hr = out.sr[2 * r], out.sr[2 * r + 1]      # LR-branch and HR-interaction outputs
            # 2. photometric: residuals of one view explained by the other
            terms['photo'] = (terms['photo'] + view_consistency(residual_lr, lr_corr, valid_lr)
                              + view_consistency(residual_hr, hr_corr, valid_hr))
            # 3. attention smoothness
            terms['smooth'] = terms['smooth'] + attention_smoothness(out.attention[r])
            # 4. cycle: there and back
            terms['cycle'] = (terms['cycle'] + cycle_consistency(residual_lr, lr_corr, valid_lr)
                              + cycle_consistency(residual_hr, hr_corr, valid_hr))
            # 5. stereo consistency of the SR errors (attention detached at LR, disparity not detached at HR)
            error_lr = Pair(*((h - x).abs() for h, x in zip(hr, sr_lr))).map(down)
            error_hr = Pair(*((h - x).abs() for h, x in zip(hr, sr_hr)))
            terms['cons'] = (terms['cons']
                             + view_consistency(error_lr, Correspondence.from_attention(out.attention[r], True),
                                                valid_lr)
                             + view_consistency(error_hr, hr_corr, valid_hr))
            # 6. edge-aware smoothness of the HR disparity (coordinates)
            coords = out.coords_hr[r]
            terms['disp_smooth'] = (terms['disp_smooth'] + edge_aware_smoothness(coords.left, hr.left)
                                    + edge_aware_smoothness(coords.right, hr.right))
            # 7. unsupervised photometric disparity loss of the upsampled PAM and the HR disparities
            valid_up = valid_lr.map(lambda v: F.interpolate(v, scale_factor=s, mode='nearest'))
            for c, v in ((out.coords_lr[r], valid_up), (coords, valid_hr)):
                terms['disp_unsup'] = (terms['disp_unsup'] + unsupervised_disparity(hr.left, hr.right, c.left, v.left)
                                       + unsupervised_disparity(hr.right, hr.left, c.right, v.right))

        if disparity is not None:   # 8. supervised disparity (an option, not the paper's)
            estimates = {f'pam{r + 1}': c for r, c in enumerate(out.coords_lr)}
            estimates.update({f'hr{r + 1}': c for r, c in enumerate(out.coords_hr)})
            terms['disp_sup'] = sum(
                weight * supervised_disparity(coordinates_to_disparities(estimates[name], clamp=False), disparity)
                for name, weight in self.disparity_parts.items() if weight)
        return self.weighted_total(terms)
