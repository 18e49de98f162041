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

* `srnet` (SRNet's own, official src/utility.py calc_psnr + src/test.py calc_ssim): SR rounded to 8 bit; PSNR on
  RGB without the `scale + 6` outermost pixels of every side; SSIM = skimage `compare_ssim(hr, sr, multichannel=True)`
  on floats in [0, 1] without a data range, i.e. 7x7 box window, sample covariance, data range 2 (the dtype range of
  the skimage of 2019), whole image. Per view; "Left" = the left view, "(L+R)/2" = the mean of the views.
* `single` (the usual single-image SR protocol, what ISRResCNet's table compares with; BasicSR calculate_psnr /
  calculate_ssim with test_y_channel and crop_border = scale): SR rounded to 8 bit; the BT.601 luma
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) in 0-255 (not rounded), `scale` pixels cropped at every side; PSNR with
  range 255; SSIM with the 11x11 Gaussian window (sigma 1.5) of Wang et al., valid positions. Per view as `srnet`.
  `evaluate_image_folder` applies the single-image protocols to a folder of HR images (Set5, Set14, ...).
* `swinfir` (SwinFIRSSR's published numbers, BasicSR calculate_psnr with crop_border = scale on uint8 RGB): SR rounded
  to 8 bit; RGB PSNR per view without the `scale` outermost pixels of every side; (L+R)/2 = the mean of the views.
  CVHSSR and EHFSSR publish under `nafssr` (their test ymls: crop_border 0, the same skimage SSIM).

Scores are per scene, then averaged over scenes.

Optional scores of any protocol (`evaluate_dataset(..., scorers=...)`; test_sr.py --lpips, --stereo_consistency):
* LPIPS v0.1 (AlexNet) of each SR view against its HR view (models/perceptual.LPIPS), 'lpips_l', 'lpips_r';
* stereo consistency where the scene has ground-truth disparity: the mean absolute difference (RGB in [0, 1]) between
  the left view and the right view warped by the left ground truth, over non-occluded valid pixels (0 < d < 192,
  inside the right image), of the SR pair ('sc_sr') and of the HR pair ('sc_hr', what the cameras themselves give);
* the NTIRE 2023 Track-2 stereo term: S = mean |D_SR - D_HR| in HR pixels over the whole left view, D the left
  disparity a disparity estimator finds on the SR pair and on the HR pair ('disp_s'), on every scene; with LPIPS,
  the Track-2 score 1 - LPIPS_L / 2 - LPIPS_R / 2 - S ('track2'). A set's mean of a key is over its scenes that
  have it (only scenes with ground truth have 'sc_sr', 'sc_hr').
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.readers import image_size, read_image_uint8, write_image
from data.testsets import Scene, list_scenes, load_ground_truth, load_pair
from metrics import D1_PIXELS, D1_RELATIVE, STEREO_BOUNDARY, bad_pixel_rate, d1_error, epe, psnr, quantize, rmse, ssim
from models.dsdmsr import stage_targets
from models.imresize import imresize, modcrop
from models.inference import super_resolve

SRNET_EXTRA_SHAVE = 6              # official utility.calc_psnr: shave = scale + 6 for non-benchmark sets (SR-RAW)
SRNET_SSIM_RANGE = 2.0             # skimage compare_ssim on floats without data_range: dtype range (-1, 1)
Y_WEIGHTS = (65.481, 128.553, 24.966)   # BT.601 luma of RGB in [0, 1], + 16, in 0-255 (MATLAB rgb2ycbcr)
Y_OFFSET = 16.0
GAUSSIAN_SSIM_WINDOW, GAUSSIAN_SSIM_SIGMA = 11, 1.5   # Wang et al. ssim.m, BasicSR calculate_ssim
SRFunction = Callable[[list[Scene]], list[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class Protocol:
    """One convention of published numbers (module docstring): what is scored and how. A new protocol is one entry of
    PROTOCOLS; test_sr.py's --protocol choices, its header and `evaluate_dataset` read the entry."""

    name: str
    summary: str                        # test_sr.py's header line ({psnr_border}, {sr} are filled in)
    rounded: bool = False               # SR rounded to 8 bit before scoring, whatever --quantize asks
    per_view: bool = False              # single-image papers: 'Left' = the whole left view, no stereo-boundary crop
    channel: str = 'rgb'                # 'rgb' in [0, 1], or 'y': BT.601 luma in 0-255 (`y_channel`)
    psnr_shave: int | None = None       # pixels cut at every side for PSNR: scale + this (None: none)
    ssim_shave: int | None = None       # the same for SSIM
    ssim_window: str = 'box'            # 'box': 7x7 average (evaluation.m, skimage); 'gaussian': 11x11 (ssim.m)
    ssim_sample_covariance: bool = False   # n/(n-1) (co)variances, as scikit-image
    ssim_range: float | None = None     # None: the channel's range (1 or 255)

    def describe(self, scale: int, quantize_mode: str | None = None) -> str:
        sr = f'8-bit SR ({quantize_mode}ed)' if quantize_mode else 'float SR'
        border = scale + self.psnr_shave if self.psnr_shave is not None else 0
        return self.summary.format(psnr_border=border, sr=sr, boundary=STEREO_BOUNDARY)


PROTOCOLS = {p.name: p for p in (
    Protocol('ipassr', 'RGB PSNR/SSIM, data range 1, {sr}, Left = {boundary} leftmost columns removed, (L+R)/2 = mean '
                       'of full-image scores, SSIM = evaluation.m (7x7 box window, valid)'),
    Protocol('nafssr', 'NAFSSR/BasicSR: RGB PSNR/SSIM of rounded 8-bit SR, (L+R)/2 = mean of per-view scores, SSIM = '
                       'skimage (7x7 box, sample covariance); Left = {boundary} leftmost columns removed (not in '
                       'their tables)', rounded=True, ssim_sample_covariance=True),
    Protocol('srnet', 'SRNet: RGB PSNR of rounded 8-bit SR without {psnr_border} border pixels, SSIM = skimage 2019 '
                      '(7x7 box, sample covariance, range 2), per view; Left = the left view, (L+R)/2 = mean of '
                      'views', rounded=True, per_view=True, psnr_shave=SRNET_EXTRA_SHAVE, ssim_sample_covariance=True,
             ssim_range=SRNET_SSIM_RANGE),
    Protocol('single', 'single-image: Y-channel (BT.601) PSNR/SSIM of rounded 8-bit SR without {psnr_border} border '
                       'pixels, SSIM 11x11 Gaussian; Left = the left view, (L+R)/2 = mean of views', rounded=True,
             per_view=True, channel='y', psnr_shave=0, ssim_shave=0, ssim_window='gaussian'),
    # SwinFIR options/test/SwinFIRSSR/*.yml 76-80: calculate_psnr per view (uint8, RGB) with crop_border = scale,
    # summed over L and R / 2N (swinfirssr_model.py 105-121). They publish no SSIM and no "Left".
    Protocol('swinfir', 'SwinFIRSSR/BasicSR: RGB PSNR of rounded 8-bit SR without {psnr_border} border pixels per '
                        'view, (L+R)/2 = mean of views; Left = the left view (not in their tables); SSIM (not in '
                        'their tables) = skimage (7x7 box, sample covariance), whole view', rounded=True,
             per_view=True, psnr_shave=0, ssim_sample_covariance=True),
)}
# Protocols of single-image papers: scored per view on 8-bit SR, with their own border crops (`single_image_scores`).
SINGLE_IMAGE_PROTOCOLS = tuple(name for name, p in PROTOCOLS.items() if p.per_view)


MAX_DISPARITY = 192.0              # ground truth counted where 0 < d < 192 (official test_disp.py)


@dataclass(frozen=True)
class DisparityProtocol:
    """One disparity scoring: which ground-truth pixels count, how estimates are clamped, which error rates are
    reported. test_disp.py's masks, clamps, rates and header line read the entries of DISPARITY_PROTOCOLS."""

    name: str
    summary: str                        # test_disp.py's header line ({scale}, {max_disparity} are filled in)
    max_disparity: float | None = None  # ground truth counted where 0 < d < this; None: every finite masked pixel
    clamp: tuple[float, float] | None = None   # estimates clamped to [low, high] before scoring (None: not clamped)
    bad_thresholds: tuple[float, ...] = (1.0, 3.0)   # '>t px' error rates, reported as bad{t:g}
    d1_pixels: float = D1_PIXELS        # KITTI D1: error > d1_pixels and > d1_relative x the true disparity
    d1_relative: float = D1_RELATIVE
    regions: tuple[str, ...] = ()       # ground truths scored separately (test_disp.py: all = occ, noc)

    def describe(self, scale: int | None = None) -> str:
        return self.summary.format(scale=scale, max_disparity=f'{self.max_disparity:g}' if self.max_disparity else '')

    def valid(self, gt: torch.Tensor) -> torch.Tensor:
        """Pixels of a ground truth (any shape) that are scored: finite, and 0 < gt < max_disparity if it is set."""
        mask = torch.isfinite(gt)
        return mask if self.max_disparity is None else mask & (gt > 0) & (gt < self.max_disparity)

    def clamped(self, disparity: torch.Tensor) -> torch.Tensor:
        return disparity if self.clamp is None else disparity.clamp(*self.clamp)

    def rates(self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """The '>t px' rates (bad1, bad3, ...) and D1 of `pred` over `mask`."""
        rates = {f'bad{t:g}': bad_pixel_rate(pred, gt, mask, t) for t in self.bad_thresholds}
        rates['d1'] = d1_error(pred, gt, mask, self.d1_pixels, self.d1_relative)
        return rates

    @property
    def metrics(self) -> tuple[str, ...]:
        return ('rmse', 'epe', *(f'bad{t:g}' for t in self.bad_thresholds), 'd1')


DISPARITY_PROTOCOLS = {p.name: p for p in (
    # SSRDE-FNet's test_disp.py: left view, occ (dispocc0) and noc (dispnoc0 & mask0nocc) ground truths, 0 < gt < 192,
    # estimates clamped to [0, 192] in test mode.
    DisparityProtocol('stereo', 'left-view EPE in HR px over 0 < gt < {max_disparity} (all = dispocc0 / PFM, noc = '
                                'dispnoc0 / PFM & mask0nocc), disparities clamped to [0, {max_disparity}]; >1px, >3px, '
                                'D1 (>3 px and >5 %) of the final HR disparity', max_disparity=MAX_DISPARITY,
                      clamp=(0.0, MAX_DISPARITY), regions=('all', 'noc')),
    # Disparity-map SR (DSDMSR, models/dsdmsr.py): every valid HR pixel of the map, no range, no clamp.
    DisparityProtocol('map_sr', 'each ground-truth map cropped to a multiple of {scale}, downsampled x{scale} '
                                'mask-aware (an LR pixel is the mean of the valid HR pixels of its block, / scale; LR '
                                'holes filled with the nearest valid LR value), super-resolved; RMSE, EPE (px), >1px, '
                                '>3px, D1 (>3 px and >5 %) over the valid HR pixels; stage k at its own resolution '
                                'against the ground truth downsampled there, in its own pixels; nearest / bicubic: the '
                                'same LR map upsampled, values x scale'),
)}


def protocol_entry(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f'unknown protocol {name!r}; known: {", ".join(PROTOCOLS)}')
    return PROTOCOLS[name]


def quantized(img: torch.Tensor, mode: str | None) -> torch.Tensor:
    """img in [0, 1] as an 8-bit file stores it: 'round' (what the project and BasicSR save), 'truncate' (what
    torchvision's ToPILImage saves, as the official SSRDE-FNet and iPASSR test scripts do), or None (float)."""
    if mode == 'round':
        return quantize(img)
    if mode == 'truncate':
        return torch.floor(img.clamp(0, 1) * 255) / 255
    return img


def y_channel(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB (..., 3, H, W) in [0, 1] -> (..., 1, H, W) in 0-255 (16-235 range), float64."""
    weights = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=img.device).view(3, 1, 1)
    return (img.double() * weights).sum(-3, keepdim=True) + Y_OFFSET


def gaussian_ssim(sr: torch.Tensor, hr: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """SSIM of Wang et al. (ssim.m; BasicSR calculate_ssim): 11x11 Gaussian window, sigma 1.5, K = (0.01, 0.03),
    valid positions only, mean over the map and the channels. (..., C, H, W) -> (...), float64."""
    x, y = sr.double(), hr.double()
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    if h < GAUSSIAN_SSIM_WINDOW or w < GAUSSIAN_SSIM_WINDOW:
        raise ValueError(f'gaussian_ssim needs images of at least {GAUSSIAN_SSIM_WINDOW}x{GAUSSIAN_SSIM_WINDOW}, '
                         f'got {h}x{w}')
    x, y = x.reshape(-1, 1, h, w), y.reshape(-1, 1, h, w)
    r = torch.arange(GAUSSIAN_SSIM_WINDOW, dtype=torch.float64, device=x.device) - GAUSSIAN_SSIM_WINDOW // 2
    g = torch.exp(-r ** 2 / (2 * GAUSSIAN_SSIM_SIGMA ** 2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]

    def local_mean(t):
        return F.conv2d(t, window)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x ** 2, local_mean(y * y) - mu_y ** 2
    cov = local_mean(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(-1, c, *ssim_map.shape[-2:]).mean(dim=(-3, -2, -1)).reshape(lead)


def single_image_scores(sr: torch.Tensor, hr: torch.Tensor, scale: int, protocol: str = 'single') -> tuple[float,
                                                                                                           float]:
    """(PSNR, SSIM) of one 8-bit SR image (3, H, W) in [0, 1] under a single-image protocol (module docstring)."""
    entry = protocol_entry(protocol)
    if not entry.per_view:
        raise ValueError(f'unknown single-image protocol {protocol!r}; known: {", ".join(SINGLE_IMAGE_PROTOCOLS)}')
    if entry.channel == 'y':
        sr, hr, data_range = y_channel(sr), y_channel(hr), 255.0
    else:
        data_range = 1.0

    def shaved(x: torch.Tensor, shave: int | None) -> torch.Tensor:
        if shave is None:
            return x
        border = scale + shave
        return x[..., border:-border, border:-border]

    value = psnr(shaved(sr, entry.psnr_shave), shaved(hr, entry.psnr_shave), data_range=data_range).item()
    sr, hr = shaved(sr, entry.ssim_shave), shaved(hr, entry.ssim_shave)
    if entry.ssim_window == 'gaussian':
        return value, gaussian_ssim(sr, hr, data_range=entry.ssim_range or data_range).item()
    return value, ssim(sr, hr, data_range=entry.ssim_range or data_range,
                       sample_covariance=entry.ssim_sample_covariance).item()


def scene_scores(sr: torch.Tensor, hr: torch.Tensor, sr_right: torch.Tensor, hr_right: torch.Tensor,
                 protocol: str = 'ipassr', scale: int = 4) -> dict:
    """The numbers of one scene; all inputs (3, H, W) in [0, 1]: psnr/ssim of 'left' (64 columns cropped), 'avg'
    ((L+R)/2), and the full-image per-view PSNRs 'l' and 'r'. Single-image protocols (`srnet`, `single`, which need
    `scale` for their border crops): 'left' is the left view's score under the protocol, 'l'/'r' each view's."""
    entry = protocol_entry(protocol)
    if entry.per_view:
        left, right = single_image_scores(sr, hr, scale, protocol), single_image_scores(sr_right, hr_right, scale,
                                                                                        protocol)
        return {'psnr_left': left[0], 'ssim_left': left[1], 'psnr_avg': (left[0] + right[0]) / 2,
                'ssim_avg': (left[1] + right[1]) / 2, 'psnr_l': left[0], 'psnr_r': right[0]}
    sample_covariance = entry.ssim_sample_covariance
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


def network_sr(model: torch.nn.Module, device: torch.device, tta: bool = False,
               precision: str = 'fp32') -> SRFunction:
    """SR function of a network of the zoo: the final output of a batch of equal-size scenes, clamped, on the CPU, in
    float32 (`precision`: that of the network, models/precision.py)."""
    def run(scenes: list[Scene]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = [load_pair(s.lr) for s in scenes]
        left = torch.stack([to_tensor(a) for a, _ in pairs]).to(device)
        right = torch.stack([to_tensor(b) for _, b in pairs]).to(device)
        out = super_resolve(model, left, right, tta=tta, precision=precision)
        return list(zip(out.left.float().cpu(), out.right.float().cpu()))
    return run


def evaluate_dataset(sr_fn: SRFunction, dataset_dir: Path, scale: int, batch_size: int = 1,
                     quantize_mode: str | None = None, save_dir: Path | None = None, protocol: str = 'ipassr',
                     scorers: tuple[Callable, ...] = ()) -> dict:
    """Scores of one test set: {'psnr_left', 'ssim_left', 'psnr_avg', 'ssim_avg', ..., 'num_scenes', 'scenes'}.

    sr_fn(scenes) -> [(sr_left, sr_right)] (3, sH, sW) in [0, 1]; consecutive scenes of equal LR size are batched.
    The 'nafssr', 'srnet' and 'single' protocols score rounded 8-bit SR whatever `quantize_mode` says.
    `scorers`: more per-scene scores, scorer(scene, sr_left, sr_right, hr_left, hr_right) -> dict (the scored SR,
    quantised as the protocol says); with LPIPS and the disparity term, 'track2' is added. Means are over the scenes
    that have a key. Raises FileNotFoundError / ValueError naming the file at fault.
    """
    if protocol_entry(protocol).rounded:
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
                per_scene[scene.name] = scene_scores(sr_l, hr_l, sr_r, hr_r, protocol, scale)
                for scorer in scorers:
                    per_scene[scene.name].update(scorer(scene, sr_l, sr_r, hr_l, hr_r))
                if {'lpips_l', 'lpips_r', 'disp_s'} <= set(per_scene[scene.name]):
                    values = per_scene[scene.name]
                    values['track2'] = ntire_track2_score(values['lpips_l'], values['lpips_r'], values['disp_s'])
                if save_dir is not None:
                    write_image(save_dir / f'{scene.name}_L.png', sr_l.permute(1, 2, 0).numpy())
                    write_image(save_dir / f'{scene.name}_R.png', sr_r.permute(1, 2, 0).numpy())
                bar.set_postfix(psnr_left=f"{per_scene[scene.name]['psnr_left']:.2f}")
                bar.update()
    bar.close()
    keys = list(dict.fromkeys(k for values in per_scene.values() for k in values))
    mean = {key: float(np.mean([s[key] for s in per_scene.values() if key in s])) for key in keys}
    return {**mean, 'num_scenes': len(per_scene), 'scenes': per_scene}


IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


def network_single_sr(model: torch.nn.Module, device: torch.device, precision: str = 'fp32') -> Callable:
    """SR function of a single-image network of the zoo on one LR image (3, h, w) in [0, 1]: the image is given
    as both views (the network treats them independently) and the left output returned, clamped, on the CPU."""
    def run(lr: torch.Tensor) -> torch.Tensor:
        x = lr[None].to(device)
        return super_resolve(model, x, x, precision=precision).left[0].float().cpu()
    return run


def evaluate_image_folder(sr_fn: Callable, folder: Path, scale: int, protocol: str = 'single') -> dict:
    """A single-image protocol on a folder of HR images (Set5, Set14, B100, Urban100...): each HR image cropped to
    a multiple of `scale` (modcrop), its LR made by MATLAB bicubic downscaling of the 8-bit image (the benchmarks'
    degradation), super-resolved by sr_fn (3, h, w) -> (3, sh, sw) in [0, 1], rounded to 8 bit and scored.
    Returns {'psnr', 'ssim', 'num_images', 'images': {name: {'psnr', 'ssim'}}}; errors name the folder or file."""
    if protocol not in SINGLE_IMAGE_PROTOCOLS:
        raise ValueError(f'evaluate_image_folder: protocol must be one of {SINGLE_IMAGE_PROTOCOLS}, got {protocol!r}')
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'image folder not found: {folder}')
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {folder}')
    scores = {}
    for path in tqdm(paths, desc=folder.name, unit='image'):
        hr = modcrop(read_image_uint8(path), scale)
        if min(hr.shape[:2]) < 2 * scale + GAUSSIAN_SSIM_WINDOW:
            raise ValueError(f'{path} is {hr.shape[0]}x{hr.shape[1]}: too small for x{scale} scoring')
        lr = to_tensor(imresize(hr, 1 / scale)).float() / 255
        sr = quantize(sr_fn(lr))
        hr_t = to_tensor(hr).float() / 255
        if sr.shape != hr_t.shape:
            raise ValueError(f'the x{scale} SR of {path} is {tuple(sr.shape[1:])}, HR is {tuple(hr_t.shape[1:])}')
        value = single_image_scores(sr, hr_t, scale, protocol)
        scores[path.stem] = {'psnr': value[0], 'ssim': value[1]}
    return {'psnr': float(np.mean([v['psnr'] for v in scores.values()])),
            'ssim': float(np.mean([v['ssim'] for v in scores.values()])), 'num_images': len(scores), 'images': scores}


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


# ---- perceptual and stereo-consistency scores (NTIRE 2023 Track 2)

def warp_to_left(right: torch.Tensor, disparity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The right view seen from the left: right sampled at (x - d(x), y), linear interpolation along the row.
    right (B, C, H, W), disparity (B, 1, H, W) of the left view, positive, in pixels. Returns (warped, inside): inside
    is where 0 <= x - d <= W - 1 and d is finite. An integer disparity gives an exact pixel shift."""
    b, c, h, w = right.shape
    x = torch.arange(w, dtype=right.dtype, device=right.device).view(1, 1, 1, w) - disparity.to(right.dtype)
    inside = torch.isfinite(x) & (x >= 0) & (x <= w - 1)
    x = torch.where(inside, x, torch.zeros_like(x))
    x0 = x.floor().clamp(max=w - 1)
    frac = x - x0
    x1 = (x0 + 1).clamp(max=w - 1)
    gather = lambda index: torch.gather(right, 3, index.long().expand(b, c, h, w))  # noqa: E731
    return gather(x0) * (1 - frac) + gather(x1) * frac, inside


def stereo_consistency_error(left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
    """Mean |left - right warped by the left disparity| over channels and the valid pixels: disparity finite,
    0 < d < MAX_DISPARITY (0 and NaN = unknown or occluded: pass the non-occluded ground truth), and x - d inside
    the right image. left, right (B, C, H, W) in [0, 1], disparity (B, 1, H, W) -> (B,) float64; NaN where no pixel
    is valid."""
    warped, inside = warp_to_left(right, disparity)
    valid = (inside & (disparity > 0) & (disparity < MAX_DISPARITY)).to(torch.float64)
    error = (left.double() - warped.double()).abs().mean(1, keepdim=True)
    return (error * valid).sum(dim=(1, 2, 3)) / valid.sum(dim=(1, 2, 3))


def disparity_mae(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """NTIRE 2023 Track-2 S: mean |D_SR - D_HR| in pixels over the pixels where both are finite (no crop)."""
    both = torch.isfinite(estimate) & torch.isfinite(reference)
    return (estimate[both].double() - reference[both].double()).abs().mean().item()


def ntire_track2_score(lpips_left: float, lpips_right: float, s: float) -> float:
    """NTIRE 2023 Track 2: 1 - LPIPS(SR_L, HR_L) / 2 - LPIPS(SR_R, HR_R) / 2 - S; higher is better."""
    return 1 - 0.5 * lpips_left - 0.5 * lpips_right - s


def lpips_scorer(metric: torch.nn.Module, device: torch.device) -> Callable:
    """Scorer: LPIPS of each SR view against its HR view, {'lpips_l', 'lpips_r'}."""
    def score(scene, sr_left, sr_right, hr_left, hr_right) -> dict:
        with torch.inference_mode():
            values = metric(torch.stack([sr_left, sr_right]).float().to(device),
                            torch.stack([hr_left, hr_right]).float().to(device))
        return {'lpips_l': values[0].item(), 'lpips_r': values[1].item()}
    return score


def consistency_scorer(estimator: Callable | None) -> Callable:
    """Scorer: 'sc_sr', 'sc_hr' (ground-truth warp error of the SR and HR pairs, non-occluded) on scenes with
    ground truth, and, with a disparity `estimator` (left, right) (1, 3, H, W) -> (1, 1, H', W'), the NTIRE term
    'disp_s' on every scene."""
    def score(scene, sr_left, sr_right, hr_left, hr_right) -> dict:
        values = {}
        if scene.has_disparity:
            truth = torch.from_numpy(load_ground_truth(scene)[1])
            if truth.shape != hr_left.shape[1:]:
                raise ValueError(f'ground truth {scene.gt_all} is {tuple(truth.shape)}, its HR image {scene.hr[0]} '
                                 f'is {tuple(hr_left.shape[1:])}')
            truth = truth[None, None].float()
            values['sc_sr'] = stereo_consistency_error(sr_left[None], sr_right[None], truth).item()
            values['sc_hr'] = stereo_consistency_error(hr_left[None], hr_right[None], truth).item()
        if estimator is not None:
            values['disp_s'] = disparity_mae(estimator(sr_left[None], sr_right[None]),
                                             estimator(hr_left[None], hr_right[None]))
        return values
    return score


def block_matching_estimator(max_disparity: int = 192) -> Callable:
    """Disparity estimator of the NTIRE term without weights: `block_matching` (9x9 SAD) on the pair itself."""
    def estimate(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return block_matching(left.float(), right.float(), max_disparity)
    return estimate


def network_disparity_estimator(model: torch.nn.Module, scale: int, device: torch.device) -> Callable:
    """Disparity estimator of the NTIRE term from an SR + disparity network of the zoo (SSRDE-FNet) of scale k: the
    pair, cut to a multiple of k, is downscaled by k (MATLAB bicubic) and super-resolved; the network's HR left
    disparity is then at the pair's own resolution and in its pixels."""
    def estimate(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        h, w = left.shape[-2] - left.shape[-2] % scale, left.shape[-1] - left.shape[-1] % scale
        small = [torch.from_numpy(imresize(v[0, :, :h, :w].permute(1, 2, 0).double().cpu().numpy(), 1 / scale))
                 .permute(2, 0, 1)[None].float().clamp(0, 1).to(device) for v in (left, right)]
        with torch.inference_mode():
            return model(*small).disp_left.float().cpu()
    return estimate


# ---- disparity-map SR (DSDMSR, models/dsdmsr.py): masked map scores and the nearest / bicubic baselines of the
# same LR map. Pure functions on tensors; scripts average per map.

MAP_PROTOCOL = DISPARITY_PROTOCOLS['map_sr']
MAP_METRICS = MAP_PROTOCOL.metrics
MAP_BASELINES = ('nearest', 'bicubic')


def map_scores(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, float] | None:
    """RMSE, EPE (pixels), >1 px and >3 px rates, KITTI D1 (> 3 px and > 5 % of the truth) of one map over `mask`
    (any equal shapes), as DISPARITY_PROTOCOLS['map_sr'] says. None when the mask selects no pixel: the caller skips
    and counts it (no NaN)."""
    mask = mask.bool() & MAP_PROTOCOL.valid(gt)
    if not mask.any():
        return None
    return {'rmse': rmse(pred, gt, mask), 'epe': epe(pred, gt, mask), **MAP_PROTOCOL.rates(pred, gt, mask)}


def upsample_nearest(lr_map: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, 1, h, w) LR pixels -> (B, 1, sh, sw) HR pixels: each LR value repeated s x s times, multiplied by s."""
    return F.interpolate(lr_map, scale_factor=scale, mode='nearest') * scale


def upsample_bicubic(lr_map: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, 1, h, w) LR pixels -> (B, 1, sh, sw) HR pixels: MATLAB bicubic (imresize.imresize, the project's bicubic),
    multiplied by s. The map must be dense (fill holes first)."""
    maps = [imresize(m[0].detach().cpu().double().numpy(), scale) * scale for m in lr_map]
    return torch.from_numpy(np.stack(maps)[:, None]).to(lr_map)


def score_table(out, lr_map: torch.Tensor, hr_map: torch.Tensor, hr_valid: torch.Tensor,
                scale: int) -> dict[str, dict | None]:
    """Rows for one map (batch of 1): 'nearest', 'bicubic' and 'fused' at HR on the valid HR pixels; 'stage{k}'
    at that stage's own resolution against the mask-aware downsampled ground truth (stage_targets), in pixels of
    that resolution (the last stage is at HR). out: DisparitySROutput; lr_map (1, 1, h, w) dense LR pixels;
    hr_map, hr_valid (1, 1, sh, sw). A row is None when it has no valid pixel."""
    if lr_map.shape[0] != 1:
        raise ValueError(f'score_table scores one map at a time, got a batch of {lr_map.shape[0]}')
    rows = {'nearest': map_scores(upsample_nearest(lr_map, scale), hr_map, hr_valid),
            'bicubic': map_scores(upsample_bicubic(lr_map, scale), hr_map, hr_valid)}
    for k, (pred, (target, valid)) in enumerate(zip(out.stages, stage_targets(hr_map, hr_valid, scale))):
        rows[f'stage{k + 1}'] = map_scores(pred, target, valid)
    rows['fused'] = map_scores(out.fused, hr_map, hr_valid)
    return rows
