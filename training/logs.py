"""What a run leaves beside its checkpoint for people to read: log.jsonl / log.csv (one row per epoch) and
curves.png (the loss terms and the task's metric, redrawn every epoch)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from figures import pyplot


def append_log(run_dir: Path, row: dict) -> None:
    """Add the row of epoch row['epoch'] to log.jsonl and log.csv, dropping any rows of that epoch and later ones (an
    epoch run again after a resume from an earlier checkpoint replaces them), so the logs hold one row per epoch,
    consistent with the checkpoint. Both files are rewritten whole (a few kB), log.csv with the columns of every
    row, and replaced atomically: an interrupt never leaves a half row or a header that does not fit."""
    rows = [r for r in read_log(run_dir) if r.get('epoch', 0) < row['epoch']] + [row]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for name in ('log.jsonl', 'log.csv'):
        partial = run_dir / f'.{name}.partial'
        with open(partial, 'w', newline='') as f:
            if name == 'log.jsonl':
                f.writelines(json.dumps(r) + '\n' for r in rows)
            else:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        os.replace(partial, run_dir / name)


def read_log(run_dir: Path) -> list[dict]:
    """The rows of <run_dir>/log.jsonl ([] when there is none); a line that is not JSON (a crash mid-write under an
    older version) is left out."""
    log_file = run_dir / 'log.jsonl'
    rows = []
    if log_file.is_file():
        for line in log_file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return [r for r in rows if isinstance(r, dict)]


def plot_curves(run_dir: Path, task) -> None:
    """curves.png beside the log: the loss terms, and the task's step metric with the validation score."""
    rows = read_log(run_dir)
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
