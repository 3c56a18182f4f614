"""Look-ahead affinity preview (transfer.training.lookahead) against the measured grid."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from transfer.analysis.evidence import SIGNIFICANT
from transfer.analysis.index import DomainRuns, RunInfo, task_order
from transfer.analysis.stats import spearman
from transfer.data.tasks import TaskTable

AFFINITY_EDGE_COLUMNS = ["source", "target", "z", "z_std", "n_affinity_runs", "delta", "state", "sign_agree"]
VALIDATION_COLUMNS = ["n_edges", "spearman_rho", "spearman_p", "p_method", "n_sign_agree", "sign_agreement",
                      "n_significant", "n_sign_agree_significant", "sign_agreement_significant", "affinity_runs",
                      "affinity_seeds", "preview_wall_s", "grid_wall_s", "n_grid_runs", "time_ratio",
                      "plain_all_wall_s", "tracking_overhead", "tracker_s", "tracker_overhead"]


@dataclass
class AffinityPreview:
    """Look-ahead affinity of one setting (mean over its affinity runs) next to the measured edges.

    ``tasks`` orders the matrices: the grid's tasks in table order, plus any task only the affinity run has.
    ``z[i, j]`` = Z(tasks[i] -> tasks[j]) (rows: source, columns: target), NaN where no run measured it;
    ``z_std`` its sample sd over the affinity runs (NaN for one run). ``edges``: every ordered pair s != t
    (AFFINITY_EDGE_COLUMNS); ``validation``: VALIDATION_COLUMNS (see ``validate_affinity``).
    """

    tasks: tuple[str, ...]
    z: np.ndarray
    z_std: np.ndarray
    run_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    every: tuple[int, ...]
    num_batches: tuple[int, ...]
    edges: pd.DataFrame
    validation: dict
    notes: list = field(default_factory=list)

    @property
    def has_grid(self) -> bool:
        """Whether any edge has both Z and a measured delta (else there is no measured panel to draw)."""
        return bool((self.edges["z"].notna() & self.edges["delta"].notna()).any())


def _share(hits: int, total: int) -> float:
    return hits / total if total else math.nan


def _total(values: list) -> float:
    """Sum, NaN if any value is unknown (a partial sum would understate a cost) or if there is none."""
    if not values or any(v is None or math.isnan(v) for v in values):
        return math.nan
    return float(sum(values))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


def validate_affinity(edges: pd.DataFrame, used: list[RunInfo], index: DomainRuns) -> dict:
    """Agreement of Z with the measured deltas, and what each cost.

    Edges: the ordered pairs s != t with both a mean Z and a measured delta that is evidence of something (any
    state but n/a: a delta of an untrained head, or one whose predictions are missing, is left out).
    spearman_rho/p: ``spearman`` of Z against delta over those edges. sign_agreement: share of them where
    sign(Z) == sign(delta) (numpy's sign: 0 only for exactly 0); sign_agreement_significant: the same over
    the helps/hurts edges. preview_wall_s: train.wall_seconds summed over the affinity runs used; grid_wall_s:
    summed over the setting's done single and pair runs (every seed; what the deltas are computed from);
    time_ratio = preview_wall_s / grid_wall_s. tracking_overhead = wall of the affinity runs / wall of the plain
    all-task runs of the same seeds and tasks (seeds that have both). tracker_s: the trackers' own
    affinity.seconds, summed. A cost is NaN if any of its runs lacks its wall time.
    """
    both = edges[edges["z"].notna() & edges["delta"].notna() & (edges["state"] != "n/a")]
    agree = np.sign(both["z"].to_numpy(float)) == np.sign(both["delta"].to_numpy(float))
    significant = both["state"].isin(SIGNIFICANT).to_numpy()
    rho, p, method = spearman(both["z"], both["delta"])
    grid = {r.run_id: r for kind in ("single", "pair") for r in index.runs[kind].values()}
    matched = [(r, index.get("all", "all", r.seed)) for r in used]
    matched = [(r, plain) for r, plain in matched if plain is not None and frozenset(plain.tasks) == frozenset(r.tasks)]
    preview_wall, grid_wall = _total([r.wall_seconds for r in used]), _total([r.wall_seconds for r in grid.values()])
    return {
        "n_edges": len(both), "spearman_rho": rho, "spearman_p": p, "p_method": method,
        "n_sign_agree": int(agree.sum()), "sign_agreement": _share(int(agree.sum()), len(both)),
        "n_significant": int(significant.sum()), "n_sign_agree_significant": int(agree[significant].sum()),
        "sign_agreement_significant": _share(int(agree[significant].sum()), int(significant.sum())),
        "affinity_runs": len(used), "affinity_seeds": " ".join(str(r.seed) for r in used),
        "preview_wall_s": preview_wall, "grid_wall_s": grid_wall, "n_grid_runs": len(grid),
        "time_ratio": _ratio(preview_wall, grid_wall),
        "plain_all_wall_s": _total([plain.wall_seconds for _, plain in matched]),
        "tracking_overhead": _ratio(_total([r.wall_seconds for r, _ in matched]),
                                    _total([plain.wall_seconds for _, plain in matched])),
        "tracker_s": _total([float((r.affinity or {}).get("seconds", math.nan)) for r in used]),
    } | _tracker_cost(used, preview_wall)


def _tracker_cost(used: list[RunInfo], preview_wall: float) -> dict:
    """The tracker's cost measured inside the affinity runs themselves: its seconds over the rest of the run.

    Unlike the ratio to a separate plain run, this does not depend on what else the machine was doing.
    """
    tracker = _total([float((r.affinity or {}).get("seconds", math.nan)) for r in used])
    return {"tracker_overhead": _ratio(tracker, preview_wall - tracker)}


def _affinity_block(run: RunInfo) -> tuple[list[str], np.ndarray] | None:
    """(tasks, matrix) of a done affinity run, None if it recorded no usable matrix."""
    block = run.affinity or {}
    names, matrix = block.get("tasks"), block.get("matrix")
    if not names or matrix is None:
        return None
    try:
        values = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError):
        return None
    return (list(names), values) if values.shape == (len(names), len(names)) else None


def _usable_affinity_runs(runs: list[RunInfo]) -> tuple[list[RunInfo], list[str]]:
    """Done affinity runs with a matrix, one per seed (the newest); notes on the others."""
    notes, by_seed = [], {}
    for run in sorted(runs, key=lambda r: r.run_id):
        if run.status != "done":
            notes.append(f"affinity run {run.run_id} (seed {run.seed}) is {run.status}: not used")
        elif _affinity_block(run) is None:
            notes.append(f"affinity run {run.run_id} (seed {run.seed}) recorded no affinity matrix (no measurement: "
                         "fewer training steps than affinity_every?): not used")
        elif run.seed in by_seed:
            older, newer = sorted([by_seed[run.seed], run], key=RunInfo.finished_at)
            notes.append(f"two done affinity runs for seed {run.seed}: {older.run_id} and {newer.run_id}; using the "
                         "newer")
            by_seed[run.seed] = newer
        else:
            by_seed[run.seed] = run
    return [by_seed[s] for s in sorted(by_seed)], notes


def affinity_preview(index: DomainRuns, runs: list[RunInfo], edges: pd.DataFrame,
                     table: TaskTable) -> tuple[AffinityPreview | None, list[str]]:
    """The setting's look-ahead preview: Z averaged over its usable affinity runs, per edge next to the measured
    delta and evidence state, and ``validate_affinity``; (None, notes) without a done affinity run."""
    used, notes = _usable_affinity_runs(runs)
    if not used:
        return None, notes
    tasks = task_order(set(index.tasks) | {t for r in used for t in r.tasks}, index.setting.domain, table)
    position = {task: i for i, task in enumerate(tasks)}
    stack = np.full((len(used), len(tasks), len(tasks)), np.nan)
    for k, run in enumerate(used):
        names, values = _affinity_block(run)
        idx = [position[name] for name in names]
        stack[k][np.ix_(idx, idx)] = values
    counts = np.isfinite(stack).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (pairs no run measured) stay NaN
        z = np.nanmean(stack, axis=0)
        z_std = np.where(counts > 1, np.nanstd(stack, axis=0, ddof=1), np.nan)
    measured = {(row["source"], row["target"]): row for _, row in edges.iterrows()}
    rows = []
    for i, source in enumerate(tasks):
        for j, target in enumerate(tasks):
            if i == j:
                continue
            edge = measured.get((source, target))
            delta = math.nan if edge is None else float(edge["delta"])
            agree = None if math.isnan(z[i, j]) or math.isnan(delta) else bool(np.sign(z[i, j]) == np.sign(delta))
            rows.append({"source": source, "target": target, "z": float(z[i, j]), "z_std": float(z_std[i, j]),
                         "n_affinity_runs": int(counts[i, j]), "delta": delta,
                         "state": "n/a" if edge is None else edge["state"], "sign_agree": agree})
    frame = pd.DataFrame(rows, columns=AFFINITY_EDGE_COLUMNS)
    validation = validate_affinity(frame, used, index)
    if validation["n_edges"] == 0 and frame["delta"].notna().any():
        notes.append("every measured edge is n/a (untrained heads or missing predictions): validation n/a")
    elif validation["n_edges"] == 0:
        notes.append("no measured pairwise edge to compare with: validation n/a (preview only)")
    elif validation["n_edges"] < len(frame):
        notes.append(f"{validation['n_edges']} of {len(frame)} edges have both Z and a measured delta that is not n/a")
    blocks = [r.affinity or {} for r in used]
    preview = AffinityPreview(tasks, z, z_std, tuple(r.run_id for r in used), tuple(r.seed for r in used),
                              tuple(int(b.get("every", r.affinity_every)) for b, r in zip(blocks, used)),
                              tuple(int(b.get("num_batches", 0)) for b in blocks), frame, validation, notes)
    return preview, notes
