"""The costs around training, measured on the library's own pipelines, one module a section
of ``latentseg bench``: reading and generating data against a training step
(:mod:`.data`), tracking a run (:mod:`.tracking`), a study's per-trial overhead
(:mod:`.study`), a report over many runs (:mod:`.report`), and what bf16 costs in accuracy
(:mod:`.bf16`); :mod:`.runs` holds the training runs they time.

Every benchmark that writes a store, a journal or checkpoints does so in a temporary folder
with every path given explicitly, so the working directory is never changed and nothing
lands in the user's ``mlruns/``. Each trains on the bench's ``device`` (``cpu``, the
default, or ``cuda``), never on whatever ``train.device: auto`` would find. The library's
pipelines are imported where they run, so importing the bench (as the stock reference
process does) stays light.
"""

from latentseg.bench.overheads.bf16 import bench_bf16_accuracy, format_bf16_accuracy
from latentseg.bench.overheads.data import bench_data, format_data
from latentseg.bench.overheads.report import REPORT_SIZES, bench_report, format_report
from latentseg.bench.overheads.runs import scratch, small_run_config, tracking_run_config
from latentseg.bench.overheads.study import (
    STUDY_SIZES,
    Timeline,
    bench_study,
    format_study,
    study_overhead,
    study_timeline,
    write_study,
)
from latentseg.bench.overheads.tracking import bench_tracking, format_tracking
from latentseg.postgres import scratch_database  # callers not yet moved import it from here

__all__ = [
    "REPORT_SIZES",
    "STUDY_SIZES",
    "Timeline",
    "bench_bf16_accuracy",
    "bench_data",
    "bench_report",
    "bench_study",
    "bench_tracking",
    "format_bf16_accuracy",
    "format_data",
    "format_report",
    "format_study",
    "format_tracking",
    "scratch",
    "scratch_database",
    "small_run_config",
    "study_overhead",
    "study_timeline",
    "tracking_run_config",
    "write_study",
]
