"""Tests for the edge statistics (transfer.analysis.stats, .paired): calibration of the seed test on synthetic
edges with known seed-level and unit-level variance, the clustered bootstrap, multiplicity corrections, the
sign-flip test and the power plan. Edges are simulated as arrays of per-cluster statistics, never as files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transfer.analysis.paired import cluster_sums, paired_bootstrap, shared_variance
from transfer.analysis.stats import (benjamini_hochberg, detectable_effect, holm, min_permutation_p,
                                     min_sign_flip_p, seed_test, seeds_needed, sign_flip_p, welch_df)
from transfer.scoring.units import ACCURACY

ALPHA = 0.05
N_EDGES = 400  # simulated edges per check: Monte Carlo SE of a 5% share is 1.1%, of a 95% coverage 1.1%
N_BOOT = 300


def simulate(rng, k=5, clusters=100, size=3, sd_seed=0.03, sd_cluster=0.08, sd_unit=0.3, effect=0.0):
    """Per-cluster statistics (clusters, seeds, 2 systems, 2) of an accuracy-like metric of one edge.

    A unit's score x = 0.7 + a (seed x system: training randomness) + t (cluster x system, shared by every seed:
    what this test set happens to favour) + e (unit x seed x system noise); system 0 (the pair run) gains
    ``effect``. The estimand, the expected delta over training seeds and test sets, is ``effect``.
    """
    a = rng.normal(0, sd_seed, size=(k, 2))
    a[:, 0] += effect
    t = rng.normal(0, sd_cluster, size=(clusters, 1, 2))
    e = rng.normal(0, sd_unit, size=(clusters, size, k, 2))
    x = (0.7 + a[None, None] + t[:, None] + e).sum(axis=1)
    return np.stack([x, np.full_like(x, size)], axis=-1)


def _run(rng, n_edges, **kw):
    out = []
    for _ in range(n_edges):
        stats = simulate(rng, **kw)
        boot = paired_bootstrap(stats, ACCURACY.score, N_BOOT, rng)
        out.append((boot, seed_test(boot.seed_deltas, boot.var_test, len(stats), ALPHA, 0.01)))
    return out


@pytest.fixture(scope="module")
def null_edges():
    return _run(np.random.default_rng(2026), N_EDGES)


def _mc_upper(share: float, n: int) -> float:
    return share + 2 * math.sqrt(share * (1 - share) / n)


def test_aa_seed_test_is_calibrated(null_edges):
    """A/A: no true effect. The seed test rejects at most alpha (within Monte Carlo error) and its 95% CI covers
    the true delta 0 between 93% and 97% of the time."""
    rejected = np.mean([test.p < ALPHA for _, test in null_edges])
    covered = np.mean([test.ci_low <= 0 <= test.ci_high for _, test in null_edges])
    assert rejected <= _mc_upper(ALPHA, N_EDGES)
    assert 0.93 <= covered <= 0.97


def test_aa_test_units_only_bootstrap_fails(null_edges):
    """The old test (paired bootstrap over test units only, seed variance ignored) calls far more than alpha of
    same-procedure comparisons significant: it tests the two checkpoints, not the training procedure."""
    rejected = np.mean([boot.p_value < ALPHA for boot, _ in null_edges])
    assert rejected > 2 * _mc_upper(ALPHA, N_EDGES)


def test_a_true_effect_of_twice_the_mde_is_detected():
    rng = np.random.default_rng(7)
    probe = _run(rng, 40)  # the MDE from the observed variances, as the plan computes it
    mde = np.median([detectable_effect(t.se_seed ** 2 * t.k, t.se_test ** 2, t.k, ALPHA, 0.8) for _, t in probe])
    detected = np.mean([t.p < ALPHA and t.delta > 0 for _, t in _run(rng, 200, effect=2 * mde)])
    assert detected >= 0.8


def test_shared_variance_counts_the_seed_specific_test_noise_once():
    """Unit noise independent across seeds shows in the between-seed variance; the test part is the covariance
    across seeds only, so with no shared (cluster x system) effect it is about 0."""
    rng = np.random.default_rng(3)
    stats = simulate(rng, k=6, sd_seed=0.0, sd_cluster=0.0, sd_unit=0.3)
    boot = paired_bootstrap(stats, ACCURACY.score, 2000, rng)
    assert boot.var_test < 0.1 * np.var(boot.seed_deltas, ddof=1)
    reps = rng.normal(size=(5000, 1)) + rng.normal(size=(5000, 3))  # shared part variance 1
    assert shared_variance(reps) == pytest.approx(1.0, abs=0.1)
    assert shared_variance(reps[:, :1]) == pytest.approx(2.0, abs=0.2)


# ---------------------------------------------------------------------------------------------------------------
# Clustered resampling
# ---------------------------------------------------------------------------------------------------------------

def test_duplicating_units_inside_their_cluster_leaves_the_se_unchanged():
    rng = np.random.default_rng(11)
    units = rng.random((60, 2, 2, 1)) < 0.7  # correct or not, 60 units, 2 seeds, 2 systems
    stats = np.concatenate([units, np.ones_like(units)], axis=-1).astype(float)
    clusters = [f"doc{i // 4}" for i in range(60)]
    m = 3
    duplicated = np.repeat(stats, m, axis=0)
    duplicated_clusters = [c for c in clusters for _ in range(m)]
    a = paired_bootstrap(cluster_sums(stats, clusters), ACCURACY.score, 500, np.random.default_rng(0))
    b = paired_bootstrap(cluster_sums(duplicated, duplicated_clusters), ACCURACY.score, 500, np.random.default_rng(0))
    assert np.std(a.replicates) == pytest.approx(np.std(b.replicates), rel=1e-12)
    assert a.delta == pytest.approx(b.delta)
    rows = paired_bootstrap(duplicated, ACCURACY.score, 500, np.random.default_rng(0))  # the row bootstrap is fooled
    assert np.std(rows.replicates) < 0.75 * np.std(b.replicates)


def test_cluster_sums_keep_unclustered_units_apart():
    stats = np.arange(8, dtype=float).reshape(4, 2)
    np.testing.assert_array_equal(cluster_sums(stats, ["a", None, "a", None]), [[4, 6], [2, 3], [6, 7]])


# ---------------------------------------------------------------------------------------------------------------
# Tests, corrections, power
# ---------------------------------------------------------------------------------------------------------------

def test_benjamini_hochberg_matches_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 0.02, 0.02, 0.04, 0.04 after the step-up minimum
    np.testing.assert_allclose(benjamini_hochberg(p)[:4], [0.02, 0.04, 0.04, 0.02])
    assert math.isnan(benjamini_hochberg(p)[4])
    assert (benjamini_hochberg(p)[:4] <= holm(p)[:4]).all()


def test_sign_flip_p_and_its_floor():
    assert sign_flip_p([0.01, 0.02, 0.03]) == pytest.approx(2 / 8)  # only all-plus and all-minus reach |mean|
    assert sign_flip_p([0.01, -0.01]) == 1.0
    assert min_sign_flip_p(5) == 2 / 32
    # Holm over 12 edges at 0.05 needs p <= 0.05 / 12 for the smallest edge: the sign-flip test first reaches it
    # at 9 seeds; an unpaired permutation of the 2k scores at 6 (2 / C(12, 6) = 0.0022).
    assert min(k for k in range(2, 20) if min_sign_flip_p(k) <= ALPHA / 12) == 9
    assert min(k for k in range(2, 20) if min_permutation_p(k) <= ALPHA / 12) == 6


def test_seed_test_with_one_seed_gives_no_p():
    result = seed_test([0.02], 1e-4, 100, ALPHA, 0.01)
    assert math.isnan(result.p) and math.isnan(result.se_seed) and result.se_test == pytest.approx(0.01)


def test_welch_df_limits():
    assert welch_df(1.0, 4, 0.0, 100) == pytest.approx(4)
    assert welch_df(0.0, 4, 1.0, 100) == pytest.approx(100)
    assert 4 < welch_df(1.0, 4, 1.0, 100) < 104


def test_equivalence_needs_a_tight_interval():
    tight = seed_test([0.001, -0.001, 0.002, 0.0, -0.002], 1e-6, 500, ALPHA, 0.01)
    wide = seed_test([0.03, -0.03, 0.02, -0.02, 0.0], 1e-4, 500, ALPHA, 0.01)
    assert tight.p_equivalence < ALPHA < wide.p_equivalence


def test_seeds_needed_shrinks_with_the_seed_variance_and_is_none_when_the_test_set_is_too_small():
    assert seeds_needed(0.01 ** 2, 0.002 ** 2, 0.01, ALPHA, 0.8) < seeds_needed(0.02 ** 2, 0.002 ** 2, 0.01, ALPHA, 0.8)
    assert seeds_needed(0.0, 0.01 ** 2, 0.01, ALPHA, 0.8) is None  # MDE >= 2.8 x 0.01 whatever the seeds
    k = seeds_needed(0.02 ** 2, 0.002 ** 2, 0.01, ALPHA, 0.8)
    assert detectable_effect(0.02 ** 2, 0.002 ** 2, k, ALPHA, 0.8) <= 0.01 < detectable_effect(
        0.02 ** 2, 0.002 ** 2, k - 1, ALPHA, 0.8)
