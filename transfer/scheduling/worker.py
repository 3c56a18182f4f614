"""Run one stored run: the process the grid starts for each run (one device slot each).

The grid claims a run in the results store, then starts::

    python -m transfer.scheduling.worker --results results/ --run-id <run id> --owner <claim owner> --device cuda

with ``CUDA_VISIBLE_DEVICES`` (and the thread count) already set in the environment. The worker takes the
claim over (so the claim names the process doing the work), reads ``spec.json``, trains, writes
``metrics.json`` and ``predictions/``, marks the run done and releases the claim. On an exception it marks the
run failed with the traceback and exits non-zero; on SIGINT/SIGTERM it releases the claim and leaves the run
``running``, so the next grid restarts it. Without ``--owner`` the worker claims the run itself.

While training it writes ``progress.json`` in the run folder (epoch, step/total, last dev scores), which the
grid's live view polls, and touches the claim every 30 s (the heartbeat other hosts judge it alive by).

Testing hook: ``TRANSFER_TRAIN_FN=module:function`` replaces ``transfer.training.loop.train`` by any function with the
same signature (e.g. a fake run that records ``CUDA_VISIBLE_DEVICES`` and sleeps, or raises).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path

from transfer.cli import add_common_flags, add_data_flags, command, sigterm_interrupts
from transfer.errors import UsageError
from transfer.experiment.config import run_spec_from_dict
from transfer.experiment.progress import LogReporter
from transfer.experiment.roles import stage_takes_parent
from transfer.experiment.run_folder import DamagedRunError, RunFolder
from transfer.experiment.store import ResultsStore

logger = logging.getLogger(__name__)

TRAIN_FN_ENV = "TRANSFER_TRAIN_FN"
HEARTBEAT_S = 30.0
PROGRESS_EVERY_S = 1.0
EXIT_DONE, EXIT_FAILED, EXIT_NOT_CLAIMED, EXIT_INTERRUPTED = 0, 1, 3, 130


class ProgressFileReporter(LogReporter):
    """Logs like ``LogReporter`` and keeps the run's progress record up to date (at most 1 write/s)."""

    def __init__(self, folder: Path | RunFolder, every_s: float = PROGRESS_EVERY_S):
        self.run = folder if isinstance(folder, RunFolder) else RunFolder(folder)
        self.path = self.run.progress_file
        self.every_s = every_s
        self.state: dict = {"phase": "starting", "epoch": 0, "epochs": None, "step": 0, "total_steps": None,
                            "loss": None, "examples_per_s": None, "dev_scores": {}}
        self._written = 0.0
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._written >= self.every_s:
            self._written = now
            try:
                self.run.write_progress({**self.state, "time": now})
            except OSError as exc:  # only a view: a full disk must not fail the run here
                logger.warning("could not write the progress record: %s", exc)

    def start(self, summary: dict) -> None:
        super().start(summary)
        self.state.update(phase="training", epochs=summary.get("epochs"), total_steps=summary.get("steps"),
                          device=summary.get("device"))
        self._write(force=True)

    def step(self, step: int, total_steps: int, loss: float | None, examples_per_s: float) -> None:
        super().step(step, total_steps, loss, examples_per_s)
        self.state.update(step=step, total_steps=total_steps, examples_per_s=round(examples_per_s, 2))
        if loss is not None:
            self.state["loss"] = round(loss, 6)
        self._write(force=step == total_steps)

    def epoch_end(self, epoch: int, dev_scores: dict[str, float]) -> None:
        super().epoch_end(epoch, dev_scores)
        self.state.update(epoch=epoch, dev_scores={k: round(float(v), 6) for k, v in dev_scores.items()})
        self._write(force=True)

    def finish(self, result: dict) -> None:
        self.state["phase"] = "finished"
        self._write(force=True)


class Heartbeat:
    """Touches the run's claim every ``every_s`` seconds from a daemon thread (covers long data preparation)."""

    def __init__(self, store: ResultsStore, run_id: str, every_s: float = HEARTBEAT_S):
        self.store, self.run_id, self.every_s = store, run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.store.heartbeat(self.run_id)
            except OSError as exc:  # a flaky shared file system must not kill the run
                logger.warning("heartbeat failed: %s", exc)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def resolve_train_fn():
    """``transfer.training.loop.train``, or the function named by ``$TRANSFER_TRAIN_FN`` (``module:function``)."""
    target = os.environ.get(TRAIN_FN_ENV)
    if not target:
        from transfer.training.loop import quiet_transformers, train

        quiet_transformers()
        return train
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"${TRAIN_FN_ENV} must look like module:function, got {target!r}")
    return getattr(importlib.import_module(module), name)


def load_spec(store: ResultsStore, run_id: str):
    """The RunSpec stored in the run folder."""
    spec = run_spec_from_dict(store.run(run_id).read_spec())
    if spec.run_id != run_id:
        logger.warning("spec.json of %s hashes to %s (spec written by another code version?)", run_id, spec.run_id)
    return spec


class PortableFormatter(logging.Formatter):
    """Run logs are committed with the store, so they name no folder of the machine: the data folder, the store
    and the home folder are written as ``<data-dir>``, ``<store>`` and ``~`` (a reader of the log knows which
    ``--data-dir`` the header line shows)."""

    def __init__(self, fmt: str, folders: dict[str, Path]):
        super().__init__(fmt)
        absolute = {}
        for label, folder in folders.items():
            for form in {str(folder), str(folder.resolve())}:  # as given (if absolute) and resolved
                if form.startswith("/") and len(form) > 1:
                    absolute.setdefault(form.rstrip("/"), label)
        self._folders = sorted(absolute.items(), key=lambda item: -len(item[0]))  # the longest prefix first

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for folder, label in self._folders:
            text = text.replace(folder, label)
        return text


def _log_to_file(path: Path, store: ResultsStore, data_dir: str | None) -> logging.Handler:
    from transfer.data.tasks import resolve_data_dir

    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    folders = {"<data-dir>": resolve_data_dir(data_dir)[0], "<store>": store.root, "~": Path.home()}
    handler.setFormatter(PortableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", folders))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def execute(store: ResultsStore, run_id: str, *, data_dir: str | None = None, device: str | None = None,
            task_files: list[str] | tuple[str, ...] = (), threads: int | None = None) -> int:
    """Train a run this process has claimed; record done/failed; release the claim. Returns the exit code."""
    from transfer.data.tasks import load_task_table

    run = store.run(run_id)
    handler = _log_to_file(run.log_file, store, data_dir)
    started = time.time()
    try:
        with Heartbeat(store, run_id):
            # Imported inside the try: a grid stopping its workers can send SIGTERM while torch is still
            # importing (seconds on a cold disk), and that must end as a clean interruption, not a traceback.
            if threads:
                import torch

                torch.set_num_threads(threads)
            spec = load_spec(store, run_id)
            logger.info("worker pid %d on %s: run %s, device %s, CUDA_VISIBLE_DEVICES=%r", os.getpid(),
                        socket.gethostname(), run_id, device, os.environ.get("CUDA_VISIBLE_DEVICES"))
            train_fn = resolve_train_fn()
            parent_dir = store.folder(spec.parent) if stage_takes_parent(spec.stage) else None
            result = train_fn(spec, data_dir=data_dir, device=device, reporter=ProgressFileReporter(run),
                              table=load_task_table(task_files), parent_dir=parent_dir,
                              encoder_dir=run.encoder_dir)

            run.write_result(result)
            store.set_status(run_id, "done", seconds=round(time.time() - started, 3), pid=os.getpid(),
                             host=socket.gethostname())
        logger.info("run %s done in %.1fs", run_id, time.time() - started)
        return EXIT_DONE
    except KeyboardInterrupt:
        logger.warning("run %s interrupted; left 'running' so the next grid restarts it", run_id)
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - any failure of a run is recorded, then the grid goes on
        logger.exception("run %s failed", run_id)
        try:
            store.set_status(run_id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                             traceback=traceback.format_exc(), pid=os.getpid(), host=socket.gethostname())
        except OSError as record_exc:  # disk full: the grid records it if it can, else the next grid redoes it
            logger.error("could not record the failure of run %s: %s", run_id, record_exc)
        return EXIT_FAILED
    finally:
        store.release(run_id)
        logging.getLogger().removeHandler(handler)
        handler.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transfer.scheduling.worker", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--results", required=True, help="results store folder (the grid's --results)")
    parser.add_argument("--run-id", required=True, help="run to execute (a folder under <results>/runs/ with spec.json)")
    parser.add_argument("--owner", default=None,
                        help="claim owner token of the grid that claimed the run; without it the worker claims it")
    add_data_flags(parser)
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (CUDA_VISIBLE_DEVICES decides which GPU 'cuda' is)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_common_flags(parser)
    return parser


def _claim(store: ResultsStore, run_id: str, owner: str | None) -> bool:
    if owner is not None:
        return store.adopt_claim(run_id, owner)
    run = store.run(run_id)
    if not run.has_spec():
        raise UsageError(f"{run.spec_file} does not exist: the grid writes it when it claims a run")
    try:
        spec, roles = run.read_spec(), run.read_roles()
    except DamagedRunError as exc:
        raise UsageError(f"{exc}; the grid rewrites it when it redoes the run") from None
    return store.try_claim(run_id, spec, owner=f"worker:{socket.gethostname()}:{os.getpid()}", roles=roles)


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    store = ResultsStore(args.results)
    if not _claim(store, args.run_id, args.owner):
        print(f"run {args.run_id} is done or claimed by another process; nothing to do")
        return EXIT_NOT_CLAIMED
    with sigterm_interrupts():
        return execute(store, args.run_id, data_dir=args.data_dir, device=args.device, task_files=args.task_file,
                       threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
