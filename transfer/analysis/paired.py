"""Predictions -> resampling units -> clusters -> the paired bootstrap of one edge.

A test unit is an example (a sentence for tagging) or, for a metric that pools (HoC), a group. Units are not
independent where they share a document (relation rows of one abstract, sentences of one clinical note), so the
bootstrap resamples *clusters*: a unit's cluster is the record's ``cluster`` (written with the predictions), for
older prediction files ``transfer.data.readers.legacy_cluster`` of its uid, and else the unit itself. Metrics are
functions of column sums of per-unit statistics, so summing the statistics within each cluster and resampling
cluster rows is exactly the cluster bootstrap. Both systems and every seed are resampled with the *same* cluster
indices in each replicate (the test set is the same for every seed); on each replicate the task's own metric is
recomputed per system and seed from its ``transfer.scoring.metrics.METRICS`` record, and the per-seed deltas are
averaged over seeds.
"""

from __future__ import annotations

import dataclasses
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
    clusters: tuple | None = None  # per unit: its cluster (document, abstract) or None (its own cluster)


def _cluster_of(task: TaskSpec | None, record: dict):
    """A record's cluster: its ``cluster`` field, else what the reader derives from the uid (older files)."""
    if record.get("cluster") is not None:
        return str(record["cluster"])
    if task is not None and _legacy_cluster is not None:
        return _legacy_cluster(task, str(record["uid"]))
    return None


try:  # prediction files written before records carried their cluster
    from transfer.data.readers import legacy_cluster as _legacy_cluster
except ImportError:  # pragma: no cover - a reader module without it: every unit is its own cluster
    _legacy_cluster = None


def _pool_groups(records: list[dict], task: TaskSpec | None) -> UnitData:
    pooled: dict[str, tuple[set, set]] = {}
    clusters: dict[str, object] = {}
    for record in records:
        key = str(record["group"])
        gold_set, pred_set = pooled.setdefault(key, (set(), set()))
        gold_set.update(record["gold"])
        pred_set.update(record["pred"])
        clusters.setdefault(key, _cluster_of(task, record))
    return UnitData(tuple(pooled), tuple(g for g, _ in pooled.values()), tuple(p for _, p in pooled.values()),
                    tuple(clusters[key] for key in pooled))


def unit_data(records: list[dict], unit: str, task: TaskSpec | None = None) -> UnitData:
    """Predictions as resampling units: examples keyed by uid, or label sets pooled per group; each with its
    cluster (``task`` lets older records derive it from the uid)."""
    if unit == "group":
        if any("group" not in record for record in records):
            raise ValueError("records lack the 'group' field that this metric resamples by")
        return _pool_groups(records, task)
    return UnitData(tuple(str(record["uid"]) for record in records), tuple(record["gold"] for record in records),
                    tuple(record["pred"] for record in records), tuple(_cluster_of(task, r) for r in records))


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
    """The paired (clustered) bootstrap of one edge.

    delta: observed seed-mean delta (from predictions); seed_deltas: the observed delta of each seed;
    replicates: the seed-mean delta of each resample, seed_replicates the per-seed deltas (resamples x seeds);
    p_value, ci_low/ci_high: the test-units-only bootstrap p and percentile interval (the reference test,
    conditional on the trained checkpoints); var_test: the test-set part of the edge's variance (see there).
    """

    delta: float
    replicates: np.ndarray
    p_value: float
    ci_low: float
    ci_high: float
    n_units: int
    seed_deltas: tuple[float, ...] = ()
    n_clusters: int = 0
    seed_replicates: np.ndarray | None = None

    @property
    def var_test(self) -> float:
        """The variance of the seed-mean delta that comes from sampling the test set, *shared by all seeds*: the mean
        covariance, over resamples, of the deltas of two different seeds. The seed-specific part of test-set noise
        (each seed's model erring on other units) already shows in the between-seed variance of the deltas, so
        counting it here too would count it twice. With one seed: the resampling variance of its delta."""
        return shared_variance(self.seed_replicates if self.seed_replicates is not None else self.replicates[:, None])


def shared_variance(seed_replicates: np.ndarray) -> float:
    """Mean off-diagonal covariance of the columns of (resamples, seeds) (>= 0); one column: its variance."""
    reps = np.asarray(seed_replicates, dtype=float)
    b, k = reps.shape
    if b < 2:
        return float("nan")
    if k == 1:
        return float(reps[:, 0].var(ddof=1))
    var_of_sum = float(reps.sum(axis=1).var(ddof=1))
    sum_of_vars = float(reps.var(axis=0, ddof=1).sum())
    return max(0.0, (var_of_sum - sum_of_vars) / (k * (k - 1)))


def cluster_sums(stats: np.ndarray, clusters) -> np.ndarray:
    """Per-unit statistics summed within clusters (rows in order of first appearance); a None cluster is the
    unit's own. Resampling these rows is the cluster bootstrap of any metric of the column sums."""
    keys: dict = {}
    index = np.array([keys.setdefault(("unit", i) if c is None else ("cluster", c), len(keys))
                      for i, c in enumerate(clusters)], dtype=np.int64)
    out = np.zeros((len(keys), *stats.shape[1:]))
    np.add.at(out, index, stats)
    return out


def _paired_replicates(stats: np.ndarray, score: Callable, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """stats: (units, seeds, 2, k), system 0 = pair run, 1 = single run; returns (n_boot, seeds) per-seed deltas."""
    n_units, n_seeds, _, k = stats.shape
    flat = stats.reshape(n_units, -1)
    out = np.empty((n_boot, n_seeds))
    chunk = max(1, _CHUNK_CELLS // max(n_units, 1))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        sums = (resample_counts(rng, n_units, stop - start) @ flat).reshape(-1, n_seeds, 2, k)
        scores = score(sums)
        out[start:stop] = scores[..., 0] - scores[..., 1]
    return out


def _align(units: list[UnitData]) -> tuple[list[np.ndarray], tuple, tuple, int]:
    """The units every system shares, in the first system's order: (row indices per system, keys, clusters,
    units dropped). Refuses systems whose gold labels differ on a shared unit (not the same test set)."""
    common = set(units[0].keys).intersection(*(u.keys for u in units[1:]))
    order = [key for key in units[0].keys if key in common]
    dropped = max(len(u.keys) for u in units) - len(order)
    indices = []
    for u in units:
        position = {key: i for i, key in enumerate(u.keys)}
        indices.append(np.array([position[key] for key in order], dtype=np.int64))
    first = [_canonical(units[0].gold[i]) for i in indices[0]]
    for u, idx in zip(units[1:], indices[1:]):
        if u.gold is units[0].gold and np.array_equal(idx, indices[0]):
            continue
        differ = next((key for key, a, i in zip(order, first, idx) if a != _canonical(u.gold[i])), None)
        if differ is not None:
            raise ValueError(f"gold labels of test unit {differ!r} differ between runs: were they scored on the "
                             "same test set?")
    clusters = tuple(units[0].clusters[i] for i in indices[0]) if units[0].clusters else (None,) * len(order)
    return indices, tuple(order), clusters, dropped


def _canonical(gold):
    return tuple(sorted(gold)) if isinstance(gold, (set, frozenset)) else gold


def paired_bootstrap(stats: np.ndarray, score: Callable, n_boot: int, rng: np.random.Generator,
                     alpha: float = DEFAULT_ALPHA) -> BootstrapResult:
    """The bootstrap of resampling rows ``stats`` (rows, seeds, 2, k): system 0 = pair run, 1 = single run."""
    full = score(stats.sum(axis=0))
    seed_deltas = full[:, 0] - full[:, 1]
    observed = float(seed_deltas.mean())
    per_seed = _paired_replicates(stats, score, n_boot, rng)
    replicates = per_seed.mean(axis=1)
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(observed, replicates, bootstrap_p_value(observed, replicates), float(low), float(high),
                           len(stats), tuple(float(d) for d in seed_deltas), len(stats), per_seed)


def bootstrap_edge(task: TaskSpec, metric: str, systems: list[tuple[list[dict], list[dict]]], n_boot: int,
                   rng: np.random.Generator, alpha: float = DEFAULT_ALPHA, clustered: bool = True,
                   memo: dict | None = None) -> BootstrapResult:
    """Paired bootstrap of the seed-averaged delta; ``systems`` holds (pair records, single records) per seed.

    ``clustered`` resamples clusters (the default); False resamples units (rows), for comparison. ``memo``: a dict
    kept across the edges of a setting, so each predictions list is reduced to statistics once.
    """
    decomposition = METRICS[metric].units
    memo = {} if memo is None else memo
    prepared = [_prepared(task, metric, records, memo) for pair_single in systems for records in pair_single]
    indices, keys, clusters, dropped = _align([units for units, _ in prepared])
    if dropped:
        logger.warning("%s: %d test unit(s) are not shared by every run and seed; they are left out", task.name, dropped)
    n_units = len(keys)
    if n_units == 0:
        raise ValueError(f"{task.name}: the runs share no test example (uids differ)")
    rows = [stats[idx] for (_, stats), idx in zip(prepared, indices)]
    stats = np.stack([np.stack(rows[i:i + 2], axis=1) for i in range(0, len(rows), 2)], axis=1)  # (units, seeds, 2, k)
    if clustered:
        stats = cluster_sums(stats, clusters)
    result = paired_bootstrap(stats, decomposition.score, n_boot, rng, alpha)
    return dataclasses.replace(result, n_units=n_units)


def _prepared(task: TaskSpec, metric: str, records: list[dict], memo: dict) -> tuple[UnitData, np.ndarray]:
    """(units, per-unit statistics) of one predictions list, computed once per list (``memo``, keyed by identity:
    a single run's predictions serve every edge into its task)."""
    key = (id(records), task.name, metric)
    if key not in memo:
        decomposition = METRICS[metric].units
        units = unit_data(records, decomposition.unit, task)
        memo[key] = (records, units, decomposition.stats(task, units.gold, units.pred))
    _, units, stats = memo[key]
    return units, stats
