"""Edge and model analysis of a setting, and the driver over the whole store (``analyse_store``).

Edge s->t: the effect of training source task s together with target task t on t's test score: delta = score of
t in the {s, t} mtl run minus score of t in t's single-task run (same seed), averaged over the seeds that have
both runs. Each edge is tested with the paired bootstrap of ``transfer.analysis.paired``; p-values are
Holm-adjusted across the tested edges of a setting.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.analysis.index import (DomainRuns, PredictionCache, RunInfo, Setting, index_runs, load_runs,
                                     missing_runs, settings_in_store, task_order)
from transfer.analysis.paired import DEFAULT_ALPHA, bootstrap_edge
from transfer.analysis.preview import AffinityPreview, affinity_preview
from transfer.analysis.stats import holm
from transfer.data.tasks import TaskSpec, TaskTable
from transfer.experiment.store import ResultsStore

logger = logging.getLogger(__name__)

DEFAULT_MIN_DELTA = 0.0
DEFAULT_N_BOOT = None  # auto: see auto_n_boot
MIN_N_BOOT = 1000
DEFAULT_SEED = 0
COLOURS = ("green", "red", "grey", "missing")
MODEL_TYPES = ("single", "mt-refinement", "mt-finetune")
MODEL_LABELS = {"single": "BERT (single task)", "mt-refinement": "MT-Refinement", "mt-finetune": "MT-Fine-Tune"}
SCORE_TOLERANCE = 1e-6  # stored test score vs the score recomputed from predictions


def edge_colour(delta: float, p_holm: float, alpha: float = DEFAULT_ALPHA, min_delta: float = DEFAULT_MIN_DELTA) -> str:
    """green: significant gain above min_delta; red: significant loss below -min_delta; grey: neither; missing: untested."""
    if delta is None or p_holm is None or math.isnan(delta) or math.isnan(p_holm):
        return "missing"
    if p_holm < alpha and delta > min_delta:
        return "green"
    if p_holm < alpha and delta < -min_delta:
        return "red"
    return "grey"


def _seed_scores(index: DomainRuns, model_type: str, task: str) -> dict[int, float]:
    kind, condition = {"single": ("single", task), "mt-refinement": ("all", "all"),
                       "mt-finetune": ("finetune", task)}[model_type]
    if kind == "all" and len(index.tasks) == 1:
        return {}
    out = {}
    for seed in index.seeds:
        run = index.get(kind, condition, seed)
        if run is not None and task in run.scores:
            out[seed] = float(run.scores[task])
    return out


def model_scores(index: DomainRuns) -> pd.DataFrame:
    """Paper Tables 2/3 in long form: model_type, task (plus "Avg"), mean, std, n_seeds, seeds.

    mean/std are over seeds (std with ddof=1, NaN for one seed). The average over tasks is given only when
    every task has a score, so a missing run never shifts the average silently.
    """
    rows = []
    for model_type in MODEL_TYPES:
        per_task = []
        for task in index.tasks:
            scores = _seed_scores(index, model_type, task)
            values = np.array(list(scores.values()), dtype=float)
            per_task.append({"model_type": model_type, "task": task,
                             "mean": float(values.mean()) if len(values) else math.nan,
                             "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                             "n_seeds": len(values), "seeds": " ".join(map(str, scores))})
        means = [row["mean"] for row in per_task]
        complete = bool(means) and not np.isnan(means).any()
        rows += per_task + [{"model_type": model_type, "task": "Avg",
                             "mean": float(np.mean(means)) if complete else math.nan, "std": math.nan,
                             "n_seeds": min(row["n_seeds"] for row in per_task) if complete else 0, "seeds": ""}]
    return pd.DataFrame(rows, columns=["model_type", "task", "mean", "std", "n_seeds", "seeds"])


EDGE_COLUMNS = ["source", "target", "metric", "delta", "delta_std", "ci_low", "ci_high", "p", "p_holm", "colour",
                "n_seeds", "seeds", "single_score", "pair_score", "n_units", "note"]


def _edge_seeds(index: DomainRuns, source: str, target: str) -> tuple[list[int], list[str]]:
    seeds, lacking = [], []
    for seed in index.seeds:
        have_single = index.get("single", target, seed) is not None
        have_pair = index.get("pair", frozenset((source, target)), seed) is not None
        if have_single and have_pair:
            seeds.append(seed)
        else:
            lacking.append(f"seed {seed}: no " + " and no ".join(
                what for what, ok in (("single run", have_single), ("pair run", have_pair)) if not ok))
    return seeds, lacking


def _edge_rng(seed: int, setting: Setting, source: str, target: str) -> np.random.Generator:
    """One stream per edge, independent of which domains or edges are analysed alongside it."""
    tag = zlib.crc32(f"{setting.domain}|{setting.model}|{setting.profile}|{source}|{target}".encode())
    return np.random.default_rng(np.random.SeedSequence([seed, tag]))




def _blank_edge(source: str, target: str, metric: str, seeds: list[int], notes: list[str]) -> dict:
    row = {"source": source, "target": target, "metric": metric, "n_seeds": len(seeds),
           "seeds": " ".join(map(str, seeds)), "note": "; ".join(notes)}
    row.update({key: math.nan for key in ("delta", "delta_std", "ci_low", "ci_high", "p", "single_score",
                                          "pair_score", "n_units")})
    return row


def _test_edge(index: DomainRuns, task: TaskSpec, source: str, runs: list[tuple[RunInfo, RunInfo]], n_boot: int,
               alpha: float, seed: int, cache: PredictionCache) -> tuple[dict, list[str]]:
    """Bootstrap the seeds whose predictions are all present; returns (fields to update, notes)."""
    target = task.name
    systems, used = [], []
    for pair_run, single_run in runs:
        records = (cache.get(pair_run.predictions_file(target)), cache.get(single_run.predictions_file(target)))
        if all(records):
            systems.append(records)
            used.append((pair_run, single_run))
    if not systems:
        return {}, ["predictions missing: not tested"]
    notes = [] if len(used) == len(runs) else [f"test on seeds {' '.join(str(p.seed) for p, _ in used)} only "
                                               "(predictions missing for the others)"]
    try:
        result = bootstrap_edge(task, task.metric, systems, n_boot, _edge_rng(seed, index.setting, source, target),
                                alpha)
    except (KeyError, ValueError, TypeError) as exc:
        logger.warning("%s->%s: bootstrap failed: %s", source, target, exc)
        return {}, [f"not tested: {exc}"]
    stored = float(np.mean([p.scores[target] - s.scores[target] for p, s in used]))
    if abs(result.delta - stored) > SCORE_TOLERANCE:
        logger.warning("%s->%s: delta recomputed from predictions (%.6f) differs from the stored scores' (%.6f)",
                       source, target, result.delta, stored)
        notes.append(f"predictions give delta {result.delta:+.4f}, stored scores {stored:+.4f}")
    return {"ci_low": result.ci_low, "ci_high": result.ci_high, "p": result.p_value, "n_units": result.n_units}, notes


def _edge_row(index: DomainRuns, task: TaskSpec, source: str, n_boot: int, alpha: float, seed: int,
              cache: PredictionCache) -> dict:
    target = task.name
    seeds, lacking = _edge_seeds(index, source, target)
    row = _blank_edge(source, target, task.metric, seeds, lacking)
    if not seeds:
        return row
    runs = [(index.get("pair", frozenset((source, target)), s), index.get("single", target, s)) for s in seeds]
    single = np.array([s.scores[target] for _, s in runs], dtype=float)
    deltas = np.array([p.scores[target] for p, _ in runs], dtype=float) - single
    row.update(delta=float(deltas.mean()), delta_std=float(deltas.std(ddof=1)) if len(seeds) > 1 else math.nan,
               single_score=float(single.mean()), pair_score=float(single.mean() + deltas.mean()))
    tested, notes = _test_edge(index, task, source, runs, n_boot, alpha, seed, cache)
    row.update(tested)
    row["note"] = "; ".join(filter(None, [row["note"], *notes]))
    return row


def auto_n_boot(edges: int, alpha: float) -> int:
    """Bootstrap resamples for ``n_boot=None``: at least ``MIN_N_BOOT``, and enough that Holm's smallest reachable
    adjusted p-value, ``edges / (B + 1)``, is at most a tenth of ``alpha``, so the number of resamples never
    decides a colour (12 edges at alpha 0.05: 2,400; 56 edges: 11,200)."""
    return max(MIN_N_BOOT, math.ceil(10 * edges / alpha))


def resolve_n_boot(n_boot: int | None, edges: int, alpha: float) -> int:
    """``n_boot``, or :func:`auto_n_boot` when None; warns when a given value leaves no edge able to pass Holm."""
    if n_boot is None:
        return auto_n_boot(edges, alpha)
    if edges and edges / (n_boot + 1) >= alpha:
        logger.warning("n_boot %d is too small for %d edges: Holm's smallest adjusted p-value is %d/%d = %.3g >= "
                       "alpha %g, so no edge can be green or red; use at least %d resamples (or the auto default)",
                       n_boot, edges, edges, n_boot + 1, edges / (n_boot + 1), alpha, auto_n_boot(edges, alpha))
    return n_boot


def edge_table(index: DomainRuns, table: TaskTable, n_boot: int = MIN_N_BOOT, alpha: float = DEFAULT_ALPHA,
               min_delta: float = DEFAULT_MIN_DELTA, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Every ordered pair s->t of the setting's tasks: delta, spread, bootstrap CI, p, Holm p and colour."""
    cache = PredictionCache()
    rows = [_edge_row(index, table.task(target), source, n_boot, alpha, seed, cache)
            for target in index.tasks for source in index.tasks if source != target]
    frame = pd.DataFrame(rows, columns=[c for c in EDGE_COLUMNS if c not in ("p_holm", "colour")])
    frame["p_holm"] = holm(frame["p"].to_numpy(dtype=float)) if len(frame) else []
    frame["colour"] = [edge_colour(d, p, alpha, min_delta) for d, p in zip(frame["delta"], frame["p_holm"])]
    return frame[EDGE_COLUMNS]


# ---------------------------------------------------------------------------------------------------------------
# Whole store
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class DomainAnalysis:
    """Everything the figures and tables of one setting need."""

    setting: Setting
    slug: str
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    models: pd.DataFrame
    edges: pd.DataFrame
    missing: list[str]
    notes: list[str]
    alpha: float
    min_delta: float
    n_boot: int  # resamples per edge actually used (the auto default resolved)
    has_grid: bool = True  # False: the setting holds only affinity runs (no single/pair/all/finetune run)
    affinity: AffinityPreview | None = None  # the look-ahead preview, where a done affinity run exists
    affinity_notes: list = field(default_factory=list)  # why there is no preview, or what it left out



def analyse_store(root: str | Path, table: TaskTable, domains: Sequence[str] | None = None,
                  n_boot: int | None = DEFAULT_N_BOOT, alpha: float = DEFAULT_ALPHA,
                  min_delta: float = DEFAULT_MIN_DELTA,
                  seed: int = DEFAULT_SEED, models: Sequence[str] | None = None,
                  profiles: Sequence[str] | None = None) -> list[DomainAnalysis]:
    """Analyse every setting of the store (optionally only some domains, models or profiles).

    ``n_boot`` None: per setting, enough resamples for its number of edges (:func:`auto_n_boot`).
    """
    runs = [r for r in load_runs(ResultsStore(root), table)
            if (not domains or r.setting.domain in domains) and (not models or r.setting.model in models)
            and (not profiles or r.setting.profile in profiles)]
    runs = [r for r in runs if all(t in table.tasks for t in r.tasks) or _skip_unknown(r)]
    grouped = settings_in_store(runs)
    per_domain = {}
    for setting in grouped:
        per_domain[setting.domain] = per_domain.get(setting.domain, 0) + 1
    out = []
    for setting, setting_runs in grouped.items():
        index = index_runs(setting, setting_runs, table)  # leaves the affinity runs out
        tracked = [r for r in setting_runs if r.is_affinity]
        has_grid = len(tracked) < len(setting_runs)
        if not has_grid:  # affinity runs only: no grid to analyse, the preview keeps its own tasks
            index.tasks = task_order({t for r in tracked for t in r.tasks}, setting.domain, table)
            index.notes.append("no single, pair, all-task or finetune run in the store: affinity preview only")
        logger.info("analysing %s (%d runs, tasks %s)", setting, len(setting_runs), ", ".join(index.tasks))
        setting_n_boot = resolve_n_boot(n_boot, len(index.tasks) * (len(index.tasks) - 1), alpha)
        edges = edge_table(index, table, setting_n_boot, alpha, min_delta, seed)
        preview, preview_notes = affinity_preview(index, tracked, edges, table)
        out.append(DomainAnalysis(setting, setting.slug(per_domain[setting.domain] == 1), index.tasks, index.seeds,
                                  model_scores(index), edges, missing_runs(index) if has_grid else [],
                                  list(index.notes), alpha, min_delta, setting_n_boot, has_grid, preview,
                                  preview_notes))
    return out


def _skip_unknown(run: RunInfo) -> bool:
    logger.warning("run %s trains task(s) not in the task table (%s); skipped (pass --task-file)",
                   run.run_id, "+".join(run.tasks))
    return False
