"""latentseg.tracking.model_export: MLflow's model logging takes no client, so the export
points the process-wide tracking URI at the run's store for the call and puts back what the
process had (the export itself: tests/tracking/test_tracking.py, slow)."""

import mlflow

from latentseg.tracking.model_export import _process_tracking_uri


def test_the_export_points_mlflow_at_the_runs_store_and_puts_back_the_processs_uri(tmp_path):
    mine, runs = f"sqlite:///{tmp_path / 'mine.db'}", f"sqlite:///{tmp_path / 'runs.db'}"
    mlflow.set_tracking_uri(mine)
    try:
        with _process_tracking_uri(runs):
            assert mlflow.get_tracking_uri() == runs
        assert mlflow.get_tracking_uri() == mine
    finally:
        mlflow.set_tracking_uri(None)
    assert not mlflow.is_tracking_uri_set()
    with _process_tracking_uri(runs):
        assert mlflow.get_tracking_uri() == runs
    assert not mlflow.is_tracking_uri_set()  # a process that had none is left with none
