"""Build test sets in the authors' layout from the raw datasets, without MATLAB.

    python data/prepare_test.py --preset kitti2012 --src /datasets/KITTI2012/training --scale_factor 4 --out ./data/test

For every stereo pair: [Middlebury only: halve with MATLAB bicubic] -> modcrop to a multiple of the scale = HR ->
MATLAB-bicubic downscale (imresize.imresize, uint8 rounded as MATLAB does) = LR. Written as
<out>/<Dataset>/hr/<scene>/{hr0,hr1}.png and <out>/<Dataset>/lr_x<s>/<scene>/{lr0,lr1}.png (see data/testsets.py).

Presets and the raw layouts they read:
  kitti2012   RAW/colored_0/NNNNNN_10.png, RAW/colored_1/... ; ground truth RAW/disp_occ, RAW/disp_noc
  kitti2015   RAW/image_2/NNNNNN_10.png, RAW/image_3/... ;     ground truth RAW/disp_occ_0, RAW/disp_noc_0
  middlebury  RAW/<scene>/im0.png, im1.png (2014; or view1.png, view5.png for 2005/2006);
              ground truth RAW/<scene>/disp0GT.pfm or disp0.pfm, optional mask0nocc.png
  flickr1024  RAW/NNNN_L.png, RAW/NNNN_R.png
With ground truth (KITTI *training* folders), the disparity set of the official test_disp.py is written too
(K2012 / K2015: hr/<scene>/{hr0,hr1,dispocc0,dispnoc0}.png, the ground truth cropped like the HR images).
Middlebury ground truth goes into the Middlebury set itself (disp0GT.pfm, mask0nocc.png), halved with the images.
A --src that is already in the authors' layout (has hr/) is used as is: its lr_x<s> folder is made when it is
missing (an incomplete one is refused, or remade whole with --overwrite).

Existing output is refused: when <out>/<Dataset> (or the KITTI disparity set) already holds files, the script stops
before any work and names it, since it may be a test set downloaded from the authors; --overwrite replaces it whole.
Every dataset folder is written into a temporary folder beside it (<out>/.partial-*) and renamed into place at the
end, so a run that fails or is interrupted leaves the previous output untouched and no temporary folder behind.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from data.readers import (read_disparity, read_image_uint8, write_image, write_kitti_disparity,  # noqa: E402
                          write_pfm)
from data.staging import holds_output, staged_output  # noqa: E402
from data.testsets import KITTI_GT, PFM_GT  # noqa: E402
from models.imresize import imresize, modcrop  # noqa: E402
from utils import UsageError, run_script  # noqa: E402

log = logging.getLogger('prepare_test')


@dataclass
class RawPair:
    name: str
    left: Path
    right: Path
    gt_all: Path | None = None      # disparity of the left view (KITTI PNG or PFM)
    gt_noc: Path | None = None      # KITTI non-occluded disparity PNG, or Middlebury non-occlusion mask PNG


@dataclass
class Preset:
    dataset: str                    # SR test-set folder name
    disparity_dataset: str | None   # separate disparity set (KITTI), or None: ground truth stays in the SR set
    find: Callable[[Path], list[RawPair]]
    halve: bool = False


def kitti_finder(left_dir: str, right_dir: str, occ_dir: str, noc_dir: str) -> Callable[[Path], list[RawPair]]:
    def find(src: Path) -> list[RawPair]:
        lefts = sorted((src / left_dir).glob('*_10.png'))
        if not lefts:
            raise FileNotFoundError(f'no {left_dir}/*_10.png under {src}: is it a KITTI training/testing folder?')
        pairs = []
        for left in lefts:
            right = src / right_dir / left.name
            if not right.is_file():
                raise FileNotFoundError(f'missing right view {right}')
            occ, noc = src / occ_dir / left.name, src / noc_dir / left.name
            pairs.append(RawPair(left.stem, left, right, occ if occ.is_file() else None,
                                 noc if noc.is_file() else None))
        return pairs
    return find


def find_middlebury(src: Path) -> list[RawPair]:
    pairs = []
    for scene in sorted(p for p in src.iterdir() if p.is_dir()):
        for left_name, right_name in (('im0.png', 'im1.png'), ('view1.png', 'view5.png')):
            if (scene / left_name).is_file():
                right = scene / right_name
                if not right.is_file():
                    raise FileNotFoundError(f'missing right view {right}')
                gt = next((scene / n for n in ('disp0GT.pfm', 'disp0.pfm') if (scene / n).is_file()), None)
                mask = scene / 'mask0nocc.png'
                pairs.append(RawPair(scene.name, scene / left_name, right, gt, mask if mask.is_file() else None))
                break
    if not pairs:
        raise FileNotFoundError(f'no Middlebury scene folders (with im0.png/im1.png or view1.png/view5.png) '
                                f'under {src}')
    return pairs


def find_flickr1024(src: Path) -> list[RawPair]:
    lefts = sorted(src.glob('*_L.png'))
    if not lefts:
        raise FileNotFoundError(f'no *_L.png files under {src}: expected Flickr1024 NNNN_L.png / NNNN_R.png')
    pairs = []
    for left in lefts:
        right = left.with_name(left.name[:-len('_L.png')] + '_R.png')
        if not right.is_file():
            raise FileNotFoundError(f'missing right view {right}')
        pairs.append(RawPair(left.name[:-len('_L.png')], left, right))
    return pairs


PRESETS = {
    'kitti2012': Preset('KITTI2012', 'K2012', kitti_finder('colored_0', 'colored_1', 'disp_occ', 'disp_noc')),
    'kitti2015': Preset('KITTI2015', 'K2015', kitti_finder('image_2', 'image_3', 'disp_occ_0', 'disp_noc_0')),
    'middlebury': Preset('Middlebury', None, find_middlebury, halve=True),
    'flickr1024': Preset('Flickr1024', None, find_flickr1024),
}


def halve_disparity(disparity: np.ndarray) -> np.ndarray:
    """Ground truth at half resolution: 2x2 block means, values halved; a block with any invalid pixel is invalid."""
    h, w = disparity.shape[0] // 2 * 2, disparity.shape[1] // 2 * 2
    blocks = disparity[:h, :w].reshape(h // 2, 2, w // 2, 2)
    valid = (np.isfinite(blocks) & (blocks > 0)).all(axis=(1, 3))
    mean = np.where(valid, np.nan_to_num(blocks, posinf=0).mean(axis=(1, 3)), np.inf)
    return (mean / 2).astype(np.float32)


def halve_mask(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape[0] // 2 * 2, mask.shape[1] // 2 * 2
    return mask[:h, :w].reshape(h // 2, 2, w // 2, 2).all(axis=(1, 3))


def fit(gt: np.ndarray, shape: tuple[int, int], fill) -> np.ndarray:
    """Crop ground truth to the HR image size like modcrop (bottom/right); pad with `fill` if it is smaller."""
    out = np.full(shape, fill, dtype=gt.dtype)
    h, w = min(shape[0], gt.shape[0]), min(shape[1], gt.shape[1])
    out[:h, :w] = gt[:h, :w]
    return out


def write_pair(dataset_dir: Path, name: str, hr: tuple[np.ndarray, np.ndarray], scale: int) -> None:
    for view, img in enumerate(hr):
        write_image(dataset_dir / 'hr' / name / f'hr{view}.png', img)
        write_image(dataset_dir / f'lr_x{scale}' / name / f'lr{view}.png', imresize(img, 1 / scale))


def prepare_pair(pair: RawPair, preset: Preset, out_dir: Path, dataset: str, scale: int, halve: bool) -> None:
    views = [read_image_uint8(pair.left), read_image_uint8(pair.right)]
    if views[0].shape != views[1].shape:
        raise ValueError(f'{pair.left} and {pair.right} differ in size: {views[0].shape} vs {views[1].shape}')
    if halve:
        views = [imresize(v, 0.5) for v in views]
    hr = (modcrop(views[0], scale), modcrop(views[1], scale))
    write_pair(out_dir / dataset, pair.name, hr, scale)
    if pair.gt_all is None:
        return
    shape = hr[0].shape[:2]
    gt = read_disparity(pair.gt_all)
    if preset.disparity_dataset is not None:  # KITTI: a separate disparity set, as the official test_disp.py reads
        disp_dir = out_dir / preset.disparity_dataset
        write_pair(disp_dir, pair.name, hr, scale)
        write_kitti_disparity(disp_dir / 'hr' / pair.name / KITTI_GT[0], fit(gt, shape, 0))
        if pair.gt_noc is not None:
            noc = read_disparity(pair.gt_noc)
            write_kitti_disparity(disp_dir / 'hr' / pair.name / KITTI_GT[1], fit(noc, shape, 0))
        return
    mask = read_image_uint8(pair.gt_noc)[:, :, 0] == 255 if pair.gt_noc is not None else None
    if halve:
        gt = halve_disparity(gt)
        mask = halve_mask(mask) if mask is not None else None
    scene_dir = out_dir / dataset / 'hr' / pair.name
    write_pfm(scene_dir / PFM_GT[0], fit(gt, shape, np.inf))
    if mask is not None:
        write_image(scene_dir / PFM_GT[1], fit(mask, shape, False).astype(np.uint8) * 255)


def complete_authors_layout(dataset_dir: Path, scale: int, overwrite: bool = False) -> int:
    """Make the lr_x<s> folder of a folder already in the authors' layout, whole: when it is missing, or with
    `overwrite` (replacing it). A complete one is left alone; an incomplete one is refused (it would mix images of two
    makings). Returns how many images were made."""
    scenes = sorted(p for p in (dataset_dir / 'hr').iterdir() if p.is_dir())
    lr_dir = dataset_dir / f'lr_x{scale}'
    wanted = [lr_dir / scene.name / f'lr{view}.png' for scene in scenes for view in range(2)]
    if holds_output(lr_dir) and not overwrite:
        missing = [path for path in wanted if not path.is_file()]
        if not missing:
            return 0
        raise UsageError(f'{lr_dir} lacks {len(missing)} of its {len(wanted)} images (e.g. {missing[0]}); '
                         f'--overwrite remakes the whole folder from hr/')
    with staged_output(dataset_dir, [lr_dir.name]) as staging:
        for scene in tqdm(scenes, desc=dataset_dir.name):
            for view in range(2):
                hr = read_image_uint8(scene / f'hr{view}.png')
                if hr.shape[0] % scale or hr.shape[1] % scale:
                    raise ValueError(f'{scene / f"hr{view}.png"} is {hr.shape[0]}x{hr.shape[1]}, not a multiple of '
                                     f'{scale}; the authors\' layout expects modcropped HR images')
                write_image(staging / lr_dir.name / scene.name / f'lr{view}.png', imresize(hr, 1 / scale))
    return len(wanted)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', choices=sorted(PRESETS), help='raw dataset layout (not needed when --src '
                        'is already in the authors\' layout)')
    parser.add_argument('--src', type=Path, required=True, help='raw dataset folder (for KITTI: training or testing)')
    parser.add_argument('--scale_factor', type=int, default=4, choices=(2, 4), help='SR scale of the LR images')
    parser.add_argument('--out', type=Path, default=Path('./data/test'),
                        help='test-set root to write into; a dataset folder there that already holds files is refused '
                             '(see --overwrite)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace existing dataset folders under --out whole (default: refuse them; a folder in '
                             'the authors\' layout: remake its lr_x<s> whole). The old output stays until the new one '
                             'is complete')
    parser.add_argument('--name', help='dataset folder name (default: the preset\'s, e.g. KITTI2012)')
    parser.add_argument('--scenes', help='comma-separated scene names to keep (default: all pairs found)')
    parser.add_argument('--halve', action=argparse.BooleanOptionalAction, default=None,
                        help='halve the raw images with MATLAB bicubic first (default: only for middlebury)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if (args.src / 'hr').is_dir():
        made = complete_authors_layout(args.src, args.scale_factor, args.overwrite)
        log.info(f'{args.src} is already in the authors\' layout; ' + (
            f'made its {made} lr_x{args.scale_factor} images' if made else
            f'its lr_x{args.scale_factor} images are all there (--overwrite remakes them)'))
        return
    if args.preset is None:
        raise UsageError(f'{args.src} is not in the authors\' layout (no hr/ folder); choose a --preset')
    if not args.src.is_dir():
        raise FileNotFoundError(f'--src {args.src} is not a folder')
    preset = PRESETS[args.preset]
    pairs = preset.find(args.src)
    if args.scenes:
        wanted = set(args.scenes.split(','))
        unknown = wanted - {p.name for p in pairs}
        if unknown:
            raise UsageError(f'--scenes names not found under {args.src}: {sorted(unknown)}')
        pairs = [p for p in pairs if p.name in wanted]
    dataset = args.name or preset.dataset
    halve = preset.halve if args.halve is None else args.halve
    with_gt = sum(p.gt_all is not None for p in pairs)
    names = [dataset] + ([preset.disparity_dataset] if with_gt and preset.disparity_dataset else [])
    existing = [str(args.out / name) for name in names if holds_output(args.out / name)]
    if existing and not args.overwrite:
        raise UsageError(f'{" and ".join(existing)} already hold{"s" if len(existing) == 1 else ""} a test set; '
                         f'--overwrite replaces {"it" if len(existing) == 1 else "them"} whole, or choose another '
                         f'--out or --name')
    with staged_output(args.out, names) as staging:
        for pair in tqdm(pairs, desc=f'{dataset} x{args.scale_factor}'):
            prepare_pair(pair, preset, staging, dataset, args.scale_factor, halve)
    log.info(f'wrote {len(pairs)} pairs to {args.out / dataset}' + (
        f', {with_gt} with ground truth to {args.out / (preset.disparity_dataset or dataset)}' if with_gt else ''))


if __name__ == '__main__':
    sys.exit(run_script(main))
