"""What a run trains on: the table of trainsets (`TRAINSETS`, the choices of --trainset), the datasets they build for
each kind of network, and the sampler that lets an epoch resume in its middle."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

from torch.utils.data import Dataset, DistributedSampler

from data.disparity_maps import DisparityMapPatches
from data.patches import PATCH_HEIGHT, PATCH_WIDTH, PatchFolder, PatchList, SceneCrops, StereoPatches, sample_patches
from data.photo_scenes import PhotoStereo
from data.synthetic import SyntheticStereo
from training.config import TrainConfig
from utils import worker_error_message


@dataclass(frozen=True)
class Trainset:
    """One choice of --trainset: a builder per kind of network it can feed (ModelEntry.modality: 'stereo' pairs,
    'disparity_map's), whether its patches are the same every epoch (`fixed`: a teacher cache can hold the
    teachers' outputs on them), and the modalities whose weights it trains for real (else an --export is labelled
    a demo checkpoint), and those it is the default of."""

    name: str
    help: str
    builders: dict[str, Callable[[TrainConfig], Dataset]]
    fixed: bool = False
    real_for: tuple[str, ...] = ()
    default_for: tuple[str, ...] = ()           # the modalities whose --trainset it is when none is given
    modalities: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, 'modalities', tuple(self.builders))


def _maps(config: TrainConfig, folder) -> DisparityMapPatches:
    return DisparityMapPatches(config.scale_factor, folder, config.synthetic_size, config.map_patch, config.augment,
                               config.seed, config.map_pattern)


TRAINSETS = {t.name: t for t in (
    Trainset('patches', 'PNG patches under --trainset_dir (data/prepare_train.py); the default of stereo networks',
             {'stereo': lambda c: PatchFolder(c.trainset_dir, c.scale_factor, c.augment, c.seed)},
             fixed=True, real_for=('stereo',), default_for=('stereo',)),
    Trainset('sample', 'patches of scikit-image\'s Motorcycle pair, built in memory (no download)',
             {'stereo': lambda c: PatchList(sample_patches(c.scale_factor), c.scale_factor, c.augment, c.seed)},
             fixed=True),
    Trainset('synthetic', 'stereo scenes rendered from scikit-image\'s photographs with exact disparity, new every '
                          'epoch (data/synthetic.py; how the demo checkpoint was trained); disparity-map networks: '
                          'the same scenes\' disparity, no images (their default)',
             {'stereo': lambda c: SyntheticStereo(c.scale_factor, c.synthetic_size, c.augment, c.seed),
              'disparity_map': lambda c: _maps(c, None)}, default_for=('disparity_map',)),
    Trainset('photo', 'the synthetic scenes with every surface cut from a photograph (--texture_dir, or the '
                      'packages\' sample photographs; data/photo_scenes.py), exact disparity, new every epoch',
             {'stereo': lambda c: PhotoStereo(c.scale_factor, c.synthetic_size, c.augment, c.seed, c.texture_dir)}),
    Trainset('disparity', 'random crops of the scenes with ground-truth disparity (KITTI PNG, Middlebury/SceneFlow '
                          'PFM) under --trainset_dir, in the test-set layout of data/prepare_test.py; disparity-map '
                          'networks: crops of every .pfm / KITTI .png map below --trainset_dir that matches '
                          '--map_pattern',
             {'stereo': lambda c: SceneCrops(c.trainset_dir, c.scale_factor, c.augment, c.seed),
              'disparity_map': lambda c: _maps(c, c.trainset_dir)},
             real_for=('disparity_map',)),
)}


def stereo_dataset(config: TrainConfig) -> StereoPatches:
    """Stereo patches of --trainset, with --channel_shuffle and --lr_crop."""
    dataset = TRAINSETS[config.trainset].builders['stereo'](config)
    dataset.channel_shuffle = config.channel_shuffle
    if config.lr_crop:
        h, w = dataset.crop = crop_shape(config.lr_crop)
        if h > PATCH_HEIGHT or w > PATCH_WIDTH:
            raise ValueError(f'--lr_crop {config.lr_crop} is larger than the {PATCH_HEIGHT}x{PATCH_WIDTH} LR '
                             f'training patches')
    return dataset


def map_dataset(config: TrainConfig) -> DisparityMapPatches:
    """Disparity-map networks (ModelEntry.modality 'disparity_map'): items (LR map, HR map, HR valid) cropped from
    synthetic maps or from the maps under --trainset_dir. Never the stereo sets, and never Motorcycle (the sample)."""
    if config.lr_crop:
        raise ValueError(f'--lr_crop crops stereo patches; {config.model} crops its maps with --map_patch')
    builder = TRAINSETS[config.trainset].builders.get('disparity_map')
    if builder is None:
        raise ValueError(f'--trainset {config.trainset} holds stereo pairs; {config.model} trains on disparity maps: '
                         f'--trainset synthetic (its default) or --trainset disparity --trainset_dir DIR (.pfm / '
                         f'KITTI .png maps)')
    return builder(config)


def crop_size(text: str) -> str:
    """--lr_crop: 'HxW' with positive integers, kept as text (it is stored in args.json)."""
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'expected HxW in LR pixels, e.g. 16x16, got {text!r}')
    return 'x'.join(str(int(p)) for p in parts)


def crop_shape(text: str) -> tuple[int, int]:
    """(h, w) of a --lr_crop value as `crop_size` stores it."""
    h, w = (int(n) for n in text.split('x'))
    return h, w


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose epoch order can start after the first `skip` samples (mid-epoch resume)."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return super().__len__() - self.skip


def checked(loader):
    """Batches of `loader`; a bad patch file stops the run with its name instead of a worker traceback."""
    try:
        yield from loader
    except (ValueError, OSError) as err:     # also in a worker: the message without the worker's traceback
        raise ValueError(worker_error_message(err)) from None
