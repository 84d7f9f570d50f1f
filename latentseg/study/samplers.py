"""The spec's sampler and pruner as Optuna builds them, for the launch and each worker."""

from __future__ import annotations

import optuna

from latentseg.study.spec import LoadedStudy


def build_sampler(
    loaded: LoadedStudy, worker_index: int = 0, offset: int = 0
) -> optuna.samplers.BaseSampler:
    """The spec's sampler; each worker gets its own seed (``seed + worker_index``): workers
    sharing one seed would propose the same points."""
    sampler = loaded.spec.sampler
    # ``offset`` (trials already in the study) keeps a resumed launch from replaying the
    # first launch's random proposals.
    seed = None if sampler.seed is None else sampler.seed + worker_index + 100_003 * offset
    if sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler.n_startup_trials)
    if sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if sampler.name == "gp":  # Gaussian-process Bayesian optimization, one or several objectives
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=sampler.n_startup_trials)
    # grid points are queued explicitly; the sampler never picks one
    return optuna.samplers.RandomSampler(seed=seed)


def build_pruner(loaded: LoadedStudy) -> optuna.pruners.BasePruner:
    pruner = loaded.spec.pruner
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.name == "hyperband":
        max_resource = loaded.base.train.epochs * len(loaded.seeds)
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=max_resource,
            reduction_factor=pruner.reduction_factor,
        )
    return optuna.pruners.NopPruner()
