"""Generic building blocks of SSRDE-FNet: residual dense blocks, channel attention and small conv helpers.

Attribute names inside every block are those of the official implementation (`MIVRC/SSRDEFNet-PyTorch`,
`model.py` / `common.py`), because they become the keys of the state_dict and the authors' checkpoint must load.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# Output bytes per band of the banded convolutions in evaluation, by device type: on CPU ~16 rows of a KITTI-sized
# x4 HR map at 144 channels, where oneDNN ran fastest (157 GFLOP/s vs 133 for the whole map); on GPUs large bands,
# to keep the kernels busy. Also bounds the temporaries.
INFERENCE_BAND_BYTES = {'cpu': 12 << 20, 'cuda': 512 << 20}


# Largest tensor the autograd paths create on purpose, in bytes: glibc's largest dynamic mmap threshold. glibc serves
# larger blocks with fresh pages from the kernel every time, and a CPU training step then spends a third of its time
# zero-filling pages (page faults, system time); blocks below it are reused from the heap. See `autograd_chunks`.
AUTOGRAD_TENSOR_BYTES = 32 << 20

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
    `ssrde.activation_format`), where the rewrites below measured faster."""
    return x.device.type == 'cpu' and torch.is_grad_enabled() and x.dim() == 4 and x.is_contiguous()


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


def prelu_(x: Tensor, prelu: nn.PReLU) -> Tensor:
    """In-place PReLU with a single slope (no autograd): the same product as F.prelu, without a new tensor on CPU.
    On GPUs the slope stays on the device (reading it would synchronise), so the result is copied back instead."""
    if prelu.weight.numel() != 1:
        raise ValueError("prelu_ only handles a PReLU with one shared slope")
    if prelu.weight.device.type != 'cpu':
        return x.copy_(F.prelu(x, prelu.weight))
    return F.leaky_relu_(x, float(prelu.weight))


class ViewwiseBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d for a batch that holds `num_views` views stacked on dim 0 ([left; right]).

    The official network runs the left and the right view through every shared module in separate calls, so in
    training mode each BatchNorm normalises a view with that view's own batch statistics and updates its running
    statistics twice, left first (spec §7.2). We fold both views into one batch for speed; this layer splits the
    batch again in training mode so statistics, running averages and `num_batches_tracked` stay exactly those of
    the official two-call behaviour. In eval mode it is a plain BatchNorm2d. State-dict keys are unchanged.
    """

    num_views: int = 2

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        if self.num_views == 1 or _ONE_VIEW:   # the batch holds one view (see `one_view`)
            return self._normalise(x)
        views = x.chunk(self.num_views, dim=0)
        if len(views) != self.num_views or views[0].shape[0] != views[-1].shape[0]:
            raise ValueError(f"ViewwiseBatchNorm2d expects a batch of {self.num_views} stacked views of equal "
                             f"size, got batch {x.shape[0]}")
        return torch.cat([self._normalise(v) for v in views], dim=0)

    def _normalise(self, view: Tensor) -> Tensor:
        if _RECOMPUTING:  # momentum 0: the running statistics stay as they are (same saved tensors as below)
            return F.batch_norm(view, self.running_mean, self.running_var, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(view)


class ConvBN(nn.Sequential):
    """Conv (or transposed conv, no bias) followed by BatchNorm; keys `.0.*`, `.1.*` as the official Sequentials.

    In evaluation without autograd the BatchNorm is folded into the convolution: one convolution with weights
    w * g / sqrt(var + eps) and bias b - mean * g / sqrt(var + eps), so the normalisation costs no pass over the
    (often high-resolution) output. Same function; the rounding differs by ~1e-7 relative.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.folds():
            return super().forward(x)
        conv = self[0]
        weight, bias = self.folded()
        if isinstance(conv, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups,
                                      conv.dilation)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def folds(self) -> bool:
        """Whether the BatchNorm is folded into the convolution now: eval mode, no autograd, running statistics."""
        return not (self.training or torch.is_grad_enabled() or not self[1].track_running_stats)

    def folded(self) -> tuple[Tensor, Tensor]:
        """The weight and bias of the convolution with the BatchNorm's running statistics folded in (eval mode)."""
        conv, bn = self[0], self[1]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if isinstance(conv, nn.ConvTranspose2d):    # weight (in, out, kh, kw)
            return conv.weight * scale.view(1, -1, 1, 1), bias
        return conv.weight * scale.view(-1, 1, 1, 1), bias


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> ConvBN:
    """Conv (no bias) + BatchNorm, the official `convbn` (always used with dilation 1). Keys `.0.*`, `.1.*`."""
    return ConvBN(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        ViewwiseBatchNorm2d(out_channels),
    )


class ConvBlock(nn.Module):
    """Conv + PReLU (official `common.ConvBlock` with activation='prelu', norm=None)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class DeconvBlock(nn.Module):
    """Transposed conv + PReLU (official `common.DeconvBlock`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.deconv(x))


class DenseLayer(nn.Module):
    """3x3 conv + PReLU whose output is concatenated to its input (official `one_conv`): G0 -> G0 + G channels."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, growth, 3, 1, 1, bias=True)
        self.relu = nn.PReLU()  # named `relu` in the official code although it is a PReLU

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.relu(self.conv(x))], dim=1)


class ResidualDenseBlock(nn.Module):
    """RDB: `num_layers` dense layers, 1x1 local feature fusion (`LFF`) and a local residual. (B, G0, H, W) -> same.

    Dense layer i convolves cat(x, y_1..y_{i-1}). A convolution is a sum over its input channels, so instead of
    re-concatenating and re-reading all earlier maps at every layer, each map is convolved once, as soon as it exists,
    with the weight slices of *all* later layers, and the results are added to their pre-activations. Same weights,
    same products; only the order of the floating-point sums differs from the official form (~1e-6), which
    tests/test_vectorised.py keeps as the reference. Less memory traffic (1.4x faster at HR on CPU) and, in
    training, 4x fewer saved activations (the convolutions keep their 24-channel inputs, not the concatenations).
    """

    def __init__(self, channels: int = 64, num_layers: int = 6, growth: int = 24):
        super().__init__()
        self.conv = nn.Sequential(*[DenseLayer(channels + i * growth, growth) for i in range(num_layers)])
        self.LFF = nn.Conv2d(channels + num_layers * growth, channels, 1, 1, 0, bias=True)

    def stacked_weights(self, first: int, count: int, layer: int, end: int | None = None) -> Tensor:
        """Weights of input channels [first, first + count) of dense layers layer..end-1 (default: all), stacked."""
        return torch.cat([dense.conv.weight[:, first:first + count] for dense in list(self.conv)[layer:end]])

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            chunks = [self.forward_autograd(chunk) for chunk in autograd_chunks(x, self.LFF.in_channels - x.shape[1])]
        else:
            chunks = [self.forward_inference(image) for image in x.split(1)]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def forward_autograd(self, x: Tensor) -> Tensor:
        """The dense block with autograd, on a chunk of images small enough (`autograd_chunks`) that no tensor it
        makes, forward or backward, outgrows glibc's reusable heap. The 1x1 fusion is split at the block input,
        LFF(cat(x, y)) = W_x x + W_y y + b, so that the largest concatenation has the y_i alone."""
        layers, c0 = list(self.conv), x.shape[1]
        growth = layers[0].conv.out_channels
        biases = torch.cat([dense.conv.bias for dense in layers])
        # terms of each layer's pre-activation; split (not sliced) so the backward is one concatenation
        pending = [[term] for term in F.conv2d(x, self.stacked_weights(0, c0, 0), biases, padding=1).split(growth, 1)]
        outputs, start = [], c0
        for i, dense in enumerate(layers):
            y = dense.relu(sum(pending[i][1:], pending[i][0]))
            outputs.append(y)
            if i + 1 < len(layers):
                later = F.conv2d(y, self.stacked_weights(start, growth, i + 1), padding=1).split(growth, 1)
                for k, term in enumerate(later, start=i + 1):
                    pending[k].append(term)
            start += growth
        fused = pointwise_conv(torch.cat(outputs, dim=1), self.LFF.weight[:, c0:], self.LFF.bias)
        return fused + F.conv2d(x, self.LFF.weight[:, :c0]) + x

    def forward_inference(self, image: Tensor) -> Tensor:
        """One image, no autograd: the dense layers' maps live in one buffer of pre-activations, turned into y_i in
        place. Each map is convolved once with the stacked weights of all later layers (one wide convolution runs 2x
        faster than several 24-channel ones on CPU), a band of rows at a time so that temporaries stay small and in
        cache. The 1x1 fusion is split at the block input, LFF(cat(x, y)) = W_x x + W_y y + b, so that x is never
        copied into the buffer (the buffer is 30 % smaller); W_x x is added band by band (a whole 64-channel
        temporary was 0.2 GB of a KITTI-sized x4 evaluation's 2.1 GB peak)."""
        layers, c0 = list(self.conv), image.shape[1]
        growth = layers[0].conv.out_channels
        buffer = torch.empty((1, self.LFF.in_channels - c0, *image.shape[2:]), dtype=image.dtype,
                             device=image.device, memory_format=torch.channels_last)
        biases = torch.cat([dense.conv.bias for dense in layers])
        conv_into(buffer, image, self.stacked_weights(0, c0, 0), biases, accumulate=False)
        start = 0
        for i, dense in enumerate(layers):
            y = buffer[:, start:start + growth]
            prelu_(y, dense.relu)
            if i + 1 < len(layers):
                conv_into(buffer[:, start + growth:], y, self.stacked_weights(c0 + start, growth, i + 1), None,
                             accumulate=True)
            start += growth
        out = F.conv2d(buffer, self.LFF.weight[:, c0:], self.LFF.bias)
        conv_into(out, image, self.LFF.weight[:, :c0], None, accumulate=True)   # banded: no whole-map temporary
        out += image
        return out


class ResidualDenseGroup(nn.Module):
    """RDG: a chain of RDBs whose outputs are concatenated and fused by a 1x1 conv.

    Unlike iPASSR's RDG there is no global residual and a single tensor is returned (spec §2.4).
    """

    def __init__(self, channels: int = 64, num_layers: int = 4, growth: int = 24, num_blocks: int = 4):
        super().__init__()
        self.RDB = nn.Sequential(*[ResidualDenseBlock(channels, num_layers, growth) for _ in range(num_blocks)])
        self.conv = nn.Conv2d(channels * num_blocks, channels, 1, 1, 0, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        outputs = []
        for block in self.RDB:
            x = block(x)
            outputs.append(x)
        return self.conv(torch.cat(outputs, dim=1))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (official `CALayer`): x * sigmoid(MLP(global mean of x)).

    The mean is over the whole image, so the output of a tile differs from that of the full image.
    """

    def __init__(self, channels: int = 64, reduction: int = 8):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, 1, 0, bias=True),
            nn.PReLU(),
            nn.Conv2d(channels // reduction, channels, 1, 1, 0, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(self.avg_pool(x))


class GroupResBlock(nn.Module):
    """Residual block of two grouped (groups=4) 3x3 convs with a PReLU between them (official `ResB`)."""

    def __init__(self, channels: int = 64, groups: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, groups=groups, bias=True),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1, groups=groups, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.body(x) + x
        conv1, act, conv2 = self.body   # no autograd: PReLU and residual in place, no fresh full-size tensors
        out = conv2(prelu_(conv1(x), act))
        out += x
        return out


def transition(channels: int = 64) -> nn.Sequential:
    """BatchNorm + ResB applied before the matching-feature extractors (official `transition`, `transition2`)."""
    return nn.Sequential(ViewwiseBatchNorm2d(channels), GroupResBlock(channels))


def resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with align_corners=False, as the official `F.upsample(..., mode='bilinear')`."""
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)
