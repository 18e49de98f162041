"""The README's pictures, made by the project's own scripts (one command, about a minute on a CPU):

    python make_figs.py                          # figs/demo_*.png from demo.py and the demo checkpoint
    python make_figs.py --bench bench.json       # + figs/bench.png from a `python bench.py --json bench.json` run

figs/demo_comparison.png   demo.py on Motorcycle at x4: LR, bicubic, SR, HR, disparity, ground truth, block matcher
figs/demo_disparity.png    demo.py's disparity figure (SR left view and its HR disparity)
figs/demo_training.png     the demo checkpoint's training curve: the per-epoch log train.py --export stores in it
figs/bench.png             time and peak memory per case and variant (official code included when it was measured)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

import demo
from utils import pyplot, read_checkpoint, run_script

FIGS = Path(__file__).resolve().parent / 'figs'


def demo_figures(checkpoint: Path, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = demo.main(['--checkpoint', str(checkpoint), '--out', tmp])
        shutil.copyfile(Path(tmp) / 'comparison.png', out / 'demo_comparison.png')
        if (Path(tmp) / 'disparity_figure.png').is_file():
            shutil.copyfile(Path(tmp) / 'disparity_figure.png', out / 'demo_disparity.png')
    return metrics


def training_figure(checkpoint: Path, path: Path) -> bool:
    """Loss terms and train PSNR against optimisation steps, from the log stored in an exported checkpoint."""
    _, stored = read_checkpoint(checkpoint)
    rows = stored.get('log') or []
    if not rows:
        print(f'{checkpoint} holds no training log (exported before train.py stored it): no training figure')
        return False
    steps = np.cumsum([r.get('iterations', 0) for r in rows])
    plt = pyplot()
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    for key in [k for k in rows[0] if k.startswith('loss_')]:
        values = [r.get(key, np.nan) for r in rows]
        if np.nanmax(values) > 0:
            ax_loss.plot(steps, values, marker='.', label=key[5:], lw=2.5 if key == 'loss_total' else 1)
    ax_loss.set(xlabel='optimisation step', ylabel='training loss (epoch mean)', yscale='log', title='loss terms')
    ax_psnr.plot(steps, [r['psnr_left'] for r in rows], marker='.', label='train patches, left view')
    ax_psnr.set(xlabel='optimisation step', ylabel='PSNR (dB)', title='PSNR of the final SR output')
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    args = stored.get('args', {})
    fig.suptitle(f"demo checkpoint: {args.get('model', '?')} x{args.get('scale_factor', '?')}, --trainset "
                 f"{args.get('trainset', '?')}, batch {args.get('batch_size', '?')}, {int(steps[-1])} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def bench_figure(bench_json: Path, path: Path) -> None:
    """Horizontal bars: seconds and peak GB of every case and variant of a bench.py --json file."""
    data = json.loads(bench_json.read_text())
    rows = [r for r in data['rows'] if 'error' not in r]
    if not rows:
        raise ValueError(f'{bench_json}: no successful measurement to draw')
    labels = [f"{'infer' if r['kind'] == 'infer' else 'train'} x{r['scale']} b{r['batch']} {r['h']}x{r['w']} "
              f"{r['variant']}" for r in rows]
    colours = ['tab:grey' if r['variant'] == 'official' else 'tab:blue' for r in rows]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 1.5), sharey=True)
    for ax, key, unit in zip(axes, ('seconds', 'peak_gb'), ('time (s)', 'peak memory (GB)')):
        ax.barh(range(len(rows)), [r[key] for r in rows], color=colours)
        for i, r in enumerate(rows):
            ax.text(r[key], i, f" {r[key]:.2f}" + (f" ({r['speedup']:.2f}x)" if key == 'seconds' and 'speedup' in r
                                                    else ''), va='center', fontsize=7)
        ax.set(xlabel=unit)
        ax.grid(axis='x', alpha=0.3)
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
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        metrics = demo_figures(args.checkpoint, args.out)
        training_figure(args.checkpoint, args.out / 'demo_training.png')
        if args.bench is not None:
            if not args.bench.is_file():
                raise FileNotFoundError(f'--bench {args.bench} not found (make it with python bench.py --json FILE)')
            bench_figure(args.bench, args.out / 'bench.png')
    except (FileNotFoundError, ValueError, OSError) as err:
        sys.exit(f'error: {err}')
    print(f"figures in {args.out}: " + ', '.join(sorted(p.name for p in args.out.glob('*.png')))
          + f"; SR {metrics.get('psnr_gain_over_bicubic', float('nan')):+.2f} dB over bicubic")
    return 0


if __name__ == '__main__':
    sys.exit(run_script(main))
