"""Disparity evaluation on every test set with ground truth (K2012/K2015 of the official test_disp.py, and any
Middlebury-style set with PFM ground truth).

    python test_disp.py --scale_factor 4 --checkpoint checkpoints/SSRDEF_4xSR_epoch80.pth.tar --testset_dir ./data/test

Official table: mean absolute error (EPE, HR pixels) of the left view's disparities: the HR cost-volume disparity
("high") and the upsampled PAM disparity, of recursion 2 ("1") and recursion 1 ("0"), on all pixels (dispocc0) and
non-occluded pixels (dispnoc0), over 0 < gt < 192, after the official [0, 192] clamp. Per image, then averaged.
Added: >1 px and >3 px error rates and KITTI D1 (> 3 px and > 5 %) of the final HR disparity.

    python test_disp.py --scale_factor 4 --checkpoint SSRDEF.pth --upsampler checkpoints/dsdmsr_demo_x4.pth

--upsampler: SSRDE-FNet's LR parallax-attention disparity (recursion 2, LR pixels) super-resolved by a disparity-map
network (DSDMSR) of the same scale, scored beside bicubic upsampling of the same LR map, the network's own bilinear
upsampling ("PAM") and its HR cost-volume disparity.

Disparity-map networks (DSDMSR) take a map, not a pair:

    python test_disp.py --model dsdmsr --scale_factor 8 --checkpoint checkpoints/dsdmsr_demo_x8.pth
    python test_disp.py --model dsdmsr --scale_factor 8 --checkpoint CKPT --maps FOLDER     # any .pfm / KITTI .png

Each ground-truth map (KITTI dispocc0.png, Middlebury disp0GT.pfm of the test sets under --testset_dir, every map
below a --maps folder, or, when no test set is present, the built-in Motorcycle ground truth of scikit-image) is
cropped to a multiple of the scale, mask-aware downsampled (data/disparity_maps.py), super-resolved and scored at
HR over its valid pixels: RMSE, EPE, >1px, >3px, D1 of every stage and of the fused map, beside nearest and bicubic
upsampling of the same LR map (evaluation.score_table).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.disparity_maps import MAP_SUFFIXES, make_lr_map, read_disparity_map
from data.readers import write_image, write_kitti_disparity
from data.testsets import find_datasets, ground_truth_files, list_scenes, load_ground_truth, load_pair
from evaluation import DISPARITY_PROTOCOLS, MAP_METRICS, score_table, upsample_bicubic
from models import DISPARITY_MODELS, MAP_MODELS, add_model_args, model_entry
from figures import colorize, save_figure
from metrics import epe, rmse
from models.checkpoint import (checkpoint_model_name, describe_checkpoint, load_model, read_checkpoint,
                               results_name)
from models.imresize import modcrop
from models.precision import autocast
from utils import (UsageError, add_device_args, add_precision_args, check_output_file, print_report, raise_missing,
                   resolve_device, resolve_precision, run_script)

log = logging.getLogger('test_disp')
OFFICIAL_CHECKPOINT = Path('checkpoints/SSRDEF_4xSR_epoch80.pth.tar')
# The four disparities of the official table, in its column order: HR cost volume of recursion 2 ("disp high ..1")
# and 1 ("..0"), upsampled PAM disparity of recursion 2 ("disp ..1") and 1 ("..0").
ESTIMATES = ('hr_r2', 'hr_r1', 'lr_r2', 'lr_r1')
ERROR_MAP_MAX = 5.0  # px, top of the error-map colour scale
# --upsampler: the LR PAM disparity of recursion 2 brought to HR by bicubic upsampling and by the map network.
UPSAMPLED = ('pam_bicubic', 'pam_upsampler')
STEREO = DISPARITY_PROTOCOLS['stereo']   # valid range, clamp, rates and header line of the stereo table
SAMPLE = 'sample'    # --datasets name of the built-in ground truth: Middlebury 2014 Motorcycle, from scikit-image


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, names=DISPARITY_MODELS + MAP_MODELS)
    parser.add_argument('--checkpoint', type=Path, default=None,
                        help=f'weights: the authors\' release or a project checkpoint (default: {OFFICIAL_CHECKPOINT})')
    parser.add_argument('--testset_dir', type=Path, default=Path('./data/test/'), help='root of the test sets')
    parser.add_argument('--datasets', default=None,
                        help='comma-separated dataset folders (default: every set with disparity ground truth); '
                             f'disparity-map networks: also "{SAMPLE}", the built-in Motorcycle ground truth (their '
                             'default when no set is present)')
    parser.add_argument('--maps', type=Path, action='append', default=[], metavar='DIR',
                        help='disparity-map networks: score every .pfm / KITTI .png map below DIR (matching '
                             '--map_pattern) instead of the test sets; repeatable, one dataset per folder')
    parser.add_argument('--map_pattern', default='*', help='glob of the map files below a --maps folder')
    parser.add_argument('--upsampler', type=Path, default=None, metavar='CHECKPOINT',
                        help='networks that estimate disparity from a pair (SSRDE-FNet): also super-resolve their LR '
                             'parallax-attention disparity with this disparity-map network checkpoint of the same '
                             'scale (train.py --model dsdmsr), scored beside bicubic upsampling of the same LR map')
    parser.add_argument('--results_dir', type=Path, default=Path('results'), help='where pictures are saved')
    parser.add_argument('--run_name', default=None, help='sub-folder of --results_dir (default: from the weights)')
    parser.add_argument('--no_save', action='store_true', help='do not write disparity pictures')
    parser.add_argument('--json', type=Path, default=None, help='write every number to this JSON file')
    add_device_args(parser)
    add_precision_args(parser)
    return parser.parse_args(argv)


def estimates_of(out) -> dict[str, torch.Tensor]:
    """The four left-view disparities (1, sH, sW) in HR pixels, clamped to [0, 192] as the official test mode."""
    return {'hr_r2': out.disp_hr[1].left[0, 0], 'hr_r1': out.disp_hr[0].left[0, 0],
            'lr_r2': out.disp_lr[1].left[0, 0], 'lr_r1': out.disp_lr[0].left[0, 0]}


def valid_mask(gt: torch.Tensor) -> torch.Tensor:
    """Pixels the official script evaluates: 0 < gt < 192 (also drops Middlebury's inf for unknown)."""
    return STEREO.valid(gt)


def scene_metrics(estimates: dict, gt_all: torch.Tensor, gt_noc: torch.Tensor) -> dict:
    """EPE of every estimate (ESTIMATES, and UPSAMPLED with --upsampler; RMSE too for those and the two recursion-2
    estimates they are read against), and the standard metrics of the final HR disparity, on all / noc pixels."""
    metrics = {}
    for region, gt in zip(STEREO.regions, (gt_all, gt_noc)):
        mask = valid_mask(gt)
        for key in estimates:
            metrics[f'epe_{region}_{key}'] = epe(estimates[key], gt, mask)
        if UPSAMPLED[0] in estimates:
            for key in ('lr_r2', *UPSAMPLED, 'hr_r2'):
                metrics[f'rmse_{region}_{key}'] = rmse(estimates[key], gt, mask)
                metrics[f'bad3_{region}_{key}'] = STEREO.rates(estimates[key], gt, mask)['bad3']
        final = estimates['hr_r2']
        metrics[f'epe_{region}'] = metrics[f'epe_{region}_hr_r2']
        metrics.update({f'{name}_{region}': rate for name, rate in STEREO.rates(final, gt, mask).items()})
    return metrics


def save_pictures(out_dir: Path, name: str, left: np.ndarray, disparity: np.ndarray, gt: np.ndarray) -> None:
    """Colour-coded disparity, error map, a figure with colour bars, and the raw disparity as a KITTI 16-bit PNG."""
    valid = STEREO.valid(torch.from_numpy(np.ascontiguousarray(gt))).numpy()
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


# ---- --upsampler: a disparity-map network on SSRDE-FNet's LR disparity

def load_upsampler(path: Path, scale: int, device: torch.device) -> torch.nn.Module:
    """The disparity-map network of a project checkpoint, for x`scale`; UsageError for any other file or scale.
    `.title` and `.describe` say which it is, for the report."""
    stored = read_checkpoint(path)[1]
    name = checkpoint_model_name(stored)
    if name is None or model_entry(name).modality != 'disparity_map':
        raise UsageError(f'--upsampler {path}: expected a checkpoint of a disparity-map network (train.py --model '
                         f'{", ".join(MAP_MODELS)}), got ' + (f'one of {name}' if name else 'a file that names none'))
    trained = (stored.get('args') or {}).get('scale_factor')
    if trained != scale:
        raise UsageError(f'--upsampler {path} is a x{trained} {name}; this run is x{scale}: give a x{scale} checkpoint '
                         f'(train.py --model {name} --scale_factor {scale})')
    upsampler, meta = load_model(path, scale, device, name)
    upsampler.title, upsampler.describe = model_entry(name).title, describe_checkpoint(path, meta)
    return upsampler


def upsampled_pam(out, upsampler: torch.nn.Module, scale: int) -> dict[str, torch.Tensor]:
    """The left view's LR PAM disparity of recursion 2 (`disp_pam`, (1, 1, H, W) in LR pixels) brought to HR pixels
    (sH, sW) by bicubic upsampling and by `upsampler`, clamped to [0, 192] as the official estimates. Both are s x
    the LR disparity, on HR pixel centres; the network's own 'lr_r2' upsamples s x its coordinates bilinearly, which
    adds (s - 1) / 2 px (the LR pixel centres sit at s x + (s - 1) / 2 in HR pixels)."""
    pam = out.disp_pam[1].left.float()
    with torch.inference_mode():
        fused = upsampler(pam).fused.float()
    return {'pam_bicubic': STEREO.clamped(upsample_bicubic(pam.cpu(), scale)[0, 0]),
            'pam_upsampler': STEREO.clamped(fused[0, 0].cpu())}


# ---- disparity-map networks (DSDMSR): ground-truth maps downsampled, super-resolved, scored at HR

def motorcycle_ground_truth() -> tuple[np.ndarray, np.ndarray]:
    """(map, valid) of the built-in sample, scikit-image's Middlebury 2014 Motorcycle (left view, 500x741, HR
    pixels; non-finite = unknown), as data.disparity_maps.read_disparity_map gives a PFM."""
    from skimage import data as skdata
    disparity = np.asarray(skdata.stereo_motorcycle()[2], dtype=np.float32)
    valid = np.isfinite(disparity)
    return np.where(valid, disparity, 0).astype(np.float32), valid


def map_sources(args) -> dict[str, list[tuple[str, object]]]:
    """{dataset: [(map name, load() -> (map, valid))]}: every map below each --maps folder; the ground truth of the
    test sets under --testset_dir (--datasets, default every set that has some; "sample" = the built-in Motorcycle);
    when neither gives a map, the built-in Motorcycle ground truth."""
    sources = {}
    for folder in args.maps:
        if folder.is_file():
            raise UsageError(f'--maps {folder} is a file; give the folder that holds the maps (searched recursively)')
        if not folder.is_dir():
            raise FileNotFoundError(f'--maps {folder}: folder not found')
        files = sorted(p for p in folder.rglob(args.map_pattern) if p.suffix.lower() in MAP_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f'--maps {folder}: no .pfm or KITTI .png disparity map matching '
                                    f'{args.map_pattern!r}')
        sources[folder.name] = [(str(p.relative_to(folder).with_suffix('')).replace('/', '_'),
                                 lambda p=p: read_disparity_map(p)) for p in files]
    if args.maps and not args.datasets:
        return sources
    present = find_datasets(args.testset_dir) if args.testset_dir.is_dir() else []
    for name in args.datasets.split(',') if args.datasets else present:
        if name == SAMPLE:
            sources[SAMPLE] = [('motorcycle', motorcycle_ground_truth)]
            continue
        if name not in present:
            raise UsageError(f'--datasets {name} not found under {args.testset_dir} (present: {present}; '
                             f'"{SAMPLE}" = the built-in Motorcycle ground truth)')
        files = ground_truth_files(args.testset_dir / name)
        if not files and args.datasets:
            raise FileNotFoundError(f'{args.testset_dir / name} has no disparity ground truth (hr/<scene>/'
                                    f'dispocc0.png or disp0GT.pfm)')
        if files:
            sources[name] = [(scene, lambda p=path: read_disparity_map(p)) for scene, path in files]
    if not sources:
        log.info(f'no disparity ground truth under {args.testset_dir}: scoring the built-in Motorcycle ground truth '
                 f'(Middlebury 2014, scikit-image)')
        sources[SAMPLE] = [('motorcycle', motorcycle_ground_truth)]
    return sources


def save_map_pictures(out_dir: Path, name: str, lr: torch.Tensor, hr: np.ndarray, valid: np.ndarray,
                      bicubic: np.ndarray, fused: np.ndarray, title: str) -> None:
    """The super-resolved map colour-coded (+ KITTI 16-bit PNG), its error map and bicubic's, and a figure: LR map,
    ground truth, bicubic, the network, both error maps (HR pixels, invalid pixels black)."""
    top = float(np.percentile(hr[valid], 99))
    errors = {k: np.where(valid, np.abs(d - hr), np.nan) for k, d in (('bicubic', bicubic), (title, fused))}
    write_kitti_disparity(out_dir / f'{name}_disp16.png', np.clip(fused, 0, None))
    write_image(out_dir / f'{name}_disp.png', colorize(fused, 0, top))
    for suffix, error in (('error', errors[title]), ('bicubic_error', errors['bicubic'])):
        write_image(out_dir / f'{name}_{suffix}.png', colorize(error, 0, ERROR_MAP_MAX, cmap='inferno', invalid=~valid))
    scale = hr.shape[0] // lr.shape[-2]
    panels = [{'title': f'LR map (x{scale} smaller, enlarged), LR pixels x {scale}', 'vmin': 0, 'vmax': top,
               'map': np.repeat(np.repeat(lr[0, 0].numpy() * scale, scale, 0), scale, 1), 'label': 'px'},
              {'title': 'ground truth', 'map': np.where(valid, hr, np.nan), 'vmin': 0, 'vmax': top, 'label': 'px'},
              {'title': 'bicubic', 'map': bicubic, 'vmin': 0, 'vmax': top, 'label': 'px'},
              {'title': title, 'map': fused, 'vmin': 0, 'vmax': top, 'label': 'px'}]
    panels += [{'title': f'|error| {k} (EPE {np.nanmean(e):.2f}, RMSE {np.sqrt(np.nanmean(e ** 2)):.2f} px)',
                'map': e, 'vmin': 0, 'vmax': ERROR_MAP_MAX, 'cmap': 'inferno', 'label': 'px'}
               for k, e in errors.items()]
    save_figure(out_dir / f'{name}_figure.png', panels, title=f'{name}, x{scale}')


def evaluate_maps(args, model: torch.nn.Module, weights: str, run_name: str, device: torch.device) -> dict:
    """Every map of `map_sources` cropped to a multiple of the scale, mask-aware downsampled (LR holes filled),
    super-resolved and scored (evaluation.score_table); per map, then averaged over a dataset's maps."""
    scale, title = args.scale_factor, model_entry(model.zoo_name).title
    sources = map_sources(args)
    protocol = DISPARITY_PROTOCOLS['map_sr'].describe(scale)
    header = [f'# Disparity-map SR x{scale}: {title}', f'weights: {weights}', f'protocol: {protocol}',
              f'device: {device}']
    log.info('\n'.join(header))
    results = {}
    for dataset, maps in sources.items():
        per_map, skipped = {}, []
        for name, load in tqdm(maps, desc=dataset, unit='map'):
            hr, valid = (modcrop(x, scale) for x in load())
            if not valid.any():
                skipped.append(name)
                continue
            lr = torch.from_numpy(make_lr_map(hr, valid, scale)[0])[None, None]
            with torch.inference_mode(), autocast(device, args.precision):
                out = model(lr.to(device))
            out.stages, out.fused = [x.float().cpu() for x in out.stages], out.fused.float().cpu()
            hr_t, valid_t = torch.from_numpy(hr)[None, None], torch.from_numpy(valid)[None, None]
            per_map[name] = score_table(out, lr, hr_t, valid_t, scale)
            if not args.no_save:
                save_map_pictures(args.results_dir / run_name / 'maps' / dataset, name, lr, hr, valid,
                                  upsample_bicubic(lr, scale)[0, 0].numpy(), out.fused[0, 0].numpy(), title)
        if not per_map:
            raise ValueError(f'{dataset}: no map with a valid pixel')
        rows = {}
        for row in next(iter(per_map.values())):           # MAP_BASELINES, 'stage1', ..., 'fused'
            scored = [m[row] for m in per_map.values() if m[row] is not None]
            rows[row] = {k: float(np.mean([v[k] for v in scored])) for k in MAP_METRICS} if scored else None
        results[dataset] = {'rows': rows, 'num_maps': len(per_map), 'skipped_maps': skipped, 'maps': per_map,
                            'weights': weights, 'scale_factor': scale, 'protocol': protocol}

    labels = {'nearest': 'nearest upsampling of the LR map', 'bicubic': 'bicubic upsampling of the LR map',
              'fused': f'{title} fused (the answer)'}
    labels.update({f'stage{k}': f'{title} stage {k} (x{2 ** k}, its own pixels)' for k in range(1, 5)})
    lines = ['', *header, '', '| Dataset | maps | method | RMSE (px) | EPE (px) | >1px | >3px | D1 |',
             '|---|---|---|---|---|---|---|---|']
    for dataset, r in results.items():
        for row, scores in r['rows'].items():
            if scores is not None:
                lines.append(f"| {dataset} | {r['num_maps']} | {labels[row]} | {scores['rmse']:.4f} | "
                             f"{scores['epe']:.4f} | {100 * scores['bad1']:.2f}% | {100 * scores['bad3']:.2f}% | "
                             f"{100 * scores['d1']:.2f}% |")
        if r['skipped_maps']:
            lines.append(f"{dataset}: {len(r['skipped_maps'])} maps without a valid pixel skipped "
                         f"({', '.join(r['skipped_maps'][:5])})")
    if not args.no_save:
        lines.append(f'Pictures: {args.results_dir / run_name}/maps/<dataset>/<map>_{{disp,error,bicubic_error,figure}}'
                     f'.png (+ _disp16.png: KITTI 16-bit)')
    print_report(lines, results, args.json)
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_output_file(args.json, '--json')              # before the evaluation
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    device = resolve_device(args.device)
    args.precision = resolve_precision(args, device)
    scale = args.scale_factor
    entry = model_entry(args.model)
    if entry.modality == 'disparity_map' and args.checkpoint is None:
        raise UsageError(f'--model {args.model} needs --checkpoint PATH (a checkpoint of train.py --model '
                         f'{args.model}, e.g. checkpoints/{args.model}_demo_x{scale}.pth)')
    if args.maps and entry.modality != 'disparity_map':
        raise UsageError(f'--maps holds disparity maps for a disparity-map network (--model {", ".join(MAP_MODELS)}); '
                         f'{args.model} needs stereo pairs (--testset_dir)')
    if args.upsampler is not None and not entry.estimates_disparity:
        raise UsageError(f'--upsampler super-resolves the LR disparity of a network that estimates one from a pair '
                         f'(--model {", ".join(DISPARITY_MODELS)}), not of {args.model}')
    checkpoint = args.checkpoint or OFFICIAL_CHECKPOINT
    missing = [] if checkpoint.is_file() else [
        f'checkpoint {checkpoint} not found. Put the authors\' SSRDEF_4xSR_epoch80.pth.tar in checkpoints/, or pass '
        f'--checkpoint PATH (e.g. checkpoints/ssrdefnet_demo_x4.pth)']
    if args.upsampler is not None and not args.upsampler.is_file():
        missing.append(f'--upsampler {args.upsampler} not found')
    raise_missing(missing)      # every missing weight file at once
    model, meta = load_model(checkpoint, scale, device, args.model, vars(args))
    run_name = args.run_name or results_name(checkpoint, meta, scale)
    if model_entry(model.zoo_name).modality == 'disparity_map':
        return evaluate_maps(args, model, describe_checkpoint(checkpoint, meta), run_name, device)
    upsampler = load_upsampler(args.upsampler, scale, device) if args.upsampler is not None else None
    present = find_datasets(args.testset_dir)
    names = args.datasets.split(',') if args.datasets else present
    unknown = [n for n in names if n not in present]
    if unknown:
        raise UsageError(f'--datasets {unknown} not found under {args.testset_dir} (present: {present})')

    weights = describe_checkpoint(checkpoint, meta)
    protocol = STEREO.describe(scale)
    header = [f'# Disparity x{scale}', f'weights: {weights}', f'protocol: {protocol}',
              f'device: {device}, {args.precision}']
    if upsampler is not None:
        header.append(f'upsampler of the LR PAM disparity: {upsampler.describe}')
    log.info('\n'.join(header))

    results = {}
    for name in names:
        scenes = [s for s in list_scenes(args.testset_dir / name, scale) if s.has_disparity]
        if not scenes:
            if args.datasets:
                raise ValueError(f'{name} has no disparity ground truth (dispocc0.png or disp0GT.pfm)')
            continue
        per_scene = {}
        for scene in tqdm(scenes, desc=name, unit='pair'):
            left, right = (torch.from_numpy(x.transpose(2, 0, 1))[None].to(device) for x in load_pair(scene.lr))
            with torch.inference_mode(), autocast(device, args.precision):
                out = model(left, right)
            estimates = {k: v.float().cpu() for k, v in estimates_of(out).items()}
            if upsampler is not None:
                estimates.update(upsampled_pam(out, upsampler, scale))
            gt_all, gt_noc = (torch.from_numpy(g) for g in load_ground_truth(scene))
            if gt_all.shape != estimates['hr_r2'].shape:
                raise ValueError(f'ground truth {scene.gt_all} is {tuple(gt_all.shape)}, the x{scale} HR disparity of '
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
        raise FileNotFoundError(f'no dataset with disparity ground truth under {args.testset_dir}; prepare KITTI '
                                f'training pairs with data/prepare_test.py --preset kitti2012/kitti2015')

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
    if upsampler is not None:
        labels = {'lr_r2': 'PAM, the network\'s bilinear upsampling', 'pam_bicubic': 'PAM, bicubic',
                  'pam_upsampler': f'PAM, {upsampler.title}', 'hr_r2': 'HR cost volume (the network\'s answer)'}
        lines += ['', 'The LR PAM disparity of recursion 2 (left view) brought to HR, beside the HR cost volume '
                  '(px; all / noc pixels):',
                  '| Dataset | estimate | EPE all | EPE noc | RMSE all | RMSE noc | >3px all | >3px noc |',
                  '|---|---|---|---|---|---|---|---|']
        for n, r in results.items():
            lines += [f"| {n} | {label} | {r[f'epe_all_{k}']:.4f} | {r[f'epe_noc_{k}']:.4f} | "
                      f"{r[f'rmse_all_{k}']:.4f} | {r[f'rmse_noc_{k}']:.4f} | {100 * r[f'bad3_all_{k}']:.2f}% | "
                      f"{100 * r[f'bad3_noc_{k}']:.2f}% |" for k, label in labels.items()]
    if not args.no_save:
        lines.append(f'Pictures: {args.results_dir / run_name}/disparity/<dataset>/'
                     '<scene>_{disp,error,figure}.png (+ _disp16.png: KITTI 16-bit)')
    print_report(lines, results, args.json)
    return results


if __name__ == '__main__':
    sys.exit(run_script(main))
