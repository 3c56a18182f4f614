"""The results store: one folder per run, keyed by the run id (a hash of its canonical spec).

Layout under the store root (``results/`` by default)::

    runs/<run_id>/spec.json               the run spec (RunSpec.to_dict() plus run_id)
    runs/<run_id>/status.json             {"status": running|done|failed, "owner", "pid", "host", times, "traceback"}
    runs/<run_id>/metrics.json            scores, history and timings (written by transfer.training.loop.write_result)
    runs/<run_id>/predictions/<task>.jsonl  per-example test predictions at the task's best dev epoch
    runs/<run_id>/log.txt                 the run's log
    runs/<run_id>/progress.json           live progress of a running run (epoch, step/total, last dev scores)
    runs/<run_id>/claim                   present while a process owns the run (owner, pid, host)
    runs/<run_id>/encoder/                refinement encoder, only where a finetune run needs it (not committed)
    scores.csv                            tidy table, one row per run x task, rebuilt from the folders

Writes are atomic (temporary file + rename). A run is claimed by creating ``claim`` with ``O_EXCL``, so two
grid processes on one store never run the same spec at once; a claim whose owner died is taken over.
This module never imports torch: analysis code reads the store through it.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("running", "done", "failed")
SCORE_COLUMNS = ("run_id", "stage", "tasks", "task", "seed", "domain", "model", "profile", "affinity_every", "metric",
                 "dev_score", "test_score", "best_epoch", "status", "train_seconds", "wall_seconds")
STALE_AFTER_S = 15 * 60  # a claim from another host with no heartbeat for this long is taken as dead


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RunRecord:
    """What the store knows of one run folder."""

    run_id: str
    folder: Path
    spec: dict
    status: str | None
    status_info: dict

    @property
    def metrics_file(self) -> Path:
        return self.folder / "metrics.json"

    def predictions_file(self, task: str) -> Path:
        return self.folder / "predictions" / f"{task}.jsonl"


class ResultsStore:
    """A results folder: claim, record and list runs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def folder(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    # -- claiming --------------------------------------------------------------------------------------------
    def try_claim(self, run_id: str, spec: dict, owner: str, force: bool = False) -> bool:
        """Atomically claim a run for ``owner``; False if someone live holds it or it is already done.

        ``force`` claims a done run too (to run it again).
        """
        folder = self.folder(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        if self.status(run_id) == "done" and not force:
            return False
        claim = folder / "claim"
        info = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        for _ in range(2):
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._claim_is_stale(claim):
                    return False
                self._break_claim(claim)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(info, handle)
            if self.status(run_id) == "done" and not force:  # finished between our check and the claim
                claim.unlink(missing_ok=True)
                return False
            write_json_atomic(folder / "spec.json", {**spec, "run_id": run_id})
            self.set_status(run_id, "running", owner=owner)
            return True
        return False

    def _claim_is_stale(self, claim: Path) -> bool:
        try:
            info = read_json(claim)
        except (OSError, json.JSONDecodeError):
            # Being written right now, or left half-written by a crash: judge by age.
            try:
                return time.time() - claim.stat().st_mtime > 60
            except FileNotFoundError:
                return True
        if info.get("host") == socket.gethostname():
            return not _pid_alive(int(info.get("pid", -1)))
        try:
            return time.time() - claim.stat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            return True

    @staticmethod
    def _break_claim(claim: Path) -> None:
        # Rename first so two processes breaking the same stale claim cannot both delete a fresh one.
        grave = claim.with_name(f"claim.stale.{os.getpid()}.{time.monotonic_ns()}")
        try:
            os.rename(claim, grave)
            grave.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def heartbeat(self, run_id: str) -> None:
        """Touch the claim so other hosts see the owner is alive."""
        claim = self.folder(run_id) / "claim"
        if claim.exists():
            os.utime(claim)

    def claim_info(self, run_id: str) -> dict | None:
        """Who holds the run's claim (owner, pid, host, time), or None when nobody does."""
        try:
            return read_json(self.folder(run_id) / "claim")
        except (OSError, json.JSONDecodeError):
            return None

    def adopt_claim(self, run_id: str, owner: str) -> bool:
        """Move ``owner``'s claim to this process (a worker started by the grid that claimed the run).

        The claim then names the process that does the work, so it is judged alive or dead by that process.
        False if the claim is missing or held by another owner.
        """
        info = self.claim_info(run_id)
        if info is None or info.get("owner") != owner:
            return False
        info.update(pid=os.getpid(), host=socket.gethostname(), time=time.time())
        write_json_atomic(self.folder(run_id) / "claim", info)
        return True

    def release(self, run_id: str, owner: str | None = None) -> None:
        """Drop the claim; with ``owner``, only if that owner still holds it."""
        if owner is not None:
            info = self.claim_info(run_id)
            if info is not None and info.get("owner") != owner:
                return
        (self.folder(run_id) / "claim").unlink(missing_ok=True)

    # -- status ----------------------------------------------------------------------------------------------
    def set_status(self, run_id: str, status: str, **info) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        path = self.folder(run_id) / "status.json"
        previous = read_json(path) if path.is_file() else {}
        record = {**previous, **info, "status": status, "time": time.time()}
        if status == "running":
            record["started"] = record["time"]
            for stale_key in ("traceback", "error", "log_tail", "returncode", "skipped"):
                record.pop(stale_key, None)  # left by an earlier failed attempt
            record["attempts"] = previous.get("attempts", 0) + 1
        write_json_atomic(path, record)

    def status(self, run_id: str) -> str | None:
        path = self.folder(run_id) / "status.json"
        if not path.is_file():
            return None
        return read_json(path).get("status")

    def is_done(self, run_id: str) -> bool:
        return self.status(run_id) == "done" and (self.folder(run_id) / "metrics.json").is_file()

    # -- reading ---------------------------------------------------------------------------------------------
    def records(self) -> list[RunRecord]:
        """Every run folder with a spec, sorted by run id."""
        out = []
        if not self.runs_dir.is_dir():
            return out
        for folder in sorted(p for p in self.runs_dir.iterdir() if p.is_dir()):
            spec_file, status_file = folder / "spec.json", folder / "status.json"
            if not spec_file.is_file():
                continue
            info = read_json(status_file) if status_file.is_file() else {}
            out.append(RunRecord(folder.name, folder, read_json(spec_file), info.get("status"), info))
        return out

    def score_rows(self) -> list[dict]:
        """One row per run x task (runs without metrics give rows with empty scores and their status)."""
        rows = []
        for record in self.records():
            spec = record.spec
            metrics = read_json(record.metrics_file) if record.status == "done" and record.metrics_file.is_file() else None
            for task in spec["tasks"]:
                info = (metrics or {}).get("tasks", {}).get(task, {})
                timing = (metrics or {}).get("train", {})
                rows.append({
                    "run_id": record.run_id, "stage": spec["stage"], "tasks": "+".join(spec["tasks"]), "task": task,
                    "seed": spec["seed"], "domain": spec.get("domain") or "", "model": spec["model"],
                    "profile": spec["profile"]["name"], "affinity_every": spec.get("affinity_every", 0),
                    "metric": info.get("metric", ""),
                    "dev_score": info.get("dev_score"), "test_score": info.get("test_score"),
                    "best_epoch": info.get("best_epoch"), "status": record.status or "",
                    "train_seconds": timing.get("train_seconds"), "wall_seconds": timing.get("wall_seconds"),
                })
        return rows

    def write_scores_table(self) -> Path:
        """Rebuild ``scores.csv`` from the run folders (atomic)."""
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=SCORE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.score_rows():
            writer.writerow({k: "" if row[k] is None else row[k] for k in SCORE_COLUMNS})
        target = self.root / "scores.csv"
        write_text_atomic(target, buffer.getvalue())
        return target


def write_result(result: dict, folder: Path) -> list[Path]:
    """A run's outputs: ``metrics.json`` (all but predictions) and ``predictions/<task>.jsonl`` (test set, best dev epoch)."""
    folder = Path(folder)
    written = []
    for name, records in result["predictions"].items():
        target = folder / "predictions" / f"{name}.jsonl"
        write_text_atomic(target, "".join(json.dumps(r) + "\n" for r in records or []))
        written.append(target)
    write_json_atomic(folder / "metrics.json", {k: v for k, v in result.items() if k != "predictions"})
    written.append(folder / "metrics.json")
    return written


def read_predictions(path: Path) -> list[dict]:
    """Per-example records (uid, gold, pred[, group]) of one task of one run."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
