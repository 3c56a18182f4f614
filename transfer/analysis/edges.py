"""The edge table of a setting: per ordered task pair s->t the per-seed deltas, the test over seeds and test
units, the evidence state, the power plan, and the budget diagnostic.

Edge s->t: the effect of training source task s together with target task t on t's test score. Per seed j with
both runs, d_j = score of t in the {s, t} mtl run minus score of t in t's single-task run (single and pair runs
of one seed share the seed, so the deltas are paired); delta = mean_j d_j. Its variance has two parts: training
randomness, var_j(d_j) / k, and the part of the test set's sampling variance that every seed shares (clustered
resamples of the test set, one resample shared by every run and seed: ``transfer.analysis.paired``). The test is Welch's t on
their sum (``transfer.analysis.stats.seed_test``), or, with ``test="sign-flip"``, the exact sign-flip test over
seeds (conditional on the fixed test set). p-values are corrected across the colourable edges of a setting
(Holm, or Benjamini-Hochberg); the evidence state follows (``transfer.analysis.evidence``).
"""

from __future__ import annotations

import logging
import math
import zlib

import numpy as np
import pandas as pd

from transfer.analysis.evidence import (SIGNIFICANT, EvidenceOptions, GateOptions, check_provenance, edge_state,
                                        prediction_gate, rising_gate)
from transfer.analysis.index import DomainRuns, PredictionCache, RunInfo, Setting
from transfer.analysis.paired import bootstrap_edge
from transfer.analysis.stats import (CORRECTIONS, detectable_effect, seed_test, seeds_needed, sign_flip_p,
                                     spearman)
from transfer.data.tasks import TaskSpec, TaskTable

logger = logging.getLogger(__name__)

MIN_N_BOOT = 1000
DEFAULT_SEED = 0
SCORE_TOLERANCE = 1e-6  # stored test score vs the score recomputed from predictions
BUDGET_WARNING_RHO = 0.5
PLAN_MORE_SEEDS = 5  # the plan says what this many more seeds would resolve
PLAN_MANY_SEEDS = 10

EDGE_COLUMNS = ["source", "target", "metric", "state", "reason", "n_seeds", "seeds", "delta", "seed_deltas",
                "se_seed", "se_test", "se", "df", "ci_low", "ci_high", "p", "p_adj", "p_equiv", "p_equiv_adj",
                "mde", "mde_test", "seeds_needed", "p_test", "single_score", "pair_score", "step_ratio", "n_units",
                "n_clusters", "note"]
_NUMERIC = ("delta", "se_seed", "se_test", "se", "df", "ci_low", "ci_high", "p", "p_equiv", "mde", "mde_test",
            "p_test", "single_score", "pair_score", "step_ratio", "n_units", "n_clusters")


class Gate:
    """The learning gate of every task-run, computed once: (run id, task) -> why it is untrained, or None."""

    def __init__(self, table: TaskTable, cache: PredictionCache, options: GateOptions):
        self.table, self.cache, self.options = table, cache, options
        self._verdicts: dict[tuple[str, str], str | None] = {}

    def why(self, run: RunInfo, task: str) -> str | None:
        if not self.options.enabled:
            return None
        key = (run.run_id, task)
        if key not in self._verdicts:
            spec = self.table.task(task)
            records = self.cache.get(run.predictions_file(task))
            verdict = prediction_gate(spec, records, self.options) if records is not None else None
            self._verdicts[key] = verdict or rising_gate(run.metrics.get("history", []), task, spec.metric,
                                                         self.options)
        return self._verdicts[key]

    def untrained(self) -> list[str]:
        """One line per untrained task-run seen so far."""
        return [f"{run_id} {task}: {why}" for (run_id, task), why in sorted(self._verdicts.items()) if why]


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
    row = {"source": source, "target": target, "metric": metric, "state": "n/a", "reason": "", "n_seeds": len(seeds),
           "seeds": " ".join(map(str, seeds)), "seed_deltas": "", "seeds_needed": math.nan, "note": "; ".join(notes)}
    row.update({key: math.nan for key in _NUMERIC})
    return row


def _steps(run: RunInfo) -> float:
    train = run.metrics.get("train") or {}
    steps = train.get("steps_run", train.get("steps"))
    return float(steps) if steps else math.nan


def _untrained(gate: Gate, runs: list[tuple[RunInfo, RunInfo]], target: str) -> str | None:
    """The untrained task-runs the edge touches (either task of a pair run, the target of a single run), as its
    n/a reason; None when every one passed the gate. All are judged, so the list of untrained runs is complete."""
    found = [f"{run.run_id} {task}: {why}" for pair_run, single_run in runs
             for run, task in [*((pair_run, t) for t in pair_run.tasks), (single_run, target)]
             if (why := gate.why(run, task))]
    return "untrained: " + "; ".join(found) if found else None


def test_run_pairs(index: DomainRuns, task: TaskSpec, source: str, runs: list[tuple[RunInfo, RunInfo]], n_boot: int,
                   options: EvidenceOptions, seed: int, cache: PredictionCache) -> tuple[dict, list[str]]:
    """Test ``task``'s score in the first run of each (run, baseline) pair against the second, over the seeds whose
    predictions are all present (``source`` names the comparison: the edge's source task, or a model type, and
    seeds its resampling stream); returns (fields, notes)."""
    target = task.name
    systems, used = [], []
    for pair_run, single_run in runs:
        records = (cache.get(pair_run.predictions_file(target)), cache.get(single_run.predictions_file(target)))
        if all(records):
            systems.append(records)
            used.append((pair_run, single_run))
    if not systems:
        return {"reason": "predictions missing"}, ["predictions missing: not tested"]
    notes = [] if len(used) == len(runs) else [f"test on seeds {' '.join(str(p.seed) for p, _ in used)} only "
                                               "(predictions missing for the others)"]
    try:
        boot = bootstrap_edge(task, task.metric, systems, n_boot, _edge_rng(seed, index.setting, source, target),
                              options.alpha, memo=cache.memo)
    except (KeyError, ValueError, TypeError) as exc:
        logger.warning("%s->%s: bootstrap failed: %s", source, target, exc)
        return {"reason": f"not tested: {exc}"}, [f"not tested: {exc}"]
    stored = float(np.mean([p.scores[target] - s.scores[target] for p, s in used]))
    if abs(boot.delta - stored) > SCORE_TOLERANCE:
        logger.warning("%s->%s: delta recomputed from predictions (%.6f) differs from the stored scores' (%.6f)",
                       source, target, boot.delta, stored)
        notes.append(f"predictions give delta {boot.delta:+.4f}, stored scores {stored:+.4f}")
    fields = _seed_fields(boot.seed_deltas, boot.var_test, boot.n_clusters, options)
    fields.update(p_test=boot.p_value, n_units=boot.n_units, n_clusters=boot.n_clusters,
                  seed_deltas=" ".join(f"{d:+.4f}" for d in boot.seed_deltas), n_seeds=len(used),
                  seeds=" ".join(str(p.seed) for p, _ in used))
    return fields, notes


def _seed_fields(seed_deltas, var_test: float, n_clusters: int, options: EvidenceOptions) -> dict:
    """The seed test's columns of one edge (sign-flip: the test set held fixed, var_test = 0)."""
    fixed = options.test == "sign-flip"
    result = seed_test(seed_deltas, 0.0 if fixed else var_test, n_clusters, options.alpha, options.margin)
    p = sign_flip_p(seed_deltas) if fixed and result.k > 1 else result.p
    return {"delta": result.delta, "se_seed": result.se_seed, "se_test": math.sqrt(var_test), "se": result.se,
            "df": result.df, "ci_low": result.ci_low, "ci_high": result.ci_high, "p": p,
            "p_equiv": result.p_equivalence, "var_seed_unit": result.se_seed ** 2 * result.k if result.k > 1
            else math.nan, "var_test": 0.0 if fixed else var_test}


def _edge_row(index: DomainRuns, task: TaskSpec, source: str, n_boot: int, options: EvidenceOptions, seed: int,
              cache: PredictionCache, gate: Gate) -> dict:
    target = task.name
    seeds, lacking = _edge_seeds(index, source, target)
    row = _blank_edge(source, target, task.metric, seeds, lacking)
    if not seeds:
        row["reason"] = "runs missing"
        return row
    runs = [(index.get("pair", frozenset((source, target)), s), index.get("single", target, s)) for s in seeds]
    check_provenance(f"{source} -> {target}", [run for pair in runs for run in pair])
    single = np.array([s.scores[target] for _, s in runs], dtype=float)
    deltas = np.array([p.scores[target] for p, _ in runs], dtype=float) - single
    row.update(delta=float(deltas.mean()), single_score=float(single.mean()),
               pair_score=float(single.mean() + deltas.mean()),
               step_ratio=float(np.mean([_steps(p) / _steps(s) for p, s in runs])))
    tested, notes = test_run_pairs(index, task, source, runs, n_boot, options, seed, cache)
    row.update(tested)
    untrained = _untrained(gate, runs, target)
    if untrained:
        row["reason"] = untrained
    row["note"] = "; ".join(filter(None, [row["note"], *notes]))
    return row


def _plan_columns(frame: pd.DataFrame, options: EvidenceOptions, family: int) -> None:
    """MDE at each edge's seeds and the seeds it needs for the margin, at the family-wise level of the first Holm
    step (alpha / m, Bonferroni), ``options.power``; ``mde_test``: what the test set alone allows (any seeds)."""
    from scipy import stats

    level = options.alpha / max(family, 1)
    z = stats.norm.ppf(1 - level / 2) + stats.norm.ppf(options.power)
    frame["mde_test"] = z * np.sqrt(frame["var_test"].astype(float))
    frame["mde"] = [detectable_effect(v, t, int(k), level, options.power)
                    for v, t, k in zip(frame["var_seed_unit"], frame["var_test"], frame["n_seeds"])]
    frame["seeds_needed"] = [seeds_needed(v, t, options.margin, level, options.power)
                             for v, t in zip(frame["var_seed_unit"], frame["var_test"])]


def edge_table(index: DomainRuns, table: TaskTable, n_boot: int = MIN_N_BOOT, options: EvidenceOptions | None = None,
               seed: int = DEFAULT_SEED, gate_options: GateOptions | None = None,
               cache: PredictionCache | None = None) -> tuple[pd.DataFrame, Gate]:
    """Every ordered pair s->t of the setting's tasks (EDGE_COLUMNS), and the gate with its verdicts."""
    options = options or EvidenceOptions()
    cache = cache or PredictionCache()
    gate = Gate(table, cache, gate_options or GateOptions())
    rows = [_edge_row(index, table.task(target), source, n_boot, options, seed, cache, gate)
            for target in index.tasks for source in index.tasks if source != target]
    frame = pd.DataFrame(rows)
    if not len(frame):
        return pd.DataFrame(columns=EDGE_COLUMNS), gate
    for column in ("var_seed_unit", "var_test"):
        frame[column] = frame[column].astype(float) if column in frame else math.nan
    testable = correct_family(frame, options)
    _plan_columns(frame, options, int(testable.sum()) or len(frame))
    return frame[EDGE_COLUMNS], gate


def correct_family(frame: pd.DataFrame, options: EvidenceOptions) -> pd.Series:
    """Correct p and p_equiv over the family's testable rows (no reason, a p, the seeds to be coloured) into
    p_adj and p_equiv_adj, and set each row's state; returns the testable mask."""
    testable = (frame["reason"] == "") & frame["p"].notna() & (frame["n_seeds"] >= options.seeds_to_colour)
    correct = CORRECTIONS[options.correction]
    frame["p_adj"] = np.where(testable, correct(np.where(testable, frame["p"], np.nan)), np.nan)
    frame["p_equiv_adj"] = np.where(testable, correct(np.where(testable, frame["p_equiv"], np.nan)), np.nan)
    frame["state"] = [row_state(row, options) for _, row in frame.iterrows()]
    return testable


def row_state(row, options: EvidenceOptions) -> str:
    """n/a (a reason, no delta, or an untestable one), else the evidence state of its corrected p-values."""
    if row["reason"] or math.isnan(row["delta"]) or (math.isnan(row["p"]) and row["n_seeds"] >= 2):
        return "n/a"
    return edge_state(row["delta"], row["p_adj"], row["p_equiv_adj"], int(row["n_seeds"]), options)


# ---------------------------------------------------------------------------------------------------------------
# The plan and the budget diagnostic
# ---------------------------------------------------------------------------------------------------------------

def seed_plan(edges: pd.DataFrame, options: EvidenceOptions) -> str:
    """One sentence: what more seeds would buy (from the observed variances), or why that cannot be said yet."""
    if not len(edges):
        return "Plan: no edges."
    states = edges["state"]
    if (states == "n/a").all():
        untrained = int(edges["reason"].str.startswith("untrained").sum())
        if not untrained:  # a grid still running, or runs that failed: nothing to say about training yet
            return (f"Plan: no edge can be tested: all {len(edges)} lack runs or predictions (see missing); run them "
                    "(the grid's command resumes a store) before anything can be said of seeds.")
        return (f"Plan: no edge can be tested ({untrained} of {len(edges)} touch an untrained task-run, the others "
                "lack runs or predictions): fix those runs (longer training, a working head) before adding seeds.")
    exploratory = edges[states == "exploratory"]
    if len(exploratory) and not edges["seeds_needed"].notna().any() and edges["mde"].isna().all():
        k = int(exploratory["n_seeds"].max())
        return (f"Plan: {len(exploratory)} of {len(edges)} edges have fewer than {options.seeds_to_colour} seeds "
                f"(at most {k}), so the between-seed variance is unknown; run at least {options.seeds_to_colour} "
                f"seeds per single and pair run (the test set alone cannot detect less than "
                f"{np.nanmin(edges['mde_test']):.3f} on any edge: mde_test).")
    needed = edges["seeds_needed"]
    tested = edges[needed.notna() | edges["mde"].notna()]
    many = int(((needed > PLAN_MANY_SEEDS) | needed.isna()).loc[tested.index].sum())
    open_edges = edges[states.isin(["inconclusive", "exploratory"])]
    more = open_edges["n_seeds"] + PLAN_MORE_SEEDS
    resolved = int((open_edges["seeds_needed"].notna() & (open_edges["seeds_needed"] <= more)).sum())
    return (f"Plan: {many} of {len(tested)} tested edges would need more than {PLAN_MANY_SEEDS} seeds to detect "
            f"±{options.margin:g} at {options.power:.0%} power; {PLAN_MORE_SEEDS} more seeds resolve {resolved} of "
            f"{len(open_edges)} inconclusive or exploratory edges.")


def budget_diagnostic(edges: pd.DataFrame) -> dict:
    """Spearman rho between the pair/single training-step ratio and delta over the edges with both; a warning
    above BUDGET_WARNING_RHO (the pair run's encoder gets both tasks' updates: more steps may be the effect)."""
    both = edges[edges["step_ratio"].notna() & edges["delta"].notna()]
    rho, p, method = spearman(both["step_ratio"], both["delta"])
    warning = (f"budget: Spearman rho(step ratio, delta) = {rho:+.2f} over {len(both)} edges > "
               f"{BUDGET_WARNING_RHO}: deltas follow the pair runs' extra training steps (a step-matched control "
               "would separate the two)" if not math.isnan(rho) and rho > BUDGET_WARNING_RHO else "")
    return {"rho": rho, "p": p, "p_method": method, "n": len(both), "warning": warning}


def significant(states) -> np.ndarray:
    return np.isin(np.asarray(states, dtype=object), SIGNIFICANT)
