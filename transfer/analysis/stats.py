"""Pure statistics of the analysis (numpy/scipy only, no store, no records): bootstrap resampling counts, the
bootstrap p-value, multiplicity corrections (Holm, Benjamini-Hochberg), rank correlation, the seed test of an edge
(Welch t and TOST), the exact sign-flip test and its floor, and the power plan (MDE, seeds needed)."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXACT_P_MAX_N = 8  # up to this many edges the Spearman p-value is exact (all n! pairings); above, spearmanr's
MIN_SPEARMAN_N = 3  # fewer edges give rho = +-1 whatever the data: reported as n/a


def resample_counts(rng: np.random.Generator, n_units: int, n_rep: int) -> np.ndarray:
    """(n_rep, n_units) multiplicities of each unit in n_rep bootstrap resamples of size n_units."""
    draws = rng.integers(0, n_units, size=(n_rep, n_units))
    offsets = (np.arange(n_rep) * n_units)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_rep * n_units).reshape(n_rep, n_units).astype(float)


def bootstrap_p_value(observed: float, replicates: np.ndarray) -> float:
    """Two-sided p: share of centred replicates at least as far from 0 as the observed delta (+1 correction)."""
    extreme = np.abs(replicates - observed) >= abs(observed) - 1e-12
    return float((1 + np.count_nonzero(extreme)) / (len(replicates) + 1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and do not count as tests."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    order = tested[np.argsort(p[tested], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def exact_spearman_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided exact permutation p of Spearman's rho: the share of all n! pairings of the ranks whose |rho| is
    at least the observed |rho| (ties get average ranks). For small n only (n! rows)."""
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    permuted = ry[np.array(list(itertools.permutations(range(len(ry)))))]
    rhos = permuted @ rx / (np.linalg.norm(rx) * np.linalg.norm(ry))
    observed = float(rx @ ry / (np.linalg.norm(rx) * np.linalg.norm(ry)))
    return float(np.mean(np.abs(rhos) >= abs(observed) - 1e-12))


def _ranks(values: Sequence[float]) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(np.asarray(values, dtype=float)).astype(float)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, str]:
    """(rho, two-sided p, how p was computed) of Spearman's rank correlation; (nan, nan, "n/a (why)") when undefined.

    rho comes from ``scipy.stats.spearmanr``. It is undefined for a constant vector and reported as n/a for
    fewer than MIN_SPEARMAN_N points (two points always give +-1). p is exact (``exact_spearman_p``) for up to
    EXACT_P_MAX_N points, where spearmanr's t approximation is poor (it gives p = 0 for three points in
    order); above that it is spearmanr's.
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_SPEARMAN_N:
        return math.nan, math.nan, f"n/a (fewer than {MIN_SPEARMAN_N} edges)"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, "n/a (constant values)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning and friends: NaN is reported as n/a
        result = spearmanr(x, y)
    rho, p = float(result.statistic), float(result.pvalue)
    if math.isnan(rho):
        return math.nan, math.nan, "n/a (undefined)"
    if len(x) <= EXACT_P_MAX_N:
        return rho, exact_spearman_p(x, y), "exact permutation"
    return rho, p, "t approximation"


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); NaN entries stay NaN and are not tests."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if not m:
        return adjusted
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return adjusted


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


# ---------------------------------------------------------------------------------------------------------------
# The edge test over seeds and test units
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedTest:
    """The test of one edge from its per-seed deltas and the test-unit resampling variance of their mean.

    se_seed**2 = between-seed variance of the per-seed deltas / k (training randomness); se_test**2 = the test-set
    variance of the seed-mean delta that every seed shares (``transfer.analysis.paired.BootstrapResult.var_test``);
    se**2 = their sum. df: Welch-Satterthwaite with k - 1 degrees of freedom for the seed part and, for the test
    part, the number of clusters - 1. p: two-sided, t reference; ci: the unadjusted (1 - alpha) interval;
    p_equivalence: two one-sided tests (TOST) of |delta| < margin.
    """

    k: int
    delta: float
    se_seed: float
    se_test: float
    se: float
    df: float
    p: float
    ci_low: float
    ci_high: float
    p_equivalence: float


def welch_df(var_seed: float, df_seed: float, var_test: float, df_test: float) -> float:
    """Welch-Satterthwaite degrees of freedom of var_seed + var_test (each with its own df)."""
    total = var_seed + var_test
    denominator = (var_seed ** 2 / df_seed if df_seed > 0 else 0.0) + (var_test ** 2 / df_test if df_test > 0 else 0.0)
    return total ** 2 / denominator if denominator > 0 else math.inf


def seed_test(seed_deltas: Sequence[float], var_test: float, n_clusters: int, alpha: float,
              margin: float) -> SeedTest:
    """:class:`SeedTest` of one edge; with one seed the between-seed variance is unknown and p, ci are NaN."""
    from scipy import stats

    d = np.asarray(seed_deltas, dtype=float)
    k, delta = len(d), float(d.mean())
    if k < 2:
        se_test = math.sqrt(var_test)
        return SeedTest(k, delta, math.nan, se_test, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    var_seed = float(d.var(ddof=1)) / k
    se = math.sqrt(var_seed + var_test)
    df = welch_df(var_seed, k - 1, var_test, n_clusters - 1)
    if se == 0:
        p = 1.0 if delta == 0 else 0.0
        return SeedTest(k, delta, 0.0, 0.0, 0.0, df, p, delta, delta, 0.0 if abs(delta) < margin else 1.0)
    t = stats.t(df)
    half = float(t.ppf(1 - alpha / 2)) * se
    p_equiv = max(float(t.sf((delta + margin) / se)), float(t.cdf((delta - margin) / se))) if margin > 0 else 1.0
    return SeedTest(k, delta, math.sqrt(var_seed), math.sqrt(var_test), se, df,
                    float(2 * t.sf(abs(delta) / se)), delta - half, delta + half, p_equiv)


def sign_flip_p(seed_deltas: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p over seeds: the share of all 2^k sign patterns of the per-seed
    deltas whose |mean| is at least the observed |mean| (the observed pattern included). Conditional on the fixed
    test set: it tests training randomness only. Its smallest attainable value is 2 / 2^k (``min_sign_flip_p``)."""
    d = np.asarray(seed_deltas, dtype=float)
    k = len(d)
    if k == 0:
        return math.nan
    signs = 1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
    means = np.abs(signs @ d) / k
    return float(np.mean(means >= abs(d.mean()) - 1e-12))


def min_sign_flip_p(k: int) -> float:
    """Smallest p the sign-flip test can give with k seeds (all deltas of one sign): 2 / 2^k."""
    return min(1.0, 2.0 / 2 ** k)


def min_permutation_p(k: int) -> float:
    """Smallest p of an exact two-sided permutation test of the 2k scores (k per system, unpaired): 2 / C(2k, k)."""
    return min(1.0, 2.0 / math.comb(2 * k, k))


def detectable_effect(var_seed_unit: float, var_test: float, k: int, alpha: float, power: float,
                      df_test: float = math.inf) -> float:
    """Minimum detectable effect of the seed test at k seeds, two-sided level ``alpha`` and ``power``:
    (t_{1-alpha/2} + t_{power}) * sqrt(var_seed_unit / k + var_test), t with the Welch df at k seeds.

    ``var_seed_unit`` is the between-seed variance of one per-seed delta; ``var_test`` is kept as observed (the
    shared test set's sampling variance barely shrinks with more seeds), so the planning is conservative.
    """
    from scipy import stats

    if k < 2 or math.isnan(var_seed_unit) or math.isnan(var_test):
        return math.nan
    var_seed = var_seed_unit / k
    df = welch_df(var_seed, k - 1, var_test, df_test)
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * math.sqrt(var_seed + var_test))


def seeds_needed(var_seed_unit: float, var_test: float, effect: float, alpha: float, power: float,
                 df_test: float = math.inf, max_seeds: int = 100) -> int | None:
    """The fewest seeds whose :func:`detectable_effect` is at most ``effect``; None when even ``max_seeds`` do
    not suffice (the test set alone is too small) or the variances are unknown."""
    if effect <= 0 or math.isnan(var_seed_unit) or math.isnan(var_test):
        return None
    for k in range(2, max_seeds + 1):
        if detectable_effect(var_seed_unit, var_test, k, alpha, power, df_test) <= effect:
            return k
    return None
