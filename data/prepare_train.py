"""Training patches from the raw Flickr1024 + Middlebury training pairs, as iPASSR's GenerateTrainingPatches.m does,
without MATLAB.

    python data/prepare_train.py --src ./data/train --scale_factor 4 --out ./data/train/Flickr1024_patches

Reads <src>/Middlebury/*.png, then <src>/Flickr1024/*.png (the iPASSR training download: 60 Middlebury and 800
Flickr1024 pairs). As in the MATLAB script: files are paired consecutively in sorted order (left, right); Middlebury
images are first halved with MATLAB bicubic; then HR = modcrop(scale), LR = MATLAB-bicubic downscale; LR patches of
30x90 every 20 pixels from (1-based) index 3, with the co-located HR patches; one running counter over both datasets
gives the folder names <out>/patches_x<s>/000001/{hr0,hr1,lr0,lr1}.png, ...

An existing <out>/patches_x<s> is replaced whole (the patches are a function of --src and the scale alone; no old
patch survives beside new ones). The patches are written into a temporary folder beside it, <out>/.partial-*, renamed
into place at the end: a run that fails or is interrupted leaves the previous patches untouched and no temporary
folder behind.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from data.patches import PATCH_FILES, PATCH_HEIGHT, PATCH_WIDTH, extract_patches, make_hr_lr  # noqa: E402
from data.readers import read_image_uint8, write_image  # noqa: E402
from data.staging import holds_output, staged_output  # noqa: E402
from utils import run_script  # noqa: E402

log = logging.getLogger('prepare_train')
# Source folders in the order of the MATLAB script; Middlebury is halved to Flickr1024's resolution.
SOURCES = (('Middlebury', True), ('Flickr1024', False))


def find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    files = sorted(folder.glob('*.png'))
    if len(files) % 2:
        raise ValueError(f'{folder} holds an odd number of PNG files ({len(files)}); pairs are consecutive files')
    return [(files[i], files[i + 1]) for i in range(0, len(files), 2)]


def main(argv=None) -> int:
    """The script: exit status 0 when every patch is written (the count goes to the log, never to the status)."""
    prepare(argv)
    return 0


def prepare(argv=None) -> int:
    """Write the patches the command line asks for; the number written."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--src', type=Path, default=Path('./data/train'),
                        help='folder holding Middlebury/ and Flickr1024/ with the raw training PNGs')
    parser.add_argument('--scale_factor', type=int, default=4, choices=(2, 4), help='SR scale of the patches')
    parser.add_argument('--out', type=Path, default=Path('./data/train/Flickr1024_patches'),
                        help='patch root; patches go to <out>/patches_x<s>/ (train.py --trainset_dir). An existing '
                             'patches_x<s> is replaced whole, and only once every new patch is written')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')

    jobs = []
    for name, halve in SOURCES:
        folder = args.src / name
        if not folder.is_dir():
            raise FileNotFoundError(f'{folder} not found; --src must hold Middlebury/ and Flickr1024/ (iPASSR '
                                    f'training data)')
        jobs += [(pair, halve) for pair in find_pairs(folder)]
    out = args.out / f'patches_x{args.scale_factor}'
    replaced = holds_output(out)
    count = 0
    with staged_output(args.out, [out.name]) as staging:
        for (left_path, right_path), halve in tqdm(jobs, desc=f'patches x{args.scale_factor}', unit='pair'):
            left, right = read_image_uint8(left_path), read_image_uint8(right_path)
            if left.shape != right.shape:
                raise ValueError(f'{left_path} and {right_path} differ in size; are the files paired correctly?')
            views = make_hr_lr(left, right, args.scale_factor, halve)
            for patch in extract_patches(*views, args.scale_factor):
                count += 1
                for name, img in zip(PATCH_FILES, patch):
                    write_image(staging / out.name / f'{count:06d}' / name, img)
        if not count:   # (an empty set never replaces patches: train.py would find none)
            kept = f'; {out} is left as it was' if replaced else ''
            raise ValueError(f'no patch cut from the {len(jobs)} pairs under {args.src}: LR images must be at least '
                             f'{PATCH_WIDTH + 6}x{PATCH_HEIGHT + 6} pixels{kept}')
    log.info(f'wrote {count} patches from {len(jobs)} pairs to {out}' + (' (replacing the previous ones)'
                                                                          if replaced else ''))
    return count


if __name__ == '__main__':
    sys.exit(run_script(main))
