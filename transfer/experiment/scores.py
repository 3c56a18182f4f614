"""``scores.csv``: the tidy table of a results store, one row per run x task, rebuilt from the run folders.

Runs without metrics give rows with empty scores and their status ("damaged" for a damaged folder whose spec
still reads); a folder whose spec is the damaged part has no row.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from transfer.experiment.atomic import write_text_atomic

logger = logging.getLogger(__name__)

SCORE_COLUMNS = ("run_id", "stage", "tasks", "task", "seed", "domain", "model", "profile", "affinity_every", "metric",
                 "dev_score", "test_score", "best_epoch", "status", "train_seconds", "wall_seconds")


def score_rows(store) -> list[dict]:
    """One row per run x task of ``store`` (a ``ResultsStore``)."""
    rows = []
    for record in store.records():
        if not record.spec:
            logger.warning("left out of the scores table: %s", record.damage)
            continue
        spec, metrics = record.spec, record.metrics()
        status = "damaged" if record.damage else record.status or ""
        timing = metrics.get("train") or {}
        for task in spec["tasks"]:
            info = (metrics.get("tasks") or {}).get(task, {})
            rows.append({
                "run_id": record.run_id, "stage": spec["stage"], "tasks": "+".join(spec["tasks"]), "task": task,
                "seed": spec["seed"], "domain": spec.get("domain") or "", "model": spec["model"],
                "profile": spec["profile"].get("name", ""), "affinity_every": spec.get("affinity_every", 0),
                "metric": info.get("metric", ""),
                "dev_score": info.get("dev_score"), "test_score": info.get("test_score"),
                "best_epoch": info.get("best_epoch"), "status": status,
                "train_seconds": timing.get("train_seconds"), "wall_seconds": timing.get("wall_seconds"),
            })
    return rows


def write_scores_table(store, target: Path) -> Path:
    """Write ``score_rows(store)`` as CSV to ``target`` (atomic)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SCORE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in score_rows(store):
        writer.writerow({k: "" if row[k] is None else row[k] for k in SCORE_COLUMNS})
    write_text_atomic(target, buffer.getvalue())
    return target
