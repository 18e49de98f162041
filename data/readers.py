"""Readers and writers for stereo images and disparity maps. Every error names the file.

Images become RGB arrays whatever is on disk, in a documented way:
* 8-bit: kept (uint8) or divided by 255 (float);
* 16-bit (grey, grey+alpha, RGB, RGBA PNG): rounded to 8 bit as value/257 (uint8) or divided by 65535 (float);
* CMYK JPEG: converted to RGB by Pillow (not read as RGB + alpha);
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
import PIL.Image

PathLike = str | os.PathLike


PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Pillow modes that no conversion here would read correctly: refused by name.
# Mode 'I' (how some Pillows open 16-bit grey PNGs) is read, not refused.
REFUSED_MODES = {'LAB': 'CIE L*a*b* colour', 'HSV': 'HSV colour', 'F': '32-bit float'}


def _read_raw(path: PathLike) -> np.ndarray:
    """The pixels as stored: uint8/uint16/bool arrays. CMYK JPEGs are converted to RGB by the decoder (an RGB reader
    would otherwise drop K as if it were alpha); 16-bit colour PNGs, which Pillow cuts to 8 bits, are decoded here."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} is a folder, not an image file' if path.is_dir() else
                                f'image not found: {path}')
    try:
        with open(path, 'rb') as f:
            head = f.read(33)
        if head[:8] == PNG_SIGNATURE and head[12:16] == b'IHDR' and head[24] == 16 and head[25] in (2, 4, 6):
            return read_png16(path)
        with PIL.Image.open(path) as image:
            if image.mode == 'CMYK':
                return np.asarray(image.convert('RGB'))
            if image.mode in REFUSED_MODES:
                raise ValueError(f'{REFUSED_MODES[image.mode]} image: not supported; save it as an 8- or 16-bit RGB '
                                 f'or greyscale PNG')
        return np.asarray(iio.imread(path))
    except Exception as err:  # imageio and Pillow raise many types for a corrupt or unsupported file
        raise ValueError(f'{path}: cannot decode image ({type(err).__name__}: {err})') from None


def _unfilter_sequential(kind: int, raw: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
    """PNG Average (3) and Paeth (4) reconstruction of one scanline (int32 arrays), pixel by pixel."""
    out = np.zeros_like(raw)
    left = np.zeros(bpp, dtype=np.int32)
    up_left = np.zeros(bpp, dtype=np.int32)
    for i in range(0, len(raw), bpp):
        up = prior[i:i + bpp]
        if kind == 3:
            value = raw[i:i + bpp] + (left + up) // 2
        else:
            p = left + up - up_left
            pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
            value = raw[i:i + bpp] + np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        out[i:i + bpp] = left = value & 255
        up_left = up
    return out


def read_png16(path: PathLike) -> np.ndarray:
    """A 16-bit RGB, RGBA or grey+alpha PNG (non-interlaced) -> HxWxC uint16, decoded with zlib and the five
    PNG scanline filters (Pillow reads such files as 8-bit)."""
    import struct
    import zlib
    data = Path(path).read_bytes()
    pos, chunks = 8, []
    width = height = colour = interlace = None
    while pos + 8 <= len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b'IHDR':
            width, height, _, colour, _, _, interlace = struct.unpack('>IIBBBBB', body)
        elif kind == b'IDAT':
            chunks.append(body)
        elif kind == b'IEND':
            break
        pos += 12 + length
    if interlace:
        raise ValueError('interlaced 16-bit colour PNG: not supported; save it without interlacing')
    channels = {2: 3, 4: 2, 6: 4}[colour]
    bpp, stride = 2 * channels, 2 * channels * width
    raw = np.frombuffer(zlib.decompress(b''.join(chunks)), dtype=np.uint8)
    if raw.size != height * (stride + 1):
        raise ValueError(f'truncated PNG data ({raw.size} bytes, expected {height * (stride + 1)})')
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    prior = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = int(rows[y, 0]), rows[y, 1:].astype(np.int32)
        if kind == 0:
            row = line
        elif kind == 1:       # Sub: running sum along the row, per byte of the pixel
            row = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) & 255
        elif kind == 2:       # Up
            row = (line + prior) & 255
        elif kind in (3, 4):  # Average, Paeth: each pixel depends on the reconstructed one before it
            row = _unfilter_sequential(kind, line, prior, bpp)
        else:
            raise ValueError(f'bad PNG filter type {kind} in row {y}')
        out[y] = prior = row
    return (out.astype(np.uint16).reshape(height, width, channels, 2) * np.array([256, 1], np.uint16)).sum(
        -1, dtype=np.uint16)


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file, read from its header without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} is a folder, not an image file' if path.is_dir() else
                                f'image not found: {path}')
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
        raise FileNotFoundError(f'{path} is a folder, not a disparity file' if path.is_dir() else
                                f'disparity file not found: {path}')
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
        raw = f.read()
    data = np.frombuffer(raw[:len(raw) - len(raw) % 4], dtype='<f4' if scale < 0 else '>f4')
    if data.size != width * height * channels or len(raw) % 4:
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
        try:      # allow_pickle stays off: an object array would run code from the file
            disparity = np.load(path)
        except (ValueError, OSError, EOFError):    # numpy's own text advises loading it unsafely
            raise ValueError(f'{path}: cannot read this .npy disparity map: not a NumPy array file, or one of '
                             f'pickled Python objects (not loaded: unpickling can run code)') from None
        if disparity.dtype.kind not in 'fiu' or disparity.ndim != 2:
            raise ValueError(f'{path}: a disparity map is a 2-D array of numbers, this .npy holds a '
                             f'{disparity.ndim}-D array of {disparity.dtype}')
        return disparity.astype(np.float32)
    raise ValueError(f'{path}: unknown disparity format {suffix!r} (expected .png, .pfm or .npy)')
