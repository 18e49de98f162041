"""Training patches: extraction exactly as iPASSR's GenerateTrainingPatches.m, the patch datasets, and the iPASSR
augmentation (horizontal flip with a left/right swap, vertical flip).

On disk (the layout the authors' loader reads): <trainset_dir>/patches_x<s>/<id>/{hr0,hr1,lr0,lr1}.png.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from data.readers import image_size, read_disparity, read_image_uint8
from data.testsets import find_datasets, list_scenes
from models.imresize import imresize, modcrop

# iPASSR patch geometry, in LR pixels: 30 x 90 patches every 20 pixels, starting at (1-based) index 3.
PATCH_HEIGHT, PATCH_WIDTH = 30, 90
PATCH_STRIDE = 20
PATCH_OFFSET = 2          # 0-based start of the first patch (MATLAB 3:20:end)
PATCH_FILES = ('hr0.png', 'hr1.png', 'lr0.png', 'lr1.png')


def make_hr_lr(left: np.ndarray, right: np.ndarray, scale: int, halve: bool = False):
    """uint8 views -> (hr_left, hr_right, lr_left, lr_right): [halve], modcrop, MATLAB-bicubic LR."""
    if halve:
        left, right = imresize(left, 0.5), imresize(right, 0.5)
    hr = modcrop(left, scale), modcrop(right, scale)
    return hr[0], hr[1], imresize(hr[0], 1 / scale), imresize(hr[1], 1 / scale)


def patch_origins(lr_height: int, lr_width: int) -> Iterator[tuple[int, int]]:
    """0-based LR top-left corners, rows outer and columns inner: MATLAB `for x = 3:20:H-33, for y = 3:20:W-93`."""
    for top in range(PATCH_OFFSET, lr_height - PATCH_HEIGHT - 3, PATCH_STRIDE):
        for left in range(PATCH_OFFSET, lr_width - PATCH_WIDTH - 3, PATCH_STRIDE):
            yield top, left


def extract_patches(hr_left, hr_right, lr_left, lr_right, scale: int) -> Iterator[tuple[np.ndarray, ...]]:
    """(hr0, hr1, lr0, lr1) patches: LR 30x90 and the co-located HR (30s)x(90s)."""
    for top, left in patch_origins(*lr_left.shape[:2]):
        lr = np.s_[top:top + PATCH_HEIGHT, left:left + PATCH_WIDTH]
        hr = np.s_[top * scale:(top + PATCH_HEIGHT) * scale, left * scale:(left + PATCH_WIDTH) * scale]
        yield hr_left[hr], hr_right[hr], lr_left[lr], lr_right[lr]


def augment(hr_left, hr_right, lr_left, lr_right, *disparities, hflip: bool, vflip: bool, channels=None,
            extras=()):
    """iPASSR augmentation on HxWxC arrays. A horizontal flip mirrors both views and swaps them (the mirrored right
    view becomes the left view), which keeps the pair rectified with positive disparities. `channels`: a permutation
    of the colour channels applied to all four arrays alike (NAFSSR's RGB channel shuffle, `flip_RGB`).
    `disparities`: optionally the HxW (left, right) disparity maps, positive in both views: they follow the views
    (mirrored and swapped with them; the values keep their sign, since the mirrored right view's disparity is the
    new left view's). `extras`: (left, right) pairs of HR-sized HxWx3 targets (e.g. a teacher's SR views), treated
    exactly like the HR views (channels, mirror and swap, vertical flip); returned flattened after the disparities.
    """
    if channels is not None:
        hr_left, hr_right, lr_left, lr_right = (x[..., channels] for x in (hr_left, hr_right, lr_left, lr_right))
        extras = tuple((left[..., channels], right[..., channels]) for left, right in extras)
    if hflip:
        hr_left, hr_right = hr_right[:, ::-1], hr_left[:, ::-1]
        lr_left, lr_right = lr_right[:, ::-1], lr_left[:, ::-1]
        disparities = tuple(d[:, ::-1] for d in disparities[::-1])
        extras = tuple((right[:, ::-1], left[:, ::-1]) for left, right in extras)
    if vflip:
        hr_left, hr_right, lr_left, lr_right = (x[::-1] for x in (hr_left, hr_right, lr_left, lr_right))
        disparities = tuple(d[::-1] for d in disparities)
        extras = tuple((left[::-1], right[::-1]) for left, right in extras)
    return (hr_left, hr_right, lr_left, lr_right, *disparities, *(x for pair in extras for x in pair))


class StereoPatches(Dataset):
    """Patches as (hr_left, hr_right, lr_left, lr_right) float32 CHW tensors in [0, 1], followed, for data with
    ground-truth disparity, by (disparity_left, disparity_right): 1xHxW float32 HR-resolution maps in HR pixels,
    positive, NaN where unknown (`load` returns them as HxW arrays after the four views).

    Augmentation is drawn from (seed, epoch, index), so an epoch's data is the same in every process and after a
    resume; call `set_epoch` before each epoch. `channel_shuffle`: also permute the colour channels, one of the six
    permutations uniformly, the same for both views and HR/LR (NAFSSR's recipe; drawn from its own stream, so the
    flips are those of a run without it).

    `extras`: an optional source of per-index HR-sized targets, `extras(index)` -> [(left, right), ...] HxWx3 float
    arrays (the teacher cache: one pair per teacher). They are augmented exactly like the HR views, and items then
    end with (extras_left, extras_right), each (T, 3, H, W) float32 with T = the number of pairs.

    `crop`: (h, w) LR pixels, or None: each item is a random h x w crop of the LR patch and the co-located crop of
    every HR array (views, disparity, extras), drawn from its own stream of (seed, epoch, index) before the flips
    (train.py --lr_crop: small patches for the single-image networks whose steps are costly on a CPU).
    """

    channel_shuffle = False
    crop: tuple[int, int] | None = None
    has_disparity = False          # True: items carry (disparity_left, disparity_right) after the four views
    extras = None                  # Callable[[int], list[tuple[np.ndarray, np.ndarray]]] | None

    def __init__(self, scale: int, augment: bool = True, seed: int = 0):
        self.scale = scale
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def __getitem__(self, index: int):
        views = self.load(index)
        extras = self.extras(index) if self.extras is not None else ()
        if self.crop is not None:
            views, extras = self.random_crop(index, views, extras)
        channels = None
        if self.channel_shuffle:
            channels = np.random.default_rng([self.seed, self.epoch, index, 1]).permutation(3)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            views = augment(*views, hflip=rng.random() < 0.5, vflip=rng.random() < 0.5, channels=channels,
                            extras=extras)
        else:
            views = augment(*views, hflip=False, vflip=False, channels=channels, extras=extras)
        n_maps = len(views) - 4 - 2 * len(extras)
        images = tuple(torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1))).float().div(255)
                       for v in views[:4])
        maps = tuple(torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32))[None] for d in views[4:4 + n_maps])
        if not extras:
            return images + maps
        targets = views[4 + n_maps:]
        return images + maps + tuple(
            torch.from_numpy(np.ascontiguousarray(np.stack(targets[side::2]).transpose(0, 3, 1, 2), dtype=np.float32))
            for side in (0, 1))

    def random_crop(self, index: int, views, extras):
        (h, w), s = self.crop, self.scale
        height, width = views[2].shape[:2]
        if h > height or w > width:
            raise ValueError(f'--lr_crop {h}x{w} is larger than the {height}x{width} LR training patches')
        rng = np.random.default_rng([self.seed, self.epoch, index, 2])
        top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
        lr = np.s_[top:top + h, left:left + w]
        hr = np.s_[top * s:(top + h) * s, left * s:(left + w) * s]
        views = tuple(v[lr] if i in (2, 3) else v[hr] for i, v in enumerate(views))
        return views, [tuple(t[hr] for t in pair) for pair in extras]


class PatchFolder(StereoPatches):
    """Patches stored as <root>/patches_x<s>/<id>/{hr0,hr1,lr0,lr1}.png, sorted by folder name."""

    def __init__(self, root: str | Path, scale: int, augment: bool = True, seed: int = 0):
        super().__init__(scale, augment, seed)
        self.folder = Path(root) / f'patches_x{scale}'
        hint = (f'create it with `python data/prepare_train.py --src <raw Flickr1024+Middlebury> --scale_factor '
                f'{scale} --out {root}`, or train on the built-in sample with `--trainset sample`')
        if not self.folder.is_dir():
            raise FileNotFoundError(f'training patches not found: {self.folder} does not exist; {hint}')
        self.samples = sorted(p for p in self.folder.iterdir() if p.is_dir())
        if not self.samples:
            raise FileNotFoundError(f'training patches not found: {self.folder} is empty; {hint}')

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        """SHA-256 of every patch file's name, size and modification time (a stat per file, no pixels read): what
        a teacher cache built on these patches checks (data/teacher_cache.py)."""
        digest = hashlib.sha256()
        for sample in self.samples:
            for name in PATCH_FILES:
                path = sample / name
                stat = path.stat() if path.is_file() else None
                digest.update(f'{sample.name}/{name} {stat and stat.st_size} {stat and stat.st_mtime_ns}\n'.encode())
        return digest.hexdigest()

    def load(self, index: int) -> tuple[np.ndarray, ...]:
        folder = self.samples[index]
        try:
            views = tuple(read_image_uint8(folder / name) for name in PATCH_FILES)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f'bad training patch {folder}: {err}') from None
        check_patch(views, self.scale, folder)
        return views


class PatchList(StereoPatches):
    """Patches held in memory (the built-in sample and synthetic sets)."""

    def __init__(self, patches: list[tuple[np.ndarray, ...]], scale: int, augment: bool = True, seed: int = 0):
        super().__init__(scale, augment, seed)
        for i, views in enumerate(patches):
            check_patch(views, scale, f'patch {i}')
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches)

    def fingerprint(self) -> str:
        """SHA-256 of the patches' pixels and shapes (they are in memory)."""
        digest = hashlib.sha256()
        for views in self.patches:
            for view in views:
                digest.update(f'{view.shape} {view.dtype}'.encode())
                digest.update(np.ascontiguousarray(view).tobytes())
        return digest.hexdigest()

    def load(self, index: int) -> tuple[np.ndarray, ...]:
        return self.patches[index]


def check_patch(views: tuple[np.ndarray, ...], scale: int, where) -> None:
    hr_left, hr_right, lr_left, lr_right = views
    if hr_left.shape != hr_right.shape or lr_left.shape != lr_right.shape:
        raise ValueError(f'bad training patch {where}: left and right differ in size '
                         f'(hr {hr_left.shape} vs {hr_right.shape}, lr {lr_left.shape} vs {lr_right.shape})')
    if hr_left.shape[:2] != (lr_left.shape[0] * scale, lr_left.shape[1] * scale):
        raise ValueError(f'bad training patch {where}: HR {hr_left.shape[:2]} is not {scale}x LR {lr_left.shape[:2]}; '
                         f'patches of another scale?')


def sample_patches(scale: int) -> list[tuple[np.ndarray, ...]]:
    """Patches of scikit-image's Middlebury Motorcycle pair (no download). The pair is already reduced, so it is not
    halved first (it would leave no 90-pixel-wide LR patch at x4): 25 patches at x4, 154 at x2."""
    from skimage import data as skdata
    left, right, _ = skdata.stereo_motorcycle()
    return list(extract_patches(*make_hr_lr(left, right, scale), scale))


class SceneCrops(StereoPatches):
    """Random LR 30x90 crops (and the co-located HR crops and ground-truth disparity) of whole scenes with
    disparity ground truth, stored in the test-set layout (data/prepare_test.py; data/testsets.py):
    <root>/<Dataset>/hr/<scene>/{hr0,hr1}.png + dispocc0.png (KITTI) or disp0GT.pfm (Middlebury, SceneFlow PFM),
    <root>/<Dataset>/lr_x<s>/<scene>/{lr0,lr1}.png. Only the left view has ground truth: the right map is unknown
    (NaN), and after a horizontal flip (which swaps the views) the known map is the right one. Unknown pixels
    (KITTI 0, PFM inf) are NaN. An epoch has as many crops as the iPASSR grid would cut from the scenes, each at a
    random position drawn from (seed, epoch, index); scenes are read from disk per crop (no cache)."""

    has_disparity = True

    def __init__(self, root: str | Path, scale: int, augment: bool = True, seed: int = 0):
        super().__init__(scale, augment, seed)
        self.scenes = [scene for name in find_datasets(Path(root)) for scene in list_scenes(Path(root) / name, scale)
                       if scene.has_disparity]
        if not self.scenes:
            raise FileNotFoundError(f'no scene with disparity ground truth under {root} (expected '
                                    f'<Dataset>/hr/<scene>/dispocc0.png or disp0GT.pfm; make the layout with '
                                    f'`python data/prepare_test.py --preset ... --scale_factor {scale}`)')
        self.sizes = [image_size(scene.lr[0]) for scene in self.scenes]
        for scene, (h, w) in zip(self.scenes, self.sizes):
            if h < PATCH_HEIGHT or w < PATCH_WIDTH:
                raise ValueError(f'{scene.lr[0]} is {w}x{h}, smaller than a {PATCH_WIDTH}x{PATCH_HEIGHT} LR patch')
        self.length = sum(max(1, len(list(patch_origins(h, w)))) for h, w in self.sizes)

    def __len__(self) -> int:
        return self.length

    def load(self, index: int):
        k = index % len(self.scenes)
        scene, (h, w) = self.scenes[k], self.sizes[k]
        rng = np.random.default_rng([self.seed, self.epoch, index, 3])
        top, left = int(rng.integers(h - PATCH_HEIGHT + 1)), int(rng.integers(w - PATCH_WIDTH + 1))
        s = self.scale
        lr = np.s_[top:top + PATCH_HEIGHT, left:left + PATCH_WIDTH]
        hr = np.s_[top * s:(top + PATCH_HEIGHT) * s, left * s:(left + PATCH_WIDTH) * s]
        views = [read_image_uint8(p) for p in (*scene.hr, *scene.lr)]
        check_patch(views, s, scene.hr[0].parent)
        truth = read_disparity(scene.gt_all)
        if truth.shape != views[0].shape[:2]:
            raise ValueError(f'{scene.gt_all}: disparity is {truth.shape[1]}x{truth.shape[0]}, its image '
                             f'{scene.hr[0]} is {views[0].shape[1]}x{views[0].shape[0]}')
        truth = np.where(np.isfinite(truth) & (truth > 0), truth, np.nan).astype(np.float32)
        return (views[0][hr], views[1][hr], views[2][lr], views[3][lr], truth[hr],
                np.full(truth[hr].shape, np.nan, dtype=np.float32))
