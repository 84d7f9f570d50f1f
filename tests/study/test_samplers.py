"""The spec's sampler and pruner as Optuna objects: each worker samples with its own seed."""

from __future__ import annotations

import optuna

from latentseg.study.samplers import build_pruner, build_sampler
from latentseg.study.spec import load_study_spec

SPACE = {"model.num_latents": [4, 8, 16, 32]}


def proposals(sampler: optuna.samplers.BaseSampler) -> list:
    study = optuna.create_study(sampler=sampler)
    return [study.ask().suggest_categorical("x", list(range(100))) for _ in range(5)]


def test_workers_and_resumed_launches_sample_with_seeds_of_their_own(study_spec):
    spec = {"search_space": SPACE, "sampler": {"name": "tpe", "seed": 3, "n_startup_trials": 2}}
    loaded = load_study_spec(study_spec(spec))
    sampler = build_sampler(loaded)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert proposals(build_sampler(loaded)) == proposals(build_sampler(loaded))
    assert proposals(build_sampler(loaded, 1)) != proposals(build_sampler(loaded, 0))
    assert proposals(build_sampler(loaded, 0, 5)) != proposals(build_sampler(loaded, 0, 0))


def test_a_grid_is_queued_so_its_sampler_is_random_and_pruners_follow_the_spec(study_spec):
    grid = load_study_spec(study_spec({"search_space": SPACE, "sampler": {"name": "grid"}}))
    assert isinstance(build_sampler(grid), optuna.samplers.RandomSampler)
    assert isinstance(build_pruner(grid), optuna.pruners.NopPruner)
    spec = {
        "search_space": SPACE,
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    }
    median = load_study_spec(study_spec(spec, name="median.yaml"))
    assert isinstance(build_pruner(median), optuna.pruners.MedianPruner)
    spec = {"search_space": SPACE, "pruner": {"name": "hyperband"}, "seeds": [1, 2]}
    hyperband = load_study_spec(study_spec(spec, base={"train": {"epochs": 3}}, name="h.yaml"))
    pruner = build_pruner(hyperband)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert pruner._max_resource == 3 * 2  # epochs x seeds: a trial reports each seed's epochs


def test_nsga2_searches_several_objectives_with_a_seed_per_worker(study_spec):
    spec = {
        "search_space": SPACE,
        "objectives": [{"metric": "val_miou"}, {"metric": "model_params"}],
        "sampler": {"name": "nsga2", "seed": 3},
    }
    loaded = load_study_spec(study_spec(spec))
    assert isinstance(build_sampler(loaded), optuna.samplers.NSGAIISampler)
    assert isinstance(build_pruner(loaded), optuna.pruners.NopPruner)
    assert proposals(build_sampler(loaded, 1)) != proposals(build_sampler(loaded, 0))


def test_a_gaussian_process_searches_two_objectives_after_its_random_start(study_spec):
    """``sampler: gp`` is Optuna's GPSampler: seeded per worker, and on a study of two
    objectives it proposes from its model once its startup trials are done."""
    spec = {
        "search_space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "objectives": [{"metric": "val_miou"}, {"metric": "model_params"}],
        "sampler": {"name": "gp", "seed": 3, "n_startup_trials": 2},
    }
    loaded = load_study_spec(study_spec(spec))
    sampler = build_sampler(loaded)
    assert isinstance(sampler, optuna.samplers.GPSampler)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(
        lambda t: (-((t.suggest_float("x", 0, 1) - 0.3) ** 2), t.params["x"]), n_trials=4
    )
    assert len(study.best_trials) >= 1 and len(study.trials) == 4
