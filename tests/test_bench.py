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
