"""The one reader of the results store for the analysis: store -> settings -> roles -> seeds.

Vocabulary
    setting   a (domain, model, profile name) triple; runs of one setting differ only by tasks, role and seed.
    role      what a run stands for in the grid: "single" (one task alone), "pair" (an mtl run of two tasks),
              "all" (the mtl run of every task: MT-Refinement), "finetune" (one task fine-tuned from the all-task
              run: MT-Fine-Tune), "affinity" (an all-task run that records look-ahead affinity; never a grid run).
              Runs written with a ``roles`` list in spec.json carry them; for older stores they are inferred
              from the stage, the tasks and ``affinity_every`` (``_inferred_roles``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from transfer.data.tasks import TaskTable
from transfer.experiment.roles import ROLES as ROLE_TABLE
from transfer.experiment.run_folder import read_predictions
from transfer.experiment.store import ResultsStore, RunRecord

logger = logging.getLogger(__name__)

ROLES = tuple(ROLE_TABLE)  # the run roles the grid knows (transfer.experiment.roles)


@dataclass(frozen=True)
class Setting:
    """Runs comparable with each other: same domain, model and profile name."""

    domain: str
    model: str
    profile: str

    def slug(self, unique_domain: bool = True) -> str:
        text = self.domain if unique_domain else f"{self.domain}_{self.profile}_{Path(self.model).name}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "domain"


@dataclass(frozen=True)
class RunInfo:
    """A run folder as the analysis sees it: the store's ``RunRecord`` (the one record of a run folder) plus what
    the analysis derives from it: its setting, its status with any damage named, its roles (checked against the
    roles table) and its stored test scores in today's primary metrics."""

    record: RunRecord = field(repr=False)
    setting: Setting
    status: str
    roles: tuple[str, ...] | None = None  # spec.json "roles" where the grid wrote them; None: infer (older stores)
    scores: dict = field(default_factory=dict)  # task -> stored test score (done runs only)
    metrics: dict = field(default_factory=dict, compare=False, repr=False)  # the whole metrics.json of a done run

    run_id = property(lambda self: self.record.run_id)
    folder = property(lambda self: self.record.folder)
    stage = property(lambda self: self.record.stage)
    tasks = property(lambda self: self.record.tasks)
    seed = property(lambda self: self.record.seed)
    parent = property(lambda self: self.record.parent)
    affinity_every = property(lambda self: self.record.affinity_every)  # > 0: an affinity run, never a condition

    @property
    def wall_seconds(self) -> float | None:
        """metrics.json train.wall_seconds (done runs only)."""
        wall = (self.metrics.get("train") or {}).get("wall_seconds")
        return None if wall is None else float(wall)

    @property
    def interval(self) -> tuple[float, float] | None:
        """(claimed, finished) of a done run's last attempt, from status.json's ``started`` and ``time``; None
        where either is missing or they are out of order (a hand-edited or foreign status file)."""
        info = self.record.status_info
        start, end = info.get("started"), info.get("time")
        if self.status != "done" or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, end)):
            return None
        return (float(start), float(end)) if end >= start else None

    @property
    def affinity(self) -> dict | None:
        """metrics.json "affinity" block of a done affinity run."""
        return self.metrics.get("affinity") if self.is_affinity else None

    @property
    def is_affinity(self) -> bool:
        return "affinity" in self.roles if self.roles is not None else self.affinity_every > 0

    def predictions_file(self, task: str) -> Path:
        return self.record.predictions_file(task)

    def finished_at(self) -> float:
        """When the run wrote its results (metrics.json's mtime): of two done runs of one condition, the newer wins."""
        return self.record.metrics_file.stat().st_mtime


def _run_domain(spec: dict, table: TaskTable) -> str:
    if spec.get("domain"):
        return str(spec["domain"])
    try:
        return table.domain_of(list(spec["tasks"])).name
    except (KeyError, ValueError):
        return "unknown"


def _scores(metrics: dict, table: TaskTable) -> dict:
    """task -> stored test score in the task table's primary metric.

    A run stored before a task's primary metric changed (DDI: micro-F1, then macro-F1) has the new primary among
    its extra metrics (``test.<metric>``); that is the score reported, never the old primary under the new name.
    """
    scores = {}
    for name, info in metrics.get("tasks", {}).items():
        metric = table.tasks[name].metric if name in table.tasks else info.get("metric")
        value = (info.get("test") or {}).get(metric)
        if value is None and info.get("metric") == metric:
            value = info.get("test_score")
        if value is not None:
            scores[name] = value
    return scores


def _spec_roles(spec: dict) -> tuple[str, ...] | None:
    """The roles the grid wrote into spec.json (outside the hashed part), None for older stores."""
    roles = spec.get("roles")
    if roles is None:
        return None
    unknown = sorted(set(map(str, roles)) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(unknown)} (known: {', '.join(ROLES)})")
    return tuple(str(role) for role in roles)


def _record_roles(record) -> tuple[str, ...] | None:
    """The run's roles as the store read them (``RunRecord.roles``), or from the spec document."""
    roles = getattr(record, "roles", None)
    return _spec_roles({"roles": roles} if roles is not None else record.spec)


def load_runs(store: ResultsStore, table: TaskTable) -> list[RunInfo]:
    """Every run folder with a readable spec (done runs carry their stored test scores and metrics.json).

    A folder the store reports as damaged (a file missing or not parsing) is kept with status "damaged (...)", so
    that the tables report it where a run is missing; one whose spec is the damaged part is skipped with a warning.
    """
    runs = []
    for record in store.records():
        damage = getattr(record, "damage", None)
        if damage:
            damage = damage.replace(f"{record.folder}/", "").replace(str(record.folder), record.run_id)
            logger.warning("run %s is damaged: %s", record.run_id, damage)
        spec = record.spec
        try:
            setting = Setting(_run_domain(spec, table), str(spec["model"]), str(spec["profile"]["name"]))
            status = f"damaged: {damage}" if damage else record.status or "unknown"
            metrics = record.metrics()
            runs.append(RunInfo(record, setting, status, _record_roles(record), _scores(metrics, table), metrics))
        except (KeyError, TypeError, ValueError, OSError) as exc:
            logger.warning("run %s: unreadable spec or metrics (%s); skipped", record.run_id, exc)
    return runs


def task_order(names: set[str], domain: str, table: TaskTable) -> tuple[str, ...]:
    listed = list(table.domains[domain].tasks) if domain in table.domains else []
    return tuple([n for n in listed if n in names] + sorted(names - set(listed)))


CONDITION_KINDS = ("single", "pair", "all", "finetune")


@dataclass
class DomainRuns:
    """The runs of one setting, indexed by condition: ``runs[kind][(condition, seed)]`` for done runs with scores.

    kinds: "single" (condition = task), "pair" (frozenset of the two tasks), "all" (condition = "all": the mtl
    run of every task of the setting, see ``_all_task_set``), "finetune" (task). ``not_done`` holds the status of runs not (yet) usable.
    """

    setting: Setting
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: dict = field(default_factory=lambda: {kind: {} for kind in CONDITION_KINDS})
    not_done: dict = field(default_factory=dict)  # (kind, condition, seed) -> status
    notes: list = field(default_factory=list)

    def get(self, kind: str, condition, seed: int) -> RunInfo | None:
        return self.runs[kind].get((condition, seed))


def _all_task_set(runs: list[RunInfo], tasks: tuple[str, ...]) -> frozenset:
    """Tasks of the MT-Refinement run: every task of the setting if such an mtl run exists, else the largest
    mtl task set with more than two tasks (e.g. the domain's run when extra pairs were added later)."""
    labelled = [frozenset(r.tasks) for r in runs if r.roles is not None and "all" in r.roles]
    if labelled:  # the grid said which run is the all-task run
        return max(labelled, key=lambda s: (len(s), labelled.count(s), sorted(s)))
    sets = [frozenset(r.tasks) for r in runs if r.stage == "mtl"]
    if frozenset(tasks) in sets:
        return frozenset(tasks)
    larger = [s for s in sets if len(s) > 2]
    return max(larger, key=lambda s: (len(s), sets.count(s), sorted(s))) if larger else frozenset(tasks)


def _condition(run: RunInfo, all_tasks: frozenset, all_task_ids: set[str], known_ids: set[str]) -> list:
    """The (kind, condition) pairs a run stands for (a 2-task domain's mtl run is both "all" and "pair")."""
    if run.stage == "single":
        return [("single", run.tasks[0])]
    if run.stage == "finetune":
        parent = Path(run.parent).name if run.parent else ""
        # Fine-tuned from the all-task run, or from a run this store does not hold (we cannot tell): keep.
        return [("finetune", run.tasks[0])] if parent in all_task_ids or parent not in known_ids else []
    found = []
    if run.stage == "mtl" and frozenset(run.tasks) == all_tasks:
        found.append(("all", "all"))
    if run.stage == "mtl" and len(run.tasks) == 2:
        found.append(("pair", frozenset(run.tasks)))
    return found


def _conditions_of_roles(run: RunInfo) -> list:
    """The (kind, condition) pairs of a run whose spec names its roles (the grid decided; nothing to infer)."""
    conditions = {"single": run.tasks[0], "pair": frozenset(run.tasks), "all": "all", "finetune": run.tasks[0]}
    return [(role, conditions[role]) for role in run.roles if role in conditions]


def _add_run(index: DomainRuns, kind: str, condition, run: RunInfo) -> None:
    key = (condition, run.seed)
    if run.status != "done" or not all(t in run.scores for t in run.tasks):
        index.not_done[(kind, condition, run.seed)] = run.status if run.status != "done" else "no test score"
        return
    held = index.runs[kind]
    if key in held:
        older, newer = sorted([held[key], run], key=RunInfo.finished_at)
        index.notes.append(f"two done runs for {_condition_label(kind, condition)} seed {run.seed}: "
                           f"{older.run_id} and {newer.run_id}; using the newer")
        run = newer
    held[key] = run


def index_runs(setting: Setting, runs: list[RunInfo], table: TaskTable) -> DomainRuns:
    """Index one setting's runs; tasks = every task any of its runs trained, in the task table's order.

    Affinity runs (``affinity_every > 0``) are left out: an all-task run that tracks look-ahead affinity is
    neither the MT-Refinement run nor (in a two-task domain) the pair run, and a finetune run started from one
    is not MT-Fine-Tune. Their tasks and seeds do not widen the setting either.
    """
    known_ids = {r.run_id for r in runs}  # affinity runs included: a finetune from one is recognised, and dropped
    runs = [r for r in runs if not r.is_affinity]
    tasks = task_order({t for r in runs for t in r.tasks}, setting.domain, table)
    index = DomainRuns(setting, tasks, tuple(sorted({r.seed for r in runs})))
    all_tasks = _all_task_set(runs, tasks)
    if all_tasks != frozenset(tasks):
        index.notes.append(f"MT-Refinement is the mtl run of {', '.join(t for t in tasks if t in all_tasks)} "
                           f"(no mtl run trains all {len(tasks)} tasks)")
    all_task_ids = {r.run_id for r in runs if r.stage == "mtl" and frozenset(r.tasks) == all_tasks}
    for run in runs:
        found = (_conditions_of_roles(run) if run.roles is not None
                 else _condition(run, all_tasks, all_task_ids, known_ids))
        if not found:
            logger.info("run %s (%s %s) is not a single, pair, all-task or finetune run of %s; not used",
                        run.run_id, run.stage, "+".join(run.tasks), setting.domain)
        for kind, condition in found:
            _add_run(index, kind, condition, run)
    index.notes.extend(selection_metric_notes(runs, tasks, table))
    return index


def selection_metric_notes(runs: list[RunInfo], tasks: tuple[str, ...], table: TaskTable) -> list[str]:
    """A note per task whose runs chose their epoch by another metric than the task table's primary one.

    The analysis always scores with today's primary metric (recomputed from the predictions), but a run picked
    its reported epoch on dev by the primary metric of its own time (``metrics.json`` records it per task):
    stores written before DDI's primary became macro-F1 selected DDI epochs by micro-F1.
    """
    notes = []
    for task in tasks:
        stored = sorted({((r.metrics.get("tasks") or {}).get(task) or {}).get("metric") for r in runs
                         if task in r.tasks} - {None, table.tasks[task].metric})
        if stored:
            count = sum(1 for r in runs if ((r.metrics.get("tasks") or {}).get(task) or {}).get("metric") in stored)
            notes.append(f"{task}: scored by {table.tasks[task].metric}, but {count} run(s) selected their epoch "
                         f"by {', '.join(stored)} (stored before {table.tasks[task].metric} became the primary)")
    return notes


def _condition_label(kind: str, condition) -> str:
    if kind == "pair":
        return "mtl pair " + "+".join(sorted(condition))
    if kind == "all":
        return "mtl all tasks"
    return f"{kind} {condition}"


def _wanted(index: DomainRuns) -> list[tuple[str, object]]:
    pairs = [frozenset((a, b)) for i, a in enumerate(index.tasks) for b in index.tasks[i + 1:]]
    wanted = [("single", t) for t in index.tasks] + [("pair", p) for p in pairs]
    if len(index.tasks) > 2:
        wanted.append(("all", "all"))
    return wanted + [("finetune", t) for t in index.tasks]


def missing_runs(index: DomainRuns) -> list[str]:
    """One line per condition with seeds that have no done run, and why (not in store, running, failed)."""
    lines = []
    no_finetune = not index.runs["finetune"]
    for kind, condition in _wanted(index):
        if kind == "finetune" and no_finetune:
            continue
        gaps = [f"{seed} ({index.not_done.get((kind, condition, seed), 'not in store')})"
                for seed in index.seeds if index.get(kind, condition, seed) is None]
        if gaps:
            lines.append(f"{_condition_label(kind, condition)}: seed{'s' if len(gaps) > 1 else ''} {', '.join(gaps)}")
    if no_finetune and index.tasks:
        lines.append("finetune: no finetune runs in the store (MT-Fine-Tune is n/a)")
    return lines


class PredictionCache:
    """Reads each predictions file once; ``memo`` keeps what the bootstrap derives from each (its statistics)."""

    def __init__(self) -> None:
        self._records: dict[Path, list[dict] | None] = {}
        self.memo: dict = {}

    def get(self, path: Path) -> list[dict] | None:
        if path not in self._records:
            self._records[path] = read_predictions(path) if path.is_file() else None
        return self._records[path]


def settings_in_store(runs: list[RunInfo]) -> dict[Setting, list[RunInfo]]:
    grouped: dict[Setting, list[RunInfo]] = {}
    for run in runs:
        grouped.setdefault(run.setting, []).append(run)
    return dict(sorted(grouped.items(), key=lambda item: (item[0].domain, item[0].model, item[0].profile)))
