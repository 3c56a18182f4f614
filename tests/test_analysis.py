"""Tests for transfer.analysis: metric decompositions, paired bootstrap, Holm, edge calls, missing runs.

Stores are built in tmp_path by ``build_store`` (also used by test_graph.py): spec.json, status.json,
metrics.json (scored with transfer.metrics) and predictions/<task>.jsonl, laid out like real runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from transfer import metrics
from transfer.analysis import (DECOMPOSITIONS, analyse_store, bootstrap_edge, bootstrap_p_value, decomposed_score,
                               edge_colour, entity_spans, holm, resample_counts, unit_statistics)
from transfer.tasks import load_task_table

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
              model: str = "minilm", with_predictions: bool = True) -> str:
    """One run folder as transfer.train and transfer.store write it; returns the run id."""
    spec = {"tasks": list(tasks), "stage": stage, "seed": seed, "model": model, "domain": domain, "parent": parent,
            "profile": {"name": profile, "learning_rate": 1e-4, "epochs": 3, "seeds": [seed]},
            "data_fingerprints": [], "code_version": "test", "save_encoder": False, "extra": []}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    run_id = f"{stage}-{'+'.join(tasks)}-s{seed}-{digest}"
    folder = root / "runs" / run_id
    (folder / "predictions").mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({**spec, "run_id": run_id}, indent=2))
    (folder / "status.json").write_text(json.dumps({"status": status, "owner": "test", "time": 0.0}))
    if status != "done":
        return run_id
    result = {"run_id": run_id, "tasks": {t: _task_metrics(t, predictions[t]) for t in tasks},
              "train": {"train_seconds": 1.0, "wall_seconds": 2.0}}
    (folder / "metrics.json").write_text(json.dumps(result, indent=2))
    if with_predictions:
        for t in tasks:
            lines = "".join(json.dumps(r) + "\n" for r in _records(t, predictions[t]))
            (folder / "predictions" / f"{t}.jsonl").write_text(lines)
    return run_id


def build_store(root: Path, tasks: tuple[str, ...] = TASKS3, seeds: tuple[int, ...] = (13,),
                effects: dict | None = None, skip: set | None = None, failed: set | None = None,
                domain: str = DOMAIN) -> Path:
    """Single, pair, all-task mtl and finetune runs of ``tasks`` for every seed.

    ``skip``/``failed``: run keys left out / recorded as failed: ("single", task, seed), ("pair", a, b, seed)
    with a, b in task order, ("all", seed), ("finetune", task, seed).
    """
    effects = effects if effects is not None else EFFECTS3
    skip, failed = skip or set(), failed or set()

    def add(key, run_tasks, stage, seed, preds, parent=None):
        if key in skip:
            return None
        return write_run(root, run_tasks, stage, seed, preds, "failed" if key in failed else "done", parent, domain)

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


@pytest.fixture(scope="module")
def store3(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("store3"))


@pytest.fixture(scope="module")
def analysis3(store3):
    (analysis,) = analyse_store(store3, TABLE, n_boot=1000, seed=0)
    return analysis


# ---------------------------------------------------------------------------------------------------------------
# Decompositions equal transfer.metrics on the full sample and on resamples
# ---------------------------------------------------------------------------------------------------------------

def _random_records(task_name: str, n: int, rng: np.random.Generator) -> list[dict]:
    task = TABLE.task(task_name)
    records = []
    for i in range(n):
        if task.kind == "classification":
            gold = str(rng.choice(task.labels))
            pred = gold if rng.random() < 0.5 else str(rng.choice(task.labels))
        elif task.kind == "regression":
            gold = float(rng.uniform(0, 5))
            pred = gold + float(rng.normal(0, 1))
        elif task.kind == "tagging":  # random tags: I after O, I at the start, B-I-B runs all occur
            length = int(rng.integers(1, 15))
            gold = [str(t) for t in rng.choice(["B", "I", "O"], size=length, p=[0.2, 0.25, 0.55])]
            pred = [t if rng.random() < 0.7 else str(rng.choice(["B", "I", "O"])) for t in gold]
        else:
            gold = [str(x) for x in rng.choice(task.labels, size=int(rng.integers(0, 3)), replace=False)]
            pred = [str(x) for x in rng.choice(task.labels, size=int(rng.integers(0, 3)), replace=False)]
        record = {"uid": f"u{i}", "gold": gold, "pred": pred}
        if task.kind == "multilabel":
            record["group"] = f"g{i // 3}"
        records.append(record)
    return records


def _score_task(task_name: str, records: list[dict]) -> dict[str, float]:
    task = TABLE.task(task_name)
    groups = [r["group"] for r in records] if "group" in records[0] else None
    return metrics.score_task(task, [r["gold"] for r in records], [r["pred"] for r in records], groups)


DECOMPOSED_TASKS = ["chemprot", "ddi2013-type", "mednli", "i2b2-2010-re", "clinicalsts", "bc5cdr-disease", "hoc"]


@pytest.mark.parametrize("task_name", DECOMPOSED_TASKS)
def test_decomposition_equals_score_task_on_full_sample(task_name):
    rng = np.random.default_rng(7)
    for _ in range(4):
        records = _random_records(task_name, 120, rng)
        for metric, expected in _score_task(task_name, records).items():
            assert decomposed_score(TABLE.task(task_name), metric, records) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("task_name", DECOMPOSED_TASKS)
def test_weighted_sums_equal_score_task_on_a_resample(task_name):
    """counts @ stats (what the bootstrap computes) equals score_task on the materialised resample."""
    task, rng = TABLE.task(task_name), np.random.default_rng(11)
    records = _random_records(task_name, 90, rng)
    keys, stats = unit_statistics(task, task.metric, records)
    counts = resample_counts(rng, len(keys), 1)[0]
    by_unit: dict[str, list[dict]] = {}
    for record in records:
        by_unit.setdefault(record.get("group", record["uid"]) if task.kind == "multilabel" else record["uid"],
                           []).append(record)
    resample = [{**r, "group": f"{key}#{copy}"} if "group" in r else r
                for key, count in zip(keys, counts) for copy in range(int(count)) for r in by_unit[key]]
    expected = _score_task(task_name, resample)[task.metric]
    assert float(DECOMPOSITIONS[task.metric].score(counts @ stats)) == pytest.approx(expected, abs=1e-12)


def test_entity_spans_follow_conlleval():
    assert entity_spans(["B", "I", "O", "I", "I", "B", "B"]) == {("_", 0, 1), ("_", 3, 4), ("_", 5, 5), ("_", 6, 6)}
    assert entity_spans(["I", "O"]) == {("_", 0, 0)}
    assert entity_spans(["B-X", "I-Y", "I-Y"]) == {("X", 0, 0), ("Y", 1, 2)}
    assert entity_spans(["O", "O"]) == set()


def test_constant_regression_prediction_scores_zero_like_metrics():
    records = [{"uid": str(i), "gold": float(i), "pred": 1.0} for i in range(10)]
    assert decomposed_score(TABLE.task("clinicalsts"), "pearson", records) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap and Holm
# ---------------------------------------------------------------------------------------------------------------

def test_holm_matches_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    np.testing.assert_allclose(holm(p)[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm(p)[4])
    assert list(holm([0.2, 0.01])) == [0.2, 0.02]
    assert list(holm([0.9, 0.8])) == [1.0, 1.0]
    assert len(holm([])) == 0


def test_edge_colour_rules():
    assert edge_colour(0.02, 0.01) == "green"
    assert edge_colour(-0.02, 0.01) == "red"
    assert edge_colour(0.02, 0.2) == "grey"
    assert edge_colour(0.002, 0.01, min_delta=0.005) == "grey"
    assert edge_colour(float("nan"), 0.01) == "missing"
    assert edge_colour(0.02, float("nan")) == "missing"


def test_identical_systems_give_p_one_and_zero_interval():
    task = TABLE.task("mednli")
    records = _records("mednli", single_predictions("mednli", 13))
    result = bootstrap_edge(task, task.metric, [(records, records)], 200, np.random.default_rng(0))
    assert result.delta == 0.0 and result.p_value == 1.0 and result.ci_low == result.ci_high == 0.0


def test_bootstrap_pairs_by_uid_not_by_order():
    task = TABLE.task("mednli")
    single = _records("mednli", single_predictions("mednli", 13))
    pair = _records("mednli", pair_predictions("mednli", 13, "better"))
    shuffled = [pair[i] for i in np.random.default_rng(3).permutation(len(pair))]
    a = bootstrap_edge(task, task.metric, [(pair, single)], 300, np.random.default_rng(1))
    b = bootstrap_edge(task, task.metric, [(shuffled, single)], 300, np.random.default_rng(1))
    assert a.delta == b.delta
    assert a.p_value == b.p_value


def test_bootstrap_p_value_is_two_sided():
    replicates = np.random.default_rng(0).normal(0.01, 0.01, size=999)
    p_pos = bootstrap_p_value(0.01, replicates)
    p_neg = bootstrap_p_value(-0.01, -replicates)
    assert p_pos == pytest.approx(p_neg) and 0.2 < p_pos < 0.45  # |z| = 1 -> about 0.32


def test_bootstrap_is_fast_enough():
    """3,000 sentences, 2 seeds, 2,000 resamples: well under a few seconds."""
    import time

    task, rng = TABLE.task("bc5cdr-disease"), np.random.default_rng(5)
    gold = _random_records("bc5cdr-disease", 3000, rng)

    def system():
        return [{**r, "pred": [t if rng.random() < 0.8 else "O" for t in r["gold"]]} for r in gold]

    systems = [(system(), system()) for _ in range(2)]
    start = time.perf_counter()
    result = bootstrap_edge(task, task.metric, systems, 2000, np.random.default_rng(0))
    assert time.perf_counter() - start < 10
    assert result.n_units == 3000 and len(result.replicates) == 2000


def test_different_test_sets_are_refused():
    task = TABLE.task("mednli")
    single = _records("mednli", single_predictions("mednli", 13))
    other = [{**r, "gold": _wrong_label(task, r["gold"], np.random.default_rng(0))} for r in single]
    with pytest.raises(ValueError, match="same test set"):
        bootstrap_edge(task, task.metric, [(other, single)], 10, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------------------
# Edges and tables from a store
# ---------------------------------------------------------------------------------------------------------------

def _edge(analysis, source: str, target: str):
    edges = analysis.edges
    return edges[(edges["source"] == source) & (edges["target"] == target)].iloc[0]


def test_clear_gain_is_green_clear_loss_red_noise_grey(analysis3):
    assert _edge(analysis3, "mednli", "shareclefe")["colour"] == "green"
    assert _edge(analysis3, "shareclefe", "clinicalsts")["colour"] == "green"
    assert _edge(analysis3, "clinicalsts", "mednli")["colour"] == "red"
    for source, target in [("clinicalsts", "shareclefe"), ("mednli", "clinicalsts")]:
        row = _edge(analysis3, source, target)
        assert row["colour"] == "grey" and row["p"] > 0.2


def test_holm_turns_a_borderline_edge_grey(analysis3):
    row = _edge(analysis3, "shareclefe", "mednli")
    assert row["delta"] > 0
    assert row["p"] < 0.05 < row["p_holm"]
    assert row["colour"] == "grey"
    assert edge_colour(row["delta"], row["p"]) == "green"  # what an uncorrected test would have said


def test_deltas_equal_stored_scores(store3, analysis3):
    for _, row in analysis3.edges.iterrows():
        pair_tasks = tuple(t for t in TASKS3 if t in (row["source"], row["target"]))
        expected = (stored_score(store3, "mtl", pair_tasks, 13, row["target"])
                    - stored_score(store3, "single", (row["target"],), 13, row["target"]))
        assert row["delta"] == pytest.approx(expected, abs=1e-12)
        assert row["ci_low"] <= row["delta"] <= row["ci_high"]
        assert row["n_seeds"] == 1 and row["note"] == ""
    assert analysis3.missing == []


def test_seeds_are_averaged_and_spread_reported(tmp_path):
    root = build_store(tmp_path, seeds=(13, 42))
    (analysis,) = analyse_store(root, TABLE, n_boot=300)
    row = _edge(analysis, "mednli", "shareclefe")
    per_seed = [stored_score(root, "mtl", ("shareclefe", "mednli"), s, "shareclefe")
                - stored_score(root, "single", ("shareclefe",), s, "shareclefe") for s in (13, 42)]
    assert row["delta"] == pytest.approx(np.mean(per_seed))
    assert row["delta_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert row["n_seeds"] == 2 and row["colour"] == "green"
    models = analysis.models.set_index(["model_type", "task"])
    singles = [stored_score(root, "single", ("mednli",), s, "mednli") for s in (13, 42)]
    assert models.loc[("single", "mednli"), "mean"] == pytest.approx(np.mean(singles))


def test_model_table_uses_all_task_and_finetune_runs(store3, analysis3):
    models = analysis3.models.set_index(["model_type", "task"])
    for task in TASKS3:
        assert models.loc[("mt-refinement", task), "mean"] == pytest.approx(stored_score(store3, "mtl", TASKS3, 13, task))
        assert models.loc[("mt-finetune", task), "mean"] == pytest.approx(stored_score(store3, "finetune", (task,), 13, task))
    average = np.mean([models.loc[("single", t), "mean"] for t in TASKS3])
    assert models.loc[("single", "Avg"), "mean"] == pytest.approx(average)


def test_missing_and_failed_runs_are_reported_not_zeroed(tmp_path):
    root = build_store(tmp_path, seeds=(13, 42), skip={("pair", "clinicalsts", "mednli", 13),
                                                      ("pair", "clinicalsts", "mednli", 42),
                                                      ("single", "shareclefe", 42), ("finetune", "mednli", 13),
                                                      ("finetune", "mednli", 42)},
                       failed={("all", 42)})
    (analysis,) = analyse_store(root, TABLE, n_boot=200)
    missing = "\n".join(analysis.missing)
    assert "mtl pair clinicalsts+mednli: seeds 13 (not in store), 42 (not in store)" in missing
    assert "single shareclefe: seed 42 (not in store)" in missing
    assert "mtl all tasks: seed 42 (failed)" in missing
    assert "finetune mednli" in missing
    for source, target in [("clinicalsts", "mednli"), ("mednli", "clinicalsts")]:
        row = _edge(analysis, source, target)
        assert row["colour"] == "missing" and math.isnan(row["delta"]) and row["n_seeds"] == 0
    row = _edge(analysis, "mednli", "shareclefe")  # only seed 13 has the single run
    assert row["n_seeds"] == 1 and "seed 42: no single run" in row["note"]
    models = analysis.models.set_index(["model_type", "task"])
    assert math.isnan(models.loc[("mt-finetune", "mednli"), "mean"])
    assert math.isnan(models.loc[("mt-finetune", "Avg"), "mean"])
    assert models.loc[("mt-refinement", "mednli"), "n_seeds"] == 1


def test_missing_predictions_leave_the_edge_untested(tmp_path):
    root = build_store(tmp_path, tasks=("shareclefe", "mednli"), effects={})
    for path in (root / "runs").glob("single-mednli-*/predictions/mednli.jsonl"):
        path.unlink()
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    row = _edge(analysis, "shareclefe", "mednli")
    assert not math.isnan(row["delta"]) and math.isnan(row["p"]) and row["colour"] == "missing"
    assert "predictions missing" in row["note"]
    # a 2-task domain: the pair run is also the all-task (MT-Refinement) run
    models = analysis.models.set_index(["model_type", "task"])
    assert models.loc[("mt-refinement", "mednli"), "n_seeds"] == 1


def test_empty_store_gives_no_analysis(tmp_path):
    (tmp_path / "runs").mkdir()
    assert analyse_store(tmp_path, TABLE) == []


def test_extra_task_keeps_the_largest_mtl_run_as_refinement(tmp_path):
    root = build_store(tmp_path)
    extra = {"mednli": pair_predictions("mednli", 13, "noise", salt="x"),
             "i2b2-2010-re": single_predictions("i2b2-2010-re", 13)}
    write_run(root, ("i2b2-2010-re", "mednli"), "mtl", 13, extra)
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    assert analysis.tasks == ("clinicalsts", "shareclefe", "i2b2-2010-re", "mednli")
    models = analysis.models.set_index(["model_type", "task"])
    assert models.loc[("mt-refinement", "mednli"), "mean"] == pytest.approx(stored_score(root, "mtl", TASKS3, 13, "mednli"))
    assert math.isnan(models.loc[("mt-refinement", "i2b2-2010-re"), "mean"])
    assert any("MT-Refinement is the mtl run of clinicalsts, shareclefe, mednli" in n for n in analysis.notes)
    assert "single i2b2-2010-re: seed 13 (not in store)" in analysis.missing
    assert _edge(analysis, "i2b2-2010-re", "mednli")["colour"] in ("grey", "green", "red")
