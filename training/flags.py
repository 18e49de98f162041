"""train.py's command line: the flags (`build_parser`, grouped a screen each) and the one function that layers
them into a `TrainConfig` (`resolve_config`): each field's default < the network's recipe < the checkpoint being
resumed < the command line, except for the fields that define a run, which a resumed checkpoint fixes."""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import MISSING, fields
from pathlib import Path

from data.disparity_maps import LR_PATCH
from models import REGISTRY, add_model_args, model_entry
from models import perceptual as ntire   # the NTIRE 2023 recipe's terms (a TrainConfig field is named perceptual)
from models.checkpoint import read_checkpoint
from training.config import DEFAULT_WORKERS, DEFINITION, OPTION_NAMES, PATH_FIELDS, SETTING, TrainConfig
from training.trainsets import TRAINSETS, crop_size
from utils import UsageError, add_device_args, non_negative_float, non_negative_int, positive_float, positive_int

log = logging.getLogger('train')


def _flat(values: dict) -> dict:
    """{field: value} of a flat dict (parsed flags or a checkpoint's 'args'), the networks' options gathered."""
    out = {k: v for k, v in values.items() if k not in OPTION_NAMES}
    out['options'] = {k: values[k] for k in OPTION_NAMES if k in values}
    return out


def _same(given, stored) -> bool:
    """A flag's value equals the checkpoint's, a tuple equal to the list JSON-like storage gives back."""
    if isinstance(given, (list, tuple)) and isinstance(stored, (list, tuple)):
        return len(given) == len(stored) and all(_same(a, b) for a, b in zip(given, stored))
    return given == stored


def _restore(name: str, value):
    """A stored value back in its field's type (paths were stored as text)."""
    return Path(value) if name in PATH_FIELDS and value else value


def _given(namespace: argparse.Namespace) -> dict:
    """The parsed flags, paths as text (as the checkpoint stores them), for comparing with a checkpoint's args."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(namespace).items()}


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, dict | None]:
    """The layers, lowest first: each field's default < the network's recipe (fields marked recipe) < a resumed
    checkpoint's args < the command line; a DEFINITION of a resumed run is the checkpoint's, whatever the command
    line says (a differing flag is warned about). Returns (the config, the checkpoint being resumed or None)."""
    values = dict(vars(args))
    checkpoint = None
    if args.resume is not None:
        try:
            _, checkpoint = read_checkpoint(args.resume)      # clear errors for missing, truncated, foreign files
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f'--resume: {err}') from None
        missing = [k for k in ('optimizer', 'scheduler', 'epoch', 'args') if k not in checkpoint]
        if missing:
            raise ValueError(f'--resume {args.resume} is not a training checkpoint of train.py (it has no '
                             f'{", ".join(missing)}): it holds weights only, e.g. an --export or an authors\' '
                             f'release; resume from <checkpoint_dir>/last.pth')
        stored, given = checkpoint.get('args', {}), _given(args)
        defaults = _given(build_parser().parse_args([]))
        conflicts = []
        for f in fields(TrainConfig):
            role = f.metadata['role']
            for key in (OPTION_NAMES if f.name == 'options' else (f.name,)):
                if key not in stored:
                    continue
                if role == DEFINITION and stored[key] != given.get(key):
                    if given.get(key) not in (None, defaults.get(key)) and not _same(given[key], stored[key]):
                        conflicts.append(f'--{key} {given[key]!r} (the run\'s: {stored[key]!r})')
                    values[key] = _restore(key, stored[key])
                elif role == SETTING:    # kept, or changed (and said so) by the command line
                    if given.get(key) is None:
                        values[key] = _restore(key, stored[key])
                    elif given[key] != stored[key]:
                        log.warning(f'--resume: {key} changed from the run\'s {stored[key]!r} to {given[key]!r} '
                                    f'(command line)')
        if args.n_epochs is not None and args.total_iters is None and stored.get('total_iters', 0) > 0:
            # an iteration-counted run (e.g. NAFSSR's recipe): its length is total_iters, --n_epochs would be ignored
            conflicts.append(f'--n_epochs {args.n_epochs} (the run counts iterations: total_iters '
                             f'{stored["total_iters"]!r})')
        if conflicts:   # never silently replaced by the checkpoint's value: the user learns which flag to drop
            raise UsageError(f'--resume {args.resume}: {"; ".join(conflicts)} would change what the run is (its '
                             f'network, data, optimiser or schedule, fixed when it started); drop the flag to '
                             f'continue it, or start a new run from its weights with --init {args.resume}')
        values['checkpoint_dir'] = args.checkpoint_dir or args.resume.parent
    elif args.n_epochs is not None and args.total_iters is None:
        values['total_iters'] = 0   # --n_epochs alone counts epochs, also under an iteration-based recipe (NAFSSR)
    values = _flat(values)
    model = values.get('model') or 'ssrdefnet'
    entry = model_entry(model)
    for f in fields(TrainConfig):
        if values.get(f.name) is None:
            if f.metadata['recipe']:
                values[f.name] = getattr(entry.recipe, f.name)
            elif f.default is not MISSING:
                values[f.name] = f.default
            elif f.default_factory is not MISSING:
                values[f.name] = f.default_factory()
    values['model'] = model
    values['betas'] = tuple(values['betas'])
    config = TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig)})
    if config.trainset is None:   # stereo networks: the prepared patches; disparity-map networks: synthetic maps
        config.trainset = next(t.name for t in TRAINSETS.values() if entry.modality in t.default_for)
    config.run_name = config.run_name or f'{config.model}_x{config.scale_factor}_{config.trainset}'
    return config, checkpoint


def recipe_help(field_name: str) -> str:
    """'default: the network's recipe (ssrdefnet 0.0002, nafssr-s 0.003, ...)' for one Recipe field."""
    values = {}
    for name, entry in REGISTRY.items():
        values.setdefault(str(getattr(entry.recipe, field_name)), []).append(name)
    return 'default: the network\'s recipe (' + '; '.join(f'{", ".join(n)}: {v}' for v, n in values.items()) + ')'


def build_parser(description: str = '') -> argparse.ArgumentParser:
    """train.py's flags; a flag whose default is None takes it from the layers of `resolve_config`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, default=None)   # None: ssrdefnet, or the network of --resume
    group = parser.add_argument_group('optimisation (defaults = each network\'s published recipe)')
    group.add_argument('--batch_size', type=positive_int, default=None,
                       help='global batch size, over all processes; ' + recipe_help('batch_size'))
    group.add_argument('--optimizer', choices=('adam', 'adamw'), default=None, help=recipe_help('optimizer'))
    group.add_argument('--lr', type=positive_float, default=None, help='learning rate; ' + recipe_help('lr'))
    group.add_argument('--betas', type=adam_beta, nargs=2, default=None, metavar=('B1', 'B2'),
                       help='Adam/AdamW betas; ' + recipe_help('betas'))
    group.add_argument('--amsgrad', action=argparse.BooleanOptionalAction, default=None,
                       help='the AMSGrad variant of Adam/AdamW; ' + recipe_help('amsgrad'))
    group.add_argument('--weight_decay', type=non_negative_float, default=None, help=recipe_help('weight_decay'))
    group.add_argument('--schedule', choices=('step', 'cosine'), default=None,
                       help='step: lr x gamma every n_steps epochs; cosine: annealed every iteration to eta_min over '
                            'the whole run; ' + recipe_help('schedule'))
    group.add_argument('--n_steps', type=positive_int, default=None, help='step schedule period (epochs); '
                       + recipe_help('n_steps'))
    group.add_argument('--gamma', type=decay_factor, default=None, help='step schedule factor; ' + recipe_help('gamma'))
    group.add_argument('--eta_min', type=non_negative_float, default=None,
                       help='cosine: final lr; ' + recipe_help('eta_min'))
    group.add_argument('--n_epochs', type=positive_int, default=None,
                       help='total number of epochs; given without --total_iters it also makes an iteration-based '
                            'recipe count epochs; ' + recipe_help('n_epochs'))
    group.add_argument('--total_iters', type=non_negative_int, default=None,
                       help='train this many iterations (0: count epochs instead; it wins over --n_epochs); '
                            + recipe_help('total_iters'))
    group.add_argument('--grad_clip', type=non_negative_float, default=None,
                       help='clip the global gradient norm (0 = no); ' + recipe_help('grad_clip'))
    group.add_argument('--channel_shuffle', action=argparse.BooleanOptionalAction, default=None,
                       help='random RGB permutation, the same for both views and HR/LR; '
                            + recipe_help('channel_shuffle'))
    group.add_argument('--grad_accum', type=positive_int, default=1,
                       help='split each (per-process) batch into N micro-batches and accumulate gradients; '
                            'BatchNorm then sees the micro-batches, as it would on N GPUs')
    group = parser.add_argument_group('objective, stage and robustness (defaults: every paper\'s recipe)')
    group.add_argument('--loss_weight', action='append', default=[], metavar='TERM=W',
                       help='override a loss weight, e.g. --loss_weight disp_unsup=0.02 (terms and defaults: '
                            + '; '.join(f'{n}: {e.criterion.DEFAULT_WEIGHTS}' for n, e in REGISTRY.items()) + ')')
    group.add_argument('--disp_supervision', type=non_negative_float, default=0.0, metavar='W',
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
    group.add_argument('--skip_nonfinite', type=non_negative_int, default=None, metavar='N',
                       help='skip up to N batches whose loss or gradients are not finite (no update; each one logged) '
                            'before stopping the run (default 0: stop at the first, or the resumed run\'s)')
    group.add_argument('--max_iters_per_epoch', type=non_negative_int, default=0,
                       help='stop each epoch after N iterations (0 = whole epoch); for quick experiments')
    group = parser.add_argument_group(
        'the NTIRE 2023 perceptual recipe (all off by default, so every paper\'s recipe is unchanged; any network; '
        'defaults: the seed team\'s NTIRE-SSR-DVision code, ../shared/reference/perceptual_losses.md)')
    group.add_argument('--perceptual', action='store_true', default=None,
                       help='add the perceptual term: distance between VGG-16 features of SR and HR, per view, '
                            'ImageNet-normalised input (term "perceptual")')
    group.add_argument('--perceptual_weight', type=non_negative_float, default=None,
                       help=f'its weight (default {ntire.PERCEPTUAL_WEIGHT:g}: NTIRE-23.yml loss_weight)')
    group.add_argument('--perceptual_layers', default=None, metavar='NAME[=W],...',
                       help='VGG-16 layers by name (conv3_3, relu4_3, pool2, ...), each with an optional weight '
                            f'(default {",".join(ntire.PERCEPTUAL_LAYERS)}, weight 1 each: VGGPerceptualLoss '
                            'blocks features[0:23] of the seed code)')
    group.add_argument('--perceptual_distance', choices=('l1', 'l2'), default=None,
                       help='mean L1 or MSE between features (default l1: the seed code; its write-up says MSE)')
    group.add_argument('--texture', action='store_true', default=None,
                       help='add the texture (style) term: MSE between Gram matrices F F^T / (c h w) of VGG-19 '
                            'features of SR and HR, per view (term "texture"; with gradients, unlike the seed code)')
    group.add_argument('--texture_weight', type=non_negative_float, default=None,
                       help=f'its weight (default {ntire.TEXTURE_WEIGHT:g}: NTIRE-23.yml loss_weight 5 on the '
                            'sum of both views = 10 on their mean, which is what the term here is)')
    group.add_argument('--texture_layers', default=None, metavar='NAME[=W],...',
                       help=f'VGG-19 layers (default {",".join(ntire.TEXTURE_LAYERS)}: TextureLossVGG19 features '
                            'indices 8/17/26/35)')
    group.add_argument('--texture_distance', choices=('l1', 'l2'), default=None,
                       help='distance between Gram matrices (default l2 = MSE: the seed code)')
    group.add_argument('--texture_start', type=non_negative_int, default=None, metavar='ITER',
                       help='add the texture term from this iteration on (default 0; the seed training loop used '
                            f'{ntire.TEXTURE_START})')
    group.add_argument('--texture_input_norm', action=argparse.BooleanOptionalAction, default=None,
                       help='ImageNet normalisation before VGG-19 (default on, as BasicSR; the seed code fed raw '
                            '[0, 1] images: --no-texture_input_norm)')
    group.add_argument('--teacher', nargs='+', action='append', default=None, metavar='CHECKPOINT [MODEL] [W]',
                       help='knowledge distillation: a frozen teacher, any network of the zoo at this scale (a '
                            'project checkpoint names its network; an authors\' file needs MODEL, a release name such '
                            'as cvhssr-t_x4 implies it), with weight W '
                            '(default 1). Repeat for several teachers. Adds the term "distill" = sum_t W_t d(student, '
                            'teacher_t), the mean over both views, teachers run without gradient on the student\'s '
                            'own augmented batch')
    group.add_argument('--distill_weight', type=non_negative_float, default=None,
                       help=f'lambda, the weight of "distill" (default {ntire.DISTILL_WEIGHT:g}: spec section 3; '
                            'the write-up gives none)')
    group.add_argument('--distill_distance', choices=('l1', 'l2'), default=None,
                       help='d: mean L1 (default; the usual SR distillation) or MSE (the seed KD ymls)')
    group.add_argument('--teacher_cache', type=Path, default=None, metavar='DIR',
                       help='compute the teachers\' outputs once (one pass over the un-augmented whole patches; '
                            '--lr_crop crops them later) into DIR, then read them back with the same flips and channel '
                            'shuffle as the ground truth: no teacher runs during training. Reused only while meta.json '
                            'matches the teacher files (SHA-256), the scale, the patch files (names, sizes, times) and '
                            'the array\'s recorded size and header; anything else stops the run naming the file and '
                            'what differs. Not for --trainset synthetic or disparity (new patches every epoch)')
    group.add_argument('--teacher_cache_dtype', choices=('float32', 'float16'), default=None,
                       help='storage of the cached outputs (float32, the default, equals the online outputs bit for '
                            'bit; float16 halves the file: N x T x 2 x sH x sW x 3 values)')
    group.add_argument('--teacher_cache_rebuild', action='store_true',
                       help='rebuild --teacher_cache DIR when it holds other teachers\' or data\'s outputs, or is '
                            'damaged (default: stop and say why; a cache whose build was interrupted is always redone)')
    group.add_argument('--vgg_weights', default=None, metavar='DIR|random',
                       help=f'folder holding {ntire.WEIGHT_FILES["vgg16"]} (perceptual) and '
                            f'{ntire.WEIGHT_FILES["vgg19"]} (texture), torchvision\'s ImageNet files under their '
                            f'exact names (default {ntire.DEFAULT_WEIGHTS_DIR}/, then the torch-hub cache). '
                            '"random": a seeded random VGG, for smoke tests only (labelled in logs and checkpoints)')
    group.add_argument('--download_weights', action='store_true',
                       help='download missing weights (needs internet): an --init or --teacher release with a direct '
                            'URL (docs/weights.md) into the cache folder, and torchvision\'s VGG files into the '
                            'torch-hub cache; without this flag a missing file stops the run before training')
    group = parser.add_argument_group('data')
    group.add_argument('--trainset', choices=tuple(TRAINSETS), default=None,
                       help='; '.join(f'{t.name}: {t.help}' for t in TRAINSETS.values()))
    group.add_argument('--synthetic_size', type=positive_int, default=4800,
                       help='synthetic patches per epoch (disparity-map networks: also the crops per epoch of '
                            '--trainset disparity)')
    group.add_argument('--map_patch', type=positive_int, default=LR_PATCH,
                       help='disparity-map networks: LR side of the square training crops (HR side = this x scale)')
    group.add_argument('--map_pattern', default='*',
                       help='disparity-map networks, --trainset disparity: glob of the map files below '
                            '--trainset_dir, e.g. "disp0GT.pfm" or "dispocc0.png" where images share the folders')
    group.add_argument('--trainset_dir', type=Path, default=Path('./data/train/Flickr1024_patches'),
                       help='patches: folder holding patches_x<s>/<id>/{hr0,hr1,lr0,lr1}.png; disparity: folder '
                            'holding <Dataset>/hr/<scene>/ and <Dataset>/lr_x<s>/<scene>/')
    group.add_argument('--texture_dir', type=Path, default=None,
                       help='--trainset photo: folder of photographs (any depth) to texture the scenes with (default: '
                            'the photographs scikit-image and matplotlib ship; docs/data/photographs.md)')
    group.add_argument('--augment', action=argparse.BooleanOptionalAction, default=True,
                       help='iPASSR augmentation: horizontal flip with view swap, vertical flip (all three networks)')
    group.add_argument('--lr_crop', type=crop_size, default=None, metavar='HxW',
                       help='train on a random HxW crop (LR pixels) of each 30x90 LR patch and the co-located HR crop, '
                            'e.g. 16x16: cheaper steps for the single-image networks on a CPU (ISRResCNet runs its '
                            'denoiser ten times at HR). Not in any paper\'s recipe; stereo networks need the whole '
                            'width for their disparity range (default: the whole patch)')
    group.add_argument('--num_workers', type=non_negative_int, default=None,
                       help=f'DataLoader worker processes (default {DEFAULT_WORKERS}, or the resumed run\'s)')
    group = parser.add_argument_group('checkpoints, logging, validation')
    group.add_argument('--checkpoint_dir', type=Path, default=None,
                       help='where last.pth and the logs go (default: checkpoints/<run_name>)')
    group.add_argument('--run_name', default=None, help='default: <model>_x<s>_<trainset>')
    group.add_argument('--resume', type=Path, default=None, help='continue from this checkpoint (e.g. last.pth)')
    group.add_argument('--init', type=Path, default=None,
                       help='start from these weights (any checkpoint of the same network and scale, e.g. a '
                            'pretraining run\'s last.pth or an --export, or an authors\' release by name, e.g. '
                            'cvhssr-t_x4, which also sets --model; the options its weights need, e.g. BGR input, are '
                            'applied) with a new optimiser and schedule: fine-tuning; ignored with --resume')
    group.add_argument('--save_every', type=non_negative_int, default=None,
                       help='also keep epoch_NNN.pth every N epochs (default 0 = no, or the resumed run\'s)')
    group.add_argument('--val_dir', type=Path, default=None, help='test-set root to validate on (test_sr.py layout); '
                       'checked at start-up')
    group.add_argument('--val_every', type=non_negative_int, default=None,
                       help='validate every N epochs (default 0 = never, or '
                       'the resumed run\'s); '
                       'the best mean (L+R)/2 PSNR is kept as best.pth')
    group.add_argument('--export', type=Path, default=None,
                       help='at the end, also write a weights-only checkpoint (state_dict, args, epoch; no optimiser '
                            'state) to this path, e.g. for sharing. Runs not trained on real --trainset patches are '
                            'labelled demo checkpoints in it')
    group.add_argument('--export_only', action='store_true',
                       help='with --resume and --export: write the weights-only file from the run as it was last saved '
                            '(an unfinished, interrupted or still running run included) and exit without training; '
                            'needs neither the training data nor the teacher files')
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


def decay_factor(text: str) -> float:
    """argparse type for --gamma: the step schedule multiplies the learning rate by it, so 0 < gamma <= 1 (above 1
    the learning rate would grow every n_steps epochs until the run diverges)."""
    value = non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not in (0, 1]: the step schedule multiplies the learning rate '
                                         f'by it every n_steps epochs, and a factor above 1 makes it grow')
    return value


def adam_beta(text: str) -> float:
    """argparse type for --betas: Adam's moving-average factors, 0 <= beta < 1 (torch.optim refuses others, but only
    after the data and the network are built, and without naming the flag)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not in [0, 1): a beta is the decay of one of Adam\'s moving '
                                         f'averages')
    return value


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
            raise UsageError(f'{flag} {item!r}: expected NAME=VALUE with NAME one of {what}'
                             + (f' {sorted(known)}' if known is not None else ''))
        if not math.isfinite(values[name]) or values[name] < 0:
            raise UsageError(f'{flag} {item!r}: a weight is a finite number >= 0 (a negative weight would maximise '
                             f'its term)')
    return values
