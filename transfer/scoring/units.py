"""Per-unit sufficient statistics of every metric, so that a resampled score is one matrix product.

A metric's *decomposition* turns a system's test predictions into one row of statistics per test unit (an
example; for HoC an abstract, its sentences' label sets pooled): counts and sums whose column totals determine
the score. A resample that takes unit i c_i times then has the totals ``c @ stats``, and ``score`` maps totals
(any leading shape) to scores, so thousands of replicates are scored at once. ``transfer.scoring.metrics``
pairs each metric function with its decomposition in one ``Metric`` record; the tests check that
``score(stats.sum(0))`` equals the metric on the full sample and on materialised resamples.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from transfer.data.tasks import TaskSpec


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
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
    return safe_ratio(sums[..., 0], sums[..., 1])


def _micro_stats(task: TaskSpec, gold: Sequence, pred: Sequence) -> np.ndarray:
    g, p = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    positive = set(_positive(task))
    gold_pos = np.fromiter((x in positive for x in g), dtype=bool, count=len(g))
    pred_pos = np.fromiter((x in positive for x in p), dtype=bool, count=len(p))
    correct = g == p
    return np.column_stack([correct & gold_pos, pred_pos & ~correct, gold_pos & ~correct]).astype(float)


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return safe_ratio(2 * tp, 2 * tp + fp + fn)


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


@functools.lru_cache(maxsize=1 << 18)
def _cached_spans(tags: tuple[str, ...]) -> frozenset:
    # One test set's gold sentences recur in every run, and many predicted ones (all O) recur too.
    return frozenset(entity_spans(tags))


def _entity_stats(task: TaskSpec, gold: Sequence, pred: Sequence) -> np.ndarray:
    rows = []
    for gold_tags, pred_tags in zip(gold, pred):
        gold_spans, pred_spans = _cached_spans(tuple(gold_tags)), _cached_spans(tuple(pred_tags))
        rows.append((len(gold_spans & pred_spans), len(pred_spans), len(gold_spans)))
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _entity_score(sums: np.ndarray) -> np.ndarray:
    return safe_ratio(2 * sums[..., 0], sums[..., 1] + sums[..., 2])


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
    r = safe_ratio(n * sxy - sx * sy, np.sqrt(np.where(defined, var_x * var_y, 0.0)))
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
    precision, recall = safe_ratio(sums[..., 0], sums[..., 2]), safe_ratio(sums[..., 1], sums[..., 2])
    return safe_ratio(2 * precision * recall, precision + recall)


@dataclass(frozen=True)
class Decomposition:
    """How a metric splits into per-unit statistics: ``unit`` is "uid" (one example) or "group" (pooled)."""

    unit: str
    stats: Callable[[TaskSpec, Sequence, Sequence], np.ndarray]
    score: Callable[[np.ndarray], np.ndarray]


ACCURACY = Decomposition("uid", _accuracy_stats, _accuracy_score)
MICRO_F1 = Decomposition("uid", _micro_stats, _micro_score)
MACRO_F1 = Decomposition("uid", _macro_stats, _macro_score)
ENTITY_F1 = Decomposition("uid", _entity_stats, _entity_score)
PEARSON = Decomposition("uid", _pearson_stats, _pearson_score)
HOC_F1 = Decomposition("group", _hoc_stats, _hoc_score)
