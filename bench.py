"""Speed and memory of any network of the zoo: inference and training steps, ours and (optionally) the official
implementation.

    python bench.py                                   # CPU, SSRDE-FNet: the default cases, a markdown table
    python bench.py --model nafssr-s --cases infer --sizes 94x311 --scales 4
    python bench.py --device cuda --json bench.json   # GPU, with mixed precision / torch.compile variants
    SSRDEF_OFFICIAL_DIR=/path/to/SSRDEFNet-PyTorch python bench.py   # adds the official code, same weights/inputs
    ISRRESCNET_OFFICIAL_DIR=/path/to/ISRResCNet python bench.py --model isrrescnet --cases infer --sizes 94x311 \\
        --scales 4 --rounds 1 --no-flops                 # minutes per run on a CPU: once each, ours_lowmem included
    NAFNET_OFFICIAL_DIR=/path/to/NAFNet python bench.py --model nafssr-s           # (IPASSR_OFFICIAL_DIR: iPASSR)
    python bench.py --glibc-heap                      # CPU: every variant without fresh page faults (see GLIBC_HEAP)
    python bench.py --model cvhssr-t --cases infer --sizes 180x320 --scales 4 --count-only   # params, GFLOP only
    python bench.py --model cvhssr-t --cases infer --sizes 94x311 --scales 4 --roofline      # + % of measured peak
    python bench.py --model nafssr-s --cases infer --sizes 94x311 --scales 4 --precision bf16  # bf16 / fp32 ratio
    python bench.py --model scglanet --no-scglanet_self_ensemble --cases infer --sizes 94x311   # a network's options
    python bench.py --model cvhssr-t --cases infer --sizes 94x311 --scales 4 --variants ours,onnxruntime  # + ONNX

Every measurement runs in a fresh subprocess, so peak memory is that of the case alone: peak RSS on CPU (the process,
Python and torch included), torch.cuda.max_memory_allocated on CUDA. Time = median of --repeats runs after one warm-up
(wall clock; the JSON also has each variant's CPU seconds, `cpu_seconds`, what a shared CPU measures best),
more runs while they add up to less than --min-seconds; a warm-up of 30 s or more is itself the one timed run. With the
official code, each case runs --rounds rounds of one process per variant, the official first; speed-up = median over
the rounds of official time / variant time, so that a machine whose speed drifts, as shared machines do, cannot bias
it. (Never both in one process: on CPU whichever runs
second inherits the heap the other grew and page-faults less, which made our training step look 15 % faster than it is.)
GFLOP = convolutions and matrix products counted by torch.utils.flop_counter (grid_sample and element-wise work are not
counted), so GFLOP/s is a lower bound of the work done; cases above FAKE_COUNT_PIXELS are counted on fake tensors
(the same count, nothing computed: see count_flops). --roofline first calibrates the machine in its own process
(`calibrate`: the best GFLOP/s of a dense 3x3 convolution 64->64 at the calibration size, NCHW and channels-last, and
of its im2col GEMM, float32 and, where the hardware has it, bfloat16, at the thread count of the cases) and gives each
row its fraction of the float32 convolution peak. --precision bf16 adds the ours_amp variant (bfloat16 autocast, the
scripts' --precision bf16: models/precision.py) and runs it in turns with ours, --rounds processes each; its speed-up
over float32 is the median over the rounds of ours time / ours_amp time. A network scale the zoo does not build
(SCGLANet: x4 only) is left out of --scales.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models import MODEL_NAMES, build_model, model_entry
from models.precision import PRECISIONS, autocast, has_bf16, precision_error
from models.registry import REGISTRY, modality_error, option_values
from utils import UsageError, check_output_file, non_negative_float, positive_int, run_script, write_json

ROOT = Path(__file__).resolve().parent
# Cases: (kind, scale, batch, LR height, LR width). KITTI: 375x1242 pairs -> LR 94x311 at x4 (x2 needs even sizes).
# Flickr1024-sized: HR 736x1024.
INFERENCE = [('infer', 4, 1, 30, 90), ('infer', 4, 1, 94, 311), ('infer', 4, 1, 184, 256),
             ('infer', 2, 1, 30, 90), ('infer', 2, 1, 94, 310), ('infer', 2, 1, 368, 512)]
TRAINING = [('train', 4, 2, 30, 90), ('train', 4, 12, 30, 90)]
# Cases above this many LR pixels run once per process (not --repeats times).
LARGE_CASE_PIXELS = 30 * 90 * 16
# Cases above this many LR pixels count their FLOP on fake tensors (count_flops): a cost that does not grow with the
# size (on the loaded CPU here 10 s for NAFSSR-T to 4 min for SCGLANet; a real SSRDE-FNet count at 30x30 took 15 s).
FAKE_COUNT_PIXELS = 30 * 90
# Most timed runs per process when --min-seconds asks for more than --repeats.
MAX_RUNS = 50
# A warm-up run that takes at least this long is the measurement (its one-time costs are small beside it), so that a
# case of minutes (ISRResCNet on a KITTI pair on a CPU) runs once, not 1 + --repeats times.
LONG_RUN_SECONDS = 30.0

# glibc malloc settings for --glibc-heap: blocks of any size come from the heap and freed memory stays there. By
# default glibc maps every block above 32 MB afresh and the kernel zero-fills each of its pages on first touch: on the
# 2-core CPU here that was over a quarter of the CPU time of a KITTI-sized evaluation (half of the official code's).
GLIBC_HEAP = {'MALLOC_MMAP_THRESHOLD_': str(1 << 32), 'MALLOC_TRIM_THRESHOLD_': str(1 << 36),
              'MALLOC_TOP_PAD_': str(1 << 30)}
# Peak dense throughput in TFLOP/s by (device name fragment, dtype), from the vendors' data sheets (SXM, no sparsity).
# --roofline calibration: the convolution every network here is mostly made of (64 channels, 3x3, stride 1),
# at KITTI's x4 LR size by default; each configuration runs until CALIBRATION_SECONDS have passed, best time kept.
CALIBRATION_CHANNELS = 64
CALIBRATION_SIZE = (94, 311)
CALIBRATION_SECONDS = 1.0
PEAK_TFLOPS = {('H100', 'float32'): 67, ('H100', 'tf32'): 495, ('H100', 'bfloat16'): 989,
               ('H200', 'float32'): 67, ('H200', 'tf32'): 495, ('H200', 'bfloat16'): 989}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='ssrdefnet', help='network of the zoo (models/__init__.py MODEL_NAMES)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cases', default='infer,train', help='comma-separated: infer, train')
    parser.add_argument('--sizes', default=None,
                        help='only these LR sizes, e.g. 30x90,94x311; a size of no default case is added (batch 1 '
                             'inference, the default training batches), e.g. 64x64 for the official SRNet, which '
                             'takes square images only')
    parser.add_argument('--scales', default='4,2', help='comma-separated scales')
    parser.add_argument('--batches', default=None, help='only these training batch sizes, e.g. 2')
    parser.add_argument('--variants', default=None,
                        help='comma-separated: ours (float32), ours_ckpt (training with --grad_checkpoint, networks '
                             'that have it), ours_lowmem (inference with the network\'s memory options, same '
                             'results: ModelEntry.memory_options, e.g. ISRResCNet --isrrescnet_band), ours_amp (bf16 '
                             'autocast, as --precision bf16; CUDA, or a CPU with bf16 arithmetic), ours_compile '
                             '(torch.compile, CUDA), official, onnxruntime (CPU inference: ours exported to ONNX '
                             'here, run by onnxruntime with the case\'s thread count; needs requirements-onnx.txt). '
                             'Default: everything that applies but onnxruntime')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32',
                        help='bf16: also time ours in bfloat16 autocast (the ours_amp variant, as the scripts\' '
                             '--precision bf16), in turns with ours, and report the speed-up over float32 (CUDA, or '
                             'a CPU with AVX-512 BF16 / AMX; refused elsewhere)')
    parser.add_argument('--repeats', type=positive_int, default=3, help='timed runs per process (median reported)')
    parser.add_argument('--min-seconds', type=non_negative_float, default=10.0,
                        help=f'more timed runs (at most {MAX_RUNS}) until they add up to this many seconds: short '
                             'cases get a median of many runs, which page faults and a drifting machine disturb less')
    parser.add_argument('--rounds', type=positive_int, default=3,
                        help='with the official code: processes per variant, run in turns (official first)')
    parser.add_argument('--timeout', type=positive_int, default=900,
                        help='seconds per case before it is reported as such')
    parser.add_argument('--glibc-heap', action='store_true',
                        help='CPU: run every variant (the official included) with glibc keeping freed memory in its '
                             'heap (%s), so large tensors do not page-fault afresh at every allocation'
                             % ' '.join(f'{k}={v}' for k, v in GLIBC_HEAP.items()))
    parser.add_argument('--flops', action=argparse.BooleanOptionalAction, default=True,
                        help='count GFLOP (one more untimed run of ours and official per case)')
    parser.add_argument('--json', type=Path, default=None, help='also write the results here')
    parser.add_argument('--count-only', action='store_true',
                        help='parameters and GFLOP (torch.utils.flop_counter) of each case, no timing: one process '
                             'per case and implementation, e.g. the zoo table\'s GFLOP at --sizes 180x320')
    parser.add_argument('--roofline', action='store_true',
                        help='calibrate the machine first (best GFLOP/s of a dense 3x3 convolution and a GEMM, '
                             'float32 and bf16 where available, at the cases\' thread count) and report each '
                             'row\'s GFLOP/s as a fraction of the float32 convolution peak')
    parser.add_argument('--calibration-size', type=lr_size, default=CALIBRATION_SIZE,
                        help='HxW of the calibration convolution (default: KITTI x4 LR, 94x311)')
    parser.add_argument('--calibration-seconds', type=non_negative_float, default=CALIBRATION_SECONDS,
                        help='seconds each calibration configuration is repeated for (best run kept)')
    parser.add_argument('--case', help=argparse.SUPPRESS)  # internal: run one case in this process
    # The networks' own options (models/<network>.py Option; as models.add_model_args adds them, whose --model and
    # --scale_factor bench.py replaces with its own --model and --scales), e.g. --no-scglanet_self_ensemble.
    group = parser.add_argument_group("the networks' own options (each applies to its network only)")
    for name, kwargs in {o.name: o.kwargs for entry in REGISTRY.values() for o in entry.options}.items():
        group.add_argument('--' + name, **kwargs)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# One case, in its own process

def official_module_of(name: str):
    """The official/<repository>.py module that runs the official code of zoo network `name` (None if there is none).
    Each such module names its networks (OFFICIAL_NAMES), its checkout variable (OFFICIAL_ENV) and gives
    `official_runner(name, scale, ours)`."""
    for path in sorted((ROOT / 'official').glob('*.py')):
        if path.stem in ('__init__', 'loading'):
            continue
        module = importlib.import_module(f'official.{path.stem}')
        if name in getattr(module, 'OFFICIAL_NAMES', ()):
            return module
    return None


def case_inputs(spec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's LR pair (batch, 3, h, w), the first two draws of build_step's generator."""
    g = torch.Generator().manual_seed(1)
    return tuple(torch.rand(spec['batch'], 3, spec['h'], spec['w'], generator=g) for _ in range(2))


def export_case(spec: dict, folder: Path) -> tuple[str, str]:
    """--variants onnxruntime: export ours (build_step's weights: seed 0) at the case's fixed size to an ONNX file in
    `folder`, in the calling process, so that the timed process only loads it; beside it ours' outputs on the case's
    inputs (.npz by output name), which the timed process compares its own with. Returns both paths."""
    from models.export import export_onnx, output_names
    torch.manual_seed(0)
    network = build_model(spec['model'], spec['scale']).eval()
    path = folder / f"{spec['model']}_x{spec['scale']}_{spec['batch']}x{spec['h']}x{spec['w']}.onnx"
    for chatty in ('onnxscript', 'onnx_ir'):      # their optimiser logs every rewrite at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    disparity = model_entry(spec['model']).estimates_disparity
    with contextlib.redirect_stdout(io.StringIO()):    # torch.onnx prints its progress
        export_onnx(network, path, *case_inputs(spec), disparity)
    with torch.inference_mode():
        out = network(*case_inputs(spec))
    np.savez(path.with_suffix('.npz'), **{n: getattr(out, n).numpy() for n in output_names(disparity)})
    return str(path), str(path.with_suffix('.npz'))


def onnxruntime_step(spec: dict):
    """A closure running the case's ONNX file (export_case) in onnxruntime on build_step's inputs, with as many
    intra-op threads as torch has in this process (OMP_NUM_THREADS)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False   # the arena more than doubled SSRDE-FNet's peak memory (docs/export.md)
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(spec['onnx'], options, providers=['CPUExecutionProvider'])
    feed = dict(zip(('lr_left', 'lr_right'), (v.numpy() for v in case_inputs(spec))))
    names = [o.name for o in session.get_outputs()]

    def step():
        step.outputs = dict(zip(names, session.run(names, feed)))
    return step


def build_step(spec: dict, variant: str):
    """A closure running one inference or training step of `variant` on the case's fixed weights and inputs; its
    `model` attribute is the network it runs."""
    kind, scale, batch, h, w = (spec[k] for k in ('kind', 'scale', 'batch', 'h', 'w'))
    device = torch.device(spec['device'])
    entry = model_entry(spec['model'])
    torch.manual_seed(0)
    options = {'ours_ckpt': {'grad_checkpoint': True}, 'ours_lowmem': entry.memory_options}.get(variant, {})
    ours = build_model(spec['model'], scale, **{**spec.get('options', {}), **options})
    runner = official_module_of(spec['model']).official_runner(spec['model'], scale, ours) \
        if variant == 'official' else None
    model = (runner.model if runner else ours).to(device)
    g = torch.Generator().manual_seed(1)
    left, right = (torch.rand(batch, 3, h, w, generator=g).to(device) for _ in range(2))
    hr = torch.rand(batch, 3, h * scale, w * scale, generator=g).to(device)
    amp = variant == 'ours_amp'
    forward = torch.compile(model) if variant == 'ours_compile' else model

    if kind == 'infer':
        model.eval()

        def step():
            with torch.inference_mode(), autocast(device, 'bf16' if amp else 'fp32'):
                return runner.infer(left, right) if runner else forward(left, right)
        step.model = model
        return step
    model.train()
    criterion = entry.criterion(scale)

    def step():
        model.zero_grad(set_to_none=True)
        if runner:
            loss = runner.train_loss(left, right, hr, hr)
        else:
            with autocast(device, 'bf16' if amp else 'fp32'):
                loss = criterion(forward(left, right), left, right, hr, hr)['total']
        loss.backward()
    step.model = model
    return step


def timed(step, device: torch.device, cpu_seconds: list | None = None) -> float:
    """Wall-clock seconds of step(); appends the process's CPU seconds (all its threads) to `cpu_seconds`."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    if cpu_seconds is not None:
        cpu_seconds.append(time.process_time() - cpu_start)
    return time.perf_counter() - start


def count_flops(step, fake: bool = False) -> float:
    """GFLOP of one call of step(), as torch.utils.flop_counter counts them (convolutions and matrix products).
    The counter has formulas for the CUDA attention kernels only: on the CPU, F.scaled_dot_product_attention (one
    op in inference, the flash-for-CPU kernel under autograd) counted 0 FLOP, so EHFSSR's windows went uncounted.
    Those ops get the counter's own sdpa formulas here.

    fake: count on fake tensors (FakeTensorMode: every op gives its output's shape and nothing is computed), so a
    count takes the same time at any size (seconds to minutes of overhead), where running SCGLANet's evaluation on a
    320x180 pair (six passes of a 25M network) took hours on a CPU; the counts are those of the real run (the
    counter sees the same ops and shapes).
    The stereo input check of real values (models/outputs.py validate_pair) is skipped, as it is in an export.
    A step that needs values (the official SCGLANet self-ensemble goes through NumPy) is counted for real."""
    from unittest import mock
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils import flop_counter
    aten = torch.ops.aten

    def forward(query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    def count() -> float:
        counter = flop_counter.FlopCounterMode(display=False, custom_mapping={
            aten.scaled_dot_product_attention: forward, aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})
        with counter:
            step()
        return counter.get_total_flops() / 1e9
    if fake:
        try:
            with FakeTensorMode(allow_non_fake_inputs=True), mock.patch.object(torch.compiler, 'is_exporting',
                                                                               return_value=True):
                return count()
        except Exception:   # noqa: BLE001 (an op that needs values; a genuine error recurs in the real run)
            pass
    return count()


def run_case(spec: dict) -> dict:
    """Time (median), peak memory, parameters and GFLOP of one variant, alone in this process (--count-only:
    parameters and GFLOP only); a 'calibrate' spec runs `calibrate` instead."""
    if spec['kind'] == 'calibrate':
        return calibrate(spec['device'], spec['h'], spec['w'], spec['seconds'])
    device = torch.device(spec['device'])
    if spec['variant'] == 'onnxruntime':
        step, params = onnxruntime_step(spec), spec['params_m']
    else:
        step = build_step(spec, spec['variant'])
        params = sum(p.numel() for p in step.model.parameters()) / 1e6
    fake = spec['h'] * spec['w'] > FAKE_COUNT_PIXELS
    if spec.get('count_only'):
        return {'params_m': params, 'gflop': count_flops(step, fake)}
    # CPU seconds beside the wall-clock ones: on a machine shared by more processes than cores, the wall clock
    # measures the scheduler too; at one thread the process's CPU time is the work it did (its cache misses included).
    cpu = []
    warm_up = timed(step, device, cpu)  # (and compilation)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    if warm_up < LONG_RUN_SECONDS:
        cpu = []
    times = [warm_up] if warm_up >= LONG_RUN_SECONDS else [timed(step, device, cpu) for _ in range(spec['repeats'])]
    while sum(times) < spec.get('min_seconds', 0) and len(times) < MAX_RUNS:   # short cases: a steadier median
        times.append(timed(step, device, cpu))
    result = {'seconds': statistics.median(times), 'all_seconds': times, 'params_m': params,
              'cpu_seconds': statistics.median(cpu)}
    if spec['variant'] == 'onnxruntime':     # against ours' outputs (export_case), float32 both
        with np.load(spec['reference']) as reference:
            result['max_abs_difference'] = {n: float(np.abs(v - reference[n]).max())
                                            for n, v in step.outputs.items()}
    if device.type == 'cuda':
        result['peak_gb'] = torch.cuda.max_memory_allocated() / 1e9
    else:
        result['peak_gb'] = peak_rss_gb()
    if spec['variant'] in ('ours', 'official') and spec.get('flops', True):
        result['gflop'] = count_flops(step, fake)
    return result


def peak_rss_gb() -> float:
    """Peak resident memory of this process since it started, GB: Linux's VmHWM. Not ru_maxrss, which a process
    started by subprocess inherits from its parent (Linux carries the parent's high-water mark over fork and exec):
    every case read at least the driver's own peak, which --variants onnxruntime raises by exporting there."""
    try:
        with open('/proc/self/status') as status:
            return next(int(line.split()[1]) for line in status if line.startswith('VmHWM:')) / 1e6   # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux, the parent's peak included


def calibrate(device: str, h: int, w: int, seconds: float) -> dict:
    """The roofline's ceilings, in GFLOP/s: the best of repeated runs (until `seconds` pass, at least 3) of
    a dense 3x3 convolution CALIBRATION_CHANNELS -> CALIBRATION_CHANNELS on a (1, C, h, w) map, NCHW and
    channels-last, and of the GEMM it lowers to (h*w x 9C) @ (9C x C); float32, and bfloat16 where `has_bf16`.
    FLOP = 2 x multiply-adds, as torch.utils.flop_counter counts them. {'conv_nchw_float32': ..., 'threads': n}"""
    dev = torch.device(device)
    c = CALIBRATION_CHANNELS
    g = torch.Generator().manual_seed(0)
    x, weight = torch.rand(1, c, h, w, generator=g), torch.rand(c, c, 3, 3, generator=g) - 0.5
    a, b = torch.rand(h * w, 9 * c, generator=g), torch.rand(9 * c, c, generator=g)
    flop = 2 * c * c * 9 * h * w                           # the convolution and its GEMM do the same work
    result = {'threads': torch.get_num_threads(), 'size': [h, w], 'channels': c}
    for dtype in [torch.float32] + ([torch.bfloat16] if has_bf16(device) else []):
        ops = {'conv_nchw': (torch.nn.functional.conv2d, x, weight),
               'conv_channels_last': (torch.nn.functional.conv2d, x.to(memory_format=torch.channels_last),
                                      weight.to(memory_format=torch.channels_last)),
               'gemm': (torch.matmul, a, b)}
        for name, (op, first, second) in ops.items():
            first, second = first.to(dev, dtype), second.to(dev, dtype)
            kwargs = {'padding': 1} if op is not torch.matmul else {}
            with torch.inference_mode():
                times = [timed(lambda: op(first, second, **kwargs), dev)]      # warm-up, not kept
                times = []
                while len(times) < 3 or sum(times) < seconds:
                    times.append(timed(lambda: op(first, second, **kwargs), dev))
            result[f'{name}_{str(dtype).removeprefix("torch.")}'] = flop / min(times) / 1e9
    result['conv_peak_float32'] = max(result['conv_nchw_float32'], result['conv_channels_last_float32'])
    return result


# ----------------------------------------------------------------------------------------------------------------
# The driver

def measure(spec: dict, timeout: int, glibc_heap: bool = False) -> dict:
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', **(GLIBC_HEAP if glibc_heap else {})}
    try:
        proc = subprocess.run([sys.executable, __file__, '--case', json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {'error': f'timeout after {timeout} s'}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['']
        reason = 'out of memory' if proc.returncode in (-9, 137) or 'out of memory' in proc.stderr else tail[0]
        return {'error': reason[:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], official: list[dict] | None, float32: list[dict] | None = None) -> dict:
    """One variant's processes -> median time, largest peak memory, the per-round ratios official / variant and, for
    ours_amp when `float32` (ours' processes of the same rounds) is given, ours / ours_amp ('bf16_speedup')."""
    ok = [r for r in runs if 'error' not in r]
    if not ok:
        return {'error': runs[0]['error']}
    result = {'seconds': statistics.median(r['seconds'] for r in ok), 'peak_gb': max(r['peak_gb'] for r in ok),
              'all_seconds': [r['seconds'] for r in ok]}
    if len(ok) < len(runs):   # a round that failed is reported, not silently left out of the median
        result['failed_rounds'] = [r['error'] for r in runs if 'error' in r]
    for key in ('gflop', 'params_m', 'max_abs_difference'):
        if key in ok[0]:
            result[key] = ok[0][key]
    if all('cpu_seconds' in r for r in ok):
        result['cpu_seconds'] = statistics.median(r['cpu_seconds'] for r in ok)
    if official and runs is not official:
        ratios = [o['seconds'] / r['seconds'] for o, r in zip(official, runs) if 'error' not in o and 'error' not in r]
        if ratios:
            result.update(speedup=statistics.median(ratios), ratios=ratios)
    if float32 and runs is not float32:
        ratios = [f['seconds'] / r['seconds'] for f, r in zip(float32, runs) if 'error' not in f and 'error' not in r]
        if ratios:
            result.update(bf16_speedup=statistics.median(ratios), bf16_ratios=ratios)
    return result


def device_peak(device: str) -> tuple[str, float | None]:
    if device.startswith('cuda'):
        name = torch.cuda.get_device_name()
        peak = next((v for (frag, dtype), v in PEAK_TFLOPS.items() if frag in name and dtype == 'float32'), None)
        return name, peak
    return f'CPU, {torch.get_num_threads()} threads', None


def lr_size(text: str) -> tuple[int, int]:
    """'94x311' -> (94, 311); ValueError unless two positive integers."""
    h, w = (int(v) for v in text.split('x', 1))
    if h < 1 or w < 1:
        raise ValueError(text)
    return h, w


def comma_list(text: str, flag: str, kind, what: str) -> list:
    """'a,b,c' -> [kind(a), ...]; a UsageError naming the flag when an item is not `what`."""
    try:
        values = [kind(item.strip()) for item in text.split(',') if item.strip()]
    except ValueError:
        raise UsageError(f'{flag} {text!r}: each comma-separated item must be {what}') from None
    if not values:
        raise UsageError(f'{flag} {text!r} is empty')
    return values


def select_cases(args, model_scales: tuple[int, ...] | None = None) -> list[tuple[str, int, int, int, int]]:
    """The (kind, scale, batch, LR height, LR width) cases that --cases, --scales, --sizes and --batches ask for, at
    the scales of `model_scales` only (the network's ModelEntry.scales; None: any)."""
    kinds = comma_list(args.cases, '--cases', str, 'infer or train')
    if set(kinds) - {'infer', 'train'}:
        raise UsageError(f'--cases {args.cases!r}: each item is infer or train')
    cases = [c for kind in kinds for c in (INFERENCE if kind == 'infer' else TRAINING)]
    scales = set(comma_list(args.scales, '--scales', int, 'an integer scale, e.g. 4,2'))
    if model_scales is not None:
        if not scales & set(model_scales):
            raise UsageError(f'--scales {args.scales}: {args.model} is built at x'
                             + ', x'.join(str(v) for v in model_scales) + ' only')
        scales &= set(model_scales)
    cases = [c for c in cases if c[1] in scales]
    if args.sizes:
        sizes = comma_list(args.sizes, '--sizes', lr_size, 'an LR size HxW, e.g. 30x90,94x311')
        new = [size for size in dict.fromkeys(sizes) if size not in {(c[3], c[4]) for c in cases}]
        cases = [c for c in cases if (c[3], c[4]) in sizes] + [     # a new size: batch 1, and the training batches
            (kind, scale, batch, h, w) for h, w in new for kind in kinds for scale in sorted(scales, reverse=True)
            for batch in ((1,) if kind == 'infer' else sorted({c[2] for c in TRAINING}))]
    if args.batches:
        batches = set(comma_list(args.batches, '--batches', int, 'an integer batch size, e.g. 2'))
        cases = [c for c in cases if c[0] == 'infer' or c[2] in batches]
    if not cases:
        raise UsageError(f'no case matches --cases {args.cases} --scales {args.scales}'
                         + (f' --sizes {args.sizes}' if args.sizes else '')
                         + (f' --batches {args.batches}' if args.batches else '')
                         + '; cases: ' + ', '.join(f'{k} x{s} b{b} {h}x{w}' for k, s, b, h, w in INFERENCE + TRAINING))
    return cases


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.case:
        spec = json.loads(args.case)
        print(json.dumps(run_case(spec)))
        return []
    check_output_file(args.json, '--json')              # before the cases run
    if args.model not in MODEL_NAMES:
        raise UsageError(f'--model {args.model!r} is not in the zoo; choose one of {", ".join(MODEL_NAMES)}')
    if modality_error(model_entry(args.model), 'bench.py'):     # its cases are stereo pairs
        raise UsageError(modality_error(model_entry(args.model), 'bench.py'))
    official_code = official_module_of(args.model)
    official = bool(official_code and os.environ.get(official_code.OFFICIAL_ENV))
    cuda = args.device.startswith('cuda')
    recomputes = any(o.name == 'grad_checkpoint' for o in model_entry(args.model).options)
    low_memory = bool(model_entry(args.model).memory_options)
    variants = args.variants.split(',') if args.variants else \
        ['ours'] + (['ours_ckpt'] if recomputes else []) + (['ours_lowmem'] if low_memory else []) \
        + (['ours_amp', 'ours_compile'] if cuda else []) + (['official'] if official else [])
    if args.precision == 'bf16':
        variants = list(dict.fromkeys(['ours', 'ours_amp'] + variants))
    if 'ours_amp' in variants and precision_error('bf16', args.device):
        raise UsageError(precision_error('bf16', args.device) + ' (bench.py: the ours_amp variant)')
    unknown = set(variants) - {'ours', 'ours_ckpt', 'ours_lowmem', 'ours_amp', 'ours_compile', 'official',
                               'onnxruntime'}
    if unknown or ('ours_lowmem' in variants and not low_memory):
        raise UsageError(f'--variants {args.variants}: ' + (f'unknown {", ".join(sorted(unknown))}' if unknown else
                         f'{args.model} has no memory options (ModelEntry.memory_options) for ours_lowmem'))
    if 'official' in variants and not official:
        raise UsageError(f'the official variant of {args.model} needs '
                         + (f'{official_code.OFFICIAL_ENV} (a checkout of its authors\' code)' if official_code else
                            'an official/<repository>.py module for it'))
    if 'onnxruntime' in variants and cuda:
        raise UsageError('--variants onnxruntime runs on the CPU only (onnxruntime\'s CPU provider)')
    missing = [m for m in ('onnx', 'onnxruntime', 'onnxscript') if importlib.util.find_spec(m) is None]
    if 'onnxruntime' in variants and missing:
        print(f'# onnxruntime variant skipped: {", ".join(missing)} not installed (requirements-onnx.txt)')
        variants = [v for v in variants if v != 'onnxruntime']
    cases = select_cases(args, model_entry(args.model).scales)
    name, peak = device_peak(args.device)
    onnx_folder = tempfile.TemporaryDirectory(prefix='bench_onnx_') if 'onnxruntime' in variants else None
    print(f'# bench.py --model {args.model} on {name}, torch {torch.__version__}'
          + (f', fp32 peak {peak} TFLOP/s' if peak else '') +
          (', glibc heap kept (--glibc-heap)' if args.glibc_heap else ''))
    if args.count_only:
        return count_cases(args, cases, [v for v in variants if v in ('ours', 'official')])
    calibration = None
    if args.roofline:
        (ch, cw), seconds = args.calibration_size, args.calibration_seconds
        calibration = measure(dict(kind='calibrate', device=args.device, h=ch, w=cw, seconds=seconds), args.timeout,
                              args.glibc_heap)
        if 'error' in calibration:
            raise RuntimeError(f'--roofline calibration failed: {calibration["error"]}')
        print(f'# calibration ({calibration["threads"]} threads, 3x3 conv {CALIBRATION_CHANNELS}->'
              f'{CALIBRATION_CHANNELS} at {ch}x{cw}, its GEMM {ch * cw}x{9 * CALIBRATION_CHANNELS}x'
              f'{CALIBRATION_CHANNELS}), best GFLOP/s: '
              + ', '.join(f'{k} {v:.1f}' for k, v in calibration.items() if isinstance(v, float)))
    rows = []
    for kind, scale, batch, h, w in cases:
        case_variants = [v for v in variants if (v != 'ours_ckpt' or kind == 'train')     # recomputation: autograd
                         and (v not in ('ours_lowmem', 'onnxruntime') or kind == 'infer')]  # evaluation only
        base = dict(model=args.model, kind=kind, scale=scale, batch=batch, h=h, w=w, device=args.device,
                    repeats=args.repeats if h * w <= LARGE_CASE_PIXELS else 1, min_seconds=args.min_seconds,
                    flops=args.flops, options=option_values(model_entry(args.model), vars(args)))
        extra = {}
        if 'onnxruntime' in case_variants:     # exported here once, timed in the variant's processes
            with torch.device('meta'):
                extra['params_m'] = sum(p.numel() for p in build_model(args.model, scale).parameters()) / 1e6
            extra['onnx'], extra['reference'] = export_case(base, Path(onnx_folder.name))
        runs = {v: [] for v in case_variants}
        # ratios of processes run in turns: against the official code, onnxruntime against ours, bf16 against fp32
        in_turns = bool({'official', 'onnxruntime'} & set(case_variants)) or args.precision == 'bf16'
        for _ in range(args.rounds if in_turns else 1):
            for variant in sorted(case_variants, key=lambda v: v != 'official'):
                spec = {**base, 'variant': variant, **(extra if variant == 'onnxruntime' else {})}
                runs[variant].append(measure(spec, args.timeout, args.glibc_heap))
        for variant in case_variants:
            rows.append({**base, 'variant': variant, **summarise(runs[variant], runs.get('official'),
                                                                 runs.get('ours') if variant == 'ours_amp' else None)})
            result = rows[-1]
            if variant == 'onnxruntime' and 'ours' in runs:    # per round: ours' time / onnxruntime's
                ratios = [o['seconds'] / r['seconds'] for o, r in zip(runs['ours'], runs[variant])
                          if 'error' not in o and 'error' not in r]
                if ratios:
                    result.update(speedup_vs_ours=statistics.median(ratios), ratios_vs_ours=ratios)
            print(f'  {kind} x{scale} b{batch} {h}x{w} {variant}: ' +
                  (result['error'] if 'error' in result else
                   f"{result['seconds']:.3f} s ({result.get('cpu_seconds', 0):.3f} s CPU), "
                   f"{result['peak_gb']:.2f} GB" +
                   (f", {result['speedup']:.2f}x vs official ({len(result['ratios'])} rounds)"
                    if 'speedup' in result else '') +
                   (f", {result['bf16_speedup']:.2f}x vs ours in float32 ({len(result['bf16_ratios'])} rounds)"
                    if 'bf16_speedup' in result else '') +
                   (f", {result['speedup_vs_ours']:.2f}x vs ours ({len(result['ratios_vs_ours'])} rounds)"
                    if 'speedup_vs_ours' in result else '') +
                   (', max |onnxruntime - ours| ' + ', '.join(f'{n} {e:.1e}' for n, e in
                                                              result['max_abs_difference'].items())
                    if 'max_abs_difference' in result else '') +
                   ''.join(f'; a round failed: {e}' for e in result.get('failed_rounds', []))),
                  file=sys.stderr, flush=True)

    if onnx_folder is not None:
        onnx_folder.cleanup()

    # table, with the ratios official / ours measured in this run
    reference = {(r['kind'], r['scale'], r['batch'], r['h'], r['w']): r for r in rows
                 if r['variant'] == 'official' and 'error' not in r}
    gflops = {(r['kind'], r['scale'], r['batch'], r['h'], r['w']): r['gflop']   # ours' count, else the official's
              for r in sorted(rows, key=lambda r: r['variant'] == 'ours') if 'gflop' in r}
    if calibration:
        add_roofline(rows, gflops, calibration['conv_peak_float32'])
    bf16 = any('bf16_speedup' in r for r in rows)
    lines = ['', '| case | variant | time (s) | peak mem (GB) | GFLOP | GFLOP/s | speed-up vs official | '
             'memory vs official |' + (' % of conv peak |' if calibration else '') + (' bf16 / fp32 speed |' if bf16
                                                                                       else ''),
             '|---|---|---|---|---|---|---|---|' + ('---|' if calibration else '') + ('---|' if bf16 else '')]
    for r in rows:
        key = (r['kind'], r['scale'], r['batch'], r['h'], r['w'])
        case = f"{'inference' if r['kind'] == 'infer' else 'train step'} x{r['scale']} b{r['batch']} {r['h']}x{r['w']}"
        if 'error' in r:
            lines.append(f"| {case} | {r['variant']} | {r['error']} | | | | | |" + (' |' if calibration else '')
                         + (' |' if bf16 else ''))
            continue
        work = r.get('gflop', gflops.get(key))
        rate = f"{work / r['seconds']:.1f}" if work else ''
        ref = reference.get(key)
        speed = f"{r['speedup']:.2f}x" if 'speedup' in r else ''
        memory = f"{r['peak_gb'] / ref['peak_gb']:.2f}x" if ref and r['variant'] != 'official' else ''
        lines.append(f"| {case} | {r['variant']} | {r['seconds']:.3f} | {r['peak_gb']:.2f} | "
                     f"{work:.1f} | {rate} | {speed} | {memory} |" if work else
                     f"| {case} | {r['variant']} | {r['seconds']:.3f} | {r['peak_gb']:.2f} | | | {speed} | {memory} |")
        if calibration:
            lines[-1] += f" {100 * r['conv_peak_fraction']:.0f} % |" if 'conv_peak_fraction' in r else ' |'
        if bf16:
            lines[-1] += f" {r['bf16_speedup']:.2f}x |" if 'bf16_speedup' in r else ' |'
    print('\n'.join(lines))
    if args.json:
        write_json(args.json, {'model': args.model, 'device': name, 'torch': torch.__version__,
                               'calibration': calibration, 'rows': rows})
    return rows


def add_roofline(rows: list[dict], gflops: dict, conv_peak: float) -> None:
    """Give each timed row its achieved GFLOP/s (its own count, else its case's) and that as a fraction of the
    calibrated float32 convolution peak (GFLOP/s)."""
    for r in rows:
        work = r.get('gflop', gflops.get((r['kind'], r['scale'], r['batch'], r['h'], r['w'])))
        if 'error' not in r and work:
            r['gflop_per_s'] = work / r['seconds']
            r['conv_peak_fraction'] = r['gflop_per_s'] / conv_peak


def count_cases(args, cases: list, variants: list[str]) -> list[dict]:
    """--count-only: parameters (M) and GFLOP of every case and implementation, one process each, as a table."""
    rows = []
    for kind, scale, batch, h, w in cases:
        for variant in variants:
            spec = dict(model=args.model, kind=kind, scale=scale, batch=batch, h=h, w=w, device=args.device,
                        variant=variant, count_only=True, options=option_values(model_entry(args.model), vars(args)))
            rows.append({**spec, **measure(spec, args.timeout, args.glibc_heap)})
    lines = ['', '| case | variant | parameters (M) | GFLOP |', '|---|---|---|---|']
    for r in rows:
        case = f"{'inference' if r['kind'] == 'infer' else 'train step'} x{r['scale']} b{r['batch']} {r['h']}x{r['w']}"
        lines.append(f"| {case} | {r['variant']} | " + (f"{r['error']} | |" if 'error' in r else
                                                         f"{r['params_m']:.3f} | {r['gflop']:.1f} |"))
    print('\n'.join(lines))
    if args.json:
        write_json(args.json, {'model': args.model, 'device': device_peak(args.device)[0], 'torch': torch.__version__,
                               'rows': rows})
    return rows


if __name__ == '__main__':
    sys.exit(run_script(main))
