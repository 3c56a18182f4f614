"""What an edge is evidence of: the learning gate of a task-run, the provenance check of an edge's runs, and the
evidence state of an edge (helps, hurts, equivalent, inconclusive, exploratory, n/a).

States (the same in the graph, the heatmap, the tables and every legend):
    helps / hurts  significant after correction (Holm across the edges of a setting by default) and |delta| above
                   the margin, positive / negative;
    equivalent     the two one-sided tests show delta within +/- margin (corrected like the significance test);
    inconclusive   tested, but neither;
    exploratory    fewer seeds than ``min_seeds`` (never fewer than ``MIN_COLOURED_SEEDS``): the delta is shown,
                   never coloured;
    n/a            a run is missing, its predictions are, or a task-run failed the learning gate (the reason says).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from transfer.data.tasks import TaskSpec
from transfer.errors import UserError

STATES = ("helps", "hurts", "equivalent", "inconclusive", "exploratory", "n/a")
SIGNIFICANT = ("helps", "hurts")
MIN_COLOURED_SEEDS = 3  # below this an edge is exploratory whatever --min-seeds says
DEFAULT_MARGIN = 0.01
DEFAULT_MIN_SEEDS = 5
DEFAULT_POWER = 0.8
TESTS = ("t", "sign-flip")
CORRECTION_NAMES = ("holm", "bh")


@dataclass(frozen=True)
class EvidenceOptions:
    """How edges become evidence (see the module docstring)."""

    alpha: float = 0.05
    margin: float = DEFAULT_MARGIN
    min_seeds: int = DEFAULT_MIN_SEEDS
    test: str = "t"  # "t": seed + test-unit variance, Welch t; "sign-flip": exact over seeds, fixed test set
    correction: str = "holm"  # or "bh" (Benjamini-Hochberg: false discovery rate, for exploratory maps)
    power: float = DEFAULT_POWER

    def __post_init__(self):
        if self.test not in TESTS:
            raise ValueError(f"test must be one of {', '.join(TESTS)}, got {self.test!r}")
        if self.correction not in CORRECTION_NAMES:
            raise ValueError(f"correction must be one of {', '.join(CORRECTION_NAMES)}, got {self.correction!r}")

    @property
    def seeds_to_colour(self) -> int:
        return max(self.min_seeds, MIN_COLOURED_SEEDS)


def edge_state(delta: float, p_adjusted: float, p_equivalence_adjusted: float, n_seeds: int,
               options: EvidenceOptions) -> str:
    """The state of a tested edge (n/a is decided before: see ``transfer.analysis.edges``)."""
    if delta is None or math.isnan(delta):
        return "n/a"
    if n_seeds < options.seeds_to_colour:
        return "exploratory"
    if not math.isnan(p_adjusted) and p_adjusted < options.alpha and abs(delta) > options.margin:
        return "helps" if delta > 0 else "hurts"
    if not math.isnan(p_equivalence_adjusted) and p_equivalence_adjusted < options.alpha:
        return "equivalent"
    return "inconclusive"


# ---------------------------------------------------------------------------------------------------------------
# The learning gate
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateOptions:
    """Thresholds of the learning gate; a task-run failing any of them is untrained.

    majority: one predicted class (label, label set) holds more than this share of the predictions (and more
    than its share of the gold labels); sd_ratio: a regression head's prediction SD is below this fraction of the
    gold SD; chance_se: a classifier's accuracy is within this many standard errors of chance agreement (the
    accuracy expected from its own prediction frequencies, Cohen's kappa's p_e); rise: the dev score was still
    rising at the last epoch, i.e. (with three or more epochs recorded) the last epoch was the best, gained more
    than ``rise_min`` and more than ``rise`` of the run's whole dev gain since the first epoch: the curve has not
    begun to bend. A tagger that predicts no entity fails always.
    """

    enabled: bool = True
    majority: float = 0.95
    sd_ratio: float = 0.3
    chance_se: float = 2.0
    rise: float = 0.5
    rise_min: float = 0.01


def _share_check(gold: Sequence, pred: Sequence, options: GateOptions) -> str | None:
    counts = Counter(_hashable(p) for p in pred)
    value, count = counts.most_common(1)[0]
    share = count / len(pred)
    gold_share = sum(_hashable(g) == value for g in gold) / len(gold)
    if share > max(options.majority, gold_share):
        return f"{share:.1%} of predictions are {_show(value)} (gold {gold_share:.1%})"
    return None


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _show(value) -> str:
    return "{" + ", ".join(map(str, value)) + "}" if isinstance(value, tuple) else repr(value)


def _chance_check(gold: Sequence, pred: Sequence, options: GateOptions) -> str | None:
    n = len(gold)
    accuracy = sum(g == p for g, p in zip(gold, pred)) / n
    gold_freq, pred_freq = Counter(gold), Counter(pred)
    chance = sum(gold_freq[c] * pred_freq.get(c, 0) for c in gold_freq) / n ** 2
    se = math.sqrt(max(chance * (1 - chance), 1e-12) / n)
    if accuracy - chance < options.chance_se * se:
        return f"accuracy {accuracy:.3f} within {options.chance_se:g} SE of chance {chance:.3f}"
    return None


def prediction_gate(task: TaskSpec, records: list[dict], options: GateOptions) -> str | None:
    """Why a task-run's test predictions are degenerate, or None."""
    if not records:
        return "no predictions"
    gold, pred = [r["gold"] for r in records], [r["pred"] for r in records]
    if task.kind == "tagging":
        if not any(tag[:1] in ("B", "I") for tags in pred for tag in tags):
            return "no entity predicted"
        return None
    if task.kind == "regression":
        gold_sd, pred_sd = float(np.std(gold)), float(np.std(pred))
        if gold_sd > 0 and pred_sd < options.sd_ratio * gold_sd:
            return f"prediction SD {pred_sd:.3g} < {options.sd_ratio:g} x gold SD {gold_sd:.3g}"
        return None
    if task.kind == "multilabel":
        return _share_check(gold, [tuple(sorted(p)) for p in pred], options) if options.majority < 1 else None
    return _share_check(gold, pred, options) or _chance_check(gold, pred, options)


def rising_gate(history: list[dict], task: str, metric: str, options: GateOptions) -> str | None:
    """Why the dev score of ``task`` was still rising at the last epoch, or None (fewer than three epochs: None)."""
    scores = [((h.get("dev") or {}).get(task) or {}).get(metric) for h in history or []]
    scores = [float(s) for s in scores if s is not None]
    if len(scores) < 3:  # two points cannot show whether the curve bends
        return None
    gain, last = scores[-1] - scores[0], scores[-1] - scores[-2]
    if last > options.rise_min and scores[-1] >= max(scores) and gain > 0 and last > options.rise * gain:
        return (f"dev {metric} still rising at the last epoch ({scores[-2]:.3f} -> {scores[-1]:.3f}, "
                f"{last / gain:.0%} of its gain)")
    return None


# ---------------------------------------------------------------------------------------------------------------
# Provenance: runs computed differently never share an edge
# ---------------------------------------------------------------------------------------------------------------

PROVENANCE_KEYS = ("precision", "encoder_impl")  # also read from metrics.json "provenance" where present


class ProvenanceError(UserError):
    """Runs that would share an edge were computed with a different precision or encoder implementation."""


def provenance_of(metrics: dict) -> dict:
    """What must agree between the runs of an edge: the resolved precision and encoder implementation."""
    block = metrics.get("provenance") or {}
    train = metrics.get("train") or {}
    return {key: block.get(key, train.get(key)) for key in PROVENANCE_KEYS
            if block.get(key, train.get(key)) is not None}


def check_provenance(edge: str, runs: Sequence) -> None:
    """Raise :class:`ProvenanceError` naming the runs and how they differ when ``runs`` (RunInfo) disagree."""
    seen: dict[str, dict] = {}
    for run in runs:
        for key, value in provenance_of(run.metrics).items():
            seen.setdefault(key, {}).setdefault(str(value), []).append(run.run_id)
    differing = {key: values for key, values in seen.items() if len(values) > 1}
    if differing:
        detail = "; ".join(f"{key}: " + ", ".join(f"{value} ({', '.join(sorted(ids))})" for value, ids in values.items())
                           for key, values in differing.items())
        raise ProvenanceError(f"edge {edge}: its runs were computed differently and cannot be compared ({detail}); "
                              "rerun them alike or analyse them apart (--profile / --model)")
