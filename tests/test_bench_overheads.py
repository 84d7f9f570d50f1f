"""The bench's overhead figures on small real runs: what the performance docs quote is
there, the per-trial overhead is what a trial costs beyond its training, and the report is
timed beside ``mlflow.search_runs`` on the same store. (The tracking and bf16 sections train
for minutes and are not run here; no timing is asserted.)"""

from __future__ import annotations

import pytest

from latentseg.bench.overheads import (
    Timeline,
    bench_report,
    bench_study,
    format_bf16_accuracy,
    format_report,
    format_study,
    format_tracking,
    small_run_config,
    tracking_run_config,
)
from latentseg.cli import main
from latentseg.config import ExperimentConfig
from latentseg.errors import ConfigError
from latentseg.postgres import scratch_database


def test_a_trials_overhead_runs_from_its_start_to_the_next_trials_start_less_its_training():
    timeline = Timeline(
        starts=[100.0, 100.5, 101.25, 103.0], ends=[100.4, 101.0, 102.0, 103.5],
        training=[0.25, 0.5, 1.0, 9.0],
    )  # fmt: skip
    # cycles 0.5, 0.75, 1.75; the last trial has no next start and is not counted
    assert timeline.overheads() == [0.25, 0.25, 0.75]


def test_the_tracking_bench_times_a_larger_run_than_the_study_trials_on_the_benchs_device():
    for device in ("cpu", "cuda"):
        small = ExperimentConfig.model_validate(small_run_config(2, False, device))
        tracked = ExperimentConfig.model_validate(tracking_run_config(2, True, device))
        assert small.train.device == tracked.train.device == device  # never "auto"
        assert (small.train.epochs, small.tracking.enabled, tracked.tracking.enabled) == (
            2,
            False,
            True,
        )
        # the README's run (64 px) on half its training images; the study's trial at 48 px
        assert tracked.data.train_size == 2 * small.data.train_size == 2048
        assert (tracked.data.params["image_size"], small.data.params["image_size"]) == (64, 48)


def test_the_tracking_and_bf16_lines_name_each_figure_with_its_unit():
    tracking = {
        "tracked_s": 12.34, "untracked_s": 12.0, "overhead": 0.0283, "tracking_s": 0.25,
        "tracking_share": 0.0208,
    }  # fmt: skip
    assert format_tracking(tracking) == (
        "tracking: 12.3 s tracked vs 12.0 s untracked (+2.8%); time spent tracking 0.25 s (2.1%)"
    )
    bf16 = {
        "epochs": 4, "bf16_val_miou": 0.8012, "float32_val_miou": 0.8049,
        "miou_difference": -0.0037, "bf16_s": 41.2, "float32_s": 38.6,
    }  # fmt: skip
    assert format_bf16_accuracy(bf16) == (
        "bf16 accuracy: val mIoU 0.8012 vs float32 0.8049 (-0.0037) after 4 epochs; 41 s vs 39 s"
    )


@pytest.mark.slow
def test_the_study_bench_measures_each_size_on_the_journal_and_on_postgresql(postgres_server):
    before = postgres_databases(postgres_server)
    seen: list[dict] = []
    rows = bench_study((3,), postgres=postgres_server, log=seen.append)
    assert seen == rows and [(r["storage"], r["trials"]) for r in rows] == [
        ("journal", 3),
        ("postgresql", 3),
    ]
    for row in rows:
        # the figures docs/performance.md quotes, and the ones they are made of
        assert row["training_median_s"] > 0 and row["overhead_median_s"] > 0
        assert row["overhead_median_s"] * 2 < row["study_wall_s"]
        assert row["launch_s"] > 0
        assert format_study(row).startswith(f"study on {row['storage']}, 3 queued trials: ")
    assert postgres_databases(postgres_server) == before


def postgres_databases(server: str) -> set[str]:
    """The bench's scratch databases on the server (none is left behind)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(server, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        names = connection.execute(sqlalchemy.text("SELECT datname FROM pg_database")).scalars()
        left = {n for n in names if n.startswith("latentseg_bench_")}
    engine.dispose()
    return left


def test_a_scratch_database_is_created_and_dropped(postgres_server):
    before = postgres_databases(postgres_server)
    with scratch_database(postgres_server) as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith("latentseg_bench_") and name in postgres_databases(postgres_server)
    assert postgres_databases(postgres_server) == before


@pytest.mark.parametrize(
    "server,reason",
    [
        ("postgresql://postgres@127.0.0.1:1/postgres", "cannot create a scratch database there"),
        ("mysql://root@127.0.0.1/test", "expected postgresql://USER@HOST:PORT/DATABASE"),
    ],
)
def test_a_bad_postgres_server_is_one_line_and_exit_2_before_anything_runs(server, reason, capsys):
    assert main(["bench", "--only", "study", "--postgres", server]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --postgres ") and reason in line


def test_an_unreachable_server_is_a_config_error_naming_it():
    server = "postgresql://postgres@127.0.0.1:1/postgres"
    with pytest.raises(ConfigError, match="127.0.0.1:1"), scratch_database(server):
        pass


def test_the_report_is_timed_beside_search_runs_on_the_same_runs():
    figures = bench_report(40, windows=2)
    assert figures["runs"] == 40 and len(figures["windows"]["report"]) == 2
    assert len(figures["windows"]["search_runs"]) == 2
    assert figures["report_to_search_runs"] == pytest.approx(
        figures["report_s"] / figures["search_runs_s"]
    )
    assert 0 < figures["collect_s"] < figures["report_s"]
    assert "mlflow.search_runs alone" in format_report(figures)
