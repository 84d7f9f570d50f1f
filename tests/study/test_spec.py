import pytest

from latentseg.errors import ConfigError
from latentseg.study.spec import load_study_spec, redact
from latentseg.study.storage import make_storage
from tests.conftest import ROOT


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "studies").glob("*.yaml")))
def test_shipped_study_specs_load(name):
    loaded = load_study_spec(ROOT / "studies" / f"{name}.yaml")
    assert loaded.name == name
    if loaded.spec.sampler.name == "grid":
        assert loaded.spec.total_trials() == len(loaded.spec.grid_points())
    assert loaded.spec.total_trials() > 1


def test_ablation_is_the_full_factorial_with_three_seeds():
    loaded = load_study_spec(ROOT / "studies" / "ablation.yaml")
    points = loaded.spec.grid_points()
    assert len(points) == 4 * 3 * 2 and len({tuple(p.items()) for p in points}) == 24
    assert loaded.seeds == [42, 43, 44]


def test_plain_lists_are_categorical_and_overrides_apply(study_spec):
    path = study_spec(
        {
            "overrides": {"train.epochs": 3},
            "search_space": {
                "model.num_latents": [4, 8],
                "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            },
            "seeds": [1, 5],
        }
    )
    loaded = load_study_spec(path, overrides=["optim.weight_decay=0.1"])
    assert loaded.base.train.epochs == 3 and loaded.base.optim.weight_decay == 0.1
    assert loaded.spec.search_space["model.num_latents"].choices == [4, 8]
    assert loaded.seeds == [1, 5] and loaded.spec.total_trials() == 20


@pytest.mark.parametrize(
    "spec,expected",
    [
        (
            {"search_space": {"model.num_latnts": [4, 8]}},
            "search_space.model.num_latnts.*Did you mean 'num_latents'",
        ),
        (
            {"search_space": {"model.num_heads": ["x"]}},
            r"search_space.model.num_heads = 'x'.*integer",
        ),
        (
            {
                "search_space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
                "sampler": {"name": "grid"},
            },
            "make these categorical",
        ),
        ({"search_space": {"train.seed": [1, 2]}}, "use `seeds`"),
        ({"sampler": {"name": "bayes"}}, r"sampler.name"),
        ({"samplr": "tpe"}, "unknown key 'samplr'.*Did you mean 'sampler'"),
        ({"objective": {"metric": "miou"}}, "val_"),
        # the report scores the test split: tuning on it would select on the scored data
        ({"objective": {"metric": "test_miou"}}, "must not tune on the test split"),
        # several objectives: what Optuna cannot do with them is refused before anything runs
        (
            {
                "objectives": [{"metric": "val_miou"}, {"metric": "model_params"}],
                "pruner": {"name": "median"},
            },
            "pruner median: Optuna cannot prune a study of several objectives",
        ),
        (
            {
                "objective": {"metric": "val_loss"},
                "objectives": [{"metric": "val_miou"}, {"metric": "model_params"}],
            },
            "objective .one metric. or objectives .several., not both",
        ),
        ({"objective": {"metric": "model_flops_per_image"}}, "is a cost alone; list it"),
        ({"objectives": [{"metric": "val_miou"}]}, "objectives.*at least 2"),
        ({"objectives": [{"metric": "val_miou"}, {"metric": "val_miou"}]}, "repeat a metric"),
        (
            {"objectives": [{"metric": "model_params"}, {"metric": "train_images_per_s"}]},
            "are all costs: add a quality metric",
        ),
        (
            {"objectives": [{"metric": "val_miou"}, {"metric": "test_loss"}]},
            "must not tune on the test split",
        ),
        (
            {"objectives": [{"metric": "val_miou"}, {"metric": "model_flops"}]},
            r"objectives.1.metric: .*or in objectives a cost \(model_params, "
            "model_flops_per_image, .*got 'model_flops'",
        ),
        (
            {"objectives": [{"metric": "val_mIoU"}, {"metric": "model_params"}]},
            r"objectives\[0\].metric 'val_mIoU' is not a metric the runs report. Did you mean "
            "'val_miou'.*costs: model_params",
        ),
        ({"report": {"sesoi": -0.01}}, "report.sesoi"),
        ({"report": {"correction": "fdr"}}, "report.correction"),
        ({"report": {"metric": "best_val_miou"}}, "report.metric 'best_val_miou'"),
        ({"report": {"metric": "mIoU"}}, "report.metric 'mIoU'.*Did you mean 'miou'"),
        (
            {
                "search_space": {"model.num_latents": [4, 8]},
                "sampler": {"name": "grid"},
                "seeds": {"min": 3, "max": 6},
                "report": {"correction": "bh"},
            },
            "report.correction bh cannot decide after each round",
        ),
        (
            {
                "search_space": {"model.latent_dim": [60]},
                "overrides": {"model.num_heads": 8},
                "sampler": {"name": "grid"},
            },
            "divisible by num_heads",
        ),
    ],
)
def test_bad_specs_name_the_key(study_spec, spec, expected):
    with pytest.raises(ConfigError, match=expected):
        load_study_spec(study_spec(spec))


def test_missing_base_experiment(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("experiment: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="base experiment not found: nowhere.yaml"):
        load_study_spec(path)


def test_sqlite_with_several_workers_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="SQLite is not safe for 2 concurrent worker processes"):
        make_storage(f"sqlite:///{tmp_path}/o.db", max_retry=1, workers=2)
    with pytest.raises(ConfigError, match="expected sqlite"):
        make_storage("redis://x", max_retry=1)


def test_passwords_are_redacted():
    assert (
        redact("postgresql://bob:s3cret@db.example:5432/optuna")
        == "postgresql://bob:***@db.example:5432/optuna"
    )
    assert redact("postgresql://bob@db/optuna") == "postgresql://bob@db/optuna"
    assert redact(None) is None


@pytest.mark.parametrize(
    "spec,expected",
    [
        ({"search_space": {"model.num_latents": [2, 2]}}, "choices repeat a value"),
        ({"seeds": True}, "seeds"),
        ({"search_space": {"train.threads": [1, 2]}}, "cannot be searched"),
        ({"objective": {"metric": "val_mIoU"}}, "Did you mean 'val_miou'"),
        (
            {"search_space": {"model.num_heads": {"type": "int", "low": 1, "high": 4}}},
            r"model.num_heads = 3: .*divisible",
        ),
    ],
)
def test_mistakes_that_would_only_fail_after_training_starts_are_caught_at_load(
    study_spec, spec, expected
):
    with pytest.raises(ConfigError, match=expected):
        load_study_spec(study_spec(spec))


def test_objective_metrics_and_the_pruned_metric():
    from latentseg.study.objective import epoch_metric, objective_value

    assert epoch_metric("best_val_loss") == "val_loss" and epoch_metric("val_miou") == "val_miou"
    assert objective_value({}, "val_loss", [0.9, 0.4, 0.6], "minimize") == 0.4
    assert objective_value({}, "val_miou", [0.2, 0.7, 0.5], "maximize") == 0.7
    assert objective_value({"best_val_miou": 0.55}, "best_val_miou", [], "maximize") == 0.55


def test_costs_minimize_and_throughput_maximizes_unless_the_spec_says_otherwise(study_spec):
    loaded = load_study_spec(
        study_spec(
            {
                "objectives": [
                    {"metric": "val_miou"},
                    {"metric": "val_loss"},
                    {"metric": "model_flops_per_image"},
                    {"metric": "train_images_per_s"},
                    {"metric": "model_params", "direction": "maximize"},
                ]
            }  # fmt: skip
        )
    )
    assert loaded.spec.directions == ["maximize", "minimize", "minimize", "maximize", "maximize"]
    single = load_study_spec(study_spec({"objective": {"metric": "val_loss"}}, name="one.yaml"))
    assert (
        single.spec.directions == ["minimize"]
        and single.spec.objective_list[0].metric == "val_loss"
    )


def test_the_front_is_every_trial_no_other_beats_in_all_objectives():
    from types import SimpleNamespace

    from latentseg.study.progress import front

    trials = [SimpleNamespace(values=v) for v in [(0.70, 10), (0.72, 12), (0.69, 12), (0.72, 10)]]
    # maximize the first, minimize the second: (0.72, 10) beats all others but ties none
    assert front(trials, ["maximize", "minimize"]) == [trials[3]]
    assert front(trials[:3], ["maximize", "minimize"]) == trials[:2]  # a trade-off: both stay
    assert front(trials, ["minimize", "minimize"]) == [trials[0], trials[2]]


def test_a_point_is_named_by_its_values_with_keys_cut_to_their_last_part_where_unique():
    from latentseg.study.objective import point_name

    assert point_name({"model.num_latents": 8, "optim.lr": 0.003}) == "num_latents=8, lr=0.003"
    # two keys ending alike keep their full names; the others stay short
    assert (
        point_name({"model.seed": 1, "data.seed": 2, "model.variant": "tutorial"})
        == "model.seed=1, data.seed=2, variant=tutorial"
    )
    assert len(point_name({"model.variant": "x" * 6000})) == 4900  # MLflow's tag limit


def test_each_worker_gets_its_own_gpu_when_there_are_several():
    from latentseg.study.local_workers import worker_devices

    assert worker_devices(3, 0) == [None, None, None]  # CPU: threads are split instead
    assert worker_devices(2, 1) == [None, None]  # one GPU: shared
    assert worker_devices(4, 2) == ["0", "1", "0", "1"]
    assert worker_devices(2, 2, visible="2,3") == ["2", "3"]
    assert worker_devices(1, 4) == [None]


def test_a_bad_heartbeat_setting_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTSEG_HEARTBEAT_GRACE_S", "soon")
    with pytest.raises(ConfigError, match=r"\$LATENTSEG_HEARTBEAT_GRACE_S='soon'"):
        make_storage(f"sqlite:///{tmp_path}/optuna.db", max_retry=1)
