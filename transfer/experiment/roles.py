"""The roles a run plays in a grid, as one table: the planner, the worker, the trainer and the analysis read it.

A *role* is what a run is for (``single``: a task's baseline; ``pair``: multi-task refinement on two tasks;
``all``: the all-task refinement run, MT-Refinement; ``finetune``: a task fine-tuned from the all-task run's
encoder, MT-Fine-Tune; ``affinity``: an all-task run that records look-ahead task affinity). A *stage* is what
the trainer does (``single``, ``mtl``, ``finetune``); several roles share one stage, and one run can play
several roles (with two tasks the pair run *is* the all-task run).

The grid stores each run's roles in ``spec.json`` beside the spec, outside its hashed part, so recording them
changes no run id. Adding a role is a row here plus its planner rule in ``transfer.scheduling.plan``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """What the trainer does, and which profile values (field names of ``Profile``) it trains with."""

    name: str
    learning_rate: str
    epochs: str
    takes_parent: bool = False  # starts from another run's encoder (``RunSpec.parent``)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("single", "learning_rate", "epochs"),
    Stage("mtl", "learning_rate", "epochs"),
    Stage("finetune", "finetune_learning_rate", "finetune_epochs", takes_parent=True),
)}


@dataclass(frozen=True)
class Role:
    """One row of the roles table."""

    name: str
    stage: str  # a key of STAGES
    help: str
    parent: str | None = None  # the role whose run this one starts from (its encoder is saved for it)
    model_type: str | None = None  # row of the analysis's model table, None when the role is not one
    model_label: str | None = None  # how the tables and figures name that model type
    default: bool = True  # in the grid's default plan
    min_tasks: int = 1  # tasks the grid needs before it can plan this role

    def learning_rate(self, profile) -> float:
        return getattr(profile, STAGES[self.stage].learning_rate)

    def epochs(self, profile) -> int:
        return getattr(profile, STAGES[self.stage].epochs)


ROLES: dict[str, Role] = {r.name: r for r in (
    Role("single", "single", "one run per task", model_type="single", model_label="BERT (single task)"),
    Role("pair", "mtl", "one multi-task run per unordered task pair", min_tasks=2),
    Role("all", "mtl", "the all-task refinement run", model_type="mt-refinement", model_label="MT-Refinement",
         min_tasks=2),
    Role("finetune", "finetune", "one run per task from the all-task run's encoder (needs all)", parent="all",
         model_type="mt-finetune", model_label="MT-Fine-Tune", min_tasks=2),
    Role("affinity", "mtl", "an all-task run that also records look-ahead task affinity (a cheap preview of the "
         "pairwise grid; not in the default plan, see python -m transfer.affinity)", default=False, min_tasks=2),
)}

DEFAULT_ROLES = tuple(name for name, role in ROLES.items() if role.default)
MODEL_TYPES = tuple(role.model_type for role in ROLES.values() if role.model_type)
MODEL_LABELS = {role.model_type: role.model_label for role in ROLES.values() if role.model_type}


def role(name: str) -> Role:
    try:
        return ROLES[name]
    except KeyError:
        raise ValueError(f"unknown run role {name!r}; known: {', '.join(ROLES)}") from None


def stage_takes_parent(stage: str) -> bool:
    """Whether a run of this trainer stage starts from its parent run's encoder."""
    return STAGES[stage].takes_parent


def children_of(name: str) -> tuple[str, ...]:
    """Roles that start from a run of role ``name`` (so that run must keep its encoder for them)."""
    return tuple(r.name for r in ROLES.values() if r.parent == name)


def roles_help() -> str:
    return "; ".join(f"{r.name}: {r.help}" for r in ROLES.values())
