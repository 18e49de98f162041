"""bench.py: the summary of the per-round processes (medians, per-round ratios, failed rounds kept visible), the case
selection, and the roofline and --count-only plumbing at tiny sizes."""
from __future__ import annotations

import importlib.util
import json
import re
import math

import pytest
import torch

import bench
from models import build_model
from utils import UsageError


def test_summary_pairs_rounds_and_reports_failed_ones():
    official = [{'seconds': 20.0, 'peak_gb': 7.0}, {'seconds': 16.0, 'peak_gb': 6.9}, {'seconds': 18.0, 'peak_gb': 7.1}]
    ours = [{'seconds': 10.0, 'peak_gb': 4.0}, {'error': 'out of memory'}, {'seconds': 12.0, 'peak_gb': 4.5}]
    result = bench.summarise(ours, official)
    assert result['seconds'] == 11.0 and result['peak_gb'] == 4.5
    assert result['ratios'] == [2.0, 1.5]            # round 2 failed: its official time is not paired with another
    assert result['speedup'] == 1.75
    assert result['failed_rounds'] == ['out of memory']
    assert 'failed_rounds' not in bench.summarise(official, official)


def test_sizes_filter_the_default_cases_and_add_new_ones():
    cases = bench.select_cases(bench.parse_args(['--sizes', '94x311', '--scales', '4']))
    assert cases == [('infer', 4, 1, 94, 311)]
    cases = bench.select_cases(bench.parse_args(['--sizes', '30x90,64x64', '--scales', '4', '--batches', '2']))
    assert cases == [('infer', 4, 1, 30, 90), ('train', 4, 2, 30, 90), ('infer', 4, 1, 64, 64),
                     ('train', 4, 2, 64, 64)]
    cases = bench.select_cases(bench.parse_args(['--sizes', '40x40', '--cases', 'infer']))
    assert cases == [('infer', 4, 1, 40, 40), ('infer', 2, 1, 40, 40)]


def test_model_scales_limit_the_cases():
    args = bench.parse_args(['--model', 'scglanet', '--sizes', '94x311', '--cases', 'infer'])
    assert bench.select_cases(args, (4,)) == [('infer', 4, 1, 94, 311)]
    args = bench.parse_args(['--model', 'scglanet', '--scales', '2', '--cases', 'infer'])
    with pytest.raises(UsageError, match='x4 only'):
        bench.select_cases(args, (4,))


def test_calibration_measures_every_configuration_at_a_tiny_size():
    result = bench.calibrate('cpu', 6, 8, seconds=0.0)
    assert result['threads'] == torch.get_num_threads() and result['size'] == [6, 8]
    dtypes = ['float32'] + (['bfloat16'] if bench.has_bf16('cpu') else [])
    for name in ('conv_nchw', 'conv_channels_last', 'gemm'):
        for dtype in dtypes:
            assert math.isfinite(result[f'{name}_{dtype}']) and result[f'{name}_{dtype}'] > 0
    assert result['conv_peak_float32'] == max(result['conv_nchw_float32'], result['conv_channels_last_float32'])


def test_roofline_rows_divide_their_own_count_by_the_calibrated_peak():
    rows = [{'kind': 'infer', 'scale': 4, 'batch': 1, 'h': 8, 'w': 8, 'variant': 'ours', 'seconds': 2.0, 'gflop': 10},
            {'kind': 'infer', 'scale': 4, 'batch': 1, 'h': 8, 'w': 8, 'variant': 'ours_lowmem', 'seconds': 4.0},
            {'kind': 'infer', 'scale': 4, 'batch': 1, 'h': 8, 'w': 8, 'variant': 'official', 'error': 'timeout'}]
    bench.add_roofline(rows, {('infer', 4, 1, 8, 8): 10}, conv_peak=20.0)
    assert rows[0]['gflop_per_s'] == 5.0 and rows[0]['conv_peak_fraction'] == 0.25
    assert rows[1]['gflop_per_s'] == 2.5 and rows[1]['conv_peak_fraction'] == 0.125   # the case's count
    assert 'gflop_per_s' not in rows[2]


def test_roofline_end_to_end_and_the_count_of_one_case(tmp_path):
    """The plumbing at a tiny size: a calibration process, a timed process, the JSON (numbers are not targets); then
    --count-only's measurement of the same case, in this process."""
    rows = bench.main(['--model', 'nafssr-t', '--cases', 'infer', '--sizes', '8x8', '--scales', '4', '--variants',
                       'ours', '--roofline', '--calibration-size', '6x8', '--calibration-seconds', '0',
                       '--repeats', '1', '--min-seconds', '0', '--json', str(tmp_path / 'b.json')])
    data = json.loads((tmp_path / 'b.json').read_text())
    assert data['calibration']['size'] == [6, 8] and data['calibration']['conv_peak_float32'] > 0
    assert 0 < rows[0]['cpu_seconds'] and data['rows'][0]['cpu_seconds'] == rows[0]['cpu_seconds']
    assert len(rows) == 1 and data['rows'][0]['conv_peak_fraction'] == pytest.approx(
        rows[0]['gflop'] / rows[0]['seconds'] / data['calibration']['conv_peak_float32'])
    if importlib.util.find_spec('matplotlib'):                  # make_figs' bench chart draws the roofline panel
        import make_figs
        make_figs.bench_figure(tmp_path / 'b.json', tmp_path / 'bench.png')
        assert (tmp_path / 'bench.png').stat().st_size > 0
    counted = bench.run_case(dict(model='nafssr-t', kind='infer', scale=4, batch=1, h=8, w=8, device='cpu',
                                  variant='ours', count_only=True))
    expected = sum(p.numel() for p in build_model('nafssr-t', 4).parameters()) / 1e6
    assert counted['params_m'] == pytest.approx(expected) and counted['gflop'] == pytest.approx(rows[0]['gflop'])
    assert counted['params_m'] == pytest.approx(rows[0]['params_m']) and 'seconds' not in counted


@pytest.mark.parametrize('grad', [False, True])
def test_flop_count_includes_cpu_attention(grad):
    """F.scaled_dot_product_attention on the CPU counts as its two matrix products (torch's counter alone says 0)."""
    q = torch.rand(3, 2, 64, 8, requires_grad=grad)
    reference = 2 * (2 * 3 * 2 * 64 * 64 * 8)                     # q k^T and (scores) v, 2 FLOP per multiply-add

    def step():
        with torch.inference_mode(not grad):
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        if grad:
            out.sum().backward()
    assert bench.count_flops(step) * 1e9 == (reference * 3.5 if grad else reference)


def test_fake_tensor_count_equals_the_real_count_and_network_options_reach_the_model():
    """Large cases count their FLOP on fake tensors (nothing computed); the count is the real run's. The networks'
    own flags (here --no-tlc) are passed to the model bench.py builds."""
    spec = dict(model='nafssr-t', kind='infer', scale=4, batch=1, h=8, w=12, device='cpu',
                options=bench.option_values(bench.model_entry('nafssr-t'), vars(bench.parse_args(['--no-tlc']))))
    step = bench.build_step(spec, 'ours')
    assert step.model.config.tlc is False and bench.build_step({**spec, 'options': {}}, 'ours').model.config.tlc
    assert bench.count_flops(step, fake=True) == bench.count_flops(step) > 0


def test_onnxruntime_variant_at_a_tiny_size(tmp_path):
    """--variants onnxruntime: ours exported in this process, each variant timed in its own processes in turns, rows
    of the same shape as ours' plus the ratio to ours per round and the largest difference from ours' outputs."""
    for package in ('onnx', 'onnxscript', 'onnxruntime'):
        pytest.importorskip(package, reason=f'{package} not installed (requirements-onnx.txt)')
    bench.main(['--model', 'nafssr-t', '--cases', 'infer', '--sizes', '8x8', '--scales', '4', '--variants',
                'ours,onnxruntime', '--rounds', '2', '--repeats', '1', '--min-seconds', '0', '--no-flops',
                '--json', str(tmp_path / 'b.json')])
    ours, graph = json.loads((tmp_path / 'b.json').read_text())['rows']
    assert (ours['variant'], graph['variant']) == ('ours', 'onnxruntime')
    assert set(ours) <= set(graph) and graph['params_m'] == pytest.approx(ours['params_m'])
    assert len(graph['all_seconds']) == len(ours['all_seconds']) == 2          # two rounds, in turns
    assert graph['ratios_vs_ours'] == pytest.approx([o / r for o, r in zip(ours['all_seconds'], graph['all_seconds'])])
    assert set(graph['max_abs_difference']) == {'sr_left', 'sr_right'}
    assert max(graph['max_abs_difference'].values()) < 1e-4


def test_onnxruntime_variant_is_skipped_without_the_packages(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'onnxruntime' else real(name, *a))
    rows = bench.main(['--model', 'nafssr-t', '--cases', 'infer', '--sizes', '8x8', '--scales', '4', '--variants',
                       'ours,onnxruntime', '--repeats', '1', '--min-seconds', '0', '--no-flops'])
    assert [r['variant'] for r in rows] == ['ours']
    assert re.search(r'# onnxruntime variant skipped: (\w+, )*onnxruntime(, \w+)* not installed', capsys.readouterr().out)
