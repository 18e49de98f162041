"""Whether the weights about to replace a checkpoint are good: `check_health` runs the network on a fixed probe
batch (outputs finite and bounded) and compares the training loss with the run's recent epochs. A diverged step can
leave finite but exploded weights (issue 28: max |w| 201 after one step at lr 200), which the non-finite guard of
`Run.save` lets through; this check refuses them, so last.pth and best.pth always hold a usable network."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from models.outputs import NonFiniteError
from training.logs import read_log

# Outputs of a healthy network stay near the range of its targets (images in [0, 1]; disparities within the
# maximum disparity): allow PROBE_BOUND times that range. A diverged network's outputs are off by orders of magnitude.
PROBE_BOUND = 10.0
# An epoch's mean training loss more than LOSS_JUMP times the median of the last LOSS_WINDOW epochs' means has
# exploded. The epoch means of a healthy run change by small factors from one epoch to the next (a step of the
# schedule, a restart, a new term switching on: well under 10x); a divergence multiplies them by 100x and more. The
# median of several epochs keeps one unusually low epoch from making the next normal one look exploded.
LOSS_JUMP = 10.0
LOSS_WINDOW = 5


def capture_probe(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The probe batch: the first sample of a training batch, kept on the CPU for the run's lifetime."""
    return [x[:1].detach().clone().cpu() for x in tensors]


def recent_losses(run_dir: Path) -> list[float]:
    """The mean training loss (loss_total) of the last LOSS_WINDOW logged epochs, from log.jsonl (so a resumed run
    has its history too)."""
    losses = [r.get('loss_total') for r in read_log(run_dir)]
    losses = [float(v) for v in losses if isinstance(v, (int, float)) and math.isfinite(v)]
    return losses[-LOSS_WINDOW:]


def loss_failure(loss: float | None, history: list[float]) -> str | None:
    """Why `loss` (an epoch's mean training loss, or the running mean of a partial epoch) has exploded against
    `history` (the previous epochs' means), or None."""
    if loss is None or not history:
        return None
    if not math.isfinite(loss):
        return f'training loss {loss}'
    reference = float(np.median(history))
    if reference > 0 and loss > LOSS_JUMP * reference:
        return (f'training loss {loss:.4g} is more than {LOSS_JUMP:g}x the median {reference:.4g} of the last '
                f'{len(history)} epochs')
    return None


def probe_failure(run) -> str | None:
    """Why the network's outputs on the run's probe batch are unusable (not finite, or beyond PROBE_BOUND times the
    range of the targets), or None. Runs in eval mode without gradients (what a saved checkpoint is used for),
    leaving the model's mode, buffers and every random number generator as they were."""
    if run.probe is None:
        return None
    model, was_training = run.model, run.model.training
    devices = [run.device] if run.device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        model.eval()
        try:
            tensors = [x.to(run.device) for x in run.probe]
            inputs, _, _ = run.task.batch_parts(run, tensors)
            out = run.task.forward(dataclasses.replace(run, net=model), inputs)   # the bare model, not DDP
            values = run.task.probe_values(out, tensors)
        except NonFiniteError as err:                # (a network's own checks on its intermediate values)
            return f'on the probe batch, {err}'
        finally:
            model.train(was_training)
    for name, (value, bound) in values.items():
        value = value.float()
        if not torch.isfinite(value).all():
            return f'probe output {name} is not finite'
        largest = value.abs().max().item()
        if largest > bound:
            return f'probe output {name} reaches {largest:.4g} (bound {bound:g})'
    return None


def check_health(run, loss: float | None) -> str | None:
    """Why the run's current weights must not replace a checkpoint, or None when they may."""
    return probe_failure(run) or loss_failure(loss, recent_losses(run.run_dir))
