"""Hand-built results stores for the analysis tests (test_analysis.py, test_graph.py).

``build_store`` writes spec.json, status.json, metrics.json (scored with transfer.scoring.metrics) and
predictions/<task>.jsonl in tmp folders, laid out like real runs; ``write_affinity_run`` adds an affinity run
(an all-task mtl run with ``affinity_every > 0`` and an ``affinity`` block in its metrics.json).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from transfer.scoring import metrics
from transfer.data.tasks import load_task_table

TABLE = load_task_table()
DOMAIN = "clinical-public"
TASKS3 = ("clinicalsts", "shareclefe", "mednli")  # regression, tagging, classification (accuracy)
TASKS4 = ("clinicalsts", "shareclefe", "i2b2-2010-re", "mednli")
N_TEST = {"classification": 400, "tagging": 200, "regression": 300, "multilabel": 300}
GROUP_SIZE = 5  # multilabel (HoC): sentences per abstract

# (source, target) -> how the pair run's predictions of target differ from the single run's
EFFECTS3 = {
    ("mednli", "shareclefe"): "better",
    ("clinicalsts", "shareclefe"): "noise",
    ("clinicalsts", "mednli"): "worse",
    ("shareclefe", "mednli"): "borderline",
    ("shareclefe", "clinicalsts"): "better",
    ("mednli", "clinicalsts"): "noise",
}


# ---------------------------------------------------------------------------------------------------------------
# Store builder
# ---------------------------------------------------------------------------------------------------------------

def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16))


def _tag_sentence(rng: np.random.Generator) -> list[str]:
    tags = ["O"] * int(rng.integers(8, 20))
    i = int(rng.integers(0, 3))
    while i < len(tags) - 1:
        length = int(rng.integers(1, 4))
        tags[i:i + length] = ["B"] + ["I"] * (length - 1)
        i += length + int(rng.integers(2, 8))
    return tags[:len(tags)]


def gold_labels(task_name: str) -> list:
    """The fixed test set of a task (the same for every run and seed)."""
    task = TABLE.task(task_name)
    rng = _rng("gold", task_name)
    n = N_TEST[task.kind]
    if task.kind == "classification":
        return [str(x) for x in rng.choice(task.labels, size=n)]
    if task.kind == "regression":
        return [round(float(x), 3) for x in rng.uniform(0, 5, size=n)]
    if task.kind == "multilabel":
        return [sorted(str(x) for x in rng.choice(task.labels, size=int(rng.integers(0, 3)), replace=False))
                for _ in range(n)]
    return [_tag_sentence(rng) for _ in range(n)]


def _wrong_label(task, gold, rng):
    """A wrong prediction for one example: another class, all-O tags, or another label set."""
    if task.kind == "tagging":
        return ["O"] * len(gold)
    if task.kind == "multilabel":
        return sorted({str(rng.choice(task.labels))} ^ set(gold))
    return str(rng.choice([label for label in task.labels if label != gold]))


def single_predictions(task_name: str, seed: int) -> list:
    """A decent baseline: ~70% accuracy, ~70% of entities found, regression error sd 1.0."""
    task, gold, rng = TABLE.task(task_name), gold_labels(task_name), _rng("single", task_name, seed)
    if task.kind == "classification":
        return [g if rng.random() < 0.7 else _wrong_label(task, g, rng) for g in gold]
    if task.kind == "regression":
        return [round(g + float(rng.normal(0, 1.0)), 4) for g in gold]
    return [list(g) if rng.random() < 0.7 else _wrong_label(task, g, rng) for g in gold]


def _flip(pred: list, gold: list, task, rng, to_right: int, to_wrong: int) -> list:
    pred = list(pred)
    wrong = [i for i, (g, p) in enumerate(zip(gold, pred)) if g != p]
    right = [i for i, (g, p) in enumerate(zip(gold, pred)) if g == p]
    for i in rng.choice(wrong, size=to_right, replace=False):
        pred[i] = list(gold[i]) if isinstance(gold[i], list) else gold[i]
    for i in rng.choice(right, size=to_wrong, replace=False):
        pred[i] = _wrong_label(task, gold[i], rng)
    return pred


def pair_predictions(task_name: str, seed: int, effect: str, salt: str = "") -> list:
    """The target's predictions in a pair run: the single run's, changed by ``effect``."""
    task, gold = TABLE.task(task_name), gold_labels(task_name)
    base, rng = single_predictions(task_name, seed), _rng("pair", task_name, seed, effect, salt)
    if task.kind == "regression":
        errors = np.asarray(base) - np.asarray(gold)
        scale = {"better": 0.5, "worse": 1.6, "noise": 1.0, "borderline": 0.93}[effect]
        new = [round(g + e * scale, 4) for g, e in zip(gold, errors)]
        if effect == "noise":
            new[0] += 0.2  # one example differs: a tiny delta, nowhere near significance
        return new
    flips = {"better": (40, 2), "worse": (2, 40), "noise": (6, 5), "borderline": (28, 13)}[effect]
    if task.kind in ("tagging", "multilabel"):
        flips = {"better": (35, 2), "worse": (2, 35), "noise": (4, 3), "borderline": (14, 6)}[effect]
    return _flip(base, gold, task, rng, *flips)


def _groups(task_name: str) -> list[str] | None:
    if TABLE.task(task_name).kind != "multilabel":
        return None
    return [f"abstract-{i // GROUP_SIZE}" for i in range(N_TEST["multilabel"])]


def _records(task_name: str, preds: list) -> list[dict]:
    groups = _groups(task_name)
    return [{"uid": f"{task_name}-test-{i}", "gold": g, "pred": p, **({"group": groups[i]} if groups else {})}
            for i, (g, p) in enumerate(zip(gold_labels(task_name), preds))]


def _task_metrics(task_name: str, preds: list) -> dict:
    task = TABLE.task(task_name)
    test = metrics.score_task(task, gold_labels(task_name), preds, _groups(task_name))
    return {"metric": task.metric, "best_epoch": 2, "dev_score": test[task.metric], "test_score": test[task.metric],
            "dev": test, "test": test, "examples": {"train": 100, "dev": 50, "test": len(preds)}}


def write_run(root: Path, tasks: tuple[str, ...], stage: str, seed: int, predictions: dict[str, list],
              status: str = "done", parent: str | None = None, domain: str = DOMAIN, profile: str = "quick",
              model: str = "minilm", with_predictions: bool = True, wall_seconds: float = 2.0,
              affinity_every: int | None = None, affinity: dict | None = None,
              roles: list[str] | None = None) -> str:
    """One run folder as transfer.training.loop and transfer.experiment.store write it; returns the run id.

    ``roles`` (None: left out, as in stores written before the grid recorded them) goes into spec.json outside
    the hashed part, as the grid writes it.

    ``affinity_every`` None leaves the key out of spec.json (as in specs written before affinity runs existed);
    ``affinity`` is the metrics.json "affinity" block of an affinity run.
    """
    spec = {"tasks": list(tasks), "stage": stage, "seed": seed, "model": model, "domain": domain, "parent": parent,
            "profile": {"name": profile, "learning_rate": 1e-4, "epochs": 3, "seeds": [seed]},
            "data_fingerprints": [], "code_version": "test", "save_encoder": False, "extra": []}
    if affinity_every is not None:
        spec["affinity_every"] = affinity_every
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    run_id = f"{stage}-{'+'.join(tasks)}-s{seed}-{digest}"
    folder = root / "runs" / run_id
    (folder / "predictions").mkdir(parents=True)
    stored = {**spec, "run_id": run_id, **({"roles": roles} if roles is not None else {})}
    (folder / "spec.json").write_text(json.dumps(stored, indent=2))
    (folder / "status.json").write_text(json.dumps({"status": status, "owner": "test", "time": 0.0}))
    if status != "done":
        return run_id
    result = {"run_id": run_id, "tasks": {t: _task_metrics(t, predictions[t]) for t in tasks},
              "train": {"train_seconds": 0.5 * wall_seconds, "wall_seconds": wall_seconds}}
    if affinity is not None:
        result["affinity"] = affinity
    (folder / "metrics.json").write_text(json.dumps(result, indent=2))
    if with_predictions:
        for t in tasks:
            lines = "".join(json.dumps(r) + "\n" for r in _records(t, predictions[t]))
            (folder / "predictions" / f"{t}.jsonl").write_text(lines)
    return run_id


WALL_SECONDS = {"single": 100.0, "pair": 200.0, "all": 300.0, "finetune": 50.0}  # build_store's wall times


def build_store(root: Path, tasks: tuple[str, ...] = TASKS3, seeds: tuple[int, ...] = (13,),
                effects: dict | None = None, skip: set | None = None, failed: set | None = None,
                domain: str = DOMAIN) -> Path:
    """Single, pair, all-task mtl and finetune runs of ``tasks`` for every seed (wall times: WALL_SECONDS).

    ``skip``/``failed``: run keys left out / recorded as failed: ("single", task, seed), ("pair", a, b, seed)
    with a, b in task order, ("all", seed), ("finetune", task, seed).
    """
    effects = effects if effects is not None else EFFECTS3
    skip, failed = skip or set(), failed or set()

    def add(key, run_tasks, stage, seed, preds, parent=None):
        if key in skip:
            return None
        return write_run(root, run_tasks, stage, seed, preds, "failed" if key in failed else "done", parent, domain,
                         wall_seconds=WALL_SECONDS[key[0]])

    for seed in seeds:
        for t in tasks:
            add(("single", t, seed), (t,), "single", seed, {t: single_predictions(t, seed)})
        parent = None
        for i, a in enumerate(tasks):
            for b in tasks[i + 1:]:
                preds = {b: pair_predictions(b, seed, effects.get((a, b), "noise")),
                         a: pair_predictions(a, seed, effects.get((b, a), "noise"))}
                parent = add(("pair", a, b, seed), (a, b), "mtl", seed, preds)
        if len(tasks) > 2:  # with two tasks the pair run is the all-task run
            all_preds = {t: pair_predictions(t, seed, "noise", salt="all") for t in tasks}
            parent = add(("all", seed), tasks, "mtl", seed, all_preds)
        for t in tasks:
            add(("finetune", t, seed), (t,), "finetune", seed, {t: pair_predictions(t, seed, "better", salt="ft")},
                parent=parent or "mtl-missing-parent")
    return root


def stored_score(root: Path, stage: str, tasks: tuple[str, ...], seed: int, task: str) -> float:
    for folder in (root / "runs").iterdir():
        spec = json.loads((folder / "spec.json").read_text())
        if spec["stage"] == stage and tuple(spec["tasks"]) == tasks and spec["seed"] == seed:
            return json.loads((folder / "metrics.json").read_text())["tasks"][task]["test_score"]
    raise KeyError((stage, tasks, seed))


def write_affinity_run(root: Path, tasks: tuple[str, ...], seed: int, z: dict[tuple[str, str], float],
                       wall_seconds: float = 330.0, tracker_seconds: float = 25.0, every: int = 20,
                       status: str = "done", domain: str = DOMAIN, self_z: float = 0.05,
                       predictions: dict[str, list] | None = None, matrix: bool = True) -> str:
    """An affinity run: the all-task mtl run of ``tasks`` with ``affinity_every`` = ``every`` and Z(s->t) = z[s, t]
    (off-diagonal pairs not in ``z``: 0; diagonal: ``self_z``). Its predictions default to ones that differ from
    every other run's ("better" for each task), so a test sees if they leak into the grid's numbers."""
    matrix_values = [[self_z if s == t else float(z.get((s, t), 0.0)) for t in tasks] for s in tasks]
    block = {"tasks": list(tasks), "matrix": matrix_values if matrix else None,
             "per_epoch": [matrix_values] if matrix else [], "every": every, "num_batches": 1,
             "seconds": tracker_seconds}
    preds = predictions or {t: pair_predictions(t, seed, "better", salt="affinity") for t in tasks}
    return write_run(root, tasks, "mtl", seed, preds, status, domain=domain, wall_seconds=wall_seconds,
                     affinity_every=every, affinity=block)
