"""The bench's overhead figures on small real runs: what the performance docs quote is
there, and the per-trial overhead is what a trial costs beyond its training. (The tracking
and bf16 sections train for minutes and are not run here; their timings are never
asserted.)"""

from __future__ import annotations

import pytest

from latentseg.bench.overheads import bench_study


@pytest.mark.slow
def test_the_study_bench_subtracts_each_trials_training_from_its_time():
    figures = bench_study(trials=2)
    assert figures["trials"] == 2
    # the figures docs/performance.md quotes, and the ones they are made of
    assert 0 < figures["training_median_s"] < figures["trial_median_s"]
    assert 0 < figures["overhead_median_s"] < figures["trial_median_s"]
    assert figures["trial_median_s"] * 2 <= figures["study_wall_s"]
    assert figures["launch_overhead_s"] > 0
