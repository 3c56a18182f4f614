"""Tests for transfer.scoring.metrics: every metric against small cases worked out by hand (the arithmetic is in comments)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from transfer.data import tasks as task_module
from transfer.scoring.metrics import (
    METRICS,
    PRF,
    accuracy,
    compute_metric,
    entity_f1,
    hoc_f1,
    macro_f1,
    micro_f1,
    pearson,
    score_task,
)

CHEMPROT_LABELS = ["CPR:3", "CPR:4", "CPR:5", "CPR:6", "CPR:9", "false"]

# CPR:5 and CPR:6 occur nowhere in this "split".
GOLD = ["CPR:3", "CPR:3", "CPR:4", "false", "false", "false", "CPR:9"]
PRED = ["CPR:3", "CPR:4", "CPR:4", "CPR:3", "false", "false", "false"]
# Positive classes only (false excluded):
#   TP = rows 0 (CPR:3) and 2 (CPR:4)                         -> 2
#   FP = row 1 (CPR:4 for CPR:3), row 3 (CPR:3 for false)     -> 2
#   FN = row 1 (gold CPR:3 missed), row 6 (gold CPR:9 missed) -> 2
#   micro P = 2/4, R = 2/4, F1 = 1/2.   (Counting `false` as a class would give accuracy 4/7 instead.)
# Per class:
#   CPR:3: gold 2, pred 2, TP 1 -> P 1/2, R 1/2, F 1/2
#   CPR:4: gold 1, pred 2, TP 1 -> P 1/2, R 1,   F 2/3
#   CPR:5, CPR:6: absent        -> 0, 0, 0
#   CPR:9: gold 1, pred 0       -> 0, 0, 0
#   macro P = (1/2 + 1/2)/5 = 1/5, R = (1/2 + 1)/5 = 3/10, F1 = (1/2 + 2/3)/5 = 7/30
#   (averaging only over the classes present, CPR:3/4/9, would give 7/18 instead)


def _approx(*values):
    return pytest.approx(values)


def test_registry_covers_every_metric_name():
    """transfer.data.tasks keeps the valid names (data never imports scoring); they must be the registry's."""
    assert set(METRICS) == set(task_module.METRICS)


def test_every_metric_record_has_its_function_decomposition_and_name():
    from transfer.scoring.units import Decomposition

    for name, metric in METRICS.items():
        assert metric.name == name and metric.display and callable(metric.score)
        assert isinstance(metric.units, Decomposition) and metric.units.unit in ("uid", "group")
    assert len({m.display for m in METRICS.values()}) == len(METRICS)


def test_micro_f1_excludes_the_negative_label():
    assert micro_f1(GOLD, PRED, CHEMPROT_LABELS, "false") == _approx(0.5, 0.5, 0.5)
    # Without a negative label every class counts: micro-F1 = accuracy = 4/7.
    assert micro_f1(GOLD, PRED, CHEMPROT_LABELS, None).f1 == pytest.approx(4 / 7)


def test_micro_f1_absent_class_and_label_order_change_nothing():
    only_present = ["CPR:3", "CPR:4", "CPR:9", "false"]
    reordered = list(reversed(CHEMPROT_LABELS))
    assert micro_f1(GOLD, PRED, only_present, "false") == micro_f1(GOLD, PRED, CHEMPROT_LABELS, "false")
    assert micro_f1(GOLD, PRED, reordered, "false") == micro_f1(GOLD, PRED, CHEMPROT_LABELS, "false")


def test_micro_f1_nothing_positive_is_zero():
    # Gold and predictions all `false`: no positive TP/FP/FN -> P = R = F1 = 0 (zero_division=0).
    assert micro_f1(["false"] * 3, ["false"] * 3, CHEMPROT_LABELS, "false") == (0.0, 0.0, 0.0)


def test_macro_f1_counts_absent_classes_as_zero():
    result = macro_f1(GOLD, PRED, CHEMPROT_LABELS, "false")
    assert isinstance(result, PRF)
    assert result == _approx(1 / 5, 3 / 10, 7 / 30)
    # Dropping the absent classes from the list changes the average: (1/2 + 2/3 + 0)/3 = 7/18.
    assert macro_f1(GOLD, PRED, ["CPR:3", "CPR:4", "CPR:9", "false"], "false").f1 == pytest.approx(7 / 18)


def test_class_metrics_reject_unknown_labels_and_bad_lengths():
    with pytest.raises(ValueError, match="CPR:7"):
        micro_f1(GOLD, PRED[:-1] + ["CPR:7"], CHEMPROT_LABELS, "false")
    with pytest.raises(ValueError, match="7 gold values but 6 predictions"):
        macro_f1(GOLD, PRED[:-1], CHEMPROT_LABELS, "false")
    with pytest.raises(ValueError, match="negative label"):
        micro_f1(GOLD, PRED, CHEMPROT_LABELS, "none")
    with pytest.raises(ValueError, match="nothing to score"):
        micro_f1([], [], CHEMPROT_LABELS, "false")


def test_accuracy():
    # rows 0 and 2 agree: 2/4
    assert accuracy(["a", "b", "c", "d"], ["a", "x", "c", "x"]) == 0.5


def test_pearson_hand_worked():
    # gold 1,2,3 and pred 1,3,2: deviations (-1,0,1) and (-1,1,0); covariance sum 1, variance sums 2 and 2
    # -> r = 1 / sqrt(2 * 2) = 0.5
    assert pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)


def test_pearson_constant_predictions_is_zero_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="transfer.scoring.metrics"):
        assert pearson([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 0.0
    assert "constant" in caplog.text and "undefined" in caplog.text
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0  # constant gold: undefined too


def test_pearson_rejects_non_finite_values():
    with pytest.raises(ValueError, match="finite"):
        pearson([1.0, 2.0], [float("nan"), 1.0])


# --- entity F1 (conlleval semantics, untyped B/I/O) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        # I after O starts an entity: gold (1-2) = pred (1-2)
        ([["O", "I", "I", "O"]], [["O", "B", "I", "O"]], (1.0, 1.0, 1.0)),
        # B B I: two gold entities (0-0), (1-2); pred (0-2) matches neither -> 0/1, 0/2
        ([["B", "B", "I", "O"]], [["B", "I", "I", "O"]], (0.0, 0.0, 0.0)),
        # pred (0-0), (1-1): (0-0) is right -> P 1/2, R 1/2
        ([["B", "B", "I", "O"]], [["B", "B", "O", "O"]], (0.5, 0.5, 0.5)),
        # entity at the sentence end: exact match, then a pred one word short
        ([["O", "B", "I"]], [["O", "B", "I"]], (1.0, 1.0, 1.0)),
        ([["O", "B", "I"]], [["O", "B", "O"]], (0.0, 0.0, 0.0)),
        # no gold entity, one predicted: P 0/1, R 0/0 -> 0 (conlleval)
        ([["O", "O", "O"]], [["O", "B", "O"]], (0.0, 0.0, 0.0)),
        # no entity at all: conlleval prints 0.00 for P, R and F1
        ([["O", "O"]], [["O", "O"]], (0.0, 0.0, 0.0)),
        # sentences are scored apart: an I opening sentence 2 does not extend sentence 1's entity
        ([["B", "I"], ["I", "O"]], [["B", "I"], ["B", "O"]], (1.0, 1.0, 1.0)),
    ],
)
def test_entity_f1_conlleval_cases(gold, pred, expected):
    assert entity_f1(gold, pred) == _approx(*expected)


def test_entity_f1_several_sentences():
    gold = [("B", "I", "O", "B"), ("O", "I", "O"), ("B", "B", "I")]
    pred = [("B", "I", "O", "O"), ("O", "B", "O"), ("B", "I", "I")]
    # gold entities: (0-1), (3-3) | (1-1) | (0-0), (1-2)  -> 5
    # pred entities: (0-1)        | (1-1) | (0-2)         -> 3, of which (0-1) and (1-1) are right -> TP 2
    # P = 2/3, R = 2/5, F1 = 2 * (2/3 * 2/5) / (2/3 + 2/5) = (8/15) / (16/15) = 1/2
    assert entity_f1(gold, pred) == _approx(2 / 3, 2 / 5, 1 / 2)


def test_entity_f1_rejects_length_mismatch():
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags but 1 predicted tags"):
        entity_f1([["O"], ["B", "I"]], [["O"], ["B"]])


# --- HoC: BLUE's example-based F1 per abstract ---------------------------------------------------------------

HOC_LABELS = ["a", "b", "c"]
# sentence label sets, with the abstracts' sentences interleaved on purpose
HOC_GOLD = [("a",), (), ("c",), ("b",), (), ("a", "b"), ("a",), ()]
HOC_PRED = [(), ("c",), (), ("a",), (), ("a", "b", "c"), (), ()]
HOC_GROUPS = ["P1", "P2", "P2", "P1", "P3", "P4", "P5", "P3"]
# pooled per abstract (union)      |gold & pred|   P      R
#   P1 gold {a,b}  pred {a}              1          1      1/2
#   P2 gold {c}    pred {c}              1          1      1
#   P3 gold {}     pred {}               -          1      1     (both empty: a correct "nothing")
#   P4 gold {a,b}  pred {a,b,c}          2          2/3    1
#   P5 gold {a}    pred {}               0          0      0     (BLUE: empty prediction -> P 0)
# mean P = (1 + 1 + 1 + 2/3 + 0)/5 = 11/15; mean R = (1/2 + 1 + 1 + 1 + 0)/5 = 7/10
# F1 = 2 * (11/15) * (7/10) / (11/15 + 7/10) = (154/150) / (43/30) = 154/215
# (the mean of per-abstract F1s, (2/3 + 1 + 1 + 4/5 + 0)/5 = 52/75, is *not* BLUE's score)


def test_hoc_f1_pools_sentences_per_abstract():
    assert hoc_f1(HOC_GOLD, HOC_PRED, HOC_GROUPS, HOC_LABELS) == _approx(11 / 15, 7 / 10, 154 / 215)


def test_hoc_f1_skip_empty_gold():
    # without P3: mean P = (1 + 1 + 2/3 + 0)/4 = 2/3, mean R = (1/2 + 1 + 1 + 0)/4 = 5/8
    # F1 = 2 * (2/3)(5/8) / (2/3 + 5/8) = (5/6) / (31/24) = 20/31
    result = hoc_f1(HOC_GOLD, HOC_PRED, HOC_GROUPS, HOC_LABELS, skip_empty_gold=True)
    assert result == _approx(2 / 3, 5 / 8, 20 / 31)


def test_hoc_f1_false_alarm_on_an_abstract_without_gold():
    # Q1 gold {} pred {a}: P 0, R 0;  Q2 gold {b} pred {b}: P 1, R 1 -> means 1/2, 1/2 -> F1 1/2
    assert hoc_f1([(), ("b",)], [("a",), ("b",)], ["Q1", "Q2"], HOC_LABELS) == _approx(0.5, 0.5, 0.5)


def test_hoc_f1_rejects_unknown_labels():
    with pytest.raises(ValueError, match="z"):
        hoc_f1([("a",)], [("z",)], ["P1"], HOC_LABELS)


# --- the registry: one signature for every metric ------------------------------------------------------------


def test_score_task_primary_and_extra(table):
    scores = score_task(table.task("chemprot"), GOLD, PRED)
    assert list(scores) == ["micro_f1", "macro_f1"]
    assert scores == {"micro_f1": pytest.approx(0.5), "macro_f1": pytest.approx(7 / 30)}


def test_compute_metric_for_every_kind(table):
    mednli = table.task("mednli")
    assert compute_metric("accuracy", mednli, ["entailment", "neutral"], ["entailment", "entailment"]) == 0.5
    assert compute_metric("pearson", table.task("biosses"), [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
    gold = [("O", "B", "I")]
    assert compute_metric("entity_f1", table.task("bc5cdr-chemical"), gold, [("O", "B", "O")]) == 0.0
    hoc = table.task("hoc")
    names = hoc.labels
    gold_sets = [(names[0],), (names[1],)]
    pred_sets = [(names[0],), ()]
    # one abstract: gold {0, 1}, pred {0} -> P 1, R 1/2 -> F1 2/3
    assert compute_metric("hoc_f1", hoc, gold_sets, pred_sets, groups=["1", "1"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="needs groups"):
        compute_metric("hoc_f1", hoc, gold_sets, pred_sets)
    with pytest.raises(KeyError, match="unknown metric 'bleu'"):
        compute_metric("bleu", hoc, gold_sets, pred_sets)


def test_metrics_module_does_not_import_torch():
    code = "import sys, transfer.scoring.metrics; print('torch' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert result.stdout.strip() == "False"
