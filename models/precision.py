"""Inference number format (`--precision`): float32, or bfloat16 autocast where the hardware computes in bfloat16.

Under `autocast` the convolutions and matrix products run in bfloat16 (twice the float32 rate on a CPU with AVX-512
BF16, more on a GPU's tensor cores) and the element-wise work between them follows their dtype. What stays float32
inside the networks is promoted there: the parallax-attention scores, softmax and coordinates of SSRDE-FNet and
iPASSR (bfloat16 coordinates, 4 px apart at 740 px, crashed SSRDE-FNet's cost volume), the HR cost volume
(`correlation`, `sample_columns`) and grid_sample (autocast's own float32 list). The scripts turn every output to
float32 before clamping and scoring, so metrics are never computed in bfloat16. Measured: reports/2026-12-07-bf16.md.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

PRECISIONS = ('fp32', 'bf16')


def has_bf16(device: str | torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: CUDA's own check, or the CPU's AVX-512 BF16 / AMX flags
    (elsewhere torch emulates bfloat16 on the CPU, slower than float32)."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != 'cpu':
        return False
    try:
        flags = Path('/proc/cpuinfo').read_text()
    except OSError:
        return False
    return ' avx512_bf16' in flags or ' amx_bf16' in flags


def precision_error(precision: str, device: str | torch.device) -> str | None:
    """Why `precision` cannot run on `device`, in one line (None when it can)."""
    if precision not in PRECISIONS:
        return f'--precision {precision!r}: choose one of {", ".join(PRECISIONS)}'
    if precision == 'bf16' and not has_bf16(device):
        where = ('this CPU has neither AVX-512 BF16 nor AMX, so torch would emulate it, slower than fp32'
                 if torch.device(device).type == 'cpu' else f'{device} does not support bfloat16')
        return f'--precision bf16 needs hardware bfloat16 arithmetic: {where}; use --precision fp32'
    return None


def autocast(device: str | torch.device, precision: str = 'fp32'):
    """The context a network runs in at `precision`: bfloat16 autocast for 'bf16', nothing for 'fp32'."""
    device = torch.device(device)
    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
