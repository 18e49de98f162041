"""What a run minimises: the network's objective with the command line's weights, the NTIRE 2023 recipe's terms
around it (perceptual, texture, distillation; models/perceptual.py), and the frozen teachers of distillation with
their optional cache."""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from data import teacher_cache
from models import REGISTRY
from models import perceptual
from models.checkpoint import file_sha256, load_model
from models.stereo_losses import MatchingWarmupLoss
from training.config import TrainConfig
from training.flags import named_values
from training.trainsets import TRAINSETS
from utils import UsageError

log = logging.getLogger('train')


def build_criterion(config: TrainConfig, entry, dataset, teachers: perceptual.Teachers | None = None):
    """The network's objective with --loss_weight, --disp_supervision and its parts; UsageError on a combination that
    cannot work (supervision of a network without disparity, or on data without ground truth). With the NTIRE 2023
    recipe's terms (--perceptual, --texture, --teacher) it is wrapped in a `perceptual.RecipeObjective` that adds them
    (online `teachers`, or None when their outputs come from the teacher cache)."""
    if config.stage == 'matching':
        if config.loss_weight or config.disp_supervision or config.disp_supervision_parts or config.perceptual \
                or config.texture or config.teacher:
            raise UsageError('--stage matching trains with the supervised disparity loss alone: drop --loss_weight, '
                             '--disp_supervision(_parts), --perceptual, --texture and --teacher')
        if not dataset.has_disparity:
            raise UsageError(f'--stage matching needs training data with ground-truth disparity: --trainset '
                             f'synthetic, or --trainset disparity --trainset_dir DIR (not --trainset '
                             f'{config.trainset})')
        return MatchingWarmupLoss(config.scale_factor)
    cls = entry.criterion
    if entry.modality != 'stereo' and (config.perceptual or config.texture or config.teacher):
        raise UsageError(f'--perceptual, --texture and --teacher compare SR images; {config.model} super-resolves '
                         f'disparity maps')
    weights = named_values(config.loss_weight, cls.DEFAULT_WEIGHTS, '--loss_weight', f'{config.model}\'s terms')
    parts = named_values(config.disp_supervision_parts, cls.DISPARITY_PARTS, '--disp_supervision_parts',
                         f'{config.model}\'s disparity estimates')
    if config.disp_supervision:
        if not cls.DISPARITY_PARTS:
            raise UsageError(f'--disp_supervision: {config.model} does not estimate disparity (networks that do: '
                             f'{", ".join(n for n, e in REGISTRY.items() if e.criterion.DISPARITY_PARTS)})')
        if not dataset.has_disparity:
            raise UsageError(f'--disp_supervision needs training data with ground-truth disparity: --trainset '
                             f'synthetic, or --trainset disparity --trainset_dir DIR (not --trainset '
                             f'{config.trainset})')
        weights['disp_sup'] = config.disp_supervision
    objective = cls(config.scale_factor, weights, parts)
    if not (config.perceptual or config.texture or config.teacher):
        return objective
    terms = {}
    for name, arch, loss in (('perceptual', 'vgg16', perceptual.perceptual_loss),
                             ('texture', 'vgg19', perceptual.texture_loss)):
        if not getattr(config, name):
            continue
        layers = named_values([x for x in getattr(config, f'{name}_layers').split(',') if x], None,
                              f'--{name}_layers', 'VGG layer names', default=1.0)
        location = vgg_weights(config, arch, f'--{name}')    # (a missing file raises MissingWeightsError)
        try:
            features = perceptual.VGGFeatures(arch, tuple(layers), location,
                                              input_norm=name == 'perceptual' or config.texture_input_norm)
        except perceptual.MissingWeightsError:
            raise
        except ValueError as err:
            raise ValueError(f'--{name}_layers / --vgg_weights: {err}') from None
        terms[name] = perceptual.FeatureTerm(features, layers, loss, getattr(config, f'{name}_distance'))
    return perceptual.RecipeObjective(
        objective, terms.get('perceptual'), config.perceptual_weight, terms.get('texture'), config.texture_weight,
        config.texture_start, teachers, [t['weight'] for t in teacher_records(config)], config.distill_weight,
        config.distill_distance)


def vgg_weights(config: TrainConfig, arch: str, flag: str):
    """The VGG file for `flag`'s term, or RANDOM (loudly labelled); exits before training when it is missing."""
    if config.vgg_weights == perceptual.RANDOM:
        log.warning(f'{flag}: RANDOM-INITIALISED {arch.upper()} (--vgg_weights random, seed {perceptual.RANDOM_SEED}), '
                    f'NOT the ImageNet weights: this term is a smoke test, not the recipe')
        return perceptual.RANDOM
    return perceptual.find_weights(perceptual.WEIGHT_FILES[arch], config.vgg_weights, '--vgg_weights',
                                   f'{flag} (ImageNet {arch.upper()})', config.download_weights)


def teacher_records(config: TrainConfig | dict) -> list[dict]:
    """--teacher CHECKPOINT [MODEL] [W] items of a config (or of a run's stored args) -> [{'path', 'model' (None: the
    checkpoint's own), 'weight'}]."""
    records = []
    for item in (config.get('teacher') if isinstance(config, dict) else config.teacher) or []:
        record = {'path': item[0], 'model': None, 'weight': 1.0}
        for token in item[1:]:
            if token in REGISTRY:
                record['model'] = token
                continue
            try:
                record['weight'] = float(token)
            except ValueError:
                raise UsageError(f'--teacher {" ".join(item)}: {token!r} is neither a network of the zoo '
                                 f'({", ".join(REGISTRY)}) nor a weight')
        records.append(record)
    return records


def load_teachers(config: TrainConfig, device, checkpoint: dict | None) -> tuple[list[torch.nn.Module], list[dict]]:
    """The frozen teachers of --teacher (eval mode, on `device`) and their records for checkpoints (path, network,
    weight, sha256 of the file). On resume the files must be the ones the run started with."""
    networks, records = [], []
    recorded = {r['path']: r for r in (checkpoint or {}).get('teachers') or []}
    for record in teacher_records(config):
        try:
            network, _ = load_model(record['path'], config.scale_factor, device, record['model'])
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f'--teacher: {err}') from None
        network.requires_grad_(False)
        record = {**record, 'model': network.zoo_name, 'sha256': file_sha256(record['path'])}
        before = recorded.get(record['path'])
        if before is not None and before.get('sha256') != record['sha256']:
            raise ValueError(f'--resume: teacher {record["path"]} is not the file the run was trained with (sha256 '
                             f'{before["sha256"][:12]}... then, {record["sha256"][:12]}... now); put the original '
                             f'back or start a new run')
        networks.append(network)
        records.append(record)
    return networks, records


def attach_teacher_cache(config: TrainConfig, run_dataset, networks: list[torch.nn.Module], records: list[dict], device,
                         rank: int, world: int, use_amp: bool, amp_dtype) -> None:
    """--teacher_cache DIR: reuse DIR when check_teacher_cache verifies it against these teachers and data (meta.json,
    array sizes and header); else compute the teachers' outputs once (main process; the others wait) when there is no
    cache, its build was interrupted, or --teacher_cache_rebuild allows replacing it; otherwise stop with the line
    that names the file and what differs. Then read the outputs as the dataset's extras."""
    if not TRAINSETS[config.trainset].fixed:
        fixed = ' or '.join(t.name for t in TRAINSETS.values() if t.fixed)
        raise UsageError(f'--teacher_cache cannot be used with --trainset {config.trainset}: its patches are new '
                         f'every epoch (random scenes or crops), so there is nothing to compute once; drop '
                         f'--teacher_cache (the teachers then run online) or train on fixed patches (--trainset '
                         f'{fixed})')
    folder, s = config.teacher_cache, config.scale_factor
    lr_shape = tuple(run_dataset.load(0)[2].shape[:2])       # the whole patch: --lr_crop crops the outputs later
    source = {'teacher_networks': [r['model'] for r in records], 'teacher_sha256': [r['sha256'] for r in records],
              'scale_factor': s, 'trainset': config.trainset, 'trainset_patches': len(run_dataset),
              'trainset_digest': run_dataset.fingerprint(), 'lr_patch': list(lr_shape),
              'dtype': config.teacher_cache_dtype,
              'precision': (str(amp_dtype).removeprefix('torch.') + ' autocast') if use_amp else 'float32'}
    shape = (len(run_dataset), len(records), 2, lr_shape[0] * s, lr_shape[1] * s, 3)
    state, reason = teacher_cache.check_teacher_cache(folder, source, shape)
    if world > 1:
        dist.barrier()       # every process has looked before the main one may replace anything
    hint = '--teacher_cache_rebuild replaces it, or give another folder'
    if state == teacher_cache.VALID:
        log.info(f'teacher cache: reusing {folder} ({len(run_dataset)} patches, {len(records)} teachers; '
                 f'record and array sizes verified)')
    elif state == teacher_cache.INVALID and not config.teacher_cache_rebuild:
        raise ValueError(f'--teacher_cache: {reason}; {hint}')
    else:
        if state != teacher_cache.ABSENT:
            log.warning(f'teacher cache: rebuilding {folder}: {reason}')
        if rank == 0:
            def predict(lr_left, lr_right):
                with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    outs = [net(lr_left.to(device), lr_right.to(device)) for net in networks]
                return [(o.sr_left.float(), o.sr_right.float()) for o in outs]
            info = {'paths': [r['path'] for r in records], 'trainset_dir': str(config.trainset_dir)}
            teacher_cache.write_teacher_cache(run_dataset, predict, folder, source, info,
                                              batch_size=max(1, config.batch_size // world))
        if world > 1:
            dist.barrier()
        state, reason = teacher_cache.check_teacher_cache(folder, source, shape)
        if state != teacher_cache.VALID:          # (what was just written reads back as recorded)
            raise ValueError(f'--teacher_cache: {reason or folder} after building it')
    run_dataset.extras = teacher_cache.TeacherCache(folder)
