"""The fast forms behind the zoo's blocks: banded, chunked, in-place and CPU-specific kernels.

The network files describe the papers; this module is where their blocks go when speed or memory matters. Every
function here computes what a plain block computes (same weights, same products, other summation order) and is
tested against the plain form (tests/test_vectorised.py, tests/test_kernels_dilated.py). `plain_forms()` switches
every seam off, so a test or a reader can run the networks exactly as written in their files.

What lives here: sizes chosen for the allocator and the caches (`AUTOGRAD_TENSOR_BYTES`, `INFERENCE_BAND_BYTES`),
banded convolutions without autograd (`conv_into`), the CPU-training rewrites of small convolutions
(`pointwise_conv`, `HeadConv2d`), dilated depthwise convolutions on their phases in CPU evaluation
(`dilated_depthwise_conv`), in-place activations, and the fast residual dense block (`dense_block`).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The seam: True runs the fast forms below, False the plain forms written in the network files (see `plain_forms`).
FAST = True


@contextlib.contextmanager
def plain_forms():
    """Run every block in its plain form (as the paper and the official code write it) inside this context."""
    global FAST
    previous, FAST = FAST, False
    try:
        yield
    finally:
        FAST = previous

# Output bytes per band of the banded convolutions in evaluation, by device type: on CPU ~16 rows of a KITTI-sized
# x4 HR map at 144 channels, where oneDNN ran fastest (157 GFLOP/s vs 133 for the whole map); on GPUs large bands,
# to keep the kernels busy. Also bounds the temporaries.
INFERENCE_BAND_BYTES = {'cpu': 12 << 20, 'cuda': 512 << 20}


# Largest tensor the autograd paths create on purpose, in bytes: glibc's largest dynamic mmap threshold. glibc serves
# larger blocks with fresh pages from the kernel every time, and a CPU training step then spends a third of its time
# zero-filling pages (page faults, system time); blocks below it are reused from the heap. See `autograd_chunks`.
AUTOGRAD_TENSOR_BYTES = 32 << 20


def autograd_chunks(x: Tensor, channels: int) -> tuple[Tensor, ...]:
    """x (N, C, H, W) split on dim 0 into as few chunks as keep a (n, `channels`, H, W) tensor of each chunk within
    AUTOGRAD_TENSOR_BYTES (at least one image per chunk)."""
    image_bytes = channels * x.shape[2] * x.shape[3] * x.element_size()
    return x.split(max(1, AUTOGRAD_TENSOR_BYTES // max(1, image_bytes)))


def memory_format(x: Tensor) -> torch.memory_format:
    """torch.channels_last if x (N, C, H, W) is stored channels-last (and not also NCHW-contiguous), else NCHW."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def band_rows(height: int, row_bytes: int, device: torch.device) -> int:
    """Rows per band of a banded computation whose output takes `row_bytes` per image row: at most
    INFERENCE_BAND_BYTES[device type] per band, the bands as even as possible (no thin last band)."""
    budget = INFERENCE_BAND_BYTES.get(device.type, INFERENCE_BAND_BYTES['cuda'])
    rows = max(1, min(height, budget // max(1, row_bytes)))
    bands = -(-height // rows)
    return -(-height // bands)


def halo_band(x: Tensor, top: int, bottom: int, halo: int) -> Tensor:
    """Rows top-halo .. bottom-1+halo of x (N, C, H, W), with zero rows where they fall outside the image: the input
    a 'same'-padded convolution with a (2 halo + 1)-row kernel needs for output rows [top, bottom)."""
    height = x.shape[2]
    band = x[:, :, max(0, top - halo):bottom + halo]
    missing_above, missing_below = max(0, halo - top), max(0, bottom + halo - height)
    if missing_above or missing_below:
        band = F.pad(band, (0, 0, missing_above, missing_below))
    return band


def conv_into(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, accumulate: bool) -> None:
    """out (=, or += when `accumulate`) conv2d(x, weight, bias) with 'same' zero padding, for a 1x1 or 3x3 `weight`,
    a band of rows at a time (see `halo_band`). No autograd; the temporaries are one band, not a whole map.
    """
    height, width = x.shape[2:]
    halo = weight.shape[-1] // 2
    rows = band_rows(height, out.shape[1] * width * x.element_size(), x.device)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        result = F.conv2d(halo_band(x, top, bottom, halo), weight, bias, padding=(0, halo))
        if accumulate:
            out[:, :, top:bottom] += result
        else:
            out[:, :, top:bottom] = result


def _oneDNN_nchw_autograd(x: Tensor) -> bool:
    """Whether a convolution of x runs oneDNN's NCHW kernels with a backward pass: CPU training (see
    `activation_format`), where the rewrites below measured faster."""
    return FAST and x.device.type == 'cpu' and torch.is_grad_enabled() and x.dim() == 4 and x.is_contiguous()


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.conv2d(x, weight, bias) for a 1x1 `weight` (C_out, C_in, 1, 1). In CPU training it is one batched matrix
    product (C_out, C_in) x (C_in, H*W) per image: oneDNN's NCHW 1x1 backward ran at 15-45 GFLOP/s, and forward +
    backward of the HR 144->64 dense-block fusion took 56 ms as a convolution, 26 ms as `baddbmm` (64->32: 45 vs
    18 ms). Same products, summed in another order."""
    if not _oneDNN_nchw_autograd(x):
        return F.conv2d(x, weight, bias)
    n, c, h, w = x.shape
    matrix = weight.view(weight.shape[0], c).expand(n, -1, -1)
    pixels = x.view(n, c, h * w)
    out = torch.bmm(matrix, pixels) if bias is None else torch.baddbmm(bias.view(1, -1, 1), matrix, pixels)
    return out.view(n, -1, h, w)


class PointwiseConv2d(nn.Conv2d):
    """nn.Conv2d(in, out, 1) computed by `pointwise_conv`. Parameters and state-dict keys are those of nn.Conv2d."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, 1, 0, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return pointwise_conv(x, self.weight, self.bias)


def _oneDNN_channels_last_inference(x: Tensor, weight: Tensor) -> bool:
    """Whether a convolution of x is CPU evaluation of a channels-last float32 map (no autograd, no autocast: the
    precision flags keep their own path)."""
    return (FAST and x.device.type == 'cpu' and not torch.is_grad_enabled() and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled('cpu') and memory_format(x) == torch.channels_last)


def dilated_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int) -> Tensor:
    """F.conv2d(x, weight, bias, padding=dilation * (k // 2), dilation=dilation, groups=C) for a depthwise k x k
    `weight` (C, 1, k, k), k odd, on x (N, C, H, W).

    In CPU evaluation of a channels-last map it runs as an undilated convolution of the d x d phases of x: output
    pixel (d i + p, d j + q) only reads input pixels of phase (p, q), so pixel_unshuffle(x, d) (zero-padded to
    multiples of d, which the 'same' zero padding would read anyway) convolved depthwise with the same k x k
    kernel, padding k // 2, and shuffled back is the dilated convolution. oneDNN ran CVHSSR's dilated 7x7 (LKA,
    dilation 3) at 6 GFLOP/s and the undilated one on the phases 2.7x faster (CPU time, 48 channels at KITTI size).
    Same products, summed in oneDNN's order."""
    channels, k = weight.shape[0], weight.shape[-1]
    if dilation == 1 or not _oneDNN_channels_last_inference(x, weight):
        return F.conv2d(x, weight, bias, padding=dilation * (k // 2), dilation=dilation, groups=channels)
    height, width = x.shape[2:]
    padded = F.pad(x, (0, -width % dilation, 0, -height % dilation))
    phases = F.pixel_unshuffle(padded, dilation)                  # N, C d^2, H/d, W/d; channel c d^2 + p d + q
    repeats = dilation * dilation
    out = F.conv2d(phases.contiguous(memory_format=torch.channels_last), weight.repeat_interleave(repeats, 0),
                   None if bias is None else bias.repeat_interleave(repeats), padding=k // 2,
                   groups=channels * repeats)
    out = F.pixel_shuffle(out, dilation)[:, :, :height, :width]
    return out.contiguous(memory_format=torch.channels_last)


class DilatedDepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d(channels, channels, k, padding=dilation * (k // 2), dilation=dilation, groups=channels) computed by
    `dilated_depthwise_conv`. Parameters and state-dict keys are those of nn.Conv2d."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__(channels, channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                         groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return dilated_depthwise_conv(x, self.weight, self.bias, self.dilation[0])


# Smallest row or column sum of exp(scores - max) for which `two_way_attention` trusts its shared exponentials; below
# it (scores spread by more than ~45 within one image row) the two softmaxes run as written.
SHARED_EXP_MIN_SUM = 1e-20


def two_way_attention(scores: Tensor, value_left: Tensor, value_right: Tensor) -> tuple[Tensor, Tensor]:
    """(softmax(scores, -1) @ value_right, softmax(scores, -2)^T @ value_left) for scores (B, H, W_left, W_right)
    and values (B, H, W, c): the two directions of SCAM-style stereo attention from one score matrix.

    Without autograd, one exp serves both: e = exp(scores - m) with m the largest score of each image row, and
    each product is normalised after the matrix product, (e @ V) / e.sum(-1) and (e^T @ V) / e.sum(-2), dividing
    (W, c) results instead of (W, W) matrices. Two softmaxes (one along a strided dim) cost NAFSSR-S 1.4 s of its 8 s
    at KITTI size; this form ran SCAM's softmaxes + products 1.22x faster (CPU time, (94, 311, 311) scores, c 64).
    Same sums up to rounding; where a row or column of e sums below SHARED_EXP_MIN_SUM, the plain form runs."""
    if (FAST and not torch.is_grad_enabled() and scores.device.type == 'cpu' and not torch.is_autocast_enabled('cpu')
            and scores.dtype in (torch.float32, torch.float64)):   # low precision keeps softmax's float32 sums
        e = torch.sub(scores, scores.amax((-2, -1), keepdim=True)).exp_()
        row_sums, column_sums = e.sum(-1, keepdim=True), e.sum(-2).unsqueeze(-1)         # B, H, W, 1 each
        if float(torch.minimum(row_sums.amin(), column_sums.amin())) >= SHARED_EXP_MIN_SUM:
            return (torch.matmul(e, value_right).div_(row_sums),
                    torch.matmul(e.transpose(-1, -2), value_left).div_(column_sums))
    return (torch.matmul(scores.softmax(-1), value_right),
            torch.matmul(scores.softmax(-2).transpose(-1, -2), value_left))


class HeadConv2d(nn.Conv2d):
    """A 'same'-padded 3x3 nn.Conv2d to a few output channels (the 64 -> 3 SR heads). In CPU training it runs as the
    equal transposed convolution conv_transpose2d(x, W^T flipped): oneDNN's NCHW kernels for a 3-channel output ran
    at ~20 GFLOP/s, and forward + backward of a batch-2 x4 training crop took 54 ms as a convolution, 29-37 ms as
    the transposed one. Parameters and state-dict keys are those of nn.Conv2d."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, 1, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        if not _oneDNN_nchw_autograd(x):
            return super().forward(x)
        return F.conv_transpose2d(x, self.weight.transpose(0, 1).flip(2, 3), self.bias, padding=1)


def activate_(x: Tensor, activation: nn.Module) -> Tensor:
    """`activation(x)` written into x (no autograd), without a new tensor where the activation allows: a PReLU with
    one slope or a LeakyReLU is a leaky ReLU in place. On GPUs a PReLU's slope stays on the device (reading it
    would synchronise), so the result is copied back instead."""
    if isinstance(activation, nn.LeakyReLU):
        return F.leaky_relu_(x, activation.negative_slope)
    if isinstance(activation, nn.PReLU) and activation.weight.numel() == 1 and activation.weight.device.type == 'cpu':
        return F.leaky_relu_(x, float(activation.weight))
    return x.copy_(activation(x))



def activation_format(x: Tensor, model: nn.Module) -> torch.memory_format:
    """Memory format of a network's activations: channels-last (NHWC) on GPUs and in CPU evaluation, where oneDNN and
    cuDNN convolve it 1.5-6x faster than NCHW (most of all the many cheap convolutions at HR); NCHW for CPU
    training, where oneDNN's NHWC backward is slower (and CPU training mode without autograd, where it would change
    the rounding that training-mode BatchNorm amplifies). Convolutions follow their input's format; values agree to
    rounding. NCHW everywhere under `plain_forms`."""
    evaluating = not (model.training or torch.is_grad_enabled())
    return torch.channels_last if FAST and (x.is_cuda or evaluating) else torch.contiguous_format


# ----------------------------------------------------------------------------------------------------------------
# The residual dense block (models/layers.py `ResidualDenseBlock`), fast forms

def dense_block(block: nn.Module, x: Tensor) -> Tensor:
    """The residual dense block `block` on x (N, G0, H, W), as its plain form `LFF(conv(x)) + x`.

    Dense layer i convolves cat(x, y_1..y_{i-1}). A convolution is a sum over its input channels, so instead of
    re-concatenating and re-reading all earlier maps at every layer, each map is convolved once, as soon as it exists,
    with the weight slices of *all* later layers, and the results are added to their pre-activations. Same weights,
    same products; only the order of the floating-point sums differs (~1e-6). Less memory traffic (1.4x faster at
    HR on CPU) and, in training, 4x fewer saved activations (the convolutions keep their 24-channel inputs, not the
    concatenations).
    """
    if torch.is_grad_enabled():
        chunks = [_dense_block_autograd(block, chunk)
                  for chunk in autograd_chunks(x, block.LFF.in_channels - x.shape[1])]
    else:
        chunks = [_dense_block_inference(block, image) for image in x.split(1)]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _stacked_weights(block: nn.Module, first: int, count: int, layer: int) -> Tensor:
    """Weights of input channels [first, first + count) of dense layers layer.. of `block`, stacked."""
    return torch.cat([dense.conv.weight[:, first:first + count] for dense in list(block.conv)[layer:]])


def _dense_block_autograd(block: nn.Module, x: Tensor) -> Tensor:
    """The dense block with autograd, on a chunk of images small enough (`autograd_chunks`) that no tensor it makes,
    forward or backward, outgrows glibc's reusable heap. The 1x1 fusion is split at the block input,
    LFF(cat(x, y)) = W_x x + W_y y + b, so that the largest concatenation has the y_i alone."""
    layers, c0 = list(block.conv), x.shape[1]
    growth = layers[0].conv.out_channels
    biases = torch.cat([dense.conv.bias for dense in layers])
    # terms of each layer's pre-activation; split (not sliced) so the backward is one concatenation
    pending = [[term] for term in F.conv2d(x, _stacked_weights(block, 0, c0, 0), biases, padding=1).split(growth, 1)]
    outputs, start = [], c0
    for i, dense in enumerate(layers):
        y = dense.relu(sum(pending[i][1:], pending[i][0]))
        outputs.append(y)
        if i + 1 < len(layers):
            later = F.conv2d(y, _stacked_weights(block, start, growth, i + 1), padding=1).split(growth, 1)
            for k, term in enumerate(later, start=i + 1):
                pending[k].append(term)
        start += growth
    fused = pointwise_conv(torch.cat(outputs, dim=1), block.LFF.weight[:, c0:], block.LFF.bias)
    return fused + F.conv2d(x, block.LFF.weight[:, :c0]) + x


def _dense_block_inference(block: nn.Module, image: Tensor) -> Tensor:
    """One image, no autograd: the dense layers' maps live in one buffer of pre-activations, turned into y_i in
    place. Each map is convolved once with the stacked weights of all later layers (one wide convolution runs 2x
    faster than several 24-channel ones on CPU), a band of rows at a time so that temporaries stay small and in
    cache. The 1x1 fusion is split at the block input, LFF(cat(x, y)) = W_x x + W_y y + b, so that x is never
    copied into the buffer (the buffer is 30 % smaller); W_x x is added band by band (a whole 64-channel
    temporary was 0.2 GB of a KITTI-sized x4 evaluation's 2.1 GB peak)."""
    layers, c0 = list(block.conv), image.shape[1]
    growth = layers[0].conv.out_channels
    buffer = torch.empty((1, block.LFF.in_channels - c0, *image.shape[2:]), dtype=image.dtype,
                         device=image.device, memory_format=torch.channels_last)
    biases = torch.cat([dense.conv.bias for dense in layers])
    conv_into(buffer, image, _stacked_weights(block, 0, c0, 0), biases, accumulate=False)
    start = 0
    for i, dense in enumerate(layers):
        y = buffer[:, start:start + growth]
        activate_(y, dense.relu)
        if i + 1 < len(layers):
            conv_into(buffer[:, start + growth:], y, _stacked_weights(block, c0 + start, growth, i + 1), None,
                      accumulate=True)
        start += growth
    out = F.conv2d(buffer, block.LFF.weight[:, c0:], block.LFF.bias)
    conv_into(out, image, block.LFF.weight[:, :c0], None, accumulate=True)   # banded: no whole-map temporary
    out += image
    return out


def residual_block_inference(body: nn.Sequential, x: Tensor) -> Tensor:
    """conv2(act(conv1(x))) + x without autograd, activation and residual in place: no fresh full-size tensors."""
    conv1, act, conv2 = body
    out = conv2(activate_(conv1(x), act))
    out += x
    return out


# ----------------------------------------------------------------------------------------------------------------
# Execution switches of networks that fold both views into one batch (read by `ViewwiseBatchNorm2d`)

_RECOMPUTING = False  # set while activation recomputation replays a forward pass (see `recomputing`)
_ONE_VIEW = False     # set while a stage runs one view at a time (see `one_view`)


@contextlib.contextmanager
def recomputing():
    """Context for the replayed forward of activation checkpointing: BatchNorm normalises with the batch statistics
    as before but leaves the running statistics alone, so a recomputed stage does not count its batch twice."""
    global _RECOMPUTING
    previous, _RECOMPUTING = _RECOMPUTING, True
    try:
        yield
    finally:
        _RECOMPUTING = previous


def is_recomputing() -> bool:
    return _RECOMPUTING


@contextlib.contextmanager
def one_view():
    """Context for a stage that runs the left and the right view in separate calls, as the official network does:
    training-mode `ViewwiseBatchNorm2d` then normalises each call's batch as a whole (one view's statistics)."""
    global _ONE_VIEW
    previous, _ONE_VIEW = _ONE_VIEW, True
    try:
        yield
    finally:
        _ONE_VIEW = previous


def is_one_view() -> bool:
    return _ONE_VIEW
