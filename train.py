"""Train any network of the zoo with its authors' recipe, resumable, on one or many GPUs or the CPU.

    python train.py --scale_factor 4                          # SSRDE-FNet, paper recipe, ./data/train patches
    python train.py --model nafssr-s --scale_factor 4         # NAFSSR-S with its recipe (AdamW, cosine, MSE...)
    python train.py --model ipassr --scale_factor 4           # iPASSR with its recipe
    python train.py --model dsdmsr --scale_factor 8           # DSDMSR: disparity maps (synthetic), not stereo pairs
    python train.py --scale_factor 4 --trainset sample --n_epochs 1 --batch_size 2 --checkpoint_dir runs/try
    python train.py --resume runs/try/last.pth --n_epochs 2   # continues exactly where it stopped
    torchrun --nproc_per_node 4 train.py --scale_factor 4     # DDP; --batch_size stays the global batch

Each network's recipe (models/<network>: its `Recipe`, loss and options) gives the defaults of the optimisation
flags; every flag overrides it. Every epoch (and on Ctrl-C, at the end of the running iteration)
<checkpoint_dir>/last.pth is written atomically: {'state_dict', 'optimizer', 'scheduler', 'scaler', 'epoch' (epochs
completed), 'iteration' (batches done in the next epoch), 'args', 'version', 'running'}. Beside it: args.json,
log.csv / log.jsonl (one row per epoch) and curves.png (loss and PSNR, redrawn every epoch; disparity-map networks:
RMSE of the fused map in HR pixels instead of PSNR, and the count of crops redrawn for having no valid pixel).
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
import socket
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from data.disparity_maps import LR_PATCH, DisparityMapPatches
from data.patches import (PATCH_HEIGHT, PATCH_WIDTH, PatchFolder, PatchList, SceneCrops, StereoPatches, TeacherCache,
                          read_teacher_meta, sample_patches, write_teacher_cache)
from data.synthetic import SyntheticStereo
from models import REGISTRY, add_model_args, build_model, model_entry, model_options
from models.outputs import NonFiniteError, Pair
from models.parallax import coordinates_to_disparity
from models.stereo_losses import MatchingWarmupLoss
from models import perceptual
from models.registry import Recipe
from figures import pyplot
from metrics import STEREO_BOUNDARY, psnr, rmse
from models.checkpoint import (file_sha256, load_model, load_state_dict_checked, non_finite_tensors, read_checkpoint,
                               save_checkpoint, unwrap_model)
from utils import add_device_args, resolve_device, run_script, seed_everything, seed_worker, worker_error_message

log = logging.getLogger('train')
# Flags whose default is the network's recipe (models/registry.py `Recipe`), when not given on the command line.
RECIPE_FLAGS = tuple(f.name for f in fields(Recipe) if f.name != 'source')
# Arguments that define a run; on --resume the checkpoint's values win over the command line.
RUN_DEFINITION = ('model', 'scale_factor', *(f for f in RECIPE_FLAGS if f != 'n_epochs'), 'grad_accum', 'loss_weight',
                  'disp_supervision', 'disp_supervision_parts', 'stage', 'init',
                  'trainset', 'trainset_dir', 'synthetic_size', 'seed', 'map_patch', 'map_pattern', 'lr_crop',
                  'max_iters_per_epoch', 'amp', 'amp_dtype', 'augment',
                  *sorted({o.name for entry in REGISTRY.values() for o in entry.options}),
                  'perceptual', 'perceptual_weight', 'perceptual_layers', 'perceptual_distance', 'texture',
                  'texture_weight', 'texture_layers', 'texture_distance', 'texture_start', 'texture_input_norm',
                  'teacher', 'distill_weight', 'distill_distance')
# The NTIRE 2023 recipe's flags (default None = not given) and their values when not given (models/perceptual.py).
RECIPE_TERM_DEFAULTS = {'perceptual': False, 'perceptual_weight': perceptual.PERCEPTUAL_WEIGHT,
                        'perceptual_layers': ','.join(perceptual.PERCEPTUAL_LAYERS), 'perceptual_distance': 'l1',
                        'texture': False, 'texture_weight': perceptual.TEXTURE_WEIGHT,
                        'texture_layers': ','.join(perceptual.TEXTURE_LAYERS), 'texture_distance': 'l2',
                        'texture_start': 0, 'texture_input_norm': True, 'teacher': [],
                        'distill_weight': perceptual.DISTILL_WEIGHT, 'distill_distance': 'l1'}
# Arguments a resumed run keeps unless the command line gives them (then the change is reported), and their defaults.
RUN_SETTINGS = {'n_epochs': None, 'num_workers': 4, 'save_every': 0, 'val_dir': None, 'val_every': 0,
                'skip_nonfinite': 0, 'export': None, 'vgg_weights': None, 'teacher_cache': None,
                'teacher_cache_dtype': 'float32'}
PATH_SETTINGS = ('val_dir', 'export', 'teacher_cache')
DEFAULT_WORKERS = RUN_SETTINGS['num_workers']
INTERRUPTED = 130  # exit code after Ctrl-C, as a shell reports SIGINT
# What the log shows beside the loss, by ModelEntry.modality (`step_metrics`); the first one in the progress bar.
TRAINING_METRICS = {'stereo': ('psnr_left', 'psnr_right'), 'disparity_map': ('rmse',), 'matching': ('epe',)}
# The training data that is not a demo's (`export`), by modality: real stereo-SR patches, real disparity maps.
REAL_TRAINSET = {'stereo': 'patches', 'disparity_map': 'disparity'}


def recipe_help(field_name: str) -> str:
    """'default: the network's recipe (ssrdefnet 0.0002, nafssr-s 0.003, ...)' for one Recipe field."""
    values = {}
    for name, entry in REGISTRY.items():
        values.setdefault(str(getattr(entry.recipe, field_name)), []).append(name)
    return 'default: the network\'s recipe (' + '; '.join(f'{", ".join(n)}: {v}' for v, n in values.items()) + ')'


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, default=None)   # None: ssrdefnet, or the network of --resume
    group = parser.add_argument_group('optimisation (defaults = each network\'s published recipe)')
    group.add_argument('--batch_size', type=int, default=None,
                       help='global batch size, over all processes; ' + recipe_help('batch_size'))
    group.add_argument('--optimizer', choices=('adam', 'adamw'), default=None, help=recipe_help('optimizer'))
    group.add_argument('--lr', type=float, default=None, help='learning rate; ' + recipe_help('lr'))
    group.add_argument('--betas', type=float, nargs=2, default=None, metavar=('B1', 'B2'),
                       help='Adam/AdamW betas; ' + recipe_help('betas'))
    group.add_argument('--amsgrad', action=argparse.BooleanOptionalAction, default=None,
                       help='the AMSGrad variant of Adam/AdamW; ' + recipe_help('amsgrad'))
    group.add_argument('--weight_decay', type=float, default=None, help=recipe_help('weight_decay'))
    group.add_argument('--schedule', choices=('step', 'cosine'), default=None,
                       help='step: lr x gamma every n_steps epochs; cosine: annealed every iteration to eta_min over '
                            'the whole run; ' + recipe_help('schedule'))
    group.add_argument('--n_steps', type=int, default=None, help='step schedule period (epochs); '
                       + recipe_help('n_steps'))
    group.add_argument('--gamma', type=float, default=None, help='step schedule factor; ' + recipe_help('gamma'))
    group.add_argument('--eta_min', type=float, default=None, help='cosine: final lr; ' + recipe_help('eta_min'))
    group.add_argument('--n_epochs', type=int, default=None,
                       help='total number of epochs (ignored when --total_iters > 0); ' + recipe_help('n_epochs'))
    group.add_argument('--total_iters', type=int, default=None,
                       help='train this many iterations (0: count epochs instead); ' + recipe_help('total_iters'))
    group.add_argument('--grad_clip', type=float, default=None,
                       help='clip the global gradient norm (0 = no); ' + recipe_help('grad_clip'))
    group.add_argument('--channel_shuffle', action=argparse.BooleanOptionalAction, default=None,
                       help='random RGB permutation, the same for both views and HR/LR; '
                            + recipe_help('channel_shuffle'))
    group.add_argument('--grad_accum', type=int, default=1,
                       help='split each (per-process) batch into N micro-batches and accumulate gradients; '
                            'BatchNorm then sees the micro-batches, as it would on N GPUs')
    group.add_argument('--loss_weight', action='append', default=[], metavar='TERM=W',
                       help='override a loss weight, e.g. --loss_weight disp_unsup=0.02 (terms and defaults: '
                            + '; '.join(f'{n}: {e.criterion.DEFAULT_WEIGHTS}' for n, e in REGISTRY.items()) + ')')
    group.add_argument('--disp_supervision', type=float, default=0.0, metavar='W',
                       help='add W x a supervised disparity loss (smooth L1 to the ground truth on its valid pixels) '
                            'where the training data has ground-truth disparity (--trainset synthetic or disparity); '
                            'for networks that estimate disparity. Off (0) in every paper\'s recipe; pretraining '
                            'with it, then fine-tuning without, is how stereo networks are usually trained')
    group.add_argument('--disp_supervision_parts', action='append', default=[], metavar='ESTIMATE=W',
                       help='weight of each supervised disparity estimate (defaults: '
                            + '; '.join(f'{n}: {e.criterion.DISPARITY_PARTS}' for n, e in REGISTRY.items()
                                        if e.criterion.DISPARITY_PARTS) + '; pam = LR parallax attention, hr = HR cost '
                            'volume, 1/2 = recursion)')
    group.add_argument('--stage', choices=('joint', 'matching'), default='joint',
                       help='joint (default): the network\'s whole objective. matching: a warm-up of the LR matching '
                            'alone on ground-truth disparity (--trainset synthetic or disparity), before a joint run '
                            'started from it with --init: only the modules the first LR disparity depends on run and '
                            'learn (SSRDE-FNet: features, matching features, parallax attention; about a third of a '
                            'joint step), with the supervised disparity loss of --disp_supervision (weight 1)')
    group.add_argument('--skip_nonfinite', type=int, default=None, metavar='N',
                       help='skip up to N batches whose loss or gradients are not finite (no update; each one logged) '
                            'before stopping the run (default 0: stop at the first, or the resumed run\'s)')
    group.add_argument('--max_iters_per_epoch', type=int, default=0,
                       help='stop each epoch after N iterations (0 = whole epoch); for quick experiments')
    group = parser.add_argument_group(
        'the NTIRE 2023 perceptual recipe (all off by default, so every paper\'s recipe is unchanged; any network; '
        'defaults: the seed team\'s NTIRE-SSR-DVision code, ../shared/reference/perceptual_losses.md)')
    group.add_argument('--perceptual', action='store_true', default=None,
                       help='add the perceptual term: distance between VGG-16 features of SR and HR, per view, '
                            'ImageNet-normalised input (term "perceptual")')
    group.add_argument('--perceptual_weight', type=float, default=None,
                       help=f'its weight (default {perceptual.PERCEPTUAL_WEIGHT:g}: NTIRE-23.yml loss_weight)')
    group.add_argument('--perceptual_layers', default=None, metavar='NAME[=W],...',
                       help='VGG-16 layers by name (conv3_3, relu4_3, pool2, ...), each with an optional weight '
                            f'(default {",".join(perceptual.PERCEPTUAL_LAYERS)}, weight 1 each: VGGPerceptualLoss '
                            'blocks features[0:23] of the seed code)')
    group.add_argument('--perceptual_distance', choices=('l1', 'l2'), default=None,
                       help='mean L1 or MSE between features (default l1: the seed code; its write-up says MSE)')
    group.add_argument('--texture', action='store_true', default=None,
                       help='add the texture (style) term: MSE between Gram matrices F F^T / (c h w) of VGG-19 '
                            'features of SR and HR, per view (term "texture"; with gradients, unlike the seed code)')
    group.add_argument('--texture_weight', type=float, default=None,
                       help=f'its weight (default {perceptual.TEXTURE_WEIGHT:g}: NTIRE-23.yml loss_weight 5 on the '
                            'sum of both views = 10 on their mean, which is what the term here is)')
    group.add_argument('--texture_layers', default=None, metavar='NAME[=W],...',
                       help=f'VGG-19 layers (default {",".join(perceptual.TEXTURE_LAYERS)}: TextureLossVGG19 features '
                            'indices 8/17/26/35)')
    group.add_argument('--texture_distance', choices=('l1', 'l2'), default=None,
                       help='distance between Gram matrices (default l2 = MSE: the seed code)')
    group.add_argument('--texture_start', type=int, default=None, metavar='ITER',
                       help='add the texture term from this iteration on (default 0; the seed training loop used '
                            f'{perceptual.TEXTURE_START})')
    group.add_argument('--texture_input_norm', action=argparse.BooleanOptionalAction, default=None,
                       help='ImageNet normalisation before VGG-19 (default on, as BasicSR; the seed code fed raw '
                            '[0, 1] images: --no-texture_input_norm)')
    group.add_argument('--teacher', nargs='+', action='append', default=None, metavar='CHECKPOINT [MODEL] [W]',
                       help='knowledge distillation: a frozen teacher, any network of the zoo at this scale (a '
                            'project checkpoint names its network; an authors\' release needs MODEL), with weight W '
                            '(default 1). Repeat for several teachers. Adds the term "distill" = sum_t W_t d(student, '
                            'teacher_t), the mean over both views, teachers run without gradient on the student\'s '
                            'own augmented batch')
    group.add_argument('--distill_weight', type=float, default=None,
                       help=f'lambda, the weight of "distill" (default {perceptual.DISTILL_WEIGHT:g}: spec section 3; '
                            'the write-up gives none)')
    group.add_argument('--distill_distance', choices=('l1', 'l2'), default=None,
                       help='d: mean L1 (default; the usual SR distillation) or MSE (the seed KD ymls)')
    group.add_argument('--teacher_cache', type=Path, default=None, metavar='DIR',
                       help='compute the teachers\' outputs once (one pass over the un-augmented patches) into DIR, '
                            'then read them back with the same flips and channel shuffle as the ground truth: no '
                            'teacher runs during training. Reused while its meta.json matches the teachers and data. '
                            'Not for --trainset synthetic or disparity (new patches every epoch)')
    group.add_argument('--teacher_cache_dtype', choices=('float32', 'float16'), default=None,
                       help='storage of the cached outputs (float32, the default, equals the online outputs bit for '
                            'bit; float16 halves the file: N x T x 2 x sH x sW x 3 values)')
    group.add_argument('--vgg_weights', default=None, metavar='DIR|random',
                       help=f'folder holding {perceptual.WEIGHT_FILES["vgg16"]} (perceptual) and '
                            f'{perceptual.WEIGHT_FILES["vgg19"]} (texture), torchvision\'s ImageNet files under their '
                            f'exact names (default {perceptual.DEFAULT_WEIGHTS_DIR}/, then the torch-hub cache). '
                            '"random": a seeded random VGG, for smoke tests only (labelled in logs and checkpoints)')
    group.add_argument('--download_weights', action='store_true',
                       help='let torchvision download a missing VGG file into the torch-hub cache (needs internet; '
                            'without this flag a missing file stops the run before training)')
    group = parser.add_argument_group('data')
    group.add_argument('--trainset', choices=('patches', 'sample', 'synthetic', 'disparity'), default=None,
                       help='patches (default for stereo networks): PNG patches under --trainset_dir '
                            '(data/prepare_train.py); sample: patches of '
                            'scikit-image\'s Motorcycle pair, built in memory (no download); synthetic: stereo scenes '
                            'rendered from scikit-image\'s photographs with exact disparity, new every epoch '
                            '(data/synthetic.py; how the demo checkpoint was trained); disparity: random crops of the '
                            'scenes with ground-truth disparity (KITTI PNG, Middlebury/SceneFlow PFM) under '
                            '--trainset_dir, in the test-set layout of data/prepare_test.py. Disparity-map networks '
                            '(dsdmsr) train on maps: synthetic (their default: the same scenes\' disparity, no '
                            'images) or disparity (crops of every .pfm / KITTI .png map below --trainset_dir that '
                            'matches --map_pattern)')
    group.add_argument('--synthetic_size', type=int, default=4800,
                       help='synthetic patches per epoch (disparity-map networks: also the crops per epoch of '
                            '--trainset disparity)')
    group.add_argument('--map_patch', type=int, default=LR_PATCH,
                       help='disparity-map networks: LR side of the square training crops (HR side = this x scale)')
    group.add_argument('--map_pattern', default='*',
                       help='disparity-map networks, --trainset disparity: glob of the map files below '
                            '--trainset_dir, e.g. "disp0GT.pfm" or "dispocc0.png" where images share the folders')
    group.add_argument('--trainset_dir', type=Path, default=Path('./data/train/Flickr1024_patches'),
                       help='patches: folder holding patches_x<s>/<id>/{hr0,hr1,lr0,lr1}.png; disparity: folder '
                            'holding <Dataset>/hr/<scene>/ and <Dataset>/lr_x<s>/<scene>/')
    group.add_argument('--augment', action=argparse.BooleanOptionalAction, default=True,
                       help='iPASSR augmentation: horizontal flip with view swap, vertical flip (all three networks)')
    group.add_argument('--lr_crop', type=crop_size, default=None, metavar='HxW',
                       help='train on a random HxW crop (LR pixels) of each 30x90 LR patch and the co-located HR crop, '
                            'e.g. 16x16: cheaper steps for the single-image networks on a CPU (ISRResCNet runs its '
                            'denoiser ten times at HR). Not in any paper\'s recipe; stereo networks need the whole '
                            'width for their disparity range (default: the whole patch)')
    group.add_argument('--num_workers', type=int, default=None,
                       help=f'DataLoader worker processes (default {DEFAULT_WORKERS}, or the resumed run\'s)')
    group = parser.add_argument_group('checkpoints, logging, validation')
    group.add_argument('--checkpoint_dir', type=Path, default=None,
                       help='where last.pth and the logs go (default: checkpoints/<run_name>)')
    group.add_argument('--run_name', default=None, help='default: <model>_x<s>_<trainset>')
    group.add_argument('--resume', type=Path, default=None, help='continue from this checkpoint (e.g. last.pth)')
    group.add_argument('--init', type=Path, default=None,
                       help='start from these weights (any checkpoint of the same network and scale, e.g. a '
                            'pretraining run\'s last.pth or an --export) with a new optimiser and schedule: '
                            'fine-tuning; ignored with --resume')
    group.add_argument('--save_every', type=int, default=None,
                       help='also keep epoch_NNN.pth every N epochs (default 0 = no, or the resumed run\'s)')
    group.add_argument('--val_dir', type=Path, default=None, help='test-set root to validate on (test_sr.py layout); '
                       'checked at start-up')
    group.add_argument('--val_every', type=int, default=None, help='validate every N epochs (default 0 = never, or '
                       'the resumed run\'s); '
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
    return parser


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
        sys.exit(f'error: could not lock {run_dir}')

    def take_over_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            owner = {}
        if owner.get('host') == self.owner['host'] and not pid_alive(owner.get('pid')):
            log.warning(f'{self.path.parent}: taking over the lock of a run that is gone (PID {owner.get("pid")})')
            self.path.unlink(missing_ok=True)
            return
        sys.exit(f'error: {self.path.parent} is in use by another run (host {owner.get("host", "?")}, PID '
                 f'{owner.get("pid", "?")}, since {owner.get("since", "?")}); use another --checkpoint_dir, or delete '
                 f'{self.path} if that run is gone')

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
    except (ValueError, OSError) as err:     # also in a worker: the message without the worker's traceback
        sys.exit(f'error: {worker_error_message(err)}')


def jsonable(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def build_dataset(args) -> StereoPatches | DisparityMapPatches:
    if model_entry(args.model).modality == 'disparity_map':
        return map_dataset(args)
    if args.trainset == 'sample':
        dataset = PatchList(sample_patches(args.scale_factor), args.scale_factor, args.augment, args.seed)
    elif args.trainset == 'synthetic':
        dataset = SyntheticStereo(args.scale_factor, args.synthetic_size, args.augment, args.seed)
    elif args.trainset == 'disparity':
        dataset = SceneCrops(args.trainset_dir, args.scale_factor, args.augment, args.seed)
    else:
        dataset = PatchFolder(args.trainset_dir, args.scale_factor, args.augment, args.seed)
    dataset.channel_shuffle = args.channel_shuffle
    if args.lr_crop:
        h, w = dataset.crop = crop_shape(args.lr_crop)
        if h > PATCH_HEIGHT or w > PATCH_WIDTH:
            raise ValueError(f'--lr_crop {args.lr_crop} is larger than the {PATCH_HEIGHT}x{PATCH_WIDTH} LR training '
                             f'patches')
    return dataset


def crop_size(text: str) -> str:
    """--lr_crop: 'HxW' with positive integers, kept as text (it is stored in args.json)."""
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'expected HxW in LR pixels, e.g. 16x16, got {text!r}')
    return 'x'.join(str(int(p)) for p in parts)


def crop_shape(text: str) -> tuple[int, int]:
    """(h, w) of a --lr_crop value as `crop_size` stores it."""
    h, w = (int(n) for n in text.split('x'))
    return h, w


def training_boundary(hr_width: int) -> int:
    """HR columns the training PSNR leaves out at the stereo boundary (`step_metrics`): STEREO_BOUNDARY, or 0 (whole
    views) for --lr_crop patches not wider than twice it, which would keep nothing."""
    return STEREO_BOUNDARY if hr_width > 2 * STEREO_BOUNDARY else 0


def map_dataset(args) -> DisparityMapPatches:
    """Disparity-map networks (ModelEntry.modality 'disparity_map'): items (LR map, HR map, HR valid) cropped from
    synthetic maps or from the maps under --trainset_dir. Never the stereo sets, and never Motorcycle (the sample)."""
    if args.lr_crop:
        raise ValueError(f'--lr_crop crops stereo patches; {args.model} crops its maps with --map_patch')
    if args.trainset not in ('synthetic', 'disparity'):
        raise ValueError(f'--trainset {args.trainset} holds stereo pairs; {args.model} trains on disparity maps: '
                         f'--trainset synthetic (its default) or --trainset disparity --trainset_dir DIR (.pfm / '
                         f'KITTI .png maps)')
    return DisparityMapPatches(args.scale_factor, args.trainset_dir if args.trainset == 'disparity' else None,
                               args.synthetic_size, args.map_patch, args.augment, args.seed, args.map_pattern)


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


def training_psnr_label(run_dir: Path) -> str:
    """What the training PSNR of `step_metrics` covers (`training_boundary`), from the run's args.json."""
    path = run_dir / 'args.json'
    args = json.loads(path.read_text()) if path.exists() else {}
    crop = args.get('lr_crop')
    if crop and not training_boundary(crop_shape(crop)[1] * args['scale_factor']):
        return 'train, left (whole view)'
    return f'train, left ({STEREO_BOUNDARY} px cropped)'


def plot_curves(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / 'log.jsonl').read_text().splitlines() if line.strip()]
    epochs = np.array([r['epoch'] for r in rows], dtype=np.float64)
    plt = pyplot()
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    for key in [k[5:] for k in rows[0] if k.startswith('loss_')]:
        values = [r[f'loss_{key}'] for r in rows]
        if any(v > 0 for v in values):              # a log axis cannot show a term that is always 0
            ax_loss.plot(epochs, values, marker='.', label=key, lw=2.5 if key == 'total' else 1)
    ax_loss.set(xlabel='epoch', ylabel='training loss', yscale='log', title='loss')
    if 'epe' in rows[0]:                            # --stage matching (TRAINING_METRICS)
        ax_psnr.plot(epochs, [r['epe'] for r in rows], marker='.', label='train, left view, valid pixels')
        ax_psnr.set(xlabel='epoch', ylabel='EPE (HR pixels)', title='end-point error of the LR matching')
    elif 'rmse' in rows[0]:                         # disparity-map networks (TRAINING_METRICS)
        ax_psnr.plot(epochs, [r['rmse'] for r in rows], marker='.', label='train, valid HR pixels')
        ax_psnr.set(xlabel='epoch', ylabel='RMSE (HR pixels)', title='RMSE of the fused disparity map')
    else:
        ax_psnr.plot(epochs, [r['psnr_left'] for r in rows], marker='.', label=training_psnr_label(run_dir))
        ax_psnr.set(xlabel='epoch', ylabel='PSNR (dB)', title='PSNR of the final SR output')
    if any('val_psnr_avg' in r for r in rows):
        ax_psnr.plot([r['epoch'] for r in rows if 'val_psnr_avg' in r],
                     [r['val_psnr_avg'] for r in rows if 'val_psnr_avg' in r], marker='o', label='validation (L+R)/2')
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / 'curves.png', dpi=100)
    plt.close(fig)


def check_validation_data(args) -> None:
    """At start-up, not at the first validation: --val_dir holds at least one SR set with every file of every scene
    at this scale (raises FileNotFoundError / ValueError naming what is missing)."""
    if args.val_dir is None:
        if args.val_every:
            raise ValueError(f'--val_every {args.val_every} needs --val_dir (a test-set root, test_sr.py layout)')
        return
    if model_entry(args.model).modality != 'stereo':
        raise ValueError(f'--val_dir validates stereo SR; score {args.model} checkpoints with test_disp.py --model '
                         f'{args.model} --checkpoint <run>/last.pth')
    from data.testsets import DISPARITY_DATASETS, find_datasets, list_scenes
    names = [n for n in find_datasets(args.val_dir) if n not in DISPARITY_DATASETS]
    if not names:
        raise FileNotFoundError(f'--val_dir {args.val_dir} holds no SR test set (<Dataset>/hr/<scene>/hr0.png)')
    for name in names:
        list_scenes(args.val_dir / name, args.scale_factor)
    if not args.val_every:
        log.warning(f'--val_dir {args.val_dir} is given but --val_every is 0: no validation will run')


def validate(model, args, device) -> dict:
    """Mean scores of the evaluation protocol (evaluation.py) over every SR set under --val_dir."""
    from data.testsets import DISPARITY_DATASETS, find_datasets
    from evaluation import evaluate_dataset, network_sr
    model.eval()
    scores = {}
    for name in (n for n in find_datasets(args.val_dir) if n not in DISPARITY_DATASETS):
        result = evaluate_dataset(network_sr(model, device, amp=args.amp), args.val_dir / name, args.scale_factor)
        scores.update({f'val_{name}_psnr_avg': result['psnr_avg'], f'val_{name}_psnr_left': result['psnr_left']})
    model.train()
    scores['val_psnr_avg'] = float(np.mean([v for k, v in scores.items() if k.endswith('_psnr_avg')]))
    return scores


def export(model, args, run_dir: Path, epoch: int, teachers: list[dict] = ()) -> None:
    """Weights-only checkpoint for sharing: no optimiser state (a third of the size), labelled as a demo when the
    weights were not trained on real data (REAL_TRAINSET: the stereo-SR patches, or real disparity maps), with the
    run's per-epoch log (its training curve)."""
    real = REAL_TRAINSET[model_entry(args.model).modality]
    demo = args.trainset != real
    note = (f'demo checkpoint trained by this project on --trainset {args.trainset} (train.py, see args); '
            f'NOT the weights of the {args.model} paper') if demo else f'trained by train.py on --trainset {real}'
    log_file = run_dir / 'log.jsonl'
    rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()] if log_file.is_file() \
        else []
    if args.vgg_weights == perceptual.RANDOM and (args.perceptual or args.texture):
        note += '; its perceptual/texture terms used a RANDOM-INITIALISED VGG (--vgg_weights random), not ImageNet'
    save_checkpoint(args.export, model, epoch=epoch, args=jsonable(args), demo=demo, note=note, log=rows,
                    teachers=list(teachers), lineage=lineage(args))


def lineage(args: argparse.Namespace, limit: int = 20) -> list[dict]:
    """The runs this one started from with --init, oldest first: each one's folder, args and per-epoch log, read
    from the args.json and log.jsonl beside its checkpoint (a run whose folder is gone ends the chain). An exported
    checkpoint carries them, so its whole training history (e.g. a joint run after a matching warm-up) can be drawn
    and repeated."""
    chain, init, seen = [], args.init, set()
    while init is not None and len(chain) < limit:
        folder = Path(init).parent
        if folder.resolve() in seen or not (folder / 'args.json').is_file():
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


@dataclass
class Run:
    """Everything a training run holds between its steps."""

    args: argparse.Namespace
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

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    @property
    def metrics(self) -> str:
        """The TRAINING_METRICS key: the modality, or 'matching' for --stage matching."""
        return 'matching' if self.args.stage == 'matching' else self.modality

    @property
    def modality(self) -> str:
        """'stereo' or 'disparity_map' (models/registry.py MODALITIES): what the batches and outputs are."""
        return model_entry(self.args.model).modality

    def save(self, name: str, epoch: int, iteration: int, running=None) -> bool:
        """Write a checkpoint, unless a weight is NaN or Inf: then the file on disk (the last good state) stays and
        False is returned."""
        bad = non_finite_tensors(self.model.state_dict())
        if bad:
            log.error(f'not saving {self.run_dir / name}: {len(bad)} weight tensors are not finite (e.g. {bad[:3]}); '
                      f'the last good checkpoint stays in place')
            return False
        if self.main_process:
            try:
                save_checkpoint(self.run_dir / name, self.model, optimizer=self.optimizer.state_dict(),
                                scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), epoch=epoch,
                                iteration=iteration, args=jsonable(self.args), running=running,
                                best_val_psnr_avg=self.best, skipped_nonfinite=self.skipped, teachers=self.teachers)
            except OSError as err:
                sys.exit(f'error: {err}')
        return True


# ----------------------------------------------------------------------------------------------------------------
# Set-up: processes, resume, recipe, data, model, objective, optimiser

def resolve_run_arguments(args: argparse.Namespace) -> dict | None:
    """Apply --resume (the checkpoint's run definition wins) and the network's recipe (for every optimisation flag
    not given). Returns the checkpoint being resumed, or None."""
    checkpoint = None
    if args.resume is not None:
        try:
            _, checkpoint = read_checkpoint(args.resume)      # clear errors for missing, truncated, foreign files
        except (FileNotFoundError, ValueError) as err:
            sys.exit(f'error: --resume: {err}')
        missing = [k for k in ('optimizer', 'scheduler', 'epoch', 'args') if k not in checkpoint]
        if missing:
            sys.exit(f'error: --resume {args.resume} is not a training checkpoint of train.py (it has no '
                     f'{", ".join(missing)}): it holds weights only, e.g. an --export or an authors\' release; '
                     f'resume from <checkpoint_dir>/last.pth')
        stored, given = checkpoint.get('args', {}), jsonable(args)
        defaults = jsonable(build_parser().parse_args([]))
        for key in RUN_DEFINITION:
            if key in stored and stored[key] != given.get(key):
                if given.get(key) not in (None, defaults.get(key)):   # a flag at its default was not given
                    log.warning(f'--resume: using the checkpoint\'s {key}={stored[key]!r} (command line: '
                                f'{given.get(key)!r})')
                value = stored[key]
                setattr(args, key, Path(value) if key == 'trainset_dir' else value)
        for key in RUN_SETTINGS:        # the run's settings are kept, or changed (and said so) by the command line
            if key not in stored:
                continue
            if given.get(key) is None:
                setattr(args, key, Path(stored[key]) if key in PATH_SETTINGS and stored[key] else stored[key])
            elif given[key] != stored[key]:
                log.warning(f'--resume: {key} changed from the run\'s {stored[key]!r} to {given[key]!r} (command line)')
        args.checkpoint_dir = args.checkpoint_dir or args.resume.parent
    for key, default in (*RUN_SETTINGS.items(), *RECIPE_TERM_DEFAULTS.items()):
        if getattr(args, key) is None and default is not None:
            setattr(args, key, default)
    args.model = args.model or 'ssrdefnet'
    if args.trainset is None:   # stereo networks: the prepared patches; disparity-map networks: synthetic maps
        args.trainset = 'synthetic' if model_entry(args.model).modality == 'disparity_map' else 'patches'
    recipe = model_entry(args.model).recipe
    for name in RECIPE_FLAGS:
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(recipe, name))
    args.betas = tuple(args.betas)
    args.run_name = args.run_name or f'{args.model}_x{args.scale_factor}_{args.trainset}'
    return checkpoint


def named_values(items: list[str], known, flag: str, what: str, default: float | None = None) -> dict[str, float]:
    """['a=1', 'b=0.5'] -> {'a': 1.0, 'b': 0.5}; exits naming the flag on a bad item. `known` None: any name;
    `default`: the value of a bare NAME."""
    values = {}
    for item in items:
        name, equals, value = item.partition('=')
        try:
            values[name] = float(value) if equals or default is None else default
        except ValueError:
            name = None
        if name is None or (known is not None and name not in known):
            sys.exit(f'error: {flag} {item!r}: expected NAME=VALUE with NAME one of {what}'
                     + (f' {sorted(known)}' if known is not None else ''))
    return values


def build_criterion(args, entry, dataset, teachers: perceptual.Teachers | None = None):
    """The network's objective with --loss_weight, --disp_supervision and its parts; exits on a combination that
    cannot work (supervision of a network without disparity, or on data without ground truth). With the NTIRE 2023
    recipe's terms (--perceptual, --texture, --teacher) it is wrapped in a `perceptual.RecipeObjective` that adds them
    (online `teachers`, or None when their outputs come from the teacher cache)."""
    if args.stage == 'matching':
        if args.loss_weight or args.disp_supervision or args.disp_supervision_parts or args.perceptual \
                or args.texture or args.teacher:
            sys.exit('error: --stage matching trains with the supervised disparity loss alone: drop --loss_weight, '
                     '--disp_supervision(_parts), --perceptual, --texture and --teacher')
        if not dataset.has_disparity:
            sys.exit(f'error: --stage matching needs training data with ground-truth disparity: --trainset '
                     f'synthetic, or --trainset disparity --trainset_dir DIR (not --trainset {args.trainset})')
        return MatchingWarmupLoss(args.scale_factor)
    cls = entry.criterion
    if entry.modality != 'stereo' and (args.perceptual or args.texture or args.teacher):
        sys.exit(f'error: --perceptual, --texture and --teacher compare SR images; {args.model} super-resolves '
                 f'disparity maps')
    weights = named_values(args.loss_weight, cls.DEFAULT_WEIGHTS, '--loss_weight', f'{args.model}\'s terms')
    parts = named_values(args.disp_supervision_parts, cls.DISPARITY_PARTS, '--disp_supervision_parts',
                         f'{args.model}\'s disparity estimates')
    if args.disp_supervision:
        if not cls.DISPARITY_PARTS:
            sys.exit(f'error: --disp_supervision: {args.model} does not estimate disparity (networks that do: '
                     f'{", ".join(n for n, e in REGISTRY.items() if e.criterion.DISPARITY_PARTS)})')
        if not dataset.has_disparity:
            sys.exit(f'error: --disp_supervision needs training data with ground-truth disparity: --trainset '
                     f'synthetic, or --trainset disparity --trainset_dir DIR (not --trainset {args.trainset})')
        weights['disp_sup'] = args.disp_supervision
    objective = cls(args.scale_factor, weights, parts)
    if not (args.perceptual or args.texture or args.teacher):
        return objective
    terms = {}
    for name, arch, loss in (('perceptual', 'vgg16', perceptual.perceptual_loss),
                             ('texture', 'vgg19', perceptual.texture_loss)):
        if not getattr(args, name):
            continue
        layers = named_values([x for x in getattr(args, f'{name}_layers').split(',') if x], None,
                              f'--{name}_layers', 'VGG layer names', default=1.0)
        try:
            location = vgg_weights(args, arch, f'--{name}')
            features = perceptual.VGGFeatures(arch, tuple(layers), location,
                                              input_norm=name == 'perceptual' or args.texture_input_norm)
        except perceptual.MissingWeightsError as err:
            sys.exit(f'error: {err}')
        except ValueError as err:
            sys.exit(f'error: --{name}_layers / --vgg_weights: {err}')
        terms[name] = perceptual.FeatureTerm(features, layers, loss, getattr(args, f'{name}_distance'))
    return perceptual.RecipeObjective(
        objective, terms.get('perceptual'), args.perceptual_weight, terms.get('texture'), args.texture_weight,
        args.texture_start, teachers, [t['weight'] for t in teacher_records(args)], args.distill_weight,
        args.distill_distance)


def vgg_weights(args, arch: str, flag: str):
    """The VGG file for `flag`'s term, or RANDOM (loudly labelled); exits before training when it is missing."""
    if args.vgg_weights == perceptual.RANDOM:
        log.warning(f'{flag}: RANDOM-INITIALISED {arch.upper()} (--vgg_weights random, seed {perceptual.RANDOM_SEED}), '
                    f'NOT the ImageNet weights: this term is a smoke test, not the recipe')
        return perceptual.RANDOM
    return perceptual.find_weights(perceptual.WEIGHT_FILES[arch], args.vgg_weights, '--vgg_weights',
                                   f'{flag} (ImageNet {arch.upper()})', args.download_weights)


def teacher_records(args) -> list[dict]:
    """--teacher CHECKPOINT [MODEL] [W] items -> [{'path', 'model' (None: the checkpoint's own), 'weight'}]."""
    records = []
    for item in args.teacher:
        record = {'path': item[0], 'model': None, 'weight': 1.0}
        for token in item[1:]:
            if token in REGISTRY:
                record['model'] = token
                continue
            try:
                record['weight'] = float(token)
            except ValueError:
                sys.exit(f'error: --teacher {" ".join(item)}: {token!r} is neither a network of the zoo '
                         f'({", ".join(REGISTRY)}) nor a weight')
        records.append(record)
    return records


def load_teachers(args, device, checkpoint: dict | None) -> tuple[list[torch.nn.Module], list[dict]]:
    """The frozen teachers of --teacher (eval mode, on `device`) and their records for checkpoints (path, network,
    weight, sha256 of the file). On resume the files must be the ones the run started with."""
    networks, records = [], []
    recorded = {r['path']: r for r in (checkpoint or {}).get('teachers') or []}
    for record in teacher_records(args):
        try:
            network, _ = load_model(record['path'], args.scale_factor, device, record['model'])
        except (FileNotFoundError, ValueError) as err:
            sys.exit(f'error: --teacher: {err}')
        network.requires_grad_(False)
        record = {**record, 'model': network.zoo_name, 'sha256': file_sha256(record['path'])}
        before = recorded.get(record['path'])
        if before is not None and before.get('sha256') != record['sha256']:
            sys.exit(f'error: --resume: teacher {record["path"]} is not the file the run was trained with (sha256 '
                     f'{before["sha256"][:12]}... then, {record["sha256"][:12]}... now); put the original back or '
                     f'start a new run')
        networks.append(network)
        records.append(record)
    return networks, records


def attach_teacher_cache(args, run_dataset, networks: list[torch.nn.Module], records: list[dict], device, rank: int,
                         world: int, use_amp: bool, amp_dtype) -> None:
    """--teacher_cache DIR: reuse DIR when its meta.json matches these teachers and data, else compute the teachers'
    outputs once (main process; the others wait), then read them as the dataset's extras."""
    if args.trainset in ('synthetic', 'disparity'):
        sys.exit(f'error: --teacher_cache cannot be used with --trainset {args.trainset}: its patches are new every '
                 f'epoch (random scenes or crops), so there is nothing to compute once; drop --teacher_cache (the '
                 f'teachers then run online) or train on fixed patches (--trainset patches or sample)')
    meta = {'teachers': [{'model': r['model'], 'sha256': r['sha256']} for r in records],
            'scale_factor': args.scale_factor, 'trainset': args.trainset, 'trainset_dir': str(args.trainset_dir),
            'patches': len(run_dataset), 'dtype': args.teacher_cache_dtype}
    existing = read_teacher_meta(args.teacher_cache)
    if existing is not None and existing.get('complete'):
        differ = [k for k in meta if existing.get(k) != meta[k]]
        if differ:
            sys.exit(f'error: --teacher_cache {args.teacher_cache} holds the outputs of other teachers or data '
                     f'(differs in {", ".join(differ)}); use another folder or delete this one')
        log.info(f'teacher cache: reusing {args.teacher_cache} ({len(run_dataset)} patches, {len(records)} teachers)')
    elif rank == 0:
        def predict(lr_left, lr_right):
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                outs = [net(lr_left.to(device), lr_right.to(device)) for net in networks]
            return [(o.sr_left.float(), o.sr_right.float()) for o in outs]
        write_teacher_cache(run_dataset, predict, args.teacher_cache, {**meta, 'paths': [r['path'] for r in records]},
                            batch_size=max(1, args.batch_size // world), dtype=args.teacher_cache_dtype)
    if world > 1:
        dist.barrier()
    run_dataset.extras = TeacherCache(args.teacher_cache)


def setup(args: argparse.Namespace) -> Run:
    """Processes and device, resume and recipe, seed, data, model, objective, optimiser and schedule."""
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
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format='%(message)s')

    # ---- resume and recipe
    checkpoint = resolve_run_arguments(args)
    entry = model_entry(args.model)
    if args.scale_factor not in entry.scales:
        sys.exit(f'error: {args.model} is defined for --scale_factor {", ".join(map(str, entry.scales))}')
    run_dir = args.checkpoint_dir or Path('checkpoints') / args.run_name
    if args.batch_size % world or (args.batch_size // world) % args.grad_accum:
        sys.exit(f'error: --batch_size {args.batch_size} must split into {world} processes x {args.grad_accum} '
                 f'micro-batches of equal size')

    # ---- seed, determinism
    seed_everything(args.seed)
    torch.backends.cudnn.benchmark = not args.deterministic
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- data
    try:
        dataset = build_dataset(args)
        check_validation_data(args)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    local_batch = args.batch_size // world
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    iters_per_epoch = math.ceil(math.ceil(len(dataset) / world) / local_batch)
    if args.max_iters_per_epoch:
        iters_per_epoch = min(iters_per_epoch, args.max_iters_per_epoch)
    if args.total_iters > 0:   # an iteration-based recipe: as many epochs as the iterations need
        args.n_epochs = math.ceil(args.total_iters / iters_per_epoch)

    # ---- model, teachers, objective, optimiser, schedule
    if getattr(args, 'drop_path', None) and not any(o.name == 'drop_path' for o in entry.options):
        sys.exit(f'error: --drop_path: {args.model} has no stochastic depth (networks with it: '
                 f'{", ".join(n for n, e in REGISTRY.items() if any(o.name == "drop_path" for o in e.options))})')
    model = build_model(args.model, args.scale_factor, **model_options(args)).to(device)
    if args.stage == 'matching':
        if not hasattr(model, 'matching'):
            sys.exit(f'error: --stage matching: {args.model} has no separate LR matching stage (networks that do: '
                     f'ssrdefnet)')
        if world > 1:
            sys.exit('error: --stage matching runs in one process (a short warm-up; DDP would synchronise '
                     'the gradients of modules it does not run)')
    amp_dtype = getattr(torch, args.amp_dtype)
    use_amp = args.amp and device.type == 'cuda'
    if args.teacher_cache is not None and not args.teacher:
        sys.exit('error: --teacher_cache DIR needs at least one --teacher CHECKPOINT')
    networks, records = load_teachers(args, device, checkpoint)
    online = networks and args.teacher_cache is None   # with the cache, no teacher runs per step
    teachers = perceptual.Teachers(networks, [r['weight'] for r in records]) if online else None
    criterion = build_criterion(args, entry, dataset, teachers).to(device)   # (missing VGG files stop here)
    if args.teacher_cache is not None:
        attach_teacher_cache(args, dataset, networks, records, device, rank, world, use_amp, amp_dtype)
        del networks
    optimizer_class = {'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW}[args.optimizer]
    optimizer = optimizer_class(model.parameters(), lr=args.lr, betas=args.betas, weight_decay=args.weight_decay,
                                amsgrad=args.amsgrad)
    if args.schedule == 'cosine':   # stepped every iteration: iteration i (from 0) runs at lr(i), as BasicSR's
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=args.total_iters or args.n_epochs * iters_per_epoch, eta_min=args.eta_min)
    else:                           # stepped every epoch
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.n_steps, gamma=args.gamma)
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp and amp_dtype == torch.float16)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None) \
        if world > 1 else model
    run = Run(args, device, world, rank, run_dir, dataset, sampler, local_batch, iters_per_epoch, model, net,
              criterion, optimizer, scheduler, scaler, amp_dtype, use_amp, interrupt, teachers=records)
    if checkpoint is None and args.init is not None:
        try:
            load_state_dict_checked(model, read_checkpoint(args.init)[0], args.init)
        except (FileNotFoundError, ValueError) as err:
            sys.exit(f'error: --init: {err}')
    if checkpoint is not None:
        try:   # the loaders' checks: shapes, scale, non-finite weights
            load_state_dict_checked(model, checkpoint['state_dict'], args.resume)
        except ValueError as err:
            sys.exit(f'error: --resume: {err}')
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        scaler.load_state_dict(checkpoint.get('scaler', {}) or scaler.state_dict())
        run.start_epoch, run.start_iteration = checkpoint['epoch'], checkpoint.get('iteration', 0)
        run.running, run.best = checkpoint.get('running'), checkpoint.get('best_val_psnr_avg', -math.inf)
        run.skipped = checkpoint.get('skipped_nonfinite', 0)

    if run.main_process:
        run.lock = RunLock(run_dir)
        (run_dir / 'args.json').write_text(json.dumps(jsonable(args), indent=2))
        log.info('arguments:\n' + '\n'.join(f'  {k}: {v}' for k, v in jsonable(args).items()))
        log.info(f'{args.model} x{args.scale_factor}, recipe: {entry.recipe.source}; {len(dataset)} training '
                 f'patches, {world} process(es) on {device}, global batch {args.batch_size}'
                 + (f', {args.total_iters} iterations' if args.total_iters else f', {args.n_epochs} epochs')
                 + (f', resuming after epoch {run.start_epoch} iteration {run.start_iteration}' if checkpoint else ''))
        if isinstance(criterion, perceptual.RecipeObjective):
            log.info('NTIRE 2023 recipe terms: ' + ', '.join(f'{k} x {w:g}' for k, w in criterion.recipe_weights.items()
                                                          if criterion.term_on(k))
                     + ''.join(f'; teacher {r["path"]} ({r["model"]}) x {r["weight"]:g}' for r in records)
                     + (f'; teacher outputs from {args.teacher_cache}' if args.teacher_cache else ''))
    return run


# ----------------------------------------------------------------------------------------------------------------
# One epoch, one step

def check_gradients(model: torch.nn.Module) -> None:
    """Raise NonFiniteError naming the parameters whose gradient holds NaN or Inf (one fused norm per step; the
    names are looked up only when it is not finite)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads or torch.isfinite(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))):
        return
    bad = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    raise NonFiniteError(f'non-finite gradients in {len(bad)} parameter tensors (e.g. {bad[:3]})')


def batch_parts(run: Run, tensors: list[torch.Tensor]) -> tuple[tuple, tuple, dict]:
    """One micro-batch as (the network's inputs, the criterion's arguments after the output, its keyword
    supervision). Stereo patches (hr_left, hr_right, lr_left, lr_right[, disparity left, right][, cached teacher
    outputs left, right]): the LR pair in, (lr_left, lr_right, hr_left, hr_right) to the criterion. Disparity-map
    patches (lr_map, hr_map, hr_valid), data/disparity_maps.py: the LR map in, all three to the criterion."""
    if run.modality == 'disparity_map':
        return tuple(tensors[:1]), tuple(tensors), {}
    hr_left, hr_right, lr_left, lr_right = tensors[:4]
    disparity = tensors[4:6] if run.dataset.has_disparity else []
    wanted = run.args.disp_supervision or run.args.stage == 'matching'
    supervision = {'disparity': Pair(*disparity)} if disparity and wanted else {}
    if isinstance(run.criterion, perceptual.RecipeObjective):
        supervision['step'] = run.global_step
        if run.dataset.extras is not None:    # cached teacher outputs (B, T, 3, sH, sW) per view, augmented
            cached = tensors[-2:]
            supervision['teacher'] = [Pair(cached[0][:, t], cached[1][:, t]) for t in range(cached[0].shape[1])]
    return (lr_left, lr_right), (lr_left, lr_right, hr_left, hr_right), supervision


def step_metrics(run: Run, out, tensors: list[torch.Tensor]) -> dict[str, float]:
    """What the progress bar and the log show beside the loss (TRAINING_METRICS). Stereo: PSNR of the final SR views
    clamped to [0, 1], the left without its STEREO_BOUNDARY first columns, the right without its last ones (whole
    views for --lr_crop patches not wider than twice the boundary).
    Disparity maps: RMSE in HR pixels of the fused map over the valid HR pixels of the micro-batch. --stage matching:
    EPE in HR pixels of the left view's LR-matching disparity over its valid ground truth (0 if it has none)."""
    if run.args.stage == 'matching':
        estimate = coordinates_to_disparity(out.left.detach().float(), 'left', None)
        truth = tensors[4].float()
        valid = torch.isfinite(truth) & (truth >= 0) & (truth < 192)
        return {'epe': (estimate - truth)[valid].abs().mean().item() if valid.any() else 0.0}
    if run.modality == 'disparity_map':
        _, hr_map, hr_valid = tensors
        return {'rmse': rmse(out.fused.detach().float(), hr_map, hr_valid.bool())}
    hr_left, hr_right = tensors[:2]
    sr_left, sr_right = (x.detach().float().clamp(0, 1) for x in (out.sr_left, out.sr_right))
    boundary = training_boundary(hr_left.shape[-1])     # the stereo boundary: columns without a match in the other view
    width = hr_right.shape[-1] - boundary
    return {'psnr_left': psnr(sr_left, hr_left, crop_left=boundary).mean().item(),
            'psnr_right': psnr(sr_right[..., :width], hr_right[..., :width]).mean().item()}


def train_step(run: Run, batch) -> tuple[list[str], torch.Tensor, dict[str, float]]:
    """One optimisation step on a batch (stereo or disparity-map patches, `batch_parts`), split into --grad_accum
    micro-batches. Returns (term names, mean term values, mean `step_metrics`); raises NonFiniteError when a
    loss term, or a value the network checks, is not finite."""
    args, world = run.args, run.world
    run.optimizer.zero_grad(set_to_none=True)
    terms_sum, metrics = None, []
    n_micro = min(args.grad_accum, batch[0].shape[0])  # a short last batch may have fewer micro-batches
    for k in range(n_micro):  # micro-batch k takes every grad_accum-th sample, like DDP rank k
        tensors = [x[k::args.grad_accum].to(run.device, non_blocking=True) for x in batch]
        inputs, targets, supervision = batch_parts(run, tensors)
        sync = contextlib.nullcontext() if world == 1 or k == n_micro - 1 else run.net.no_sync()
        with sync:
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
                out = (run.model.matching if args.stage == 'matching' else run.net)(*inputs)
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
        metrics.append(step_metrics(run, out, tensors))
    if not run.scaler.is_enabled():   # (a float16 gradient scaler skips steps with inf/NaN gradients itself)
        check_gradients(run.model)
    if args.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if args.schedule == 'cosine':
        run.scheduler.step()
    return list(terms), terms_sum / n_micro, {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}


def train_epoch(run: Run, epoch: int) -> int | dict:
    """One epoch from `run.start_iteration`. Returns the epoch's sums, or an exit code (interrupted, non-finite)."""
    args = run.args
    run.dataset.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    run.sampler.skip = run.start_iteration * run.local_batch
    loader = DataLoader(run.dataset, batch_size=run.local_batch, sampler=run.sampler, num_workers=args.num_workers,
                        worker_init_fn=seed_worker, pin_memory=run.device.type == 'cuda', drop_last=False,
                        persistent_workers=False)
    iterations = run.iters_per_epoch
    if args.total_iters:   # the last epoch of an iteration-based recipe stops at total_iters
        iterations = min(iterations, args.total_iters - epoch * run.iters_per_epoch)
    sums = run.running or {'count': 0, 'seconds': 0.0}
    run.running, started = None, time.time()
    bar = tqdm(total=iterations, initial=run.start_iteration, desc=f'epoch {epoch + 1}/{args.n_epochs}',
               disable=not run.main_process, unit='it')
    for iteration, batch in enumerate(checked(loader), start=run.start_iteration):
        if iteration >= iterations:
            break
        run.global_step = epoch * run.iters_per_epoch + iteration
        try:
            names, values, metrics = train_step(run, batch)
        except NonFiniteError as err:
            step = epoch * run.iters_per_epoch + iteration + 1
            where = (f'at epoch {epoch + 1}, iteration {iteration + 1} (step {step}, lr '
                     f'{run.optimizer.param_groups[0]["lr"]:g})')
            run.optimizer.zero_grad(set_to_none=True)          # the bad batch changes nothing
            if run.skipped < args.skip_nonfinite:
                run.skipped += 1
                log.warning(f'{err} {where}: batch skipped ({run.skipped} of --skip_nonfinite {args.skip_nonfinite})')
                bar.update()
                continue
            bar.close()
            log.error(f'{err} {where}. Stopping; the last good checkpoint is {run.run_dir / "last.pth"}'
                      + (f' (--skip_nonfinite {args.skip_nonfinite}: all {run.skipped} skips used)'
                         if args.skip_nonfinite else '; --skip_nonfinite N skips up to N such batches'))
            return 1
        run.last_terms = names
        for name, value in zip(names, values.tolist()):
            sums[name] = sums.get(name, 0.0) + value
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + value
        sums['count'] += 1
        shown = TRAINING_METRICS[run.metrics][0]
        bar.set_postfix(loss=f"{sums['total'] / sums['count']:.4f}",
                        **{shown.split('_')[0]: f"{sums[shown] / sums['count']:.2f}"})
        bar.update()
        run.steps += 1
        if args.stop_after and run.steps >= args.stop_after:
            run.interrupt.requested = True
        if run.interrupt.requested:
            sums['seconds'] += time.time() - started
            bar.close()
            if not run.save('last.pth', epoch, iteration + 1, sums):
                return 1
            log.warning(f'interrupted at epoch {epoch + 1}, iteration {iteration + 1}; saved '
                        f'{run.run_dir / "last.pth"}. Continue with --resume {run.run_dir / "last.pth"}')
            return INTERRUPTED
    bar.close()
    sums['seconds'] += time.time() - started
    return sums


# ----------------------------------------------------------------------------------------------------------------
# End of an epoch: schedule, metrics, validation, checkpoints, curves

def end_epoch(run: Run, epoch: int, sums: dict) -> bool:
    """Returns False when the epoch's weights are not finite (nothing saved; the run stops)."""
    args = run.args
    lr = run.optimizer.param_groups[0]['lr']
    if args.schedule != 'cosine':
        run.scheduler.step()
    run.start_iteration = 0
    count = max(sums['count'], 1)
    row = {'epoch': epoch + 1, 'lr': lr, **{f'loss_{n}': sums.get(n, 0.0) / count for n in run.last_terms},
           **{name: sums.get(name, 0.0) / count for name in TRAINING_METRICS[run.metrics]},
           'iterations': sums['count'], 'seconds': sums['seconds'],
           'iters_per_s': sums['count'] / max(sums['seconds'], 1e-9)}
    if run.modality == 'disparity_map':   # crops redrawn for having no valid HR pixel, this epoch (DisparityMapPatches)
        row['skipped_patches'] = run.dataset.skipped
    if not run.save('last.pth', epoch + 1, 0):      # first: an interrupted validation must not cost the epoch
        return False
    if args.save_every and (epoch + 1) % args.save_every == 0:
        run.save(f'epoch_{epoch + 1:03d}.pth', epoch + 1, 0)
    if run.main_process and args.val_dir and args.val_every and (epoch + 1) % args.val_every == 0:
        if run.interrupt.requested:
            log.warning(f'epoch {epoch + 1} saved; validation skipped (interrupted)')
        else:
            try:
                row.update(validate(unwrap_model(run.net), args, run.device))
            except (FileNotFoundError, ValueError) as err:
                log.error(f'validation failed after epoch {epoch + 1} (saved in {run.run_dir / "last.pth"}): {err}')
                return False
            if row['val_psnr_avg'] > run.best:
                run.best = row['val_psnr_avg']
                run.save('best.pth', epoch + 1, 0)
                run.save('last.pth', epoch + 1, 0)        # records the new best score for a resume
    if run.main_process:
        append_log(run.run_dir, row)
        plot_curves(run.run_dir)
        log.info(f"epoch {epoch + 1}: loss {row['loss_total']:.4f}, "
                 + (f"train PSNR left {row['psnr_left']:.2f} dB, " if 'psnr_left' in row else
                    f"train EPE {row['epe']:.2f} px (LR matching, left), " if 'epe' in row else
                    f"train RMSE {row['rmse']:.3f} px (fused map), {row['skipped_patches']} crops without a valid "
                    f"pixel redrawn, ")
                 + f"{row['iters_per_s']:.3f} it/s"
                 + (f", val (L+R)/2 {row['val_psnr_avg']:.2f} dB" if 'val_psnr_avg' in row else ''))
    return True


def main(argv=None) -> int:
    run = setup(parse_args(argv))
    try:
        return run_epochs(run)
    finally:
        if run.lock is not None:
            run.lock.release()


def run_epochs(run: Run) -> int:
    """Epochs until the end of the run (or an interruption: the exit code), then the export."""
    for epoch in range(run.start_epoch, run.args.n_epochs):
        sums = train_epoch(run, epoch)
        if isinstance(sums, int):
            return sums
        if not end_epoch(run, epoch, sums):
            return 1
        if run.interrupt.requested and epoch + 1 < run.args.n_epochs:
            log.warning(f'interrupted after epoch {epoch + 1}; continue with --resume {run.run_dir / "last.pth"}')
            return INTERRUPTED
    if run.main_process:
        log.info(f'done: {run.run_dir / "last.pth"}, logs and curves.png in {run.run_dir}')
        if run.args.export:
            export(run.model, run.args, run.run_dir, max(run.start_epoch, run.args.n_epochs), run.teachers)
            log.info(f'weights-only checkpoint: {run.args.export}')
    if run.world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(run_script(main))
