"""The Dask backend of the grid: one Dask task per run, on a cluster or on a loopback-only one in this process.

The task claims the run on the worker host and starts the same worker subprocess the local backend starts,
whose GPU is the Dask worker's own; children are submitted when their parents finish.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from transfer.errors import UsageError
from transfer.experiment.store import ResultsStore
from transfer.scheduling.scheduler import POLL_S, Board, GridOptions, GridRun, _apply_outcome, claim_run, new_owner, \
    settle_run, skip_orphans, start_worker, survey, worker_command
from transfer.scheduling.slots import usable_cores

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


@contextmanager
def dask_client(address: str | None):
    """A Dask client of the cluster at ``address``, or of a cluster in this process bound to loopback only.

    The local cluster (threads of this process) listens on 127.0.0.1 alone: its scheduler, its worker and its
    dashboard (on a free port) serve unauthenticated connections, so nothing else may reach them. A real
    cluster (``address``) is the cluster's to secure (Dask's TLS options); see the README.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--backend dask needs dask[distributed]: pip install 'dask[distributed]'") from None
    if address:
        with Client(address) as client:
            yield client
        return
    with LocalCluster(processes=False, protocol="tcp://", host=LOOPBACK, dashboard_address=f"{LOOPBACK}:0") as cluster, \
            Client(cluster) as client:
        logger.info("local Dask cluster at %s (dashboard %s), loopback only", cluster.scheduler_address,
                    cluster.dashboard_link)
        yield client


def run_on_dask_worker(request: dict) -> dict:
    """A Dask task: claim one run on this worker's host, run it in a worker subprocess, settle it.

    The subprocess inherits the Dask worker's environment, so its GPU is the one the Dask worker sees.
    """
    store = ResultsStore(request["results"])
    owner = new_owner("dask")
    run_id = request["run_id"]
    outcome, error = claim_run(store, run_id, request["spec"], owner, force=request["force"],
                               retry_failed=request["retry_failed"], needs_encoder=request["needs_encoder"],
                               roles=tuple(request["roles"]))
    if outcome != "claimed":
        return {"run_id": run_id, "outcome": outcome, "error": error}
    threads = max(1, usable_cores() // _dask_worker_threads())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = worker_command(store, run_id, owner, "auto", threads, request["data_dir"], request["task_files"])
    returncode = start_worker(store, run_id, owner, cmd, env, f"dask@{socket.gethostname()}").wait()
    outcome, error = settle_run(store, run_id, owner, returncode)
    return {"run_id": run_id, "outcome": outcome, "error": error, "host": socket.gethostname()}


def _dask_worker_threads() -> int:
    try:
        from distributed import get_worker

        worker = get_worker()
        return int(getattr(getattr(worker, "state", worker), "nthreads", 1)) or 1
    except (ImportError, ValueError, AttributeError):
        return 1


class DaskScheduler:
    """Runs a plan on a Dask distributed cluster: one task per run, children submitted when parents finish."""

    def __init__(self, store: ResultsStore, client, options: GridOptions, worker_gpus: bool = False, view=None):
        self.store, self.client, self.options = store, client, options
        self.worker_gpus, self.view = worker_gpus, view
        self.owner = new_owner("dask-client")
        self.futures: dict = {}

    def run(self, board: Board) -> Board:
        survey(board, self.store, self.options.force, self.options.retry_failed)
        try:
            while not board.finished():
                skip_orphans(board, self.store, self.owner)
                for run in board.ready(time.monotonic()):
                    self._submit(run, priority=-board.order[run.run_id])
                for future in [f for f in self.futures if f.done()]:
                    self._collect(board, future)
                if self.view is not None:
                    self.view.update(board)
                if not board.finished():
                    time.sleep(POLL_S)
        except BaseException:
            self.client.cancel(list(self.futures))
            raise
        return board

    def _submit(self, run: GridRun, priority: int) -> None:
        request = {"results": str(self.store.root.resolve()), "run_id": run.run_id,
                   "spec": run.planned.spec.to_dict(), "roles": list(run.planned.roles), "force": run.force,
                   "needs_encoder": run.needs_encoder, "retry_failed": self.options.retry_failed,
                   "data_dir": str(Path(self.options.data_dir).resolve()) if self.options.data_dir else None,
                   "task_files": [str(Path(f).resolve()) for f in self.options.task_files]}
        future = self.client.submit(run_on_dask_worker, request, key=f"transfer-{run.run_id}-{uuid.uuid4().hex[:6]}",
                                    pure=False, priority=priority,  # Dask runs higher first
                                    resources={"GPU": 1} if self.worker_gpus else None)
        run.state, run.slot, run.started, run.force = "running", "dask", time.time(), False
        self.futures[future] = run
        logger.info("submitted %s (%s) to the Dask cluster", run.run_id, run.planned.label)

    def _collect(self, board: Board, future) -> None:
        run = self.futures.pop(future)
        try:
            reply = future.result()
        except Exception as exc:  # noqa: BLE001 - a lost Dask worker fails this run, not the grid
            _apply_outcome(board, run, "failed", f"Dask task failed: {type(exc).__name__}: {exc}")
            return
        if reply.get("host"):
            run.slot = f"dask@{reply['host']}"
        _apply_outcome(board, run, reply["outcome"], reply.get("error"), self.store)
