"""Test sets in the authors' layout, shared by test_sr.py, test_disp.py and data/prepare_test.py.

    <testset_dir>/<Dataset>/hr/<scene>/hr0.png, hr1.png          HR left/right (modcropped to a multiple of s)
    <testset_dir>/<Dataset>/lr_x<s>/<scene>/lr0.png, lr1.png     LR left/right (MATLAB bicubic of the HR)
    optional ground truth of the left view in hr/<scene>/:
        dispocc0.png, dispnoc0.png     KITTI 16-bit PNG (all / non-occluded pixels)
        disp0GT.pfm [+ mask0nocc.png]  Middlebury-style PFM, mask 255 = non-occluded
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.readers import read_disparity, read_image, read_image_uint8

# Dataset folders of the stereo-SR benchmark, in the order of the paper's table.
SR_DATASETS = ('KITTI2012', 'KITTI2015', 'Middlebury', 'Flickr1024')
# Disparity evaluation sets of the official test_disp.py (KITTI training pairs with ground truth).
DISPARITY_DATASETS = ('K2012', 'K2015')
# Ground-truth files of the left view, by kind: (all valid pixels, non-occluded pixels or mask).
KITTI_GT = ('dispocc0.png', 'dispnoc0.png')
PFM_GT = ('disp0GT.pfm', 'mask0nocc.png')


@dataclass
class Scene:
    name: str
    lr: tuple[Path, Path]
    hr: tuple[Path, Path]
    gt_all: Path | None = None        # disparity ground truth, all valid pixels
    gt_noc: Path | None = None        # KITTI non-occluded ground truth (PNG) or Middlebury mask (PNG)
    extra: dict = field(default_factory=dict)

    @property
    def has_disparity(self) -> bool:
        return self.gt_all is not None


def dataset_order(names: list[str]) -> list[str]:
    """Paper order first (SR sets, then disparity sets), then any other dataset alphabetically."""
    known = [n for n in SR_DATASETS + DISPARITY_DATASETS if n in names]
    return known + sorted(n for n in names if n not in known)


def find_datasets(testset_dir: Path) -> list[str]:
    """Names of the dataset folders (those with an hr/ subfolder) under `testset_dir`, in paper order."""
    testset_dir = Path(testset_dir)
    if not testset_dir.is_dir():
        raise FileNotFoundError(f'test-set folder not found: {testset_dir}. Prepare one with '
                                f'`python data/prepare_test.py --preset ... --src RAW_DIR --out {testset_dir}`')
    return dataset_order([d.name for d in testset_dir.iterdir() if (d / 'hr').is_dir()])


def list_scenes(dataset_dir: Path, scale: int) -> list[Scene]:
    """Scenes of one dataset folder, sorted by name; raises with the path of the first missing file."""
    dataset_dir = Path(dataset_dir)
    hr_dir, lr_dir = dataset_dir / 'hr', dataset_dir / f'lr_x{scale}'
    if not hr_dir.is_dir():
        raise FileNotFoundError(f'{hr_dir} not found: expected the authors\' layout <Dataset>/hr/<scene>/hr0.png')
    if not lr_dir.is_dir():
        raise FileNotFoundError(f'{lr_dir} not found: this dataset has no x{scale} LR images; make them with '
                                f'`python data/prepare_test.py --src {dataset_dir} --scale_factor {scale}`')
    scenes = []
    for scene_dir in sorted(p for p in hr_dir.iterdir() if p.is_dir()):
        scene = Scene(scene_dir.name,
                      lr=(lr_dir / scene_dir.name / 'lr0.png', lr_dir / scene_dir.name / 'lr1.png'),
                      hr=(scene_dir / 'hr0.png', scene_dir / 'hr1.png'))
        for path in (*scene.hr, *scene.lr):
            if not path.is_file():
                raise FileNotFoundError(f'missing file {path} (scene {scene.name} of {dataset_dir.name})')
        if (scene_dir / KITTI_GT[0]).is_file():
            scene.gt_all = scene_dir / KITTI_GT[0]
            scene.gt_noc = scene_dir / KITTI_GT[1] if (scene_dir / KITTI_GT[1]).is_file() else None
        elif (scene_dir / PFM_GT[0]).is_file():
            scene.gt_all = scene_dir / PFM_GT[0]
            scene.gt_noc = scene_dir / PFM_GT[1] if (scene_dir / PFM_GT[1]).is_file() else None
        scenes.append(scene)
    if not scenes:
        raise FileNotFoundError(f'{hr_dir} holds no scene folders')
    return scenes


def ground_truth_files(dataset_dir: Path) -> list[tuple[str, Path]]:
    """(scene, ground-truth file of the left view, all valid pixels: dispocc0.png or disp0GT.pfm) of every scene of a
    dataset folder that has one, sorted by scene. No LR image is needed: disparity-map SR makes its own LR maps."""
    hr_dir = Path(dataset_dir) / 'hr'
    if not hr_dir.is_dir():
        raise FileNotFoundError(f'{hr_dir} not found: expected the authors\' layout <Dataset>/hr/<scene>/')
    found = []
    for scene_dir in sorted(p for p in hr_dir.iterdir() if p.is_dir()):
        path = next((scene_dir / name for name in (KITTI_GT[0], PFM_GT[0]) if (scene_dir / name).is_file()), None)
        if path is not None:
            found.append((scene_dir.name, path))
    return found


def load_pair(paths: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    """Left and right images as HxWx3 float32 in [0, 1] (8-bit / 255, as torchvision's ToTensor)."""
    return read_image(paths[0]), read_image(paths[1])


def load_ground_truth(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(all, non-occluded) ground-truth disparity maps of the left view; 0 or non-finite = not evaluated.

    KITTI: dispocc0 and dispnoc0, as the official test_disp.py reads them. Middlebury: the PFM, and the PFM
    restricted to mask0nocc == 255 (the whole PFM when there is no mask).
    """
    if not scene.has_disparity:
        raise FileNotFoundError(f'scene {scene.name} has no disparity ground truth ({KITTI_GT[0]} or {PFM_GT[0]})')
    gt_all = read_disparity(scene.gt_all)
    if scene.gt_noc is None:
        gt_noc = gt_all
    elif scene.gt_all.suffix == '.png':
        gt_noc = read_disparity(scene.gt_noc)
    else:
        gt_noc = np.where(read_image_uint8(scene.gt_noc)[:, :, 0] == 255, gt_all, 0).astype(np.float32)
    if gt_noc.shape != gt_all.shape:
        raise ValueError(f'{scene.gt_noc}: shape {gt_noc.shape} differs from {scene.gt_all} {gt_all.shape}')
    return gt_all, gt_noc


# --datasets name of the built-in pair: Middlebury 2014 Motorcycle as scikit-image ships it (no download)
SAMPLE = 'sample'


def write_sample_testset(root: Path, scale: int) -> Path:
    """The built-in pair as a one-scene test set under `root` (<root>/sample/{hr,lr_x<s>}/Motorcycle/): scikit-image's
    Motorcycle views (500x741, already reduced from Middlebury's) cropped to a multiple of `scale`, the LR views
    their MATLAB bicubic downscaling of the 8-bit files, as data/prepare_test.py makes them. Returns the set's
    folder."""
    from skimage import data as skdata

    from data.readers import write_image
    from models.imresize import imresize, modcrop
    left, right, _ = skdata.stereo_motorcycle()
    dataset = Path(root) / SAMPLE
    for view, image in enumerate((left, right)):
        hr = modcrop(image, scale)
        write_image(dataset / 'hr' / 'Motorcycle' / f'hr{view}.png', hr)
        write_image(dataset / f'lr_x{scale}' / 'Motorcycle' / f'lr{view}.png', imresize(hr, 1 / scale))
    return dataset
