"""Model zoo entry point: `build_model(name, scale_factor)` and the shared architecture flags."""
from __future__ import annotations

import argparse

from torch import nn

from models.outputs import Pair, SSRDEFNetOutput
from models.ssrde import SSRDEFNet, SSRDEFNetConfig

MODEL_NAMES = ('ssrdefnet',)


def build_model(name: str = 'ssrdefnet', scale_factor: int = 4, **options) -> nn.Module:
    """Build a network by name. `options` are fields of its config dataclass (e.g. fix_right_cost_volume=True)."""
    if name != 'ssrdefnet':
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODEL_NAMES)}")
    return SSRDEFNet(SSRDEFNetConfig(scale_factor=scale_factor, **options))


def add_model_args(parser: argparse.ArgumentParser, baselines: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """Architecture flags shared by train.py, test_sr.py, test_disp.py and demo.py.

    `baselines`: extra non-network choices of --model that a script supports (test_sr.py: 'bicubic').
    """
    group = parser.add_argument_group('architecture')
    group.add_argument('--model', default='ssrdefnet', choices=MODEL_NAMES + tuple(baselines),
                       help='network to evaluate' + (f' or a baseline ({", ".join(baselines)})' if baselines else ''))
    group.add_argument('--scale_factor', type=int, default=4, choices=(2, 4), help='SR scale (paper: 2 and 4)')
    group.add_argument('--fix_right_cost_volume', action='store_true',
                       help='sample the right-view HR cost volume at the right view\'s own hypotheses instead of the '
                            'left view\'s (official quirk, kept by default because the released weights use it)')
    group.add_argument('--grad_checkpoint', action='store_true',
                       help='training: recompute activations in the backward pass instead of storing them (same '
                            'results, about half the memory, about a third more time)')
    return parser


def model_options(args: argparse.Namespace) -> dict:
    """The config options of `build_model` taken from parsed `add_model_args` flags."""
    return {'fix_right_cost_volume': args.fix_right_cost_volume, 'grad_checkpoint': args.grad_checkpoint}


__all__ = ['MODEL_NAMES', 'Pair', 'SSRDEFNet', 'SSRDEFNetConfig', 'SSRDEFNetOutput', 'add_model_args',
           'build_model', 'model_options']
