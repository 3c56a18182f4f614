"""Pure statistics of the analysis (numpy/scipy only, no store, no records): bootstrap resampling counts, the
bootstrap p-value, multiplicity corrections and rank correlation."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

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
