"""SwinFIR's spatial-frequency block (SFB; Zhang et al., "SwinFIR: Revisiting the SwinIR with Fast Fourier
Convolution and Improved Training for Image Super-Resolution", arXiv 2208.11247): a spatial residual block and a
Fourier branch side by side, fused by a 1x1 convolution. It replaces SwinIR's 3x3 convolution at the end of every
residual group. Official swinfir/archs/swinfir_utils.py 633-719. Maps are (N, C, H, W).

The Fourier branch sees the whole (padded) image at once, so its output depends on the image size and padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Slope of the LeakyReLUs of the SFB (official utils 638, 674, 698).
LEAKY_SLOPE = 0.2
# rfftn/irfftn normalisation (official FourierUnit default): unitary, 1/sqrt(HW) both ways.
FFT_NORM = 'ortho'


class ResB(nn.Module):
    """Spatial branch: x + conv3x3(LeakyReLU(conv3x3(x)))."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


class FourierUnit(nn.Module):
    """A 1x1 convolution in the frequency domain (LaMa's FFC unit): real FFT over H, W; the real and imaginary parts
    of each channel as two channels (re_0, im_0, re_1, im_1, ...); 1x1 conv 2C -> 2C and LeakyReLU; back to a
    complex spectrum and inverse real FFT at the input size. (N, C, H, W) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_layer = nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        spectrum = torch.fft.rfftn(x, dim=(-2, -1), norm=FFT_NORM)                      # N, C, H, W/2+1 complex
        parts = torch.stack([spectrum.real, spectrum.imag], dim=2).flatten(1, 2)         # N, 2C, H, W/2+1
        parts = F.leaky_relu(self.conv_layer(parts), LEAKY_SLOPE).unflatten(1, (-1, 2))  # N, C, 2, H, W/2+1
        spectrum = torch.complex(parts[:, :, 0], parts[:, :, 1])
        return torch.fft.irfftn(spectrum, s=size, dim=(-2, -1), norm=FFT_NORM)


class SpectralTransform(nn.Module):
    """Frequency branch: 1x1 conv C -> C/2 with LeakyReLU, then conv2(y + FourierUnit(y)), a 1x1 conv C/2 -> C."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels // 2, 1), nn.LeakyReLU(LEAKY_SLOPE))
        self.fu = FourierUnit(channels // 2)
        self.conv2 = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(x)
        return self.conv2(y + self.fu(y))


class SFB(nn.Module):
    """Spatial-frequency block: fusion(concat(ResB(x), SpectralTransform(x))), fusion a 1x1 conv 2C -> C."""

    def __init__(self, channels: int):
        super().__init__()
        self.S = ResB(channels)
        self.F = SpectralTransform(channels)
        self.fusion = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fusion(torch.cat([self.S(x), self.F(x)], dim=1))
