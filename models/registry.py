"""The model zoo's table: one `ModelEntry` per network name, filled by `@register_model` in each network's file.

A network file builds its network and describes it here once: how to build it, its training objective, its
authors' training recipe (`Recipe`), its own command-line options (`Option`) and what its authors' checkpoint
files imply (e.g. NAFSSR's BGR input). The scripts only ever read this table, so adding a network is one new file
plus one import line in `models/__init__.py`; no script grows a per-model branch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Recipe:
    """A network's training defaults: its authors' recipe. train.py uses every field as the default of a flag.

    Iteration-based recipes (NAFSSR) set `total_iters`; epoch-based ones (iPASSR, SSRDE-FNet) set `n_epochs`.
    `source` says where the numbers come from (shown in `train.py --help`).
    """

    source: str
    batch_size: int = 12
    optimizer: str = 'adam'                     # 'adam' | 'adamw'
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    amsgrad: bool = False                       # Adam/AdamW's AMSGrad variant
    weight_decay: float = 0.0
    schedule: str = 'step'                      # 'step': lr x gamma every n_steps epochs; 'cosine': per iteration
    n_steps: int = 30
    gamma: float = 0.5
    eta_min: float = 0.0                        # cosine: final learning rate
    n_epochs: int = 80
    total_iters: int = 0                        # > 0: train this many iterations (epochs follow from the data)
    grad_clip: float = 0.0                      # max global gradient norm, 0 = no clipping
    channel_shuffle: bool = False               # the same random RGB permutation for both views and all targets


@dataclass(frozen=True)
class Option:
    """A network's own command-line option: `--<name>`, passed to its builder as keyword `name`."""

    name: str
    kwargs: dict                                # argparse add_argument keyword arguments (help, type, action...)
    # True for options that define what the weights compute (e.g. SSRDE-FNet's fix_right_cost_volume): a project
    # checkpoint records them, and its value wins over the command line when the weights are loaded.
    of_weights: bool = False


# An option several networks take is one definition, shared: `--help` shows it once for all of them
# (models.add_model_args), with its definition's help (tests/test_zoo.py checks that shared names share it).
GRAD_CHECKPOINT_OPTION = Option('grad_checkpoint', dict(
    action='store_true',
    help='training: recompute activations in the backward pass instead of storing them (same results, less memory, '
         'more time; SSRDE-FNet: about half the memory, a third more time)'))


# What a network takes and returns, so that scripts branch on the entry's data, never on a name:
# 'stereo': an LR pair (B, 3, H, W) x 2 -> a StereoOutput (train.py on stereo patches; test_sr.py, demo.py, bench.py);
# 'disparity_map': one LR disparity map (B, 1, h, w) in LR pixels -> a map output with `.stages` and `.fused` in
# pixels (train.py on disparity-map patches, data/disparity_maps.py; test_disp.py scores maps).
MODALITIES = ('stereo', 'disparity_map')
# The script that evaluates each modality (named in the errors of the scripts that cannot).
EVALUATED_BY = {'stereo': 'test_sr.py', 'disparity_map': 'test_disp.py'}


@dataclass(frozen=True)
class ModelEntry:
    """Everything the scripts need to know about one network of the zoo."""

    name: str
    build: Callable[..., nn.Module]             # build(scale_factor, **options) -> network
    criterion: Callable[..., nn.Module]         # criterion(scale_factor, weights) -> loss; .DEFAULT_WEIGHTS
    recipe: Recipe
    scales: tuple[int, ...] = (2, 4)
    options: tuple[Option, ...] = ()
    # Options implied by a checkpoint file that is not the project's own (an authors' release format), e.g.
    # {'channel_order': 'bgr'} for NAFSSR's {'params': ...} files. Project checkpoints record their options in args.
    release_options: Callable[[dict], dict] = field(default=lambda checkpoint: {})
    estimates_disparity: bool = False           # outputs carry disp_left/disp_right (test_disp.py)
    description: str = ''
    paper: str = ''
    title: str = ''                             # how reports write the name (e.g. 'SSRDE-FNet'); default: name
    modality: str = 'stereo'                    # MODALITIES: what it takes and returns
    # Evaluation options that lower peak memory and give the same results (bench.py variant ours_lowmem), e.g.
    # {'isrrescnet_band': 200}
    memory_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.title:
            object.__setattr__(self, 'title', self.name)
        if self.modality not in MODALITIES:
            raise ValueError(f'{self.name}: modality must be one of {MODALITIES}, got {self.modality!r}')


REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add `entry` to the zoo; names are unique."""
    if entry.name in REGISTRY:
        raise ValueError(f'model {entry.name!r} is registered twice')
    REGISTRY[entry.name] = entry
    return entry


def model_entry(name: str) -> ModelEntry:
    """The entry of `name`; a ValueError listing the zoo otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def modality_error(entry: ModelEntry, script: str, modality: str = 'stereo') -> str | None:
    """None when `script` (which runs networks of `modality`) can run `entry`; else the one-line reason, naming the
    script that can, e.g. 'test_sr.py runs stereo networks; dsdmsr super-resolves disparity maps: use test_disp.py'."""
    if entry.modality == modality:
        return None
    what = {'stereo': 'stereo networks (an LR pair in)', 'disparity_map': 'disparity-map networks (one LR map in)'}
    return (f'{script} runs {what[modality]}; {entry.name} is a {entry.modality.replace("_", "-")} network: use '
            f'{EVALUATED_BY[entry.modality]} --model {entry.name}')


def option_values(entry: ModelEntry, values: dict[str, Any]) -> dict[str, Any]:
    """The subset of `values` (e.g. vars(parsed args)) that are options of `entry`, ready for `entry.build`."""
    return {o.name: values[o.name] for o in entry.options if o.name in values}
