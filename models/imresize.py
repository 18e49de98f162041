"""MATLAB-compatible bicubic resizing: the stereo-SR test and training sets are made with MATLAB's imresize, and
ISRResCNet's observation model is built from the same kernel (models/isrrescnet.py `resize_matrix`). NumPy only; it
lives in models/, the ground floor, so that the networks, data/ and the scripts can all import it."""
from __future__ import annotations

import numpy as np

def _matlab_cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's bicubic kernel: Keys' cubic convolution with a = -0.5."""
    ax = np.abs(x)
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def resize_contributions(in_length: int, out_length: int, scale: float,
                         antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_length, P) and 0-based source indices (out_length, P) of MATLAB's imresize along one axis.

    Output pixel j (1-based) is centred at u = j/scale + (1 - 1/scale)/2 in input coordinates. When shrinking with
    antialiasing the kernel is stretched by 1/scale. Weights are normalised to sum 1; indices outside the image are
    mirrored (symmetric padding); taps whose weight is zero for every output pixel are dropped, as MATLAB does.
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        kernel = lambda x: scale * _matlab_cubic(scale * x)  # noqa: E731
        kernel_width /= scale
    else:
        kernel = _matlab_cubic
    u = np.arange(1, out_length + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(np.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)                      # 1-based, may fall outside [1, in_length]
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _resize_axis(img: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Apply precomputed contributions along `axis`, accumulating the taps in order in float64."""
    src = np.moveaxis(img, axis, 0).astype(np.float64)
    shape = (weights.shape[0],) + (1,) * (src.ndim - 1)
    out = np.zeros((weights.shape[0],) + src.shape[1:], dtype=np.float64)
    for k in range(weights.shape[1]):
        out += weights[:, k].reshape(shape) * src[indices[:, k]]
    if img.dtype == np.uint8:  # MATLAB rounds (half away from zero) and saturates after every axis
        out = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float | None = None, output_shape: tuple[int, int] | None = None,
             antialiasing: bool = True) -> np.ndarray:
    """MATLAB `imresize(img, scale, 'bicubic')` for HxW or HxWxC NumPy images.

    uint8 in -> uint8 out, rounded after each axis as MATLAB does; float in -> float out (computed in float64,
    returned in the input dtype, not clipped). Output size is ceil(scale * size) unless `output_shape` is given.
    The axis with the smaller scale is resized first (rows first on ties), as in MATLAB.
    """
    if img.ndim not in (2, 3):
        raise ValueError(f'imresize expects an HxW or HxWxC image, got shape {img.shape}')
    if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f'imresize supports uint8 and floating-point images, got {img.dtype}')
    if (scale is None) == (output_shape is None):
        raise ValueError('give exactly one of scale and output_shape')
    if output_shape is None:
        scales = (float(scale), float(scale))
        output_shape = tuple(int(np.ceil(s * n)) for s, n in zip(scales, img.shape[:2]))
    else:
        scales = tuple(o / n for o, n in zip(output_shape, img.shape[:2]))
    out = img
    for axis in ((0, 1) if scales[0] <= scales[1] else (1, 0)):
        weights, indices = resize_contributions(img.shape[axis], output_shape[axis], scales[axis], antialiasing)
        out = _resize_axis(out, axis, weights, indices)
    return out if out.dtype == img.dtype else out.astype(img.dtype)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom rows and right columns so that height and width are multiples of `scale` (MATLAB modcrop)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]
