"""The README's pictures, made by the project's own scripts (one command, about a minute on a CPU):

    python make_figs.py                          # figs/demo_*.png from demo.py and the demo checkpoint
    python make_figs.py --bench bench.json       # + figs/bench.png from a `python bench.py --json bench.json` run
    python make_figs.py --authors_weights DIR    # + figs/trained_motorcycle.png from the authors' files in DIR

figs/demo_comparison.png   demo.py on Motorcycle at x4: LR, bicubic, SR, HR, disparity, ground truth, block matcher
figs/demo_disparity.png    demo.py's disparity figure (SR left view and its HR disparity)
figs/demo_training.png     the demo checkpoint's training curve: the per-epoch log train.py --export stores in it,
                           with its teacher's PSNR on fresh patches of the same trainset as a reference line (when
                           the run had a teacher and its file is here, with the recorded SHA-256)
figs/bench.png             time and peak memory per case and variant (official code included when it was measured);
                           with --roofline, GFLOP/s against the calibrated peak
figs/trained_motorcycle.png  the authors' CVHSSR-T and EHFSSR-S weights on Motorcycle x4 (demo.py), crops beside LR,
                           bicubic and HR; drawn only when both files are found (--authors_weights DIR, else by
                           release name in checkpoints/ or the weights cache)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import demo
from figures import pyplot
from models.checkpoint import file_sha256, load_model, read_checkpoint
from data.readers import read_image_uint8
from models import model_entry
from models.imresize import imresize, modcrop
from models.releases import RELEASES
from training.objectives import teacher_records
from utils import run_script
from weights import WeightsNotFoundError, default_folders, resolve_weights

FIGS = Path(__file__).resolve().parent / 'figs'
# The trained networks of figs/trained_motorcycle.png (release names, models/releases.py), and the HR crop drawn:
# rows, columns of the left view (headlight, fork and engine: fine detail and edges at several orientations).
TRAINED = ('cvhssr-t_x4', 'ehfssr-s_x4')
CROP = (slice(120, 280), slice(360, 600))


def demo_figures(checkpoint: Path, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = demo.main(['--checkpoint', str(checkpoint), '--out', tmp])
        shutil.copyfile(Path(tmp) / 'comparison.png', out / 'demo_comparison.png')
        if (Path(tmp) / 'disparity_figure.png').is_file():
            shutil.copyfile(Path(tmp) / 'disparity_figure.png', out / 'demo_disparity.png')
    return metrics


def trained_figure(weights_dir: Path | None, path: Path) -> dict | None:
    """demo.py with the authors' weights of TRAINED on Motorcycle x4; one row of left-view crops: LR (nearest), MATLAB
    bicubic, each network, HR, titled with the whole-pair (L+R)/2 PSNR. None (nothing drawn) when a file is missing."""
    folders = [weights_dir] if weights_dir is not None else list(default_folders())
    try:
        files = {name: resolve_weights(name, folders=folders) for name in TRAINED}
    except WeightsNotFoundError as err:
        print(f'no trained-network figure: {err}')
        return None
    from skimage import data as skdata
    scale = RELEASES[TRAINED[0]].scale
    hr = modcrop(skdata.stereo_motorcycle()[0], scale)
    panels, scores = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, file in files.items():
            release = RELEASES[name]
            out = Path(tmp) / name
            metrics = demo.main(['--checkpoint', str(file), '--model', release.model, '--scale_factor',
                                 str(release.scale), '--out', str(out)])
            scores[name] = metrics[release.model]['psnr_avg']
            if not panels:
                scores['bicubic'] = metrics['bicubic']['psnr_avg']
                lr = np.repeat(np.repeat(imresize(hr, 1 / scale), scale, 0), scale, 1)   # the input, nearest
                panels += [('LR (nearest)', lr), (f"bicubic {scores['bicubic']:.2f} dB",
                                                  read_image_uint8(out / 'bicubic_left.png'))]
            title = model_entry(release.model).title
            panels.append((f'{title} {scores[name]:.2f} dB', read_image_uint8(out / 'sr_left.png')))
    panels.append(('HR', hr))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.3))
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image[CROP])
        ax.set_title(title, fontsize=9)
        ax.axis('off')
    fig.suptitle(f"Motorcycle x{scale} (scikit-image), the authors' weights; (L+R)/2 PSNR of the whole pair",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return scores


def training_phases(stored: dict) -> list[tuple[str, list[dict]]]:
    """(label, per-epoch log rows) of every run behind an exported checkpoint, oldest first: the runs it started
    from with --init (`lineage`, train.py) and its own."""
    phases = []
    for run in [*stored.get('lineage', []), {'args': stored.get('args', {}), 'log': stored.get('log') or []}]:
        args = run['args']
        stage = 'matching warm-up' if args.get('stage') == 'matching' else 'joint'
        label = f"{stage}, {args.get('trainset', '?')}, batch {args.get('batch_size', '?')}, lr {args.get('lr', '?')}"
        if args.get('disp_supervision'):
            label += f", disp_supervision {args['disp_supervision']}"
        if args.get('teacher'):
            label += ', teacher ' + ' + '.join(r['model'] or Path(r['path']).stem for r in teacher_records(args))
        if run['log']:
            phases.append((label, run['log']))
    return phases


REFERENCE_SEED = 0     # the teacher line's patches: the same for every run, whatever seed it trained with


def teacher_reference(stored: dict, count: int = 64) -> tuple[str, float] | None:
    """(label, PSNR) of an exported run's first --teacher on `count` fresh patches of the run's own trainset (the
    same generator, crop and scale; an epoch no run of it saw, drawn with REFERENCE_SEED so that the line stays put
    between runs that trained with other seeds), scored as the training PSNR is (left view, the boundary columns
    cropped, `training.tasks.StereoSR.step_metrics`): the level the student's training PSNR climbs towards. None,
    said in one line, when the run had no teacher or its file is not here as the run recorded it."""
    args = stored.get('args', {})
    records = stored.get('teachers') or []
    if not args.get('teacher') or not records:
        return None
    record = records[0]
    candidates = [Path(record['path']), Path(__file__).resolve().parent / record['path']]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        print(f"no teacher line in the training figure: {record['path']} (the run's teacher) is not here")
        return None
    if record.get('sha256') and file_sha256(found) != record['sha256']:
        print(f"no teacher line in the training figure: {found} is not the file the run was trained with (sha256 "
              f"{record['sha256'][:12]}... recorded)")
        return None
    import torch
    from training.tasks import StereoSR
    from training.trainsets import stereo_dataset

    config = SimpleNamespace(**{k: args.get(k) for k in ('trainset', 'scale_factor', 'synthetic_size', 'texture_dir',
                                                          'lr_crop', 'trainset_dir', 'map_patch', 'map_pattern')},
                             seed=REFERENCE_SEED, augment=False, channel_shuffle=False)
    dataset = stereo_dataset(config)
    dataset.epoch = 10 ** 6       # scenes of an epoch the run never reached
    network, _ = load_model(found, args['scale_factor'], 'cpu', record['model'])
    scores = []
    with torch.no_grad():
        for index in range(min(count, len(dataset))):
            hr_left, hr_right, lr_left, lr_right = (t[None] for t in dataset[index][:4])
            scores.append(StereoSR().step_metrics(network(lr_left, lr_right), [hr_left, hr_right])['psnr_left'])
    return f"teacher {record['model']} on {len(scores)} fresh --trainset {args.get('trainset')} patches", \
        float(np.mean(scores))


def training_figure(checkpoint: Path, path: Path) -> bool:
    """Loss terms, train PSNR and (warm-up) matching EPE against optimisation steps, from the logs stored in an
    exported checkpoint, one shaded span per run of its history."""
    _, stored = read_checkpoint(checkpoint)
    phases = training_phases(stored)
    if not phases:
        print(f'{checkpoint} holds no training log (exported before train.py stored it): no training figure')
        return False
    plt = pyplot()
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(12, 4.5 + 0.18 * len(phases)))
    ax_epe = None
    colours, offset = {}, 0
    for k, (label, rows) in enumerate(phases):
        steps = offset + np.cumsum([r.get('iterations', 0) for r in rows])
        for ax in (ax_loss, ax_psnr):       # the run's span and its number; its label in the list below the plots
            ax.axvspan(offset, steps[-1], color=('tab:grey' if k % 2 else 'white'), alpha=0.12, lw=0)
            ax.text((offset + steps[-1]) / 2, 1.01, str(k + 1), transform=ax.get_xaxis_transform(), fontsize=8,
                    ha='center', va='bottom')
        for key in [key for key in rows[0] if key.startswith('loss_')]:
            values = np.array([r.get(key, np.nan) for r in rows], dtype=float)
            if not np.nanmax(values) > 0:
                continue
            if key not in colours:
                colours[key] = f'C{len(colours) % 10}'
                name = key[5:]
            else:
                name = None
            ax_loss.plot(steps, values, marker='.', color=colours[key], label=name,
                         lw=2.5 if key == 'loss_total' else 1)
        if 'psnr_left' in rows[0]:
            ax_psnr.plot(steps, [r['psnr_left'] for r in rows], marker='.', color='tab:blue',
                         label='train PSNR, left view' if k == 0 or ax_psnr.get_legend_handles_labels()[1] == []
                         else None)
        if 'epe' in rows[0]:
            ax_epe = ax_epe or ax_psnr.twinx()
            ax_epe.plot(steps, [r['epe'] for r in rows], marker='.', color='tab:red', label='warm-up EPE, left view')
            ax_epe.set_ylabel('EPE of the LR matching (HR px)', color='tab:red')
        offset = steps[-1]
    ax_loss.set(xlabel='optimisation step', ylabel='training loss (epoch mean)', yscale='log')
    ax_psnr.set(xlabel='optimisation step', ylabel='PSNR (dB)')
    reference = teacher_reference(stored)
    if reference is not None:
        ax_psnr.axhline(reference[1], color='tab:green', ls='--', lw=1.5,
                        label=f'{reference[0]}: {reference[1]:.2f} dB')
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='upper right' if ax is ax_loss else 'lower right')
    if ax_epe is not None:
        ax_epe.legend(fontsize=7, loc='upper right')
    args = stored.get('args', {})
    fig.suptitle(f"demo checkpoint: {args.get('model', '?')} x{args.get('scale_factor', '?')}, --trainset "
                 f"{args.get('trainset', '?')}, {int(offset)} logged steps in {len(phases)} run(s)", y=0.99)
    runs = '\n'.join(f'{k + 1}: {label}' for k, (label, _) in enumerate(phases))
    fig.text(0.01, 0.01, runs, fontsize=7, va='bottom', ha='left', family='monospace')
    fig.tight_layout(rect=(0, 0.035 * len(phases) + 0.01, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def read_bench(bench_json: Path) -> dict:
    """A bench.py --json file, checked before any figure is made (the demo figures take a minute): a JSON object with
    the run's 'model', 'device', 'torch' and at least one successful row of 'rows'. Errors name the file."""
    if not bench_json.is_file():
        raise FileNotFoundError(f'--bench {bench_json} ' + ('is a folder' if bench_json.is_dir() else 'not found')
                                + ' (make the file with python bench.py --json FILE)')
    try:
        data = json.loads(bench_json.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f'--bench {bench_json}: not a JSON file ({err})') from None
    keys = ('model', 'device', 'torch', 'rows')
    if not isinstance(data, dict) or any(k not in data for k in keys) or not isinstance(data['rows'], list):
        raise ValueError(f'--bench {bench_json}: not a bench.py --json file (expected an object with '
                         f'{", ".join(keys)}: a list of measurements)')
    rows = [r for r in data['rows'] if isinstance(r, dict) and 'error' not in r]
    if not rows:
        raise ValueError(f'--bench {bench_json}: no successful measurement to draw ({len(data["rows"])} rows, '
                         f'none without an error)')
    if not any('seconds' in r for r in rows):     # else drawn as bars of 0 s, labelled "time (s)"
        raise ValueError(f'--bench {bench_json}: holds no timings (a bench.py --count-only run); time the cases with '
                         f'bench.py --json FILE without --count-only')
    needed = ('kind', 'scale', 'batch', 'h', 'w', 'variant', 'seconds')
    if any(k not in r for r in rows for k in needed):
        raise ValueError(f'--bench {bench_json}: a row lacks one of {", ".join(needed)} (not written by bench.py?)')
    return {**data, 'rows': rows}


def bench_figure(data: dict | Path, path: Path) -> None:
    """Horizontal bars: seconds and peak GB of every case and variant of a bench.py --json file (`read_bench`); with
    a --roofline calibration, a third panel of achieved GFLOP/s against the calibrated float32 convolution peak (and
    bf16's)."""
    data = read_bench(data) if isinstance(data, Path) else data
    rows = data['rows']
    labels = [f"{'infer' if r['kind'] == 'infer' else 'train'} x{r['scale']} b{r['batch']} {r['h']}x{r['w']} "
              f"{r['variant']}" for r in rows]
    colours = ['tab:grey' if r['variant'] == 'official' else 'tab:blue' for r in rows]
    calibration = data.get('calibration')
    panels = [('seconds', 'time (s)'), ('peak_gb', 'peak memory (GB)')] + (
        [('gflop_per_s', 'GFLOP/s (counted FLOP / time)')] if calibration else [])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 0.35 * len(rows) + 1.5), sharey=True)
    for ax, (key, unit) in zip(axes, panels):
        values = [r.get(key, 0.0) for r in rows]
        ax.barh(range(len(rows)), values, color=colours)
        for i, r in enumerate(rows):
            note = f" ({r['speedup']:.2f}x)" if key == 'seconds' and 'speedup' in r else ''
            if key == 'gflop_per_s' and 'conv_peak_fraction' in r:
                note = f" ({100 * r['conv_peak_fraction']:.0f} % of fp32 conv)"
            ax.text(values[i], i, f" {values[i]:.2f}{note}", va='center', fontsize=7)
        ax.set(xlabel=unit)
        ax.grid(axis='x', alpha=0.3)
    if calibration:
        ceilings = [('conv_peak_float32', 'fp32 conv peak', 'tab:red'),
                    ('conv_channels_last_bfloat16', 'bf16 conv (channels-last)', 'tab:purple')]
        for key, label, colour in ceilings:
            if key in calibration:
                axes[-1].axvline(calibration[key], color=colour, linestyle='--', linewidth=1,
                                 label=f'{label}: {calibration[key]:.0f}')
        axes[-1].legend(fontsize=7, loc='lower right',
                        title=f"calibration, {calibration['threads']} thread(s)", title_fontsize=7)
    axes[0].set_yticks(range(len(rows)), labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(f"bench.py --model {data['model']} on {data['device']}, torch {data['torch']} "
                 f"(grey: the authors' code)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, default=demo.DEMO_CHECKPOINT, help='the demo checkpoint')
    parser.add_argument('--bench', type=Path, default=None, help='a bench.py --json file to draw')
    parser.add_argument('--out', type=Path, default=FIGS, help='output folder (default: figs/)')
    parser.add_argument('--authors_weights', type=Path, default=None, metavar='DIR',
                        help=f'folder holding the authors\' {", ".join(RELEASES[n].file for n in TRAINED)} (their file '
                             'names) for figs/trained_motorcycle.png (default: found by release name in checkpoints/ '
                             'or the weights cache; skipped when missing)')
    args = parser.parse_args(argv)
    bench = read_bench(args.bench) if args.bench is not None else None    # before the minute of demo run
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f'--out {args.out}: cannot create the output folder ({err.strerror or err})') from None
    metrics = demo_figures(args.checkpoint, args.out)
    training_figure(args.checkpoint, args.out / 'demo_training.png')
    if bench is not None:
        bench_figure(bench, args.out / 'bench.png')
    trained_figure(args.authors_weights, args.out / 'trained_motorcycle.png')
    print(f"figures in {args.out}: " + ', '.join(sorted(p.name for p in args.out.glob('*.png')))
          + f"; SR {metrics.get('psnr_gain_over_bicubic', float('nan')):+.2f} dB over bicubic")
    return 0


if __name__ == '__main__':
    sys.exit(run_script(main))
