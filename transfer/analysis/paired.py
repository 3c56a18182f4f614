"""Predictions -> resampling units -> the paired bootstrap of one edge.

A test unit is an example (a sentence for tagging) or, for a metric that pools (HoC), a group. Both systems and
every seed are resampled with the *same* unit indices in each replicate (the test set is the same for every
seed); on each replicate the task's own metric is recomputed per system and seed from the per-unit statistics of
its ``transfer.scoring.metrics.METRICS`` record, and the per-seed deltas are averaged over seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from transfer.analysis.stats import bootstrap_p_value, resample_counts
from transfer.data.tasks import TaskSpec
from transfer.scoring.metrics import METRICS

logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05
_CHUNK_CELLS = 4_000_000  # replicates x units per resampling chunk (~32 MB of float64)


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
    decomposition = METRICS[metric].units
    units = unit_data(records, decomposition.unit)
    return units.keys, decomposition.stats(task, units.gold, units.pred)


def decomposed_score(task: TaskSpec, metric: str, records: list[dict]) -> float:
    """``metric`` on the full sample of ``records`` through its decomposition (equals transfer.scoring.metrics)."""
    _, stats = unit_statistics(task, metric, records)
    return float(METRICS[metric].units.score(stats.sum(axis=0)))


@dataclass(frozen=True)
class BootstrapResult:
    """Observed seed-averaged delta (from predictions), its replicates, p-value and percentile interval."""

    delta: float
    replicates: np.ndarray
    p_value: float
    ci_low: float
    ci_high: float
    n_units: int


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
    decomposition = METRICS[metric].units
    units = [unit_data(records, decomposition.unit) for pair_single in systems for records in pair_single]
    aligned, dropped = _align(units)
    if dropped:
        logger.warning("%s: %d test unit(s) are not shared by every run and seed; they are left out", task.name, dropped)
    n_units = len(aligned[0].keys)
    if n_units == 0:
        raise ValueError(f"{task.name}: the runs share no test example (uids differ)")
    paired = [(aligned[i], aligned[i + 1]) for i in range(0, len(aligned), 2)]
    stats = np.stack([np.stack([decomposition.stats(task, u.gold, u.pred) for u in pair_single], axis=1)
                      for pair_single in paired], axis=1)  # (units, seeds, 2, k)
    full = decomposition.score(stats.sum(axis=0))
    observed = float((full[:, 0] - full[:, 1]).mean())
    replicates = _paired_replicates(stats, decomposition.score, n_boot, rng)
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(observed, replicates, bootstrap_p_value(observed, replicates), float(low), float(high), n_units)
