"""The stereo-SR evaluation protocols, as a library: test_sr.py, train.py (validation) and demo.py import it.

Two conventions, each what one family of published numbers used:

* `ipassr` (default; the SSRDE-FNet and iPASSR tables, official test_sr.py + iPASSR evaluation.m): the final SR
  output clamped to [0, 1]; PSNR on RGB, data range 1, all pixels, no border crop; "Left" = the left view without
  its 64 leftmost HR columns; "(L+R)/2" = mean of the full-image left and right scores; SSIM with a 7x7 box window
  over the valid region, per channel, averaged; float SR unless a quantisation is asked for.
* `nafssr` (the NAFSSR tables, BasicSR's calculate_psnr / calculate_skimage_ssim on 6-channel uint8 arrays):
  SR rounded to 8 bit; PSNR per view averaged (= our (L+R)/2 on rounded images); SSIM = scikit-image's
  `structural_similarity` over the 6-channel stack, i.e. the mean of the two views' SSIMs with sample covariance.
  The "Left" numbers are reported too, but NAFSSR's tables have none.

Scores are per scene, then averaged over scenes.
"""
from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.readers import image_size, read_image_uint8, write_image
from data.testsets import Scene, list_scenes, load_pair
from models.inference import super_resolve
from utils import STEREO_BOUNDARY, imresize, psnr, quantize, ssim

PROTOCOLS = ('ipassr', 'nafssr')
SRFunction = Callable[[list[Scene]], list[tuple[torch.Tensor, torch.Tensor]]]


def quantized(img: torch.Tensor, mode: str | None) -> torch.Tensor:
    """img in [0, 1] as an 8-bit file stores it: 'round' (what the project and BasicSR save), 'truncate' (what
    torchvision's ToPILImage saves, as the official SSRDE-FNet and iPASSR test scripts do), or None (float)."""
    if mode == 'round':
        return quantize(img)
    if mode == 'truncate':
        return torch.floor(img.clamp(0, 1) * 255) / 255
    return img


def scene_scores(sr: torch.Tensor, hr: torch.Tensor, sr_right: torch.Tensor, hr_right: torch.Tensor,
                 protocol: str = 'ipassr') -> dict:
    """The numbers of one scene; all inputs (3, H, W) in [0, 1]: psnr/ssim of 'left' (64 columns cropped), 'avg'
    ((L+R)/2), and the full-image per-view PSNRs 'l' and 'r'."""
    sample_covariance = protocol == 'nafssr'
    left = psnr(sr, hr).item(), ssim(sr, hr, sample_covariance=sample_covariance).item()
    right = psnr(sr_right, hr_right).item(), ssim(sr_right, hr_right, sample_covariance=sample_covariance).item()
    return {'psnr_left': psnr(sr, hr, crop_left=STEREO_BOUNDARY).item(),
            'ssim_left': ssim(sr, hr, crop_left=STEREO_BOUNDARY, sample_covariance=sample_covariance).item(),
            'psnr_avg': (left[0] + right[0]) / 2, 'ssim_avg': (left[1] + right[1]) / 2,
            'psnr_l': left[0], 'psnr_r': right[0]}


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC array -> CHW tensor (no copy of the values' type)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def bicubic_sr(scale: int) -> SRFunction:
    """SR function of the bicubic baseline: MATLAB imresize of the 8-bit LR files (uint8 in, uint8 out)."""
    def run(scenes: list[Scene]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [tuple(to_tensor(imresize(read_image_uint8(p), scale)).float() / 255 for p in s.lr) for s in scenes]
    return run


def network_sr(model: torch.nn.Module, device: torch.device, tta: bool = False, amp: bool = False) -> SRFunction:
    """SR function of a network of the zoo: the final output of a batch of equal-size scenes, clamped, on the CPU."""
    def run(scenes: list[Scene]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = [load_pair(s.lr) for s in scenes]
        left = torch.stack([to_tensor(a) for a, _ in pairs]).to(device)
        right = torch.stack([to_tensor(b) for _, b in pairs]).to(device)
        out = super_resolve(model, left, right, tta=tta, amp=amp)
        return list(zip(out.left.float().cpu(), out.right.float().cpu()))
    return run


def evaluate_dataset(sr_fn: SRFunction, dataset_dir: Path, scale: int, batch_size: int = 1,
                     quantize_mode: str | None = None, save_dir: Path | None = None, protocol: str = 'ipassr') -> dict:
    """Scores of one test set: {'psnr_left', 'ssim_left', 'psnr_avg', 'ssim_avg', ..., 'num_scenes', 'scenes'}.

    sr_fn(scenes) -> [(sr_left, sr_right)] (3, sH, sW) in [0, 1]; consecutive scenes of equal LR size are batched.
    The 'nafssr' protocol scores rounded 8-bit SR whatever `quantize_mode` says. Raises FileNotFoundError /
    ValueError naming the file at fault.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f'unknown protocol {protocol!r}; known: {", ".join(PROTOCOLS)}')
    if protocol == 'nafssr':
        quantize_mode = 'round'
    scenes = list_scenes(dataset_dir, scale)
    per_scene = {}
    bar = tqdm(total=len(scenes), desc=dataset_dir.name, unit='pair')
    for _, group in groupby(scenes, key=lambda s: image_size(s.lr[0])):
        group = list(group)
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            for scene, (sr_l, sr_r) in zip(batch, sr_fn(batch)):
                hr_l, hr_r = (to_tensor(x) for x in load_pair(scene.hr))
                if sr_l.shape != hr_l.shape:
                    raise ValueError(f'{scene.hr[0]} is {tuple(hr_l.shape[1:])}, but the x{scale} SR of '
                                     f'{scene.lr[0]} is {tuple(sr_l.shape[1:])}: HR must be exactly {scale}x the LR')
                sr_l, sr_r = quantized(sr_l, quantize_mode), quantized(sr_r, quantize_mode)
                per_scene[scene.name] = scene_scores(sr_l, hr_l, sr_r, hr_r, protocol)
                if save_dir is not None:
                    write_image(save_dir / f'{scene.name}_L.png', sr_l.permute(1, 2, 0).numpy())
                    write_image(save_dir / f'{scene.name}_R.png', sr_r.permute(1, 2, 0).numpy())
                bar.set_postfix(psnr_left=f"{per_scene[scene.name]['psnr_left']:.2f}")
                bar.update()
    bar.close()
    mean = {key: float(np.mean([s[key] for s in per_scene.values()])) for key in next(iter(per_scene.values()))}
    return {**mean, 'num_scenes': len(per_scene), 'scenes': per_scene}


# ---- disparity baselines: what a disparity score means

def block_matching(left: torch.Tensor, right: torch.Tensor, max_disparity: int = 192, window: int = 9) -> torch.Tensor:
    """The naive stereo matcher: sum of absolute differences (all channels) over a window x window block, winner
    takes all, integer disparities 0..max_disparity-1. left, right: (1, C, H, W) -> (1, 1, H, W) disparity of the
    left view. A pixel whose block would reach past the right image's left border (x - d < 0) does not consider d.
    Zero-padded box sums at the image borders. Memory: one (1, 1, H, W) cost map at a time."""
    b, _, h, w = left.shape
    best_cost = torch.full((b, 1, h, w), float('inf'), dtype=left.dtype, device=left.device)
    best = torch.zeros((b, 1, h, w), dtype=left.dtype, device=left.device)
    columns = torch.arange(w, device=left.device)
    for d in range(min(max_disparity, w)):
        diff = torch.zeros_like(left[:, :1])
        diff[..., d:] = (left[..., d:] - right[..., :w - d]).abs().sum(1, keepdim=True)
        cost = F.avg_pool2d(diff, window, stride=1, padding=window // 2, count_include_pad=True)
        cost = torch.where(columns >= d, cost, torch.full_like(cost, float('inf')))
        better = cost < best_cost
        best_cost = torch.where(better, cost, best_cost)
        best = torch.where(better, torch.full_like(best, d), best)
    return best


def disparity_baselines(lr_left: np.ndarray, lr_right: np.ndarray, scale: int, truth: np.ndarray,
                        valid: np.ndarray) -> dict[str, np.ndarray]:
    """The two references a disparity score is read against, as HR maps of the left view:
    'block matcher' (9x9 SAD, winner takes all, on the MATLAB-bicubic-upsampled uint8 LR pair) and 'constant' (the
    median ground-truth disparity everywhere: what a network that ignores the images could at best score)."""
    up = [torch.from_numpy(imresize(v, scale).astype(np.float32) / 255).permute(2, 0, 1)[None] for v in (lr_left,
                                                                                                    lr_right)]
    matched = block_matching(up[0], up[1])[0, 0].numpy()
    return {'block matcher': matched, 'constant': np.full(truth.shape, np.median(truth[valid]), dtype=np.float32)}
