"""Train SSRDE-FNet with the authors' recipe (spec §8-§10), resumable, on one or many GPUs or the CPU.

    python train.py --scale_factor 4                          # paper recipe on ./data/train/Flickr1024_patches
    python train.py --scale_factor 4 --trainset sample --n_epochs 1 --batch_size 2 --checkpoint_dir runs/try
    python train.py --resume runs/try/last.pth --n_epochs 2   # continues exactly where it stopped
    torchrun --nproc_per_node 4 train.py --scale_factor 4     # DDP; --batch_size stays the global batch

Every epoch (and on Ctrl-C, at the end of the running iteration) <checkpoint_dir>/last.pth is written atomically:
{'state_dict', 'optimizer', 'scheduler', 'scaler', 'epoch' (epochs completed), 'iteration' (batches done in the
next epoch), 'args', 'version', 'running'}. Beside it: args.json, log.csv / log.jsonl (one row per epoch) and
curves.png (loss and PSNR, redrawn every epoch).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from data.patches import PatchFolder, PatchList, sample_patches
from data.synthetic import SyntheticStereo
from models import add_model_args, build_model, model_options
from models.losses import DEFAULT_WEIGHTS, SSRDEFNetLoss
from utils import (STEREO_BOUNDARY, add_device_args, psnr, pyplot, resolve_device, save_checkpoint, seed_everything,
                   seed_worker, unwrap_model)

log = logging.getLogger('train')
# Arguments that define a run; on --resume the checkpoint's values win over the command line.
RECIPE = ('model', 'scale_factor', 'fix_right_cost_volume', 'batch_size', 'lr', 'gamma', 'n_steps', 'grad_accum',
          'loss_weight', 'trainset', 'trainset_dir', 'synthetic_size', 'seed', 'max_iters_per_epoch', 'amp', 'amp_dtype',
          'augment', 'grad_checkpoint')
INTERRUPTED = 130  # exit code after Ctrl-C, as a shell reports SIGINT


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    group = parser.add_argument_group('training (defaults = paper)')
    group.add_argument('--batch_size', type=int, default=12, help='global batch size, over all processes (paper: 12)')
    group.add_argument('--lr', type=float, default=2e-4, help='Adam learning rate (paper: 2e-4)')
    group.add_argument('--n_steps', type=int, default=30, help='StepLR: halve the lr every N epochs (paper: 30)')
    group.add_argument('--gamma', type=float, default=0.5, help='StepLR factor (paper: 0.5)')
    group.add_argument('--n_epochs', type=int, default=80, help='total number of epochs (paper: 80)')
    group.add_argument('--grad_accum', type=int, default=1,
                       help='split each (per-process) batch into N micro-batches and accumulate gradients; '
                            'BatchNorm then sees the micro-batches, as it would on N GPUs')
    group.add_argument('--loss_weight', action='append', default=[], metavar='TERM=W',
                       help=f'override a loss weight, e.g. --loss_weight disp_unsup=0.02 (defaults: {DEFAULT_WEIGHTS})')
    group.add_argument('--max_iters_per_epoch', type=int, default=0,
                       help='stop each epoch after N iterations (0 = whole epoch); for quick experiments')
    group = parser.add_argument_group('data')
    group.add_argument('--trainset', choices=('patches', 'sample', 'synthetic'), default='patches',
                       help='patches: PNG patches under --trainset_dir (data/prepare_train.py); sample: patches of '
                            'scikit-image\'s Motorcycle pair, built in memory (no download); synthetic: layered stereo '
                            'scenes rendered from scikit-image\'s photographs with known disparity, new every epoch '
                            '(data/synthetic.py; how the demo checkpoint was trained)')
    group.add_argument('--synthetic_size', type=int, default=4800, help='synthetic patches per epoch')
    group.add_argument('--trainset_dir', type=Path, default=Path('./data/train/Flickr1024_patches'),
                       help='folder holding patches_x<s>/<id>/{hr0,hr1,lr0,lr1}.png')
    group.add_argument('--augment', action=argparse.BooleanOptionalAction, default=True,
                       help='iPASSR augmentation: horizontal flip with view swap, vertical flip')
    group.add_argument('--num_workers', type=int, default=4, help='DataLoader worker processes')
    group = parser.add_argument_group('checkpoints, logging, validation')
    group.add_argument('--checkpoint_dir', type=Path, default=None,
                       help='where last.pth and the logs go (default: checkpoints/<run_name>)')
    group.add_argument('--run_name', default=None, help='default: ssrdefnet_x<s>_<trainset>')
    group.add_argument('--resume', type=Path, default=None, help='continue from this checkpoint (e.g. last.pth)')
    group.add_argument('--save_every', type=int, default=0, help='also keep epoch_NNN.pth every N epochs (0 = no)')
    group.add_argument('--val_dir', type=Path, default=None, help='test-set root to validate on (test_sr.py layout)')
    group.add_argument('--val_every', type=int, default=0, help='validate every N epochs (0 = never); '
                       'the best mean (L+R)/2 PSNR is kept as best.pth')
    group.add_argument('--export', type=Path, default=None,
                       help='at the end, also write a weights-only checkpoint (state_dict, args, epoch; no optimiser '
                            'state) to this path, e.g. for sharing. Runs not trained on real --trainset patches are '
                            'labelled demo checkpoints in it')
    group.add_argument('--stop_after', type=int, default=0, help=argparse.SUPPRESS)  # tests: act as Ctrl-C
    group = parser.add_argument_group('runtime')
    add_device_args(parser)
    group.add_argument('--amp_dtype', choices=('bfloat16', 'float16'), default='bfloat16',
                       help='autocast dtype with --amp (float16 uses a gradient scaler)')
    group.add_argument('--seed', type=int, default=1234, help='seeds data order, augmentation and initialisation')
    group.add_argument('--deterministic', action='store_true',
                       help='deterministic algorithms, no cuDNN benchmarking (grid_sample backward on CUDA stays '
                            'non-deterministic)')
    return parser.parse_args(argv)


class Interrupt:
    """Turns the first Ctrl-C into a request to stop after the running iteration; a second one stops at once."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)
        log.warning('\nCtrl-C: stopping after this iteration and saving a checkpoint (Ctrl-C again to abort)')


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose epoch order can start after the first `skip` samples (mid-epoch resume)."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return super().__len__() - self.skip


def checked(loader):
    """Batches of `loader`; a bad patch file stops the run with its name instead of a worker traceback."""
    try:
        yield from loader
    except ValueError as err:
        sys.exit(f'error: {err}')


def jsonable(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def build_dataset(args) -> PatchList | PatchFolder | SyntheticStereo:
    if args.trainset == 'sample':
        return PatchList(sample_patches(args.scale_factor), args.scale_factor, args.augment, args.seed)
    if args.trainset == 'synthetic':
        return SyntheticStereo(args.scale_factor, args.synthetic_size, args.augment, args.seed)
    return PatchFolder(args.trainset_dir, args.scale_factor, args.augment, args.seed)


def append_log(run_dir: Path, row: dict) -> None:
    with open(run_dir / 'log.jsonl', 'a') as f:
        f.write(json.dumps(row) + '\n')
    csv_path = run_dir / 'log.csv'
    new = not csv_path.exists()
    with open(csv_path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(row), extrasaction='ignore')
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot_curves(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / 'log.jsonl').read_text().splitlines() if line.strip()]
    epochs = np.array([r['epoch'] for r in rows], dtype=np.float64)
    plt = pyplot()
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ('total', 'sr'):
        ax_loss.plot(epochs, [r[f'loss_{key}'] for r in rows], marker='.', label=key)
    ax_loss.set(xlabel='epoch', ylabel='training loss', yscale='log', title='loss')
    ax_psnr.plot(epochs, [r['psnr_left'] for r in rows], marker='.', label='train, left (64 px cropped)')
    if any('val_psnr_avg' in r for r in rows):
        ax_psnr.plot([r['epoch'] for r in rows if 'val_psnr_avg' in r],
                     [r['val_psnr_avg'] for r in rows if 'val_psnr_avg' in r], marker='o', label='validation (L+R)/2')
    ax_psnr.set(xlabel='epoch', ylabel='PSNR (dB)', title='PSNR of the final SR output')
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / 'curves.png', dpi=100)
    plt.close(fig)


def validate(model, args, device) -> dict:
    """Mean scores of test_sr.py's evaluator over every SR set under --val_dir."""
    from data.testsets import DISPARITY_DATASETS, find_datasets
    from test_sr import evaluate_dataset, network_sr
    model.eval()
    scores = {}
    for name in (n for n in find_datasets(args.val_dir) if n not in DISPARITY_DATASETS):
        result = evaluate_dataset(network_sr(model, device, amp=args.amp), args.val_dir / name, args.scale_factor)
        scores.update({f'val_{name}_psnr_avg': result['psnr_avg'], f'val_{name}_psnr_left': result['psnr_left']})
    model.train()
    scores['val_psnr_avg'] = float(np.mean([v for k, v in scores.items() if k.endswith('_psnr_avg')]))
    return scores


def export(model, args) -> None:
    """Weights-only checkpoint for sharing: no optimiser state (a third of the size), labelled as a demo when the
    weights were not trained on the real stereo-SR patches."""
    demo = args.trainset != 'patches'
    note = (f'demo checkpoint trained by this project on --trainset {args.trainset} (train.py, see args); '
            f'NOT the weights of the SSRDE-FNet paper') if demo else 'trained by train.py on --trainset patches'
    save_checkpoint(args.export, model, epoch=args.n_epochs, args=jsonable(args), demo=demo, note=note)


def main(argv=None) -> int:
    args = parse_args(argv)
    interrupt = Interrupt()

    # ---- processes and device (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)
    world = int(os.environ.get('WORLD_SIZE', 1))
    rank, local_rank = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    device = resolve_device(args.device)
    if world > 1:
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    main_process = rank == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format='%(message)s')

    # ---- resume: the checkpoint's recipe wins
    checkpoint = None
    if args.resume is not None:
        if not args.resume.is_file():
            sys.exit(f'error: --resume {args.resume} not found')
        checkpoint = torch.load(args.resume, map_location='cpu', weights_only=True)
        stored = checkpoint.get('args', {})
        for key in RECIPE:
            if key in stored and stored[key] != jsonable(args)[key]:
                log.warning(f'--resume: using the checkpoint\'s {key}={stored[key]!r} (command line: '
                            f'{jsonable(args)[key]!r})')
                setattr(args, key, Path(stored[key]) if key == 'trainset_dir' else stored[key])
        args.checkpoint_dir = args.checkpoint_dir or args.resume.parent
    args.run_name = args.run_name or f'ssrdefnet_x{args.scale_factor}_{args.trainset}'
    run_dir = args.checkpoint_dir or Path('checkpoints') / args.run_name
    if args.batch_size % world or (args.batch_size // world) % args.grad_accum:
        sys.exit(f'error: --batch_size {args.batch_size} must split into {world} processes x {args.grad_accum} '
                 f'micro-batches of equal size')
    weights = {}
    for item in args.loss_weight:
        name, _, value = item.partition('=')
        if name not in DEFAULT_WEIGHTS or not value:
            sys.exit(f'error: --loss_weight {item!r}: expected TERM=VALUE with TERM in {sorted(DEFAULT_WEIGHTS)}')
        weights[name] = float(value)

    # ---- seed, determinism
    seed_everything(args.seed)
    torch.backends.cudnn.benchmark = not args.deterministic
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- data
    try:
        dataset = build_dataset(args)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    local_batch = args.batch_size // world
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)

    # ---- model, loss, optimiser, schedule
    model = build_model(args.model, args.scale_factor, **model_options(args)).to(device)
    criterion = SSRDEFNetLoss(args.scale_factor, weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.n_steps, gamma=args.gamma)
    amp_dtype = getattr(torch, args.amp_dtype)
    use_amp = args.amp and device.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp and amp_dtype == torch.float16)
    start_epoch, start_iteration, running = 0, 0, None
    if checkpoint is not None:
        model.load_state_dict(checkpoint['state_dict'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        scaler.load_state_dict(checkpoint.get('scaler', {}) or scaler.state_dict())
        start_epoch, start_iteration = checkpoint['epoch'], checkpoint.get('iteration', 0)
        running = checkpoint.get('running')
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None) \
        if world > 1 else model
    best = checkpoint.get('best_val_psnr_avg', -math.inf) if checkpoint else -math.inf

    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / 'args.json').write_text(json.dumps(jsonable(args), indent=2))
        log.info('arguments:\n' + '\n'.join(f'  {k}: {v}' for k, v in jsonable(args).items()))
        log.info(f'{len(dataset)} training patches, {world} process(es) on {device}, global batch {args.batch_size}'
                 + (f', resuming after epoch {start_epoch} iteration {start_iteration}' if checkpoint else ''))

    def save(name: str, epoch: int, iteration: int, running_state=None) -> None:
        if main_process:
            save_checkpoint(run_dir / name, model, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict(), epoch=epoch, iteration=iteration, args=jsonable(args),
                            running=running_state, best_val_psnr_avg=best)

    # ---- epochs
    steps = 0  # optimisation steps in this process's lifetime (for --stop_after)
    for epoch in range(start_epoch, args.n_epochs):
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        sampler.skip = start_iteration * local_batch
        loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=args.num_workers,
                            worker_init_fn=seed_worker, pin_memory=device.type == 'cuda', drop_last=False,
                            persistent_workers=False)
        iterations = len(loader) + start_iteration
        if args.max_iters_per_epoch:
            iterations = min(iterations, args.max_iters_per_epoch)
        sums = running or {'count': 0, 'seconds': 0.0}
        running, started = None, time.time()
        bar = tqdm(total=iterations, initial=start_iteration, desc=f'epoch {epoch + 1}/{args.n_epochs}',
                   disable=not main_process, unit='it')
        for iteration, (hr_left, hr_right, lr_left, lr_right) in enumerate(checked(loader), start=start_iteration):
            if iteration >= iterations:
                break
            optimizer.zero_grad(set_to_none=True)
            terms_sum, psnrs = None, []
            n_micro = min(args.grad_accum, hr_left.shape[0])  # a short last batch may have fewer micro-batches
            for k in range(n_micro):  # micro-batch k takes every grad_accum-th sample, like DDP rank k
                micro = [x[k::args.grad_accum].to(device, non_blocking=True)
                         for x in (hr_left, hr_right, lr_left, lr_right)]
                sync = contextlib.nullcontext() if world == 1 or k == n_micro - 1 else net.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        out = net(micro[2], micro[3])
                        terms = criterion(out, micro[2], micro[3], micro[0], micro[1])
                    values = torch.stack([t.detach().float() for t in terms.values()])
                    if world > 1:
                        dist.all_reduce(values)
                        values /= world
                    if not torch.isfinite(values).all():
                        bad = {n: v.item() for n, v in zip(terms, values)}
                        bar.close()
                        log.error(f'non-finite loss at epoch {epoch + 1}, iteration {iteration + 1}: {bad}. Stopping; '
                                  f'the last good checkpoint is {run_dir / "last.pth"}')
                        return 1
                    scaler.scale(terms['total'] / n_micro).backward()
                terms_sum = values if terms_sum is None else terms_sum + values
                sr = out.sr_left.detach().float().clamp(0, 1)
                psnrs.append(psnr(sr, micro[0], crop_left=STEREO_BOUNDARY).mean().item())
                sr = out.sr_right.detach().float().clamp(0, 1)
                psnrs.append(psnr(sr[..., :-STEREO_BOUNDARY], micro[1][..., :-STEREO_BOUNDARY]).mean().item())
            scaler.step(optimizer)
            scaler.update()

            terms_mean = (terms_sum / n_micro).tolist()
            for name, value in zip(terms, terms_mean):
                sums[name] = sums.get(name, 0.0) + value
            sums['psnr_left'] = sums.get('psnr_left', 0.0) + float(np.mean(psnrs[0::2]))
            sums['psnr_right'] = sums.get('psnr_right', 0.0) + float(np.mean(psnrs[1::2]))
            sums['count'] += 1
            bar.set_postfix(loss=f"{sums['total'] / sums['count']:.4f}",
                            psnr=f"{sums['psnr_left'] / sums['count']:.2f}")
            bar.update()
            steps += 1
            if args.stop_after and steps >= args.stop_after:
                interrupt.requested = True
            if interrupt.requested:
                sums['seconds'] += time.time() - started
                save('last.pth', epoch, iteration + 1, sums)
                bar.close()
                log.warning(f'interrupted at epoch {epoch + 1}, iteration {iteration + 1}; saved '
                            f'{run_dir / "last.pth"}. Continue with --resume {run_dir / "last.pth"}')
                return INTERRUPTED
        bar.close()
        lr = optimizer.param_groups[0]['lr']
        scheduler.step()
        start_iteration = 0

        # ---- end of epoch: metrics, validation, checkpoints, curves
        seconds = sums['seconds'] + time.time() - started
        row = {'epoch': epoch + 1, 'lr': lr, **{f'loss_{n}': sums[n] / sums['count'] for n in terms},
               'psnr_left': sums['psnr_left'] / sums['count'], 'psnr_right': sums['psnr_right'] / sums['count'],
               'iterations': sums['count'], 'seconds': seconds, 'iters_per_s': sums['count'] / max(seconds, 1e-9)}
        if main_process and args.val_dir and args.val_every and (epoch + 1) % args.val_every == 0:
            row.update(validate(unwrap_model(net), args, device))
            if row['val_psnr_avg'] > best:
                best = row['val_psnr_avg']
                save('best.pth', epoch + 1, 0)
        save('last.pth', epoch + 1, 0)
        if args.save_every and (epoch + 1) % args.save_every == 0:
            save(f'epoch_{epoch + 1:03d}.pth', epoch + 1, 0)
        if main_process:
            append_log(run_dir, row)
            plot_curves(run_dir)
            log.info(f"epoch {epoch + 1}: loss {row['loss_total']:.4f} (sr {row['loss_sr']:.4f}), train PSNR left "
                     f"{row['psnr_left']:.2f} dB, {row['iters_per_s']:.3f} it/s"
                     + (f", val (L+R)/2 {row['val_psnr_avg']:.2f} dB" if 'val_psnr_avg' in row else ''))
    if main_process:
        log.info(f'done: {run_dir / "last.pth"}, logs and curves.png in {run_dir}')
        if args.export:
            export(model, args)
            log.info(f'weights-only checkpoint: {args.export}')
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
