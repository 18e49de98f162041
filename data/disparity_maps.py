"""Disparity maps as super-resolution data (DSDMSR, models/dsdmsr.py): readers to (map, valid mask), mask-aware
downsampling, the per-stage targets of deep supervision, and a patch dataset of (LR map, HR map, HR valid mask).

Units: disparity in pixels of the map's own resolution, end to end. A map downsampled by s in both directions has
its values divided by s (a horizontal shift of d HR pixels is d / s LR pixels: standard stereo geometry, not from
the DSDMSR sources).

Holes, honestly:
* Middlebury PFM: inf (any non-finite value) = unknown; SceneFlow PFM: dense (the same rule finds nothing);
  KITTI 16-bit PNG: 0 = no ground truth. `read_disparity_map` returns (map, valid) with the map set to 0 where
  invalid, so no inf/NaN travels further; `valid` says which zeros are real.
* Mask-aware downsampling by s (`downsample_disparity`): an LR pixel is the mean of the *valid* HR pixels of its s x s
  block, divided by s; it is valid when at least one HR pixel of the block is (our choice: the readable part of the
  paper gives no rule, and the third-party code has no masks). An invalid value never enters a mean. Blocks straddling a
  depth edge average the two surfaces (as any area downsampling does).
* The network needs a dense input: LR holes (blocks with no valid HR pixel) are filled with the nearest valid LR
  pixel (`fill_holes`, Euclidean distance, ties as scipy's distance transform breaks them). The LR valid mask is
  kept alongside for anyone who wants it; losses and metrics only ever use the HR (or per-stage) valid masks.
* A patch whose HR crop has no valid pixel is never returned: it is redrawn and counted (`skipped`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torch.utils.data import Dataset

from data.readers import read_kitti_disparity, read_pfm
from models.dsdmsr import downsample_disparity, n_stages

PathLike = str | os.PathLike

MAP_SUFFIXES = ('.pfm', '.png')
LR_PATCH = 32                    # LR patch side (pixels) of the training crops; HR side = LR_PATCH x scale
MAX_REDRAWS = 50                 # crops tried for one item before giving up on a folder map (all-invalid crops)


# ---- readers: (map HxW float32 with 0 at invalid pixels, valid HxW bool)

def read_disparity_map(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A ground-truth disparity file -> (disparity HxW float32, valid HxW bool); the map is 0 where invalid.

    .pfm (Middlebury, SceneFlow): invalid = non-finite (Middlebury's inf); .png (KITTI, 16-bit, value / 256):
    invalid = 0. Negative finite PFM values are kept as valid (a signed disparity convention is the caller's)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == '.pfm':
        disparity = read_pfm(path)
        if disparity.ndim != 2:
            raise ValueError(f'{path}: a disparity PFM has one channel, this one has three')
        valid = np.isfinite(disparity)
    elif suffix == '.png':
        disparity = read_kitti_disparity(path)
        valid = disparity > 0
    else:
        raise ValueError(f'{path}: unknown disparity map format {suffix!r} (expected .pfm or a KITTI 16-bit .png)')
    return np.where(valid, disparity, 0).astype(np.float32), valid


# ---- the LR input (the mask-aware downsampling itself: models/dsdmsr.py `downsample_disparity`)

def fill_holes(disparity: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """HxW map with every invalid pixel set to the value of its nearest valid pixel (the network's input must be
    dense). Raises if no pixel is valid."""
    if not valid.any():
        raise ValueError('fill_holes: the map has no valid pixel')
    if valid.all():
        return disparity.astype(np.float32)
    _, (rows, cols) = ndimage.distance_transform_edt(~valid, return_indices=True)
    return disparity[rows, cols].astype(np.float32)


def make_lr_map(hr: np.ndarray, hr_valid: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """HxW HR map (HR pixels) -> (dense LR input (H/s)x(W/s) in LR pixels, LR valid mask before filling).
    H and W must be divisible by `scale` (crop first, e.g. `modcrop`)."""
    lr, lr_valid = downsample_disparity(torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32))[None, None],
                                        torch.from_numpy(np.ascontiguousarray(hr_valid))[None, None], scale)
    lr, lr_valid = lr[0, 0].numpy(), lr_valid[0, 0].numpy()
    return fill_holes(lr, lr_valid), lr_valid


# ---- training patches

class DisparityMapPatches(Dataset):
    """Training patches of disparity maps: items (lr_map, hr_map, hr_valid), float32 tensors of shape (1, H, W):
    the dense LR input (LR pixels, holes filled), the HR map (HR pixels, 0 where invalid) and its valid mask (1/0).
    HR patches are (LR_PATCH x scale) square by default.

    Sources: `folder=None`: synthetic scenes of data/synthetic.py (`render_disparity`: the scenes of `render_pair`
    without textures; either view's exact, dense disparity, the view drawn at random), `length` per epoch, new every
    epoch. Otherwise every .pfm / KITTI .png
    below `folder` whose name matches the glob `pattern` (sorted; e.g. 'disp*.pfm' where views and masks share the
    folder, since any other PNG would be refused as a KITTI map), one random crop per item from map
    `index % n_maps`, `length` items per epoch. Everything random is drawn from
    (seed, epoch, index[, redraw]), so an epoch is the same in every worker and after a resume; call `set_epoch`.
    Augmentation: horizontal and vertical flips (a map on its own has no left/right constraint).

    A crop with no valid HR pixel is redrawn (up to MAX_REDRAWS times) and counted in `skipped`, the redraws of the
    current epoch (one shared-memory slot per item, so DataLoader workers' redraws count too, without races); a map
    that never yields one raises naming the file.
    """

    def __init__(self, scale: int, folder: PathLike | None = None, length: int = 4800, lr_patch: int = LR_PATCH,
                 augment: bool = True, seed: int = 0, pattern: str = '*'):
        n_stages(scale)
        if lr_patch < 1:
            raise ValueError(f'lr_patch must be positive, got {lr_patch}')
        self.scale, self.lr_patch, self.augment, self.seed, self.epoch = scale, lr_patch, augment, seed, 0
        self._redraws = torch.zeros(length, dtype=torch.int32).share_memory_()   # per item, this epoch
        self.files: list[Path] = []
        if folder is not None:
            root = Path(folder)
            if not root.is_dir():
                raise FileNotFoundError(f'disparity map folder not found: {root}')
            self.files = sorted(p for p in root.rglob(pattern) if p.suffix.lower() in MAP_SUFFIXES and p.is_file())
            if not self.files:
                raise FileNotFoundError(f'no disparity maps (.pfm or KITTI .png) matching {pattern!r} below {root}')
        self.length = length
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._redraws.zero_()

    @property
    def skipped(self) -> int:
        """Crops redrawn in this epoch because no HR pixel of theirs was valid (all processes of a DataLoader)."""
        return int(self._redraws.sum())

    def __len__(self) -> int:
        return self.length

    def _synthetic(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        from data.synthetic import render_disparity   # lazy: it imports scikit-image, which map readers need not
        side = self.lr_patch * self.scale
        view = 'left' if rng.random() < 0.5 else 'right'
        disparity = render_disparity(rng, side, side, self.scale, view)   # geometry only: no texture is rendered
        return disparity, np.isfinite(disparity)

    def _crop(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        file_index = index % len(self.files)
        if file_index not in self._cache:
            self._cache[file_index] = read_disparity_map(self.files[file_index])
        disparity, valid = self._cache[file_index]
        side = self.lr_patch * self.scale
        h, w = disparity.shape
        if h < side or w < side:
            raise ValueError(f'{self.files[file_index]}: map {h}x{w} is smaller than the {side}x{side} HR patch '
                             f'(lr_patch {self.lr_patch} x scale {self.scale})')
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        return disparity[top:top + side, left:left + side], valid[top:top + side, left:left + side]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(HR map, HR valid) HxW arrays of item `index`, redrawing crops without a valid pixel."""
        for redraw in range(MAX_REDRAWS):
            rng = np.random.default_rng([self.seed, self.epoch, index, redraw])
            disparity, valid = self._synthetic(rng) if not self.files else self._crop(index, rng)
            if valid.any():
                self._redraws[index] = redraw
                return disparity, valid
        source = self.files[index % len(self.files)] if self.files else 'synthetic scenes'
        raise ValueError(f'{source}: no crop with a valid pixel in {MAX_REDRAWS} draws')

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        hr, valid = self.load(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index, 1 << 20])
            if rng.random() < 0.5:
                hr, valid = hr[:, ::-1], valid[:, ::-1]
            if rng.random() < 0.5:
                hr, valid = hr[::-1], valid[::-1]
        hr = np.where(valid, hr, 0).astype(np.float32)
        lr, _ = make_lr_map(hr, valid, self.scale)
        return tuple(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None] for x in (lr, hr, valid))
