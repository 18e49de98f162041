"""The state of a training run between its steps (`Run`) and what keeps it safe: checkpoints written only when
finite, one writer per folder (`RunLock`), Ctrl-C / SIGTERM turned into a resumable stop (`Interrupt`); and what a
finished run leaves for others: the weights-only `export` with its `lineage`."""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from models import perceptual
from models.checkpoint import non_finite_tensors, read_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.health import check_health
from training.trainsets import ResumableSampler
from utils import EXIT_INTERRUPTED

log = logging.getLogger('train')
INTERRUPTED = EXIT_INTERRUPTED  # exit code after Ctrl-C, as a shell reports SIGINT


class Interrupt:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM (what schedulers send before they preempt a job) into a request to
    stop after the running iteration and save a resumable checkpoint; a second signal acts at once, as by default."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}

    def handle(self, signum, frame):
        self.requested = True
        for s, previous in self.previous.items():
            signal.signal(s, previous)
        log.warning(f'\n{signal.Signals(signum).name}: stopping after this iteration and saving a checkpoint (send it '
                    f'again to stop at once)')


class RunLock:
    """One writer per checkpoint folder: <run_dir>/.lock holds the owner's host and PID. A second run is refused with
    a message naming the owner; a lock whose process no longer exists on this host (a killed run) is taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / '.lock'
        self.owner = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.strftime('%Y-%m-%d %H:%M:%S')}
        run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                with os.fdopen(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY), 'w') as f:
                    json.dump(self.owner, f)
                return
            except FileExistsError:
                self.take_over_stale()
        raise ValueError(f'could not lock {run_dir}')

    def take_over_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            owner = {}
        if owner.get('host') == self.owner['host'] and not pid_alive(owner.get('pid')):
            log.warning(f'{self.path.parent}: taking over the lock of a run that is gone (PID {owner.get("pid")})')
            self.path.unlink(missing_ok=True)
            return
        raise ValueError(f'{self.path.parent} is in use by another run (host {owner.get("host", "?")}, PID '
                         f'{owner.get("pid", "?")}, since {owner.get("since", "?")}); use another --checkpoint_dir, '
                         f'or delete {self.path} if that run is gone')

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:     # exists, owned by someone else
        return True
    return True


@dataclass
class Run:
    """Everything a training run holds between its steps."""

    config: TrainConfig
    task: object                             # training/tasks.py: what the batches hold, what the log shows
    device: torch.device
    world: int
    rank: int
    run_dir: Path
    dataset: object
    sampler: ResumableSampler
    local_batch: int
    iters_per_epoch: int
    model: torch.nn.Module
    net: torch.nn.Module                     # the model, or its DDP wrapper
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    use_amp: bool
    interrupt: Interrupt
    start_epoch: int = 0
    start_iteration: int = 0
    running: dict | None = None              # sums of a partly done epoch, from the checkpoint
    best: float = -math.inf
    steps: int = 0                           # optimisation steps in this process's lifetime (for --stop_after)
    skipped: int = 0                         # batches skipped for non-finite values (--skip_nonfinite), whole run
    lock: RunLock | None = None              # the main process's hold on run_dir
    last_terms: list[str] = field(default_factory=list)
    teachers: list[dict] = field(default_factory=list)   # --teacher records (path, model, weight, sha256)
    global_step: int = 0                     # iterations done in the whole run before the current one
    probe: list | None = None                # training/health.py: a fixed sample the weights are checked on

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    @property
    def recipe_terms(self) -> bool:
        """Whether the NTIRE 2023 recipe's terms wrap the objective (they read the step and cached teachers)."""
        return isinstance(self.criterion, perceptual.RecipeObjective)

    def last_good(self) -> str:
        """What the run leaves to continue from: the checkpoints on disk (each one passed these checks when it was
        written), or that there is none."""
        kept = [str(self.run_dir / n) for n in ('last.pth', 'best.pth') if (self.run_dir / n).is_file()]
        return f'the last good checkpoint{"s are" if len(kept) > 1 else " is"} {" and ".join(kept)}' if kept else \
            'no checkpoint was written yet'

    def healthy(self, name: str, epoch: int, step: int, loss: float | None) -> bool:
        """Whether the current weights may replace <run_dir>/<name> (training/health.py: probe outputs finite and
        bounded, `loss` not exploded against the previous epochs); if not, one line says why and the run stops. The
        processes of a DDP run agree (any one failing stops all)."""
        bad = non_finite_tensors(self.model.state_dict())
        failure = f'{len(bad)} weight tensors are not finite (e.g. {bad[:3]})' if bad else check_health(self, loss)
        if self.world > 1:
            flag = torch.tensor([float(failure is not None)], device=self.device)
            dist.all_reduce(flag)
            if flag.item() and failure is None:
                failure = 'another process\'s health check failed'
        if failure is None:
            return True
        log.error(f'not saving {self.run_dir / name} at epoch {epoch}, step {step}: {failure}; the network has '
                  f'diverged. Stopping; {self.last_good()} (lower --lr or set --grad_clip)')
        return False

    def save(self, name: str, epoch: int, iteration: int, running=None) -> bool:
        """Write a checkpoint, unless a weight is NaN or Inf: then the file on disk (the last good state) stays and
        False is returned."""
        bad = non_finite_tensors(self.model.state_dict())
        if bad:
            log.error(f'not saving {self.run_dir / name}: {len(bad)} weight tensors are not finite (e.g. {bad[:3]}); '
                      f'{self.last_good()}')
            return False
        if self.main_process:   # (a failed write raises OSError saying why; the old file stays)
            save_checkpoint(self.run_dir / name, self.model, optimizer=self.optimizer.state_dict(),
                            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), epoch=epoch,
                            iteration=iteration, args=self.config.to_dict(), running=running,
                            best_val_psnr_avg=self.best, skipped_nonfinite=self.skipped, teachers=self.teachers)
        return True


def export(model, config: TrainConfig, task, run_dir: Path, epoch: int, teachers: list[dict] = ()) -> None:
    """Weights-only checkpoint for sharing: no optimiser state (a third of the size), labelled as a demo when the
    weights were not trained on real data (training/trainsets.py Trainset.real_for: the stereo-SR patches, or real
    disparity maps), with the
    run's per-epoch log (its training curve)."""
    demo = not task.real_trainset(config)
    note = (f'demo checkpoint trained by this project on --trainset {config.trainset} (train.py, see args); '
            f'NOT the weights of the {config.model} paper') if demo else f'trained by train.py on --trainset ' \
        f'{config.trainset}'
    log_file = run_dir / 'log.jsonl'
    rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()] if log_file.is_file() \
        else []
    if config.vgg_weights == perceptual.RANDOM and (config.perceptual or config.texture):
        note += '; its perceptual/texture terms used a RANDOM-INITIALISED VGG (--vgg_weights random), not ImageNet'
    save_checkpoint(config.export, model, epoch=epoch, args=config.to_dict(), demo=demo, note=note, log=rows,
                    teachers=list(teachers), lineage=lineage(config))


def lineage(config: TrainConfig, limit: int = 20) -> list[dict]:
    """The runs this one started from with --init, oldest first: each one's folder, args and per-epoch log, read
    from the args.json and log.jsonl beside its checkpoint; an --init that is itself an exported checkpoint (e.g. the
    committed demo one, whose run folder is gone) gives its own args and log and the lineage it carries. The chain
    ends at a file with neither (an authors' release). An exported checkpoint carries them, so its whole training
    history (e.g. a joint run after a matching warm-up) can be drawn and repeated."""
    chain, init, seen = [], config.init, set()
    while init is not None and len(chain) < limit:
        folder = Path(init).parent
        if folder.resolve() in seen:
            break
        if not (folder / 'args.json').is_file():
            chain.extend(reversed(exported_history(init)))
            break
        seen.add(folder.resolve())
        try:
            stored = json.loads((folder / 'args.json').read_text())
            log_file = folder / 'log.jsonl'
            rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()] \
                if log_file.is_file() else []
        except (OSError, ValueError):
            break
        chain.append({'run': str(folder), 'checkpoint': str(init), 'args': stored, 'log': rows})
        init = stored.get('init')
    return chain[::-1]


def exported_history(path: str | os.PathLike) -> list[dict]:
    """The runs behind an exported checkpoint (`export`), oldest first: the lineage it carries, then its own run
    (args and per-epoch log). [] for a file without them (an authors' release, a bare state_dict) or unreadable."""
    try:
        _, stored = read_checkpoint(path)
    except (OSError, ValueError):
        return []
    if not isinstance(stored.get('args'), dict) or not isinstance(stored.get('log'), list):
        return []
    own = {'run': stored['args'].get('checkpoint_dir'), 'checkpoint': str(path), 'args': stored['args'],
           'log': stored['log']}
    return [*stored.get('lineage', []), own]
