import re

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from latentseg.cli import main
from latentseg.report.variance import metric_of
from latentseg.report.verdicts import decide
from latentseg.study import run_study

pytestmark = pytest.mark.slow


def test_report_of_a_study_matches_its_seed_runs_and_is_logged_to_the_parent(
    study_spec, tracking_uri, tmp_path, capsys
):
    spec = {
        "name": "rep",
        "search_space": {"model.expert_attention": [True, False]},
        "sampler": {"name": "grid"},
        "seeds": 2,
    }
    result = run_study(
        str(study_spec(spec, base={"train": {"epochs": 2}, "tracking": {"attention_plots": True}})),
        tracking_uri=tracking_uri,
        progress=False,
    )
    assert (
        main(
            [
                "report",
                "--study",
                "rep",
                "--tracking-uri",
                tracking_uri,
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Left out: none" in out and "the tutorial's configuration" in out and "(seed)" not in out

    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("model.expert_attention")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("rep")
    seeds = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`latentseg.run_type` = 'seed'"
    )
    for flag in (True, False):
        values = sorted(
            r.data.metrics["test_miou"]  # validation picks the checkpoint, test scores it
            for r in seeds
            if r.data.params["model.expert_attention"] == str(flag)
        )
        assert summary.loc[flag, "n"] == 2
        assert summary.loc[flag, "mean"] == pytest.approx(sum(values) / 2)
    assert summary.loc[True, "is_baseline"] and summary.loc[True, "diff"] == 0
    assert summary.loc[True, "verdict"] == "baseline"
    assert summary.loc[False, "n_pairs"] == 2
    # the verdict is the rule's on this comparison's own numbers (a family of one: the main
    # effect of the only axis is the same test, held once)
    row = summary.loc[False]
    expected = decide([row["diff"]], [row["se"]], [row["df"]], sesoi=0.01, bounds=(-1, 1))
    assert row["verdict"] == expected.verdict[0]
    assert row["diff_ci_low"] == pytest.approx(expected.ci_low[0], nan_ok=True)
    assert list(summary.columns[:9]) == [
        "verdict", "direction", "relevant", "diff", "diff_ci_low", "diff_ci_high",
        "p_adjusted", "n_pairs", "mde",
    ]  # fmt: skip
    # the verdict printed at the end agrees with the file
    assert re.search(rf"\n  expert_attention False +{summary.loc[False, 'verdict']} ", out), out
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert markdown.startswith("# Ablation report: rep")
    assert markdown.index("## Verdicts") < markdown.index("## Details per variant")
    # two seeds of a short run may not differ at all: then nothing can be tested
    assert re.search(
        r"Decision rule: ([12] comparisons? forms? one family; Holm|no comparison could be tested)",
        markdown,
    )
    assert "| expert_attention False |" in markdown and "| True |" in markdown
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert logged == {
        "report/report.md",
        "report/summary.csv",
        "report/report.html",
        "report/effects.csv",
        "report/variance.csv",
        "report/pareto.csv",
        "report/pareto.png",
    }
    # every seed run logged its test images' confusion matrices, which give back its test
    # mIoU exactly: the report splits each comparison's noise from them
    for run in seeds:
        local = client.download_artifacts(
            run.info.run_id, "scores/test_per_image.npz", str(tmp_path)
        )
        confusion = np.load(local)["confusion"]
        assert confusion.shape[0] == 16  # the tiny config's test images
        assert metric_of(confusion.sum(0), "miou") == pytest.approx(
            run.data.metrics["test_miou"], abs=1e-12
        )
    noise = pd.read_csv(tmp_path / "out" / "variance.csv")
    assert list(noise["model.expert_attention"]) == [False]
    assert noise.loc[0, "n_pairs"] == 2 and noise.loc[0, "test_images"] == 16
    assert noise.loc[0, "sd_diff"] == pytest.approx(summary.loc[False, "sd_diff"], abs=1e-9)
    assert "## Where the noise comes from" in markdown
    # the Pareto front of test mIoU against parameters: without expert attention the model
    # has fewer parameters, so each point has one membership verdict, as printed
    front = pd.read_csv(tmp_path / "out" / "pareto.csv").set_index("model.expert_attention")
    assert front.loc[False, "model_params"] < front.loc[True, "model_params"]
    assert set(front["membership"]) <= {"on the front", "dominated", "inconclusive"}
    assert front.loc[True, "test_miou"] == pytest.approx(summary.loc[True, "mean"])
    # the cheaper point cannot be dominated by a larger one: it is on the front
    assert front.loc[False, "membership"] == "on the front"
    assert "Pareto front over test_miou (maximize), model_params (minimize)" in out
    assert "## Pareto front" in markdown and "| expert_attention False | on the front |" in markdown

    # Self-contained HTML: every image embedded, nothing fetched from anywhere, one row per variant.
    page = (tmp_path / "out" / "report.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # plain words: no Python reprs, no raw Markdown; the verdicts lead
    text = re.sub(r"<[^>]+>", "", page.split("<script>")[0])
    assert "{'" not in text and "**" not in text and "`" not in text
    assert page.index('id="verdicts"') < page.index('alt="forest"') < page.index('id="summary"')
    body = page.split('<table class="sortable" id="summary">', 1)[1].split("</table>", 1)[0]
    assert body.count("<tr") == 1 + 2  # header + two variants
    plots = {p.stem for p in (tmp_path / "out" / "plots").glob("*.png")}
    assert {
        "expert_attention",
        "learning_curves",
        "best_run_predictions",
        "accuracy_vs_cost",
        "forest",
        "pareto",
    } <= plots
    assert len(sources) == len(plots)  # every plot is in the page


def test_report_bad_input_exits_2(tracking_uri, capsys):
    from latentseg.tracking.store import connect

    connect(tracking_uri)  # a store that exists, without that experiment
    assert main(["report", "--experiment", "nope", "--tracking-uri", tracking_uri]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["report"])
    assert info.value.code == 2
    capsys.readouterr()
    for flags, message in (
        (["--sesoi", "-1"], "--sesoi -1.0: must be > 0"),
        (["--alpha", "1.5"], "--alpha 1.5: must be between 0 and 1"),
        (["--metric", "best_val_miou"], "validation picked that epoch, so it cannot also score it"),
        (["--front", "model_flops"], "--front model_flops: not a cost runs log"),
    ):
        assert main(["report", "--experiment", "nope", "--tracking-uri", tracking_uri, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main(["report", "--experiment", "x", "--correction", "fdr"])
    assert info.value.code == 2


def test_report_plots_the_router_load_of_moe_runs_and_reports_effects_per_dataset(
    tiny, tracking_uri
):
    from latentseg.report.collect import collect
    from latentseg.report.render import build
    from latentseg.tracking import run_experiment
    from latentseg.tracking.store import connect

    for dataset in ("shapes", "digits"):
        for experts in (0, 4):
            for seed in (1, 2):
                config = tiny(
                    {
                        "model": {"latent_depth": 1, "moe_experts": experts, "moe_top_k": 2},
                        "data": {"dataset": dataset},
                        "train": {"epochs": 1, "seed": seed},
                        "tracking": {"attention_plots": False},
                    }
                )
                run_experiment(config, tracking_uri=tracking_uri)
    client = connect(tracking_uri)
    runs = collect(client, experiment="tests").runs
    moe = runs[runs["params.model.moe_experts"] == "4"]
    loads = moe[[f"metrics.best_val_router_load_e{i}" for i in range(4)]]
    assert loads.notna().all().all() and (loads.sum(axis=1) - 1).abs().max() < 1e-9
    assert runs[runs["params.model.moe_experts"] == "0"]["metrics.best_val_miou"].notna().all()
    assert "metrics.best_val_router_entropy" in runs
    report = build(collect(client, experiment="tests"), "tests", client=None)
    assert "router_load" in report.figures
    assert sorted(report.axes) == ["data.dataset", "model.moe_experts"]
    findings = "\n".join(report.findings)
    assert "On shapes: model.moe_experts 4 instead of 0" in findings
    assert "On digits: model.moe_experts 4 instead of 0" in findings
    assert "data.dataset" not in findings  # a task, not an effect
    assert "Pareto front on digits" in findings and "Pareto front on shapes" in findings
    baseline_rows = report.summary[report.summary["is_baseline"].astype(bool)]
    assert sorted(baseline_rows["data.dataset"]) == ["digits", "shapes"]


@pytest.fixture
def twin_variant():
    """``residual-twin``: the ``residual`` model under a second name, initialised from the
    next random numbers of the same seed (the same model, trained with other randomness)
    when runs draw their weights from one stream (``train.init: global``; per-module
    streams would give the twins the same weights, and the same scores)."""
    import torch

    from latentseg.models import MODELS, create_model, register_model

    @register_model
    def residual_twin(**overrides):
        torch.rand(1)  # one draw: other initial weights, same distribution
        return create_model("residual", **overrides)

    yield "residual-twin"
    MODELS.unregister("residual-twin")


def test_an_a_a_study_gives_no_better_or_worse_verdict(
    study_spec, tracking_uri, twin_variant, capsys
):
    """The same model under two names, trained for real: whatever the noise between seeds,
    the report must not call one better or worse than the other. The study prints the same
    verdicts when it ends."""
    from latentseg.report.collect import collect
    from latentseg.report.render import build
    from latentseg.tracking.store import connect

    spec = {
        "name": "aa",
        "search_space": {"model.variant": ["residual", twin_variant]},
        "sampler": {"name": "grid"},
        "seeds": 4,
    }
    # a run long enough to learn (about 2 s each): seeds then differ for real
    base = {"train": {"epochs": 4, "init": "global"}, "data": {"train_size": 256}}
    path = study_spec(spec, base=base)
    assert main(["study", str(path), "--tracking-uri", tracking_uri, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = build(collect(connect(tracking_uri), study="aa"), "aa")
    compared = report.summary[report.summary["verdict"] != "baseline"]
    assert len(compared) == 1 and compared["n_pairs"].item() == 4
    assert compared["diff"].abs().item() > 0  # the twins did train differently
    verdicts = {*compared["verdict"], *report.effects["verdict"]}
    assert not verdicts & {"better", "worse"}, report.markdown
    assert "verdicts against the baseline (model.variant = " in printed
    assert "1 comparison forms one family; Holm" in printed  # its main effect is the same test
    assert re.search(rf"variant \S+ +{compared['verdict'].item()} ", printed), printed


def test_adaptive_seeds_go_only_to_open_comparisons_and_the_report_agrees(
    study_spec, tracking_uri, tmp_path, capsys
):
    """A real adaptive study judged by the real report: 1 or 4 epochs (1, with learning rate
    0.003, is the baseline) x learning rate 0.003 or 0.0031 (next to it). After each round,
    only the points whose comparison the look left open (and the baseline) get the next
    seed; a decided point gets none; and the study's closing verdicts are the report's."""
    import json

    from latentseg.report import ablation_report
    from latentseg.tracking.store import connect

    spec = {
        "name": "adaptive-epochs",
        "search_space": {"train.epochs": [1, 4], "optim.lr": [0.003, 0.0031]},
        "sampler": {"name": "grid"},
        "seeds": {"min": 3, "max": 6, "step": 1},
    }
    base = {"model": {"variant": "residual"}, "data": {"train_size": 256}}
    path = study_spec(spec, base=base)
    assert main(["study", str(path), "--tracking-uri", tracking_uri, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = ablation_report(study="adaptive-epochs", tracking_uri=tracking_uri, figures=False)
    client = connect(tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("adaptive-epochs").experiment_id],
        "tags.`latentseg.run_type` = 'seed'",
        max_results=1000,
    )
    folder = tmp_path / "rounds"
    client.download_artifacts(report.parent_run_id, "rounds", str(folder))
    looks = {
        int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (folder / "rounds").iterdir()
    }
    seeded: dict[int, set[str]] = {}
    for run in runs:
        point = f"{run.data.params['train.epochs']}|{run.data.params['optim.lr']}"
        seeded.setdefault(int(run.data.tags["latentseg.round"]), set()).add(point)
    assert sorted(looks) == sorted(seeded) and len(seeded) >= 2
    names = {"1|0.0031": "lr 0.0031", "4|0.003": "epochs 4", "4|0.0031": "lr 0.0031, epochs 4"}
    for k in sorted(seeded)[1:]:
        verdicts = {c["comparison"]: c["verdict"] for c in looks[k - 1]["comparisons"]}
        assert "1|0.003" in seeded[k]  # the baseline, for the open comparisons
        for point in seeded[k] - {"1|0.003"}:
            assert verdicts[names[point]] == "inconclusive", (k, point, verdicts)
        for point, name in names.items():
            if verdicts[name] in ("better", "worse", "equivalent"):
                assert point not in seeded[k], (k, point)
    # the study's closing verdicts are the report's
    compared = report.summary[report.summary["verdict"] != "baseline"]
    for _, row in compared.iterrows():
        name = names[f"{row['train.epochs']}|{row['optim.lr']}"]
        assert re.search(rf"  {re.escape(name)} +{row['verdict']} ", printed), (name, printed)
    assert "## Rounds of seeds" in report.markdown
    assert f"decided after each round of seeds ({len(seeded)} of 4 planned looks" in printed


def test_a_report_on_a_read_only_store_is_written_and_says_it_could_not_attach_itself(
    study_spec, tmp_path
):
    """The store's folder mounted read-only (a private mount namespace, so root is bound by
    it too): reading needs no lock file, the report is written elsewhere, and the command
    says in one line that it could not attach the report to the study's parent run."""
    import sys

    from tests.conftest import with_private_mounts

    store = tmp_path / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    spec = {
        "name": "ro",
        "search_space": {"model.num_latents": [2, 4]},
        "sampler": {"name": "grid"},
    }
    assert main(["study", str(study_spec(spec)), "--tracking-uri", uri, "--no-progress"]) == 0
    latentseg = f"{sys.executable} -m latentseg.cli"
    done = with_private_mounts(
        f"mount --bind {store} {store} && mount -o remount,ro,bind {store}",
        f"touch {store}/probe 2>/dev/null && exit 98; "
        f"{latentseg} report --study ro --tracking-uri {uri} -o {tmp_path / 'out'}",
        tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "out" / "report.md").is_file()
    note = [line for line in done.stdout.splitlines() if line.startswith("note: ")]
    assert note == [
        f"note: the report is not attached to the study's parent run: the store {uri} "
        "cannot be written (Read-only file system)"
    ]
