"""The model table of a setting (paper Tables 2/3, with the learning gate's marks), and whether each multi-task
model changes a task's score against single-task training.

A model table row is a mean over seeds; whether MT-Refinement or MT-Fine-Tune differs from the single-task run is
the edge's question with another run in the source's place: per seed j with both runs, d_j = test score of t under
the multi-task model minus t's single-task score (one seed, one training subsample, so the d_j are paired), tested
with the edge's test (between-seed variance over k plus the clustered test-set variance the seeds share,
``transfer.analysis.edges.test_run_pairs``). The comparisons of a setting (two models x its tasks) are their own
family for the correction, apart from the edges; the states are the edges' words (helps, hurts, equivalent,
inconclusive, exploratory below the seeds to colour, n/a where a run is missing or untrained).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from transfer.analysis.edges import Gate, correct_family, test_run_pairs
from transfer.analysis.evidence import EvidenceOptions, check_provenance
from transfer.analysis.index import DomainRuns, PredictionCache, RunInfo
from transfer.data.tasks import TaskTable
from transfer.experiment.roles import MODEL_TYPES

MODEL_COLUMNS = ["model_type", "task", "mean", "std", "n_seeds", "seeds", "untrained", "n_untrained"]
METHOD_COLUMNS = ["model_type", "task", "metric", "state", "reason", "n_seeds", "seeds", "delta", "seed_deltas",
                  "se_seed", "se_test", "se", "df", "ci_low", "ci_high", "p", "p_adj", "p_equiv", "p_equiv_adj",
                  "model_score", "single_score", "note"]
MULTI_TASK_MODELS = ("mt-refinement", "mt-finetune")
_MODEL_KINDS = {"single": "single", "mt-refinement": "all", "mt-finetune": "finetune"}


def seed_runs(index: DomainRuns, model_type: str, task: str) -> dict[int, RunInfo]:
    """The done runs that score ``task`` as ``model_type``, by seed."""
    kind = _MODEL_KINDS[model_type]
    condition = "all" if kind == "all" else task
    if kind == "all" and len(index.tasks) == 1:
        return {}
    runs = {seed: index.get(kind, condition, seed) for seed in index.seeds}
    return {seed: run for seed, run in runs.items() if run is not None and task in run.scores}


def model_scores(index: DomainRuns, gate: Gate | None = None) -> pd.DataFrame:
    """Paper Tables 2/3 in long form: model_type, task (plus "Avg"), mean, std, n_seeds, seeds, untrained.

    mean/std are over seeds (std with ddof=1, NaN for one seed). The average over tasks is given only when
    every task has a score, so a missing run never shifts the average silently. ``untrained``: the seeds whose
    task-run failed the learning gate, with the reason ("" when none or no gate); ``n_untrained``: how many.
    """
    rows = []
    for model_type in MODEL_TYPES:
        per_task = []
        for task in index.tasks:
            runs = seed_runs(index, model_type, task)
            values = np.array([run.scores[task] for run in runs.values()], dtype=float)
            flagged = [f"seed {seed}: {why}" for seed, run in runs.items()
                       if gate is not None and (why := gate.why(run, task))]
            per_task.append({"model_type": model_type, "task": task,
                             "mean": float(values.mean()) if len(values) else math.nan,
                             "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                             "n_seeds": len(values), "seeds": " ".join(map(str, runs)), "untrained": "; ".join(flagged),
                             "n_untrained": len(flagged)})
        means = [row["mean"] for row in per_task]
        complete = bool(means) and not np.isnan(means).any()
        rows += per_task + [{"model_type": model_type, "task": "Avg",
                             "mean": float(np.mean(means)) if complete else math.nan, "std": math.nan,
                             "n_seeds": min(row["n_seeds"] for row in per_task) if complete else 0, "seeds": "",
                             "untrained": "", "n_untrained": 0}]
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def _method_row(index: DomainRuns, table: TaskTable, model_type: str, task: str, n_boot: int,
                options: EvidenceOptions, seed: int, cache: PredictionCache, gate: Gate) -> dict:
    model, single = seed_runs(index, model_type, task), seed_runs(index, "single", task)
    seeds = sorted(set(model) & set(single))
    row = {"model_type": model_type, "task": task, "metric": table.task(task).metric, "state": "n/a", "reason": "",
           "n_seeds": len(seeds), "seeds": " ".join(map(str, seeds)), "seed_deltas": "", "note": ""}
    row.update({key: math.nan for key in METHOD_COLUMNS if key not in row})
    if not seeds:
        row["reason"] = "runs missing"
        return row
    runs = [(model[s], single[s]) for s in seeds]
    check_provenance(f"{model_type} vs single ({task})", [run for pair in runs for run in pair])
    row.update(model_score=float(np.mean([m.scores[task] for m, _ in runs])),
               single_score=float(np.mean([s.scores[task] for _, s in runs])))
    tested, notes = test_run_pairs(index, table.task(task), model_type, runs, n_boot, options, seed, cache)
    row.update({key: value for key, value in tested.items() if key in METHOD_COLUMNS})
    untrained = [f"{run.run_id} {task}: {why}" for pair in runs for run in pair if (why := gate.why(run, task))]
    if untrained:  # only the task itself counts: an all-task run is not n/a for another task's untrained head
        row["reason"] = "untrained: " + "; ".join(untrained)
    row["note"] = "; ".join(notes)
    return row


def method_table(index: DomainRuns, table: TaskTable, n_boot: int, options: EvidenceOptions, seed: int,
                 cache: PredictionCache, gate: Gate) -> pd.DataFrame:
    """MT-Refinement and MT-Fine-Tune against single-task training, per task (METHOD_COLUMNS), corrected over
    the setting's comparisons that have the seeds to be coloured."""
    rows = [_method_row(index, table, model_type, task, n_boot, options, seed, cache, gate)
            for model_type in MULTI_TASK_MODELS for task in index.tasks]
    frame = pd.DataFrame(rows, columns=METHOD_COLUMNS)
    if not len(frame):
        return frame
    for column in ("p", "p_equiv", "delta", "n_seeds"):
        frame[column] = frame[column].astype(float)
    correct_family(frame, options)
    frame["n_seeds"] = frame["n_seeds"].astype(int)
    return frame
