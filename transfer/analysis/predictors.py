"""Does a predictor of pairwise transfer rank the measured deltas, beyond what knowing the target alone gives?

A *predictor* gives every ordered pair s -> t a number (the look-ahead affinity Z, its marginal version, or a
baseline); the measured delta(s -> t) is what it predicts. Statistics (numpy/scipy only):

* ``spearman_rho`` over all edges, with the usual exchangeable p and with a *block* p: sources permuted within each
  target, so the target's main effect (a target that every source helps) stays in the null, as it stays in the
  data. A predictor that knows only the target can score a high global rho; it cannot beat this null.
* ``within_rho``: the mean over targets of Spearman's rho between predictor and delta across that target's sources
  (a target whose predictor or deltas are all tied contributes 0: no order to agree with), with the same block p.
* decisions: per target, the source the predictor ranks first (ties: each tied source equally likely); top-1
  accuracy (it is the grid's best source) and regret (best delta minus the picked source's delta), mean over
  targets (those whose sources' deltas are not all equal).
* ``split_half``: the split-half reliability of per-seed values (Spearman across edges between the means of two
  halves of the seeds, averaged over the splits, Spearman-Brown corrected to the full count): the noise ceiling.

Block p: one-sided (the share of within-target permutations whose statistic is at least the observed one), exact
over every permutation when there are at most ``EXACT_BLOCK_LIMIT`` of them, else ``RANDOM_BLOCK_DRAWS`` random
ones ((1 + hits) / (1 + draws)) from a fixed generator.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

EXACT_BLOCK_LIMIT = 200_000
RANDOM_BLOCK_DRAWS = 20_000
MAX_SPLITS = 500  # split-half: every split of the seeds into two halves up to this many, else a random sample


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values).astype(float)


def _blocks(targets: Sequence) -> list[np.ndarray]:
    """Index arrays of the edges of each target (in order of first appearance)."""
    labels = list(dict.fromkeys(targets))
    position = np.asarray([labels.index(t) for t in targets])
    return [np.flatnonzero(position == k) for k in range(len(labels))]


def _permutation_matrix(blocks: list[np.ndarray], n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Rows: index vectors that permute edges within each block (the identity first when exact)."""
    count = math.prod(math.factorial(len(b)) for b in blocks)
    if count <= EXACT_BLOCK_LIMIT:
        per_block = [np.array(list(itertools.permutations(b))) for b in blocks]
        rows = np.empty((count, n), dtype=int)
        for k, combo in enumerate(itertools.product(*per_block)):
            for block, perm in zip(blocks, combo):
                rows[k, block] = perm
        return rows, f"exact block permutation ({count:,})"
    rows = np.tile(np.arange(n), (RANDOM_BLOCK_DRAWS, 1))
    for block in blocks:
        rows[:, block] = rng.permuted(np.tile(block, (RANDOM_BLOCK_DRAWS, 1)), axis=1)
    return rows, f"random block permutation ({RANDOM_BLOCK_DRAWS:,} draws)"


def _global_rho(rank_x: np.ndarray, rank_y: np.ndarray) -> np.ndarray:
    """Pearson of ranks (Spearman) between ``rank_x`` and each row of ``rank_y``."""
    x = rank_x - rank_x.mean()
    y = rank_y - rank_y.mean(axis=-1, keepdims=True)
    denominator = np.linalg.norm(x) * np.linalg.norm(y, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, y @ x / denominator, np.nan)


def _within_rho(x: np.ndarray, y: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Mean over blocks of Spearman's rho within the block; ``y`` may hold one permuted vector per row."""
    y = np.atleast_2d(y)
    total = np.zeros(len(y))
    for block in blocks:
        rx = _ranks(x[block])
        rx = rx - rx.mean()
        ry = np.apply_along_axis(_ranks, 1, y[:, block]) if len(block) > 1 else np.zeros((len(y), 1))
        ry = ry - ry.mean(axis=1, keepdims=True)
        denominator = np.linalg.norm(rx) * np.linalg.norm(ry, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            total += np.where(denominator > 0, ry @ rx / denominator, 0.0)  # tied: no order, contributes 0
    return total / len(blocks)


def rank_agreement(x: Sequence[float], y: Sequence[float], targets: Sequence, seed: int = 0) -> dict:
    """Global and within-target rank agreement of predictor ``x`` with deltas ``y``, each with its block p.

    ``targets[k]`` names edge k's target. Keys: spearman_rho, spearman_p_block, within_rho, within_p, null_q95
    (95% quantile of within_rho under the block null: what an uninformed predictor reaches 5% of the time),
    n_targets (targets with at least 2 sources), block_method. NaN where undefined.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    blocks = [b for b in _blocks(list(targets)) if len(b) >= 2]
    keep = np.concatenate(blocks) if blocks else np.array([], dtype=int)
    empty = {"spearman_rho": math.nan, "spearman_p_block": math.nan, "within_rho": math.nan, "within_p": math.nan,
             "null_q95": math.nan, "n_targets": len(blocks), "block_method": "n/a (no target with 2 sources)"}
    if not blocks:
        return empty
    x, y = x[keep], y[keep]
    blocks = _blocks([targets[k] for k in keep])
    rows, method = _permutation_matrix(blocks, len(y), np.random.default_rng(seed))
    permuted = y[rows]
    within_null = _within_rho(x, permuted, blocks)
    within = float(_within_rho(x, y, blocks)[0])
    result = dict(empty, within_rho=within, n_targets=len(blocks), block_method=method,
                  within_p=_upper_p(within, within_null, method), null_q95=float(np.quantile(within_null, 0.95)))
    if np.ptp(x) > 0 and np.ptp(y) > 0:
        rank_x = _ranks(x)
        global_null = _global_rho(rank_x, _ranks(y)[rows])
        observed = float(_global_rho(rank_x, _ranks(y)[None, :])[0])
        result.update(spearman_rho=observed, spearman_p_block=_upper_p(observed, global_null, method))
    return result


def _upper_p(observed: float, null: np.ndarray, method: str) -> float:
    hits = int(np.sum(null >= observed - 1e-12))
    if method.startswith("exact"):
        return hits / len(null)
    return (1 + hits) / (1 + len(null))


def decisions(x: Sequence[float], y: Sequence[float], targets: Sequence) -> dict:
    """Top-1 partner accuracy and regret of the source ``x`` ranks first for each target (ties share the pick).

    Over targets with at least 2 sources whose deltas are not all equal (where every source is as good as the
    others there is no decision to score): accuracy = mean chance the pick is a best source (ties in delta: any
    best counts); regret = mean (best delta - picked delta). Also what a uniformly random pick gets.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    accuracy, regret, chance, chance_regret = [], [], [], []
    for block in _blocks(list(targets)):
        px, py = x[block], y[block]
        if len(block) < 2 or np.ptp(py) == 0:
            continue
        best = py >= py.max() - 1e-12
        picked = px >= px.max() - 1e-12
        accuracy.append(float(best[picked].mean()))
        regret.append(float(py.max() - py[picked].mean()))
        chance.append(float(best.mean()))
        chance_regret.append(float(py.max() - py.mean()))
    mean = (lambda v: float(np.mean(v)) if v else math.nan)
    return {"top1_targets": len(accuracy), "top1_accuracy": mean(accuracy), "regret": mean(regret),
            "random_top1_accuracy": mean(chance), "random_regret": mean(chance_regret)}


def split_half(per_seed: np.ndarray, seed: int = 0) -> tuple[float, str]:
    """Split-half reliability of edge values measured per seed (rows: seeds, columns: edges; no NaN).

    Spearman across edges between the half means, averaged over splits of the seeds (all of them up to
    MAX_SPLITS, else a random sample), then Spearman-Brown corrected: r_full = 2 r / (1 + r). The correction is
    for halves that agree: at r < 0 it falls below r and below -1 (r = -0.4 gives -1.33, no correlation), so a
    negative r is returned as it is, and the method says the halves disagree. (nan, why) below 2 seeds or 3 edges.
    """
    per_seed = np.asarray(per_seed, dtype=float)
    k = per_seed.shape[0]
    if k < 2:
        return math.nan, f"n/a ({k} seed{'s' if k != 1 else ''}: split-half needs at least 2)"
    if per_seed.shape[1] < 3:
        return math.nan, "n/a (fewer than 3 edges)"
    half = k // 2
    splits = [c for c in itertools.combinations(range(k), half) if k % 2 or 0 in c]  # each split once
    if len(splits) > MAX_SPLITS:
        rng = np.random.default_rng(seed)
        splits = [tuple(sorted(rng.choice(k, half, replace=False))) for _ in range(MAX_SPLITS)]
    values = []
    for first in splits:
        second = [i for i in range(k) if i not in first]
        a, b = per_seed[list(first)].mean(axis=0), per_seed[second].mean(axis=0)
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            values.append(float(_global_rho(_ranks(a), _ranks(b)[None, :])[0]))
    if not values:
        return math.nan, "n/a (constant values)"
    r = float(np.mean(values))
    method = f"split-half over {len(values)} split{'s' if len(values) != 1 else ''} of {k} seeds"
    if r < 0:
        return r, method + ", halves disagree (not Spearman-Brown corrected)"
    return 2 * r / (1 + r), method
