"""Run a grid's plan: device slots and worker subprocesses here, or tasks on a Dask cluster.

Both backends follow one protocol on the results store: a run is *claimed* (atomic create of its ``claim``
file) by the process that decides to run it, the worker subprocess takes the claim over, records done or
failed, and releases it. So two grids on one store never run a spec twice, a run left ``running`` by a dead
process is restarted, and a finished run is never redone (unless forced).

The device slots are ``transfer.scheduling.slots``, the Dask backend ``transfer.scheduling.dask_backend``.

* Local: one slot per GPU (or ``--jobs-per-device`` slots per GPU); without GPUs, one single-thread slot per
  core as memory allows (or ``--jobs-per-device`` CPU slots sharing the cores); each run
  is ``python -m transfer.scheduling.worker`` with ``CUDA_VISIBLE_DEVICES`` set to its slot's GPU before torch loads.
* Dask: one task per run (``resources={"GPU": 1}`` when workers have GPUs); the task claims the run on the
  worker host and starts the same worker subprocess there, whose GPU is the Dask worker's own.

Ready runs start seed by seed, longest first within a seed (estimated training examples; see
``plan.start_order``); a finetune run starts once its refinement
run is done, and is recorded failed (``skipped``) when that run failed. A done refinement run whose
``encoder/`` is gone is redone only while one of its finetune runs still has to run. A damaged run folder (see
``transfer.experiment.store``) counts as not done: the run is redone, its damaged files set aside. A failure
that cannot be recorded (disk full) is logged, and the run is left for the next grid to redo.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from transfer.experiment.store import ResultsStore
from transfer.scheduling.plan import PlannedRun, start_order
from transfer.scheduling.slots import Slot
from transfer.scheduling.worker import EXIT_INTERRUPTED, EXIT_NOT_CLAIMED

logger = logging.getLogger(__name__)

POLL_S = 0.25  # how often the local loop looks at its subprocesses
HELD_RETRY_S = 2.0  # how soon a run held by another process is looked at again
HELD_REPORT_S = 60.0  # a run held this long by another process is reported (and again every this long)
LOG_TAIL_LINES = 40
TERMINAL = ("done", "failed", "skipped")


# ----------------------------------------------------------------------------------------------- run states

@dataclass
class GridRun:
    """What this grid knows of one planned run."""

    planned: PlannedRun
    state: str = "pending"  # pending | running | done | failed | skipped
    cached: bool = False  # done before this grid started
    force: bool = False  # a done run to run again (--force, or its encoder is missing)
    needs_encoder: bool = False  # its encoder/ must exist for it to count as done (a child still has to run)
    held_since: float | None = None  # first found claimed by another process (monotonic clock)
    held_reported: float = 0.0
    not_before: float = 0.0
    slot: str | None = None
    started: float | None = None
    error: str | None = None

    @property
    def run_id(self) -> str:
        return self.planned.run_id


@dataclass
class Board:
    """The plan's runs and their states; says which may start next."""

    runs: dict[str, GridRun] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)  # run id -> place in the start order

    @classmethod
    def from_plan(cls, plan: list[PlannedRun]) -> "Board":
        return cls({p.run_id: GridRun(p) for p in plan}, start_order(plan))

    def count(self, state: str) -> int:
        return sum(1 for run in self.runs.values() if run.state == state)

    def of_state(self, state: str) -> list[GridRun]:
        return [run for run in self.runs.values() if run.state == state]

    def finished(self) -> bool:
        return all(run.state in TERMINAL for run in self.runs.values())

    def succeeded(self) -> bool:
        return all(run.state == "done" for run in self.runs.values())

    def parent_state(self, run: GridRun) -> str:
        parent = run.planned.spec.parent
        return self.runs[parent].state if parent in self.runs else "done"

    def ready(self, now: float) -> list[GridRun]:
        """Pending runs whose parent is done, in the start order."""
        ready = [run for run in self.of_state("pending")
                 if run.not_before <= now and self.parent_state(run) == "done"]
        return sorted(ready, key=lambda run: self.order[run.run_id])

    def orphans(self) -> list[GridRun]:
        """Pending runs whose parent failed (or was itself skipped)."""
        return [run for run in self.of_state("pending") if self.parent_state(run) in ("failed", "skipped")]

    def mark(self, run: GridRun, state: str, error: str | None = None) -> None:
        run.state, run.error = state, error

    def children(self, run: GridRun) -> list[GridRun]:
        """Planned runs that start from this run's encoder."""
        return [child for child in self.runs.values() if child.planned.spec.parent == run.run_id]


def survey(board: Board, store: ResultsStore, force: bool, retry_failed: bool) -> None:
    """Sort out, before anything starts, runs the store already has as done (skipped) or failed (reported).

    A run that saves its encoder needs ``encoder/`` only while one of its children is not done: a store
    without encoders whose finetune runs are all done (as committed) is complete, not to be redone.
    """
    done = {run_id: store.is_done(run_id) and not force for run_id in board.runs}
    for run in board.runs.values():
        run.needs_encoder = run.planned.spec.save_encoder and not all(done[c.run_id] for c in board.children(run))
        info = store.status_info(run.run_id)
        status = info.get("status")
        if done[run.run_id] and (not run.needs_encoder or store.run(run.run_id).has_encoder()):
            run.cached = True
            board.mark(run, "done")
        elif status == "done":
            run.force = True  # done but damaged, forced, or its encoder is needed again
        elif status == "failed" and not retry_failed and not info.get("skipped"):
            board.mark(run, "failed", f"failed in an earlier grid (use --retry-failed): {info.get('error', '?')}")


# ----------------------------------------------------------------------------------------------- claim protocol

def claim_run(store: ResultsStore, run_id: str, spec: dict, owner: str, *, force: bool = False,
              retry_failed: bool = False, needs_encoder: bool = False,
              roles: tuple[str, ...] | None = None) -> tuple[str, str | None]:
    """Decide a run's fate at its turn: ``claimed``, ``done``, ``failed`` (not retried) or ``held`` elsewhere.

    ``roles`` are recorded in the run's spec.json when it is claimed.
    """
    info = store.status_info(run_id)
    status = info.get("status")
    encoder_ok = not needs_encoder or store.run(run_id).has_encoder()
    if store.is_done(run_id) and encoder_ok and not force:
        return "done", None
    if status == "failed" and not retry_failed and not info.get("skipped"):
        return "failed", info.get("error")
    if store.try_claim(run_id, spec, owner, force=status == "done", roles=roles):
        return "claimed", None
    if store.is_done(run_id) and encoder_ok:
        return "done", None  # another process finished it meanwhile
    return "held", None


def note_held(store: ResultsStore, run: GridRun, now: float | None = None) -> None:
    """A run another process holds: say who, once it has been held ``HELD_REPORT_S`` (and every so often)."""
    now = time.monotonic() if now is None else now
    run.not_before = now + HELD_RETRY_S
    if run.held_since is None:
        run.held_since = now
    waited = now - run.held_since
    if waited >= HELD_REPORT_S and now - run.held_reported >= HELD_REPORT_S:
        run.held_reported = now
        logger.warning("%s is held by %s; waiting for it (%.0f s so far)", run.run_id, store.describe_claim(run.run_id),
                       waited)


def record_skipped(store: ResultsStore, run: GridRun, owner: str, reason: str) -> None:
    """Record a run that cannot start (its parent failed) as failed with ``skipped`` set."""
    info = store.status_info(run.run_id)
    if info.get("skipped") and info.get("error") == reason:
        return  # recorded by an earlier grid
    try:
        if store.try_claim(run.run_id, run.planned.spec.to_dict(), owner, roles=run.planned.roles):
            try:
                store.set_status(run.run_id, "failed", error=reason, skipped=True)
            finally:
                store.release(run.run_id, owner=owner)
    except OSError as exc:
        _log_unrecorded(run.run_id, "its skip", exc)


def _log_unrecorded(run_id: str, what: str, exc: OSError) -> None:
    full = " (disk full)" if exc.errno == errno.ENOSPC else ""
    logger.error("could not record %s of %s%s: %s; the next grid redoes it", what, run_id, full, exc)


def skip_orphans(board: Board, store: ResultsStore, owner: str) -> None:
    """Finetune runs whose refinement run failed: recorded as skipped, never started."""
    for run in board.orphans():
        reason = f"not started: its refinement run {run.planned.spec.parent} did not finish"
        record_skipped(store, run, owner, reason)
        board.mark(run, "skipped", reason)
        logger.warning("skipped %s: %s", run.run_id, reason)


def worker_command(store: ResultsStore, run_id: str, owner: str, device: str, threads: int | None,
                   data_dir: str | None, task_files: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "transfer.scheduling.worker", "--results", str(store.root.resolve()), "--run-id", run_id,
           "--owner", owner, "--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    if data_dir:
        cmd += ["--data-dir", str(Path(data_dir).resolve())]
    for task_file in task_files:
        cmd += ["--task-file", str(Path(task_file).resolve())]
    return cmd


def _package_env(env: dict) -> dict:
    """Make the worker import this very copy of ``transfer`` (a checkout that is not installed, too)."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the transfer package
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p != root]])
    return env


def portable_command(cmd: list[str]) -> list[str]:
    """The command as a log line may show it: logs are committed with a store, so no folder of this machine
    (the interpreter is ``python``, absolute paths are given relative to the working folder)."""
    shown = []
    for arg in cmd:
        if arg == sys.executable:
            shown.append("python")
        elif os.path.isabs(arg):
            shown.append(os.path.relpath(arg))
        else:
            shown.append(arg)
    return shown


def start_worker(store: ResultsStore, run_id: str, owner: str, cmd: list[str], env: dict,
                 slot_name: str) -> subprocess.Popen:
    """Start a worker subprocess; its stdout/stderr go to the run's log.txt (after a header line)."""
    log_path = store.run(run_id).log_file
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} slot {slot_name}: "
                  f"{' '.join(portable_command(cmd))}\n")
        return subprocess.Popen(cmd, env=_package_env(env), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError:
        return ""


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -returncode == signal.SIGKILL else ""
        return f"worker killed by signal {name}{hint}"
    return f"worker exited with code {returncode} without recording a result"


def settle_run(store: ResultsStore, run_id: str, owner: str, returncode: int) -> tuple[str, str | None]:
    """After a worker exits: ``done``, ``failed`` (recorded here when the worker could not), ``held`` or
    ``interrupted`` (left ``running`` for the next grid). Releases ``owner``'s claim.

    A failure that cannot be recorded (a full disk) is logged and the run left ``running``, so the next grid
    redoes it; the grid process goes on.
    """
    info = store.status_info(run_id)
    status = info.get("status")
    try:
        if returncode == EXIT_NOT_CLAIMED:
            return "held", None
        if store.is_done(run_id):
            return "done", None
        if returncode == EXIT_INTERRUPTED or returncode in (-signal.SIGINT, -signal.SIGTERM):
            return "interrupted", "interrupted (left 'running'; the next grid restarts it)"
        if status == "failed":
            return "failed", info.get("error")
        reason = describe_exit(returncode)
        claim = store.claim_info(run_id)
        if claim is None or claim.get("owner") == owner:  # nobody else has taken the run over meanwhile
            try:
                store.set_status(run_id, "failed", error=reason, returncode=returncode,
                                 log_tail=log_tail(store.run(run_id).log_file))
            except OSError as exc:
                _log_unrecorded(run_id, "the failure", exc)
                return "failed", f"{reason} (not recorded: {exc})"
        return "failed", reason
    finally:
        try:
            store.release(run_id, owner=owner)
        except OSError as exc:  # pragma: no cover - unlink hardly fails on a full disk
            logger.error("could not release the claim of %s: %s", run_id, exc)


def new_owner(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------------------------- local backend

@dataclass
class GridOptions:
    """How runs are executed (not what they are: that is the plan)."""

    force: bool = False
    retry_failed: bool = False
    data_dir: str | None = None
    task_files: list[str] = field(default_factory=list)


@dataclass
class _Running:
    run: GridRun
    slot: Slot
    process: subprocess.Popen


class LocalScheduler:
    """Runs a plan on this machine's device slots, one worker subprocess per run."""

    def __init__(self, store: ResultsStore, slots: list[Slot], options: GridOptions, view=None):
        self.store, self.slots, self.options = store, list(slots), options
        self.view = view
        self.owner = new_owner("grid")
        self.free = list(slots)
        self.running: dict[str, _Running] = {}

    def run(self, board: Board) -> Board:
        survey(board, self.store, self.options.force, self.options.retry_failed)
        try:
            while not board.finished():
                skip_orphans(board, self.store, self.owner)
                self._start_ready(board)
                self._collect(board)
                if self.view is not None:
                    self.view.update(board)
                if not board.finished():
                    time.sleep(POLL_S)
        except BaseException:
            self._stop_all(board)
            raise
        return board

    def _start_ready(self, board: Board) -> None:
        for run in board.ready(time.monotonic()):
            if not self.free:
                return
            try:
                outcome, error = claim_run(self.store, run.run_id, run.planned.spec.to_dict(), self.owner,
                                           force=run.force, retry_failed=self.options.retry_failed,
                                           needs_encoder=run.needs_encoder, roles=run.planned.roles)
            except OSError as exc:  # disk full or store not writable: this run cannot start now
                _log_unrecorded(run.run_id, "the claim", exc)
                board.mark(run, "failed", f"could not be claimed: {exc}")
                continue
            if outcome == "claimed":
                run.held_since = None
                self._launch(board, run, self.free.pop(0))
            elif outcome == "held":
                note_held(self.store, run)
            else:
                board.mark(run, outcome, error)

    def _launch(self, board: Board, run: GridRun, slot: Slot) -> None:
        cmd = worker_command(self.store, run.run_id, self.owner, slot.device, slot.threads,
                             self.options.data_dir, self.options.task_files)
        try:
            process = start_worker(self.store, run.run_id, self.owner, cmd, slot.env(), slot.name)
        except OSError as exc:
            self.free.insert(0, slot)
            self.free.sort(key=self.slots.index)
            self.store.release(run.run_id, owner=self.owner)
            _log_unrecorded(run.run_id, "the start", exc)
            board.mark(run, "failed", f"could not start its worker: {exc}")
            return
        run.state, run.slot, run.started, run.force = "running", slot.name, time.time(), False
        self.running[run.run_id] = _Running(run, slot, process)
        logger.info("started %s (%s) on %s, pid %d", run.run_id, run.planned.label, slot.name, process.pid)

    def _collect(self, board: Board) -> None:
        for run_id, entry in list(self.running.items()):
            returncode = entry.process.poll()
            if returncode is None:
                continue
            del self.running[run_id]
            self.free.append(entry.slot)
            self.free.sort(key=self.slots.index)
            outcome, error = settle_run(self.store, run_id, self.owner, returncode)
            _apply_outcome(board, entry.run, outcome, error, self.store)

    def _stop_all(self, board: Board) -> None:
        """Interrupted: stop the workers (they leave their runs 'running' for the next grid) and release."""
        for entry in self.running.values():
            if entry.process.poll() is None:
                entry.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for run_id, entry in self.running.items():
            try:
                entry.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                entry.process.kill()
                entry.process.wait()
            self.store.release(run_id, owner=self.owner)
        self.running.clear()


def _apply_outcome(board: Board, run: GridRun, outcome: str, error: str | None,
                   store: ResultsStore | None = None) -> None:
    seconds = time.time() - (run.started or time.time())
    if outcome == "held":
        run.state = "pending"
        if store is not None:
            note_held(store, run)
        else:
            run.not_before = time.monotonic() + HELD_RETRY_S
    elif outcome == "done":
        board.mark(run, "done")
        logger.info("done %s in %.1fs", run.run_id, seconds)
    else:  # failed or interrupted: reported, and the grid goes on
        board.mark(run, "failed", error)
        logger.warning("FAILED %s after %.1fs: %s", run.run_id, seconds, error)
