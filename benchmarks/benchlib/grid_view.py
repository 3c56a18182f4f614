"""Where a grid's time went: wall, training-step, evaluation and other seconds summed over every run's
``metrics.json`` in a results store, by stage, with the largest run's peak memory."""

from __future__ import annotations

import json
from pathlib import Path


def grid_view(root: str | Path, grid_wall_seconds: float | None = None) -> dict:
    """Where a grid's time went, from every run's ``metrics.json`` in a results store (or its ``runs/`` folder)."""
    root = Path(root)
    files = sorted((root / "runs").glob("*/metrics.json")) or sorted(root.glob("*/metrics.json"))
    wall = train = evals = 0.0
    runs, no_eval, unreadable, by_stage, peaks = 0, 0, [], {}, []
    for path in files:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))["train"]
            w, t = float(info["wall_seconds"]), float(info["train_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(path.parent.name)
            continue
        if info.get("eval_seconds") is None:  # written before runs recorded their evaluation time
            no_eval += 1
        e = float(info.get("eval_seconds") or 0.0)
        if info.get("peak_rss_mb") is not None:  # recorded since runs report their memory
            peaks.append(float(info["peak_rss_mb"]))
        runs += 1
        wall, train, evals = wall + w, train + t, evals + e
        stage = by_stage.setdefault(info.get("stage", "?"), {"runs": 0, "wall_seconds": 0.0, "train_seconds": 0.0,
                                                              "eval_seconds": 0.0})
        stage["runs"] += 1
        stage["wall_seconds"] += w
        stage["train_seconds"] += t
        stage["eval_seconds"] += e
    outside = wall - train
    other = outside - evals
    out = {
        "root": str(root), "runs": runs, "unreadable": unreadable, "runs_without_eval_seconds": no_eval,
        "wall_seconds": round(wall, 2), "train_seconds": round(train, 2), "eval_seconds": round(evals, 2),
        "other_seconds": round(other, 2),
        "share_outside_training_steps": round(1 - train / wall, 4) if wall else None,
        "outside_split": {"eval": round(evals / outside, 4) if outside > 0 else None,
                          "other (start-up, tokenisation, saving)": round(other / outside, 4) if outside > 0 else None},
        "by_stage": {k: {kk: round(vv, 2) if isinstance(vv, float) else vv for kk, vv in v.items()}
                     for k, v in sorted(by_stage.items())},
        "grid_wall_seconds": grid_wall_seconds,
        "max_run_peak_rss_mb": max(peaks) if peaks else None,
        "runs_with_peak_rss": len(peaks),
    }
    if grid_wall_seconds:
        out["mean_concurrent_runs"] = round(wall / grid_wall_seconds, 3)
        out["mean_runs_in_training_steps"] = round(train / grid_wall_seconds, 3)
    return out
