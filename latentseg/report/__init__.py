"""Ablation reports: runs from MLflow, verdicts with the family-wise error controlled, and
the documents (``report.md``, ``report.html``, ``summary.csv``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ablation_report(
    study: str | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    metric: str | None = None,
    baseline: dict[str, Any] | None = None,
    sesoi: float | None = None,
    alpha: float | None = None,
    correction: str | None = None,
    output: str | Path | None = None,
    figures: bool = True,
    front: list[str] | None = None,
):
    """The report on a ``study``'s seed runs or an MLflow ``experiment``'s training runs.

    ``metric`` is compared on the test split at each run's best-validation checkpoint; by
    default the study's primary metric (``report: {metric: ...}`` in its spec), else
    ``miou``. Another metric is reported as secondary.
    ``sesoi`` (smallest effect of interest), ``alpha`` and ``correction`` (holm,
    bonferroni, bh) default to the study spec's ``report:`` section, then to 0.01 (for
    metrics in [0, 1]), 0.05 and holm. With ``output`` the documents are written there;
    ``figures=False`` skips the plots (the numbers only). ``front`` names the Pareto front's
    objectives (costs such as ``model_flops_per_image``, or metrics); by default a study's
    ``objectives:``, else the metric against ``model_params``.
    Returns a :class:`latentseg.report.render.Report`: ``summary`` (one row per variant, with
    ``verdict``, ``diff``, ``diff_ci_low/high``, ``p_adjusted``, ``n_pairs``, ``mde``),
    ``effects``, ``interactions``, ``family``, ``front`` (one row per point, with its
    ``membership``: on the front, dominated or inconclusive) and ``markdown``.
    """
    from latentseg.report.collect import collect
    from latentseg.report.decision import Decision, decision_for, run_metric
    from latentseg.report.front import front_metric
    from latentseg.report.render import build
    from latentseg.report.verdicts import ALPHA
    from latentseg.report.writers import write
    from latentseg.tracking.store import TrackingStore, resolve_tracking_uri

    # bad options fail before any store is opened
    Decision(sesoi, ALPHA if alpha is None else alpha, correction or "holm")
    if metric is not None:
        run_metric(metric)
    for name in front or ():
        front_metric(name)
    store = TrackingStore.open(resolve_tracking_uri(tracking_uri), create=False)
    collected = collect(store, experiment=experiment, study=study)
    parent = store.parent_run(study, collected.experiment_ids) if study else None
    decision = decision_for(
        {"sesoi": sesoi, "alpha": alpha, "correction": correction, "front": front},
        parent.data.params if parent else {},
    )
    report = build(
        collected, study or experiment, metric or decision.primary, baseline, store=store,
        decision=decision, figures=figures,
    )  # fmt: skip
    report.parent_run_id = parent.info.run_id if parent else None
    report.tracking_uri = store.uri
    if output is not None:
        report.paths = write(report, output)
    return report
