"""The results store: one folder per run (:mod:`transfer.experiment.run_folder`), keyed by the run id (a hash
of its canonical spec), and what the grid and the analysis ask of the store as a whole.

:class:`ResultsStore` claims runs for a process (the protocol is ``transfer.experiment.claims``), records their
status and lists them as :class:`RunRecord` (spec, roles, status, damage), which is how the analysis reads a
store; ``scores.csv`` at the store root is the tidy table of every done run x task, rebuilt from the folders
(``transfer.experiment.scores``). Never imports torch: analysis code reads the store through it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from transfer.experiment import claims
from transfer.experiment.run_folder import DamagedRunError, RunFolder

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- records

@dataclass(frozen=True)
class RunRecord:
    """What the store knows of one run folder: its spec, roles, status and whether it is damaged.

    ``damage`` is None for a sound folder, else the file and what is wrong with it; a damaged record's
    ``spec`` may be empty (when the spec is the damaged part), and it is never done.
    """

    run_id: str
    folder: Path
    spec: dict
    status: str | None
    status_info: dict
    roles: tuple[str, ...] | None = None  # None: written before roles were recorded (infer them)
    damage: str | None = None

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.folder)

    @property
    def metrics_file(self) -> Path:
        return self.run.metrics_file

    def predictions_file(self, task: str) -> Path:
        return self.run.predictions_file(task)

    @property
    def done(self) -> bool:
        return self.status == "done" and self.damage is None

    @property
    def stage(self) -> str:
        return self.spec["stage"]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.spec["tasks"])

    @property
    def seed(self) -> int:
        return int(self.spec["seed"])

    @property
    def parent(self) -> str | None:
        return self.spec.get("parent")

    @property
    def affinity_every(self) -> int:
        """The spec's look-ahead affinity interval; 0 for plain runs and for specs older than the key."""
        return int(self.spec.get("affinity_every") or 0)

    def metrics(self) -> dict:
        """``metrics.json`` of a done run ({} for any other)."""
        return self.run.read_metrics() if self.done else {}

    @classmethod
    def of(cls, folder: RunFolder) -> "RunRecord":
        damage = folder.damage()
        try:
            document = folder.read_spec_document()
        except (OSError, DamagedRunError):
            document = {}
        info = folder.status_or_empty()
        roles = document.get("roles")
        spec = {k: v for k, v in document.items() if k not in ("run_id", "roles")}
        return cls(folder.name, folder.path, spec, info.get("status"), info,
                   None if roles is None else tuple(roles), damage)


# ----------------------------------------------------------------------------------------------- the store

class ResultsStore:
    """A results folder: claim, record and list runs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def folder(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def run(self, run_id: str) -> RunFolder:
        return RunFolder(self.folder(run_id))

    # -- claiming --------------------------------------------------------------------------------------------
    def try_claim(self, run_id: str, spec: dict, owner: str, force: bool = False,
                  roles: Iterable[str] | None = None) -> bool:
        """Atomically claim a run for ``owner``; False if someone live holds it or it is already done.

        ``force`` claims a done run too (to run it again). A damaged folder is claimed like an unfinished one,
        its damaged files moved aside first. ``roles`` are recorded in spec.json (kept from the old spec if None).
        """
        run = self.run(run_id)
        run.path.mkdir(parents=True, exist_ok=True)
        if run.is_done() and not force:
            return False
        if not claims.acquire(run.claim_file, owner):
            return False
        if run.is_done() and not force:  # finished between our check and the claim
            run.claim_file.unlink(missing_ok=True)
            return False
        try:
            if roles is None:
                roles = self._stored_roles(run)
            run.set_aside_damage()
            run.write_spec(spec, run_id, roles)
            run.set_status("running", owner=owner)
        except BaseException:
            run.claim_file.unlink(missing_ok=True)  # a claim we cannot follow up must not hold the run
            raise
        return True

    @staticmethod
    def _stored_roles(run: RunFolder) -> tuple[str, ...] | None:
        try:
            return run.read_roles() if run.has_spec() else None
        except (OSError, DamagedRunError):
            return None

    def heartbeat(self, run_id: str) -> None:
        """Touch the claim so other hosts see the owner is alive."""
        claims.heartbeat(self.run(run_id).claim_file)

    def claim_info(self, run_id: str) -> dict | None:
        """Who holds the run's claim (owner, pid, host, time, process identity), or None when nobody does."""
        return claims.read(self.run(run_id).claim_file)

    def describe_claim(self, run_id: str) -> str:
        """Who holds the run, in words (for a grid that keeps finding it held)."""
        return claims.describe(self.run(run_id).claim_file)

    def adopt_claim(self, run_id: str, owner: str) -> bool:
        """Move ``owner``'s claim to this process (a worker started by the grid that claimed the run).

        The claim then names the process that does the work, so it is judged alive or dead by that process.
        False if the claim is missing or held by another owner.
        """
        return claims.adopt(self.run(run_id).claim_file, owner)

    def release(self, run_id: str, owner: str | None = None) -> None:
        """Drop the claim; with ``owner``, only if that owner still holds it."""
        claims.release(self.run(run_id).claim_file, owner)

    # -- status ----------------------------------------------------------------------------------------------
    def set_status(self, run_id: str, status: str, **info) -> None:
        self.run(run_id).set_status(status, **info)

    def status(self, run_id: str) -> str | None:
        """The recorded status, or None when there is none or status.json is damaged."""
        return self.run(run_id).status_or_empty().get("status")

    def status_info(self, run_id: str) -> dict:
        """All of status.json ({} when missing or damaged)."""
        return self.run(run_id).status_or_empty()

    def state(self, run_id: str) -> str | None:
        """``done``, ``running``, ``failed``, ``damaged``, or None when the store has no such run."""
        run = self.run(run_id)
        if not run.path.is_dir() or not (run.has_spec() or run.status_file.is_file()):
            return None
        if run.damage() is not None:
            return "damaged"
        return run.status_or_empty().get("status")

    def is_done(self, run_id: str) -> bool:
        """Done and whole: status done, metrics.json parses, every task's predictions exist and are whole."""
        return self.run(run_id).is_done()

    # -- reading ---------------------------------------------------------------------------------------------
    def records(self) -> list[RunRecord]:
        """Every run folder with a spec.json (damaged ones included, with ``damage`` set), sorted by run id."""
        if not self.runs_dir.is_dir():
            return []
        folders = sorted(p for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [RunRecord.of(RunFolder(p)) for p in folders if RunFolder(p).has_spec()]

    def score_rows(self) -> list[dict]:
        """One row per run x task (see ``transfer.experiment.scores``)."""
        from transfer.experiment.scores import score_rows

        return score_rows(self)

    def write_scores_table(self) -> Path:
        """Rebuild ``scores.csv`` from the run folders (atomic)."""
        from transfer.experiment.scores import write_scores_table

        return write_scores_table(self, self.root / _SCORES)

    def try_write_scores_table(self) -> Path | None:
        """``write_scores_table``, or a warning and None when the store cannot be written (read-only, full)."""
        try:
            return self.write_scores_table()
        except OSError as exc:
            logger.warning("could not rewrite %s: %s", self.root / _SCORES, exc)
            return None


_SCORES = "scores.csv"
