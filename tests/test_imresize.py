"""imresize.imresize against values derived independently of it: closed forms, hand-computed kernel weights, a naive
per-pixel implementation of MATLAB's documented algorithm, and (when installed) a published port."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.imresize import imresize, modcrop, resize_contributions


def matlab_cubic(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
    if x <= 2:
        return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
    return 0.0


def naive_resize_1d(signal: list[float], scale: float) -> list[float]:
    """MATLAB imresize along one axis, one output pixel at a time, straight from the documented algorithm."""
    n = len(signal)
    out_len = math.ceil(n * scale)
    width = 4 / scale if scale < 1 else 4
    out = []
    for j in range(1, out_len + 1):
        u = j / scale + 0.5 * (1 - 1 / scale)
        first = math.floor(u - width / 2)
        taps = range(first, first + math.ceil(width) + 2)
        weights = [(scale * matlab_cubic(scale * (u - i)) if scale < 1 else matlab_cubic(u - i)) for i in taps]
        total = sum(weights)
        value = 0.0
        for i, w in zip(taps, weights):
            k = i - 1                              # 0-based, then mirror at both ends (symmetric padding)
            while k < 0 or k >= n:
                k = -k - 1 if k < 0 else 2 * n - k - 1
            value += w / total * signal[k]
        out.append(value)
    return out


def test_known_weights_for_halving():
    """At scale 1/2 an interior output pixel sits between two inputs; the stretched kernel 0.5*cubic(0.5 d) gives
    these eight weights (computed by hand: d = 0.5, 1.5, 2.5, 3.5 on each side)."""
    weights, indices = resize_contributions(16, 8, 0.5)
    expected = [-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875]
    np.testing.assert_allclose(weights[3], expected, atol=1e-15)
    assert indices[3].tolist() == list(range(3, 11))     # output 4 (1-based) is centred at input 7.5 (1-based)
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-12)


def test_upscaling_weights_and_border_mirroring():
    weights, indices = resize_contributions(5, 20, 4)
    # first output (1-based j=1) is centred at u = 1/4 + 3/8 = 0.625: taps at 1-based -2..3 -> mirrored 0-based
    u = 0.625
    taps = [t for t in range(math.floor(u - 2), math.floor(u - 2) + 6) if matlab_cubic(u - t) != 0]
    raw = np.array([matlab_cubic(u - t) for t in taps])
    np.testing.assert_allclose(weights[0][weights[0] != 0], raw / raw.sum(), atol=1e-15)
    assert indices[0].tolist()[:2] == [1, 0]             # 1-based -1 and 0 mirror to 0-based 1 and 0


@pytest.mark.parametrize('scale', [0.25, 0.5, 1 / 3, 2, 4])
def test_matches_naive_algorithm_on_random_signals(scale):
    rng = np.random.default_rng(int(scale * 100))
    img = rng.random((13, 17))
    ours = imresize(img, scale)
    rows = np.array([naive_resize_1d(list(col), scale) for col in img.T]).T        # rows first (equal scales)
    expected = np.array([naive_resize_1d(list(row), scale) for row in rows])
    np.testing.assert_allclose(ours, expected, atol=1e-12)


@pytest.mark.parametrize('scale', [0.25, 0.5, 4])
def test_constant_image_stays_constant(scale):
    img = np.full((20, 28, 3), 137, dtype=np.uint8)
    out = imresize(img, scale)
    assert out.dtype == np.uint8 and out.shape == (math.ceil(20 * scale), math.ceil(28 * scale), 3)
    assert (out == 137).all()
    np.testing.assert_allclose(imresize(img.astype(np.float64) / 255, scale), 137 / 255, atol=1e-12)


@pytest.mark.parametrize('scale', [0.25, 0.5, 4])
def test_linear_ramp_is_reproduced_in_the_interior(scale):
    """Cubic convolution reproduces linear functions: away from the borders output pixel j (1-based) takes the
    value of the ramp at its centre u = j/s + (1 - 1/s)/2."""
    n = 64
    ramp = np.tile(np.arange(1, n + 1, dtype=np.float64) * 0.01, (8, 1))   # value 0.01 * (1-based column)
    out = imresize(ramp, scale)
    j = np.arange(1, out.shape[1] + 1)
    centres = j / scale + 0.5 * (1 - 1 / scale)
    margin = (4 / scale if scale < 1 else 4)
    interior = (centres > margin + 1) & (centres < n - margin)
    np.testing.assert_allclose(out[0, interior], 0.01 * centres[interior], atol=1e-12)


def test_uint8_rounds_after_each_axis():
    """MATLAB's uint8 imresize rounds and saturates after every axis (its resize-along-one-dimension step returns
    the input class); rounding only at the end gives different pixels."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    out = imresize(img, 0.25)
    first = np.clip(np.floor(np.stack([np.array([naive_resize_1d(list(img[:, x, c].astype(float)), 0.25)
                                                 for x in range(32)]).T for c in range(3)], -1) + 0.5), 0, 255)
    second = np.stack([np.array([naive_resize_1d(list(first[y, :, c]), 0.25) for y in range(first.shape[0])])
                       for c in range(3)], -1)
    expected = np.clip(np.floor(second + 0.5), 0, 255).astype(np.uint8)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    once = np.clip(np.floor(imresize(img.astype(np.float64), 0.25) + 0.5), 0, 255).astype(np.uint8)
    assert (once != out).any()


def test_float_dtype_is_kept_and_not_clipped():
    img = np.zeros((16, 16), dtype=np.float32)
    img[:, 8:] = 1
    out = imresize(img, 0.5)
    assert out.dtype == np.float32
    assert out.min() < 0 and out.max() > 1            # cubic overshoot at the step is kept for float input


def test_non_square_scales_resize_smaller_scale_first():
    rng = np.random.default_rng(1)
    img = rng.random((12, 20))
    out = imresize(img, output_shape=(24, 10))        # rows x2, columns x0.5: columns (smaller scale) first
    cols = np.array([naive_resize_1d(list(row), 0.5) for row in img])
    expected = np.array([naive_resize_1d(list(col), 2) for col in cols.T]).T
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match='uint8 and floating-point'):
        imresize(np.zeros((4, 4), dtype=np.int32), 2)
    with pytest.raises(ValueError, match='exactly one of'):
        imresize(np.zeros((4, 4)), 2, output_shape=(8, 8))


def test_modcrop():
    img = np.zeros((375, 1242, 3))
    assert modcrop(img, 4).shape == (372, 1240, 3)
    assert modcrop(img, 2).shape == (374, 1242, 3)


def test_agrees_with_published_port_when_installed():
    """bicubic-pytorch (sanghyun-son's MATLAB-compatible port), computed here if it is installed."""
    torch = pytest.importorskip('torch')
    port = pytest.importorskip('bicubic_pytorch.core')
    rng = np.random.default_rng(2)
    img = rng.random((30, 47, 3))
    for scale in (0.25, 0.5, 4):
        ref = port.imresize(torch.tensor(img).permute(2, 0, 1)[None], scale=scale)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(imresize(img, scale), ref, atol=1e-6)
