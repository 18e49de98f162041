"""Inference helpers shared by the evaluation scripts and the demo: stereo-aware test-time augmentation."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.outputs import Pair
from models.precision import autocast


def stereo_flips(left: Tensor, right: Tensor, horizontal: bool, vertical: bool) -> Pair:
    """Flip a stereo pair. A horizontal flip mirrors both views *and* swaps them, so the result is again a rectified
    pair (the mirrored right view becomes the left view). The transform is its own inverse."""
    if horizontal:
        left, right = right.flip(-1), left.flip(-1)
    if vertical:
        left, right = left.flip(-2), right.flip(-2)
    return Pair(left, right)


@torch.inference_mode()
def super_resolve(model: nn.Module, left: Tensor, right: Tensor, tta: bool = False, precision: str = 'fp32') -> Pair:
    """Final SR pair (B, 3, sH, sW) in float32, clamped to [0, 1]. `tta`: mean over the 4 stereo-aware flips
    (self-ensemble). `precision`: 'fp32' or 'bf16' (models/precision.py; the caller checks the device has it)."""
    flips = [(h, v) for h in (False, True) for v in (False, True)] if tta else [(False, False)]
    total = None
    for h, v in flips:
        with autocast(left.device, precision):
            out = model(*stereo_flips(left, right, h, v))
        sr = stereo_flips(out.sr_left.float(), out.sr_right.float(), h, v)
        total = sr if total is None else Pair(total.left + sr.left, total.right + sr.right)
    return total.map(lambda x: (x / len(flips)).clamp(0, 1))


def minimum_size(model: nn.Module) -> tuple[int, int, int]:
    """(min height, min width, multiple) of an LR input of `model` (SSRDE-FNet: 30x30, even sizes at x2)."""
    min_h, min_w = getattr(model, 'min_input_size', (1, 1))
    return min_h, min_w, getattr(model, 'input_multiple', 1)


def pad_to_valid(left: Tensor, right: Tensor, model: nn.Module) -> tuple[Pair, tuple[int, int]]:
    """Pad an LR pair (B, 3, H, W) at the bottom/right so the network accepts it (reflection, or edge replication
    where the image is too small to reflect). Returns the padded pair and the original (H, W) to crop back to."""
    min_h, min_w, multiple = minimum_size(model)
    h, w = left.shape[-2:]
    target_h = max(min_h, -(-h // multiple) * multiple)
    target_w = max(min_w, -(-w // multiple) * multiple)
    pad = (0, target_w - w, 0, target_h - h)
    if pad == (0, 0, 0, 0):
        return Pair(left, right), (h, w)
    mode = 'reflect' if target_h - h < h and target_w - w < w else 'replicate'
    return Pair(*(torch.nn.functional.pad(x, pad, mode=mode) for x in (left, right))), (h, w)


def global_inputs(model: nn.Module, left: Tensor, right: Tensor) -> dict[str, Tensor]:
    """Keyword inputs of `model` that depend on the whole LR pair, computed once on it so that every tile of a tiled
    pass gets the whole image's (e.g. ISRResCNet's noise level sigma): the network's `global_inputs(left, right)`
    method, {} for networks without one."""
    method = getattr(model, 'global_inputs', None)
    if method is None:
        return {}
    with torch.inference_mode():
        return method(left, right)


@torch.inference_mode()
def predict(model: nn.Module, left: Tensor, right: Tensor, precision: str = 'fp32',
            **inputs: Tensor) -> dict[str, Tensor]:
    """Final SR images (clamped) and, for networks that estimate it, HR disparities of an LR pair of any size >= 1 px
    (padded as needed): {'sr_left', 'sr_right': (B, 3, sH, sW)[, 'disp_left', 'disp_right': (B, 1, sH, sW)]}.
    `inputs`: extra keyword inputs of the network (`global_inputs`). Outputs are float32 whatever `precision`."""
    scale = model.scale
    (left_p, right_p), (h, w) = pad_to_valid(left, right, model)
    with autocast(left.device, precision):
        out = model(left_p, right_p, **inputs)
    crop = (..., slice(0, h * scale), slice(0, w * scale))
    result = {'sr_left': out.sr_left.float()[crop].clamp(0, 1), 'sr_right': out.sr_right.float()[crop].clamp(0, 1)}
    if out.disp_left is not None:
        result.update(disp_left=out.disp_left.float()[crop], disp_right=out.disp_right.float()[crop])
    return result


def band_weights(length: int, overlap_before: int, overlap_after: int, device=None) -> Tensor:
    """Blending weights (length,) of a band: linear ramps over the rows it shares with its neighbours."""
    weight = torch.ones(length, device=device)
    if overlap_before:
        weight[:overlap_before] = torch.linspace(0, 1, overlap_before + 2, device=device)[1:-1]
    if overlap_after:
        weight[length - overlap_after:] = torch.linspace(1, 0, overlap_after + 2, device=device)[1:-1]
    return weight


def band_starts(height: int, band: int, overlap: int) -> list[int]:
    """First rows of bands of `band` rows covering [0, height), consecutive bands sharing at least `overlap` rows."""
    if band >= height:
        return [0]
    starts = list(range(0, height - band, band - overlap))
    return starts + [height - band]


def predict_tiled(model: nn.Module, left: Tensor, right: Tensor, band: int, overlap: int = 8,
                  precision: str = 'fp32') -> dict[str, Tensor]:
    """`predict` on horizontal bands of `band` LR rows (full image width: the parallax search needs whole rows),
    blended linearly over `overlap` shared rows. Peak memory is that of one band. Channel attention and the pyramid
    pooling see one band at a time, so the result differs slightly from a whole-image pass. What a network computes
    from the whole image (`global_inputs`, e.g. ISRResCNet's noise level) is computed once, on the whole pair."""
    scale = model.scale
    min_h, _, multiple = minimum_size(model)
    band = max(min_h, band - band % multiple)
    overlap = min(max(overlap - overlap % multiple, 0), band - multiple)
    h = left.shape[-2]
    starts = band_starts(h, band, overlap)
    inputs = global_inputs(model, left, right)
    total, weight_sum = None, torch.zeros(h * scale, device=left.device)
    for i, top in enumerate(starts):
        bottom = min(h, top + band)
        part = predict(model, left[..., top:bottom, :], right[..., top:bottom, :], precision, **inputs)
        before = (starts[i - 1] + band - top) if i > 0 else 0
        after = (bottom - starts[i + 1]) if i + 1 < len(starts) else 0
        weight = band_weights((bottom - top) * scale, max(before, 0) * scale, max(after, 0) * scale, left.device)
        if total is None:
            total = {k: torch.zeros(*v.shape[:-2], h * scale, v.shape[-1], device=v.device) for k, v in part.items()}
        rows = slice(top * scale, bottom * scale)
        for key, value in part.items():
            total[key][..., rows, :] += value * weight[:, None]
        weight_sum[rows] += weight
    return {k: v / weight_sum[:, None] for k, v in total.items()}
