"""What a run leaves beside its checkpoint for people to read: log.jsonl / log.csv (one row per epoch) and
curves.png (the loss terms and the task's metric, redrawn every epoch)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from figures import pyplot


def append_log(run_dir: Path, row: dict) -> None:
    """One row per epoch in log.jsonl and log.csv (its header from the first row)."""
    with open(run_dir / 'log.jsonl', 'a') as f:
        f.write(json.dumps(row) + '\n')
    csv_path = run_dir / 'log.csv'
    new = not csv_path.exists()
    with open(csv_path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(row), extrasaction='ignore')
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot_curves(run_dir: Path, task) -> None:
    """curves.png beside the log: the loss terms, and the task's step metric with the validation score."""
    rows = [json.loads(line) for line in (run_dir / 'log.jsonl').read_text().splitlines() if line.strip()]
    epochs = np.array([r['epoch'] for r in rows], dtype=np.float64)
    plt = pyplot()
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    for key in [k[5:] for k in rows[0] if k.startswith('loss_')]:
        values = [r[f'loss_{key}'] for r in rows]
        if any(v > 0 for v in values):              # a log axis cannot show a term that is always 0
            ax_loss.plot(epochs, values, marker='.', label=key, lw=2.5 if key == 'total' else 1)
    ax_loss.set(xlabel='epoch', ylabel='training loss', yscale='log', title='loss')
    curve = task.curve(run_dir)
    ax_psnr.plot(epochs, [r[curve['key']] for r in rows], marker='.', label=curve['label'])
    ax_psnr.set(xlabel='epoch', ylabel=curve['ylabel'], title=curve['title'])
    if any('val_psnr_avg' in r for r in rows):
        ax_psnr.plot([r['epoch'] for r in rows if 'val_psnr_avg' in r],
                     [r['val_psnr_avg'] for r in rows if 'val_psnr_avg' in r], marker='o', label='validation (L+R)/2')
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / 'curves.png', dpi=100)
    plt.close(fig)
