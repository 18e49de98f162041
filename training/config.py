"""The configuration of a training run: the typed `TrainConfig`, each field with its role when a run is resumed and
whether the network's recipe gives its default. training/flags.py resolves the command line into it (`resolve_config`:
each field's default < the network's recipe < the checkpoint being resumed < the command line). The checkpoint
stores `TrainConfig.to_dict()` under 'args', in the format of the flat argparse dict it replaced, so checkpoints
written before it still resume."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from data.disparity_maps import LR_PATCH
from models import REGISTRY, model_entry
from models import perceptual as ntire   # the NTIRE 2023 recipe's terms (a TrainConfig field is named perceptual)
from models.registry import option_values



def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what taskset, cgroups and schedulers allow), not the
    machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # (macOS, Windows)
        return os.cpu_count() or 1


# DataLoader workers: 4, or fewer where fewer CPUs are usable (more workers than CPUs only compete, and torch warns
# about it every epoch)
DEFAULT_WORKERS = min(4, usable_cpus())
# The roles of a field when a run is resumed (`resolve_config`): the checkpoint's value of a DEFINITION wins over the
# command line (which is warned about); a SETTING is kept unless the command line gives it (and the change is said).
DEFINITION, SETTING = 'definition', 'setting'
RECIPE = 'recipe'          # the default comes from the network's `Recipe` (models/registry.py)


def _field(default: Any = None, role: str | None = None, recipe: bool = False, factory=None):
    metadata = {'role': role, 'recipe': recipe}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that defines and runs one training run, resolved (no None left where a default exists). Field
    names are the flags' (`train.py --help` says what each does)."""

    # ---- architecture
    model: str = _field('ssrdefnet', DEFINITION)
    scale_factor: int = _field(4, DEFINITION)
    options: dict[str, Any] = _field(role=DEFINITION, factory=dict)   # every network's own options (flat in to_dict)
    # ---- optimisation: the network's recipe unless given
    batch_size: int = _field(role=DEFINITION, recipe=True)
    optimizer: str = _field(role=DEFINITION, recipe=True)
    lr: float = _field(role=DEFINITION, recipe=True)
    betas: tuple[float, float] = _field(role=DEFINITION, recipe=True)
    amsgrad: bool = _field(role=DEFINITION, recipe=True)
    weight_decay: float = _field(role=DEFINITION, recipe=True)
    schedule: str = _field(role=DEFINITION, recipe=True)
    n_steps: int = _field(role=DEFINITION, recipe=True)
    gamma: float = _field(role=DEFINITION, recipe=True)
    eta_min: float = _field(role=DEFINITION, recipe=True)
    n_epochs: int = _field(role=SETTING, recipe=True)
    total_iters: int = _field(role=DEFINITION, recipe=True)
    grad_clip: float = _field(role=DEFINITION, recipe=True)
    channel_shuffle: bool = _field(role=DEFINITION, recipe=True)
    grad_accum: int = _field(1, DEFINITION)
    loss_weight: list[str] = _field(role=DEFINITION, factory=list)
    disp_supervision: float = _field(0.0, DEFINITION)
    disp_supervision_parts: list[str] = _field(role=DEFINITION, factory=list)
    stage: str = _field('joint', DEFINITION)
    skip_nonfinite: int = _field(0, SETTING)
    max_iters_per_epoch: int = _field(0, DEFINITION)
    # ---- the NTIRE 2023 perceptual recipe (models/ntire.py)
    perceptual: bool = _field(False, DEFINITION)
    perceptual_weight: float = _field(ntire.PERCEPTUAL_WEIGHT, DEFINITION)
    perceptual_layers: str = _field(','.join(ntire.PERCEPTUAL_LAYERS), DEFINITION)
    perceptual_distance: str = _field('l1', DEFINITION)
    texture: bool = _field(False, DEFINITION)
    texture_weight: float = _field(ntire.TEXTURE_WEIGHT, DEFINITION)
    texture_layers: str = _field(','.join(ntire.TEXTURE_LAYERS), DEFINITION)
    texture_distance: str = _field('l2', DEFINITION)
    texture_start: int = _field(0, DEFINITION)
    texture_input_norm: bool = _field(True, DEFINITION)
    teacher: list[list[str]] = _field(role=DEFINITION, factory=list)
    distill_weight: float = _field(ntire.DISTILL_WEIGHT, DEFINITION)
    distill_distance: str = _field('l1', DEFINITION)
    teacher_cache: Path | None = _field(None, SETTING)
    teacher_cache_dtype: str = _field('float32', SETTING)
    teacher_cache_rebuild: bool = _field(False)
    vgg_weights: str | None = _field(None, SETTING)
    download_weights: bool = _field(False)
    # ---- data
    trainset: str = _field(None, DEFINITION)             # None: the task's default (`resolve_config`)
    synthetic_size: int = _field(4800, DEFINITION)
    map_patch: int = _field(LR_PATCH, DEFINITION)
    map_pattern: str = _field('*', DEFINITION)
    trainset_dir: Path = _field(Path('./data/train/Flickr1024_patches'), DEFINITION)
    texture_dir: Path | None = _field(None, DEFINITION)    # --trainset photo: photographs to texture with
    augment: bool = _field(True, DEFINITION)
    lr_crop: str | None = _field(None, DEFINITION)
    num_workers: int = _field(DEFAULT_WORKERS, SETTING)
    # ---- checkpoints, logging, validation
    checkpoint_dir: Path | None = _field(None)
    run_name: str | None = _field(None)
    resume: Path | None = _field(None)
    init: Path | None = _field(None, DEFINITION)
    save_every: int = _field(0, SETTING)
    val_dir: Path | None = _field(None, SETTING)
    val_every: int = _field(0, SETTING)
    export: Path | None = _field(None, SETTING)
    stop_after: int = _field(0)
    # ---- runtime
    device: str = _field('cpu')
    amp: bool = _field(False, DEFINITION)
    debug: bool = _field(False)
    amp_dtype: str = _field('bfloat16', DEFINITION)
    seed: int = _field(1234, DEFINITION)
    deterministic: bool = _field(False)

    def to_dict(self) -> dict:
        """The flat, plain dict stored as args.json and in checkpoints ('args'): paths as text, options inline."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == 'options':
                out.update(value)
            else:
                out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    @property
    def model_options(self) -> dict:
        """The options of this network, ready for `build_model`."""
        return option_values(model_entry(self.model), self.options)


OPTION_NAMES = tuple(sorted({o.name for entry in REGISTRY.values() for o in entry.options}))
PATH_FIELDS = tuple(f.name for f in fields(TrainConfig) if 'Path' in str(f.type))
