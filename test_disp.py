"""Disparity evaluation on every test set with ground truth (K2012/K2015 of the official test_disp.py, and any
Middlebury-style set with PFM ground truth).

    python test_disp.py --scale_factor 4 --checkpoint checkpoints/SSRDEF_4xSR_epoch80.pth.tar --testset_dir ./data/test

Official table: mean absolute error (EPE, HR pixels) of the left view's disparities: the HR cost-volume disparity
("high") and the upsampled PAM disparity, of recursion 2 ("1") and recursion 1 ("0"), on all pixels (dispocc0) and
non-occluded pixels (dispnoc0), over 0 < gt < 192, after the official [0, 192] clamp. Per image, then averaged.
Added: >1 px and >3 px error rates and KITTI D1 (> 3 px and > 5 %) of the final HR disparity.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.readers import write_image, write_kitti_disparity
from data.testsets import find_datasets, list_scenes, load_ground_truth, load_pair
from models import DISPARITY_MODELS, add_model_args
from models.ssrdefnet.cost_volume import MAX_DISPARITY
from utils import (UsageError, add_device_args, bad_pixel_rate, colorize, d1_error, describe_checkpoint, epe,
                   load_model, resolve_device, run_script, save_figure)

log = logging.getLogger('test_disp')
OFFICIAL_CHECKPOINT = Path('checkpoints/SSRDEF_4xSR_epoch80.pth.tar')
# The four disparities of the official table, in its column order: HR cost volume of recursion 2 ("disp high ..1")
# and 1 ("..0"), upsampled PAM disparity of recursion 2 ("disp ..1") and 1 ("..0").
ESTIMATES = ('hr_r2', 'hr_r1', 'lr_r2', 'lr_r1')
ERROR_MAP_MAX = 5.0  # px, top of the error-map colour scale


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, names=DISPARITY_MODELS)
    parser.add_argument('--checkpoint', type=Path, default=None,
                        help=f'weights: the authors\' release or a project checkpoint (default: {OFFICIAL_CHECKPOINT})')
    parser.add_argument('--testset_dir', type=Path, default=Path('./data/test/'), help='root of the test sets')
    parser.add_argument('--datasets', default=None,
                        help='comma-separated dataset folders (default: every set with disparity ground truth)')
    parser.add_argument('--results_dir', type=Path, default=Path('results'), help='where pictures are saved')
    parser.add_argument('--run_name', default=None, help='sub-folder of --results_dir (default: from the weights)')
    parser.add_argument('--no_save', action='store_true', help='do not write disparity pictures')
    parser.add_argument('--json', type=Path, default=None, help='write every number to this JSON file')
    add_device_args(parser)
    return parser.parse_args(argv)


def estimates_of(out) -> dict[str, torch.Tensor]:
    """The four left-view disparities (1, sH, sW) in HR pixels, clamped to [0, 192] as the official test mode."""
    return {'hr_r2': out.disp_hr[1].left[0, 0], 'hr_r1': out.disp_hr[0].left[0, 0],
            'lr_r2': out.disp_lr[1].left[0, 0], 'lr_r1': out.disp_lr[0].left[0, 0]}


def valid_mask(gt: torch.Tensor) -> torch.Tensor:
    """Pixels the official script evaluates: 0 < gt < 192 (also drops Middlebury's inf for unknown)."""
    return torch.isfinite(gt) & (gt > 0) & (gt < MAX_DISPARITY)


def scene_metrics(estimates: dict, gt_all: torch.Tensor, gt_noc: torch.Tensor) -> dict:
    metrics = {}
    for region, gt in (('all', gt_all), ('noc', gt_noc)):
        mask = valid_mask(gt)
        for key in ESTIMATES:
            metrics[f'epe_{region}_{key}'] = epe(estimates[key], gt, mask)
        final = estimates['hr_r2']
        metrics[f'epe_{region}'] = metrics[f'epe_{region}_hr_r2']
        metrics[f'bad1_{region}'] = bad_pixel_rate(final, gt, mask, 1.0)
        metrics[f'bad3_{region}'] = bad_pixel_rate(final, gt, mask, 3.0)
        metrics[f'd1_{region}'] = d1_error(final, gt, mask)
    return metrics


def save_pictures(out_dir: Path, name: str, left: np.ndarray, disparity: np.ndarray, gt: np.ndarray) -> None:
    """Colour-coded disparity, error map, a figure with colour bars, and the raw disparity as a KITTI 16-bit PNG."""
    valid = np.isfinite(gt) & (gt > 0) & (gt < MAX_DISPARITY)
    top = float(np.percentile(gt[valid], 99)) if valid.any() else float(disparity.max())
    error = np.where(valid, np.abs(disparity - gt), np.nan)
    write_kitti_disparity(out_dir / f'{name}_disp16.png', disparity)
    write_image(out_dir / f'{name}_disp.png', colorize(disparity, 0, top))
    write_image(out_dir / f'{name}_error.png', colorize(error, 0, ERROR_MAP_MAX, cmap='inferno', invalid=~valid))
    save_figure(out_dir / f'{name}_figure.png', [
        {'title': 'SR left view', 'image': left},
        {'title': 'ground truth', 'map': np.where(valid, gt, np.nan), 'vmin': 0, 'vmax': top, 'label': 'px'},
        {'title': 'predicted disparity (HR, recursion 2)', 'map': disparity, 'vmin': 0, 'vmax': top, 'label': 'px'},
        {'title': f'|error| (EPE {np.nanmean(error):.2f} px)', 'map': error, 'vmin': 0, 'vmax': ERROR_MAP_MAX,
         'cmap': 'inferno', 'label': 'px'},
    ], title=name)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    device = resolve_device(args.device)
    scale = args.scale_factor
    checkpoint = args.checkpoint or OFFICIAL_CHECKPOINT
    if not checkpoint.is_file():
        sys.exit(f'error: checkpoint {checkpoint} not found. Put the authors\' SSRDEF_4xSR_epoch80.pth.tar in '
                 f'checkpoints/, or pass --checkpoint PATH (e.g. checkpoints/ssrdefnet_demo_x4.pth)')
    try:
        model, meta = load_model(checkpoint, scale, device, args.model, vars(args))
        present = find_datasets(args.testset_dir)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    run_name = args.run_name or f'{checkpoint.name.split(".")[0]}_x{scale}'
    names = args.datasets.split(',') if args.datasets else present
    unknown = [n for n in names if n not in present]
    if unknown:
        raise UsageError(f'--datasets {unknown} not found under {args.testset_dir} (present: {present})')

    weights = describe_checkpoint(checkpoint, meta)
    protocol = ('left-view EPE in HR px over 0 < gt < 192 (all = dispocc0 / PFM, noc = dispnoc0 / PFM & mask0nocc), '
                'disparities clamped to [0, 192]; >1px, >3px, D1 (>3 px and >5 %) of the final HR disparity')
    header = [f'# Disparity x{scale}', f'weights: {weights}', f'protocol: {protocol}', f'device: {device}']
    log.info('\n'.join(header))

    results = {}
    for name in names:
        try:
            scenes = [s for s in list_scenes(args.testset_dir / name, scale) if s.has_disparity]
        except FileNotFoundError as err:
            sys.exit(f'error: {err}')
        if not scenes:
            if args.datasets:
                sys.exit(f'error: {name} has no disparity ground truth (dispocc0.png or disp0GT.pfm)')
            continue
        per_scene = {}
        for scene in tqdm(scenes, desc=name, unit='pair'):
            left, right = (torch.from_numpy(x.transpose(2, 0, 1))[None].to(device) for x in load_pair(scene.lr))
            with torch.inference_mode(), torch.autocast(device.type, enabled=args.amp and device.type == 'cuda'):
                out = model(left, right)
            estimates = {k: v.float().cpu() for k, v in estimates_of(out).items()}
            gt_all, gt_noc = (torch.from_numpy(g) for g in load_ground_truth(scene))
            if gt_all.shape != estimates['hr_r2'].shape:
                sys.exit(f'error: ground truth {scene.gt_all} is {tuple(gt_all.shape)}, the x{scale} HR disparity of '
                         f'{scene.lr[0]} is {tuple(estimates["hr_r2"].shape)}')
            per_scene[scene.name] = scene_metrics(estimates, gt_all, gt_noc)
            if not args.no_save:
                sr_left = out.sr_left[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
                save_pictures(args.results_dir / run_name / 'disparity' / name, scene.name, sr_left,
                              estimates['hr_r2'].numpy(), gt_all.numpy())
        keys = next(iter(per_scene.values()))
        results[name] = {**{k: float(np.mean([s[k] for s in per_scene.values()])) for k in keys},
                         'num_scenes': len(per_scene), 'scenes': per_scene, 'weights': weights,
                         'scale_factor': scale, 'protocol': protocol}
    if not results:
        sys.exit(f'error: no dataset with disparity ground truth under {args.testset_dir}; prepare KITTI training '
                 f'pairs with data/prepare_test.py --preset kitti2012/kitti2015')

    lines = ['', *header, '', 'Official table, EPE (px): "high" = HR cost volume, "PAM" = upsampled LR; '
             '1 = recursion 2, 0 = recursion 1',
             '| Dataset | pairs | high all1 | high noc1 | high all0 | high noc0 | PAM all1 | PAM noc1 | PAM all0 | '
             'PAM noc0 |', '|---|---|---|---|---|---|---|---|---|---|']
    for n, r in results.items():
        cells = [f"{r[f'epe_{region}_{key}']:.4f}" for key in ESTIMATES for region in ('all', 'noc')]
        lines.append(f"| {n} | {r['num_scenes']} | " + ' | '.join(cells) + ' |')
    lines += ['', 'Final HR disparity (recursion 2), standard stereo metrics:',
              '| Dataset | EPE all | EPE noc | >1px all | >3px all | D1 all | >1px noc | >3px noc | D1 noc |',
              '|---|---|---|---|---|---|---|---|---|']
    for n, r in results.items():
        lines.append(f"| {n} | {r['epe_all']:.4f} | {r['epe_noc']:.4f} | {100 * r['bad1_all']:.2f}% | "
                     f"{100 * r['bad3_all']:.2f}% | {100 * r['d1_all']:.2f}% | {100 * r['bad1_noc']:.2f}% | "
                     f"{100 * r['bad3_noc']:.2f}% | {100 * r['d1_noc']:.2f}% |")
    if not args.no_save:
        lines.append(f'Pictures: {args.results_dir / run_name}/disparity/<dataset>/<scene>_{{disp,error,figure}}.png (+ _disp16.png: KITTI 16-bit)')
    print('\n'.join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f'JSON: {args.json}')
    return results


if __name__ == '__main__':
    sys.exit(run_script(main))
