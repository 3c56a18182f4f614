"""Model selection on dev: each task's best epoch, and the one epoch with the best mean dev score.

A single or pair run reports each task at the epoch of *its own* best dev score. The all-task refinement run
(MT-Refinement) is one model: it reports every task at the one epoch whose mean primary dev score over the tasks
is best, saves that epoch's encoder for the fine-tune runs, and keeps the per-task choice as an extra column.
Ties keep the earlier epoch. Early stopping counts epochs in which no task's own best improved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transfer.data.tasks import TaskTable

@dataclass
class Choice:
    """The epoch a rule chose so far, the score it chose by, and the dev scores of that epoch."""

    epoch: int = 0
    score: float = -math.inf
    dev: dict = field(default_factory=dict)  # task name -> that task's dev metrics at ``epoch``


class Selection:
    """Both choices of a run, updated after each epoch's dev evaluation."""

    def __init__(self, metrics: dict[str, str]):
        self.metrics = metrics  # task name -> primary metric
        self.per_task = {name: Choice() for name in metrics}
        self.mean = Choice()

    def update(self, epoch: int, dev: dict[str, dict]) -> tuple[bool, float]:
        """Record one epoch's dev metrics; return (did any task's own best improve, the mean primary score)."""
        improved = False
        for name, scores in dev.items():
            primary = scores[self.metrics[name]]
            if primary > self.per_task[name].score:
                self.per_task[name] = Choice(epoch, primary, {name: scores})
                improved = True
        # an undefined score (Pearson r of a constant prediction) counts as no skill, not as a veto on the epoch
        mean = sum(_or_zero(dev[name][metric]) for name, metric in self.metrics.items()) / len(self.metrics)
        if mean > self.mean.score:
            self.mean = Choice(epoch, mean, dict(dev))
        return improved, mean

    def chosen(self, rule: str, name: str) -> Choice:
        """The choice that reports task ``name`` under ``rule``, as a per-task view."""
        if rule == "mean":
            return Choice(self.mean.epoch, self.mean.dev.get(name, {}).get(self.metrics[name], -math.inf),
                          {name: self.mean.dev[name]} if name in self.mean.dev else {})
        return self.per_task[name]

    def epochs(self, with_mean: bool) -> set[int]:
        """Epochs whose weights a choice points at: every task's own best, and with ``with_mean`` the mean's."""
        found = {choice.epoch for choice in self.per_task.values()} | ({self.mean.epoch} if with_mean else set())
        return {epoch for epoch in found if epoch > 0}


def _or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def is_all_task_run(stage: str, tasks: tuple[str, ...], domain: str | None, table: TaskTable) -> bool:
    """The domain's all-task refinement run: an mtl run over every task of its domain (two or more).

    Decided from the hashed spec (stage, tasks, domain), so the same spec always reports the same way. With a
    two-task domain the pair run is the all-task run and is reported as one model too.
    """
    if stage != "mtl" or len(tasks) < 2:
        return False
    found = table.domain_of(tasks, domain)
    return found is not None and set(found.tasks) <= set(tasks)
