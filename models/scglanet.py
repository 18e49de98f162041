"""SCGLANet (Zhou et al., "Stereo Cross Global Learnable Attention Module for Stereo Image Super-Resolution",
CVPRW 2023, NTIRE 2023 stereo SR challenge): NAFSSR-L's body with a temperature in its cross-view attention, cut into
five stages by four stereo cross global learnable attention modules (SCGLA) that attend over the tokens of both views
at once, grouped by locality-sensitive hashing.

Spec: the official `fzuzyb/SCGLANet` @3ad0322, `basicsr/archs/scglanet_arch.py` (cited below as arch.py:line), its
test config `options/test/StereoSR/test_SCGLANet-L_4x_Track1.yml` and train config
`options/train/StereoSR/train_SCGLANet_L_x4_Track1.yml`. x4 is the only scale its authors configure.

Quirks of the official code kept here:
* The hashing draws a fresh random rotation at every forward (arch.py:245-249), train and eval alike, so two
  evaluations of one input differ. The official draws it from the global CPU RNG; here it comes from
  `SCGLANet.generator`, a CPU `torch.Generator` the caller may seed, and from the global RNG (in the official order
  and shapes, so `torch.manual_seed` reproduces the official draws) when it is None, the default. The constructor
  consumes the random numbers of the official constructor's TLC conversion forward (`replay_construction_draws`).
* Tokens with equal hash codes are ordered by torch's unstable sort of all hash rounds at once (arch.py:292), as the
  official; the order matters (chunk boundaries, the learnable term's query slot), and it is the backend's.
* The learnable score term (arch.py:324) depends on a key's features and on the *slot* of the query in its chunk.
* Test time (test yml): TLC (45x135 windows) in every channel attention, and the 6-pass stereo self-ensemble of
  `stereo_sr_model.py:233-299` (config `self_ensemble`, on by default in eval mode).
* Channel order RGB (its datasets convert each view; no BGR option is needed).
* Drop-path tosses its coin with NumPy's global RNG, as the official (arch.py:111), so the torch RNG feeds only the
  rotations, exactly as in the official training forward.
The views are folded into the batch as [left; right] (models/nafssr.py); SCGLA unfolds them into one token sequence.
Names and registration order equal the official modules', so the state_dict matches scglanet_x4_state_dict.json;
tests/test_scglanet_parity.py checks equality with the official code.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.inference import stereo_flips
from models.nafssr import DROP_PATH_OPTION, SCAM, TLC_OPTION, TLC_WINDOW_RATIO, TRAIN_LR_SIZE, NAFBlock
from models.outputs import Pair, StereoSROutput, validate_pair
from models.registry import ModelEntry, Option, Recipe, register_model
from models.stereo_losses import Objective

# SCGLANet-L, the only released configuration (test and train ymls: width 128, num_blks [16,16,32,32,32],
# temperature 2, drop_path_rate 0.1; the class defaults differ: temperature 1.5, drop path 0).
WIDTH = 128
NUM_BLOCKS = (16, 16, 32, 32, 32)
TEMPERATURE = 2.0
DROP_PATH = 0.1
# SCGLA hyperparameters (arch.py:223 defaults, not overridden by any config): tokens per chunk (also the output size
# of the learnable term's MLP), hash rounds, channel reduction of the matching embedding, the cap on the buckets.
CHUNK_SIZE = 144
N_HASHES = 4
MATCH_REDUCTION = 4
MAX_BUCKETS = 128
KEY_NORM_EPS = 5e-5                 # F.normalize eps of the keys (arch.py:318)
# The self-ensemble's colour passes (stereo_sr_model.py:256-257): RGB -> BGR and RGB -> GBR, for both views.
ENSEMBLE_COLOUR_ORDERS = ((2, 1, 0), (1, 2, 0))


@dataclass
class SCGLANetConfig:
    """Hyperparameters of SCGLANet; defaults are SCGLANet-L's (the authors' test and train configs)."""

    scale_factor: int = 4
    width: int = WIDTH
    # NAFBlock + SCATM blocks of the five stages; an SCGLA module sits between consecutive stages.
    num_blocks: tuple[int, ...] = NUM_BLOCKS
    # Probability of skipping a whole stereo block in training (one rate for every block).
    drop_path: float = DROP_PATH
    # Multiplies the cross-view attention scores before both softmaxes (SCATM).
    temperature: float = TEMPERATURE
    chunk_size: int = CHUNK_SIZE
    n_hashes: int = N_HASHES
    # Test-time local converter in the channel attention (models/nafssr.py TLCPool); False pools globally.
    tlc: bool = True
    # LR training patch that fixes the TLC window, 1.5x it = 45x135 (arch.py:544-555, train_size (1, 6, 30, 90)).
    train_size: tuple[int, int] = TRAIN_LR_SIZE
    # Eval mode: mean of the test config's 6 passes (flips with view swap, two colour orders). Training: one pass.
    self_ensemble: bool = True

    @property
    def tlc_window(self) -> tuple[int, int]:
        return int(self.train_size[0] * TLC_WINDOW_RATIO), int(self.train_size[1] * TLC_WINDOW_RATIO)


# ---------------------------------------------------------------------------------------------------------------
# The NAFSSR-like body: NAFBlock per view + cross-view attention with a temperature


class SCATM(SCAM):
    """Stereo cross-attention with temperature (arch.py:63-100): NAFSSR's SCAM whose scores Q_l Q_r^T / sqrt(c) are
    multiplied by `temperature` before both softmaxes (2 sharpens the row attention). SCAM applies its `scale` to the
    queries, so the temperature joins it there (with temperature 2 the product is exact)."""

    def __init__(self, c: int, temperature: float):
        super().__init__(c)
        self.temperature = temperature
        self.scale = self.scale * temperature


class StereoBlock(nn.Module):
    """The official NAFTBlockSR (arch.py:190-204): one NAFBlock applied to each view (shared weights), then SCATM."""

    def __init__(self, c: int, window: tuple[int, int], tlc: bool, temperature: float):
        super().__init__()
        self.blk = NAFBlock(c, window, tlc)
        self.fusion = SCATM(c, temperature)

    def forward(self, x: Tensor) -> Tensor:
        """x: (2B, c, H, W), [left; right]."""
        return self.fusion(self.blk(x))


class DropPath(nn.Module):
    """Stochastic depth as the authors apply it (arch.py:104-119): in training, one coin per call, tossed with NumPy's
    global RNG even when p = 0, skips the wrapped block for the whole batch; kept outputs become x + (new - x)/(1 - p).
    models/nafssr.py's DropPath tosses with torch instead; here the torch RNG is left to the hash rotations, so the
    global stream is consumed as in the official training forward. Eval mode: the block always runs, unscaled."""

    def __init__(self, drop_rate: float, module: nn.Module):
        super().__init__()
        self.drop_rate = drop_rate
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self.module(x)
        if np.random.rand() < self.drop_rate:
            return x
        new = self.module(x)
        return new if self.drop_rate == 0 else torch.add(x, new - x, alpha=1.0 / (1.0 - self.drop_rate))


# ---------------------------------------------------------------------------------------------------------------
# Stereo cross global learnable attention (SCGLA)


def hash_bucket_count(num_tokens: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Buckets per hash round (arch.py:285): one per chunk of tokens, rounded up to even, at most MAX_BUCKETS.
    0 for fewer tokens than a chunk, which the hashing cannot use (the official argmax fails)."""
    chunks = num_tokens // chunk_size
    return min(chunks + chunks % 2, MAX_BUCKETS)


def random_rotations(dim: int, n_buckets: int, n_hashes: int, generator: torch.Generator | None = None) -> Tensor:
    """The super-bit LSH projections (arch.py:239-251): n_hashes random matrices (dim, n_buckets) with orthonormal
    rows or columns (torch.nn.init.orthogonal_), drawn one after the other in the default dtype on the CPU from
    `generator` (None: the global RNG, as the official). Returns (dim, n_hashes, n_buckets)."""
    return torch.stack([nn.init.orthogonal_(torch.empty(dim, n_buckets), generator=generator)
                        for _ in range(n_hashes)], dim=1)


def bucket_order(codes: Tensor, n_buckets: int, stable: bool = False) -> Tensor:
    """codes (B, n_hashes, L) in [0, n_buckets) -> (B, n_hashes, L): each round's token indices sorted by bucket.
    All rounds are sorted at once with disjoint code ranges, as the official (arch.py:258-294): its unstable sort
    decides the order of tokens with equal codes, and the chunks and the learnable term depend on that order.
    `stable`: tokens of one bucket keep their token order instead (every sort key made unique by its position), an
    order any runtime reproduces (ONNX's TopK breaks ties by index; torch's unstable CPU sort does not)."""
    b, n_hashes, length = codes.shape
    offsets = torch.arange(n_hashes, device=codes.device).view(1, -1, 1) * n_buckets
    keys = (codes + offsets).flatten(1)                                                   # B, n_hashes * L
    if stable:
        keys = keys * keys.shape[-1] + torch.arange(keys.shape[-1], device=codes.device)
    order = keys.sort(dim=-1).indices
    return order.view(b, n_hashes, length) % length


def views_to_tokens(x: Tensor) -> Tensor:
    """(2B, C, H, W) [left; right] -> (B, 2HW, C): the left view's pixels in raster order, then the right view's."""
    two_b, c = x.shape[:2]
    return x.reshape(2, two_b // 2, c, -1).permute(1, 0, 3, 2).reshape(two_b // 2, -1, c)


def tokens_to_views(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of `views_to_tokens`: (B, 2HW, C) -> (2B, C, H, W)."""
    b, _, c = tokens.shape
    return tokens.reshape(b, 2, height, width, c).permute(1, 0, 4, 2, 3).reshape(2 * b, c, height, width)


def chunked(tokens: Tensor, chunk_size: int) -> Tensor:
    """(..., L, D) -> (..., n_chunks, chunk_size, D); a last partial chunk is filled up with copies of the last
    `pad` tokens (arch.py:301-312), so the copies also attend and are attended to."""
    pad = -tokens.shape[-2] % chunk_size
    if pad:
        tokens = torch.cat([tokens, tokens[..., -pad:, :]], dim=-2)
    return tokens.unflatten(-2, (-1, chunk_size))


def with_neighbours(chunks: Tensor) -> Tensor:
    """(..., n_chunks, S, D) -> (..., n_chunks, 3S, D): each chunk, then the previous and the next one (cyclic),
    the keys a chunk of queries attends to (arch.py:264-267)."""
    n = chunks.shape[-3]
    k = torch.arange(n, device=chunks.device)
    neighbours = torch.stack([k, (k - 1) % n, (k + 1) % n], dim=1).flatten()              # 3n chunk indices
    return chunks.index_select(-3, neighbours).unflatten(-3, (n, 3)).flatten(-3, -2)


class SCGLA(nn.Module):
    """Stereo cross global learnable attention (arch.py:221-357), on both views' features (2B, c, H, W) at once.

    The 2HW tokens of the pair are hashed n_hashes times (super-bit LSH: argmax over random orthogonal projections
    of a c/4-channel matching embedding). Per round, tokens sorted by bucket are cut into chunks of `chunk_size`;
    each query attends to the keys of its chunk and of the two neighbour chunks with the score
    q . k/|k| + fc(k)[slot of q], where fc is the learnable term (an MLP of the key's own embedding with one output
    per query slot). The rounds are merged by a softmax over their log-normalisers. Residual output x + attention.
    """

    def __init__(self, c: int, chunk_size: int = CHUNK_SIZE, n_hashes: int = N_HASHES):
        super().__init__()
        self.chunk_size = chunk_size
        self.n_hashes = n_hashes
        self.conv_match = nn.Conv2d(c, c // MATCH_REDUCTION, 3, padding=1, bias=False)  # queries / keys
        self.conv_assembly = nn.Conv2d(c, c, 3, padding=1, bias=False)                  # values
        self.conv_assembly_fc = nn.Conv2d(c, c, 3, padding=1, bias=False)               # input of the learnable term
        self.fc = nn.Sequential(nn.Linear(c, chunk_size), nn.ReLU(), nn.Linear(chunk_size, chunk_size))
        # SCGLANet.fix_hashing: rotations drawn once (C', n_hashes, buckets) and a stable bucket order; None and
        # False: a fresh draw per forward and the backend's sort, as the official.
        self.register_buffer('fixed_rotations', None, persistent=False)
        self.stable_order = False

    def hash_codes(self, match: Tensor, n_buckets: int, generator: torch.Generator | None) -> Tensor:
        """Super-bit LSH (arch.py:239-262): match (B, L, C') -> (B, n_hashes, L), each token's bucket in each round,
        the argmax of its projections on a fresh random rotation per round (the same for the whole batch), or on
        `fixed_rotations`."""
        rotations = self.fixed_rotations
        if rotations is None:
            rotations = random_rotations(match.shape[-1], n_buckets, self.n_hashes, generator)   # C', h, buckets
        elif rotations.shape[-1] != n_buckets:
            raise ValueError(f'the hashing was fixed for {rotations.shape[-1]} buckets per round (fix_hashing), this '
                             f'input needs {n_buckets}: fix it again at this size')
        return torch.einsum('btf,fhi->bhti', match, rotations.to(match)).argmax(-1)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x: (2B, c, H, W), [left; right], 2HW >= chunk_size -> the same shape."""
        height, width = x.shape[-2:]
        match = views_to_tokens(self.conv_match(x))                    # B, L, C'   (L = 2HW, C' = c/4)
        values = views_to_tokens(self.conv_assembly(x))                # B, L, c
        learned = self.fc(views_to_tokens(self.conv_assembly_fc(x)))   # B, L, S    (S = chunk_size)
        keys = F.normalize(match, dim=-1, eps=KEY_NORM_EPS)            # B, L, C'
        length = match.shape[1]

        n_buckets = hash_bucket_count(length, self.chunk_size)
        order = bucket_order(self.hash_codes(match, n_buckets, generator), n_buckets, self.stable_order)  # B, h, L
        index = order.unsqueeze(-1)

        def sorted_chunks(tokens: Tensor) -> Tensor:                   # B, L, D -> B, h, n, S, D
            return chunked(torch.take_along_dim(tokens.unsqueeze(1), index, dim=2), self.chunk_size)

        queries = sorted_chunks(match)                                 # B, h, n, S, C'
        scores = queries @ with_neighbours(sorted_chunks(keys)).transpose(-1, -2)       # B, h, n, S, 3S
        scores = scores + with_neighbours(sorted_chunks(learned)).transpose(-1, -2)     # + fc(key)[query slot]
        log_norm = scores.logsumexp(-1, keepdim=True)                  # B, h, n, S, 1
        gathered = torch.exp(scores - log_norm) @ with_neighbours(sorted_chunks(values))  # B, h, n, S, c
        # Drop the padding copies and put each round back in token order.
        gathered = gathered.flatten(2, 3)[:, :, :length]               # B, h, L, c
        log_norm = log_norm.flatten(2, 3)[:, :, :length]               # B, h, L, 1
        gathered = torch.empty_like(gathered).scatter_(2, index.expand_as(gathered), gathered)
        log_norm = torch.empty_like(log_norm).scatter_(2, index, log_norm)
        # Rounds weighted by how much attention mass each found (softmax over the rounds' log-normalisers).
        merged = (gathered * log_norm.softmax(dim=1)).sum(dim=1)       # B, L, c
        return x + tokens_to_views(merged, height, width)


# ---------------------------------------------------------------------------------------------------------------
# The network


class SCGLANet(nn.Module):
    """SCGLANet for x4: LR pair (B, 3, H, W) RGB in [0, 1] with 2HW >= 144 -> StereoSROutput with sr_left, sr_right
    (B, 3, 4H, 4W), not clamped. In eval mode with `config.self_ensemble` the output is the mean of six passes.

    `generator`: a CPU torch.Generator the hash rotations are drawn from (also assignable later as
    `model.generator`); None draws from the global CPU RNG as the official code does. Either way every forward
    draws new rotations, so seed it (or the global RNG) before a forward to repeat that forward's output.
    """

    def __init__(self, config: SCGLANetConfig | None = None, generator: torch.Generator | None = None):
        super().__init__()
        config = config or SCGLANetConfig()
        if not 0 <= config.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {config.drop_path}")
        self.config = config
        self.scale = config.scale_factor
        self.generator = generator
        # Any H x W with 2HW >= chunk_size runs; scripts pad smaller pairs up to 6 x 12 (= 72 pixels per view).
        self.min_input_size = (6, 12)
        self.input_multiple = 1
        c, window = config.width, config.tlc_window
        self.intro = nn.Conv2d(3, c, 3, padding=1)
        # Official attribute names body1..body5 / SCGLA1..SCGLA4, registered interleaved (the state_dict order).
        for stage, num_blocks in enumerate(config.num_blocks, start=1):
            self.add_module(f'body{stage}', nn.Sequential(*(
                DropPath(config.drop_path, StereoBlock(c, window, config.tlc, config.temperature))
                for _ in range(num_blocks))))
            if stage < len(config.num_blocks):
                self.add_module(f'SCGLA{stage}', nn.Sequential(SCGLA(c, config.chunk_size, config.n_hashes)))
        self.up = nn.Sequential(nn.Conv2d(c, 3 * self.scale ** 2, 3, padding=1), nn.PixelShuffle(self.scale))
        self.replay_construction_draws()

    def stages(self) -> list[tuple[nn.Module, SCGLA | None]]:
        """[(body1, SCGLA1), ..., (body5, None)]: the stages and the global attention after each."""
        n = len(self.config.num_blocks)
        return [(getattr(self, f'body{k}'), getattr(self, f'SCGLA{k}')[0] if k < n else None)
                for k in range(1, n + 1)]

    def replay_construction_draws(self) -> None:
        """Consume the random numbers the official constructor draws after its weights: the TLC conversion runs one
        forward on torch.rand(1, 6, *train_size) (arch.py:535-540), whose SCGLA modules draw their rotations.
        Seeding the global RNG (or `generator`) before building then leaves it where the official leaves it."""
        h, w = self.config.train_size
        torch.rand(1, 6, h, w, generator=self.generator)
        n_buckets = hash_bucket_count(2 * h * w, self.config.chunk_size)
        for _ in range(len(self.config.num_blocks) - 1):
            random_rotations(self.config.width // MATCH_REDUCTION, n_buckets, self.config.n_hashes, self.generator)

    def fix_hashing(self, height: int, width: int) -> None:
        """Make the network a function of its input for LR pairs of `height` x `width` (or any size with as many hash
        buckets, hash_bucket_count): each SCGLA draws its rotations now (from `generator`, else the global RNG, in
        stage order) and reuses them in every forward and every pass of the self-ensemble, and tokens of one bucket
        keep their token order (bucket_order's `stable`). Not the official behaviour (a fresh draw per forward and
        torch's unstable sort); ONNX export needs it (models/export.py): a graph holds no QR decomposition to draw
        orthogonal rotations with, and onnxruntime orders equal keys by index. `unfix_hashing` undoes it."""
        n_buckets = hash_bucket_count(2 * height * width, self.config.chunk_size)
        for _, attention in self.stages()[:-1]:
            attention.fixed_rotations = random_rotations(self.config.width // MATCH_REDUCTION, n_buckets,
                                                         self.config.n_hashes, self.generator).to(self.intro.weight)
            attention.stable_order = True

    def unfix_hashing(self) -> None:
        """Back to the official hashing: fresh rotations at every forward, the backend's sort."""
        for _, attention in self.stages()[:-1]:
            attention.fixed_rotations, attention.stable_order = None, False

    def prepare_export(self, height: int, width: int) -> None:
        """Called by models/export.py before tracing at LR size `height` x `width`: fix the hashing."""
        self.fix_hashing(height, width)

    def super_resolve(self, left: Tensor, right: Tensor) -> Pair:
        """One pass of the network: (B, 3, H, W) x 2 -> Pair of (B, 3, 4H, 4W)."""
        x = torch.cat([left, right])                                             # 2B, 3, H, W
        skip = F.interpolate(x, scale_factor=self.scale, mode='bilinear', align_corners=False)  # 2B, 3, sH, sW
        features = self.intro(x.contiguous(memory_format=torch.channels_last))  # 2B, c, H, W
        for body, global_attention in self.stages():
            features = body(features)
            if global_attention is not None:
                features = global_attention(features, self.generator)
        return Pair.unfold((self.up(features) + skip).contiguous())

    def forward(self, left: Tensor, right: Tensor) -> StereoSROutput:
        _, h, w = validate_pair(left, right)
        if 2 * h * w < self.config.chunk_size:
            raise ValueError(f"SCGLANet needs 2*H*W >= {self.config.chunk_size} LR pixels (one hash chunk of both "
                             f"views), got {h}x{w}")
        if self.training or not self.config.self_ensemble:
            return StereoSROutput(*self.super_resolve(left, right))
        return StereoSROutput(*self_ensemble(self.super_resolve, left, right))


def self_ensemble(super_resolve, left: Tensor, right: Tensor) -> Pair:
    """The test config's self-ensemble (`ensemble: true`; stereo_sr_model.py:233-299): the mean of six passes, each
    undone on its output, in the official order: identity, horizontal flip with the views swapped, vertical flip,
    both flips, then the colour orders BGR and GBR of both views. super_resolve(left, right) -> Pair."""
    outputs = []
    for horizontal, vertical in ((False, False), (True, False), (False, True), (True, True)):
        sr = super_resolve(*stereo_flips(left, right, horizontal, vertical))
        outputs.append(stereo_flips(sr.left, sr.right, horizontal, vertical))
    for order in ENSEMBLE_COLOUR_ORDERS:
        inverse = [order.index(channel) for channel in range(3)]         # GBR -> RGB: (2, 0, 1)
        sr = super_resolve(left[:, list(order)], right[:, list(order)])
        outputs.append(Pair(sr.left[:, inverse], sr.right[:, inverse]))
    return Pair(*(torch.stack(views).mean(0) for views in zip(*outputs)))


# ---------------------------------------------------------------------------------------------------------------
# Training objective


class SCGLANetLoss(Objective):
    """The authors' objective: stage 1 L1 (train yml `pixel_opt: L1Loss`), mean over the 6-channel stack of both
    views = the mean of the two views' L1; stage 2 (README) fine-tunes with MSE at lr 1e-5
    (`--loss_weight l1=0 mse=1 --lr 1e-5`). Returns {'l1', 'mse', 'total'}."""

    DEFAULT_WEIGHTS = {'l1': 1.0, 'mse': 0.0}

    def forward(self, out: StereoSROutput, lr_left: Tensor, lr_right: Tensor, hr_left: Tensor,
                hr_right: Tensor) -> dict[str, Tensor]:
        terms = {'l1': (F.l1_loss(out.sr_left, hr_left) + F.l1_loss(out.sr_right, hr_right)) / 2,
                 'mse': (F.mse_loss(out.sr_left, hr_left) + F.mse_loss(out.sr_right, hr_right)) / 2}
        return self.weighted_total(terms)


# ---------------------------------------------------------------------------------------------------------------
# The zoo's entry: scglanet (x4)

OPTIONS = (
    TLC_OPTION,     # NAFSSR's family's: one help text for all of it
    DROP_PATH_OPTION,
    Option('scglanet_self_ensemble', dict(
        action=argparse.BooleanOptionalAction, default=True,
        help="SCGLANet: in evaluation, average the authors' 6-pass stereo self-ensemble (flips with view swap, BGR "
             "and GBR colour orders), as their test config does (6x the time)")),
    Option('scglanet_seed', dict(
        type=int, default=None,
        help='SCGLANet: seed of the generator the hash rotations are drawn from, anew at every forward (default: '
             'the global torch RNG, as the official code)')),
)


def build(scale_factor: int = 4, tlc: bool = True, drop_path: float | None = None,
          scglanet_self_ensemble: bool = True, scglanet_seed: int | None = None) -> SCGLANet:
    generator = None if scglanet_seed is None else torch.Generator().manual_seed(scglanet_seed)
    config = SCGLANetConfig(scale_factor=scale_factor, tlc=tlc, self_ensemble=scglanet_self_ensemble,
                            drop_path=DROP_PATH if drop_path is None else drop_path)
    return SCGLANet(config, generator)


register_model(ModelEntry(
    name='scglanet',
    build=build,
    criterion=SCGLANetLoss,
    # Stage 1 of Track 1. Batch 3 per GPU on 8 GPUs (README); HR crops 100x300 (LR 25x75); hflip with view swap,
    # vflip, flip_RGB (the colour permutation); drop path 0.1; gradient-norm clip 0.01 (stereo_sr_model.py:119-121).
    recipe=Recipe(source='official options/train/StereoSR/train_SCGLANet_L_x4_Track1.yml (stage 1; README: 8 GPUs)',
                  batch_size=24, optimizer='adamw', lr=5e-4, betas=(0.9, 0.9), weight_decay=0.0,
                  schedule='cosine', eta_min=1e-7, total_iters=400_000, grad_clip=0.01, channel_shuffle=True),
    scales=(4,),
    options=OPTIONS,
    description='SCGLANet: NAFSSR-L body with temperature cross-attention + 4 LSH stereo global attention modules',
    paper='Zhou et al., Stereo Cross Global Learnable Attention Module for Stereo Image Super-Resolution, CVPRW 2023',
    title='SCGLANet',
))

__all__ = ['SCGLA', 'SCGLANet', 'SCGLANetConfig', 'SCGLANetLoss', 'SCATM', 'hash_bucket_count', 'random_rotations',
           'self_ensemble']
