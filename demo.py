"""Super-resolve a low-resolution stereo pair and estimate its disparity (the project's main job).

    python demo.py                                   # built-in sample: Middlebury Motorcycle, from scikit-image
    python demo.py --left L.png --right R.png        # your own rectified low-resolution pair
    python demo.py --left L.png --right R.png --hr_left HL.png --hr_right HR.png --gt_disp D.pfm
    python demo.py --left L.png --right R.png --tile 64          # large images: bands of 64 LR rows

Without --left/--right the sample pair is made the way the benchmarks make theirs: the HR pair cropped to a multiple
of the scale, the LR pair by MATLAB-exact bicubic downscaling; it is then scored against the HR pair and its
ground-truth disparity. Weights: the project's demo checkpoint (trained on synthetic pairs, NOT the paper's weights)
unless --checkpoint names another one: a file, or an authors' release by name (docs/weights.md), e.g.
    python demo.py --checkpoint cvhssr-t_x4       # CVHSSR_Tx4.pth in checkpoints/ (or --download_weights)

Inputs: PNG or JPEG; RGBA (alpha dropped), greyscale (replicated to RGB) and 16-bit images (scaled to [0, 1]) are
accepted. Pairs smaller than the network's minimum (30x30 LR, even sizes at x2) are padded and cropped back.
Writes to --out: SR and bicubic images, the colour-coded HR disparity (+ a 16-bit KITTI-format PNG), a figure
with a colour bar, a side-by-side comparison figure, and metrics.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data.readers import read_disparity, read_image, read_image_uint8, write_image, write_kitti_disparity
from evaluation import disparity_baselines, scene_scores, to_tensor
from models import MODEL_NAMES, model_entry
from models.registry import modality_error
from models.inference import predict, predict_tiled
from models.ssrdefnet.cost_volume import MAX_DISPARITY
from figures import colorize, save_figure
from metrics import bad_pixel_rate, d1_error, epe
from models.checkpoint import (checkpoint_model_name, describe_checkpoint, infer_scale_factor, load_model,
                               read_checkpoint)
from models.imresize import imresize, modcrop
from utils import (UsageError, add_device_args, add_precision_args, non_negative_int, resolve_device,
                   resolve_precision, run_script)
from weights import resolve_checkpoint

log = logging.getLogger('demo')
DEMO_CHECKPOINT = Path(__file__).resolve().parent / 'checkpoints' / 'ssrdefnet_demo_x4.pth'
# Evaluation-mode peak memory (CPU, float32) = BASE_BYTES (Python, torch, the model) + the network's
# `eval_bytes_per_lr_pixel` x LR pixels (a network that does not state it is not checked).
BASE_BYTES = 650 << 20
# Every file the demo writes into --out; all are removed before a run, so none is left over from an earlier one (e.g.
# the disparity pictures of a network that estimates disparity, after a run of one that does not).
OUTPUTS = ('sr_left.png', 'sr_right.png', 'bicubic_left.png', 'bicubic_right.png', 'disparity_left.png',
           'disparity_left_16bit.png', 'disparity_figure.png', 'comparison.png', 'metrics.json')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--left', type=Path, help='low-resolution left view (default: the built-in sample)')
    parser.add_argument('--right', type=Path, help='low-resolution right view')
    parser.add_argument('--hr_left', type=Path, help='high-resolution left reference: adds PSNR/SSIM')
    parser.add_argument('--hr_right', type=Path, help='high-resolution right reference')
    parser.add_argument('--gt_disp', type=Path,
                        help='ground-truth disparity of the left view at HR resolution (.pfm, KITTI .png or .npy): '
                             'adds EPE, >3px and D1')
    parser.add_argument('--checkpoint', type=Path, default=DEMO_CHECKPOINT,
                        help='weights: a file, or a release name of docs/weights.md (e.g. cvhssr-t_x4, looked for '
                             'in checkpoints/ and the cache folder; implies --model and the scale) (default: the '
                             'project\'s demo checkpoint, not the paper\'s weights)')
    parser.add_argument('--download_weights', action='store_true',
                        help='download a --checkpoint release that is missing (releases with a direct URL, '
                             'docs/weights.md; needs internet). Without it a missing file stops the demo')
    parser.add_argument('--model', default=None, choices=MODEL_NAMES, metavar='NAME',
                        help='network of the zoo (default: the one a project checkpoint records; SSRDE-FNet for an '
                             'authors\' release)')
    parser.add_argument('--scale_factor', type=int, choices=(2, 4), default=None,
                        help='SR scale (default: that of the checkpoint)')
    parser.add_argument('--out', type=Path, default=Path('results/demo'), help='output folder')
    parser.add_argument('--tile', type=non_negative_int, default=0,
                        help='process horizontal bands of this many LR rows (full width), for large images (0: whole)')
    parser.add_argument('--overlap', type=non_negative_int, default=8,
                        help='LR rows shared by neighbouring bands (blended)')
    add_device_args(parser)
    add_precision_args(parser)
    return parser.parse_args(argv)


def to_batch(img: np.ndarray, device) -> torch.Tensor:
    return to_tensor(img)[None].float().to(device)


def to_image(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).cpu().numpy()


def load_inputs(args, scale: int) -> dict:
    """{'name', 'lr': float HxWx3 pair in [0, 1], 'lr_uint8': 8-bit pair (for the bicubic baseline),
    optional 'hr' pair and 'gt' disparity}."""
    if args.left is None and args.right is None:
        from skimage import data as skdata
        left, right, disparity = skdata.stereo_motorcycle()
        hr = modcrop(left, scale), modcrop(right, scale)
        lr = imresize(hr[0], 1 / scale), imresize(hr[1], 1 / scale)
        return {'name': 'Motorcycle (Middlebury 2014, scikit-image sample)', 'lr': (lr[0] / 255, lr[1] / 255),
                'lr_uint8': lr, 'hr': (hr[0] / 255, hr[1] / 255),
                'gt': disparity[:hr[0].shape[0], :hr[0].shape[1]]}
    if args.left is None or args.right is None:
        raise UsageError('give both --left and --right (or neither, for the built-in sample)')
    lr = read_image_uint8(args.left), read_image_uint8(args.right)
    if lr[0].shape != lr[1].shape:
        raise ValueError(f'--left {args.left} is {lr[0].shape[1]}x{lr[0].shape[0]} but --right {args.right} is '
                         f'{lr[1].shape[1]}x{lr[1].shape[0]}: a rectified stereo pair has views of the same size')
    inputs = {'name': f'{args.left.name} / {args.right.name}', 'lr': (read_image(args.left), read_image(args.right))}
    inputs['lr_uint8'] = lr
    if (args.hr_left is None) != (args.hr_right is None):
        raise UsageError('give both --hr_left and --hr_right, or neither')
    expected = (lr[0].shape[0] * scale, lr[0].shape[1] * scale)   # HR size
    if args.hr_left is not None:
        inputs['hr'] = read_image(args.hr_left), read_image(args.hr_right)
        for path, img in zip((args.hr_left, args.hr_right), inputs['hr']):
            if img.shape[:2] != expected:
                raise ValueError(f'{path} is {img.shape[1]}x{img.shape[0]}, but x{scale} SR of the LR pair is '
                                 f'{expected[1]}x{expected[0]}')
    if args.gt_disp is not None:
        inputs['gt'] = read_disparity(args.gt_disp)
        if inputs['gt'].shape != expected:
            raise ValueError(f'--gt_disp {args.gt_disp} is {inputs["gt"].shape[1]}x{inputs["gt"].shape[0]}, '
                             f'expected the HR size {expected[1]}x{expected[0]}')
    return inputs


def available_bytes(device: torch.device) -> int:
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    for line in Path('/proc/meminfo').read_text().splitlines():
        if line.startswith('MemAvailable:'):
            return int(line.split()[1]) * 1024
    return 1 << 62


def check_memory(lr_shape: tuple[int, int], per_pixel: int | None, tile: int, device: torch.device) -> None:
    """Refuse, before starting, a pass that would not fit in memory, and say which --tile would. `per_pixel`: the
    network's evaluation bytes per LR pixel (None: not checked)."""
    if per_pixel is None:
        return
    rows = tile or lr_shape[0]
    need = per_pixel * rows * lr_shape[1] + (BASE_BYTES if device.type == 'cpu' else 0)
    have = available_bytes(device)
    if need > have:
        fits = max(30, int((have - (BASE_BYTES if device.type == 'cpu' else 0)) * 0.8 / (per_pixel * lr_shape[1])))
        raise MemoryError(f'a {lr_shape[1]}x{rows} LR {"band" if tile else "pair"} needs about {need / 2**30:.1f} GiB '
                          f'on {device}, {have / 2**30:.1f} GiB are free: use --tile {fits} (bands of {fits} LR rows)')


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    started = time.time()
    device = resolve_device(args.device)
    precision = resolve_precision(args, device)
    if args.checkpoint == DEMO_CHECKPOINT and not args.checkpoint.is_file():
        raise FileNotFoundError(f'checkpoint {args.checkpoint} not found (the demo checkpoint ships with the '
                                f'repository: checkpoints/ssrdefnet_demo_x4.pth)')
    args.checkpoint, args.model, args.scale_factor, _ = resolve_checkpoint(args.checkpoint, args.model,
                                                                           args.scale_factor, args.download_weights)
    state_dict, stored = read_checkpoint(args.checkpoint)
    reason = modality_error(model_entry(args.model or checkpoint_model_name(stored) or 'ssrdefnet'), 'demo.py')
    if reason:      # a disparity-map network (ModelEntry.modality): the demo runs stereo pairs
        raise UsageError(reason)
    scale = args.scale_factor or infer_scale_factor(state_dict) or 4
    model, meta = load_model(args.checkpoint, scale, device, args.model)
    inputs = load_inputs(args, scale)
    try:   # before the network runs: a folder that cannot be made must not cost its time
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f'--out {args.out}: cannot create the output folder ({err.strerror or err})') from None
    for name in OUTPUTS:
        (args.out / name).unlink(missing_ok=True)
    lr_left, lr_right = (to_batch(x, device) for x in inputs['lr'])
    h, w = lr_left.shape[-2:]
    log.info(f'input: {inputs["name"]}, LR {w}x{h} -> x{scale} -> {w * scale}x{h * scale}\n'
             f'weights: {describe_checkpoint(args.checkpoint, meta)}\ndevice: {device}, {precision}'
             + (f', bands of {args.tile} LR rows' if args.tile else ''))

    # ---- super-resolution and disparity
    try:
        check_memory((h, w), getattr(model, 'eval_bytes_per_lr_pixel', {}).get(scale), args.tile, device)
        t0 = time.time()
        out = (predict_tiled(model, lr_left, lr_right, args.tile, args.overlap, precision) if args.tile else
               predict(model, lr_left, lr_right, precision))
        seconds = time.time() - t0
    except (MemoryError, torch.OutOfMemoryError) as err:
        raise MemoryError(f'out of memory: {err}' if isinstance(err, MemoryError) else
                          f'out of memory on {device}; process the pair in bands, e.g. --tile 64') from None
    except RuntimeError as err:
        if 'memory' in str(err).lower() or 'alloc' in str(err).lower():
            raise MemoryError(f'out of memory ({str(err)[:100]}); process the pair in bands, e.g. --tile 64') from None
        raise
    bicubic = [imresize(x, scale).astype(np.float32) / 255 for x in inputs['lr_uint8']]

    # ---- files
    name, title = model.zoo_name, model_entry(model.zoo_name).title
    sr = [to_image(out['sr_left']), to_image(out['sr_right'])]
    for view, side in enumerate(('left', 'right')):
        write_image(args.out / f'sr_{side}.png', sr[view])
        write_image(args.out / f'bicubic_{side}.png', bicubic[view])
    disparity = out['disp_left'][0, 0].cpu().numpy() if 'disp_left' in out else None   # networks that estimate it
    if disparity is not None:
        top = float(np.percentile(disparity, 99)) or 1.0
        write_image(args.out / 'disparity_left.png', colorize(disparity, 0, top))
        write_kitti_disparity(args.out / 'disparity_left_16bit.png', disparity)
        save_figure(args.out / 'disparity_figure.png', [
            {'title': 'SR left view', 'image': sr[0]},
            {'title': 'HR disparity of the left view', 'map': disparity, 'vmin': 0, 'vmax': top, 'label': 'pixels'}],
            title=f'{title} x{scale}: {inputs["name"]}')

    # ---- metrics
    metrics = {'input': inputs['name'], 'scale_factor': scale, 'lr_size': [h, w], 'seconds_network': seconds,
               'precision': precision,
               'weights': describe_checkpoint(args.checkpoint, meta), 'tile': args.tile}
    lines = []
    if 'hr' in inputs:
        hr = [to_tensor(x).double() for x in inputs['hr']]
        for method, views in (('bicubic', bicubic), (name, sr)):
            t = [to_tensor(v).double() for v in views]
            scores = scene_scores(t[0], hr[0], t[1], hr[1])    # test_sr.py's protocol: Left crop, (L+R)/2
            metrics[method] = scores
            lines.append(f"| {method} | {scores['psnr_left']:.2f} | {scores['ssim_left']:.4f} | "
                         f"{scores['psnr_avg']:.2f} | {scores['ssim_avg']:.4f} |")
        metrics['psnr_gain_over_bicubic'] = metrics[name]['psnr_avg'] - metrics['bicubic']['psnr_avg']
    if 'gt' in inputs:   # the network's disparity beside the two references that say what a score means
        gt = np.asarray(inputs['gt'], dtype=np.float32)
        valid = np.isfinite(gt) & (gt > 0) & (gt < MAX_DISPARITY)
        estimates = {name: disparity} if disparity is not None else {}
        estimates.update(disparity_baselines(*inputs['lr_uint8'], scale, gt, valid))
        mask, truth = torch.from_numpy(valid), torch.from_numpy(gt)
        metrics['disparity'] = {
            method: {'epe': epe(torch.from_numpy(d), truth, mask), 'bad3': bad_pixel_rate(torch.from_numpy(d), truth,
                                                                                          mask, 3.0),
                     'd1': d1_error(torch.from_numpy(d), truth, mask)} for method, d in estimates.items()}
    (args.out / 'metrics.json').write_text(json.dumps(metrics, indent=2))
    nearest = np.repeat(np.repeat(inputs['lr'][0], scale, axis=0), scale, axis=1)
    panels = [{'title': 'LR left (pixels enlarged)', 'image': nearest},
              {'title': 'bicubic' + (f" {metrics['bicubic']['psnr_avg']:.2f} dB" if 'hr' in inputs else ''),
               'image': bicubic[0]},
              {'title': title + (f" {metrics[name]['psnr_avg']:.2f} dB" if 'hr' in inputs else ''), 'image': sr[0]}]
    if disparity is not None:
        panels.append({'title': 'disparity (px)', 'map': disparity, 'vmin': 0, 'vmax': top, 'label': 'pixels'})
    if 'hr' in inputs:
        panels.insert(3, {'title': 'HR reference', 'image': inputs['hr'][0]})
    if 'gt' in inputs and disparity is not None:
        gt_map = np.where(valid, gt, np.nan)
        panels.append({'title': 'ground-truth disparity', 'map': gt_map, 'vmin': 0, 'vmax': top, 'label': 'pixels'})
        d = metrics['disparity']
        panels.append({'title': f"block matcher: EPE {d['block matcher']['epe']:.1f} px (network "
                                f"{d[name]['epe']:.1f})", 'map': estimates['block matcher'], 'vmin': 0, 'vmax': top,
                       'label': 'pixels'})
    save_figure(args.out / 'comparison.png', panels, columns=3, title=f'{inputs["name"]}, x{scale}')

    # ---- report
    report = [f'\n{title} x{scale} on {inputs["name"]} ({w}x{h} -> {w * scale}x{h * scale}) in {seconds:.1f} s '
              f'on {device} ({precision})']
    if lines:
        report += ['', '| method | Left PSNR | Left SSIM | (L+R)/2 PSNR | (L+R)/2 SSIM |', '|---|---|---|---|---|',
                   *lines,
                   f"{title} vs bicubic: {metrics['psnr_gain_over_bicubic']:+.2f} dB ((L+R)/2 PSNR)"]
    if 'disparity' in metrics:
        described = {name: title, 'block matcher': 'block matcher (9x9 SAD, winner takes all, bicubic-upsampled LR)',
                     'constant': 'constant (the median ground-truth disparity)'}
        report += ['', '| disparity of the left view (0 < gt < 192) | EPE (px) | >3px | D1 |', '|---|---|---|---|']
        report += [f"| {described[method]} | {d['epe']:.2f} | {100 * d['bad3']:.1f}% | {100 * d['d1']:.1f}% |"
                   for method, d in metrics['disparity'].items()]
    report.append(f'pictures: {args.out}/comparison.png, '
                  + ('disparity_figure.png, disparity_left.png, ' if disparity is not None else '')
                  + f'sr_left.png, sr_right.png, bicubic_*.png; numbers: {args.out}/metrics.json '
                    f'({time.time() - started:.0f} s)')
    print('\n'.join(report))
    return metrics


if __name__ == '__main__':
    sys.exit(run_script(main))
