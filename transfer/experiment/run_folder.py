"""One run folder of the results store: its files, how each is read and written, and when it is damaged.

This module is the only one that knows the files of a run folder; everything else goes through
:class:`RunFolder` (one folder) or :class:`transfer.experiment.store.ResultsStore` (the store of them). Layout of
``runs/<run_id>/`` under the store root (``results/`` by default)::

    spec.json               the run spec (RunSpec.to_dict()) plus "run_id" and, from the grid, "roles"
    status.json             {"status": running|done|failed, "owner", "pid", "host", times, "traceback"}
    metrics.json            scores, history and timings
    predictions/<task>.jsonl  per-example test predictions at the task's best dev epoch
    log.txt                 the run's log
    progress.json           live progress of a running run (epoch, step/total, last dev scores)
    claim                   present while a process owns the run (see transfer.experiment.claims)
    encoder/                refinement encoder, only where a finetune run needs it (not committed)
    damaged-<time>/         files of a damaged attempt, set aside when the run was redone

``roles`` (what the run is for in the grid, see ``transfer.experiment.roles``) sits outside the spec's hashed
part: recording it changes no run id. Writes are atomic (temporary file, flushed to disk, then renamed). A run
is *done* only when its status says so, ``metrics.json`` parses and every task's predictions file exists and
is whole (:func:`predictions_damage`: not cut mid-line, not shorter than the test set); a folder whose files do
not parse is *damaged* (:meth:`RunFolder.damage` names the file and the problem): the analysis skips it and says
so, the grid redoes it after moving the damaged files aside. A file's name, its reading, writing and damage
check live here together, so that they change in one place. Never imports torch.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from transfer.errors import UserError
from transfer.experiment.atomic import read_json, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)


STATUSES = ("running", "done", "failed")
SPEC_KEYS = ("tasks", "stage", "seed", "model", "profile")  # what makes a spec.json a run spec

_SPEC, _STATUS, _METRICS, _PROGRESS, _LOG = "spec.json", "status.json", "metrics.json", "progress.json", "log.txt"
_CLAIM, _ENCODER, _PREDICTIONS, _DAMAGED = "claim", "encoder", "predictions", "damaged-"


class DamagedRunError(UserError):
    """A run-folder file that exists but cannot be read as what it should be (empty, cut short, not a run)."""


def _read_json_checked(path: Path, what: str = "a JSON object"):
    """The JSON object in ``path``; ``DamagedRunError`` naming the file when it is empty, cut short or no object."""
    try:
        data = read_json(path)
    except UnicodeDecodeError:
        raise DamagedRunError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        problem = "empty" if path.stat().st_size == 0 else f"not valid JSON (cut short?): {exc.msg} at line {exc.lineno}"
        raise DamagedRunError(f"{path}: {problem}") from None
    if not isinstance(data, dict):
        raise DamagedRunError(f"{path}: expected {what}, found {type(data).__name__}")
    return data


def read_predictions(path: Path) -> list[dict]:
    """Per-example records (uid, gold, pred[, group]) of one task of one run; ``DamagedRunError`` for a cut file."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8", errors="strict") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DamagedRunError(f"{path}, line {number}: not a JSON record (file cut mid-line?)") from None
    return records


def _test_count(metrics: dict, task: str) -> int | None:
    """The test examples ``metrics.json`` says a task was scored on (None where it does not say)."""
    count = ((metrics.get("tasks") or {}).get(task) or {}).get("examples", {}).get("test")
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def predictions_damage(path: Path, expected_records: int | None = None) -> str | None:
    """What is wrong with a predictions file (file and problem), or None, without parsing every record.

    The writer writes the whole file atomically, one JSON record per line, each ending in a newline, so a file
    that is not whole was cut or copied short: its last line is incomplete (no final newline, or the last
    record does not parse), or it holds fewer lines than ``metrics.json`` counts test examples. Checking that
    reads the file once as bytes; parsing every record (what the analysis does once, when it needs them) cost
    three parses per file per process when every ``is_done`` did it.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"{path}: cannot be read: {exc}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{path}: not UTF-8 text (byte {exc.start})"
    lines = text.count("\n")
    if text and not text.endswith("\n"):
        return f"{path}, line {lines + 1}: not a JSON record (file cut mid-line?)"
    if text:
        last = text[text.rstrip("\n").rfind("\n") + 1:]
        try:
            json.loads(last)
        except json.JSONDecodeError:
            return f"{path}, line {lines}: not a JSON record (file cut mid-line?)"
    if expected_records is not None and lines < expected_records:  # fewer only: a cut file never has more
        return f"{path}: {lines} records, but metrics.json counts {expected_records} test examples (cut short?)"
    return None


# ----------------------------------------------------------------------------------------------- one run folder

class RunFolder:
    """One run's folder: the files it holds, read and written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # -- where things are ------------------------------------------------------------------------------------
    @property
    def spec_file(self) -> Path:
        return self.path / _SPEC

    @property
    def status_file(self) -> Path:
        return self.path / _STATUS

    @property
    def metrics_file(self) -> Path:
        return self.path / _METRICS

    @property
    def progress_file(self) -> Path:
        return self.path / _PROGRESS

    @property
    def log_file(self) -> Path:
        return self.path / _LOG

    @property
    def claim_file(self) -> Path:
        return self.path / _CLAIM

    @property
    def encoder_dir(self) -> Path:
        return self.path / _ENCODER

    @property
    def predictions_dir(self) -> Path:
        return self.path / _PREDICTIONS

    def predictions_file(self, task: str) -> Path:
        return self.predictions_dir / f"{task}.jsonl"

    def has_spec(self) -> bool:
        return self.spec_file.is_file()

    def has_encoder(self) -> bool:
        return self.encoder_dir.is_dir()

    # -- the spec --------------------------------------------------------------------------------------------
    def write_spec(self, spec: dict, run_id: str, roles: Iterable[str] | None = None) -> None:
        """``spec.json``: the spec's own keys, ``run_id``, and the grid roles when known (never hashed)."""
        document = {k: v for k, v in spec.items() if k not in ("run_id", "roles")}
        document["run_id"] = run_id
        if roles is not None:
            document["roles"] = list(roles)
        write_json_atomic(self.spec_file, document)

    def read_spec_document(self) -> dict:
        """All of ``spec.json``; ``DamagedRunError`` when it is unreadable or not a run spec."""
        data = _read_json_checked(self.spec_file, "a run spec (an object)")
        missing = [key for key in SPEC_KEYS if key not in data]
        if missing:
            raise DamagedRunError(f"{self.spec_file}: not a run spec (no {', '.join(missing)})")
        if not isinstance(data["tasks"], list) or not data["tasks"] or not isinstance(data["profile"], dict):
            raise DamagedRunError(f"{self.spec_file}: not a run spec (tasks must be a list, profile an object)")
        roles = data.get("roles")
        if roles is not None and not (isinstance(roles, list) and all(isinstance(r, str) for r in roles)):
            raise DamagedRunError(f"{self.spec_file}: roles must be a list of role names")
        return data

    def read_spec(self) -> dict:
        """The spec alone (what ``run_spec_from_dict`` takes): ``spec.json`` without ``run_id`` and ``roles``."""
        return {k: v for k, v in self.read_spec_document().items() if k not in ("run_id", "roles")}

    def read_roles(self) -> tuple[str, ...] | None:
        """The grid roles recorded with the spec; None for folders written before roles were recorded."""
        roles = self.read_spec_document().get("roles")
        return None if roles is None else tuple(roles)

    # -- status ----------------------------------------------------------------------------------------------
    def read_status(self) -> dict:
        """``status.json`` ({} when there is none yet); ``DamagedRunError`` when it is unreadable."""
        if not self.status_file.is_file():
            return {}
        info = _read_json_checked(self.status_file, "a status object")
        if info.get("status") not in STATUSES:
            raise DamagedRunError(f"{self.status_file}: status must be one of {', '.join(STATUSES)}, "
                                  f"got {info.get('status')!r}")
        return info

    def status_or_empty(self) -> dict:
        """``status.json``, or {} when it is missing or damaged (callers that only need a hint)."""
        try:
            return self.read_status()
        except (OSError, DamagedRunError):
            return {}

    def set_status(self, status: str, **info) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        previous = self.status_or_empty()
        record = {**previous, **info, "status": status, "time": time.time()}
        if status == "running":
            record["started"] = record["time"]
            for stale_key in ("traceback", "error", "log_tail", "returncode", "skipped"):
                record.pop(stale_key, None)  # left by an earlier failed attempt
            record["attempts"] = previous.get("attempts", 0) + 1
        write_json_atomic(self.status_file, record)

    # -- progress --------------------------------------------------------------------------------------------
    def write_progress(self, state: dict) -> None:
        write_json_atomic(self.progress_file, state)

    def read_progress(self) -> dict:
        """The live progress record; {} when there is none or it cannot be read (it is only a view)."""
        try:
            data = read_json(self.progress_file)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # -- results ---------------------------------------------------------------------------------------------
    def write_result(self, result: dict) -> list[Path]:
        """``predictions/<task>.jsonl`` (test set, best dev epoch), then ``metrics.json`` (all but predictions)."""
        written = []
        for name, records in result["predictions"].items():
            target = self.predictions_file(name)
            write_text_atomic(target, "".join(json.dumps(r) + "\n" for r in records or []))
            written.append(target)
        write_json_atomic(self.metrics_file, {k: v for k, v in result.items() if k != "predictions"})
        written.append(self.metrics_file)
        return written

    def read_metrics(self) -> dict:
        return _read_json_checked(self.metrics_file, "a metrics object")

    def read_predictions(self, task: str) -> list[dict]:
        return read_predictions(self.predictions_file(task))

    # -- damage ----------------------------------------------------------------------------------------------
    def damage(self) -> str | None:
        """What makes this folder unusable (file and problem), or None. A done run must have its results."""
        if not self.spec_file.exists() and not self.status_file.exists():
            return None  # a folder being claimed, or not a run folder at all
        try:
            spec = self.read_spec_document()
            status = self.read_status()
            if status.get("status") != "done":
                return None
            if not self.metrics_file.is_file():
                return f"{self.metrics_file}: missing although {_STATUS} says done"
            metrics = self.read_metrics()
            for task in spec["tasks"]:
                path = self.predictions_file(str(task))
                if not path.is_file():
                    return f"{path}: missing although {_STATUS} says done"
                problem = predictions_damage(path, _test_count(metrics, str(task)))
                if problem:
                    return problem
        except DamagedRunError as exc:
            return str(exc)
        except (OSError, UnicodeDecodeError) as exc:
            return f"{self.path}: cannot be read: {exc}"
        return None

    def is_done(self) -> bool:
        return self.status_or_empty().get("status") == "done" and self.damage() is None

    def set_aside_damage(self) -> Path | None:
        """Move the files of a damaged attempt into ``damaged-<time>/`` in the folder; returns it (None if sound).

        The spec is moved too when it is the damaged part; the encoder and the log stay (the log tells the story).
        """
        problem = self.damage()
        if problem is None:
            return None
        aside = self.path / f"{_DAMAGED}{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**6:06d}"
        aside.mkdir(parents=True)
        names = [_STATUS, _METRICS, _PROGRESS, _PREDICTIONS]
        try:
            self.read_spec_document()
        except (OSError, DamagedRunError):
            names.append(_SPEC)
        for name in names:
            if (self.path / name).exists():
                shutil.move(str(self.path / name), str(aside / name))
        write_text_atomic(aside / "why.txt", problem + "\n")
        logger.warning("damaged run folder %s (%s): files moved to %s", self.path, problem, aside.name)
        return aside

    def damaged_attempts(self) -> list[Path]:
        return sorted(p for p in self.path.glob(f"{_DAMAGED}*") if p.is_dir())
