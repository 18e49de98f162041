"""The kinds of training, one small object each: stereo SR (`StereoSR`), disparity-map SR (`DisparityMapSR`) and the
LR-matching warm-up of a stereo network (`MatchingWarmup`). A task says what the batches hold and what goes where
(`batch_parts`), what runs (`forward`), what the log shows beside the loss (`metrics`, `step_metrics`,
`epoch_columns`, `summary`, `curve`) and how a run is validated; `task_for` picks one from the config, so the loop
never asks which kind it runs."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from data.testsets import DISPARITY_DATASETS, find_datasets, list_scenes
from evaluation import evaluate_dataset, network_sr
from metrics import STEREO_BOUNDARY, psnr, rmse
from models import model_entry
from models.outputs import Pair
from models.parallax import coordinates_to_disparity
from models.ssrdefnet.cost_volume import MAX_DISPARITY
from training.config import TrainConfig
from training.health import PROBE_BOUND
from training.trainsets import TRAINSETS, crop_shape, map_dataset, stereo_dataset

log = logging.getLogger('train')


def training_boundary(hr_width: int) -> int:
    """HR columns the training PSNR leaves out at the stereo boundary (`StereoSR.step_metrics`): STEREO_BOUNDARY, or
    0 (whole views) for --lr_crop patches not wider than twice it, which would keep nothing."""
    return STEREO_BOUNDARY if hr_width > 2 * STEREO_BOUNDARY else 0


def training_psnr_label(run_dir: Path) -> str:
    """What the training PSNR of `StereoSR.step_metrics` covers (`training_boundary`), from the run's args.json."""
    path = run_dir / 'args.json'
    args = json.loads(path.read_text()) if path.exists() else {}
    crop = args.get('lr_crop')
    if crop and not training_boundary(crop_shape(crop)[1] * args['scale_factor']):
        return 'train, left (whole view)'
    return f'train, left ({STEREO_BOUNDARY} px cropped)'


class StereoSR:
    """A stereo network's whole objective on stereo patches (hr_left, hr_right, lr_left, lr_right[, disparity left,
    right][, cached teacher outputs left, right]): the LR pair in, (lr_left, lr_right, hr_left, hr_right) to the
    criterion."""

    name = 'stereo'
    metrics = ('psnr_left', 'psnr_right')      # step metrics, in the log; the first one also in the progress bar

    def build_dataset(self, config: TrainConfig):
        return stereo_dataset(config)

    def real_trainset(self, config: TrainConfig) -> bool:
        """Whether weights trained on --trainset are real ones (an --export of any other is labelled a demo)."""
        return 'stereo' in TRAINSETS[config.trainset].real_for

    def wants_disparity(self, config: TrainConfig) -> bool:
        return bool(config.disp_supervision)

    def batch_parts(self, run, tensors: list[torch.Tensor]) -> tuple[tuple, tuple, dict]:
        """One micro-batch as (the network's inputs, the criterion's arguments after the output, its keyword
        supervision)."""
        hr_left, hr_right, lr_left, lr_right = tensors[:4]
        disparity = tensors[4:6] if run.dataset.has_disparity else []
        supervision = {'disparity': Pair(*disparity)} if disparity and self.wants_disparity(run.config) else {}
        if run.recipe_terms:
            supervision['step'] = run.global_step
            if run.dataset.extras is not None:    # cached teacher outputs (B, T, 3, sH, sW) per view, augmented
                cached = tensors[-2:]
                supervision['teacher'] = [Pair(cached[0][:, t], cached[1][:, t]) for t in range(cached[0].shape[1])]
        return (lr_left, lr_right), (lr_left, lr_right, hr_left, hr_right), supervision

    def forward(self, run, inputs: tuple):
        return run.net(*inputs)

    def step_metrics(self, out, tensors: list[torch.Tensor]) -> dict[str, float]:
        """PSNR of the final SR views clamped to [0, 1], the left without its STEREO_BOUNDARY first columns, the
        right without its last ones (whole views for --lr_crop patches not wider than twice the boundary)."""
        hr_left, hr_right = tensors[:2]
        sr_left, sr_right = (x.detach().float().clamp(0, 1) for x in (out.sr_left, out.sr_right))
        boundary = training_boundary(hr_left.shape[-1])  # columns without a match in the other view
        width = hr_right.shape[-1] - boundary
        return {'psnr_left': psnr(sr_left, hr_left, crop_left=boundary).mean().item(),
                'psnr_right': psnr(sr_right[..., :width], hr_right[..., :width]).mean().item()}

    def probe_values(self, out, tensors: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, float]]:
        """The outputs training/health.py checks on its probe batch, each with its bound: SR views of images in
        [0, 1]."""
        return {'sr_left': (out.sr_left, PROBE_BOUND), 'sr_right': (out.sr_right, PROBE_BOUND)}

    def epoch_columns(self, dataset) -> dict:
        return {}

    def summary(self, row: dict) -> str:
        return f"train PSNR left {row['psnr_left']:.2f} dB, "

    def curve(self, run_dir: Path) -> dict:
        return {'key': 'psnr_left', 'label': training_psnr_label(run_dir), 'ylabel': 'PSNR (dB)',
                'title': 'PSNR of the final SR output'}

    def check_validation(self, config: TrainConfig) -> None:
        """At start-up, not at the first validation: --val_dir holds at least one SR set with every file of every
        scene at this scale (raises FileNotFoundError / ValueError naming what is missing)."""
        names = [n for n in find_datasets(config.val_dir) if n not in DISPARITY_DATASETS]
        if not names:
            raise FileNotFoundError(f'--val_dir {config.val_dir} holds no SR test set (<Dataset>/hr/<scene>/hr0.png)')
        for name in names:
            list_scenes(config.val_dir / name, config.scale_factor)

    def validate(self, model, config: TrainConfig, device) -> dict:
        """Mean scores of the evaluation protocol (evaluation.py) over every SR set under --val_dir."""
        model.eval()
        scores = {}
        for name in (n for n in find_datasets(config.val_dir) if n not in DISPARITY_DATASETS):
            precision = 'bf16' if config.amp and device.type == 'cuda' else 'fp32'    # --amp: CUDA only
            result = evaluate_dataset(network_sr(model, device, precision=precision), config.val_dir / name,
                                      config.scale_factor)
            scores.update({f'val_{name}_psnr_avg': result['psnr_avg'], f'val_{name}_psnr_left': result['psnr_left']})
        model.train()
        scores['val_psnr_avg'] = float(np.mean([v for k, v in scores.items() if k.endswith('_psnr_avg')]))
        return scores


class MatchingWarmup(StereoSR):
    """--stage matching: the LR matching of a stereo network alone (`model.matching`) on ground-truth disparity,
    with the supervised disparity loss; the step metric is the EPE in HR pixels of the left view's LR-matching
    disparity over its valid ground truth (0 if it has none)."""

    name = 'matching'
    metrics = ('epe',)

    def wants_disparity(self, config: TrainConfig) -> bool:
        return True

    def forward(self, run, inputs: tuple):
        return run.model.matching(*inputs)

    def step_metrics(self, out, tensors: list[torch.Tensor]) -> dict[str, float]:
        estimate = coordinates_to_disparity(out.left.detach().float(), 'left', None)
        truth = tensors[4].float()
        valid = torch.isfinite(truth) & (truth >= 0) & (truth < MAX_DISPARITY)
        return {'epe': (estimate - truth)[valid].abs().mean().item() if valid.any() else 0.0}

    def probe_values(self, out, tensors: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, float]]:
        """The left view's LR-matching disparity (HR pixels), bounded by the maximum disparity."""
        return {'disparity': (coordinates_to_disparity(out.left.float(), 'left', None), PROBE_BOUND * MAX_DISPARITY)}

    def summary(self, row: dict) -> str:
        return f"train EPE {row['epe']:.2f} px (LR matching, left), "

    def curve(self, run_dir: Path) -> dict:
        return {'key': 'epe', 'label': 'train, left view, valid pixels', 'ylabel': 'EPE (HR pixels)',
                'title': 'end-point error of the LR matching'}


class DisparityMapSR:
    """A disparity-map network on map patches (lr_map, hr_map, hr_valid), data/disparity_maps.py: the LR map in,
    all three to the criterion; the step metric is the RMSE in HR pixels of the fused map over the valid HR pixels
    of the micro-batch."""

    name = 'disparity_map'
    metrics = ('rmse',)

    def build_dataset(self, config: TrainConfig):
        return map_dataset(config)

    def real_trainset(self, config: TrainConfig) -> bool:
        return 'disparity_map' in TRAINSETS[config.trainset].real_for

    def batch_parts(self, run, tensors: list[torch.Tensor]) -> tuple[tuple, tuple, dict]:
        return tuple(tensors[:1]), tuple(tensors), {}

    def forward(self, run, inputs: tuple):
        return run.net(*inputs)

    def step_metrics(self, out, tensors: list[torch.Tensor]) -> dict[str, float]:
        _, hr_map, hr_valid = tensors
        return {'rmse': rmse(out.fused.detach().float(), hr_map, hr_valid.bool())}

    def probe_values(self, out, tensors: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, float]]:
        """The fused map (HR pixels), bounded by the range of the probe's HR map."""
        hr_map = tensors[1].float()
        finite = hr_map[torch.isfinite(hr_map)]
        scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
        return {'fused': (out.fused, PROBE_BOUND * scale)}

    def epoch_columns(self, dataset) -> dict:
        return {'skipped_patches': dataset.skipped}   # crops redrawn for having no valid HR pixel, this epoch

    def summary(self, row: dict) -> str:
        return (f"train RMSE {row['rmse']:.3f} px (fused map), {row['skipped_patches']} crops without a valid "
                f"pixel redrawn, ")

    def curve(self, run_dir: Path) -> dict:
        return {'key': 'rmse', 'label': 'train, valid HR pixels', 'ylabel': 'RMSE (HR pixels)',
                'title': 'RMSE of the fused disparity map'}

    def check_validation(self, config: TrainConfig) -> None:
        raise ValueError(f'--val_dir validates stereo SR; score {config.model} checkpoints with test_disp.py --model '
                         f'{config.model} --checkpoint <run>/last.pth')


# The task of each kind of network (ModelEntry.modality); --stage matching replaces a stereo network's.
TASKS = {'stereo': StereoSR(), 'disparity_map': DisparityMapSR()}
MATCHING = MatchingWarmup()


def task_for(config: TrainConfig):
    """The task of this run: its network's kind, or the matching warm-up (--stage matching)."""
    modality = model_entry(config.model).modality
    return MATCHING if config.stage == 'matching' and modality == 'stereo' else TASKS[modality]


def check_validation_data(task, config: TrainConfig) -> None:
    """--val_dir / --val_every checked at start-up (the task checks the data it would validate on)."""
    if config.val_dir is None:
        if config.val_every:
            raise ValueError(f'--val_every {config.val_every} needs --val_dir (a test-set root, test_sr.py layout)')
        return
    task.check_validation(config)
    if not config.val_every:
        log.warning(f'--val_dir {config.val_dir} is given but --val_every is 0: no validation will run')
