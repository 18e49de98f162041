"""Stereo SR evaluation with the paper's protocol, on every test set under --testset_dir.

    python test_sr.py --scale_factor 4 --checkpoint checkpoints/SSRDEF_4xSR_epoch80.pth.tar
    python test_sr.py --scale_factor 4 --model nafssr-s --checkpoint NAFSSR-S_4x.pth --protocol nafssr
    python test_sr.py --scale_factor 4 --model bicubic          # the bicubic rows of the tables
    python test_sr.py --model isrrescnet --checkpoint ISRResCNet_x4.pth --images Set5/ --images Set14/   # single-image
    python test_sr.py --checkpoint cvhssr-t_x4 --datasets sample  # a release by name, on the built-in pair

Any network of the zoo (--model; a project checkpoint names its own). Protocols (evaluation.py): `ipassr`
(default; official SSRDE-FNet test_sr.py + iPASSR evaluation.m): the final SR output clamped to [0, 1]; PSNR on
RGB with data range 1 over all pixels and channels, no border crop; "Left" = the left view without its 64 leftmost
HR columns; "(L+R)/2" = mean of the full left and right PSNRs; SSIM: evaluation.m's (7x7 box window, valid region,
per channel, averaged); float SR images (as the official result.txt) unless --quantize (the 8-bit PNGs, as
evaluation.m reads them). `nafssr`: NAFSSR's BasicSR metrics (rounded 8-bit SR, per-view PSNR averaged, skimage
SSIM over the 6-channel stack). Scores are per scene, then averaged over scenes.

Perceptual and stereo scores (NTIRE 2023 Track 2), with any protocol:
    python test_sr.py --model nafssr-s --checkpoint runs/x/last.pth --lpips --stereo_consistency
--lpips: LPIPS v0.1 (AlexNet) per view, from local files (--lpips_weights). --stereo_consistency: where a scene has
ground-truth disparity, the warp error of the SR pair beside that of the HR pair; on every scene the NTIRE term S =
mean |D_SR - D_HR| (HR px) with a disparity estimator (--disparity_net); both on: the Track-2 score
1 - LPIPS_L/2 - LPIPS_R/2 - S.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

from data.testsets import DISPARITY_DATASETS, SAMPLE, find_datasets, write_sample_testset
from evaluation import (PROTOCOLS, SINGLE_IMAGE_PROTOCOLS, bicubic_sr, block_matching_estimator, consistency_scorer,
                        evaluate_dataset, evaluate_image_folder, lpips_scorer, network_disparity_estimator,
                        network_single_sr, network_sr)
from models import add_model_args, model_entry, perceptual
from models.registry import modality_error
from models.checkpoint import describe_checkpoint, infer_scale_factor, load_model, read_checkpoint, results_name
from models.imresize import imresize
from utils import (UsageError, add_device_args, add_precision_args, check_output_file, positive_int, print_report,
                   raise_missing, resolve_device, resolve_precision, run_script)
from weights import resolve_checkpoint

log = logging.getLogger('test_sr')
OFFICIAL_CHECKPOINT = Path('checkpoints/SSRDEF_4xSR_epoch80.pth.tar')  # authors' x4 release (file name as shipped)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, baselines=('bicubic',), default=None)
    parser.add_argument('--checkpoint', type=Path, default=None,
                        help='weights: a release name of docs/weights.md (e.g. cvhssr-t_x4: implies --model and the '
                             'scale), an authors\' file or a project checkpoint (default for SSRDE-FNet: ssrdefnet_x4, '
                             f'{OFFICIAL_CHECKPOINT.name}); --model defaults to the network the weights name')
    # data
    parser.add_argument('--testset_dir', type=Path, default=Path('./data/test/'), help='root of the test sets')
    parser.add_argument('--images', type=Path, action='append', default=[], metavar='DIR',
                        help='instead of the stereo test sets: a folder of HR images (Set5, Set14, ...), each cut to a '
                             'multiple of the scale, downscaled by MATLAB bicubic, super-resolved and scored with the '
                             'single-image protocol (--protocol srnet or single; default single). Repeatable')
    parser.add_argument('--datasets', default=None,
                        help='comma-separated dataset folders to evaluate (default: every SR set present; the '
                             f'disparity sets {", ".join(DISPARITY_DATASETS)} only when named here). "{SAMPLE}": the '
                             'built-in pair (Middlebury 2014 Motorcycle as scikit-image ships it, LR by MATLAB '
                             'bicubic), scored beside its bicubic baseline; no test set needed')
    # protocol
    parser.add_argument('--quantize', nargs='?', const='round', choices=('round', 'truncate'), default=None,
                        help='score 8-bit images instead of floats: "round" = the PNGs this script saves; '
                             '"truncate" = what the official test_sr.py saves (ToPILImage truncates)')
    parser.add_argument('--protocol', choices=tuple(PROTOCOLS), default='ipassr',
                        help='ipassr: the SSRDE-FNet/iPASSR tables (evaluation.m); nafssr: the NAFSSR tables (BasicSR '
                             'metrics: rounded 8-bit SR, per-view PSNR averaged, skimage SSIM with sample covariance); '
                             'srnet: SRNet\'s (8-bit RGB PSNR without scale+6 border pixels, skimage SSIM of 2019 with '
                             'range 2); single: the single-image papers\' (ISRResCNet: 8-bit SR, Y channel, scale '
                             'border pixels cropped, Gaussian SSIM), each per view')
    parser.add_argument('--tta', action='store_true', help='stereo-aware self-ensemble over 4 flips (not the paper)')
    # perceptual and stereo scores (NTIRE 2023 Track 2)
    parser.add_argument('--lpips', action='store_true',
                        help='also score LPIPS v0.1 with the AlexNet trunk (the lpips package\'s default), per view')
    parser.add_argument('--lpips_weights', default=None, metavar='DIR|random',
                        help=f'folder holding {perceptual.WEIGHT_FILES["alexnet"]} (torchvision\'s ImageNet AlexNet) '
                             f'and {perceptual.LPIPS_HEADS_FILE} (the lpips package\'s weights/v0.1/alex.pth heads) '
                             f'under those names (default {perceptual.DEFAULT_WEIGHTS_DIR}/, then the torch-hub cache; '
                             'the heads also from an installed lpips package). "random": a random AlexNet, for smoke '
                             'tests only (labelled)')
    parser.add_argument('--stereo_consistency', action='store_true',
                        help='also score stereo consistency: warp error by the ground-truth disparity where a scene '
                             'has it (SR pair and HR pair), and the NTIRE 2023 term S = mean |D_SR - D_HR| on every '
                             'scene with --disparity_net')
    parser.add_argument('--disparity_net', default=None, metavar='CHECKPOINT|block_matching',
                        help='the disparity estimator of S: a checkpoint of a zoo network that estimates disparity '
                             '(SSRDE-FNet; run on the pair downscaled by its scale), or block_matching (9x9 SAD, no '
                             f'weights). Default: {OFFICIAL_CHECKPOINT} when present, else block_matching. (NTIRE '
                             'used RAFT-Stereo, which is not in this project)')
    parser.add_argument('--download_weights', action='store_true',
                        help='download missing weights (needs internet): a --checkpoint release with a direct URL '
                             '(docs/weights.md) and torchvision\'s AlexNet file for --lpips; without it a missing '
                             'file stops the script before scoring')
    # output
    parser.add_argument('--results_dir', type=Path, default=Path('results'), help='where SR images are saved')
    parser.add_argument('--run_name', default=None, help='sub-folder of --results_dir (default: from the weights)')
    parser.add_argument('--no_save', action='store_true', help='do not write SR images')
    parser.add_argument('--json', type=Path, default=None, help='write every number to this JSON file')
    parser.add_argument('--batch_size', type=positive_int, default=None,
                        help='pairs of equal size run together (default: 4 on CUDA, 1 on CPU)')
    add_device_args(parser)
    add_precision_args(parser)
    parser.set_defaults(scale_factor=None)
    for action in parser._actions:      # the shared flag (models.add_model_args), whose default here is the weights'
        if action.dest == 'scale_factor':
            action.help = 'SR scale (default: the one the weights imply: a release name, a project checkpoint, the ' \
                          'network\'s upsampler; else 4)'
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_output_file(args.json, '--json')              # before the evaluation
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    device = resolve_device(args.device)
    precision = resolve_precision(args, device)
    scale = args.scale_factor
    batch_size = args.batch_size or (4 if device.type == 'cuda' else 1)

    # ---- weights: every file the run needs is looked for first, so that the missing ones are named together
    if args.model not in (None, 'bicubic'):
        refuse_other_modality(args.model)
    if args.checkpoint is None and args.model not in (None, 'ssrdefnet', 'bicubic'):
        raise UsageError(f'--model {args.model} needs --checkpoint PATH (its authors\' release or a checkpoint '
                         f'of train.py --model {args.model})')
    resolved = check_weight_files(args, scale)
    if args.model == 'bicubic':
        scale = args.scale_factor = scale or 4
        weights, run_name = 'MATLAB bicubic upsampling of the LR files (no weights)', f'bicubic_x{scale}'
    else:
        checkpoint, args.model, scale, _ = resolved
        state_dict, stored = read_checkpoint(checkpoint)
        scale = scale or (stored.get('args') or {}).get('scale_factor') or infer_scale_factor(state_dict) or 4
        args.scale_factor = scale
        model, meta = load_model(checkpoint, scale, device, args.model, vars(args))
        args.model = model.zoo_name
        refuse_other_modality(args.model)        # a checkpoint that names its network
        weights, run_name = describe_checkpoint(checkpoint, meta), results_name(checkpoint, meta, scale)
    run_name = args.run_name or run_name
    if args.images:
        return evaluate_image_folders(args, None if args.model == 'bicubic' else model, device, weights)

    # ---- datasets
    names = args.datasets.split(',') if args.datasets else []
    present = find_datasets(args.testset_dir) if names != [SAMPLE] else []
    if args.datasets:
        unknown = [n for n in names if n not in present and n != SAMPLE]
        if unknown:
            raise UsageError(f'--datasets {unknown} not found under {args.testset_dir} (present: {present})')
    else:
        names = [n for n in present if n not in DISPARITY_DATASETS]
    if not names:
        raise FileNotFoundError(f'no test set under {args.testset_dir}; prepare one with data/prepare_test.py')

    protocol = PROTOCOLS[args.protocol].describe(scale, args.quantize)
    protocol += ', stereo TTA x4' if args.tta else ''
    header = [f'# Stereo SR x{scale}: {args.model}', f'weights: {weights}', f'protocol: {protocol}',
              f'device: {device}, {precision}']
    log.info('\n'.join(header))

    scorers, extra_header = perceptual_scorers(args, device)
    header += extra_header
    if extra_header:
        log.info('\n'.join(extra_header))
    sr_fn = bicubic_sr(scale) if args.model == 'bicubic' else network_sr(model, device, args.tta, precision)
    results = {}
    with tempfile.TemporaryDirectory(prefix='sample_') as scratch:
        for name in names:
            folder = write_sample_testset(scratch, scale) if name == SAMPLE else args.testset_dir / name
            save_dir = None if args.no_save else args.results_dir / run_name / name
            scores = evaluate_dataset(sr_fn, folder, scale, batch_size, args.quantize, save_dir, args.protocol, scorers)
            results[name] = {**scores, 'weights': weights, 'scale_factor': scale, 'protocol': protocol}
            if name == SAMPLE and args.model != 'bicubic':   # its baseline beside it: no table to compare with
                scores = evaluate_dataset(bicubic_sr(scale), folder, scale, batch_size, args.quantize, None,
                                          args.protocol, scorers)
                results[f'{SAMPLE} (bicubic)'] = {**scores, 'weights': 'MATLAB bicubic upsampling (no weights)',
                                                  'scale_factor': scale, 'protocol': protocol}
    if f'{SAMPLE} (bicubic)' in results:
        gain = results[SAMPLE]['psnr_avg'] - results[f'{SAMPLE} (bicubic)']['psnr_avg']
        results[SAMPLE]['gain_over_bicubic'] = gain

    # ---- report
    lines = ['', *header, '', '| Dataset | pairs | Left PSNR | Left SSIM | (L+R)/2 PSNR | (L+R)/2 SSIM |',
             '|---|---|---|---|---|---|']
    lines += [f"| {n} | {r['num_scenes']} | {r['psnr_left']:.4f} | {r['ssim_left']:.4f} | {r['psnr_avg']:.4f} | "
              f"{r['ssim_avg']:.4f} |" for n, r in results.items()]
    if f'{SAMPLE} (bicubic)' in results:
        gain = results[SAMPLE]['gain_over_bicubic']
        lines += ['', f'{SAMPLE}: {args.model} {gain:+.2f} dB over bicubic ((L+R)/2 PSNR)']
    paper_left = [f"{n} {r['psnr_left']:.2f}/{r['ssim_left']:.4f}" for n, r in results.items() if n != 'Flickr1024']
    paper_avg = [f"{n} {r['psnr_avg']:.2f}/{r['ssim_avg']:.4f}" for n, r in results.items()]
    lines += ['', 'Paper layout (PSNR/SSIM): Left: ' + ', '.join(paper_left) + ' | (L+R)/2: ' + ', '.join(paper_avg)]
    if scorers:
        def cell(r, key, digits=4):
            return f'{r[key]:.{digits}f}' if key in r else '-'
        lines += ['', '| Dataset | LPIPS L | LPIPS R | S = mean abs(D_SR - D_HR) (px) | GT warp error SR | '
                      'GT warp error HR | NTIRE 2023 Track-2 score |', '|---|---|---|---|---|---|---|']
        lines += [f"| {n} | {cell(r, 'lpips_l')} | {cell(r, 'lpips_r')} | {cell(r, 'disp_s', 3)} | {cell(r, 'sc_sr')} "
                  f"| {cell(r, 'sc_hr')} | {cell(r, 'track2')} |" for n, r in results.items()]
    if not args.no_save:
        lines.append(f'SR images: {args.results_dir / run_name}/<dataset>/<scene>_{{L,R}}.png')
    print_report(lines, results, args.json)
    return results


def refuse_other_modality(name: str) -> None:
    """UsageError unless `name` takes a stereo pair (ModelEntry.modality), naming the script that runs it."""
    reason = modality_error(model_entry(name), 'test_sr.py')
    if reason:
        raise UsageError(reason)


def check_weight_files(args, scale: int | None):
    """The network's weights resolved (`weights.resolve_checkpoint`; None for bicubic), after looking for every file
    the run needs (--checkpoint, --lpips's two files, --disparity_net): one error naming each missing one, rather
    than one per run."""
    missing, resolved = [], None
    if args.model != 'bicubic':
        try:
            resolved = resolve_checkpoint(args.checkpoint or OFFICIAL_CHECKPOINT.name, args.model, scale,
                                          args.download_weights)
        except FileNotFoundError as err:
            missing.append(f'--checkpoint: {err}')
    if args.lpips:
        missing += [f'--lpips: {m}' for m in perceptual.missing_lpips_files(args.lpips_weights, '--lpips_weights',
                                                                           args.download_weights)]
    if args.stereo_consistency and args.disparity_net not in (None, 'block_matching') \
            and not Path(args.disparity_net).is_file():
        missing.append(f'--disparity_net: {args.disparity_net} is not a file (a checkpoint of a network that estimates '
                       f'disparity, or block_matching)')
    raise_missing(missing)
    return resolved


def perceptual_scorers(args, device) -> tuple[tuple, list[str]]:
    """The scorers of --lpips and --stereo_consistency, and the header lines that say what they use; exits before
    any scoring when a weights file is missing."""
    scorers, header = [], []
    if args.lpips:
        try:
            metric, description = perceptual.build_lpips(args.lpips_weights, '--lpips_weights', args.download_weights)
        except (perceptual.MissingWeightsError, ValueError) as err:
            raise ValueError(f'--lpips: {err}') from None
        scorers.append(lpips_scorer(metric.to(device), device))
        header.append(f'LPIPS: {description}')
    if args.stereo_consistency:
        choice = args.disparity_net or (str(OFFICIAL_CHECKPOINT) if OFFICIAL_CHECKPOINT.is_file() else 'block_matching')
        if choice == 'block_matching':
            estimator, description = block_matching_estimator(), 'block matching (9x9 SAD, 192 disparities, no weights)'
        else:
            try:
                state_dict, meta = read_checkpoint(choice)
                k = (meta.get('args') or {}).get('scale_factor') or infer_scale_factor(state_dict) or 4
                network, meta = load_model(choice, k, device)
            except (FileNotFoundError, ValueError) as err:
                raise ValueError(f'--disparity_net: {err}') from None
            if not model_entry(network.zoo_name).estimates_disparity:
                raise UsageError(f'--disparity_net {choice}: {network.zoo_name} does not estimate disparity')
            estimator = network_disparity_estimator(network, k, device)
            description = f'{describe_checkpoint(choice, meta)} on the pair downscaled x{k}'
        scorers.append(consistency_scorer(estimator))
        header.append('stereo consistency: GT warp error = mean abs(L - R warped by the non-occluded left ground '
                      'truth) (RGB in [0, 1]); S = mean abs(D_SR - D_HR) in HR px, whole left view, disparity by '
                      + description)
        if args.lpips:
            header.append('NTIRE 2023 Track-2 score = 1 - LPIPS_L/2 - LPIPS_R/2 - S, per scene then averaged (S '
                          'unnormalised; the organisers used RAFT-Stereo)')
    return tuple(scorers), header


def evaluate_image_folders(args, model, device, weights: str) -> dict:
    """--images: the single-image protocol on folders of HR images; one line per folder."""
    protocol = args.protocol if args.protocol in SINGLE_IMAGE_PROTOCOLS else 'single'
    scale = args.scale_factor
    if model is None:
        def sr_fn(lr):
            lr8 = (lr.permute(1, 2, 0).numpy() * 255).round().astype('uint8')
            return torch.from_numpy(imresize(lr8, scale).transpose(2, 0, 1)).float() / 255
    else:
        sr_fn = network_single_sr(model, device, resolve_precision(args, device))
    results = {}
    for folder in args.images:
        results[folder.name] = evaluate_image_folder(sr_fn, folder, scale, protocol)
    lines = ['', f'# Single-image SR x{scale}: {args.model}', f'weights: {weights}', f'protocol: {protocol}', '',
             '| Folder | images | PSNR | SSIM |', '|---|---|---|---|']
    lines += [f"| {n} | {r['num_images']} | {r['psnr']:.4f} | {r['ssim']:.4f} |" for n, r in results.items()]
    print_report(lines, results, args.json)
    return results


if __name__ == '__main__':
    sys.exit(run_script(main))
