"""Scores for every task kind: pure functions of gold and predicted labels (no torch, no model).

Gold and predictions come per example, in the form of ``Example.label``: a label name (classification), a float
(regression), a tuple of tags (tagging) or a tuple of active label names (multilabel). Every function that
counts classes takes the label list explicitly, so a class absent from a small split never shifts anything.

``METRICS`` is the one registry of metrics: per name of the task table, a ``Metric`` record with its function
(one signature, ``(task, gold, pred, groups) -> float``), its per-unit decomposition for resampling
(``transfer.scoring.units``) and its display name. A new metric is a function here, a decomposition there and one
record below (plus its name in ``transfer.data.tasks.METRICS``, which a test checks against this registry).
``compute_metric`` and ``score_task`` are the entry points the trainer and the analysis use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from transfer.data.tasks import TaskSpec
from transfer.scoring import units
from transfer.scoring.units import Decomposition

logger = logging.getLogger(__name__)

MetricFn = Callable[[TaskSpec, Sequence[Any], Sequence[Any], "Sequence[str] | None"], float]


class PRF(NamedTuple):
    """Precision, recall and F1, each in [0, 1]."""

    precision: float
    recall: float
    f1: float


def _check_lengths(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold values but {len(pred)} predictions")
    if len(gold) == 0:
        raise ValueError("nothing to score: no gold values and no predictions")


def _check_known(values: Sequence, labels: Sequence[str], what: str) -> None:
    unknown = sorted({str(value) for value in values} - set(labels))
    if unknown:
        raise ValueError(f"{what} hold label(s) {', '.join(unknown)} not in the label list {', '.join(labels)}")


def _positive_labels(labels: Sequence[str], negative_label: str | None) -> list[str]:
    if negative_label is not None and negative_label not in labels:
        raise ValueError(f"negative label {negative_label!r} is not in the label list {', '.join(labels)}")
    return [label for label in labels if label != negative_label]


def _class_prf(
    gold: Sequence[str], pred: Sequence[str], labels: Sequence[str], negative_label: str | None, average: str
) -> PRF:
    _check_lengths(gold, pred)
    _check_known(gold, labels, "gold values")
    _check_known(pred, labels, "predictions")
    positive = _positive_labels(labels, negative_label)
    from sklearn.metrics import precision_recall_fscore_support  # lazy: the analysis reads the registry only

    precision, recall, f1, _ = precision_recall_fscore_support(
        list(gold), list(pred), labels=positive, average=average, zero_division=0
    )
    return PRF(float(precision), float(recall), float(f1))


def micro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str], negative_label: str | None = None) -> PRF:
    """Micro-averaged P/R/F1 over every label except ``negative_label`` (the "no relation" class).

    True positives, false positives and false negatives are pooled over the positive labels only: predicting
    the negative label is never a hit, and a gold negative predicted as a positive class is a false positive.
    """
    return _class_prf(gold, pred, labels, negative_label, "micro")


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str], negative_label: str | None = None) -> PRF:
    """Macro-averaged P/R/F1: the unweighted mean over every positive label in ``labels``.

    Choice: every positive label in the list counts, *even one absent from this split* (neither gold nor
    predicted); its P, R and F1 are 0, so it pulls the mean down. The average is thus always over the same
    classes, whatever the split holds. (For the public i2b2 stand-in, where only 3 of the 8 types occur, the
    macro-F1 is therefore at most 3/8.)
    """
    return _class_prf(gold, pred, labels, negative_label, "macro")


def accuracy(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    """Fraction of examples whose prediction equals the gold value."""
    _check_lengths(gold, pred)
    return sum(g == p for g, p in zip(gold, pred)) / len(gold)


def pearson(gold: Sequence[float], pred: Sequence[float]) -> float:
    """Pearson's r between gold scores and predictions (scipy).

    r is undefined when either side is constant (zero variance), e.g. a regression head that has collapsed to
    one value early in training. Then this returns 0.0 ("no linear relation") and logs a warning, instead of
    NaN, so that model selection and averaging over seeds keep working.
    """
    _check_lengths(gold, pred)
    gold_array = np.asarray(gold, dtype=float)
    pred_array = np.asarray(pred, dtype=float)
    if not (np.isfinite(gold_array).all() and np.isfinite(pred_array).all()):
        raise ValueError("pearson: gold values and predictions must be finite numbers")
    for name, values in (("predictions", pred_array), ("gold values", gold_array)):
        if np.ptp(values) == 0:
            logger.warning("pearson: the %s are constant (%g), r is undefined; returning 0.0", name, values[0])
            return 0.0
    from scipy import stats

    return float(stats.pearsonr(gold_array, pred_array).statistic)


def entity_f1(gold_sentences: Sequence[Sequence[str]], pred_sentences: Sequence[Sequence[str]]) -> PRF:
    """Entity-level exact-match P/R/F1 over words, with conlleval semantics (seqeval's default mode).

    Tags are untyped ``B``/``I``/``O``; an entity starts at ``B``, or at an ``I`` that follows ``O`` or the
    sentence start, and runs over the following ``I`` tags. A predicted entity counts only if its first and last
    word equal those of a gold entity. As in conlleval, P (R) is 0 when nothing is predicted (no gold entity).
    """
    _check_lengths(gold_sentences, pred_sentences)
    for number, (gold, pred) in enumerate(zip(gold_sentences, pred_sentences)):
        if len(gold) != len(pred):
            raise ValueError(f"sentence {number}: {len(gold)} gold tags but {len(pred)} predicted tags")
    gold_lists = [list(tags) for tags in gold_sentences]
    pred_lists = [list(tags) for tags in pred_sentences]
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support as entity_prfs

    precision, recall, f1, _ = entity_prfs(gold_lists, pred_lists, average="micro", zero_division=0)
    return PRF(float(precision), float(recall), float(f1))


def _pool_by_group(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], groups: Sequence[str]
) -> dict[str, tuple[set[str], set[str]]]:
    """``{group: (union of gold label sets, union of predicted label sets)}``, groups in order of appearance."""
    pooled: dict[str, tuple[set[str], set[str]]] = {}
    for gold_set, pred_set, group in zip(gold, pred, groups):
        gold_union, pred_union = pooled.setdefault(group, (set(), set()))
        gold_union.update(gold_set)
        pred_union.update(pred_set)
    return pooled


def _abstract_pr(gold: set[str], pred: set[str]) -> tuple[float, float]:
    if not gold and not pred:
        return 1.0, 1.0  # nothing to find and nothing claimed: a correct answer (undefined in BLUE's script)
    hits = len(gold & pred)
    precision = hits / len(pred) if pred else 0.0  # BLUE: precision 0 when nothing is predicted
    recall = hits / len(gold) if gold else 0.0  # BLUE divides by zero here; we score a false alarm 0
    return precision, recall


def hoc_f1(
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    groups: Sequence[str],
    labels: Sequence[str],
    skip_empty_gold: bool = False,
) -> PRF:
    """BLUE's HoC score: example-based P/R/F1 at the abstract level.

    Sentence label sets are pooled per group (abstract, the PMID) by union. For each abstract,
    P = |gold & pred| / |pred| and R = |gold & pred| / |gold|; P and R are averaged over abstracts and F1 is the
    harmonic mean of the two averages (not the mean of per-abstract F1s), as BLUE's ``eval_hoc.py`` does.

    Empty sets, following BLUE's ``eval_hoc.py`` (ncbi-nlp/BLUE_Benchmark, blue/eval_hoc.py,
    ``get_p_r_f_arrary``): an empty prediction gives P = 0 (and R = 0 when gold is non-empty). BLUE never meets
    an abstract with an empty gold set (its HoC split kept only abstracts with a hallmark, and its script would
    divide by zero), so here: both empty -> P = R = 1; gold empty, prediction non-empty -> P = R = 0.
    ``skip_empty_gold=True`` leaves abstracts without gold labels out, like BLUE's evaluation set.
    """
    _check_lengths(gold, pred)
    if len(groups) != len(gold):
        raise ValueError(f"{len(gold)} gold values but {len(groups)} groups")
    _check_known([label for labels_on in gold for label in labels_on], labels, "gold values")
    _check_known([label for labels_on in pred for label in labels_on], labels, "predictions")
    pooled = _pool_by_group(gold, pred, groups)
    scores = [_abstract_pr(g, p) for g, p in pooled.values() if g or not skip_empty_gold]
    if not scores:
        raise ValueError("hoc_f1: no abstract left to score")
    precision = float(np.mean([p for p, _ in scores]))
    recall = float(np.mean([r for _, r in scores]))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return PRF(precision, recall, f1)


# ---------------------------------------------------------------------------------------------------------------
# One signature per metric name: (task, gold, pred, groups) -> primary score
# ---------------------------------------------------------------------------------------------------------------


def _micro(task: TaskSpec, gold: Sequence, pred: Sequence, groups: Sequence[str] | None = None) -> float:
    return micro_f1(gold, pred, task.labels, task.negative_label).f1


def _macro(task: TaskSpec, gold: Sequence, pred: Sequence, groups: Sequence[str] | None = None) -> float:
    return macro_f1(gold, pred, task.labels, task.negative_label).f1


def _accuracy(task: TaskSpec, gold: Sequence, pred: Sequence, groups: Sequence[str] | None = None) -> float:
    return accuracy(gold, pred)


def _pearson(task: TaskSpec, gold: Sequence, pred: Sequence, groups: Sequence[str] | None = None) -> float:
    return pearson(gold, pred)


def _entity(task: TaskSpec, gold: Sequence, pred: Sequence, groups: Sequence[str] | None = None) -> float:
    return entity_f1(gold, pred).f1


def _hoc(task: TaskSpec, gold: Sequence, pred: Sequence, groups: Sequence[str] | None = None) -> float:
    if groups is None:
        raise ValueError(f"task {task.name!r}: hoc_f1 pools per abstract and needs groups (Example.group)")
    return hoc_f1(gold, pred, groups, task.labels).f1


@dataclass(frozen=True)
class Metric:
    """Everything the project knows of one metric: its function, its decomposition and its display name."""

    name: str
    display: str  # as tables and figures print it
    score: MetricFn
    units: Decomposition  # per-unit statistics for the vectorised resampling of transfer.analysis


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("entity_f1", "entity F1", _entity, units.ENTITY_F1),
    Metric("micro_f1", "micro-F1", _micro, units.MICRO_F1),
    Metric("macro_f1", "macro-F1", _macro, units.MACRO_F1),
    Metric("accuracy", "accuracy", _accuracy, units.ACCURACY),
    Metric("pearson", "Pearson r", _pearson, units.PEARSON),
    Metric("hoc_f1", "HoC F1", _hoc, units.HOC_F1),
)}


def display_name(name: str) -> str:
    """The metric's display name; the bare name for one the registry lacks (a table from a newer version)."""
    return METRICS[name].display if name in METRICS else name


def compute_metric(
    name: str, task: TaskSpec, gold: Sequence, pred: Sequence, groups: Sequence[str] | None = None
) -> float:
    """Score ``pred`` against ``gold`` with metric ``name``: a float in [0, 1] (Pearson: [-1, 1])."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return METRICS[name].score(task, gold, pred, groups)


def score_task(task: TaskSpec, gold: Sequence, pred: Sequence, groups: Sequence[str] | None = None) -> dict[str, float]:
    """The task's primary metric (key ``task.metric``, first) and every extra metric, by name."""
    return {name: compute_metric(name, task, gold, pred, groups) for name in (task.metric, *task.extra_metrics)}
