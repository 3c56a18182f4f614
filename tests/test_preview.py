"""The preview's validation: rank agreement within targets with a block permutation p, decisions, split-half
reliability, and the baselines, on hand-made vectors and a hand-made store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from store_builder import TASKS3, build_store, write_affinity_run
from transfer.analysis import analyse_store
from transfer.analysis.predictors import decisions, rank_agreement, split_half
from transfer.data.tasks import load_task_table

TARGETS = ["a", "a", "b", "b", "c", "c"]  # three targets, two sources each
PREDICTOR = [1, 2, 1, 2, 1, 2]


def test_block_permutation_p_of_a_perfect_within_target_order():
    # Within each target the predictor puts the second source first, and so do the deltas. Permuting sources
    # within targets gives 2 orders per target, 2^3 = 8 equally likely arrangements; only the observed one has all
    # three targets in order (within-target rho = 1), so the exact one-sided p is 1/8 = 0.125.
    deltas = [0.1, 0.3, 0.0, 0.2, -0.1, 0.4]
    result = rank_agreement(PREDICTOR, deltas, TARGETS)
    assert result["within_rho"] == pytest.approx(1.0)
    assert result["within_p"] == pytest.approx(1 / 8)
    assert result["block_method"] == "exact block permutation (8)"
    assert result["n_targets"] == 3


def test_block_permutation_p_when_two_of_three_targets_agree():
    # Targets a and b in order (rho +1), c reversed (rho -1): within-target rho = (1 + 1 - 1) / 3 = 1/3. Of the 8
    # arrangements, those with at least two targets in order reach 1/3: C(3, 2) + C(3, 3) = 4, so p = 4/8 = 0.5.
    # The global Spearman over all six edges is slightly negative (-0.098) although two targets agree.
    deltas = [0.1, 0.3, 0.0, 0.2, 0.4, -0.1]
    result = rank_agreement(PREDICTOR, deltas, TARGETS)
    assert result["within_rho"] == pytest.approx(1 / 3)
    assert result["within_p"] == pytest.approx(0.5)
    assert result["spearman_rho"] == pytest.approx(-0.0976, abs=1e-3)


def test_a_predictor_that_knows_only_the_target_has_no_within_target_skill():
    # Every source of a target gets the same value (the target's mean): globally it ranks the targets' main
    # effects (here perfectly), within targets it has no order to offer.
    deltas = [0.30, 0.31, 0.10, 0.12, -0.2, -0.1]
    target_only = [3, 3, 2, 2, 1, 1]
    result = rank_agreement(target_only, deltas, TARGETS)
    assert result["spearman_rho"] > 0.9
    assert result["spearman_p_block"] == pytest.approx(1.0)  # the block null keeps the target effect
    assert result["within_rho"] == 0.0 and result["within_p"] == pytest.approx(1.0)


def test_random_block_permutation_above_the_exact_limit(monkeypatch):
    from transfer.analysis import predictors

    monkeypatch.setattr(predictors, "EXACT_BLOCK_LIMIT", 4)
    deltas = [0.1, 0.3, 0.0, 0.2, -0.1, 0.4]
    result = rank_agreement(PREDICTOR, deltas, TARGETS)
    assert result["block_method"].startswith("random block permutation")
    assert result["within_p"] == pytest.approx(1 / 8, abs=0.01)


def test_top1_accuracy_and_regret_by_hand():
    deltas = [0.1, 0.3, 0.0, 0.2, 0.4, -0.1]
    result = decisions(PREDICTOR, deltas, TARGETS)
    # picks: a -> second (best, regret 0), b -> second (best, 0), c -> second (-0.1; best 0.4, regret 0.5)
    assert result["top1_accuracy"] == pytest.approx(2 / 3)
    assert result["regret"] == pytest.approx(0.5 / 3)
    # a random pick: half the time the best; regret = best - mean = 0.1, 0.1, 0.25
    assert result["random_top1_accuracy"] == pytest.approx(0.5)
    assert result["random_regret"] == pytest.approx(0.45 / 3)
    tied = decisions([1, 1, 1, 1, 1, 1], deltas, TARGETS)
    assert tied["top1_accuracy"] == pytest.approx(0.5) and tied["regret"] == pytest.approx(result["random_regret"])
    # a target whose sources all have the same delta offers no decision: left out (2 targets scored, not 3)
    flat = decisions(PREDICTOR, [0.1, 0.3, 0.2, 0.2, 0.4, -0.1], TARGETS)
    assert flat["top1_targets"] == 2 and flat["top1_accuracy"] == pytest.approx(0.5)


def test_split_half_reliability():
    truth = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    # two seeds ranking the edges identically: one split, r = 1, Spearman-Brown 1
    assert split_half(np.vstack([truth, truth * 2]))[0] == pytest.approx(1.0)
    # two seeds in opposite orders: r = -1, no reliability
    value, _ = split_half(np.vstack([truth, -truth]))
    assert value == pytest.approx(-1.0)
    # halves that disagree are not "corrected" below -1: Spearman(truth, c) = -0.5 stays -0.5 (2r/(1+r) would be -2)
    c = np.array([3.0, 5.0, 2.0, 4.0, 1.0])
    value, method = split_half(np.vstack([truth, c]))
    assert value == pytest.approx(-0.5) and "halves disagree" in method
    # r = 0.5 between halves (4 seeds, every split the same): Spearman-Brown 2 * 0.5 / 1.5 = 2/3
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([2.0, 1.0, 4.0, 3.0, 5.0])  # Spearman(a, b) = 1 - 6 * 4 / (5 * 24) = 0.8
    value, method = split_half(np.vstack([a, b]))
    assert value == pytest.approx(2 * 0.8 / 1.8) and method == "split-half over 1 split of 2 seeds"
    value, method = split_half(truth[None, :])
    assert math.isnan(value) and "1 seed" in method


# ---------------------------------------------------------------------------------------------------------------
# Baselines on a hand-made store
# ---------------------------------------------------------------------------------------------------------------

Z = {13: {("clinicalsts", "mednli"): -3e-3, ("clinicalsts", "shareclefe"): -1e-3, ("mednli", "clinicalsts"): 1e-3,
          ("shareclefe", "mednli"): 2e-3, ("mednli", "shareclefe"): 4e-3, ("shareclefe", "clinicalsts"): 5e-3},
     42: {("clinicalsts", "mednli"): -2e-3, ("clinicalsts", "shareclefe"): -2e-3, ("mednli", "clinicalsts"): 2e-3,
          ("shareclefe", "mednli"): 1e-3, ("mednli", "shareclefe"): 5e-3, ("shareclefe", "clinicalsts"): 4e-3}}
SIZES = {"clinicalsts": 100, "shareclefe": 400, "mednli": 1000}


def _matrix(values: dict, scale: float = 1.0, diagonal: float = 0.0) -> list:
    return [[diagonal if s == t else scale * values.get((s, t), 0.0) for t in TASKS3] for s in TASKS3]


def _edit_metrics(folder, change) -> None:
    path = folder / "metrics.json"
    metrics = json.loads(path.read_text())
    change(metrics)
    path.write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = build_store(tmp_path_factory.mktemp("preview-store"), seeds=(13, 42))
    marginal = {13: {k: -v for k, v in Z[13].items()}, 42: {k: -v for k, v in Z[42].items()}}  # reversed order
    for seed in (13, 42):
        run_id = write_affinity_run(root, TASKS3, seed, Z[seed])

        def add_blocks(metrics, seed=seed):
            metrics["affinity"]["marginal"] = _matrix(marginal[seed], 100.0)
            metrics["affinity"]["grad_cosine"] = _matrix(Z[seed], 50.0, diagonal=1.0)
        _edit_metrics(root / "runs" / run_id, add_blocks)
    for folder in (root / "runs").iterdir():  # training-set sizes that differ by task, steps = examples / 10
        def sizes(metrics):
            for name, info in metrics["tasks"].items():
                info["examples"]["train"] = SIZES[name]
            metrics["train"]["steps_run"] = sum(SIZES[name] // 10 for name in metrics["tasks"])
        _edit_metrics(folder, sizes)
    (analysis,) = analyse_store(root, load_task_table(), n_boot=200)
    return analysis


def test_baseline_columns_are_the_defined_quantities(store):
    preview = store.affinity
    edges = preview.edges.set_index(["source", "target"])
    mean_z = {k: (Z[13][k] + Z[42][k]) / 2 for k in Z[13]}
    for (s, t), row in edges.iterrows():
        assert row["z"] == pytest.approx(mean_z[s, t])
        assert row["z_marginal"] == pytest.approx(-100 * mean_z[s, t])
        assert row["grad_cosine"] == pytest.approx(50 * mean_z[s, t])
        assert row["target_only"] == pytest.approx(np.mean([mean_z[o, t] for o in TASKS3 if o not in (t,)]))
        assert row["source_only"] == pytest.approx(np.mean([mean_z[s, o] for o in TASKS3 if o not in (s,)]))
        assert row["size_ratio"] == pytest.approx(SIZES[s] / SIZES[t])
        assert row["step_ratio"] == pytest.approx((SIZES[s] + SIZES[t]) / SIZES[t])  # pair steps / t's single steps
        assert row["n_seeds"] == 2


def test_predictor_rows_on_the_hand_made_store(store):
    preview = store.affinity
    table = preview.predictors.set_index("predictor")
    compared = preview.edges[preview.edges["state"] != "n/a"]
    assert len(compared) == 6 and preview.validation["n_edges"] == 6
    z, m = table.loc["z"], table.loc["z_marginal"]
    # M is -Z (times 100) edge by edge: every rank statistic flips sign, ties and all
    assert m["within_rho"] == pytest.approx(-z["within_rho"])
    assert m["spearman_rho"] == pytest.approx(-z["spearman_rho"])
    # the gradient cosine is 50 Z: the same ranks as Z
    assert table.loc["grad_cosine", "within_rho"] == pytest.approx(z["within_rho"])
    assert table.loc["target_only", "within_rho"] == 0.0 and table.loc["target_only", "within_p"] == pytest.approx(1)
    assert table.loc["random", "top1_accuracy"] == pytest.approx(0.5)  # two sources per target
    assert z["block_method"] == "exact block permutation (8)" and int(z["n_targets"]) == 3
    # the decision of Z for each target, by hand from the edge table
    hits = []
    for target, group in compared.groupby("target"):
        pick = group.loc[group["z"].idxmax()]
        hits.append(pick["delta"] == group["delta"].max())
    assert z["top1_accuracy"] == pytest.approx(np.mean(hits))
    assert z["n_grid_seeds"] == "2" and int(z["n_preview_seeds"]) == 2


def test_noise_ceiling_from_two_seeds(store):
    v = store.affinity.validation
    assert v["delta_reliability_method"] == "split-half over 1 split of 2 grid seeds"
    assert -1 <= v["delta_reliability"] <= 1
    z = store.affinity.predictors.set_index("predictor").loc["z"]
    assert z["reliability_method"] == "split-half over 1 split of 2 preview seeds"
    per_seed = np.array([[Z[seed][k] for k in zip(store.affinity.edges["source"], store.affinity.edges["target"])]
                         for seed in (13, 42)])
    assert z["reliability"] == pytest.approx(split_half(per_seed)[0])


def test_a_store_with_only_the_plain_z_says_the_marginal_is_absent(tmp_path):
    root = build_store(tmp_path / "store")
    write_affinity_run(root, TASKS3, 13, Z[13])
    (analysis,) = analyse_store(root, load_task_table(), n_boot=200)
    table = analysis.affinity.predictors.set_index("predictor")
    assert table.loc["z_marginal", "note"].startswith("absent")
    assert table.loc["grad_cosine", "note"].startswith("absent")
    assert analysis.affinity.validation["marginal"] == "absent" and analysis.affinity.marginal is None
    assert table.loc["z", "reliability_method"] == "n/a (1 seed: split-half needs at least 2)"
    assert not math.isnan(table.loc["z", "within_rho"])
