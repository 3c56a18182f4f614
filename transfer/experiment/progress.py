"""Progress reporting hooks for the training loop (library code never prints; reporters decide)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class Reporter:
    """No-op base: the training loop calls these; subclasses show or record them."""

    def start(self, summary: dict) -> None:
        """Called once before the first step with the run summary (tasks, sizes, steps, batch)."""

    def step(self, step: int, total_steps: int, loss: float | None, examples_per_s: float) -> None:
        """Called every step; ``loss`` is set every ``log_every`` steps (the mean since the last one)."""

    def epoch_end(self, epoch: int, dev_scores: dict[str, float]) -> None:
        """Called after each epoch's dev evaluation with each task's primary dev score."""

    def finish(self, result: dict) -> None:
        """Called once with the run result."""


class LogReporter(Reporter):
    """Writes progress to ``logging`` (batch systems, grid workers)."""

    def start(self, summary: dict) -> None:
        logger.info("run %s: %s", summary.get("run_id"), summary)

    def step(self, step: int, total_steps: int, loss: float | None, examples_per_s: float) -> None:
        if loss is not None:
            logger.info("step %d/%d loss %.4f %.1f examples/s", step, total_steps, loss, examples_per_s)

    def epoch_end(self, epoch: int, dev_scores: dict[str, float]) -> None:
        logger.info("epoch %d dev %s", epoch, {k: round(v, 4) for k, v in dev_scores.items()})


class RichReporter(Reporter):
    """A rich progress bar with loss and examples/s, a summary block at start and a score table at the end."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.progress = None
        self.bar = None

    def start(self, summary: dict) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.table import Table

        table = Table(title=f"run {summary['run_id']}", show_header=True, header_style="bold")
        for column in ("task", "train", "dev", "test"):
            table.add_column(column, justify="right" if column != "task" else "left")
        for name, sizes in summary["examples"].items():
            table.add_row(name, *(f"{sizes[s]:,}" for s in ("train", "dev", "test")))
        self.console.print(table)
        self.console.print(
            f"stage [bold]{summary['stage']}[/] | model {summary['model']} | profile {summary['profile']} | "
            f"device {summary['device']} ({summary['precision']}, {summary['threads']} threads) | "
            f"epochs {summary['epochs']} | steps {summary['steps']:,} | effective batch {summary['effective_batch']} | "
            f"lr {summary['learning_rate']:g} ({summary['optimizer']}) | feature cache hits {summary['feature_cache_hits']}"
        )
        self.progress = Progress(
            TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} ex/s"), TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
        )
        self.progress.start()
        self.bar = self.progress.add_task("train", total=summary["steps"], loss="-", speed="-")

    def step(self, step: int, total_steps: int, loss: float | None, examples_per_s: float) -> None:
        fields = {"speed": f"{examples_per_s:.1f}"}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        self.progress.update(self.bar, completed=step, **fields)

    def epoch_end(self, epoch: int, dev_scores: dict[str, float]) -> None:
        scores = "  ".join(f"{name} {value:.4f}" for name, value in dev_scores.items())
        self.progress.console.print(f"epoch {epoch}: dev {scores}")

    def finish(self, result: dict) -> None:
        from rich.table import Table

        if self.progress is not None:
            self.progress.stop()
        table = Table(title="scores (test at each task's best dev epoch)", header_style="bold")
        for column in ("task", "metric", "best epoch", "dev", "test", "other test metrics"):
            table.add_column(column)
        for name, info in result["tasks"].items():
            others = ", ".join(f"{k} {v:.4f}" for k, v in (info["test"] or {}).items() if k != info["metric"])
            table.add_row(name, info["metric"], str(info["best_epoch"]), _fmt(info["dev_score"]), _fmt(info["test_score"]), others)
        self.console.print(table)
        t = result["train"]
        self.console.print(f"wall {t['wall_seconds']:.1f}s (train {t['train_seconds']:.1f}s, eval {t['eval_seconds']:.1f}s), "
                           f"{t['train_examples_per_s']:.1f} training examples/s")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
