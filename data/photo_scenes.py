"""Stereo training scenes textured with photographs: the scenes of data/synthetic.py (fronto-parallel, slanted and
curved surfaces, occlusions, exact disparity in both views), every surface cut from a real photograph.

Photographs: the image files below a folder (`texture_dir`), or by default the photographs that scikit-image and
matplotlib ship inside their installed packages (PHOTOGRAPHS: no download; sources and licences in
docs/data/photographs.md). Never Middlebury's Motorcycle pair, the project's evaluation pair, which scikit-image
also ships, nor a KITTI, Middlebury or Flickr1024 image: such files are refused by name (EXCLUDED_NAMES, in a file's
name, in `texture_dir`'s or in a folder between them) and the Motorcycle files also by content.

Textures, in the left view's coordinates (x, y), so both views of a surface show the same photograph:
* a surface that faces the camera (fronto-parallel) has an integer disparity d (HR pixels) and shows its photograph
  undistorted: left(x, y) = photo(y + top, x + left) and right(x', y) = photo(y + top, x' + d + left), pixel-exact
  crops (mirrored beyond the photograph's border where a photograph is smaller than the frame);
* a slanted or curved surface shows its photograph under a random rotation (within +-ROTATION) and scale (SCALE
  photograph pixels per HR pixel), resampled with cubic splines in both views alike.
So the HR views are photographs wherever a surface faces the camera, and the LR views are their MATLAB-bicubic
downscaling (utils.imresize, in data/synthetic.py's `synthetic_patch`), as for a real pair. The left view keeps the
photographs' values; the right camera has its own gain and offset (data/synthetic.py's values), and none of
data/synthetic.py's scene-wide brightness, contrast or gamma change, which would alter the photographs.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from data.patches import StereoPatches
from data.readers import image_size, read_image_uint8
from data.synthetic import (FAR_DISPARITY, MAX_DISPARITY_LR, MAX_OBJECTS, NEARER_BY, Surface, random_geometry,
                            random_shape, render_view, synthetic_patch)
from models.checkpoint import file_sha256

# Photographs shipped inside installed packages (colour first): name -> (package, file below the package's folder).
# Left out on purpose: scikit-image's drawings and renderings (logo, horse, color, phantom, chessboards), its
# non-photographs or blurred photographs (page, text, cell, clock, microaneurysms), its astronomical, fundus and
# microscope images (hubble_deep_field, retina, ihc: mostly black or far from everyday scenes), the files it
# downloads (eagle, lfw_subset, ...) and the Motorcycle pair (motorcycle_*).
PHOTOGRAPHS = {
    'astronaut': ('skimage', 'data/astronaut.png'),
    'chelsea': ('skimage', 'data/chelsea.png'),
    'coffee': ('skimage', 'data/coffee.png'),
    'rocket': ('skimage', 'data/rocket.jpg'),
    'grace_hopper': ('matplotlib', 'mpl-data/sample_data/grace_hopper.jpg'),
    'camera': ('skimage', 'data/camera.png'),
    'coins': ('skimage', 'data/coins.png'),
    'brick': ('skimage', 'data/brick.png'),
    'grass': ('skimage', 'data/grass.png'),
    'gravel': ('skimage', 'data/gravel.png'),
}
# The evaluation pair and the stereo data sets: never a texture (case-insensitive, in any part of a file's path).
EXCLUDED_NAMES = ('motorcycle', 'kitti', 'middlebury', 'flickr1024')
# scikit-image's Motorcycle files, also refused by content (a renamed copy).
MOTORCYCLE_FILES = ('data/motorcycle_left.png', 'data/motorcycle_right.png', 'data/motorcycle_disp.npz')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm')

FRONTO_PARALLEL = 0.5            # share of surfaces facing the camera (data/synthetic.py: 0.3)
CURVED = 0.2                     # share of curved surfaces; the rest (0.3) are slanted planes
ROTATION = np.pi / 9             # slanted and curved surfaces: photograph rotated by up to 20 degrees either way
SCALE = (0.75, 1.33)             # ... and scaled by this many photograph pixels per HR pixel (log-uniform)
RIGHT_GAIN, RIGHT_CHANNEL_GAIN, RIGHT_BIAS = (0.92, 1.08), (0.98, 1.02), (-6.0, 6.0)   # data/synthetic.photometric
CACHED_PHOTOGRAPHS = 16          # decoded photographs kept per process


def package_file(package: str, name: str) -> Path:
    """A file inside an installed package's folder, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f'package {package} is not installed (needed for its sample photograph {name})')
    return Path(spec.origin).parent / name


def default_photographs() -> list[Path]:
    """The PHOTOGRAPHS files, in their order."""
    paths = [package_file(package, name) for package, name in PHOTOGRAPHS.values()]
    for path in paths:
        check_allowed(path)
        if not path.is_file():
            raise FileNotFoundError(f'sample photograph not found: {path} (reinstall its package, or give '
                                    f'texture_dir / --texture_dir, a folder of photographs)')
    return paths


def folder_photographs(folder: str | Path) -> list[Path]:
    """Every image file below `folder` (IMAGE_SUFFIXES, any depth), sorted; each checked by `check_allowed`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'texture folder not found: {folder}')
    paths = sorted(p for p in folder.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f'no photographs ({", ".join(IMAGE_SUFFIXES)}) below {folder}')
    for path in paths:
        check_allowed(path, folder)
    return paths


@functools.cache
def motorcycle_fingerprints() -> frozenset[tuple[int, str]]:
    """(size in bytes, SHA-256) of scikit-image's Motorcycle files."""
    paths = [package_file('skimage', name) for name in MOTORCYCLE_FILES]
    return frozenset((p.stat().st_size, file_sha256(p)) for p in paths if p.is_file())


def check_allowed(path: Path, folder: Path | None = None) -> None:
    """Raises ValueError for the Motorcycle pair (by name or content) and for KITTI, Middlebury or Flickr1024 files
    (by name: EXCLUDED_NAMES in the file's name, or in `folder`'s name or a folder between it and the file)."""
    names = (folder.name, *path.relative_to(folder).parts) if folder is not None else (path.name,)
    for part in names:
        for name in EXCLUDED_NAMES:
            if name in part.lower():
                raise ValueError(f'{path}: refused as a texture ("{part}" names {name}): the Motorcycle pair is the '
                                 f'evaluation pair, and KITTI, Middlebury and Flickr1024 are stereo data sets, not '
                                 f'textures')
    fingerprints = motorcycle_fingerprints()
    size = path.stat().st_size if path.is_file() else None
    if size in {s for s, _ in fingerprints} and (size, file_sha256(path)) in fingerprints:   # hash same-size files
        raise ValueError(f'{path}: refused as a texture: it is a copy of scikit-image\'s Motorcycle file, the '
                         f'evaluation pair')


@functools.lru_cache(maxsize=CACHED_PHOTOGRAPHS)
def read_photograph(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB (greyscale replicated, alpha dropped: data/readers.py)."""
    return read_image_uint8(path)


def mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected into [0, size) about the first and last pixel (scipy's 'mirror' boundary)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * size - 2
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)


# ---- textures: functions of the left-view position (x, y) -> HxWx3 values in [0, 255]

@dataclass
class CropTexture:
    """A photograph undistorted: texture(x, y) = photo[y + top, x + left] at integer positions (rounded)."""
    path: Path
    top: int
    left: int

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        photo = read_photograph(self.path)
        rows = mirror(np.rint(y).astype(np.int64) + self.top, photo.shape[0])
        columns = mirror(np.rint(x).astype(np.int64) + self.left, photo.shape[1])
        return photo[rows, columns].astype(np.float64)


class ResampledTexture:
    """A photograph under a rotation and scale: texture(x, y) = photo(m (y, x) + offset), cubic B-spline
    interpolation of the window of the photograph that the frame maps to (spline coefficients computed once)."""

    def __init__(self, path: Path, matrix: np.ndarray, offset: np.ndarray, window: tuple[int, int, int, int]):
        self.path, self.matrix, self.offset = path, matrix, offset
        top, bottom, left, right = window
        photo = read_photograph(path)
        rows, columns = mirror(np.arange(top, bottom), photo.shape[0]), mirror(np.arange(left, right), photo.shape[1])
        pixels = photo[rows[:, None], columns[None]].astype(np.float64)
        self.origin = np.array([top, left], dtype=np.float64)
        self.coefficients = [ndimage.spline_filter(pixels[..., c], order=3, mode='mirror') for c in range(3)]

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        m = self.matrix
        coords = np.stack([m[0, 0] * y + m[0, 1] * x, m[1, 0] * y + m[1, 1] * x]) \
            + (self.offset - self.origin).reshape(2, *([1] * x.ndim))
        values = np.stack([ndimage.map_coordinates(c, coords, order=3, mode='mirror', prefilter=False)
                           for c in self.coefficients], axis=-1)
        return np.clip(values, 0, 255)


def covered_box(surface: Surface, height: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the (row, column) bounds of the left-view positions [0, height) x [0, columns) that the surface
    covers, where either view can sample its texture (the whole range if it covers none)."""
    y, x = np.mgrid[0:height, 0:columns]
    covered = surface.covers(x, y)
    rows, cols = np.flatnonzero(covered.any(1)), np.flatnonzero(covered.any(0))
    if not rows.size:
        return np.zeros(2), np.array([height - 1.0, columns - 1.0])
    return np.array([rows[0], cols[0]], dtype=np.float64), np.array([rows[-1], cols[-1]], dtype=np.float64)


@functools.cache
def photograph_size(path: Path) -> tuple[int, int]:
    return image_size(path)


def draw_photograph(rng: np.random.Generator, photographs: Sequence[Path], span: np.ndarray) -> Path:
    """A photograph drawn uniformly among those at least `span` (rows, columns) pixels large, or among all if none
    is (its texture then mirrors beyond the border)."""
    fitting = [p for p in photographs if np.all(np.array(photograph_size(p)) >= span)]
    choices = fitting or photographs
    return choices[int(rng.integers(len(choices)))]


def place(rng: np.random.Generator, low: np.ndarray, span: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """A uniform offset that moves the box [low, low + span] inside [0, size - 1] where it fits (else to 0)."""
    return -low + rng.uniform(0, 1, size=2) * np.maximum(np.array(size[:2]) - 1 - span, 0)


def crop_texture(rng: np.random.Generator, photographs: Sequence[Path], low: np.ndarray,
                 high: np.ndarray) -> CropTexture:
    """A random photograph, undistorted, whose integer offset puts the positions [low, high] inside it."""
    path = draw_photograph(rng, photographs, high - low + 1)
    top, left = np.floor(place(rng, low, high - low, read_photograph(path).shape)).astype(int)
    return CropTexture(path, int(top), int(left))


def resampled_texture(rng: np.random.Generator, photographs: Sequence[Path], low: np.ndarray,
                      high: np.ndarray) -> ResampledTexture:
    """A random photograph rotated by up to ROTATION and scaled by SCALE photograph pixels per HR pixel, positioned so
    that the positions [low, high] map inside it where they fit."""
    angle = rng.uniform(-ROTATION, ROTATION)
    scale = np.exp(rng.uniform(np.log(SCALE[0]), np.log(SCALE[1])))
    matrix = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])   # (y, x) -> photo
    corners = matrix @ np.array([[low[0], low[0], high[0], high[0]], [low[1], high[1], low[1], high[1]]])
    mapped_low, span = corners.min(1), np.ptp(corners, 1)
    path = draw_photograph(rng, photographs, np.ceil(span) + 1)
    offset = place(rng, mapped_low, span, read_photograph(path).shape)
    top, left = np.floor(mapped_low + offset).astype(int) - 4                  # 4-pixel spline margin
    bottom, right = np.ceil(mapped_low + offset + span).astype(int) + 5
    return ResampledTexture(path, matrix, offset, (top, bottom, left, right))


# ---- scenes

def random_photo_scene(rng: np.random.Generator, height: int, width: int, scale: int,
                       photographs: Sequence[Path]) -> list[Surface]:
    """A background and 1-5 objects (data/synthetic.py's disparity ranges, shapes and slopes), each textured with a
    photograph drawn uniformly from those of `photographs` large enough for the part of the frame it covers: cropped
    if it faces the camera (its disparity then rounded to whole HR pixels), rotated and scaled if slanted or curved."""
    lowest, highest = int(np.ceil(FAR_DISPARITY[0] * scale)), int(MAX_DISPARITY_LR * scale)
    surfaces = []
    d = rng.uniform(*FAR_DISPARITY) * scale
    for k in range(1 + int(rng.integers(1, MAX_OBJECTS + 1))):
        if k:
            d = d + rng.uniform(*NEARER_BY) * scale
            if d > MAX_DISPARITY_LR * scale:
                break
        shape = random_shape(rng, width, height) if k else None       # the first surface is the background
        surface = Surface(**random_geometry(rng, d, width, height, scale, FRONTO_PARALLEL, CURVED), shape=shape)
        if is_fronto_parallel(surface):
            surface.a = float(np.clip(np.rint(surface.a), lowest, highest))
            # the left view samples columns [0, width), the right view [d, width + d)
            surface.texture = crop_texture(rng, photographs, *covered_box(surface, height, width + int(surface.a)))
        else:
            y, x = np.mgrid[0:height, 0:width + highest]
            reach = width + int(np.ceil(surface.disparity(x, y).max())) + 2     # the right view's farthest column
            surface.texture = resampled_texture(rng, photographs, *covered_box(surface, height, reach))
        surfaces.append(surface)
    return surfaces


def is_fronto_parallel(surface: Surface) -> bool:
    """Constant disparity: the surface faces the camera."""
    return surface.b == surface.c == surface.q[0] == surface.q[2] == 0


def right_camera(rng: np.random.Generator, right: np.ndarray) -> np.ndarray:
    """The right camera's own gain (overall and per channel) and offset, as data/synthetic.py's `photometric`."""
    gain = rng.uniform(*RIGHT_GAIN) * rng.uniform(*RIGHT_CHANNEL_GAIN, size=3)
    return np.clip(right * gain + rng.uniform(*RIGHT_BIAS), 0, 255)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_photo_pair(rng: np.random.Generator, height: int, width: int, scale: int = 4,
                      photographs: Sequence[Path] | None = None, camera: bool = True):
    """(left, right, disparity_left, disparity_right): HxWx3 uint8 views and HxW float32 disparities (HR pixels,
    positive; left(x) matches right(x - d_left(x))) of a random photo-textured scene drawn for matching at x`scale`.
    `photographs`: image files (default: `default_photographs()`); `camera`: give the right view its own gain and
    offset (False: both views keep the photographs' values)."""
    photographs = default_photographs() if photographs is None else photographs
    surfaces = random_photo_scene(rng, height, width, scale, photographs)
    left, disparity_left, _ = render_view(surfaces, height, width, 'left')
    right, disparity_right, _ = render_view(surfaces, height, width, 'right')
    if camera:
        right = right_camera(rng, right)
    return to_uint8(left), to_uint8(right), disparity_left.astype(np.float32), disparity_right.astype(np.float32)


class PhotoStereo(StereoPatches):
    """`length` photo-textured patches per epoch (iPASSR-sized, LR 30x90, with exact disparity in both views),
    rendered on the fly from (seed, epoch, index): every epoch sees new scenes, every run with the same seed the same
    ones. `texture_dir`: a folder of photographs (any depth); default: the packages' sample photographs."""

    has_disparity = True

    def __init__(self, scale: int, length: int = 4800, augment: bool = True, seed: int = 0,
                 texture_dir: str | Path | None = None):
        super().__init__(scale, augment, seed)
        self.length = length
        self.photographs = folder_photographs(texture_dir) if texture_dir else default_photographs()

    def __len__(self) -> int:
        return self.length

    def load(self, index: int):
        render = functools.partial(render_photo_pair, photographs=self.photographs)
        return synthetic_patch(np.random.default_rng([self.seed, self.epoch, index, 11]), self.scale, render)
