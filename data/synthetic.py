"""Synthetic stereo training pairs with known disparity, made from scikit-image's sample photographs (no download).

A pair is a layered scene: a textured background plane and up to three textured foreground objects (ellipses and
rectangles cut from other photographs), each fronto-parallel with an integer disparity in HR pixels, nearer objects
having larger disparities. The left view shows every layer at its place, the right view shows it shifted left by its
disparity, so left(x) = right(x - d(x)) wherever the point is visible in both views. Integer shifts keep both views
exactly as sharp as the photographs (no interpolation blur); at LR the disparities are fractional. Brightness,
contrast and gamma change per pair (the same in both views). Motorcycle, the project's evaluation pair, is never used.
"""
from __future__ import annotations

import numpy as np
from skimage import data as skdata

from data.patches import PATCH_HEIGHT, PATCH_WIDTH, StereoPatches
from utils import imresize

# Photographs (colour first) of scikit-image that ship with the package; greyscale ones are tinted to RGB.
SOURCES = ('astronaut', 'chelsea', 'coffee', 'hubble_deep_field', 'immunohistochemistry', 'retina', 'rocket',
           'logo', 'brick', 'camera', 'cell', 'clock', 'coins', 'grass', 'gravel', 'moon', 'page', 'text')
MAX_BACKGROUND_DISPARITY = 48   # HR pixels
MAX_EXTRA_DISPARITY = 40        # foreground objects are this much nearer at most
MARGIN = 4                      # LR pixels rendered around a patch, so its LR borders see real context
_cache: dict[str, np.ndarray] = {}


def source_image(name: str) -> np.ndarray:
    """HxWx3 uint8 RGB version of a scikit-image sample (alpha dropped, greyscale replicated)."""
    if name not in _cache:
        img = np.asarray(getattr(skdata, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        _cache[name] = np.ascontiguousarray(img[:, :, :3])
    return _cache[name]


def random_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop (rotated by a multiple of 90 degrees, tinted if greyscale) of size height x width, float64."""
    for _ in range(100):
        img = np.rot90(source_image(SOURCES[rng.integers(len(SOURCES))]), k=int(rng.integers(4)))
        if img.shape[0] >= height and img.shape[1] >= width:
            break
    else:  # no photograph large enough: tile one
        img = np.tile(img, (height // img.shape[0] + 1, width // img.shape[1] + 1, 1))
    top = rng.integers(img.shape[0] - height + 1)
    left = rng.integers(img.shape[1] - width + 1)
    crop = img[top:top + height, left:left + width].astype(np.float64)
    if np.ptp(crop.reshape(-1, 3).mean(0)) < 1:  # greyscale: a random tint
        crop = crop * rng.uniform(0.7, 1.0, size=3)
    return crop


def render_pair(rng: np.random.Generator, height: int, width: int):
    """(left, right, disparity): HxWx3 uint8 views and the left view's HxW integer disparity (HR pixels)."""
    d_background = int(rng.integers(1, MAX_BACKGROUND_DISPARITY + 1))
    background = random_texture(rng, height, width + d_background)
    left = background[:, :width].copy()
    right = background[:, d_background:].copy()       # left(x) = background(x) = right(x - d)
    disparity = np.full((height, width), d_background, dtype=np.int64)
    objects = int(rng.integers(0, 4))
    for d_object in sorted(d_background + rng.integers(4, MAX_EXTRA_DISPARITY + 1, size=objects)):
        h = int(rng.integers(height // 4, height + 1))
        w = int(rng.integers(width // 8, width // 2 + 1))
        texture = random_texture(rng, h, w)
        yy, xx = np.mgrid[0:h, 0:w]
        if rng.random() < 0.5:
            mask = ((yy - h / 2 + 0.5) / (h / 2)) ** 2 + ((xx - w / 2 + 0.5) / (w / 2)) ** 2 <= 1
        else:
            mask = np.ones((h, w), dtype=bool)
        top = int(rng.integers(-h // 2, height - h // 2))
        x_left = int(rng.integers(-w // 2, width - w // 2 + d_object))
        for view, x0 in ((left, x_left), (right, x_left - d_object)):
            paste(view, texture, mask, top, x0)
        paste(disparity, np.full((h, w), d_object), mask, top, x_left)
    gain, bias, gamma = rng.uniform(0.7, 1.2), rng.uniform(-20, 20), rng.uniform(0.8, 1.25)
    views = [np.clip(255 * (np.clip(v * gain + bias, 0, 255) / 255) ** gamma + 0.5, 0, 255).astype(np.uint8)
             for v in (left, right)]
    return views[0], views[1], disparity


def paste(canvas: np.ndarray, patch: np.ndarray, mask: np.ndarray, top: int, left: int) -> None:
    """canvas[top:, left:][mask] = patch[mask], clipped to the canvas."""
    h, w = mask.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, canvas.shape[0]), min(left + w, canvas.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    region = np.s_[y0 - top:y1 - top, x0 - left:x1 - left]
    target = canvas[y0:y1, x0:x1]
    target[mask[region]] = patch[region][mask[region]]


def synthetic_patch(rng: np.random.Generator, scale: int):
    """(hr_left, hr_right, lr_left, lr_right): an iPASSR-sized patch (LR 30x90) cut from a rendered pair with a
    margin, the LR made by MATLAB bicubic of the whole rendered HR image."""
    height, width = (PATCH_HEIGHT + 2 * MARGIN) * scale, (PATCH_WIDTH + 2 * MARGIN) * scale
    left, right, _ = render_pair(rng, height, width)
    lr = np.s_[MARGIN:MARGIN + PATCH_HEIGHT, MARGIN:MARGIN + PATCH_WIDTH]
    hr = np.s_[MARGIN * scale:(MARGIN + PATCH_HEIGHT) * scale, MARGIN * scale:(MARGIN + PATCH_WIDTH) * scale]
    return left[hr], right[hr], imresize(left, 1 / scale)[lr], imresize(right, 1 / scale)[lr]


class SyntheticStereo(StereoPatches):
    """`length` synthetic patches per epoch, rendered on the fly from (seed, epoch, index): every epoch sees new
    scenes, every run with the same seed the same ones."""

    def __init__(self, scale: int, length: int = 4800, augment: bool = True, seed: int = 0):
        super().__init__(scale, augment, seed)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def load(self, index: int):
        return synthetic_patch(np.random.default_rng([self.seed, self.epoch, index, 7]), self.scale)
