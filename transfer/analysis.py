"""Transfer analysis from the results store: per-edge deltas, paired bootstrap tests, Holm correction, model tables.

Reads only the store (``transfer.experiment.store``) and the task table; never imports torch or transformers.

Vocabulary
    setting   a (domain, model, profile name) triple; runs of one setting differ only by tasks, stage and seed.
    edge s->t the effect of training source task s together with target task t on t's test score:
              delta = score of t in the {s, t} mtl run minus score of t in t's single-task run (same seed),
              averaged over the seeds that have both runs.
    affinity run  an all-task mtl run whose spec has ``affinity_every > 0`` (transfer.affinity): it records the
              look-ahead affinity Z(s->t) and is never used as a grid run (not MT-Refinement, not a pair run,
              not a finetune parent); ``affinity_preview`` sets its Z against the measured deltas.

Significance (``bootstrap_edge``): a paired bootstrap over test *units* (examples; sentences for tagging;
groups/abstracts for HoC). Both systems and every seed are resampled with the *same* unit indices in each
replicate (the test set is the same for every seed); on each replicate the task's own metric is recomputed per
system and seed, and the per-seed deltas are averaged over seeds. The two-sided p-value is the share of
replicates whose delta lies at least |delta| away from the observed delta (the bootstrap distribution shifted
to mean zero, i.e. under the null of no difference), with the usual +1 correction; the confidence interval is
the percentile interval of the replicate deltas. p-values are Holm-adjusted across the tested edges of a
setting. Metrics are recomputed from per-unit sufficient statistics (counts, sums), so one matrix product
scores thousands of replicates at once; ``DECOMPOSITIONS`` lists them and the tests check each against
``transfer.scoring.metrics.score_task`` on the full sample.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.experiment.store import ResultsStore, read_json, read_predictions
from transfer.data.tasks import TaskSpec, TaskTable

logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_DELTA = 0.0
DEFAULT_N_BOOT = None  # auto: see auto_n_boot
MIN_N_BOOT = 1000
DEFAULT_SEED = 0
COLOURS = ("green", "red", "grey", "missing")
MODEL_TYPES = ("single", "mt-refinement", "mt-finetune")
MODEL_LABELS = {"single": "BERT (single task)", "mt-refinement": "MT-Refinement", "mt-finetune": "MT-Fine-Tune"}
SCORE_TOLERANCE = 1e-6  # stored test score vs the score recomputed from predictions
_CHUNK_CELLS = 4_000_000  # replicates x units per resampling chunk (~32 MB of float64)


# ---------------------------------------------------------------------------------------------------------------
# Per-unit sufficient statistics: one row per test unit; a metric is a function of the column sums
# ---------------------------------------------------------------------------------------------------------------

def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (the metrics' zero_division=0)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _positive(task: TaskSpec) -> list[str]:
    return [label for label in task.labels if label != task.negative_label]


def _accuracy_stats(task: TaskSpec, gold: Sequence, pred: Sequence) -> np.ndarray:
    correct = np.fromiter((g == p for g, p in zip(gold, pred)), dtype=float, count=len(gold))
    return np.column_stack([correct, np.ones_like(correct)])


def _accuracy_score(sums: np.ndarray) -> np.ndarray:
    return _safe_ratio(sums[..., 0], sums[..., 1])


def _micro_stats(task: TaskSpec, gold: Sequence, pred: Sequence) -> np.ndarray:
    g, p = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    positive = set(_positive(task))
    gold_pos = np.fromiter((x in positive for x in g), dtype=bool, count=len(g))
    pred_pos = np.fromiter((x in positive for x in p), dtype=bool, count=len(p))
    correct = g == p
    return np.column_stack([correct & gold_pos, pred_pos & ~correct, gold_pos & ~correct]).astype(float)


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return _safe_ratio(2 * tp, 2 * tp + fp + fn)


def _micro_score(sums: np.ndarray) -> np.ndarray:
    return _f1_from_counts(sums[..., 0], sums[..., 1], sums[..., 2])


def _macro_stats(task: TaskSpec, gold: Sequence, pred: Sequence) -> np.ndarray:
    g, p = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    columns = []
    for label in _positive(task):
        is_gold, is_pred = g == label, p == label
        columns += [is_gold & is_pred, is_pred & ~is_gold, is_gold & ~is_pred]
    return np.column_stack(columns).astype(float)


def _macro_score(sums: np.ndarray) -> np.ndarray:
    per_class = sums.reshape(*sums.shape[:-1], -1, 3)
    return _f1_from_counts(per_class[..., 0], per_class[..., 1], per_class[..., 2]).mean(axis=-1)


def _split_tag(tag: str) -> tuple[str, str]:
    return tag[:1], tag[1:].split("-", 1)[-1] or "_"


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entities (type, first word, last word) of one tag sequence, with conlleval's chunk rules (as seqeval).

    A chunk ends before a B or O tag, or where the type changes; it starts at B, at an I after O (or at the
    sentence start), or at an I whose type differs from the previous tag's. Untyped B/I/O tags share one type.
    """
    spans, start, prev_tag, prev_type = set(), 0, "O", ""
    for i, raw in enumerate([*tags, "O"]):
        tag, kind = _split_tag(raw)
        if prev_tag in ("B", "I") and (tag in ("B", "O") or kind != prev_type):
            spans.add((prev_type, start, i - 1))
        if tag == "B" or (tag == "I" and (prev_tag == "O" or kind != prev_type)):
            start = i
        prev_tag, prev_type = tag, kind
    return spans


def _entity_stats(task: TaskSpec, gold: Sequence, pred: Sequence) -> np.ndarray:
    rows = []
    for gold_tags, pred_tags in zip(gold, pred):
        gold_spans, pred_spans = entity_spans(list(gold_tags)), entity_spans(list(pred_tags))
        rows.append((len(gold_spans & pred_spans), len(pred_spans), len(gold_spans)))
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _entity_score(sums: np.ndarray) -> np.ndarray:
    return _safe_ratio(2 * sums[..., 0], sums[..., 1] + sums[..., 2])


def _pearson_stats(task: TaskSpec, gold: Sequence, pred: Sequence) -> np.ndarray:
    x, y = np.asarray(gold, dtype=float), np.asarray(pred, dtype=float)
    x, y = x - x.mean(), y - y.mean()  # r is shift-invariant; centring keeps the sums well conditioned
    return np.column_stack([np.ones_like(x), x, y, x * x, y * y, x * y])


def _pearson_score(sums: np.ndarray) -> np.ndarray:
    n, sx, sy, sxx, syy, sxy = (sums[..., i] for i in range(6))
    var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
    # A constant side has no defined r; transfer.scoring.metrics.pearson returns 0.0 then, and so do we.
    tiny = 1e-12 * np.maximum(n * sxx, 1e-300), 1e-12 * np.maximum(n * syy, 1e-300)
    defined = (var_x > tiny[0]) & (var_y > tiny[1])
    r = _safe_ratio(n * sxy - sx * sy, np.sqrt(np.where(defined, var_x * var_y, 0.0)))
    return np.clip(np.where(defined, r, 0.0), -1.0, 1.0)


def _hoc_stats(task: TaskSpec, gold: Sequence, pred: Sequence) -> np.ndarray:
    """Per group (already pooled): precision, recall, 1 (BLUE's example-based rules for empty sets)."""
    rows = []
    for gold_set, pred_set in zip(gold, pred):
        gold_set, pred_set = set(gold_set), set(pred_set)
        if not gold_set and not pred_set:
            rows.append((1.0, 1.0, 1.0))
            continue
        hits = len(gold_set & pred_set)
        rows.append((hits / len(pred_set) if pred_set else 0.0, hits / len(gold_set) if gold_set else 0.0, 1.0))
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _hoc_score(sums: np.ndarray) -> np.ndarray:
    precision, recall = _safe_ratio(sums[..., 0], sums[..., 2]), _safe_ratio(sums[..., 1], sums[..., 2])
    return _safe_ratio(2 * precision * recall, precision + recall)


@dataclass(frozen=True)
class Decomposition:
    """How a metric splits into per-unit statistics: ``unit`` is "uid" (one example) or "group" (pooled)."""

    unit: str
    stats: Callable[[TaskSpec, Sequence, Sequence], np.ndarray]
    score: Callable[[np.ndarray], np.ndarray]


DECOMPOSITIONS: dict[str, Decomposition] = {
    "accuracy": Decomposition("uid", _accuracy_stats, _accuracy_score),
    "micro_f1": Decomposition("uid", _micro_stats, _micro_score),
    "macro_f1": Decomposition("uid", _macro_stats, _macro_score),
    "entity_f1": Decomposition("uid", _entity_stats, _entity_score),
    "pearson": Decomposition("uid", _pearson_stats, _pearson_score),
    "hoc_f1": Decomposition("group", _hoc_stats, _hoc_score),
}


@dataclass(frozen=True)
class UnitData:
    """One system's test predictions for one task, reduced to resampling units."""

    keys: tuple[str, ...]
    gold: tuple
    pred: tuple
    groups: tuple | None = None  # per-example groups, kept only for the generic (non-decomposed) path


def _pool_groups(records: list[dict]) -> UnitData:
    pooled: dict[str, tuple[set, set]] = {}
    for record in records:
        gold_set, pred_set = pooled.setdefault(str(record["group"]), (set(), set()))
        gold_set.update(record["gold"])
        pred_set.update(record["pred"])
    return UnitData(tuple(pooled), tuple(g for g, _ in pooled.values()), tuple(p for _, p in pooled.values()))


def unit_data(records: list[dict], unit: str) -> UnitData:
    """Predictions as resampling units: examples keyed by uid, or label sets pooled per group."""
    if unit == "group":
        if any("group" not in record for record in records):
            raise ValueError("records lack the 'group' field that this metric resamples by")
        return _pool_groups(records)
    groups = tuple(record.get("group") for record in records)
    return UnitData(tuple(str(record["uid"]) for record in records), tuple(record["gold"] for record in records),
                    tuple(record["pred"] for record in records), groups if all(g is not None for g in groups) else None)


def unit_statistics(task: TaskSpec, metric: str, records: list[dict]) -> tuple[tuple[str, ...], np.ndarray]:
    """Resampling unit keys and their statistics (rows) for ``metric`` of ``task``."""
    decomposition = DECOMPOSITIONS[metric]
    units = unit_data(records, decomposition.unit)
    return units.keys, decomposition.stats(task, units.gold, units.pred)


def decomposed_score(task: TaskSpec, metric: str, records: list[dict]) -> float:
    """``metric`` on the full sample of ``records`` through its decomposition (equals transfer.scoring.metrics)."""
    _, stats = unit_statistics(task, metric, records)
    return float(DECOMPOSITIONS[metric].score(stats.sum(axis=0)))


# ---------------------------------------------------------------------------------------------------------------
# Paired bootstrap
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BootstrapResult:
    """Observed seed-averaged delta (from predictions), its replicates, p-value and percentile interval."""

    delta: float
    replicates: np.ndarray
    p_value: float
    ci_low: float
    ci_high: float
    n_units: int


def resample_counts(rng: np.random.Generator, n_units: int, n_rep: int) -> np.ndarray:
    """(n_rep, n_units) multiplicities of each unit in n_rep bootstrap resamples of size n_units."""
    draws = rng.integers(0, n_units, size=(n_rep, n_units))
    offsets = (np.arange(n_rep) * n_units)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_rep * n_units).reshape(n_rep, n_units).astype(float)


def _paired_replicates(stats: np.ndarray, score: Callable, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """stats: (units, seeds, 2, k), system 0 = pair run, 1 = single run; returns (n_boot,) seed-mean deltas."""
    n_units, n_seeds, _, k = stats.shape
    flat = stats.reshape(n_units, -1)
    out = np.empty(n_boot)
    chunk = max(1, _CHUNK_CELLS // max(n_units, 1))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        sums = (resample_counts(rng, n_units, stop - start) @ flat).reshape(-1, n_seeds, 2, k)
        scores = score(sums)
        out[start:stop] = (scores[..., 0] - scores[..., 1]).mean(axis=1)
    return out


def _generic_replicates(task: TaskSpec, metric: str, systems: list[tuple[UnitData, UnitData]], n_boot: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Slow path for a metric without a decomposition: transfer.scoring.metrics on every resample."""
    from transfer.scoring.metrics import compute_metric  # lazy: only for metrics DECOMPOSITIONS lacks

    logger.warning("metric %s has no per-unit decomposition; bootstrapping with transfer.scoring.metrics (slow)", metric)
    n_units = len(systems[0][0].keys)
    out = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n_units, size=n_units)
        deltas = []
        for pair, single in systems:
            scored = [compute_metric(metric, task, [u.gold[i] for i in idx], [u.pred[i] for i in idx],
                                     [u.groups[i] for i in idx] if u.groups else None) for u in (pair, single)]
            deltas.append(scored[0] - scored[1])
        out[b] = np.mean(deltas)
    return out


def bootstrap_p_value(observed: float, replicates: np.ndarray) -> float:
    """Two-sided p: share of centred replicates at least as far from 0 as the observed delta (+1 correction)."""
    extreme = np.abs(replicates - observed) >= abs(observed) - 1e-12
    return float((1 + np.count_nonzero(extreme)) / (len(replicates) + 1))


def _align(units: list[UnitData]) -> tuple[list[UnitData], int]:
    """Restrict every system to the units all of them share, in one order; returns (aligned, units dropped)."""
    common = set(units[0].keys).intersection(*(u.keys for u in units[1:]))
    order = [key for key in units[0].keys if key in common]
    dropped = max(len(u.keys) for u in units) - len(order)
    aligned = []
    for u in units:
        position = {key: i for i, key in enumerate(u.keys)}
        idx = [position[key] for key in order]
        aligned.append(UnitData(tuple(order), tuple(u.gold[i] for i in idx), tuple(u.pred[i] for i in idx),
                                tuple(u.groups[i] for i in idx) if u.groups else None))
    for u in aligned[1:]:
        differ = next((key for key, a, b in zip(order, aligned[0].gold, u.gold) if _canonical(a) != _canonical(b)), None)
        if differ is not None:
            raise ValueError(f"gold labels of test unit {differ!r} differ between runs: were they scored on the "
                             "same test set?")
    return aligned, dropped


def _canonical(gold):
    return tuple(sorted(gold)) if isinstance(gold, (set, frozenset)) else gold


def bootstrap_edge(task: TaskSpec, metric: str, systems: list[tuple[list[dict], list[dict]]], n_boot: int,
                   rng: np.random.Generator, alpha: float = DEFAULT_ALPHA) -> BootstrapResult:
    """Paired bootstrap of the seed-averaged delta; ``systems`` holds (pair records, single records) per seed."""
    decomposition = DECOMPOSITIONS.get(metric)
    unit = decomposition.unit if decomposition else "uid"
    units = [unit_data(records, unit) for pair_single in systems for records in pair_single]
    aligned, dropped = _align(units)
    if dropped:
        logger.warning("%s: %d test unit(s) are not shared by every run and seed; they are left out", task.name, dropped)
    n_units = len(aligned[0].keys)
    if n_units == 0:
        raise ValueError(f"{task.name}: the runs share no test example (uids differ)")
    paired = [(aligned[i], aligned[i + 1]) for i in range(0, len(aligned), 2)]
    if decomposition is None:
        replicates = _generic_replicates(task, metric, paired, n_boot, rng)
        from transfer.scoring.metrics import compute_metric

        observed = float(np.mean([compute_metric(metric, task, p.gold, p.pred, p.groups)
                                  - compute_metric(metric, task, s.gold, s.pred, s.groups) for p, s in paired]))
    else:
        stats = np.stack([np.stack([decomposition.stats(task, u.gold, u.pred) for u in pair_single], axis=1)
                          for pair_single in paired], axis=1)  # (units, seeds, 2, k)
        full = decomposition.score(stats.sum(axis=0))
        observed = float((full[:, 0] - full[:, 1]).mean())
        replicates = _paired_replicates(stats, decomposition.score, n_boot, rng)
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(observed, replicates, bootstrap_p_value(observed, replicates), float(low), float(high), n_units)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and do not count as tests."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    order = tested[np.argsort(p[tested], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def edge_colour(delta: float, p_holm: float, alpha: float = DEFAULT_ALPHA, min_delta: float = DEFAULT_MIN_DELTA) -> str:
    """green: significant gain above min_delta; red: significant loss below -min_delta; grey: neither; missing: untested."""
    if delta is None or p_holm is None or math.isnan(delta) or math.isnan(p_holm):
        return "missing"
    if p_holm < alpha and delta > min_delta:
        return "green"
    if p_holm < alpha and delta < -min_delta:
        return "red"
    return "grey"


# ---------------------------------------------------------------------------------------------------------------
# Reading the store
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """Runs comparable with each other: same domain, model and profile name."""

    domain: str
    model: str
    profile: str

    def slug(self, unique_domain: bool = True) -> str:
        text = self.domain if unique_domain else f"{self.domain}_{self.profile}_{Path(self.model).name}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "domain"


@dataclass(frozen=True)
class RunInfo:
    """One run folder as the analysis needs it."""

    run_id: str
    folder: Path
    stage: str
    tasks: tuple[str, ...]
    seed: int
    setting: Setting
    status: str
    parent: str | None
    scores: dict = field(default_factory=dict)  # task -> stored test score (done runs only)
    wall_seconds: float | None = None  # metrics.json train.wall_seconds (done runs only)
    affinity_every: int = 0  # > 0: an affinity run (look-ahead affinity tracked); never a grid condition
    affinity: dict | None = None  # metrics.json "affinity" block of a done affinity run

    @property
    def is_affinity(self) -> bool:
        return self.affinity_every > 0

    def predictions_file(self, task: str) -> Path:
        return self.folder / "predictions" / f"{task}.jsonl"


def _run_domain(spec: dict, table: TaskTable) -> str:
    if spec.get("domain"):
        return str(spec["domain"])
    try:
        return table.domain_of(list(spec["tasks"])).name
    except (KeyError, ValueError):
        return "unknown"


def _stored_metrics(folder: Path) -> tuple[dict, float | None, dict | None]:
    """(task -> stored test score, train.wall_seconds, the "affinity" block) of a run's metrics.json."""
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        return {}, None, None
    metrics = read_json(metrics_file)
    tasks = metrics.get("tasks", {})
    scores = {name: info.get("test_score") for name, info in tasks.items() if info.get("test_score") is not None}
    wall = (metrics.get("train") or {}).get("wall_seconds")
    return scores, None if wall is None else float(wall), metrics.get("affinity")


def _affinity_every(spec: dict) -> int:
    """The spec's look-ahead affinity interval; 0 for plain runs and for specs older than the key."""
    return int(spec.get("affinity_every") or 0)


def load_runs(store: ResultsStore, table: TaskTable) -> list[RunInfo]:
    """Every run folder with a readable spec (done runs carry their stored test scores)."""
    runs = []
    for record in store.records():
        spec = record.spec
        try:
            setting = Setting(_run_domain(spec, table), str(spec["model"]), str(spec["profile"]["name"]))
            status = record.status or "unknown"
            scores, wall, affinity = _stored_metrics(record.folder) if status == "done" else ({}, None, None)
            every = _affinity_every(spec)
            runs.append(RunInfo(record.run_id, record.folder, spec["stage"], tuple(spec["tasks"]), int(spec["seed"]),
                                setting, status, spec.get("parent"), scores, wall, every,
                                affinity if every > 0 else None))
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("run %s: unreadable spec or metrics (%s); skipped", record.run_id, exc)
    return runs


def _task_order(names: set[str], domain: str, table: TaskTable) -> tuple[str, ...]:
    listed = list(table.domains[domain].tasks) if domain in table.domains else []
    return tuple([n for n in listed if n in names] + sorted(names - set(listed)))


CONDITION_KINDS = ("single", "pair", "all", "finetune")


@dataclass
class DomainRuns:
    """The runs of one setting, indexed by condition: ``runs[kind][(condition, seed)]`` for done runs with scores.

    kinds: "single" (condition = task), "pair" (frozenset of the two tasks), "all" (condition = "all": the mtl
    run of every task of the setting, see ``_all_task_set``), "finetune" (task). ``not_done`` holds the status of runs not (yet) usable.
    """

    setting: Setting
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: dict = field(default_factory=lambda: {kind: {} for kind in CONDITION_KINDS})
    not_done: dict = field(default_factory=dict)  # (kind, condition, seed) -> status
    notes: list = field(default_factory=list)

    def get(self, kind: str, condition, seed: int) -> RunInfo | None:
        return self.runs[kind].get((condition, seed))


def _all_task_set(runs: list[RunInfo], tasks: tuple[str, ...]) -> frozenset:
    """Tasks of the MT-Refinement run: every task of the setting if such an mtl run exists, else the largest
    mtl task set with more than two tasks (e.g. the domain's run when extra pairs were added later)."""
    sets = [frozenset(r.tasks) for r in runs if r.stage == "mtl"]
    if frozenset(tasks) in sets:
        return frozenset(tasks)
    larger = [s for s in sets if len(s) > 2]
    return max(larger, key=lambda s: (len(s), sets.count(s), sorted(s))) if larger else frozenset(tasks)


def _condition(run: RunInfo, all_tasks: frozenset, all_task_ids: set[str], known_ids: set[str]) -> list:
    """The (kind, condition) pairs a run stands for (a 2-task domain's mtl run is both "all" and "pair")."""
    if run.stage == "single":
        return [("single", run.tasks[0])]
    if run.stage == "finetune":
        parent = Path(run.parent).name if run.parent else ""
        # Fine-tuned from the all-task run, or from a run this store does not hold (we cannot tell): keep.
        return [("finetune", run.tasks[0])] if parent in all_task_ids or parent not in known_ids else []
    found = []
    if run.stage == "mtl" and frozenset(run.tasks) == all_tasks:
        found.append(("all", "all"))
    if run.stage == "mtl" and len(run.tasks) == 2:
        found.append(("pair", frozenset(run.tasks)))
    return found


def _add_run(index: DomainRuns, kind: str, condition, run: RunInfo) -> None:
    key = (condition, run.seed)
    if run.status != "done" or not all(t in run.scores for t in run.tasks):
        index.not_done[(kind, condition, run.seed)] = run.status if run.status != "done" else "no test score"
        return
    held = index.runs[kind]
    if key in held:
        older, newer = sorted([held[key], run], key=lambda r: (r.folder / "metrics.json").stat().st_mtime)
        index.notes.append(f"two done runs for {_condition_label(kind, condition)} seed {run.seed}: "
                           f"{older.run_id} and {newer.run_id}; using the newer")
        run = newer
    held[key] = run


def index_runs(setting: Setting, runs: list[RunInfo], table: TaskTable) -> DomainRuns:
    """Index one setting's runs; tasks = every task any of its runs trained, in the task table's order.

    Affinity runs (``affinity_every > 0``) are left out: an all-task run that tracks look-ahead affinity is
    neither the MT-Refinement run nor (in a two-task domain) the pair run, and a finetune run started from one
    is not MT-Fine-Tune. Their tasks and seeds do not widen the setting either.
    """
    known_ids = {r.run_id for r in runs}  # affinity runs included: a finetune from one is recognised, and dropped
    runs = [r for r in runs if not r.is_affinity]
    tasks = _task_order({t for r in runs for t in r.tasks}, setting.domain, table)
    index = DomainRuns(setting, tasks, tuple(sorted({r.seed for r in runs})))
    all_tasks = _all_task_set(runs, tasks)
    if all_tasks != frozenset(tasks):
        index.notes.append(f"MT-Refinement is the mtl run of {', '.join(t for t in tasks if t in all_tasks)} "
                           f"(no mtl run trains all {len(tasks)} tasks)")
    all_task_ids = {r.run_id for r in runs if r.stage == "mtl" and frozenset(r.tasks) == all_tasks}
    for run in runs:
        found = _condition(run, all_tasks, all_task_ids, known_ids)
        if not found:
            logger.info("run %s (%s %s) is not a single, pair, all-task or finetune run of %s; not used",
                        run.run_id, run.stage, "+".join(run.tasks), setting.domain)
        for kind, condition in found:
            _add_run(index, kind, condition, run)
    return index


# ---------------------------------------------------------------------------------------------------------------
# Missing runs, model tables and edge deltas
# ---------------------------------------------------------------------------------------------------------------

def _condition_label(kind: str, condition) -> str:
    if kind == "pair":
        return "mtl pair " + "+".join(sorted(condition))
    if kind == "all":
        return "mtl all tasks"
    return f"{kind} {condition}"


def _wanted(index: DomainRuns) -> list[tuple[str, object]]:
    pairs = [frozenset((a, b)) for i, a in enumerate(index.tasks) for b in index.tasks[i + 1:]]
    wanted = [("single", t) for t in index.tasks] + [("pair", p) for p in pairs]
    if len(index.tasks) > 2:
        wanted.append(("all", "all"))
    return wanted + [("finetune", t) for t in index.tasks]


def missing_runs(index: DomainRuns) -> list[str]:
    """One line per condition with seeds that have no done run, and why (not in store, running, failed)."""
    lines = []
    no_finetune = not index.runs["finetune"]
    for kind, condition in _wanted(index):
        if kind == "finetune" and no_finetune:
            continue
        gaps = [f"{seed} ({index.not_done.get((kind, condition, seed), 'not in store')})"
                for seed in index.seeds if index.get(kind, condition, seed) is None]
        if gaps:
            lines.append(f"{_condition_label(kind, condition)}: seed{'s' if len(gaps) > 1 else ''} {', '.join(gaps)}")
    if no_finetune and index.tasks:
        lines.append("finetune: no finetune runs in the store (MT-Fine-Tune is n/a)")
    return lines


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


class PredictionCache:
    """Reads each predictions file once."""

    def __init__(self) -> None:
        self._records: dict[Path, list[dict] | None] = {}

    def get(self, path: Path) -> list[dict] | None:
        if path not in self._records:
            self._records[path] = read_predictions(path) if path.is_file() else None
        return self._records[path]


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


def settings_in_store(runs: list[RunInfo]) -> dict[Setting, list[RunInfo]]:
    grouped: dict[Setting, list[RunInfo]] = {}
    for run in runs:
        grouped.setdefault(run.setting, []).append(run)
    return dict(sorted(grouped.items(), key=lambda item: (item[0].domain, item[0].model, item[0].profile)))


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
            index.tasks = _task_order({t for r in tracked for t in r.tasks}, setting.domain, table)
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


# ---------------------------------------------------------------------------------------------------------------
# Look-ahead affinity preview (transfer.training.lookahead) against the measured grid
# ---------------------------------------------------------------------------------------------------------------

AFFINITY_EDGE_COLUMNS = ["source", "target", "z", "z_std", "n_affinity_runs", "delta", "colour", "sign_agree"]
VALIDATION_COLUMNS = ["n_edges", "spearman_rho", "spearman_p", "p_method", "n_sign_agree", "sign_agreement",
                      "n_significant", "n_sign_agree_significant", "sign_agreement_significant", "affinity_runs",
                      "affinity_seeds", "preview_wall_s", "grid_wall_s", "n_grid_runs", "time_ratio",
                      "plain_all_wall_s", "tracking_overhead", "tracker_s", "tracker_overhead"]
EXACT_P_MAX_N = 8  # up to this many edges the Spearman p-value is exact (all n! pairings); above, spearmanr's
MIN_SPEARMAN_N = 3  # fewer edges give rho = +-1 whatever the data: reported as n/a


@dataclass
class AffinityPreview:
    """Look-ahead affinity of one setting (mean over its affinity runs) next to the measured edges.

    ``tasks`` orders the matrices: the grid's tasks in table order, plus any task only the affinity run has.
    ``z[i, j]`` = Z(tasks[i] -> tasks[j]) (rows: source, columns: target), NaN where no run measured it;
    ``z_std`` its sample sd over the affinity runs (NaN for one run). ``edges``: every ordered pair s != t
    (AFFINITY_EDGE_COLUMNS); ``validation``: VALIDATION_COLUMNS (see ``validate_affinity``).
    """

    tasks: tuple[str, ...]
    z: np.ndarray
    z_std: np.ndarray
    run_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    every: tuple[int, ...]
    num_batches: tuple[int, ...]
    edges: pd.DataFrame
    validation: dict
    notes: list = field(default_factory=list)

    @property
    def has_grid(self) -> bool:
        """Whether any edge has both Z and a measured delta (else the validation is n/a)."""
        return self.validation["n_edges"] > 0


def exact_spearman_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided exact permutation p of Spearman's rho: the share of all n! pairings of the ranks whose |rho| is
    at least the observed |rho| (ties get average ranks). For small n only (n! rows)."""
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    permuted = ry[np.array(list(itertools.permutations(range(len(ry)))))]
    rhos = permuted @ rx / (np.linalg.norm(rx) * np.linalg.norm(ry))
    observed = float(rx @ ry / (np.linalg.norm(rx) * np.linalg.norm(ry)))
    return float(np.mean(np.abs(rhos) >= abs(observed) - 1e-12))


def _ranks(values: Sequence[float]) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(np.asarray(values, dtype=float)).astype(float)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, str]:
    """(rho, two-sided p, how p was computed) of Spearman's rank correlation; (nan, nan, "n/a (why)") when undefined.

    rho comes from ``scipy.stats.spearmanr``. It is undefined for a constant vector and reported as n/a for
    fewer than MIN_SPEARMAN_N points (two points always give +-1). p is exact (``exact_spearman_p``) for up to
    EXACT_P_MAX_N points, where spearmanr's t approximation is poor (it gives p = 0 for three points in
    order); above that it is spearmanr's.
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_SPEARMAN_N:
        return math.nan, math.nan, f"n/a (fewer than {MIN_SPEARMAN_N} edges)"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, "n/a (constant values)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning and friends: NaN is reported as n/a
        result = spearmanr(x, y)
    rho, p = float(result.statistic), float(result.pvalue)
    if math.isnan(rho):
        return math.nan, math.nan, "n/a (undefined)"
    if len(x) <= EXACT_P_MAX_N:
        return rho, exact_spearman_p(x, y), "exact permutation"
    return rho, p, "t approximation"


def _share(hits: int, total: int) -> float:
    return hits / total if total else math.nan


def _total(values: list) -> float:
    """Sum, NaN if any value is unknown (a partial sum would understate a cost) or if there is none."""
    if not values or any(v is None or math.isnan(v) for v in values):
        return math.nan
    return float(sum(values))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


def validate_affinity(edges: pd.DataFrame, used: list[RunInfo], index: DomainRuns) -> dict:
    """Agreement of Z with the measured deltas, and what each cost.

    Edges: the ordered pairs s != t with both a mean Z and a measured delta (whether tested or not).
    spearman_rho/p: ``spearman`` of Z against delta over those edges. sign_agreement: share of them where
    sign(Z) == sign(delta) (numpy's sign: 0 only for exactly 0); sign_agreement_significant: the same over
    the green/red edges. preview_wall_s: train.wall_seconds summed over the affinity runs used; grid_wall_s:
    summed over the setting's done single and pair runs (every seed; what the deltas are computed from);
    time_ratio = preview_wall_s / grid_wall_s. tracking_overhead = wall of the affinity runs / wall of the plain
    all-task runs of the same seeds and tasks (seeds that have both). tracker_s: the trackers' own
    affinity.seconds, summed. A cost is NaN if any of its runs lacks its wall time.
    """
    both = edges[edges["z"].notna() & edges["delta"].notna()]
    agree = np.sign(both["z"].to_numpy(float)) == np.sign(both["delta"].to_numpy(float))
    significant = both["colour"].isin(["green", "red"]).to_numpy()
    rho, p, method = spearman(both["z"], both["delta"])
    grid = {r.run_id: r for kind in ("single", "pair") for r in index.runs[kind].values()}
    matched = [(r, index.get("all", "all", r.seed)) for r in used]
    matched = [(r, plain) for r, plain in matched if plain is not None and frozenset(plain.tasks) == frozenset(r.tasks)]
    preview_wall, grid_wall = _total([r.wall_seconds for r in used]), _total([r.wall_seconds for r in grid.values()])
    return {
        "n_edges": len(both), "spearman_rho": rho, "spearman_p": p, "p_method": method,
        "n_sign_agree": int(agree.sum()), "sign_agreement": _share(int(agree.sum()), len(both)),
        "n_significant": int(significant.sum()), "n_sign_agree_significant": int(agree[significant].sum()),
        "sign_agreement_significant": _share(int(agree[significant].sum()), int(significant.sum())),
        "affinity_runs": len(used), "affinity_seeds": " ".join(str(r.seed) for r in used),
        "preview_wall_s": preview_wall, "grid_wall_s": grid_wall, "n_grid_runs": len(grid),
        "time_ratio": _ratio(preview_wall, grid_wall),
        "plain_all_wall_s": _total([plain.wall_seconds for _, plain in matched]),
        "tracking_overhead": _ratio(_total([r.wall_seconds for r, _ in matched]),
                                    _total([plain.wall_seconds for _, plain in matched])),
        "tracker_s": _total([float((r.affinity or {}).get("seconds", math.nan)) for r in used]),
    } | _tracker_cost(used, preview_wall)


def _tracker_cost(used: list[RunInfo], preview_wall: float) -> dict:
    """The tracker's cost measured inside the affinity runs themselves: its seconds over the rest of the run.

    Unlike the ratio to a separate plain run, this does not depend on what else the machine was doing.
    """
    tracker = _total([float((r.affinity or {}).get("seconds", math.nan)) for r in used])
    return {"tracker_overhead": _ratio(tracker, preview_wall - tracker)}


def _affinity_block(run: RunInfo) -> tuple[list[str], np.ndarray] | None:
    """(tasks, matrix) of a done affinity run, None if it recorded no usable matrix."""
    block = run.affinity or {}
    names, matrix = block.get("tasks"), block.get("matrix")
    if not names or matrix is None:
        return None
    try:
        values = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError):
        return None
    return (list(names), values) if values.shape == (len(names), len(names)) else None


def _usable_affinity_runs(runs: list[RunInfo]) -> tuple[list[RunInfo], list[str]]:
    """Done affinity runs with a matrix, one per seed (the newest); notes on the others."""
    notes, by_seed = [], {}
    for run in sorted(runs, key=lambda r: r.run_id):
        if run.status != "done":
            notes.append(f"affinity run {run.run_id} (seed {run.seed}) is {run.status}: not used")
        elif _affinity_block(run) is None:
            notes.append(f"affinity run {run.run_id} (seed {run.seed}) recorded no affinity matrix (no measurement: "
                         "fewer training steps than affinity_every?): not used")
        elif run.seed in by_seed:
            older, newer = sorted([by_seed[run.seed], run], key=lambda r: (r.folder / "metrics.json").stat().st_mtime)
            notes.append(f"two done affinity runs for seed {run.seed}: {older.run_id} and {newer.run_id}; using the "
                         "newer")
            by_seed[run.seed] = newer
        else:
            by_seed[run.seed] = run
    return [by_seed[s] for s in sorted(by_seed)], notes


def affinity_preview(index: DomainRuns, runs: list[RunInfo], edges: pd.DataFrame,
                     table: TaskTable) -> tuple[AffinityPreview | None, list[str]]:
    """The setting's look-ahead preview: Z averaged over its usable affinity runs, per edge next to the measured
    delta and colour, and ``validate_affinity``; (None, notes) without a done affinity run."""
    used, notes = _usable_affinity_runs(runs)
    if not used:
        return None, notes
    tasks = _task_order(set(index.tasks) | {t for r in used for t in r.tasks}, index.setting.domain, table)
    position = {task: i for i, task in enumerate(tasks)}
    stack = np.full((len(used), len(tasks), len(tasks)), np.nan)
    for k, run in enumerate(used):
        names, values = _affinity_block(run)
        idx = [position[name] for name in names]
        stack[k][np.ix_(idx, idx)] = values
    counts = np.isfinite(stack).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (pairs no run measured) stay NaN
        z = np.nanmean(stack, axis=0)
        z_std = np.where(counts > 1, np.nanstd(stack, axis=0, ddof=1), np.nan)
    measured = {(row["source"], row["target"]): row for _, row in edges.iterrows()}
    rows = []
    for i, source in enumerate(tasks):
        for j, target in enumerate(tasks):
            if i == j:
                continue
            edge = measured.get((source, target))
            delta = math.nan if edge is None else float(edge["delta"])
            agree = None if math.isnan(z[i, j]) or math.isnan(delta) else bool(np.sign(z[i, j]) == np.sign(delta))
            rows.append({"source": source, "target": target, "z": float(z[i, j]), "z_std": float(z_std[i, j]),
                         "n_affinity_runs": int(counts[i, j]), "delta": delta,
                         "colour": "missing" if edge is None else edge["colour"], "sign_agree": agree})
    frame = pd.DataFrame(rows, columns=AFFINITY_EDGE_COLUMNS)
    validation = validate_affinity(frame, used, index)
    if validation["n_edges"] == 0:
        notes.append("no measured pairwise edge to compare with: validation n/a (preview only)")
    elif validation["n_edges"] < len(frame):
        notes.append(f"{validation['n_edges']} of {len(frame)} edges have both Z and a measured delta")
    blocks = [r.affinity or {} for r in used]
    preview = AffinityPreview(tasks, z, z_std, tuple(r.run_id for r in used), tuple(r.seed for r in used),
                              tuple(int(b.get("every", r.affinity_every)) for b, r in zip(blocks, used)),
                              tuple(int(b.get("num_batches", 0)) for b in blocks), frame, validation, notes)
    return preview, notes
