"""The loop: one optimisation step (`train_step`), one epoch from where the run stands (`train_epoch`), and the end
of an epoch: schedule, log row, checkpoints, validation, curves (`end_epoch`). What a batch holds and what is
measured beside the loss come from the run's task (training/tasks.py)."""
from __future__ import annotations

import contextlib
import logging
import signal
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.checkpoint import unwrap_model
from models.outputs import NonFiniteError
from training.health import capture_probe
from training.logs import append_log, plot_curves
from training.state import INTERRUPTED, Run
from training.trainsets import checked
from utils import seed_worker

log = logging.getLogger('train')


def start_worker(worker_id: int) -> None:
    """A DataLoader worker: seeded (utils.seed_worker), and deaf to Ctrl-C and SIGTERM, which a terminal or a
    scheduler sends to the whole process group. The main process handles them (training/state.py Interrupt): it ends
    the running iteration, saves, and shuts its workers down; a worker killed first would end the run unsaved."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed_worker(worker_id)


def check_gradients(model: torch.nn.Module) -> None:
    """Raise NonFiniteError naming the parameters whose gradient holds NaN or Inf (one fused norm per step; the
    names are looked up only when it is not finite)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads or torch.isfinite(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))):
        return
    bad = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    raise NonFiniteError(f'non-finite gradients in {len(bad)} parameter tensors (e.g. {bad[:3]})')


def train_step(run: Run, batch) -> tuple[list[str], torch.Tensor, dict[str, float]]:
    """One optimisation step on a batch, or none: when a loss term, a gradient or a value the network checks is not
    finite it raises NonFiniteError after putting back everything the batch touched (`guarded_step`)."""
    buffers = [b.detach().clone() for b in run.model.buffers()]   # BatchNorm running statistics (a few kB)
    scaler = run.scaler.state_dict()
    try:
        return guarded_step(run, batch)
    except NonFiniteError:
        # The forward pass has already written the bad batch into the BatchNorm running statistics; the optimiser
        # has not stepped (every check comes before `scaler.step`) and its gradients are cleared by the caller.
        with torch.no_grad():
            for buffer, kept in zip(run.model.buffers(), buffers):
                buffer.copy_(kept)
        if run.scaler.is_enabled():
            run.scaler.load_state_dict(scaler)
        raise


def guarded_step(run: Run, batch) -> tuple[list[str], torch.Tensor, dict[str, float]]:
    """One optimisation step on a batch (its parts as the task says, `batch_parts`), split into --grad_accum
    micro-batches. Returns (term names, mean term values, mean `step_metrics`); raises NonFiniteError when a
    loss term, or a value the network checks, is not finite."""
    config, world = run.config, run.world
    run.optimizer.zero_grad(set_to_none=True)
    terms_sum, metrics = None, []
    n_micro = min(config.grad_accum, batch[0].shape[0])  # a short last batch may have fewer micro-batches
    for k in range(n_micro):  # micro-batch k takes every grad_accum-th sample, like DDP rank k
        tensors = [x[k::config.grad_accum].to(run.device, non_blocking=True) for x in batch]
        inputs, targets, supervision = run.task.batch_parts(run, tensors)
        sync = contextlib.nullcontext() if world == 1 or k == n_micro - 1 else run.net.no_sync()
        with sync:
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
                out = run.task.forward(run, inputs)
                terms = run.criterion(out, *targets, **supervision)
            values = torch.stack([t.detach().float() for t in terms.values()])
            if world > 1:
                dist.all_reduce(values)
                values /= world
            if not torch.isfinite(values).all():
                raise NonFiniteError(f'non-finite loss terms {dict(zip(terms, values.tolist()))}')
            total = terms['total'] / n_micro
            if world > 1:   # DDP needs a gradient for every parameter, also those of a dropped block (stochastic depth)
                total = total + 0 * sum(p.sum() for p in run.model.parameters())
            run.scaler.scale(total).backward()
        terms_sum = values if terms_sum is None else terms_sum + values
        metrics.append(run.task.step_metrics(out, tensors))
    if not run.scaler.is_enabled():   # (a float16 gradient scaler skips steps with inf/NaN gradients itself)
        check_gradients(run.model)
    if config.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if config.schedule == 'cosine':
        run.scheduler.step()
    return list(terms), terms_sum / n_micro, {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}


def train_epoch(run: Run, epoch: int) -> int | dict:
    """One epoch from `run.start_iteration`. Returns the epoch's sums, or an exit code (interrupted, non-finite)."""
    config = run.config
    run.dataset.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    run.sampler.skip = run.start_iteration * run.local_batch
    loader = DataLoader(run.dataset, batch_size=run.local_batch, sampler=run.sampler, num_workers=config.num_workers,
                        worker_init_fn=start_worker, pin_memory=run.device.type == 'cuda', drop_last=False,
                        persistent_workers=False)
    iterations = run.iters_per_epoch
    if config.total_iters:   # the last epoch of an iteration-based recipe stops at total_iters
        iterations = min(iterations, config.total_iters - epoch * run.iters_per_epoch)
    sums = run.running or {'count': 0, 'seconds': 0.0}
    run.running, started = None, time.time()
    bar = tqdm(total=iterations, initial=run.start_iteration, desc=f'epoch {epoch + 1}/{config.n_epochs}',
               disable=not run.main_process, unit='it')
    for iteration, batch in enumerate(checked(loader), start=run.start_iteration):
        if iteration >= iterations:
            break
        run.global_step = epoch * run.iters_per_epoch + iteration
        if run.probe is None:
            run.probe = capture_probe(batch)
        try:
            names, values, metrics = train_step(run, batch)
        except NonFiniteError as err:
            step = epoch * run.iters_per_epoch + iteration + 1
            where = (f'at epoch {epoch + 1}, iteration {iteration + 1} (step {step}, lr '
                     f'{run.optimizer.param_groups[0]["lr"]:g})')
            run.optimizer.zero_grad(set_to_none=True)          # the bad batch changes nothing
            if run.skipped < config.skip_nonfinite:
                run.skipped += 1
                log.warning(f'{err} {where}: batch skipped ({run.skipped} of --skip_nonfinite {config.skip_nonfinite})')
                bar.update()
                continue
            bar.close()
            log.error(f'{err} {where}. Stopping; {run.last_good()}'
                      + (f' (--skip_nonfinite {config.skip_nonfinite}: all {run.skipped} skips used)'
                         if config.skip_nonfinite else '; --skip_nonfinite N skips up to N such batches'))
            return 1
        run.last_terms = names
        for name, value in zip(names, values.tolist()):
            sums[name] = sums.get(name, 0.0) + value
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + value
        sums['count'] += 1
        shown = run.task.metrics[0]
        bar.set_postfix(loss=f"{sums['total'] / sums['count']:.4f}",
                        **{shown.split('_')[0]: f"{sums[shown] / sums['count']:.2f}"})
        bar.update()
        run.steps += 1
        if config.stop_after and run.steps >= config.stop_after:
            run.interrupt.requested = True
        if run.interrupt.requested and iteration + 1 < iterations:   # (on the last one the epoch ends as usual)
            sums['seconds'] += time.time() - started
            bar.close()
            if not (run.healthy('last.pth', epoch + 1, run.global_step + 1, sums['total'] / sums['count'])
                    and run.save('last.pth', epoch, iteration + 1, sums)):
                return 1
            log.warning(f'interrupted at epoch {epoch + 1}, iteration {iteration + 1}; saved '
                        f'{run.run_dir / "last.pth"}. Continue with --resume {run.run_dir / "last.pth"}')
            return INTERRUPTED
    bar.close()
    sums['seconds'] += time.time() - started
    return sums


def end_epoch(run: Run, epoch: int, sums: dict) -> bool:
    """Returns False when the epoch's weights are not finite (nothing saved; the run stops)."""
    config = run.config
    lr = run.optimizer.param_groups[0]['lr']
    if config.schedule != 'cosine':
        run.scheduler.step()
    run.start_iteration = 0
    count = max(sums['count'], 1)
    # the loss terms: those of the last step, or, for an epoch whose steps all ran before a resume, the sums' own
    terms = run.last_terms or [k for k in sums if k not in (*run.task.metrics, 'count', 'seconds')]
    row = {'epoch': epoch + 1, 'lr': lr, **{f'loss_{n}': sums.get(n, 0.0) / count for n in terms},
           **{name: sums.get(name, 0.0) / count for name in run.task.metrics},
           'iterations': sums['count'], 'seconds': sums['seconds'],
           'iters_per_s': sums['count'] / max(sums['seconds'], 1e-9)}
    row.update(run.task.epoch_columns(run.dataset))
    loss = sums['total'] / count if 'total' in sums else None
    if not run.healthy('last.pth', epoch + 1, epoch * run.iters_per_epoch + sums['count'], loss):
        return False
    if not run.save('last.pth', epoch + 1, 0):      # first: an interrupted validation must not cost the epoch
        return False
    if config.save_every and (epoch + 1) % config.save_every == 0:
        run.save(f'epoch_{epoch + 1:03d}.pth', epoch + 1, 0)
    if run.main_process and config.val_dir and config.val_every and (epoch + 1) % config.val_every == 0:
        if run.interrupt.requested:
            log.warning(f'epoch {epoch + 1} saved; validation skipped (interrupted)')
        else:
            try:
                row.update(run.task.validate(unwrap_model(run.net), config, run.device))
            except (FileNotFoundError, ValueError) as err:
                log.error(f'validation failed after epoch {epoch + 1} (saved in {run.run_dir / "last.pth"}): {err}')
                return False
            if row['val_psnr_avg'] > run.best:
                run.best = row['val_psnr_avg']
                run.save('best.pth', epoch + 1, 0)
                run.save('last.pth', epoch + 1, 0)        # records the new best score for a resume
    if run.main_process:
        append_log(run.run_dir, row)
        plot_curves(run.run_dir, run.task)
        log.info(f"epoch {epoch + 1}: loss {row['loss_total']:.4f}, " + run.task.summary(row)
                 + f"{row['iters_per_s']:.3f} it/s"
                 + (f", val (L+R)/2 {row['val_psnr_avg']:.2f} dB" if 'val_psnr_avg' in row else ''))
    return True
