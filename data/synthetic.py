"""Synthetic stereo training scenes with exact disparity, rendered from scikit-image's sample photographs (no
download, never Motorcycle, the project's evaluation pair).

A scene is a stack of textured surfaces seen by a rectified camera pair. Each surface has
* a disparity function of the left-view position, d(x, y) = a + b x + c y + q_x (x - x0)^2 + q_y (y - y0)^2:
  fronto-parallel (b = c = q = 0), slanted (a plane) or curved; |dd/dx| < 1 everywhere, so every row of a surface
  is seen in the same order by both views;
* a shape in the left view: the whole frame (the background) or, for each of 1-5 objects, an ellipse, a
  rectangle, a convex polygon or a thin bar;
* a texture: a photograph mapped by a random rotation and scale, a low-contrast photograph, or nearly textureless
  (a flat colour with a faint gradient).
Both views are ray-cast: the left view samples surface k at x, the right view at the left position x_k(x') that
solves x - d_k(x, y) = x' (per row, by monotone interpolation); in each view the nearest surface (largest
disparity) wins. So left(x) = right(x - d(x)) wherever a point is visible in both views; occlusions appear at
every depth edge. Textures are sampled with cubic splines in both views alike, so neither view is sharper.

Disparity ranges are set in LR pixels, where the network matches: the farthest surface at 0.25-12 LR pixels,
each nearer object 1-10 LR pixels in front of the previous one, at most 40 (Motorcycle at x4 spans about
2-15 LR pixels, KITTI at x4 up to about 50). Brightness, contrast and gamma change per scene (both views alike),
then the right view gets its own gain and offset (photometric differences between cameras).

`render_pair` returns the HR views and both views' disparity maps (positive, in HR pixels: left(x) matches
right(x - d_left(x)), right(x) matches left(x + d_right(x))). `render_disparity` returns one view's map of a scene
drawn the same way without textures (no photograph is sampled; about 10 ms for a 128x128 map), the training maps of
disparity-map SR (data/disparity_maps.py). Every scene is drawn from a seeded generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage
from skimage import data as skdata

from data.patches import PATCH_HEIGHT, PATCH_WIDTH, StereoPatches
from models.imresize import imresize

# Photographs (colour first) of scikit-image that ship with the package; greyscale ones are tinted to RGB.
SOURCES = ('astronaut', 'chelsea', 'coffee', 'hubble_deep_field', 'immunohistochemistry', 'retina', 'rocket',
           'logo', 'brick', 'camera', 'cell', 'clock', 'coins', 'grass', 'gravel', 'moon', 'page', 'text')
FAR_DISPARITY = (0.25, 12.0)     # LR pixels: disparity of the farthest surface, at its reference point
NEARER_BY = (1.0, 10.0)          # LR pixels: each object is this much nearer than the previous one
MAX_DISPARITY_LR = 40.0          # LR pixels: no surface comes nearer
MAX_SLOPE = 0.25                 # |dd/dx| and |dd/dy| of every surface stay below this (HR pixels per HR pixel)
MAX_OBJECTS = 5
MARGIN = 4                       # LR pixels rendered around a patch, so its LR borders see real context
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


def spline_coefficients(name: str) -> np.ndarray:
    """Cubic B-spline coefficients of a photograph (3xHxW float64), computed once per photograph."""
    key = name + '/spline'
    if key not in _cache:
        img = source_image(name).astype(np.float64)
        _cache[key] = np.stack([ndimage.spline_filter(img[:, :, c], order=3, mode='mirror') for c in range(3)])
    return _cache[key]


# ---- textures: functions of the left-view position (x, y) -> HxWx3 values in [0, 255]

Texture = Callable[[np.ndarray, np.ndarray], np.ndarray]


def photo_texture(rng: np.random.Generator, contrast: float = 1.0) -> Texture:
    """A photograph under a random rotation, scale (0.6-1.3 photo pixels per HR pixel) and offset, tinted if grey."""
    name = SOURCES[rng.integers(len(SOURCES))]
    coeffs = spline_coefficients(name)
    h, w = coeffs.shape[1:]
    angle, scale = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.3)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    offset = np.array([rng.uniform(0, h), rng.uniform(0, w)])
    tint = rng.uniform(0.7, 1.0, size=3) if np.ptp(source_image(name).reshape(-1, 3).mean(0)) < 1 else np.ones(3)
    mean = source_image(name).reshape(-1, 3).mean(0)

    def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        coords = np.stack([rot[0, 0] * y + rot[0, 1] * x + offset[0], rot[1, 0] * y + rot[1, 1] * x + offset[1]])
        values = np.stack([ndimage.map_coordinates(coeffs[c], coords, order=3, mode='mirror', prefilter=False)
                           for c in range(3)], axis=-1)
        return np.clip((mean + contrast * (values - mean)) * tint, 0, 255)
    return texture


def flat_texture(rng: np.random.Generator) -> Texture:
    """Nearly textureless: a flat colour with a faint linear gradient (at most 12 grey levels across 400 pixels)."""
    colour = rng.uniform(20, 235, size=3)
    gradient = rng.uniform(-0.03, 0.03, size=2)

    def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.clip(colour + (gradient[0] * x + gradient[1] * y)[..., None], 0, 255)
    return texture


def random_texture(rng: np.random.Generator, flat: bool = True) -> Texture:
    """A photograph (75 %), a low-contrast photograph (13 %) or, if `flat`, a nearly textureless surface (12 %)."""
    kind = rng.random()
    if kind < 0.12 and flat:
        return flat_texture(rng)
    return photo_texture(rng, contrast=rng.uniform(0.15, 0.5) if kind < 0.25 else 1.0)


# ---- surfaces

@dataclass
class Surface:
    """One textured surface: disparity d(x, y) (HR pixels, left-view position), shape mask, texture."""
    a: float
    b: float = 0.0
    c: float = 0.0
    q: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)   # q_x, x0, q_y, y0
    shape: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None   # None: the whole frame
    texture: Texture | None = None

    def disparity(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        qx, x0, qy, y0 = self.q
        return self.a + self.b * x + self.c * y + qx * (x - x0) ** 2 + qy * (y - y0) ** 2

    def covers(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.ones(np.broadcast_shapes(x.shape, y.shape), dtype=bool) if self.shape is None else self.shape(x, y)


def random_geometry(rng: np.random.Generator, d_ref: float, width: int, height: int, scale: int,
                    fronto_parallel: float = 0.3, curved: float = 0.3) -> dict:
    """Disparity coefficients of a surface whose disparity at the frame centre is d_ref (HR pixels): fronto-parallel
    (probability `fronto_parallel`), slanted or curved (probability `curved`), slopes below MAX_SLOPE, and within
    [0.25, MAX_DISPARITY_LR] LR pixels over the whole frame (the slant shrunk, then the surface moved, where it would
    leave that range)."""
    kind = rng.random()
    b = c = qx = qy = 0.0
    x0, y0 = width / 2, height / 2
    if kind >= fronto_parallel:                  # slanted: a plane
        b, c = rng.uniform(-1, 1, size=2) * MAX_SLOPE * 0.6
    if kind >= 1 - curved:                       # curved: a quadric bump or bowl, centred somewhere in the frame
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        # the slope of q (x - x0)^2 over the frame is at most 2 |q| W: keep it below 0.4 MAX_SLOPE
        qx = rng.uniform(-1, 1) * 0.4 * MAX_SLOPE / (2 * width)
        qy = rng.uniform(-1, 1) * 0.4 * MAX_SLOPE / (2 * height)
    lo, hi = FAR_DISPARITY[0] * scale, MAX_DISPARITY_LR * scale
    y, x = np.mgrid[0:height:8j, 0:width:16j]
    relief = b * (x - width / 2) + c * (y - height / 2) + qx * (x - x0) ** 2 + qy * (y - y0) ** 2
    relief -= qx * (width / 2 - x0) ** 2 + qy * (height / 2 - y0) ** 2        # zero at the centre
    if np.ptp(relief) > 0.8 * (hi - lo):
        shrink = 0.8 * (hi - lo) / np.ptp(relief)
        b, c, qx, qy, relief = b * shrink, c * shrink, qx * shrink, qy * shrink, relief * shrink
    d_ref = float(np.clip(d_ref, lo - relief.min(), hi - relief.max()))
    a = d_ref - b * width / 2 - c * height / 2 - qx * (width / 2 - x0) ** 2 - qy * (height / 2 - y0) ** 2
    return {'a': a, 'b': b, 'c': c, 'q': (qx, x0, qy, y0)}


def random_shape(rng: np.random.Generator, width: int, height: int):
    """A shape of the left view: ellipse, rectangle, convex polygon or thin bar, somewhere over the frame."""
    cx, cy = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
    kind = rng.integers(4)
    if kind == 3:                                 # thin bar (a pole, a spoke): 6-40 HR pixels wide, any angle
        half_width = rng.uniform(3, 20)
        angle = rng.uniform(0, np.pi)
        n = np.array([np.cos(angle), np.sin(angle)])
        length = rng.uniform(0.3, 1.0) * max(width, height)
        return lambda x, y: ((np.abs((x - cx) * n[0] + (y - cy) * n[1]) <= half_width)
                             & (np.abs(-(x - cx) * n[1] + (y - cy) * n[0]) <= length / 2))
    rx, ry = rng.uniform(0.08, 0.45) * width, rng.uniform(0.15, 0.7) * height
    if kind == 0:
        return lambda x, y: ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    if kind == 1:
        return lambda x, y: (np.abs(x - cx) <= rx) & (np.abs(y - cy) <= ry)
    corners = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 8))))   # convex polygon on an ellipse
    px, py = cx + rx * np.cos(corners), cy + ry * np.sin(corners)

    def polygon(x, y):
        inside = np.ones(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
        for i in range(len(px)):
            j = (i + 1) % len(px)
            inside &= (px[j] - px[i]) * (y - py[i]) - (py[j] - py[i]) * (x - px[i]) >= 0
        return inside
    return polygon if len(px) >= 3 else (lambda x, y: ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1)


def random_scene(rng: np.random.Generator, height: int, width: int, scale: int,
                 textured: bool = True) -> list[Surface]:
    """A background (never textureless) and 1-5 objects, each nearer than the previous one at its reference point.
    `textured=False`: geometry only (texture None, no photograph drawn or loaded), for disparity maps alone."""
    texture = random_texture if textured else (lambda rng, flat=True: None)
    d = rng.uniform(*FAR_DISPARITY) * scale
    surfaces = [Surface(**random_geometry(rng, d, width, height, scale), texture=texture(rng, flat=False))]
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        d = d + rng.uniform(*NEARER_BY) * scale
        if d > MAX_DISPARITY_LR * scale:
            break
        shape = random_shape(rng, width, height)
        geometry = random_geometry(rng, d, width, height, scale)
        surfaces.append(Surface(**geometry, shape=shape, texture=texture(rng)))
    return surfaces


def left_positions(surface: Surface, x_right: np.ndarray, y: np.ndarray) -> np.ndarray:
    """For right-view pixels (x', y): the left-view position x of the surface's point seen there, solving
    x - d(x, y) = x' row by row (x - d is increasing since |dd/dx| < 1)."""
    out = np.empty(np.broadcast_shapes(x_right.shape, y.shape))
    width = x_right.shape[-1]
    span = np.arange(-1.0, 2 * width + MAX_DISPARITY_LR * 16, 0.5)   # left positions that can reach the frame
    for row in range(out.shape[0]):
        forward = span - surface.disparity(span, np.full_like(span, y[row, 0]))
        out[row] = np.interp(x_right[row], forward, span)
    return out


def render_view(surfaces: list[Surface], height: int, width: int, view: str):
    """(image HxWx3 float in [0, 255], disparity HxW, index of the visible surface HxW) of one view, ray-cast."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    disparity = np.full((height, width), -np.inf)
    visible = np.full((height, width), -1)
    for k, surface in enumerate(surfaces):
        x_left = x if view == 'left' else left_positions(surface, x, y)
        d = surface.disparity(x_left, y)
        wins = surface.covers(x_left, y) & (d > disparity)
        if not wins.any():
            continue
        if surface.texture is not None:
            image[wins] = surface.texture(x_left[wins], y[wins])
        disparity[wins], visible[wins] = d[wins], k
    return image, disparity, visible


def photometric(rng: np.random.Generator, left: np.ndarray, right: np.ndarray):
    """Scene-wide brightness, contrast and gamma (both views), then the right camera's own gain and offset."""
    gain, bias, gamma = rng.uniform(0.7, 1.2), rng.uniform(-20, 20), rng.uniform(0.8, 1.25)
    right_gain, right_bias = rng.uniform(0.92, 1.08) * rng.uniform(0.98, 1.02, size=3), rng.uniform(-6, 6)
    out = []
    for view, (g, b) in ((left, (1.0, 0.0)), (right, (right_gain, right_bias))):
        v = np.clip(view * gain + bias, 0, 255) / 255
        out.append(np.clip(255 * (v ** gamma) * g + b + 0.5, 0, 255).astype(np.uint8))
    return out


def render_pair(rng: np.random.Generator, height: int, width: int, scale: int = 4):
    """(left, right, disparity_left, disparity_right): HxWx3 uint8 views and HxW float32 disparities (HR pixels)
    of a random scene whose disparities are drawn for matching at x`scale` (see the module docstring)."""
    surfaces = random_scene(rng, height, width, scale)
    left, disparity_left, _ = render_view(surfaces, height, width, 'left')
    right, disparity_right, _ = render_view(surfaces, height, width, 'right')
    left, right = photometric(rng, left, right)
    return left, right, disparity_left.astype(np.float32), disparity_right.astype(np.float32)


def render_disparity(rng: np.random.Generator, height: int, width: int, scale: int = 4,
                     view: str = 'left') -> np.ndarray:
    """HxW float32 disparity (HR pixels, positive, dense) of one view of a random scene, geometry only: the same
    surfaces, shapes and ray casting as `render_pair`, no texture, no image (for disparity-map SR, DSDMSR)."""
    surfaces = random_scene(rng, height, width, scale, textured=False)
    return render_view(surfaces, height, width, view)[1].astype(np.float32)


def synthetic_patch(rng: np.random.Generator, scale: int, render: Callable = render_pair):
    """(hr_left, hr_right, lr_left, lr_right, disparity_left, disparity_right): an iPASSR-sized patch (LR 30x90)
    cut from a pair rendered with a margin by `render(rng, height, width, scale)` (the scenes of `render_pair` or
    another generator's, e.g. data/photo_scenes.py), the LR made by MATLAB bicubic of the whole rendered HR image."""
    height, width = (PATCH_HEIGHT + 2 * MARGIN) * scale, (PATCH_WIDTH + 2 * MARGIN) * scale
    left, right, disparity_left, disparity_right = render(rng, height, width, scale)
    lr = np.s_[MARGIN:MARGIN + PATCH_HEIGHT, MARGIN:MARGIN + PATCH_WIDTH]
    hr = np.s_[MARGIN * scale:(MARGIN + PATCH_HEIGHT) * scale, MARGIN * scale:(MARGIN + PATCH_WIDTH) * scale]
    return (left[hr], right[hr], imresize(left, 1 / scale)[lr], imresize(right, 1 / scale)[lr],
            disparity_left[hr], disparity_right[hr])


class SyntheticStereo(StereoPatches):
    """`length` synthetic patches per epoch with exact disparity, rendered on the fly from (seed, epoch, index):
    every epoch sees new scenes, every run with the same seed the same ones."""

    has_disparity = True

    def __init__(self, scale: int, length: int = 4800, augment: bool = True, seed: int = 0):
        super().__init__(scale, augment, seed)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def load(self, index: int):
        return synthetic_patch(np.random.default_rng([self.seed, self.epoch, index, 7]), self.scale)
