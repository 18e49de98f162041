"""The model zoo: `build_model(name, scale_factor, **options)`, the list of names and the shared argparse flags.

Each network lives in its own file or package and registers itself (models/registry.py). Adding a network is one
new file plus one import line below.
"""
from __future__ import annotations

import argparse

from torch import nn

# ---- the zoo: one import per network file (each registers its names)
from models import ssrdefnet  # noqa: F401  ssrdefnet
from models import nafssr  # noqa: F401  nafssr-t, nafssr-s, nafssr-b, nafssr-l
from models import ipassr  # noqa: F401  ipassr
from models import isrrescnet  # noqa: F401  isrrescnet
from models import srnet  # noqa: F401  srnet
from models import dsdmsr  # noqa: F401  dsdmsr (disparity maps, not stereo pairs: ModelEntry.modality)
from models import cvhssr  # noqa: F401  cvhssr-t, cvhssr-s
from models import ehfssr  # noqa: F401  ehfssr-s, ehfssr
from models import scglanet  # noqa: F401  scglanet (x4)
from models import swinfirssr  # noqa: F401  swinfirssr
# ----
from models.outputs import Pair, StereoOutput, StereoSROutput
from models.registry import REGISTRY, ModelEntry, model_entry, option_values

MODEL_NAMES = tuple(REGISTRY)
# networks that take an LR stereo pair (test_sr.py, demo.py, bench.py; ModelEntry.modality)
STEREO_MODELS = tuple(name for name, entry in REGISTRY.items() if entry.modality == 'stereo')
# networks that super-resolve one disparity map (test_disp.py)
MAP_MODELS = tuple(name for name, entry in REGISTRY.items() if entry.modality == 'disparity_map')
# networks that estimate disparity from a pair (test_disp.py)
DISPARITY_MODELS = tuple(name for name, entry in REGISTRY.items() if entry.estimates_disparity)


def build_model(name: str = 'ssrdefnet', scale_factor: int = 4, **options) -> nn.Module:
    """Build network `name` of the zoo for `scale_factor`; `options` are its own options (see `add_model_args`)."""
    entry = model_entry(name)
    if scale_factor not in entry.scales:
        raise ValueError(f"{name} is defined for scale factors {', '.join(map(str, entry.scales))}, "
                         f"got {scale_factor}")
    model = entry.build(scale_factor, **options)
    model.zoo_name = name
    return model


def add_model_args(parser: argparse.ArgumentParser, baselines: tuple[str, ...] = (),
                   default: str = 'ssrdefnet', names: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """Architecture flags shared by train.py, test_sr.py, test_disp.py, demo.py and bench.py: --model, --scale_factor
    and every network's own options (each applies to its network only).

    `baselines`: extra non-network choices of --model that a script supports (test_sr.py: 'bicubic');
    `names`: the networks a script supports (default: the whole zoo).
    """
    names = MODEL_NAMES if names is None else names
    group = parser.add_argument_group('architecture')
    group.add_argument('--model', default=default, choices=tuple(names) + tuple(baselines),
                       help='network of the zoo' + (f' or a baseline ({", ".join(baselines)})' if baselines else ''))
    scales = sorted({s for name in names for s in REGISTRY[name].scales})
    group.add_argument('--scale_factor', type=int, default=4, choices=scales,
                       help='SR scale (stereo papers: 2 and 4; each network lists its own in models/)')
    # each network's own options, in a group per set of networks that share them (one screen of --help each)
    owners: dict[str, list[str]] = {}
    for name, entry in REGISTRY.items():
        for option in entry.options:
            owners.setdefault(option.name, []).append(name)
    groups = {}
    for entry in REGISTRY.values():
        for option in entry.options:
            key = ', '.join(owners[option.name])
            if option.name in groups.get(key, ((), None))[0]:
                continue
            if key not in groups:
                groups[key] = (set(), parser.add_argument_group(f'options of {key} (ignored by other networks)'))
            groups[key][0].add(option.name)
            groups[key][1].add_argument('--' + option.name, **option.kwargs)
    return parser


def model_options(args: argparse.Namespace) -> dict:
    """The options of `args.model` taken from parsed `add_model_args` flags (empty for a baseline)."""
    if args.model not in REGISTRY:
        return {}
    return option_values(REGISTRY[args.model], vars(args))


__all__ = ['DISPARITY_MODELS', 'MAP_MODELS', 'MODEL_NAMES', 'STEREO_MODELS', 'ModelEntry', 'Pair', 'StereoOutput',
           'StereoSROutput', 'add_model_args', 'build_model', 'model_entry', 'model_options']
