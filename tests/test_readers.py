"""Readers that don't lie: PFM row order and byte order, KITTI 16-bit disparity, odd image kinds, clear errors."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from data.readers import (read_disparity, read_image, read_image_uint8, read_kitti_disparity, read_pfm,
                          write_image, write_kitti_disparity, write_pfm)


@pytest.mark.parametrize('little_endian', [True, False])
def test_pfm_round_trip_both_byte_orders(tmp_path, little_endian):
    data = np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5
    data[0, 0] = np.inf
    write_pfm(tmp_path / 'd.pfm', data, little_endian=little_endian)
    raw = (tmp_path / 'd.pfm').read_bytes()
    assert raw.startswith(b'Pf\n4 3\n' + (b'-1.0' if little_endian else b'1.0'))
    np.testing.assert_array_equal(read_pfm(tmp_path / 'd.pfm'), data)
    # the file stores the bottom row first
    first_value = np.frombuffer(raw[raw.index(b'.0\n') + 3:][:4], dtype='<f4' if little_endian else '>f4')[0]
    assert first_value == data[-1, 0]


def test_middlebury_pfm_rows_agree_with_png_mask(samples_dir):
    """Unknown ground truth (inf) lies where the non-occlusion mask (a top-first PNG) is 0; a reader that
    forgot the bottom-to-top flip would put them elsewhere."""
    folder = samples_dir / 'middlebury2014Q_motorcycle'
    disparity = read_pfm(folder / 'disp0GT.pfm')
    mask = read_image_uint8(folder / 'mask0nocc.png')[:, :, 0]
    assert disparity.shape == mask.shape == (497, 741)
    unknown = ~np.isfinite(disparity)
    assert unknown.mean() > 0.005
    assert (mask[unknown] != 255).mean() > 0.99
    assert (mask[np.flipud(unknown)] != 255).mean() < 0.9
    known = disparity[np.isfinite(disparity)]
    assert 5 < known.min() and known.max() < 70      # calib.txt: vmin=7, vmax=65 (quarter resolution)


def test_sceneflow_pfm_warps_right_view_onto_left(samples_dir):
    """Positive left disparities: left(y, x) ~ right(y, x - d). Row order checked photometrically."""
    folder = samples_dir / 'sceneflow_A-0032-0006'
    d = read_disparity(folder / 'disp_left.pfm')
    left = read_image(folder / 'left.png').mean(2)
    right = read_image(folder / 'right.png').mean(2)
    assert d.shape == left.shape == (540, 960) and d.min() >= 0

    def photometric_error(disp):
        ys, xs = np.mgrid[0:540, 0:960]
        src = np.round(xs - disp).astype(int)
        ok = (src >= 0) & (src < 960)
        return np.abs(left[ok] - right[ys[ok], src[ok]]).mean()

    correct, flipped = photometric_error(d), photometric_error(np.flipud(d))
    assert correct < 0.06 and correct < 0.5 * flipped


def test_rgba_gray_and_16bit_images(tmp_path, samples_dir):
    rgba = read_image(samples_dir / 'sceneflow_A-0032-0006' / 'left.png')
    raw = iio.imread(samples_dir / 'sceneflow_A-0032-0006' / 'left.png')
    assert raw.shape[2] == 4 and rgba.shape == (540, 960, 3)
    np.testing.assert_array_equal(rgba, raw[:, :, :3].astype(np.float32) / 255)   # alpha dropped, not composited

    gray = (np.arange(60, dtype=np.uint8).reshape(6, 10) * 4)
    iio.imwrite(tmp_path / 'gray.png', gray)
    img = read_image_uint8(tmp_path / 'gray.png')
    assert img.shape == (6, 10, 3) and (img == gray[:, :, None]).all()

    deep = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000)    # 16-bit greyscale
    iio.imwrite(tmp_path / 'deep.png', deep)
    np.testing.assert_allclose(read_image(tmp_path / 'deep.png')[:, :, 0], deep / 65535, atol=1e-7)
    assert read_image_uint8(tmp_path / 'deep.png')[4, 5, 0] == round(58000 / 257)


def test_kitti_disparity_png(tmp_path):
    d = np.array([[0.0, 1.5, 100.25], [np.nan, 192.0, 0.00390625]], dtype=np.float32)
    write_kitti_disparity(tmp_path / 'd.png', d)
    raw = iio.imread(tmp_path / 'd.png')
    assert raw.dtype == np.uint16 and raw.tolist() == [[0, 384, 25664], [0, 49152, 1]]
    np.testing.assert_array_equal(read_kitti_disparity(tmp_path / 'd.png'), np.nan_to_num(d))
    iio.imwrite(tmp_path / 'eight.png', np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match='eight.png: a KITTI disparity map is a single-channel 16-bit PNG'):
        read_kitti_disparity(tmp_path / 'eight.png')


def test_written_images_are_rounded_not_truncated(tmp_path):
    img = np.array([[[0.999, 0.5, 0.2 / 255]]], dtype=np.float32)   # truncation would give 254, 127, 0
    write_image(tmp_path / 'x.png', img)
    assert iio.imread(tmp_path / 'x.png').tolist() == [[[255, 128, 0]]]


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.png'):
        read_image(tmp_path / 'nothere.png')
    (tmp_path / 'bad.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='bad.png: cannot decode'):
        read_image(tmp_path / 'bad.png')
    (tmp_path / 'bad.pfm').write_bytes(b'P6\n1 1\n255\n')
    with pytest.raises(ValueError, match='bad.pfm: not a PFM'):
        read_pfm(tmp_path / 'bad.pfm')
    (tmp_path / 'short.pfm').write_bytes(b'Pf\n4 3\n-1.0\n' + b'\0' * 8)
    with pytest.raises(ValueError, match='short.pfm: PFM holds 2 values'):
        read_pfm(tmp_path / 'short.pfm')
    with pytest.raises(ValueError, match="unknown disparity format '.tif'"):
        read_disparity(tmp_path / 'x.tif')


def encode_png16(path, pixels: np.ndarray, interlace: int = 0) -> None:
    """A minimal 16-bit PNG encoder (test-only): HxWxC uint16, C = 2/3/4, row y filtered with filter type y % 5, so
    the reader's five scanline filters are all exercised (Pillow cannot write such files)."""
    import struct
    import zlib
    h, w, c = pixels.shape
    colour = {2: 4, 3: 2, 4: 6}[c]
    rows = pixels.astype('>u2').view(np.uint8).reshape(h, w * c * 2).astype(np.int32)
    bpp = 2 * c
    out, prior = [], np.zeros(rows.shape[1], np.int32)
    for y, row in enumerate(rows):
        kind = y % 5
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
        if kind == 0:
            predictor = np.zeros_like(row)
        elif kind == 1:
            predictor = left
        elif kind == 2:
            predictor = prior
        elif kind == 3:
            predictor = (left + prior) // 2
        else:
            p = left + prior - up_left
            pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - up_left)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, up_left))
        out.append(bytes([kind]) + ((row - predictor) & 255).astype(np.uint8).tobytes())
        prior = row

    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff)
    header = struct.pack('>IIBBBBB', w, h, 16, colour, 0, 0, interlace)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b''.join(out)))
                     + chunk(b'IEND', b''))


@pytest.mark.parametrize('channels', [3, 4, 2])
def test_16bit_colour_pngs_keep_their_16_bits(tmp_path, channels):
    """16-bit RGB, RGBA and grey+alpha PNGs: every bit read (float = value / 65535), alpha dropped; Pillow alone
    would cut them to 8 bits."""
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 65536, size=(11, 13, channels), dtype=np.uint16)
    pixels[3:6] = pixels[3:6] // 64 * 64 + 7            # smooth rows and low bits that 8 bits would lose
    encode_png16(tmp_path / 'x.png', pixels)
    colour = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    np.testing.assert_array_equal(read_image(tmp_path / 'x.png'), (colour / 65535).astype(np.float32))
    np.testing.assert_array_equal(read_image_uint8(tmp_path / 'x.png'),
                                  np.floor(colour / 257 + 0.5).astype(np.uint8))
    encode_png16(tmp_path / 'i.png', pixels, interlace=1)
    with pytest.raises(ValueError, match=r'i.png: cannot decode image .*interlaced 16-bit colour PNG'):
        read_image(tmp_path / 'i.png')


def test_cmyk_jpeg_is_converted_not_inverted(tmp_path):
    """A CMYK JPEG (print workflows) comes out in its RGB colours, not with K read as alpha."""
    from PIL import Image
    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(30, 226, size=(6, 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    Image.fromarray(rgb).convert('CMYK').save(tmp_path / 'c.jpg', quality=98)
    with Image.open(tmp_path / 'c.jpg') as image:
        assert image.mode == 'CMYK'
    read = read_image_uint8(tmp_path / 'c.jpg').astype(int)
    assert read.shape == rgb.shape and np.abs(read - rgb).mean() < 4


def test_colour_spaces_that_cannot_be_read_right_are_refused_by_name(tmp_path):
    from PIL import Image
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).convert('LAB').save(tmp_path / 'lab.tif')
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / 'float.tif')
    with pytest.raises(ValueError, match=r'lab.tif: cannot decode image .*CIE L\*a\*b\* colour image: not supported'):
        read_image(tmp_path / 'lab.tif')
    with pytest.raises(ValueError, match=r'float.tif: .*32-bit float image: not supported'):
        read_image_uint8(tmp_path / 'float.tif')
