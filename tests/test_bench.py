"""bench.py's summary of the per-round processes: medians, per-round ratios, and failed rounds kept visible."""
from __future__ import annotations

import bench


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
