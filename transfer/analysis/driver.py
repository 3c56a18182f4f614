"""The driver over the whole store (``analyse_store``): settings -> index -> edges, states, plan, budget
diagnostic, the model table and its comparisons with single-task training, preview."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.analysis.edges import DEFAULT_SEED, Gate, budget_diagnostic, edge_table, seed_plan
from transfer.analysis.evidence import EvidenceOptions, GateOptions, provenance_of
from transfer.analysis.index import (DomainRuns, PredictionCache, RunInfo, Setting, index_runs, load_runs,
                                     missing_runs, settings_in_store, task_order)
from transfer.analysis.models import method_table, model_scores
from transfer.analysis.preview import AffinityPreview, affinity_preview
from transfer.data.tasks import TaskTable
from transfer.experiment.convergence import convergence
from transfer.experiment.roles import MODEL_LABELS, MODEL_TYPES
from transfer.experiment.store import ResultsStore

logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05
DEFAULT_N_BOOT = None  # auto: see auto_n_boot

__all__ = ["MODEL_LABELS", "MODEL_TYPES", "DomainAnalysis", "analyse_store", "auto_n_boot", "resolve_n_boot"]


AUTO_N_BOOT = 2000
MIN_USEFUL_N_BOOT = 200


def auto_n_boot(edges: int, alpha: float) -> int:
    """Bootstrap resamples for ``n_boot=None``: AUTO_N_BOOT whatever the number of edges. The resamples only
    estimate the test-set variance of each edge (relative standard error of a variance from B resamples is about
    sqrt(2 / B): 3% at 2,000); no p-value is read off the resamples' tail any more, so Holm never needs more."""
    return AUTO_N_BOOT


def resolve_n_boot(n_boot: int | None, edges: int, alpha: float) -> int:
    """``n_boot``, or :func:`auto_n_boot` when None; warns when a given value makes the variance imprecise."""
    if n_boot is None:
        return auto_n_boot(edges, alpha)
    if n_boot < MIN_USEFUL_N_BOOT:
        logger.warning("n_boot %d is small: the test-set variance of each edge is estimated to about +-%.0f%% "
                       "(use at least %d, or the auto default %d)", n_boot, 100 * math.sqrt(2 / n_boot),
                       MIN_USEFUL_N_BOOT, AUTO_N_BOOT)
    return n_boot


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
    options: EvidenceOptions
    n_boot: int  # resamples per edge actually used (the auto default resolved)
    has_grid: bool = True  # False: the setting holds only affinity runs (no single/pair/all/finetune run)
    affinity: AffinityPreview | None = None  # the look-ahead preview, where a done affinity run exists
    affinity_notes: list = field(default_factory=list)  # why there is no preview, or what it left out
    untrained: list = field(default_factory=list)  # "<run id> <task>: <why>" per task-run failing the gate
    plan: str = ""
    budget: dict = field(default_factory=dict)
    convergence: dict = field(default_factory=dict)  # task-runs that peaked at their last epoch (evidence.convergence)
    compute: dict = field(default_factory=dict)  # done runs and their wall seconds, per role and in all (compute_summary)
    hosts: dict = field(default_factory=dict)  # (precision, device class, encoder) -> done runs (how_computed)
    methods: pd.DataFrame | None = None  # MT-Refinement / MT-Fine-Tune against single, per task (models.method_table)

    @property
    def alpha(self) -> float:
        return self.options.alpha

    @property
    def unlearned(self) -> tuple[str, ...]:
        """Tasks whose single-task run failed the learning gate at every seed: nothing can be measured as transfer
        into them at this budget, so the graph leaves their incoming edges out (the edge table keeps them, n/a)."""
        single = self.models[(self.models["model_type"] == "single") & (self.models["task"] != "Avg")]
        return tuple(row.task for row in single.itertuples() if row.n_seeds and row.n_untrained == row.n_seeds)

    @property
    def margin(self) -> float:
        return self.options.margin


def analyse_store(root: str | Path, table: TaskTable, domains: Sequence[str] | None = None,
                  n_boot: int | None = DEFAULT_N_BOOT, options: EvidenceOptions | None = None,
                  seed: int = DEFAULT_SEED, models: Sequence[str] | None = None,
                  profiles: Sequence[str] | None = None, gate: GateOptions | None = None) -> list[DomainAnalysis]:
    """Analyse every setting of the store (optionally only some domains, models or profiles).

    ``n_boot`` None: per setting, enough resamples for its number of edges (:func:`auto_n_boot`).
    """
    options = options or EvidenceOptions()
    runs = [r for r in load_runs(ResultsStore(root), table)
            if (not domains or r.setting.domain in domains) and (not models or r.setting.model in models)
            and (not profiles or r.setting.profile in profiles)]
    runs = [r for r in runs if all(t in table.tasks for t in r.tasks) or _skip_unknown(r)]
    grouped = settings_in_store(runs)
    per_domain: dict[str, int] = {}
    for setting in grouped:
        per_domain[setting.domain] = per_domain.get(setting.domain, 0) + 1
    return [_analyse_setting(setting, setting_runs, table, per_domain[setting.domain] == 1, n_boot, options, seed,
                             gate) for setting, setting_runs in grouped.items()]


def _analyse_setting(setting: Setting, setting_runs: list[RunInfo], table: TaskTable, unique: bool,
                     n_boot: int | None, options: EvidenceOptions, seed: int,
                     gate_options: GateOptions | None) -> DomainAnalysis:
    index = index_runs(setting, setting_runs, table)  # leaves the affinity runs out
    tracked = [r for r in setting_runs if r.is_affinity]
    has_grid = len(tracked) < len(setting_runs)
    if not has_grid:  # affinity runs only: no grid to analyse, the preview keeps its own tasks
        index.tasks = task_order({t for r in tracked for t in r.tasks}, setting.domain, table)
        index.notes.append("no single, pair, all-task or finetune run in the store: affinity preview only")
    logger.info("analysing %s (%d runs, tasks %s)", setting, len(setting_runs), ", ".join(index.tasks))
    setting_n_boot = resolve_n_boot(n_boot, len(index.tasks) * (len(index.tasks) - 1), options.alpha)
    cache = PredictionCache()
    edges, gate = edge_table(index, table, setting_n_boot, options, seed, gate_options, cache)
    models = model_scores(index, gate)
    methods = method_table(index, table, setting_n_boot, options, seed, cache, gate)
    preview, preview_notes = affinity_preview(index, tracked, edges, table)
    budget = budget_diagnostic(edges) if has_grid else {}
    converged = convergence((r.stage, r.tasks, r.metrics, {t for t in r.tasks if gate.why(r, t)})
                            for r in setting_runs if r.status == "done" and not r.is_affinity)
    notes = list(index.notes) + [d["warning"] for d in (converged, budget) if d.get("warning")]
    if converged.get("warning"):
        logger.warning("%s: %s", setting.domain, converged["warning"])
    if budget.get("warning"):
        logger.warning("%s: %s", setting.domain, budget["warning"])
    return DomainAnalysis(setting, setting.slug(unique), index.tasks, index.seeds, models, edges,
                          missing_runs(index) if has_grid else [], notes, options, setting_n_boot, has_grid,
                          preview, preview_notes, gate.untrained(), seed_plan(edges, options) if has_grid else "",
                          budget, converged, compute_summary(setting_runs), how_computed(setting_runs), methods)


def how_computed(runs: Sequence[RunInfo]) -> dict[tuple[str, str, str], int]:
    """How many done runs were computed in each (precision, device class (with the CPU host class where recorded),
    encoder implementation): what a reader needs to know of the machines a store came from (an edge refuses to
    mix the first and the last)."""
    counts: dict[tuple[str, str, str], int] = {}
    for run in runs:
        if run.status != "done":
            continue
        recorded = provenance_of(run.metrics)  # what an edge compares: precision and encoder
        block = run.metrics.get("provenance") or {}
        device = str(block.get("device_class", "unrecorded"))
        if block.get("cpu"):  # the host class (runs before it was recorded show the device class alone)
            device = f"{device}: {block['cpu']}"
        key = (str(recorded.get("precision", "unrecorded")), device, str(recorded.get("encoder_impl", "unrecorded")))
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def compute_summary(runs: Sequence[RunInfo]) -> dict:
    """What the setting's done runs cost: ``{"runs": n, "wall_s": sum, "by_role": {role: (n, sum)}}``, by the runs'
    stored roles (their trainer stage in stores without roles), from each run's own ``train.wall_seconds``; a
    run without it counts in ``runs`` and in ``without_wall``, not in the sums.

    ``elapsed_s``: how long at least one of the runs was running (the union of their claimed-to-finished
    intervals), which is the grid wall time with the gaps between grid invocations left out; ``busy_s`` the sum of
    those intervals (over ``elapsed_s``: runs at a time); ``timed`` runs have an interval (stores written before
    status.json recorded ``started`` may lack it)."""
    by_role: dict[str, list] = {}
    missing = 0
    intervals = []
    for run in runs:
        if run.status != "done":
            continue
        role = "+".join(run.roles) if run.roles else run.stage
        entry = by_role.setdefault(role, [0, 0.0])
        entry[0] += 1
        if run.wall_seconds is None:
            missing += 1
        else:
            entry[1] += run.wall_seconds
        if run.interval is not None:
            intervals.append(run.interval)
    return {"runs": sum(n for n, _ in by_role.values()), "wall_s": sum(w for _, w in by_role.values()),
            "by_role": {role: (n, w) for role, (n, w) in sorted(by_role.items())}, "without_wall": missing,
            "elapsed_s": union_length(intervals), "busy_s": sum(end - start for start, end in intervals),
            "timed": len(intervals)}


def union_length(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length covered by the (start, end) intervals, overlaps counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _skip_unknown(run: RunInfo) -> bool:
    logger.warning("run %s trains task(s) not in the task table (%s); skipped (pass --task-file)",
                   run.run_id, "+".join(run.tasks))
    return False
