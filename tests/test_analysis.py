"""Tests for transfer.analysis: metric decompositions (transfer.scoring.units), paired bootstrap, Holm, edge calls, missing runs, and
the look-ahead affinity preview against the measured grid.

Stores are built in tmp_path by ``store_builder.build_store`` (also used by test_graph.py): spec.json,
status.json, metrics.json (scored with transfer.scoring.metrics) and predictions/<task>.jsonl, laid out like real runs.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from store_builder import (TABLE, TASKS3, _records, _wrong_label, build_store, gold_labels, pair_predictions,
                           single_predictions, stored_score, write_affinity_run, write_run)
from transfer.experiment.store import RunRecord
from transfer.scoring import metrics
from transfer.analysis import (EvidenceOptions, GateOptions, ProvenanceError, analyse_store, auto_n_boot,
                               bootstrap_edge, bootstrap_p_value, decomposed_score, edge_state, exact_spearman_p, holm,
                               resample_counts, spearman, unit_statistics)
from transfer.scoring.metrics import METRICS
from transfer.scoring.units import entity_spans


@pytest.fixture(scope="module")
def store3(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("store3"))


@pytest.fixture(scope="module")
def analysis3(store3):
    (analysis,) = analyse_store(store3, TABLE, n_boot=1000, seed=0)
    return analysis


SEEDS5 = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def store5(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("store5"), seeds=SEEDS5)


@pytest.fixture(scope="module")
def analysis5(store5):
    (analysis,) = analyse_store(store5, TABLE, n_boot=1000, seed=0)
    return analysis


# ---------------------------------------------------------------------------------------------------------------
# Decompositions equal transfer.scoring.metrics on the full sample and on resamples
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
    assert float(METRICS[task.metric].units.score(counts @ stats)) == pytest.approx(expected, abs=1e-12)


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


def test_edge_state_rules():
    o = EvidenceOptions(margin=0.01, min_seeds=5)
    assert edge_state(0.02, 0.01, 1.0, 5, o) == "helps"
    assert edge_state(-0.02, 0.01, 1.0, 5, o) == "hurts"
    assert edge_state(0.005, 0.01, 1.0, 5, o) == "inconclusive"  # significant but inside the margin
    assert edge_state(0.005, 0.5, 0.01, 5, o) == "equivalent"
    assert edge_state(0.02, 0.2, 0.2, 5, o) == "inconclusive"
    assert edge_state(0.02, 0.001, 1.0, 4, o) == "exploratory"
    assert edge_state(float("nan"), 0.01, 1.0, 5, o) == "n/a"
    # --min-seeds below 3 still leaves 1- and 2-seed edges uncoloured
    assert edge_state(0.02, 0.001, 1.0, 2, EvidenceOptions(min_seeds=1)) == "exploratory"
    assert edge_state(0.02, 0.001, 1.0, 3, EvidenceOptions(min_seeds=1)) == "helps"


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


def test_one_seed_edges_are_exploratory_with_the_test_units_only_p(analysis3):
    assert set(analysis3.edges["state"]) == {"exploratory"}
    assert analysis3.edges["p"].isna().all() and analysis3.edges["se_seed"].isna().all()
    gain = _edge(analysis3, "mednli", "shareclefe")
    assert gain["p_test"] < 0.01 and gain["se_test"] > 0 and gain["mde_test"] > 0
    assert _edge(analysis3, "clinicalsts", "shareclefe")["p_test"] > 0.2
    assert analysis3.plan.startswith("Plan: 6 of 6 edges have fewer than 5 seeds")


def test_clear_gain_helps_clear_loss_hurts_noise_is_equivalent(analysis5):
    assert _edge(analysis5, "mednli", "shareclefe")["state"] == "helps"
    assert _edge(analysis5, "shareclefe", "clinicalsts")["state"] == "helps"
    assert _edge(analysis5, "clinicalsts", "mednli")["state"] == "hurts"
    for source, target in [("clinicalsts", "shareclefe"), ("mednli", "clinicalsts")]:
        row = _edge(analysis5, source, target)
        assert row["state"] == "equivalent" and abs(row["delta"]) < 0.01 and row["p_equiv_adj"] < 0.05
    for _, row in analysis5.edges.iterrows():
        assert row["p_adj"] >= row["p"] and row["n_seeds"] == 5 and row["ci_low"] <= row["delta"] <= row["ci_high"]
        per_seed = [float(x) for x in row["seed_deltas"].split()]
        assert np.mean(per_seed) == pytest.approx(row["delta"], abs=1e-4)
        assert row["se"] == pytest.approx(math.hypot(row["se_seed"], row["se_test"]))
        assert row["se_seed"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(5), abs=1e-4)


def test_margin_and_correction_options_change_the_states(store5):
    (wide,) = analyse_store(store5, TABLE, n_boot=1000, options=EvidenceOptions(margin=0.05))
    assert _edge(wide, "shareclefe", "mednli")["state"] != "helps"  # delta 0.0375 is inside a 0.05 margin
    (bh,) = analyse_store(store5, TABLE, n_boot=1000, options=EvidenceOptions(correction="bh"))
    (holm_,) = analyse_store(store5, TABLE, n_boot=1000)
    assert (bh.edges["p_adj"] <= holm_.edges["p_adj"] + 1e-15).all()
    (flip,) = analyse_store(store5, TABLE, n_boot=200, options=EvidenceOptions(test="sign-flip"))
    assert _edge(flip, "mednli", "shareclefe")["p"] == pytest.approx(2 / 32)  # the sign-flip floor at 5 seeds
    assert set(flip.edges["state"]) <= {"inconclusive", "equivalent"}  # 6 x 2/32 > 0.05: nothing can pass Holm


def test_auto_n_boot_is_enough_for_the_variance_and_a_small_one_warns(store3, caplog):
    assert auto_n_boot(2, 0.05) == auto_n_boot(56, 0.01) == 2000  # the resamples estimate a variance, no tail p
    (auto,) = analyse_store(store3, TABLE, n_boot=None, seed=0)
    assert auto.n_boot == 2000
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # INFO shows when a CLI test set it up
    (small,) = analyse_store(store3, TABLE, n_boot=100, seed=0)
    assert small.n_boot == 100 and set(small.edges["state"]) == {"exploratory"}
    assert any("n_boot 100 is small" in r.getMessage() for r in caplog.records)


def test_deltas_equal_stored_scores(store3, analysis3):
    for _, row in analysis3.edges.iterrows():
        pair_tasks = tuple(t for t in TASKS3 if t in (row["source"], row["target"]))
        expected = (stored_score(store3, "mtl", pair_tasks, 13, row["target"])
                    - stored_score(store3, "single", (row["target"],), 13, row["target"]))
        assert row["delta"] == pytest.approx(expected, abs=1e-12)
        assert float(row["seed_deltas"]) == pytest.approx(expected, abs=1e-4)
        assert row["n_seeds"] == 1 and row["note"] == "" and row["reason"] == ""
    assert analysis3.missing == []


def test_seeds_are_averaged_and_spread_reported(tmp_path):
    root = build_store(tmp_path, seeds=(13, 42))
    (analysis,) = analyse_store(root, TABLE, n_boot=300)
    row = _edge(analysis, "mednli", "shareclefe")
    per_seed = [stored_score(root, "mtl", ("shareclefe", "mednli"), s, "shareclefe")
                - stored_score(root, "single", ("shareclefe",), s, "shareclefe") for s in (13, 42)]
    assert row["delta"] == pytest.approx(np.mean(per_seed))
    assert row["se_seed"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(2), abs=1e-4)
    assert row["n_seeds"] == 2 and row["state"] == "exploratory"
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
        assert row["state"] == "n/a" and row["reason"] == "runs missing" and math.isnan(row["delta"])
        assert row["n_seeds"] == 0
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
    assert math.isnan(row["p_test"]) and row["state"] == "n/a"
    if hasattr(RunRecord, "damage"):  # the store calls a done run without its predictions damaged: reported
        assert "single mednli: seed 13 (damaged: predictions/mednli.jsonl: missing" in "\n".join(analysis.missing)
    else:
        assert not math.isnan(row["delta"]) and "predictions missing" in row["note"]
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
    assert _edge(analysis, "i2b2-2010-re", "mednli")["state"] == "exploratory"


def test_roles_in_the_spec_decide_over_inference(tmp_path):
    """A run whose spec lists its roles is what the roles say, even where today's inference would say otherwise."""
    root = build_store(tmp_path, skip={("all", 13), ("pair", "clinicalsts", "mednli", 13)})
    # An mtl run of two of the three tasks that the grid says is the all-task run (inference: the pair run).
    preds = {t: pair_predictions(t, 13, "noise", salt="x") for t in ("clinicalsts", "mednli")}
    write_run(root, ("clinicalsts", "mednli"), "mtl", 13, preds, roles=["all"])
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    models = analysis.models.set_index(["model_type", "task"])
    assert models.loc[("mt-refinement", "mednli"), "n_seeds"] == 1
    assert _edge(analysis, "clinicalsts", "mednli")["state"] == "n/a"  # not a pair run
    assert any("MT-Refinement is the mtl run of clinicalsts, mednli" in note for note in analysis.notes)
    # ...and an all-task run with the "affinity" role is never MT-Refinement, affinity_every or not.
    root2 = build_store(tmp_path / "two", skip={("all", 13)})
    write_run(root2, TASKS3, "mtl", 13, {t: pair_predictions(t, 13, "noise", salt="all") for t in TASKS3},
              roles=["affinity"], affinity={"tasks": list(TASKS3), "matrix": np.zeros((3, 3)).tolist()})
    (analysis2,) = analyse_store(root2, TABLE, n_boot=100)
    assert analysis2.models.set_index(["model_type", "task"]).loc[("mt-refinement", "mednli"), "n_seeds"] == 0
    assert analysis2.affinity is not None


# ---------------------------------------------------------------------------------------------------------------
# Affinity runs: never a grid condition; the look-ahead preview against the measured edges
# ---------------------------------------------------------------------------------------------------------------

# The measured deltas of build_store's 3-task store, in ascending order (checked by _delta_order below):
# clinicalsts->mednli -0.095 (red), clinicalsts->shareclefe exactly 0 (grey), mednli->clinicalsts +0.0004 (grey),
# shareclefe->mednli +0.0375 (grey: Holm), mednli->shareclefe +0.108 (green), shareclefe->clinicalsts +0.112 (green)
DELTA_ORDER = [("clinicalsts", "mednli"), ("clinicalsts", "shareclefe"), ("mednli", "clinicalsts"),
               ("shareclefe", "mednli"), ("mednli", "shareclefe"), ("shareclefe", "clinicalsts")]
Z_AGREE = dict(zip(DELTA_ORDER, [-3e-3, -1e-3, 1e-3, 2e-3, 4e-3, 5e-3]))  # same ranks as the deltas
Z_REVERSED = dict(zip(DELTA_ORDER, [5e-3, 4e-3, 2e-3, 1e-3, -1e-3, -3e-3]))  # ranks reversed


def _delta_order(root: Path) -> list[tuple[str, str]]:
    deltas = {}
    for source, target in DELTA_ORDER:
        pair = tuple(t for t in TASKS3 if t in (source, target))
        deltas[(source, target)] = (stored_score(root, "mtl", pair, 13, target)
                                    - stored_score(root, "single", (target,), 13, target))
    return sorted(deltas, key=deltas.get)


def _comparable(analysis) -> tuple:
    """What the grid analysis reports, to compare with and without affinity runs in the store."""
    return (analysis.tasks, analysis.seeds, analysis.models.to_csv(), analysis.edges.to_csv(), analysis.missing,
            analysis.notes)


@pytest.fixture(scope="module")
def affinity_store(tmp_path_factory):
    """(store with the 3-task grid, the grid's analysis without any affinity run)."""
    root = build_store(tmp_path_factory.mktemp("affinity-store"))
    assert _delta_order(root) == DELTA_ORDER
    (plain,) = analyse_store(root, TABLE, n_boot=1000)  # as analysis3: shareclefe->mednli is grey after Holm
    return root, plain


def test_affinity_run_changes_nothing_in_the_grid_analysis(affinity_store):
    root, plain = affinity_store
    # Its predictions differ from the all-task run's: if it stood in for MT-Refinement, the model table would move.
    write_affinity_run(root, TASKS3, 13, Z_AGREE)
    write_affinity_run(root, TASKS3, 99, Z_AGREE)  # a seed the grid does not have: no "missing seed 99" reports
    (analysis,) = analyse_store(root, TABLE, n_boot=1000)
    assert _comparable(analysis) == _comparable(plain)
    assert not any("two done runs" in note for note in analysis.notes)
    assert analysis.affinity is not None and analysis.affinity.seeds == (13, 99)


def test_two_task_affinity_run_is_neither_the_pair_nor_the_all_task_run(tmp_path):
    tasks = ("shareclefe", "mednli")
    root = build_store(tmp_path, tasks=tasks, effects={}, skip={("pair", "shareclefe", "mednli", 13)})
    write_affinity_run(root, tasks, 13, {("shareclefe", "mednli"): 0.01, ("mednli", "shareclefe"): -0.01})
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    assert "mtl pair mednli+shareclefe: seed 13 (not in store)" in analysis.missing
    assert (analysis.edges["state"] == "n/a").all() and analysis.edges["delta"].isna().all()
    models = analysis.models.set_index(["model_type", "task"])
    assert models.loc[("mt-refinement", "mednli"), "n_seeds"] == 0
    preview = analysis.affinity
    assert preview is not None and preview.validation["n_edges"] == 0  # Z but no measured delta: n/a
    assert math.isnan(preview.validation["spearman_rho"]) and math.isnan(preview.validation["sign_agreement"])
    assert any("validation n/a" in note for note in analysis.affinity_notes)


def test_finetune_from_an_affinity_run_is_not_mt_finetune(tmp_path):
    root = build_store(tmp_path, skip={("finetune", t, 13) for t in TASKS3})
    tracked = write_affinity_run(root, TASKS3, 13, Z_AGREE)
    write_run(root, ("mednli",), "finetune", 13, {"mednli": pair_predictions("mednli", 13, "better", salt="ft")},
              parent=f"results/runs/{tracked}")
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    models = analysis.models.set_index(["model_type", "task"])
    assert models.loc[("mt-finetune", "mednli"), "n_seeds"] == 0


def test_affinity_every_zero_or_absent_is_a_plain_run(tmp_path):
    root = build_store(tmp_path, skip={("all", 13)})
    preds = {t: pair_predictions(t, 13, "noise", salt="all") for t in TASKS3}
    write_run(root, TASKS3, "mtl", 13, preds, affinity_every=0)  # written by the new grid: key present, 0
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    assert analysis.affinity is None and analysis.affinity_notes == []
    models = analysis.models.set_index(["model_type", "task"])
    assert models.loc[("mt-refinement", "mednli"), "n_seeds"] == 1


def test_preview_agreeing_in_rank_gives_rho_one(affinity_store):
    root, _ = affinity_store
    (analysis,) = analyse_store(root, TABLE, n_boot=1000)  # holds the Z_AGREE runs of seeds 13 and 99
    assert set(analysis.edges["state"]) == {"exploratory"}  # one seed: nothing is significant
    v = analysis.affinity.validation
    assert v["n_edges"] == 6 and v["spearman_rho"] == pytest.approx(1.0)
    assert v["p_method"] == "exact permutation" and v["spearman_p"] == pytest.approx(2 / 720)  # 2 of 6! orders
    # sign(Z) vs sign(delta): - -, - 0 (delta exactly 0: disagrees), + +, + +, + +, + +
    assert (v["n_sign_agree"], v["sign_agreement"]) == (5, pytest.approx(5 / 6))
    assert v["n_significant"] == 0 and math.isnan(v["sign_agreement_significant"])
    edges = analysis.affinity.edges.set_index(["source", "target"])
    assert edges.loc[("clinicalsts", "shareclefe"), "sign_agree"] == False  # noqa: E712 (not None: a real "no")
    assert edges.loc[("mednli", "shareclefe"), "z"] == pytest.approx(4e-3)  # mean of two runs with equal Z
    assert edges.loc[("mednli", "shareclefe"), "z_std"] == pytest.approx(0.0)


def test_preview_sign_agreement_on_significant_edges(store5, tmp_path):
    import shutil

    root = tmp_path / "store"
    shutil.copytree(store5, root)
    write_affinity_run(root, TASKS3, 1, Z_AGREE)
    (analysis,) = analyse_store(root, TABLE, n_boot=300)
    v = analysis.affinity.validation
    # helps/hurts: clinicalsts->mednli (hurts, Z < 0), mednli->shareclefe and shareclefe->clinicalsts and
    # shareclefe->mednli (helps, Z > 0)
    assert (v["n_significant"], v["n_sign_agree_significant"], v["sign_agreement_significant"]) == (4, 4, 1.0)
    assert set(analysis.affinity.edges["state"]) == {"helps", "hurts", "equivalent"}


def test_preview_reversed_in_rank_gives_rho_minus_one(tmp_path):
    root = build_store(tmp_path)
    write_affinity_run(root, TASKS3, 13, Z_REVERSED, wall_seconds=330.0, tracker_seconds=25.0)
    (analysis,) = analyse_store(root, TABLE, n_boot=1000)
    v = analysis.affinity.validation
    assert v["spearman_rho"] == pytest.approx(-1.0) and v["spearman_p"] == pytest.approx(2 / 720)
    # Z signs + + + + - - against delta signs - 0 + + + +: only mednli->clinicalsts and shareclefe->mednli agree
    assert (v["n_sign_agree"], v["sign_agreement"]) == (2, pytest.approx(2 / 6))
    assert v["n_significant"] == 0
    # wall times (store_builder.WALL_SECONDS): 3 singles x 100 s + 3 pairs x 200 s = 900 s of grid; the plain
    # all-task run took 300 s, the affinity run 330 s (of which its tracker 25 s)
    assert (v["preview_wall_s"], v["grid_wall_s"], v["n_grid_runs"]) == (330.0, 900.0, 6)
    assert v["time_ratio"] == pytest.approx(330 / 900)
    assert v["plain_all_wall_s"] == 300.0 and v["tracking_overhead"] == pytest.approx(1.1)
    assert v["tracker_s"] == 25.0


def test_tracking_overhead_of_a_short_preview_is_per_training_step(tmp_path):
    # a preview that stopped after a third of the all-task run's steps (affinity_epochs): per run its wall time
    # would look like a third of the plain run's; per step it costs 10% more
    import json

    root = build_store(tmp_path)
    rid = write_affinity_run(root, TASKS3, 13, Z_REVERSED, wall_seconds=110.0, tracker_seconds=10.0)
    plain = next(p for p in (root / "runs").glob("mtl-*") if p.name != rid and p.name.count("+") == 2)
    for folder, steps in ((root / "runs" / rid, 100), (plain, 300)):
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["train"]["steps_run"] = steps
        (folder / "metrics.json").write_text(json.dumps(metrics))
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    v = analysis.affinity.validation
    assert v["plain_all_wall_s"] == 300.0 and v["tracking_overhead"] == pytest.approx((110 / 100) / (300 / 300))


def test_preview_averages_seeds_and_sums_their_cost(tmp_path):
    root = build_store(tmp_path, seeds=(13, 42))
    write_affinity_run(root, TASKS3, 13, Z_AGREE, wall_seconds=300.0, tracker_seconds=20.0)
    write_affinity_run(root, TASKS3, 42, {k: 3 * z for k, z in Z_AGREE.items()}, wall_seconds=360.0,
                       tracker_seconds=30.0)
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    preview = analysis.affinity
    edges = preview.edges.set_index(["source", "target"])
    assert edges.loc[("mednli", "shareclefe"), "z"] == pytest.approx(2 * 4e-3)
    assert edges.loc[("mednli", "shareclefe"), "z_std"] == pytest.approx(np.std([4e-3, 12e-3], ddof=1))
    assert edges.loc[("mednli", "shareclefe"), "n_affinity_runs"] == 2
    v = preview.validation
    assert (v["preview_wall_s"], v["grid_wall_s"], v["tracker_s"]) == (660.0, 1800.0, 50.0)
    assert v["time_ratio"] == pytest.approx(660 / 1800) and v["tracking_overhead"] == pytest.approx(660 / 600)


def test_constant_z_gives_nan_rho_without_crashing(tmp_path):
    root = build_store(tmp_path)
    write_affinity_run(root, TASKS3, 13, {})  # every off-diagonal Z is 0
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    v = analysis.affinity.validation
    assert v["n_edges"] == 6 and math.isnan(v["spearman_rho"]) and math.isnan(v["spearman_p"])
    assert v["p_method"] == "n/a (constant values)"
    assert v["n_sign_agree"] == 1  # only clinicalsts->shareclefe: Z = 0 = delta


def test_unusable_affinity_runs_are_noted_not_used(tmp_path):
    root = build_store(tmp_path)
    running = write_affinity_run(root, TASKS3, 13, Z_AGREE, status="running")
    empty = write_affinity_run(root, TASKS3, 42, Z_AGREE, matrix=False)
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    assert analysis.affinity is None
    notes = "\n".join(analysis.affinity_notes)
    assert f"{running} (seed 13) is running" in notes and f"{empty} (seed 42) recorded no affinity matrix" in notes
    assert analysis.missing == []  # neither counts as a missing all-task run nor adds seed 42


def test_store_with_only_an_affinity_run(tmp_path):
    write_affinity_run(tmp_path, TASKS3, 13, Z_AGREE)
    (analysis,) = analyse_store(tmp_path, TABLE, n_boot=100)
    assert not analysis.has_grid and analysis.tasks == TASKS3 and analysis.missing == []
    assert analysis.affinity.validation["n_edges"] == 0 and analysis.affinity.has_grid is False
    assert math.isnan(analysis.affinity.validation["time_ratio"])


def test_spearman_helpers():
    assert exact_spearman_p([1, 2, 3], [10, 20, 30]) == pytest.approx(2 / 6)
    assert exact_spearman_p([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(
        np.mean([abs(r) >= 0.8 - 1e-12 for r in _all_spearman([1, 2, 3, 4], [1, 3, 2, 4])]))
    rho, p, method = spearman(np.arange(12.0), np.arange(12.0) ** 2)
    assert rho == pytest.approx(1.0) and method == "t approximation"
    from scipy.stats import spearmanr

    x, y = np.random.default_rng(0).normal(size=(2, 15))
    rho, p, _ = spearman(x, y)
    assert (rho, p) == (pytest.approx(spearmanr(x, y).statistic), pytest.approx(spearmanr(x, y).pvalue))
    assert spearman([1.0, 2.0], [1.0, 2.0])[2] == "n/a (fewer than 3 edges)"
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])[0])


def _all_spearman(x, y) -> list[float]:
    import itertools

    from scipy.stats import spearmanr

    return [spearmanr(x, [y[i] for i in order]).statistic for order in itertools.permutations(range(len(y)))]


def test_analysis_modules_never_import_torch():
    code = ("import sys\n"
            "import transfer.analysis, transfer.report.tables, transfer.report.plots, transfer.graph\n"
            "import transfer.analysis.preview, transfer.report.present, transfer.report.draw\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------------------------
# The learning gate, provenance and clusters
# ---------------------------------------------------------------------------------------------------------------

def test_degenerate_heads_make_their_edges_na_and_are_marked_in_the_models_table(tmp_path):
    tasks = ("shareclefe", "mednli")
    root = build_store(tmp_path, tasks=tasks, effects={}, skip={("single", "mednli", 13), ("pair", "shareclefe",
                                                                                          "mednli", 13)})
    write_run(root, ("mednli",), "single", 13, {"mednli": ["entailment"] * 400})  # one class only
    pair = {"shareclefe": [["O"] * len(g) for g in gold_labels("shareclefe")],  # the tagger finds no entity
            "mednli": pair_predictions("mednli", 13, "noise")}
    write_run(root, tasks, "mtl", 13, pair)
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    for source, target in [("shareclefe", "mednli"), ("mednli", "shareclefe")]:
        row = _edge(analysis, source, target)
        assert row["state"] == "n/a" and row["reason"].startswith("untrained: ")
        assert "shareclefe: no entity predicted" in row["reason"]
    assert "100.0% of predictions are 'entailment'" in _edge(analysis, "shareclefe", "mednli")["reason"]
    models = analysis.models.set_index(["model_type", "task"])
    assert "of predictions are 'entailment'" in models.loc[("single", "mednli"), "untrained"]
    assert models.loc[("single", "shareclefe"), "untrained"] == ""
    assert len(analysis.untrained) == 2
    (ungated,) = analyse_store(root, TABLE, n_boot=100, gate=GateOptions(enabled=False))
    assert set(ungated.edges["state"]) == {"exploratory"}
    # The affinity preview does not validate Z against deltas that are no evidence (n/a edges).
    write_affinity_run(root, tasks, 13, {("shareclefe", "mednli"): 0.01, ("mednli", "shareclefe"): -0.01})
    (with_preview,) = analyse_store(root, TABLE, n_boot=100)
    assert with_preview.affinity.validation["n_edges"] == 0 and with_preview.affinity.has_grid
    assert any("every measured edge is n/a" in note for note in with_preview.affinity_notes)


def test_gate_checks_each_kind():
    from transfer.analysis.evidence import prediction_gate, rising_gate

    o = GateOptions()
    sts = TABLE.task("clinicalsts")
    gold = list(np.linspace(0, 5, 100))
    assert "prediction SD" in prediction_gate(sts, [{"gold": g, "pred": 2.5 + 0.1 * (g - 2.5)} for g in gold], o)
    assert prediction_gate(sts, [{"gold": g, "pred": g + 0.3} for g in gold], o) is None
    nli = TABLE.task("mednli")
    rng = np.random.default_rng(0)
    labels = [str(x) for x in rng.choice(nli.labels, size=600)]
    guessed = [{"gold": g, "pred": str(rng.choice(nli.labels))} for g in labels]  # chance level, balanced
    assert "within 2 SE of chance" in prediction_gate(nli, guessed, o)
    good = [{"gold": g, "pred": g if rng.random() < 0.7 else str(rng.choice(nli.labels))} for g in labels]
    assert prediction_gate(nli, good, o) is None
    history = [{"epoch": e, "dev": {"mednli": {"accuracy": a}}} for e, a in enumerate([0.40, 0.42, 0.60], 1)]
    assert "still rising" in rising_gate(history, "mednli", "accuracy", o)
    flat = [{"epoch": e, "dev": {"mednli": {"accuracy": a}}} for e, a in enumerate([0.40, 0.60, 0.62], 1)]
    assert rising_gate(flat, "mednli", "accuracy", o) is None
    assert rising_gate(history[:2], "mednli", "accuracy", o) is None  # two epochs cannot show a bend


def test_runs_computed_differently_never_share_an_edge(tmp_path):
    import json

    root = build_store(tmp_path, tasks=("shareclefe", "mednli"), effects={})
    for folder in (root / "runs").iterdir():
        metrics_file = folder / "metrics.json"
        metrics = json.loads(metrics_file.read_text())
        metrics["train"]["precision"] = "fp32" if folder.name.startswith("single-mednli") else "bf16"
        metrics_file.write_text(json.dumps(metrics))
    with pytest.raises(ProvenanceError, match=r"precision: bf16 \(mtl-shareclefe\+mednli.*fp32 \(single-mednli"):
        analyse_store(root, TABLE, n_boot=100)


def test_records_resample_by_their_cluster():
    task = TABLE.task("mednli")
    single = _records("mednli", single_predictions("mednli", 13))
    pair = _records("mednli", pair_predictions("mednli", 13, "better"))
    clustered = [[{**r, "cluster": f"doc{i // 8}"} for i, r in enumerate(records)] for records in (pair, single)]
    rows = bootstrap_edge(task, task.metric, [(pair, single)], 400, np.random.default_rng(0))
    docs = bootstrap_edge(task, task.metric, [tuple(clustered)], 400, np.random.default_rng(0))
    assert (rows.n_units, rows.n_clusters, docs.n_clusters) == (400, 400, 50)
    assert docs.delta == rows.delta
    unclustered = bootstrap_edge(task, task.metric, [tuple(clustered)], 400, np.random.default_rng(0), clustered=False)
    assert unclustered.n_clusters == 400


# ----------------------------------------------------------------------------------------------- primary metric changes

from stores import LEGACY_STORE as _LEGACY  # noqa: E402


def test_runs_stored_under_an_older_primary_report_todays_metric_and_say_how_they_selected():
    # The legacy store was written while DDI's primary was micro-F1; DDI's primary is now macro-F1.
    from transfer.analysis.index import load_runs, selection_metric_notes
    from transfer.data.tasks import load_task_table
    from transfer.experiment.store import ResultsStore

    table = load_task_table()
    assert table.tasks["ddi2013-type"].metric == "macro_f1"
    runs = [r for r in load_runs(ResultsStore(_LEGACY), table) if "ddi2013-type" in r.tasks and r.status == "done"]
    assert runs
    for run in runs:
        stored = run.metrics["tasks"]["ddi2013-type"]
        assert stored["metric"] == "micro_f1"
        assert run.scores["ddi2013-type"] == stored["test"]["macro_f1"] != stored["test_score"]
    notes = selection_metric_notes(runs, ("ddi2013-type", "chemprot"), table)
    assert len(notes) == 1 and "ddi2013-type" in notes[0] and "micro_f1" in notes[0]


# ----------------------------------------------------------------------------------------------- convergence

def _run_with_history(stage: str, history: list[float] | None, recorded: bool | None = None):
    from types import SimpleNamespace

    info = {"metric": "micro_f1"}
    if recorded is not None:
        info["peaked_at_last_epoch"] = recorded
    metrics = {"tasks": {"chemprot": info},
               "history": [{"epoch": i + 1, "dev": {"chemprot": {"micro_f1": v}}} for i, v in enumerate(history or [])]}
    return SimpleNamespace(tasks=("chemprot",), stage=stage, metrics=metrics)


def test_convergence_counts_task_runs_that_peaked_at_their_last_epoch_and_warns_above_a_fifth():
    from transfer.experiment.convergence import convergence, peaked_at_last_epoch

    rising, bent, tied = (_run_with_history("single", [0.1, 0.2, 0.3]), _run_with_history("single", [0.1, 0.4, 0.3]),
                          _run_with_history("mtl", [0.1, 0.4, 0.4]))
    assert peaked_at_last_epoch(rising.metrics, "chemprot") is True
    assert peaked_at_last_epoch(bent.metrics, "chemprot") is False
    assert peaked_at_last_epoch(tied.metrics, "chemprot") is False  # a tie keeps the earlier epoch, as selection does
    # a recorded flag wins over the history (runs record it with their own selection rule)
    assert peaked_at_last_epoch(_run_with_history("single", [0.1, 0.4, 0.3], recorded=True).metrics, "chemprot")
    assert peaked_at_last_epoch(_run_with_history("single", None).metrics, "chemprot") is None
    def runs(*items):
        return [(r.stage, r.tasks, r.metrics) for r in items]

    summary = convergence(runs(rising, bent, tied))
    assert (summary["single_peaked"], summary["single_task_runs"]) == (1, 2)
    assert (summary["all_peaked"], summary["all_task_runs"]) == (1, 3)
    assert "1 of 3 task-runs" in summary["warning"]  # 33% > 20%
    assert "warning" not in convergence(runs(bent, tied, bent, bent, rising, bent))  # 1 of 6 = 17%
    assert summary["single_untrained"] == summary["all_untrained"] == 0


def test_an_untrained_task_run_that_stalled_early_is_not_counted_as_converged():
    from transfer.experiment.convergence import convergence

    stalled = _run_with_history("single", [0.5, 0.5, 0.5])  # best epoch 1: never left its first score
    rising = _run_with_history("single", [0.1, 0.2, 0.3])
    untrained = {"chemprot"}
    summary = convergence([(stalled.stage, stalled.tasks, stalled.metrics, untrained),
                           (rising.stage, rising.tasks, rising.metrics, untrained)])
    # the stalled run is set apart; the still-rising one stays counted as not converged
    assert (summary["single_peaked"], summary["single_task_runs"], summary["single_untrained"]) == (1, 1, 1)
    # without the gate's verdict the stalled run would pass for converged
    plain = convergence([(stalled.stage, stalled.tasks, stalled.metrics)])
    assert (plain["single_peaked"], plain["single_task_runs"]) == (0, 1)


def test_graph_summary_reports_converged_single_task_runs(capsys, tmp_path):
    import shutil

    from transfer.graph import main

    store = tmp_path / "store"
    shutil.copytree(_LEGACY, store)
    assert main([str(store), "--out", str(tmp_path / "out"), "--domain", "biomedical"]) == 0
    out = capsys.readouterr().out
    assert "converged single task-runs (best dev epoch before the last): 0 of 4 (0%)" in out
    assert "budget diagnostic: Spearman rho(pair/single step ratio, delta) = +0.68 over 12 edges" in out
    assert "compute: 16 done runs" in out  # one seed of the 4-task grid and its affinity run
    assert "computed as: 16 runs bf16 on an unrecorded device class, lean BERT forward" in out  # before provenance


def test_the_plan_says_runs_are_missing_not_untrained_when_no_edge_has_its_runs(tmp_path):
    # a grid still running: its pair runs are there, no single run yet; the plan must not blame training
    skip = {("single", t, 13) for t in TASKS3}
    (analysis,) = analyse_store(build_store(tmp_path, skip=skip), TABLE, n_boot=100)
    assert set(analysis.edges["state"]) == {"n/a"}
    assert "all 6 lack runs or predictions" in analysis.plan and "longer training" not in analysis.plan
    from transfer.analysis.edges import seed_plan

    untrained = analysis.edges.assign(reason="untrained: single-mednli mednli: one class")
    assert "6 of 6 touch an untrained task-run" in seed_plan(untrained, analysis.options)


def test_budget_diagnostic_warns_when_deltas_follow_the_pair_runs_extra_steps():
    import pandas as pd

    from transfer.analysis.edges import BUDGET_WARNING_RHO, budget_diagnostic

    follows = pd.DataFrame({"step_ratio": [1.2, 1.5, 1.8, 2.0, 2.5, 3.0], "delta": [-0.02, 0.0, 0.01, 0.02, 0.05, 0.09]})
    result = budget_diagnostic(follows)
    assert result["rho"] == pytest.approx(1.0) and result["n"] == 6 and result["warning"]
    mixed = follows.assign(delta=[0.05, -0.02, 0.09, 0.0, -0.01, 0.02])
    result = budget_diagnostic(mixed)
    assert result["rho"] <= BUDGET_WARNING_RHO and result["warning"] == ""
    assert budget_diagnostic(follows.assign(step_ratio=float("nan")))["n"] == 0


def test_the_summary_line_says_how_many_untrained_task_runs_were_set_apart():
    from transfer.graph import _untrained_apart

    assert _untrained_apart({"single_untrained": 0, "all_untrained": 0}) == ""
    line = _untrained_apart({"single_untrained": 1, "all_untrained": 3})
    assert "set apart: 3 untrained task-runs" in line and "1 of them single-task" in line


def test_how_computed_names_the_host_class_where_runs_record_it():
    from types import SimpleNamespace

    from transfer.analysis.driver import how_computed

    def run(provenance, status="done"):
        return SimpleNamespace(status=status, metrics={"provenance": provenance})

    old = {"precision": "bf16", "encoder_impl": "transfer", "device_class": "cpu (bf16)"}
    new = {**old, "cpu": "Some CPU (amx_bf16)"}
    counts = how_computed([run(old), run(old), run(new), run(new, status="failed")])
    assert counts == {("bf16", "cpu (bf16)", "transfer"): 2, ("bf16", "cpu (bf16): Some CPU (amx_bf16)", "transfer"): 1}


def test_multi_task_models_are_tested_against_single_task_training(tmp_path):
    # build_store's fine-tune runs are "better" than single (40 wrong -> right, 2 right -> wrong per task), its
    # all-task runs only noise: at five seeds the fine-tunes help every task and the refinement helps none.
    from transfer.analysis import METHOD_COLUMNS

    seeds = (13, 14, 15, 16, 17)
    root = build_store(tmp_path, seeds=seeds, skip={("finetune", "mednli", 17)})
    analysis = analyse_store(root, TABLE, n_boot=300)[0]
    methods = analysis.methods.set_index(["model_type", "task"])
    assert list(analysis.methods.columns) == METHOD_COLUMNS
    for task in TASKS3:
        ft, refine = methods.loc[("mt-finetune", task)], methods.loc[("mt-refinement", task)]
        singles = [stored_score(root, "single", (task,), s, task) for s in seeds]
        ft_seeds = [s for s in seeds if (task, s) != ("mednli", 17)]
        finetunes = [stored_score(root, "finetune", (task,), s, task) for s in ft_seeds]
        assert ft["delta"] == pytest.approx(np.mean(finetunes) - np.mean([singles[seeds.index(s)] for s in ft_seeds]))
        assert ft["seeds"] == " ".join(map(str, ft_seeds))
        assert ft["delta"] > 0 and ft["ci_low"] > 0
        assert refine["n_seeds"] == 5 and refine["state"] != "helps"
    assert methods.loc[("mt-finetune", "mednli"), "state"] == "exploratory"  # 4 seeds: below the seeds to colour
    testable = analysis.methods[analysis.methods["p_adj"].notna()]
    assert len(testable) == 2 * len(TASKS3) - 1  # the family: every comparison with five seeds
    assert (testable["p_adj"] >= testable["p"] - 1e-12).all()
    helped = methods.xs("mt-finetune")["state"].drop("mednli")
    assert (helped == "helps").all()
    from transfer.report.tables import models_markdown

    text = models_markdown(analysis)
    assert "**Against single-task training**" in text and "Holm over the 5 of these 6 comparisons with at least 5 seeds" in text
    assert "| MT-Fine-Tune | mednli | exploratory |" in text
    assert "Seeds:" not in text  # every model has runs at the same seeds


def test_the_model_table_names_each_models_seeds_where_they_differ(tmp_path):
    from transfer.report.tables import models_markdown

    root = build_store(tmp_path, seeds=(13, 14), skip={("all", 14)} | {("finetune", t, 14) for t in TASKS3})
    analysis = analyse_store(root, TABLE, n_boot=200)[0]
    text = models_markdown(analysis)
    assert "Seeds: BERT (single task) 13 14; MT-Refinement 13; MT-Fine-Tune 13." in text
    assert "no comparison has the 5 seeds to be tested, so all are exploratory or n/a" in text
    from transfer.report.plots import plot_model_bars

    caption = plot_model_bars(analysis).axes[0].get_xlabel()  # the figure is read alone: it says so too
    assert caption.endswith("\nscores over seeds: BERT (single task) 13 14; MT-Refinement 13; MT-Fine-Tune 13")


def test_a_multi_task_model_without_runs_is_na_and_says_so(tmp_path):
    root = build_store(tmp_path, skip={("all", 13)} | {("finetune", t, 13) for t in TASKS3})
    methods = analyse_store(root, TABLE, n_boot=200)[0].methods
    assert (methods["state"] == "n/a").all() and (methods["reason"] == "runs missing").all()
