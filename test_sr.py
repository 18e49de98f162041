"""Stereo SR evaluation with the paper's protocol, on every test set under --testset_dir.

    python test_sr.py --scale_factor 4 --checkpoint checkpoints/SSRDEF_4xSR_epoch80.pth.tar
    python test_sr.py --scale_factor 4 --model bicubic          # the bicubic rows of the tables

Protocol (official test_sr.py + iPASSR evaluation.m): the final SR output (out4), clamped to [0, 1]; PSNR on RGB
with data range 1 over all pixels and channels, no border crop; "Left" = the left view without its 64 leftmost HR
columns; "(L+R)/2" = mean of the full left and right PSNRs. SSIM: evaluation.m's (7x7 box window, valid region,
per channel, averaged). Scores are per scene, then averaged over scenes. Default: float SR images (as the official
result.txt); --quantize: the 8-bit PNGs that are saved (as evaluation.m reads them).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.readers import image_size, read_image_uint8, write_image
from data.testsets import DISPARITY_DATASETS, Scene, find_datasets, list_scenes, load_pair
from models import add_model_args, model_options
from models.inference import super_resolve
from utils import (STEREO_BOUNDARY, add_device_args, describe_checkpoint, imresize, load_model, psnr, quantize,
                   resolve_device, ssim)

log = logging.getLogger('test_sr')
OFFICIAL_CHECKPOINT = Path('checkpoints/SSRDEF_4xSR_epoch80.pth.tar')  # authors' x4 release (file name as shipped)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, baselines=('bicubic',))
    parser.add_argument('--checkpoint', type=Path, default=None,
                        help=f'weights: the authors\' release or a project checkpoint (default: {OFFICIAL_CHECKPOINT})')
    # data
    parser.add_argument('--testset_dir', type=Path, default=Path('./data/test/'), help='root of the test sets')
    parser.add_argument('--datasets', default=None,
                        help='comma-separated dataset folders to evaluate (default: every SR set present; the '
                             f'disparity sets {", ".join(DISPARITY_DATASETS)} only when named here)')
    # protocol
    parser.add_argument('--quantize', nargs='?', const='round', choices=('round', 'truncate'), default=None,
                        help='score 8-bit images instead of floats: "round" = the PNGs this script saves; '
                             '"truncate" = what the official test_sr.py saves (ToPILImage truncates)')
    parser.add_argument('--tta', action='store_true', help='stereo-aware self-ensemble over 4 flips (not the paper)')
    # output
    parser.add_argument('--results_dir', type=Path, default=Path('results'), help='where SR images are saved')
    parser.add_argument('--run_name', default=None, help='sub-folder of --results_dir (default: from the weights)')
    parser.add_argument('--no_save', action='store_true', help='do not write SR images')
    parser.add_argument('--json', type=Path, default=None, help='write every number to this JSON file')
    parser.add_argument('--batch_size', type=int, default=None,
                        help='pairs of equal size run together (default: 4 on CUDA, 1 on CPU)')
    add_device_args(parser)
    return parser.parse_args(argv)


def quantized(img: torch.Tensor, mode: str | None) -> torch.Tensor:
    if mode == 'round':
        return quantize(img)
    if mode == 'truncate':
        return torch.floor(img.clamp(0, 1) * 255) / 255
    return img


def scene_scores(sr: torch.Tensor, hr: torch.Tensor, sr_right: torch.Tensor, hr_right: torch.Tensor) -> dict:
    """The four numbers of one scene; all inputs (3, H, W) in [0, 1]."""
    left = psnr(sr, hr).item(), ssim(sr, hr).item()
    right = psnr(sr_right, hr_right).item(), ssim(sr_right, hr_right).item()
    return {'psnr_left': psnr(sr, hr, crop_left=STEREO_BOUNDARY).item(),
            'ssim_left': ssim(sr, hr, crop_left=STEREO_BOUNDARY).item(),
            'psnr_avg': (left[0] + right[0]) / 2, 'ssim_avg': (left[1] + right[1]) / 2,
            'psnr_l': left[0], 'psnr_r': right[0]}


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def bicubic_sr(scale: int):
    """SR function of the bicubic baseline: MATLAB imresize of the 8-bit LR files (uint8 in, uint8 out)."""
    def run(scenes: list[Scene]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [tuple(to_tensor(imresize(read_image_uint8(p), scale)).float() / 255 for p in s.lr) for s in scenes]
    return run


def network_sr(model: torch.nn.Module, device: torch.device, tta: bool = False, amp: bool = False):
    """SR function of a network: the final output of a batch of equal-size scenes, clamped, on the CPU."""
    def run(scenes: list[Scene]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = [load_pair(s.lr) for s in scenes]
        left = torch.stack([to_tensor(a) for a, _ in pairs]).to(device)
        right = torch.stack([to_tensor(b) for _, b in pairs]).to(device)
        out = super_resolve(model, left, right, tta=tta, amp=amp)
        return list(zip(out.left.float().cpu(), out.right.float().cpu()))
    return run


def evaluate_dataset(sr_fn, dataset_dir: Path, scale: int, batch_size: int = 1, quantize_mode: str | None = None,
                     save_dir: Path | None = None) -> dict:
    """Scores of one test set: {'psnr_left', 'ssim_left', 'psnr_avg', 'ssim_avg', ..., 'num_scenes', 'scenes'}.

    sr_fn(scenes) -> [(sr_left, sr_right)] (3, sH, sW) in [0, 1]; consecutive scenes of equal LR size are batched.
    Raises FileNotFoundError / ValueError naming the file at fault.
    """
    scenes = list_scenes(dataset_dir, scale)
    per_scene = {}
    bar = tqdm(total=len(scenes), desc=dataset_dir.name, unit='pair')
    for _, group in groupby(scenes, key=lambda s: image_size(s.lr[0])):
        group = list(group)
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            for scene, (sr_l, sr_r) in zip(batch, sr_fn(batch)):
                hr_l, hr_r = (to_tensor(x) for x in load_pair(scene.hr))
                if sr_l.shape != hr_l.shape:
                    raise ValueError(f'{scene.hr[0]} is {tuple(hr_l.shape[1:])}, but the x{scale} SR of '
                                     f'{scene.lr[0]} is {tuple(sr_l.shape[1:])}: HR must be exactly {scale}x the LR')
                sr_l, sr_r = quantized(sr_l, quantize_mode), quantized(sr_r, quantize_mode)
                per_scene[scene.name] = scene_scores(sr_l, hr_l, sr_r, hr_r)
                if save_dir is not None:
                    write_image(save_dir / f'{scene.name}_L.png', sr_l.permute(1, 2, 0).numpy())
                    write_image(save_dir / f'{scene.name}_R.png', sr_r.permute(1, 2, 0).numpy())
                bar.set_postfix(psnr_left=f"{per_scene[scene.name]['psnr_left']:.2f}")
                bar.update()
    bar.close()
    mean = {key: float(np.mean([s[key] for s in per_scene.values()])) for key in next(iter(per_scene.values()))}
    return {**mean, 'num_scenes': len(per_scene), 'scenes': per_scene}


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    device = resolve_device(args.device)
    scale = args.scale_factor
    batch_size = args.batch_size or (4 if device.type == 'cuda' else 1)

    # ---- weights
    if args.model == 'bicubic':
        weights, run_name = 'MATLAB bicubic upsampling of the LR files (no weights)', f'bicubic_x{scale}'
    else:
        checkpoint = args.checkpoint or OFFICIAL_CHECKPOINT
        if not checkpoint.is_file():
            sys.exit(f'error: checkpoint {checkpoint} not found. Put the authors\' SSRDEF_4xSR_epoch80.pth.tar in '
                     f'checkpoints/, or pass --checkpoint PATH (e.g. checkpoints/ssrdefnet_demo_x4.pth, the '
                     f'project\'s demo weights)')
        try:
            model, meta = load_model(checkpoint, scale, device, **model_options(args))
        except (ValueError, FileNotFoundError) as err:
            sys.exit(f'error: {err}')
        weights, run_name = describe_checkpoint(checkpoint, meta), f'{checkpoint.name.split(".")[0]}_x{scale}'
    run_name = args.run_name or run_name

    # ---- datasets
    try:
        present = find_datasets(args.testset_dir)
    except FileNotFoundError as err:
        sys.exit(f'error: {err}')
    if args.datasets:
        names = args.datasets.split(',')
        unknown = [n for n in names if n not in present]
        if unknown:
            sys.exit(f'error: --datasets {unknown} not found under {args.testset_dir} (present: {present})')
    else:
        names = [n for n in present if n not in DISPARITY_DATASETS]
    if not names:
        sys.exit(f'error: no test set under {args.testset_dir}; prepare one with data/prepare_test.py')

    protocol = ('RGB PSNR/SSIM, data range 1, ' + (f'8-bit SR ({args.quantize}ed)' if args.quantize else 'float SR')
                + f', Left = {STEREO_BOUNDARY} leftmost columns removed, (L+R)/2 = mean of full-image scores, '
                  'SSIM = evaluation.m (7x7 box window, valid)' + (', stereo TTA x4' if args.tta else ''))
    header = [f'# Stereo SR x{scale}: {args.model}', f'weights: {weights}', f'protocol: {protocol}',
              f'device: {device}']
    log.info('\n'.join(header))

    sr_fn = bicubic_sr(scale) if args.model == 'bicubic' else network_sr(model, device, args.tta, args.amp)
    results = {}
    for name in names:
        save_dir = None if args.no_save else args.results_dir / run_name / name
        try:
            scores = evaluate_dataset(sr_fn, args.testset_dir / name, scale, batch_size, args.quantize, save_dir)
        except (FileNotFoundError, ValueError) as err:
            sys.exit(f'error: {err}')
        results[name] = {**scores, 'weights': weights, 'scale_factor': scale, 'protocol': protocol}

    # ---- report
    lines = ['', *header, '', '| Dataset | pairs | Left PSNR | Left SSIM | (L+R)/2 PSNR | (L+R)/2 SSIM |',
             '|---|---|---|---|---|---|']
    lines += [f"| {n} | {r['num_scenes']} | {r['psnr_left']:.4f} | {r['ssim_left']:.4f} | {r['psnr_avg']:.4f} | "
              f"{r['ssim_avg']:.4f} |" for n, r in results.items()]
    paper_left = [f"{n} {r['psnr_left']:.2f}/{r['ssim_left']:.4f}" for n, r in results.items() if n != 'Flickr1024']
    paper_avg = [f"{n} {r['psnr_avg']:.2f}/{r['ssim_avg']:.4f}" for n, r in results.items()]
    lines += ['', 'Paper layout (PSNR/SSIM): Left: ' + ', '.join(paper_left) + ' | (L+R)/2: ' + ', '.join(paper_avg)]
    if not args.no_save:
        lines.append(f'SR images: {args.results_dir / run_name}/<dataset>/<scene>_{{L,R}}.png')
    print('\n'.join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f'JSON: {args.json}')
    return results


if __name__ == '__main__':
    main()
