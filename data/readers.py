"""Readers and writers for stereo images and disparity maps. Every error names the file.

Images become RGB arrays whatever is on disk, in a documented way:
* 8-bit: kept (uint8) or divided by 255 (float);
* 16-bit: rounded to 8 bit as value/257 (uint8) or divided by 65535 (float);
* RGBA / grey+alpha: the alpha channel is dropped (not composited);
* greyscale: replicated to three channels;
* palette PNGs: expanded to RGB by the decoder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np

PathLike = str | os.PathLike


def _read_raw(path: PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'image not found: {path}')
    try:
        return np.asarray(iio.imread(path))
    except Exception as err:  # imageio raises many types for a corrupt or unsupported file
        raise ValueError(f'{path}: cannot decode image ({type(err).__name__}: {err})') from None


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file, read from its header without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'image not found: {path}')
    try:
        shape = iio.improps(path).shape
    except Exception as err:
        raise ValueError(f'{path}: cannot read image header ({type(err).__name__}: {err})') from None
    return int(shape[0]), int(shape[1])


def to_rgb(img: np.ndarray, path: PathLike = '<array>') -> np.ndarray:
    """HxW, HxWx1, HxWx2 (grey+alpha), HxWx3 or HxWx4 (RGBA) -> HxWx3, same dtype (alpha dropped, grey replicated)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f'{path}: expected a greyscale, RGB or RGBA image, got an array of shape {img.shape}')
    if img.shape[2] in (2, 4):
        img = img[:, :, :-1]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def to_uint8(img: np.ndarray, path: PathLike = '<array>') -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return np.floor(img.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    raise ValueError(f'{path}: unsupported image dtype {img.dtype} (expected 8- or 16-bit)')


def read_image_uint8(path: PathLike) -> np.ndarray:
    """HxWx3 uint8 RGB image (see the module docstring for RGBA, grey and 16-bit files)."""
    return to_rgb(to_uint8(_read_raw(path), path), path)


def read_image(path: PathLike) -> np.ndarray:
    """HxWx3 float32 RGB image in [0, 1]: 8-bit / 255, 16-bit / 65535."""
    raw = _read_raw(path)
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 255
    elif raw.dtype == np.uint16:
        img = raw.astype(np.float32) / 65535
    elif raw.dtype == bool:
        img = raw.astype(np.float32)
    else:
        raise ValueError(f'{path}: unsupported image dtype {raw.dtype} (expected 8- or 16-bit)')
    return to_rgb(img, path)


def write_image(path: PathLike, img: np.ndarray) -> None:
    """Write an HxWx3 image to PNG. Floats in [0, 1] are clipped and *rounded* to 8 bit (not truncated)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if np.issubdtype(img.dtype, np.floating):
        img = np.floor(np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    iio.imwrite(path, img)


def read_kitti_disparity(path: PathLike) -> np.ndarray:
    """KITTI disparity PNG (16-bit, disparity = value / 256, 0 = no ground truth) -> HxW float32, 0 where invalid."""
    raw = _read_raw(path)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(f'{path}: a KITTI disparity map is a single-channel 16-bit PNG, got dtype {raw.dtype} '
                         f'and shape {raw.shape}')
    return raw.astype(np.float32) / 256


def write_kitti_disparity(path: PathLike, disparity: np.ndarray) -> None:
    """Inverse of `read_kitti_disparity`: value = round(d * 256), 0 (and non-finite) = invalid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = np.where(np.isfinite(disparity) & (disparity > 0), disparity, 0)
    iio.imwrite(path, np.clip(np.floor(d * 256 + 0.5), 0, 65535).astype(np.uint16))


def read_pfm(path: PathLike) -> np.ndarray:
    """PFM (Middlebury, SceneFlow) -> float32 HxW ('Pf') or HxWx3 ('PF'), top row first.

    The scale line's sign gives the byte order (negative = little-endian); rows are stored bottom to top.
    Values are returned as stored (Middlebury marks unknown disparities with inf).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'disparity file not found: {path}')
    with open(path, 'rb') as f:
        header = f.readline().strip()
        if header not in (b'PF', b'Pf'):
            raise ValueError(f'{path}: not a PFM file (header {header[:10]!r})')
        dims = f.readline()
        while dims.startswith(b'#'):
            dims = f.readline()
        match = re.match(rb'^\s*(\d+)\s+(\d+)\s*$', dims)
        if not match:
            raise ValueError(f'{path}: malformed PFM size line {dims[:40]!r}')
        width, height = int(match.group(1)), int(match.group(2))
        try:
            scale = float(f.readline().strip())
        except ValueError:
            raise ValueError(f'{path}: malformed PFM scale line') from None
        channels = 3 if header == b'PF' else 1
        data = np.frombuffer(f.read(), dtype='<f4' if scale < 0 else '>f4')
    if data.size != width * height * channels:
        raise ValueError(f'{path}: PFM holds {data.size} values, header says {width}x{height}x{channels}'
                         f' (truncated file?)')
    shape = (height, width, 3) if channels == 3 else (height, width)
    return np.flipud(data.reshape(shape)).astype(np.float32)


def write_pfm(path: PathLike, data: np.ndarray, little_endian: bool = True) -> None:
    """Write a float HxW or HxWx3 array as PFM (rows bottom to top)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data, dtype=np.float32)
    header = b'PF' if data.ndim == 3 else b'Pf'
    dtype = '<f4' if little_endian else '>f4'
    with open(path, 'wb') as f:
        f.write(header + b'\n' + f'{data.shape[1]} {data.shape[0]}\n'.encode()
                + (b'-1.0\n' if little_endian else b'1.0\n'))
        f.write(np.flipud(data).astype(dtype).tobytes())


def read_disparity(path: PathLike) -> np.ndarray:
    """Ground-truth disparity by file type: KITTI 16-bit PNG or PFM -> HxW float32.

    Invalid pixels are 0 (KITTI) or non-finite (Middlebury PFM); use `valid_disparity_mask`.
    """
    suffix = Path(path).suffix.lower()
    if suffix == '.png':
        return read_kitti_disparity(path)
    if suffix == '.pfm':
        disparity = read_pfm(path)
        if disparity.ndim != 2:
            raise ValueError(f'{path}: a disparity PFM has one channel, this one has three')
        return disparity
    if suffix == '.npy':
        return np.load(path).astype(np.float32)
    raise ValueError(f'{path}: unknown disparity format {suffix!r} (expected .png, .pfm or .npy)')
