"""The grid's plan: which runs a domain needs, what each is for (its roles) and roughly how long it takes.

Per seed, a domain of N tasks gives N ``single`` runs, N(N-1)/2 ``pair`` runs (multi-task refinement on two
tasks), the ``all``-task refinement run and N ``finetune`` runs that start from its encoder (and, on request,
the ``affinity`` preview run). The roles themselves are the table in ``transfer.experiment.roles``; this module
holds one *planner rule* per role (which runs of that role a seed gets). Planning reads task files and data
fingerprints, never torch or the trainer, so ``python -m transfer.grid --dry-run`` stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import transfer
from transfer.data.tasks import TaskTable, locate_tasks
from transfer.experiment.config import Profile, RunSpec, data_fingerprints
from transfer.experiment.roles import ROLES, children_of, role
from transfer.errors import UserError
from transfer.experiment.atomic import read_json, write_json_atomic

logger = logging.getLogger(__name__)


class PlanError(UserError, ValueError):
    """A grid that cannot be planned as asked (a role without the role its runs start from)."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid: its spec, the roles it plays (two with two tasks: pair and all) and its size."""

    spec: RunSpec
    roles: tuple[str, ...]
    estimated_examples: int = 0  # training examples it goes through (all epochs): what the start order uses
    run_id: str = field(init=False)

    def __post_init__(self) -> None:
        roles = tuple(self.roles.split("+")) if isinstance(self.roles, str) else tuple(self.roles)
        for name in roles:
            role(name)  # unknown names fail here, not in a worker
        object.__setattr__(self, "roles", roles)
        object.__setattr__(self, "run_id", self.spec.run_id)

    @property
    def label(self) -> str:
        """The roles as the plan table and the live view show them (``pair+all``)."""
        return "+".join(self.roles)


def ordered_tasks(table: TaskTable, domain: str | None, tasks: list[str] | None) -> tuple[str, ...]:
    """The grid's tasks in the domain's order, else the task table's (so a set always gives the same run ids)."""
    listed = table.domain(domain).tasks if domain else tuple(table.tasks)
    if not tasks:
        return tuple(listed)
    position = {name: i for i, name in enumerate(listed)}
    return tuple(sorted(dict.fromkeys(tasks), key=lambda name: (position.get(name, len(listed)), name)))


# ----------------------------------------------------------------------------------------------- planner rules

@dataclass
class SeedPlan:
    """What a planner rule sees: the grid's tasks, the seed, the roles asked for and the runs planned so far."""

    tasks: tuple[str, ...]
    seed: int
    roles: tuple[str, ...]
    make: Callable[..., RunSpec]  # make(run_tasks, role_name, **extra) -> RunSpec
    options: dict
    planned: dict[str, list[RunSpec]] = field(default_factory=dict)

    def spec(self, run_tasks: tuple[str, ...], role_name: str, **extra) -> RunSpec:
        """A spec of this role: its trainer stage, its parent's run id, its encoder kept when a child needs it."""
        row = ROLES[role_name]
        if row.parent:
            extra.setdefault("parent", self.planned[row.parent][0].run_id)
        saves = any(child in self.roles for child in children_of(role_name))
        return self.make(run_tasks, row.stage, save_encoder=saves, **extra)


def _single(plan: SeedPlan) -> list[RunSpec]:
    return [plan.spec((name,), "single") for name in plan.tasks]


def _pair(plan: SeedPlan) -> list[RunSpec]:
    return [plan.spec(pair, "pair") for pair in combinations(plan.tasks, 2)]


def _all(plan: SeedPlan) -> list[RunSpec]:
    return [plan.spec(plan.tasks, "all")]


def _finetune(plan: SeedPlan) -> list[RunSpec]:
    return [plan.spec((name,), "finetune") for name in plan.tasks]


def _affinity(plan: SeedPlan) -> list[RunSpec]:
    return [plan.spec(plan.tasks, "affinity", affinity_every=plan.options["affinity_every"],
                      affinity_batches=plan.options["affinity_batches"],
                      affinity_epochs=plan.options["affinity_epochs"])]


PLANNER_RULES: dict[str, Callable[[SeedPlan], list[RunSpec]]] = {
    "single": _single, "pair": _pair, "all": _all, "finetune": _finetune, "affinity": _affinity,
}


def check_roles(roles: tuple[str, ...]) -> None:
    """Every role asked for has a planner rule, and the role its runs start from is asked for too."""
    for name in roles:
        row = role(name)
        if name not in PLANNER_RULES:
            raise PlanError(f"run role {name!r} has no planner rule")
        if row.parent and row.parent not in roles:
            raise PlanError(f"the {name} stage needs the {row.parent} stage (the run it starts from)")


def expand_specs(tasks: tuple[str, ...], stages: tuple[str, ...], seeds: tuple[int, ...], *, profile: Profile,
                 model: str, domain: str | None, fingerprints: tuple[tuple[str, str], ...] = (),
                 code_version: str = transfer.__version__, affinity_every: int = 20,
                 affinity_batches: int = 1, affinity_epochs: int = 0) -> list[tuple[str, RunSpec]]:
    """(role, spec) of every run, seed by seed, in the roles table's order (a parent before its children)."""
    check_roles(tuple(stages))

    def make(run_tasks: tuple[str, ...], stage: str, seed: int, **extra) -> RunSpec:
        own = tuple(fp for fp in fingerprints if fp[0].rpartition("/")[0] in run_tasks)
        return RunSpec(tasks=run_tasks, stage=stage, profile=profile, seed=seed, model=model, domain=domain,
                       data_fingerprints=own, code_version=code_version, **extra)

    runs: list[tuple[str, RunSpec]] = []
    options = {"affinity_every": affinity_every, "affinity_batches": affinity_batches,
               "affinity_epochs": affinity_epochs}
    for seed in seeds:
        plan = SeedPlan(tuple(tasks), seed, tuple(stages), lambda t, s, **x: make(t, s, seed, **x), options)
        for name in (r for r in ROLES if r in stages):
            plan.planned[name] = PLANNER_RULES[name](plan)
            runs += [(name, spec) for spec in plan.planned[name]]
    return runs


def dedupe(runs: list[tuple[str, RunSpec]]) -> list[tuple[tuple[str, ...], RunSpec]]:
    """One entry per run id with all its roles (with two tasks the pair run *is* the all-task run)."""
    merged: dict[str, tuple[tuple[str, ...], RunSpec]] = {}
    for name, spec in runs:
        if spec.run_id not in merged:
            merged[spec.run_id] = ((name,), spec)
            continue
        old_roles, old_spec = merged[spec.run_id]
        keep = spec if spec.save_encoder else old_spec  # save_encoder is not part of the run id
        merged[spec.run_id] = (old_roles if name in old_roles else (*old_roles, name), keep)
    return list(merged.values())


# ----------------------------------------------------------------------------------------------- estimates

def estimate_examples(spec: RunSpec, train_counts: dict[str, int]) -> int:
    """Training examples the run goes through: sum of min(train size, max_train_examples), times epochs."""
    cap = spec.profile.max_train_examples
    return sum(min(train_counts[name], cap or train_counts[name]) for name in spec.tasks) * spec.last_epoch


def counts_cache_file() -> Path:
    from transfer.data.files import cache_dir

    return cache_dir().parent / "train_counts.json"


def train_counts(table: TaskTable, paths: dict[str, dict[str, Path]], fingerprints: dict[str, str],
                 cache_file: Path | None, write_cache: bool = True) -> dict[str, int]:
    """Training examples per task, read once per file content (cached by fingerprint in ``cache_file``)."""
    from transfer.data.readers import read_split

    try:
        cache = read_json(cache_file) if cache_file and cache_file.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    counts, changed = {}, False
    for name, splits in paths.items():
        task = table.task(name)
        key = f"{fingerprints[f'{name}/train']}:{task.reader}"
        if not isinstance(cache.get(key), int):
            logger.info("counting the training examples of %s", name)
            cache[key] = len(read_split(splits["train"], task))
            changed = True
        counts[name] = int(cache[key])
    if changed and cache_file and write_cache:
        try:
            write_json_atomic(cache_file, cache)
        except OSError as exc:  # only a cache
            logger.warning("could not write %s: %s", cache_file, exc)
    return counts


def start_order(plan: list[PlannedRun]) -> dict[str, int]:
    """Each run's place in the order runs start: seed by seed (in the plan's order of seeds), longest first within
    a seed. A multi-seed grid stopped part-way (it takes hours on a CPU) then leaves whole seeds done, which the
    analysis can use, rather than a few runs of every seed; there is no barrier between seeds, so a slot freed near
    the end of one seed takes the next seed's longest run."""
    seed_rank: dict[int, int] = {}
    for run in plan:
        seed_rank.setdefault(run.spec.seed, len(seed_rank))
    ordered = sorted(plan, key=lambda run: (seed_rank[run.spec.seed], -run.estimated_examples, run.run_id))
    return {run.run_id: place for place, run in enumerate(ordered)}


def plan_grid(table: TaskTable, domain: str | None, tasks: tuple[str, ...], stages: tuple[str, ...],
              seeds: tuple[int, ...], profile: Profile, model: str, data_dir: str | None = None,
              write_cache: bool = True, affinity_every: int = 20, affinity_batches: int = 1,
              affinity_epochs: int = 0) -> list[PlannedRun]:
    """Every run of the grid with its data fingerprints, roles and estimated size."""
    paths = locate_tasks(table, tasks, domain, data_dir)
    fingerprints = data_fingerprints(paths)
    counts = train_counts(table, paths, dict(fingerprints), counts_cache_file(), write_cache)
    runs = dedupe(expand_specs(tasks, stages, seeds, profile=profile, model=model, domain=domain,
                               fingerprints=fingerprints, affinity_every=affinity_every,
                               affinity_batches=affinity_batches, affinity_epochs=affinity_epochs))
    return [PlannedRun(spec, roles, estimate_examples(spec, counts)) for roles, spec in runs]
