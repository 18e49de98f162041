"""Train any network of the zoo with its authors' recipe, resumable, on one or many GPUs or the CPU.

    python train.py --scale_factor 4                          # SSRDE-FNet, paper recipe, ./data/train patches
    python train.py --model nafssr-s --scale_factor 4         # NAFSSR-S with its recipe (AdamW, cosine, MSE...)
    python train.py --model ipassr --scale_factor 4           # iPASSR with its recipe
    python train.py --model dsdmsr --scale_factor 8           # DSDMSR: disparity maps (synthetic), not stereo pairs
    python train.py --scale_factor 4 --trainset sample --n_epochs 1 --batch_size 2 --checkpoint_dir runs/try
    python train.py --resume runs/try/last.pth --n_epochs 2   # continues exactly where it stopped
    python train.py --init cvhssr-t_x4 --teacher cvhssr-s_x4 ... # authors' releases by name (docs/weights.md)
    torchrun --nproc_per_node 4 train.py --scale_factor 4     # DDP; --batch_size stays the global batch

Each network's recipe (models/<network>: its `Recipe`, loss and options) gives the defaults of the optimisation
flags; every flag overrides it (--n_epochs without --total_iters also makes an iteration-based recipe, NAFSSR's,
count epochs). Every epoch (and on Ctrl-C, at the end of the running iteration) <checkpoint_dir>/last.pth is
written atomically: {'state_dict', 'optimizer', 'scheduler', 'scaler', 'epoch' (epochs completed), 'iteration'
(batches done in the next epoch), 'args' (the resolved training/config.py TrainConfig), 'version', 'running'}.
Beside it: args.json, log.csv / log.jsonl (one row per epoch) and curves.png (loss and PSNR, redrawn every epoch;
disparity-map networks: RMSE of the fused map in HR pixels instead of PSNR, and the count of crops redrawn for
having no valid pixel). The pieces live in training/: config, data, tasks, objectives, state, loop, logs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from models import REGISTRY, build_model, model_entry
from models import perceptual
from models.checkpoint import checkpoint_model_name, load_state_dict_checked, read_checkpoint, weights_options
from models.registry import ModelEntry
from training.config import TrainConfig
from training.flags import build_parser, resolve_config
from training.loop import end_epoch, train_epoch
from training.objectives import attach_teacher_cache, build_criterion, load_teachers, teacher_records
from training.state import INTERRUPTED, Interrupt, Run, RunLock, export
from training.tasks import check_validation_data, task_for
from training.trainsets import ResumableSampler, crop_shape
from utils import UsageError, check_creatable, raise_missing, resolve_device, run_script, seed_everything
from weights import resolve_checkpoint

log = logging.getLogger('train')


def setup(config: TrainConfig, checkpoint: dict | None = None, exporting: bool = False) -> Run:
    """Processes and device, seed, data, model, objective, optimiser and schedule; `checkpoint` is the one being
    resumed (`resolve_config`), whose weights and optimiser state are loaded. `exporting`: --export was given on the
    command line (resuming a finished run then only exports it)."""
    interrupt = Interrupt()
    # ---- processes and device (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)
    world = int(os.environ.get('WORLD_SIZE', 1))
    rank, local_rank = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    device = resolve_device(config.device)
    if world > 1:
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format='%(message)s')
    entry, task = model_entry(config.model), task_for(config)
    if config.scale_factor not in entry.scales:
        raise UsageError(f'{config.model} is defined for --scale_factor {", ".join(map(str, entry.scales))}')
    run_dir = config.checkpoint_dir or Path('checkpoints') / config.run_name
    if rank == 0:   # at start-up: a folder that cannot be made must not cost the data and the networks
        check_creatable(run_dir, '--checkpoint_dir')
    if config.batch_size % world or (config.batch_size // world) % config.grad_accum:
        raise UsageError(f'--batch_size {config.batch_size} must split into {world} processes x {config.grad_accum} '
                         f'micro-batches of equal size')

    # ---- seed, determinism
    seed_everything(config.seed)
    torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- what the flags and --init alone can refuse, before any data is read (consumes no random numbers)
    if config.options.get('drop_path') and not any(o.name == 'drop_path' for o in entry.options):
        with_it = [n for n, e in REGISTRY.items() if any(o.name == 'drop_path' for o in e.options)]
        raise UsageError(f'--drop_path: {config.model} has no stochastic depth (networks with it: '
                         f'{", ".join(with_it)})')
    init = init_weights(config, entry) if checkpoint is None and config.init is not None else None

    # ---- data (the task's: stereo patches or disparity maps)
    dataset = task.build_dataset(config)
    check_validation_data(task, config)
    local_batch = config.batch_size // world
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
    iters_per_epoch = math.ceil(math.ceil(len(dataset) / world) / local_batch)
    if config.max_iters_per_epoch:
        iters_per_epoch = min(iters_per_epoch, config.max_iters_per_epoch)
    if config.total_iters > 0:   # an iteration-based recipe: as many epochs as the iterations need
        config.n_epochs = math.ceil(config.total_iters / iters_per_epoch)
    if checkpoint is not None and checkpoint['epoch'] >= config.n_epochs and not exporting:
        done = checkpoint['epoch']   # nothing to train: say so rather than print "done" over an untouched run
        if config.total_iters > 0:   # a DEFINITION of the run (its cosine schedule ends there): not extended
            more = (f'its {config.total_iters} iterations (--total_iters is part of the run: its learning-rate '
                    f'schedule ends there); to train further start a new run from it with --init {config.resume}')
        else:
            more = f'its {done} epoch(s); to train it further pass --n_epochs above {done}'
        raise UsageError(f'--resume {config.resume}: this run has already finished {more}, or pass --export FILE '
                         f'to export it as it is')

    # ---- model
    model = build_model(config.model, config.scale_factor, **config.model_options).to(device)
    if config.stage == 'matching':
        if not hasattr(model, 'matching'):
            raise UsageError(f'--stage matching: {config.model} has no separate LR matching stage (networks that do: '
                             f'ssrdefnet)')
        if world > 1:
            raise UsageError('--stage matching runs in one process (a short warm-up; DDP would synchronise '
                             'the gradients of modules it does not run)')
    if config.lr_crop:   # at start-up, not at the first step: a crop the network cannot take (its windows, pooling)
        h, w = crop_shape(config.lr_crop)
        try:
            with torch.no_grad():
                model.eval()(*(torch.zeros(1, 3, h, w, device=device),) * 2)
        except (RuntimeError, ValueError) as err:
            raise UsageError(f'--lr_crop {config.lr_crop}: {config.model} cannot run on {h}x{w} LR patches '
                             f'({str(err).splitlines()[0]})') from None
        finally:
            model.train()
    amp_dtype = getattr(torch, config.amp_dtype)
    use_amp = config.amp and device.type == 'cuda'

    # ---- teachers and objective
    if config.teacher_cache is not None and not config.teacher:
        raise UsageError('--teacher_cache DIR needs at least one --teacher CHECKPOINT')
    networks, records = load_teachers(config, device, checkpoint)
    online = networks and config.teacher_cache is None   # with the cache, no teacher runs per step
    teachers = perceptual.Teachers(networks, [r['weight'] for r in records]) if online else None
    criterion = build_criterion(config, entry, dataset, teachers).to(device)   # (missing VGG files stop here)
    if config.teacher_cache is not None:
        attach_teacher_cache(config, dataset, networks, records, device, rank, world, use_amp, amp_dtype)
        del networks

    # ---- optimiser and schedule
    optimizer_class = {'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW}[config.optimizer]
    optimizer = optimizer_class(model.parameters(), lr=config.lr, betas=config.betas,
                                weight_decay=config.weight_decay, amsgrad=config.amsgrad)
    if config.schedule == 'cosine':   # stepped every iteration: iteration i (from 0) runs at lr(i), as BasicSR's
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.total_iters or config.n_epochs * iters_per_epoch, eta_min=config.eta_min)
    else:                             # stepped every epoch
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.n_steps, gamma=config.gamma)
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp and amp_dtype == torch.float16)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None) \
        if world > 1 else model
    run = Run(config, task, device, world, rank, run_dir, dataset, sampler, local_batch, iters_per_epoch, model, net,
              criterion, optimizer, scheduler, scaler, amp_dtype, use_amp, interrupt, teachers=records)

    # ---- weights: fine-tuning (--init) or the resumed run's whole state
    if init is not None:
        try:
            load_state_dict_checked(model, init, config.init)
        except ValueError as err:
            raise ValueError(f'--init: {err}') from None
    if checkpoint is not None:
        load_resumed_weights(model, config, checkpoint)
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        scaler.load_state_dict(checkpoint.get('scaler', {}) or scaler.state_dict())
        run.start_epoch, run.start_iteration = checkpoint['epoch'], checkpoint.get('iteration', 0)
        run.running, run.best = checkpoint.get('running'), checkpoint.get('best_val_psnr_avg', -math.inf)
        run.skipped = checkpoint.get('skipped_nonfinite', 0)

    # ---- the run's folder and what it says
    if run.main_process:
        run.lock = RunLock(run_dir)
        (run_dir / 'args.json').write_text(json.dumps(config.to_dict(), indent=2))
        log.info('arguments:\n' + '\n'.join(f'  {k}: {v}' for k, v in config.to_dict().items()))
        log.info(f'{config.model} x{config.scale_factor}, recipe: {entry.recipe.source}; {len(dataset)} training '
                 f'patches, {world} process(es) on {device}, global batch {config.batch_size}'
                 + (f', {config.total_iters} iterations' if config.total_iters else f', {config.n_epochs} epochs')
                 + (f', resuming after epoch {run.start_epoch} iteration {run.start_iteration}' if checkpoint else ''))
        if run.recipe_terms:
            log.info('NTIRE 2023 recipe terms: ' + ', '.join(f'{k} x {w:g}' for k, w in criterion.recipe_weights.items()
                                                          if criterion.term_on(k))
                     + ''.join(f'; teacher {r["path"]} ({r["model"]}) x {r["weight"]:g}' for r in records)
                     + (f'; teacher outputs from {config.teacher_cache}' if config.teacher_cache else ''))
    return run


def resolve_weight_names(args) -> list[str]:
    """--init and --teacher may name an authors' release (docs/weights.md, e.g. cvhssr-t_x4): each becomes the file
    found in checkpoints/ or the cache folder (SHA-256 checked; downloaded with --download_weights) and the network
    the release holds (--init: the run's --model when none is given). Paths pass through. Not on --resume, whose
    teachers and weights are the run's own. Returns what is missing or unreadable, one message per file, so that
    all of them are reported at once (`check_weight_files`)."""
    missing = []
    if args.resume is not None:
        return missing
    if args.init is not None:
        try:
            init = resolve_checkpoint(args.init, args.model, args.scale_factor, args.download_weights)
            args.init, args.model = init.path, init.model
        except UsageError:
            raise
        except (FileNotFoundError, ValueError) as err:
            missing.append(f'--init: {err}')
    for item in args.teacher or []:
        named = [t for t in item[1:] if t in REGISTRY]
        try:
            teacher = resolve_checkpoint(item[0], named[0] if named else None, args.scale_factor,
                                         args.download_weights)
        except UsageError as err:
            raise UsageError(f'--teacher: {err}') from None
        except (FileNotFoundError, ValueError) as err:
            missing.append(f'--teacher: {err}')
            continue
        if teacher.release is not None:     # the file, and the network the release holds
            item[:] = [str(teacher.path), teacher.model, *(t for t in item[1:] if t not in REGISTRY)]
    return missing


def args_missing(path: str, missing: list[str]) -> bool:
    return not Path(path).is_file() and any(path in m for m in missing)


def check_weight_files(config: TrainConfig, missing: list[str]) -> None:
    """Before any work (no data read, no network built): the VGG files of --perceptual / --texture beside the --init /
    --teacher files already looked for (`missing`), every file that is missing or unreadable named in one message;
    then each teacher must be a network of the student's kind (a disparity-map network outputs no SR image)."""
    student = model_entry(config.model)
    kinds = {}
    for record in teacher_records(config):
        if args_missing(record['path'], missing):
            continue          # already named by resolve_weight_names
        try:
            _, stored = read_checkpoint(record['path'])
        except (FileNotFoundError, ValueError) as err:
            missing.append(f'--teacher: {err}')
            continue
        name = record['model'] or checkpoint_model_name(stored)
        if name is not None:
            kinds[record['path']] = model_entry(name)
    for name, arch in (('perceptual', 'vgg16'), ('texture', 'vgg19')):
        if getattr(config, name) and config.vgg_weights != perceptual.RANDOM:
            try:
                perceptual.find_weights(perceptual.WEIGHT_FILES[arch], config.vgg_weights, '--vgg_weights',
                                        f'--{name} (ImageNet {arch.upper()})', config.download_weights)
            except FileNotFoundError as err:
                missing.append(str(err))
    raise_missing(missing, 'weight files are missing or unreadable')
    for path, teacher in kinds.items():
        if teacher.modality != student.modality:
            raise UsageError(f'--teacher {path} is {teacher.name}, a {teacher.modality.replace("_", "-")} network: '
                             f'a teacher must output what the student {config.model} does (a '
                             f'{student.modality.replace("_", "-")} network), e.g. a stereo SR network of the zoo')


def load_resumed_weights(model: torch.nn.Module, config: TrainConfig, checkpoint: dict) -> None:
    """The --resume run's weights into `model`, through the loaders' checks (shapes, scale, non-finite weights)."""
    try:
        load_state_dict_checked(model, checkpoint['state_dict'], config.resume)
    except ValueError as err:
        raise ValueError(f'--resume: {err}') from None


def init_weights(config: TrainConfig, entry: ModelEntry) -> dict:
    """--init's state_dict. The options its weights fix (Option.of_weights: an authors' release's implied ones, e.g.
    BGR input for NAFSSR/CVHSSR/EHFSSR 'params' files, or those a project checkpoint recorded) go into
    `config.options`, so the network is built as the weights need, as `load_model` does, and the run records them."""
    try:
        state_dict, stored = read_checkpoint(config.init)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f'--init: {err}') from None
    recorded = checkpoint_model_name(stored)
    if recorded is not None and recorded != config.model:
        raise ValueError(f'--init {config.init} is a checkpoint of {recorded}, not {config.model}; use --model '
                         f'{recorded}')
    of_weights = {o.name for o in entry.options if o.of_weights}
    fixed = {k: v for k, v in weights_options(entry, stored).items() if k in of_weights}
    if fixed:
        log.info('--init: ' + ', '.join(f'{k}={v!r}' for k, v in fixed.items()) + ' (what its weights need)')
    config.options.update(fixed)
    return state_dict


def run_epochs(run: Run) -> int:
    """Epochs until the end of the run (or an interruption: the exit code), then the export."""
    config = run.config
    for epoch in range(run.start_epoch, config.n_epochs):
        sums = train_epoch(run, epoch)
        if isinstance(sums, int):
            return sums
        if not end_epoch(run, epoch, sums):
            return 1
        if run.interrupt.requested and epoch + 1 < config.n_epochs:
            log.warning(f'interrupted after epoch {epoch + 1}; continue with --resume {run.run_dir / "last.pth"}')
            return INTERRUPTED
    if run.main_process:
        log.info(f'done: {run.run_dir / "last.pth"}, logs and curves.png in {run.run_dir}')
        if config.export:
            export(run.model, config, run.task, run.run_dir, max(run.start_epoch, config.n_epochs), run.teachers)
            log.info(f'weights-only checkpoint: {config.export}')
    if run.world > 1:
        dist.destroy_process_group()
    return 0


def export_only(config: TrainConfig, checkpoint: dict) -> int:
    """--export_only: the --resume run's weights as last saved, with its log so far and the teachers it recorded. Only
    the run's checkpoint and log are read: no training data, no teacher file (it need not be here), no lock (a run
    still training can be exported as it is) and nothing written into the run's folder."""
    model = build_model(config.model, config.scale_factor, **config.model_options)
    load_resumed_weights(model, config, checkpoint)
    export(model, config, task_for(config), config.checkpoint_dir, checkpoint['epoch'],
           checkpoint.get('teachers') or [])
    log.info(f'weights-only checkpoint of {config.resume} as it is ({checkpoint["epoch"]} epoch(s) and '
             f'{checkpoint.get("iteration", 0)} iteration(s) done): {config.export}')
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO if int(os.environ.get('RANK', 0)) == 0 else logging.WARNING,
                        format='%(message)s')
    args = build_parser(__doc__).parse_args(argv)
    if args.export_only and (args.resume is None or args.export is None):
        raise UsageError('--export_only writes the --export FILE of the --resume run: give both')
    missing = resolve_weight_names(args)                  # release names of --init and --teacher -> files
    config, checkpoint = resolve_config(args)             # recipe < checkpoint < flags
    if args.export_only:                                  # the weights as last saved, its log rows so far
        return export_only(config, checkpoint)
    check_weight_files(config, missing)                   # every missing weight file at once, before any work
    run = setup(config, checkpoint, exporting=args.export is not None)
    try:
        return run_epochs(run)
    finally:
        if run.lock is not None:
            run.lock.release()


if __name__ == '__main__':
    sys.exit(run_script(main))
