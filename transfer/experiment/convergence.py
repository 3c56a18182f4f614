"""Did a run's baselines converge? Task-runs whose best dev epoch was the last one run, counted per store.

Both the grid's closing summary and the analysis report the count: when many task-runs peak at their last epoch,
any extra encoder updates help, whoever the partner is, and a pair run's extra steps pass for transfer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

PEAKED_WARN_SHARE = 0.2  # above this share of task-runs peaking at their last epoch, baselines are not converged


def peaked_at_last_epoch(metrics: dict, task: str) -> bool | None:
    """Whether a task-run's best dev epoch was its last one run (it might have gone on improving).

    Runs record it (``tasks.<t>.peaked_at_last_epoch``); for runs stored before, the epoch history is read with
    the metric the run selected by. None when the run has no history to judge by.
    """
    info = (metrics.get("tasks") or {}).get(task) or {}
    if "peaked_at_last_epoch" in info:
        return bool(info["peaked_at_last_epoch"])
    metric = info.get("metric")
    scores = [((h.get("dev") or {}).get(task) or {}).get(metric) for h in metrics.get("history") or []]
    scores = [float(s) for s in scores if s is not None]
    if not scores:
        return None
    return max(range(len(scores)), key=lambda i: (scores[i], -i)) == len(scores) - 1


# (stage, tasks, metrics.json contents), optionally followed by the tasks the learning gate calls untrained
RunRecord = tuple[str, Sequence[str], dict] | tuple[str, Sequence[str], dict, Collection[str]]


def convergence(runs: Iterable[RunRecord]) -> dict:
    """How many task-runs (all, and single-task runs alone) peaked at their last epoch, with a warning above 20%.

    ``runs``: (stage, tasks, metrics.json contents) of done runs, optionally with a fourth item, the tasks of that
    run the learning gate calls untrained. An untrained task-run whose best dev epoch came early (it never left
    its first score, say) says nothing about convergence, so it is counted apart (``*_untrained``), not as
    converged; one that peaked at its last epoch (still rising) stays counted as not converged.
    """
    counts = {"single": [0, 0, 0], "all": [0, 0, 0]}
    for stage, tasks, metrics, *rest in runs:
        untrained = set(rest[0]) if rest else set()
        for task in tasks:
            peaked = peaked_at_last_epoch(metrics, task)
            if peaked is None:
                continue
            groups = ("all", "single") if stage == "single" else ("all",)
            for group in groups:
                if task in untrained and not peaked:
                    counts[group][2] += 1
                    continue
                counts[group][0] += int(peaked)
                counts[group][1] += 1
    result = {f"{group}_{key}": value for group, (peaked, total, untrained) in counts.items()
              for key, value in (("peaked", peaked), ("task_runs", total), ("untrained", untrained))}
    peaked, total, _ = counts["all"]
    if total and peaked / total > PEAKED_WARN_SHARE:
        result["warning"] = (f"convergence: {peaked} of {total} task-runs ({peaked / total:.0%}) reached their best "
                             f"dev score at the last epoch run (single-task runs: {counts['single'][0]} of "
                             f"{counts['single'][1]}); above {PEAKED_WARN_SHARE:.0%}, baselines may not have "
                             "converged and extra training steps can pass for transfer")
    return result
