"""Two ways of training one task, compared with the edge's own test: does a change of method change scores?

An edge compares a task trained with a partner against the task alone, seed by seed. The same test answers
whether two *methods* give the same scores (a fast path against a reference path, one precision against
another): per seed, d_j = score of the task under method A minus under method B, on the same test units; the
seed mean is tested with the between-seed variance of the d_j over k plus the clustered test-set variance all
seeds share (``transfer.analysis.stats.seed_test``), and equivalence within a margin by two one-sided tests.

The verdict reads as the edge states do: ``equivalent`` (TOST p < alpha: |delta| < margin), ``different`` (p <
alpha and |delta| > margin), else ``inconclusive``; fewer than two seeds cannot be tested. There is one
comparison, so nothing is corrected for multiplicity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from transfer.analysis.evidence import EvidenceOptions
from transfer.analysis.index import PredictionCache, RunInfo
from transfer.analysis.paired import bootstrap_edge
from transfer.analysis.stats import seed_test
from transfer.data.tasks import TaskSpec

DEFAULT_COMPARE_SEED = 0


def compare_methods(task: TaskSpec, runs_a: Mapping[int, RunInfo], runs_b: Mapping[int, RunInfo],
                    options: EvidenceOptions | None = None, n_boot: int = 2000,
                    seed: int = DEFAULT_COMPARE_SEED) -> dict:
    """The test of A minus B for ``task`` over the seeds both have (each a done run holding its predictions)."""
    options = options or EvidenceOptions()
    seeds = sorted(set(runs_a) & set(runs_b))
    cache = PredictionCache()
    systems = [(cache.get(runs_a[s].predictions_file(task.name)), cache.get(runs_b[s].predictions_file(task.name)))
               for s in seeds]
    missing = [s for s, (a, b) in zip(seeds, systems) if not a or not b]
    if missing:
        raise ValueError(f"{task.name}: predictions missing for seed(s) {' '.join(map(str, missing))}")
    if not seeds:
        raise ValueError(f"{task.name}: no seed has a run of both methods")
    boot = bootstrap_edge(task, task.metric, systems, n_boot, np.random.default_rng(seed), options.alpha,
                          memo=cache.memo)
    result = seed_test(boot.seed_deltas, boot.var_test, boot.n_clusters, options.alpha, options.margin)
    scores_a = [runs_a[s].scores[task.name] for s in seeds]
    scores_b = [runs_b[s].scores[task.name] for s in seeds]
    return {"task": task.name, "metric": task.metric, "seeds": seeds, "k": result.k,
            "mean_a": float(np.mean(scores_a)), "sd_a": float(np.std(scores_a, ddof=1)) if len(seeds) > 1 else math.nan,
            "mean_b": float(np.mean(scores_b)), "sd_b": float(np.std(scores_b, ddof=1)) if len(seeds) > 1 else math.nan,
            "seed_deltas": [float(d) for d in boot.seed_deltas], "delta": result.delta, "se_seed": result.se_seed,
            "se_test": result.se_test, "se": result.se, "df": result.df, "ci_low": result.ci_low,
            "ci_high": result.ci_high, "p": result.p, "p_equivalence": result.p_equivalence,
            "margin": options.margin, "alpha": options.alpha, "n_clusters": boot.n_clusters,
            "verdict": verdict(result.p, result.p_equivalence, result.delta, options)}


def verdict(p: float, p_equivalence: float, delta: float, options: EvidenceOptions) -> str:
    if math.isnan(p):
        return "untested (fewer than two seeds)"
    if p_equivalence < options.alpha:
        return "equivalent"
    if p < options.alpha and abs(delta) > options.margin:
        return "different"
    return "inconclusive"


def runs_by_seed(runs: list[RunInfo], task: str, stage: str = "single") -> dict[int, RunInfo]:
    """The done runs of ``stage`` that trained ``task`` alone, by seed (the newest where a seed has several)."""
    chosen: dict[int, RunInfo] = {}
    for run in runs:
        if run.status == "done" and run.stage == stage and run.tasks == (task,) and task in run.scores:
            if run.seed not in chosen or run.finished_at() > chosen[run.seed].finished_at():
                chosen[run.seed] = run
    return chosen
