"""What a grid shows: the plan as a table, and while it runs a live view (or, with ``--quiet``, log lines).

The live view polls each running run's progress record through the store; nothing here imports torch.
"""

from __future__ import annotations

import logging
import time

from transfer.experiment.config import RunSpec
from transfer.experiment.store import ResultsStore
from transfer.scheduling.plan import PlannedRun
from transfer.scheduling.scheduler import Board

logger = logging.getLogger(__name__)


def _short_tasks(spec: RunSpec, all_tasks: int) -> str:
    return f"all {len(spec.tasks)}" if len(spec.tasks) == all_tasks and len(spec.tasks) > 2 else " + ".join(spec.tasks)


def plan_table(plan: list[PlannedRun], slot_class: str, store: ResultsStore | None = None):
    """A rich table of the plan: run id, roles, tasks, seed, slot class, estimated examples (and stored status)."""
    from rich.table import Table

    width = max((len(p.spec.tasks) for p in plan), default=0)
    table = Table(title=f"grid plan: {len(plan)} runs", header_style="bold")
    for column, justify in (("run id", "left"), ("role", "left"), ("tasks", "left"), ("seed", "right"),
                            ("slot", "left"), ("est. train examples", "right"), ("stored", "left")):
        table.add_column(column, justify=justify, no_wrap=column == "run id")
    for p in plan:
        status = store.state(p.run_id) if store is not None else None
        table.add_row(p.run_id, p.label, _short_tasks(p.spec, width), str(p.spec.seed), slot_class,
                      f"{p.estimated_examples:,}", status or "-")
    return table


class LogView:
    """``--quiet``: a log line whenever the counts change (runs log their own start/finish lines)."""

    def __init__(self, board: Board):
        self.last = None

    def __enter__(self) -> "LogView":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, board: Board) -> None:
        counts = _counts(board)
        if counts != self.last:
            self.last = counts
            logger.info("grid: %s", _counts_text(counts))


def _counts(board: Board) -> tuple[int, int, int, int]:
    failed = board.count("failed") + board.count("skipped")
    return board.count("done"), failed, board.count("running"), board.count("pending")


def _counts_text(counts: tuple[int, int, int, int]) -> str:
    return "{} done, {} failed, {} running, {} left".format(*counts)


class GridView:
    """Rich live view: one overall bar (runs done/failed/running/left, elapsed, ETA) and a line per running run."""

    def __init__(self, board: Board, store: ResultsStore, console=None):
        from rich.console import Console
        from rich.live import Live
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.store = store
        self.console = console or Console(stderr=True)
        self.todo: set[str] | None = None  # runs this grid has to do; known after the scheduler's survey
        self.total = 1
        self.width = max((len(r.planned.spec.tasks) for r in board.runs.values()), default=0)
        self.progress = Progress(TextColumn("[bold]grid"), BarColumn(), TextColumn("{task.fields[counts]}"),
                                 TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"), console=self.console)
        self.bar = self.progress.add_task("grid", total=self.total, counts="", eta="-")
        self.started = time.monotonic()
        self.live = Live(self.progress, console=self.console, refresh_per_second=2)

    def __enter__(self) -> "GridView":
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()

    def update(self, board: Board) -> None:
        from rich.console import Group

        if self.todo is None:
            self.todo = {rid for rid, run in board.runs.items() if not run.cached}
            self.total = max(1, sum(board.runs[rid].planned.estimated_examples for rid in self.todo))
        progress = {run.run_id: self._progress(run.run_id) for run in board.of_state("running")}
        completed = self._completed(board, progress)
        elapsed = time.monotonic() - self.started
        eta = "-" if completed <= 0 else _duration(elapsed * (self.total - completed) / completed)
        self.progress.update(self.bar, total=self.total, completed=completed, counts=_counts_text(_counts(board)), eta=eta)
        self.live.update(Group(self.progress, self._running_table(board, progress)) if progress else self.progress)

    def _progress(self, run_id: str) -> dict:
        return self.store.run(run_id).read_progress()

    def _completed(self, board: Board, progress: dict[str, dict]) -> float:
        """Estimated examples of the runs this grid finished, plus the done share of the running ones."""
        completed = 0.0
        for run_id in self.todo:
            run = board.runs[run_id]
            if run.state in ("done", "failed", "skipped"):
                completed += run.planned.estimated_examples
            elif run.state == "running":
                info = progress.get(run_id, {})
                if info.get("total_steps") and (info.get("time") or 0) >= (run.started or 0):
                    completed += run.planned.estimated_examples * info["step"] / info["total_steps"]
        return completed

    def _running_table(self, board: Board, progress: dict[str, dict]):
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("run", "role", "tasks", "slot", "epoch", "step", "last dev", "time"):
            table.add_column(column)
        for run in board.of_state("running"):
            info = progress.get(run.run_id, {})
            fresh = (info.get("time") or 0) >= (run.started or 0)
            table.add_row(run.run_id[-12:], run.planned.label, _short_tasks(run.planned.spec, self.width), run.slot or "-",
                          *(_progress_cells(info) if fresh else ("queued/starting", "", "")),
                          _duration(time.time() - (run.started or time.time())))
        return table


def _progress_cells(info: dict) -> tuple[str, str, str]:
    epochs, epoch = info.get("epochs"), info.get("epoch", 0)
    epoch_text = f"{min(epoch + 1, epochs)}/{epochs}" if epochs else info.get("phase", "")
    step_text = f"{info.get('step', 0)}/{info['total_steps']}" if info.get("total_steps") else ""
    scores = " ".join(f"{name} {value:.3f}" for name, value in (info.get("dev_scores") or {}).items())
    return epoch_text, step_text, scores


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
