"""Look-ahead affinity preview (transfer.training.lookahead) against the measured grid.

The preview's matrices (plain Z; where the affinity runs recorded them, the marginal affinity M and the gradient
cosine) are averaged over the affinity runs (one per seed) and set beside the measured edges. ``validate_affinity``
keeps today's summary of Z (Spearman, sign agreement, cost); ``predictor_table`` scores Z, M and the baselines
with the statistics of ``transfer.analysis.predictors`` (rank agreement within targets with a block permutation p,
top-1 partner and regret, split-half reliability over seeds).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from transfer.analysis.evidence import SIGNIFICANT
from transfer.analysis.index import DomainRuns, RunInfo, task_order
from transfer.analysis.predictors import decisions, rank_agreement, split_half
from transfer.analysis.stats import spearman
from transfer.data.tasks import TaskTable

AFFINITY_EDGE_COLUMNS = ["source", "target", "z", "z_std", "n_affinity_runs", "delta", "state", "sign_agree",
                         "n_seeds", "z_marginal", "z_marginal_std", "grad_cosine", "target_only", "source_only",
                         "step_ratio", "size_ratio"]
# Predictors of delta(s -> t) scored side by side: (column of the edge table, what it is)
PREDICTORS = (
    ("z", "look-ahead affinity Z (plain)"),
    ("z_marginal", "marginal affinity M: Z minus the momentum-only step, per unit learning rate"),
    ("target_only", "target only: mean Z into t over its sources (Z's column mean)"),
    ("source_only", "source only: mean Z out of s over its targets (Z's row mean)"),
    ("step_ratio", "pair / single training-step ratio of the grid runs"),
    ("size_ratio", "training-set size ratio n(s) / n(t) (the size rule of Weller et al. 2022)"),
    ("grad_cosine", "cosine similarity of s's and t's gradients (TAG's baseline)"),
    ("random", "a random ordering (expected values)"),
)
# The affinity block's matrices (rows: source, columns: target), by the edge-table column they fill
MATRIX_KEYS = {"z": "matrix", "z_marginal": "marginal", "grad_cosine": "grad_cosine"}
PREDICTOR_COLUMNS = ["predictor", "description", "n_edges", "n_targets", "spearman_rho", "spearman_p", "p_method",
                     "spearman_p_block", "within_rho", "within_p", "null_q95", "block_method", "n_sign_agree",
                     "sign_agreement", "top1_targets", "top1_accuracy", "regret", "reliability",
                     "reliability_method", "ceiling", "n_grid_seeds", "n_preview_seeds", "note"]
VALIDATION_COLUMNS = ["n_edges", "spearman_rho", "spearman_p", "p_method", "n_sign_agree", "sign_agreement",
                      "n_significant", "n_sign_agree_significant", "sign_agreement_significant", "affinity_runs",
                      "affinity_seeds", "preview_wall_s", "grid_wall_s", "n_grid_runs", "time_ratio",
                      "plain_all_wall_s", "tracking_overhead", "tracker_s", "tracker_overhead", "marginal",
                      "n_grid_seeds", "delta_reliability", "delta_reliability_method"]


@dataclass
class AffinityPreview:
    """Look-ahead affinity of one setting (mean over its affinity runs) next to the measured edges.

    ``tasks`` orders the matrices: the grid's tasks in table order, plus any task only the affinity run has.
    ``z[i, j]`` = Z(tasks[i] -> tasks[j]) (rows: source, columns: target), NaN where no run measured it;
    ``z_std`` its sample sd over the affinity runs (NaN for one run). ``marginal``: the mean marginal affinity
    (None when no affinity run recorded it: stores written before it existed). ``stacks``: per-run matrices
    (runs x tasks x tasks) by MATRIX_KEYS column. ``edges``: every ordered pair s != t (AFFINITY_EDGE_COLUMNS);
    ``validation``: VALIDATION_COLUMNS (see ``validate_affinity``); ``predictors``: PREDICTOR_COLUMNS, one row
    per PREDICTORS entry (see ``predictor_table``).
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
    marginal: np.ndarray | None = None
    stacks: dict = field(default_factory=dict)
    predictors: pd.DataFrame | None = None

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
    all-task runs of the same seeds and tasks (seeds that have both), per training step where the runs record
    their steps (:func:`_tracking_overhead`). tracker_s: the trackers' own
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
        "tracking_overhead": _tracking_overhead(matched),
        "tracker_s": _total([float((r.affinity or {}).get("seconds", math.nan)) for r in used]),
    } | _tracker_cost(used, preview_wall)


def _steps_run(run: RunInfo) -> float:
    steps = (run.metrics.get("train") or {}).get("steps_run")
    return float(steps) if isinstance(steps, (int, float)) and steps > 0 else math.nan


def _tracking_overhead(matched: list[tuple[RunInfo, RunInfo]]) -> float:
    """Wall time of the affinity runs over that of the plain all-task runs of the same seeds, per training step
    where every run records its steps (a preview may stop after its first epochs, ``affinity_epochs``, so whole
    runs would compare a part of the schedule with all of it), else per run."""
    tracked = _total([r.wall_seconds for r, _ in matched])
    plain = _total([p.wall_seconds for _, p in matched])
    steps_tracked, steps_plain = _total([_steps_run(r) for r, _ in matched]), _total([_steps_run(p) for _, p in matched])
    if matched and not math.isnan(steps_tracked) and not math.isnan(steps_plain):
        return _ratio(_ratio(tracked, steps_tracked), _ratio(plain, steps_plain))
    return _ratio(tracked, plain)


def _tracker_cost(used: list[RunInfo], preview_wall: float) -> dict:
    """The tracker's cost measured inside the affinity runs themselves: its seconds over the rest of the run.

    Unlike the ratio to a separate plain run, this does not depend on what else the machine was doing.
    """
    tracker = _total([float((r.affinity or {}).get("seconds", math.nan)) for r in used])
    return {"tracker_overhead": _ratio(tracker, preview_wall - tracker)}


def _affinity_block(run: RunInfo, key: str = "matrix") -> tuple[list[str], np.ndarray] | None:
    """(tasks, matrix ``key``) of a done affinity run, None if it recorded no usable matrix of that name."""
    block = run.affinity or {}
    names, matrix = block.get("tasks"), block.get(key)
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


def _stack(used: list[RunInfo], tasks: tuple[str, ...], key: str) -> np.ndarray | None:
    """runs x tasks x tasks of matrix ``key`` (NaN where a run did not measure a pair); None if no run has it."""
    position = {task: i for i, task in enumerate(tasks)}
    stack = np.full((len(used), len(tasks), len(tasks)), np.nan)
    found = False
    for k, run in enumerate(used):
        block = _affinity_block(run, key)
        if block is None:
            continue
        names, values = block
        idx = [position[name] for name in names]
        stack[k][np.ix_(idx, idx)] = values
        found = True
    return stack if found else None


def _mean_sd(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.isfinite(stack).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (pairs no run measured) stay NaN
        mean = np.nanmean(stack, axis=0)
        sd = np.where(counts > 1, np.nanstd(stack, axis=0, ddof=1), np.nan)
    return mean, sd, counts


def _off_diagonal_means(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean Z into each target over its other sources, mean Z out of each source over its other targets)."""
    off = z.copy()
    np.fill_diagonal(off, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(off, axis=0), np.nanmean(off, axis=1)


def _train_sizes(index: DomainRuns, used: list[RunInfo]) -> dict[str, float]:
    """Training examples per task, as trained (metrics.json tasks.<t>.examples.train), from any run that has it."""
    sizes = {}
    for run in [*index.runs["single"].values(), *used]:
        for name, info in (run.metrics.get("tasks") or {}).items():
            train = ((info or {}).get("examples") or {}).get("train")
            if train and name not in sizes:
                sizes[name] = float(train)
    return sizes


def affinity_preview(index: DomainRuns, runs: list[RunInfo], edges: pd.DataFrame,
                     table: TaskTable) -> tuple[AffinityPreview | None, list[str]]:
    """The setting's look-ahead preview: each matrix averaged over its usable affinity runs, per edge next to the
    measured delta, evidence state and baselines, ``validate_affinity`` and ``predictor_table``; (None, notes)
    without a done affinity run."""
    used, notes = _usable_affinity_runs(runs)
    if not used:
        return None, notes
    tasks = task_order(set(index.tasks) | {t for r in used for t in r.tasks}, index.setting.domain, table)
    stacks = {column: _stack(used, tasks, key) for column, key in MATRIX_KEYS.items()}
    stacks = {column: stack for column, stack in stacks.items() if stack is not None}
    z, z_std, counts = _mean_sd(stacks["z"])
    marginal, marginal_std, _ = _mean_sd(stacks["z_marginal"]) if "z_marginal" in stacks else (None, None, None)
    cosine = _mean_sd(stacks["grad_cosine"])[0] if "grad_cosine" in stacks else None
    into, out_of = _off_diagonal_means(z)
    sizes = _train_sizes(index, used)
    measured = {(row["source"], row["target"]): row for _, row in edges.iterrows()}
    rows = []
    for i, source in enumerate(tasks):
        for j, target in enumerate(tasks):
            if i == j:
                continue
            edge = measured.get((source, target))
            delta = math.nan if edge is None else float(edge["delta"])
            agree = None if math.isnan(z[i, j]) or math.isnan(delta) else bool(np.sign(z[i, j]) == np.sign(delta))
            size = (sizes[source] / sizes[target] if source in sizes and target in sizes else math.nan)
            rows.append({"source": source, "target": target, "z": float(z[i, j]), "z_std": float(z_std[i, j]),
                         "n_affinity_runs": int(counts[i, j]), "delta": delta,
                         "state": "n/a" if edge is None else edge["state"], "sign_agree": agree,
                         "n_seeds": 0 if edge is None else int(edge["n_seeds"]),
                         "z_marginal": math.nan if marginal is None else float(marginal[i, j]),
                         "z_marginal_std": math.nan if marginal is None else float(marginal_std[i, j]),
                         "grad_cosine": math.nan if cosine is None else float(cosine[i, j]),
                         "target_only": float(into[j]), "source_only": float(out_of[i]),
                         "step_ratio": math.nan if edge is None else float(edge.get("step_ratio", math.nan)),
                         "size_ratio": size})
    frame = pd.DataFrame(rows, columns=AFFINITY_EDGE_COLUMNS)
    validation = validate_affinity(frame, used, index)
    if validation["n_edges"] == 0 and frame["delta"].notna().any():
        notes.append("every measured edge is n/a (untrained heads or missing predictions): validation n/a")
    elif validation["n_edges"] == 0:
        notes.append("no measured pairwise edge to compare with: validation n/a (preview only)")
    elif validation["n_edges"] < len(frame):
        notes.append(f"{validation['n_edges']} of {len(frame)} edges have both Z and a measured delta that is not n/a")
    if marginal is None:
        notes.append("the affinity run(s) recorded only the plain Z (stored before the marginal affinity existed): "
                     "the marginal affinity M and the gradient cosine are absent; their rows are n/a")
    reliability = _delta_reliability(frame, edges)
    validation.update(marginal="present" if marginal is not None else "absent", n_grid_seeds=_seed_span(frame),
                      delta_reliability=reliability[0], delta_reliability_method=reliability[1])
    blocks = [r.affinity or {} for r in used]
    preview = AffinityPreview(tasks, z, z_std, tuple(r.run_id for r in used), tuple(r.seed for r in used),
                              tuple(int(b.get("every", r.affinity_every)) for b, r in zip(blocks, used)),
                              tuple(int(b.get("num_batches", 0)) for b in blocks), frame, validation, notes,
                              marginal, stacks)
    preview.predictors = predictor_table(preview)
    return preview, notes


def _compared(frame: pd.DataFrame) -> pd.DataFrame:
    """The edges a predictor is scored on: both Z and a measured delta, state not n/a (as ``validate_affinity``)."""
    return frame[frame["z"].notna() & frame["delta"].notna() & (frame["state"] != "n/a")]


def _seed_span(frame: pd.DataFrame) -> str:
    """The compared edges' grid seed counts: "3", or "2-5" when they differ; "0" without a compared edge."""
    counts = _compared(frame)["n_seeds"].astype(int)
    if counts.empty:
        return "0"
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def _per_seed_deltas(frame: pd.DataFrame, edges: pd.DataFrame) -> np.ndarray:
    """Seeds x compared edges of per-seed deltas, over the seeds every compared edge has (empty if none)."""
    compared = _compared(frame)
    by_edge = {}
    for _, row in edges.iterrows():
        seeds, deltas = str(row.get("seeds") or "").split(), str(row.get("seed_deltas") or "").split()
        if len(seeds) == len(deltas):
            by_edge[row["source"], row["target"]] = dict(zip(map(int, seeds), map(float, deltas)))
    keyed = [by_edge.get((s, t), {}) for s, t in zip(compared["source"], compared["target"])]
    common = sorted(set.intersection(*(set(k) for k in keyed))) if keyed else []
    return np.array([[k[seed] for k in keyed] for seed in common]).reshape(len(common), len(keyed))


def _delta_reliability(frame: pd.DataFrame, edges: pd.DataFrame) -> tuple[float, str]:
    per_seed = _per_seed_deltas(frame, edges)
    if per_seed.shape[1] == 0:
        return math.nan, "n/a (no compared edge)"
    value, method = split_half(per_seed)
    return value, method.replace("seeds", "grid seeds") if method.startswith("split") else method


def _per_run_predictor(preview: AffinityPreview, name: str, compared: pd.DataFrame) -> np.ndarray | None:
    """Runs x compared edges of a Z-derived predictor measured in each affinity run alone (None: not per run)."""
    source = {"target_only": "z", "source_only": "z"}.get(name, name)
    stack = preview.stacks.get(source)
    if stack is None:
        return None
    position = {task: i for i, task in enumerate(preview.tasks)}
    rows = []
    for matrix in stack:
        into, out_of = _off_diagonal_means(matrix)
        values = []
        for s, t in zip(compared["source"], compared["target"]):
            i, j = position[s], position[t]
            values.append(into[j] if name == "target_only" else out_of[i] if name == "source_only" else matrix[i, j])
        rows.append(values)
    per_run = np.array(rows, dtype=float)
    return per_run[np.isfinite(per_run).all(axis=1)]


def _reliability(preview: AffinityPreview, name: str, compared: pd.DataFrame) -> tuple[float, str]:
    if name == "size_ratio":
        return 1.0, "fixed by the data"
    if name == "random":
        return 0.0, "by construction"
    per_run = _per_run_predictor(preview, name, compared)
    if per_run is None:
        return math.nan, "n/a (not recorded per seed)" if name != "step_ratio" else "n/a (a mean over the grid's seeds)"
    value, method = split_half(per_run)
    return value, method.replace("seeds", "preview seeds") if method.startswith("split") else method


def predictor_table(preview: AffinityPreview) -> pd.DataFrame:
    """One row per PREDICTORS entry, scored on the compared edges (PREDICTOR_COLUMNS; see the module docstring
    of ``transfer.analysis.predictors``). ceiling = sqrt(reliability of the predictor x reliability of delta)."""
    compared = _compared(preview.edges)
    delta, targets = compared["delta"].to_numpy(float), list(compared["target"])
    grid_seeds, delta_reliability = preview.validation["n_grid_seeds"], preview.validation["delta_reliability"]
    rows = []
    for name, description in PREDICTORS:
        values = np.zeros(len(compared)) if name == "random" else compared[name].to_numpy(float)
        finite = np.isfinite(values)
        row = {"predictor": name, "description": description, "n_edges": int(finite.sum()),
               "n_grid_seeds": grid_seeds, "n_preview_seeds": len(preview.run_ids) if name in _PREVIEW_BASED else 0,
               "note": ""}
        reliability, method = _reliability(preview, name, compared)
        row.update(reliability=reliability, reliability_method=method,
                   ceiling=math.sqrt(reliability * delta_reliability)
                   if reliability >= 0 and delta_reliability >= 0 else math.nan)
        if name == "random":
            stats = decisions(np.zeros(len(compared)), delta, targets)
            row.update(n_edges=len(compared), spearman_rho=0.0, within_rho=0.0, p_method="expected value",
                       n_targets=stats["top1_targets"], top1_targets=stats["top1_targets"],
                       top1_accuracy=stats["random_top1_accuracy"], regret=stats["random_regret"],
                       note="expected values of a uniformly random ordering of each target's sources")
        elif not finite.any() or finite.sum() < len(compared):
            row.update(p_method="n/a", block_method="n/a",
                       note=f"absent: {_ABSENT[name]}" if not finite.any() and len(compared)
                       else "n/a: no compared edge" if not len(compared)
                       else f"n/a: missing on {int((~finite).sum())} of {len(compared)} edges")
        else:
            rho, p, p_method = spearman(values, delta)
            agreement = rank_agreement(values, delta, targets)
            stats = decisions(values, delta, targets)
            row.update(agreement, spearman_rho=rho if not math.isnan(rho) else agreement["spearman_rho"],
                       spearman_p=p, p_method=p_method, top1_targets=stats["top1_targets"],
                       top1_accuracy=stats["top1_accuracy"], regret=stats["regret"])
            if name in ("z", "z_marginal"):  # a sign only means something for the affinities themselves
                agree = int((np.sign(values) == np.sign(delta)).sum())
                row.update(n_sign_agree=agree, sign_agreement=_share(agree, len(values)))
        rows.append(row)
    return pd.DataFrame(rows, columns=PREDICTOR_COLUMNS)


_PREVIEW_BASED = {"z", "z_marginal", "target_only", "source_only", "grad_cosine"}
_ABSENT = {  # why a predictor has no value on any compared edge
    "z": "no plain Z recorded", "target_only": "no plain Z recorded", "source_only": "no plain Z recorded",
    "z_marginal": "not recorded by the store's affinity runs", "grad_cosine": "not recorded by the store's affinity runs",
    "step_ratio": "the grid runs record no training steps", "size_ratio": "no training-set sizes recorded"}
