"""The grid: expand a domain into every run the transfer analysis needs, and run what the store lacks.

    python -m transfer.grid --domain biomedical                      # all stages, every GPU (or the CPU)
    python -m transfer.grid --domain clinical-public --dry-run       # show the plan and exit
    python -m transfer.grid --tasks chemprot ddi2013-type --stages single pair --devices 0,1
    python -m transfer.grid --domain biomedical --backend dask --scheduler-address tcp://host:8786 --worker-gpus

Per seed, a domain of N tasks gives N ``single`` runs, N(N-1)/2 ``pair`` runs (multi-task refinement on two
tasks), the ``all``-task refinement run and N ``finetune`` runs that start from its encoder. Every run is a
folder of the results store keyed by its run id, so rerunning the command skips what is done, restarts what a
dead process left ``running`` and reports (or with ``--retry-failed`` retries) what failed.

This module is the command line only: the plan is ``transfer.scheduling.plan``, the roles it plans
``transfer.experiment.roles``, running it ``transfer.scheduling.scheduler`` and showing it
``transfer.scheduling.view``. Nothing here imports torch (``--dry-run`` stays light).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from transfer.cli import add_common_flags, add_data_flags, add_profile_flags, add_results_flag, command, \
    positive_int, pre_parse_task_files, sigterm_interrupts
from transfer.data.tasks import TaskTable, load_task_table
from transfer.experiment.encoders import check_max_length
from transfer.experiment.config import DEFAULT_MODEL, Profile, profile_with_overrides
from transfer.experiment.convergence import convergence
from transfer.experiment.roles import DEFAULT_ROLES, ROLES, roles_help
from transfer.experiment.store import ResultsStore
from transfer.scheduling.plan import PlannedRun, ordered_tasks, plan_grid
from transfer.scheduling.scheduler import Board, GridOptions, LocalScheduler
from transfer.scheduling.slots import device_slots, parse_devices
from transfer.scheduling.view import GridView, LogView, plan_table

logger = logging.getLogger(__name__)

GRID_STAGES = DEFAULT_ROLES  # the default plan
ALL_STAGES = tuple(ROLES)
BACKENDS = ("local", "dask")


# ----------------------------------------------------------------------------------------------- CLI

def _devices(text: str):
    try:
        return parse_devices(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _jobs(text: str) -> int | None:
    """``--jobs-per-device``: a positive number, or ``auto`` (None)."""
    return None if text == "auto" else positive_int(text)


def build_parser(table: TaskTable) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transfer.grid", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = parser.add_argument_group("what to run")
    what.add_argument("--domain", choices=sorted(table.domains), default=None,
                      help="domain whose tasks make the grid (and whose data folder is read)")
    what.add_argument("--tasks", nargs="+", choices=sorted(table.tasks), metavar="TASK", default=None,
                      help=f"these tasks instead of the whole domain; known: {', '.join(sorted(table.tasks))}")
    what.add_argument("--stages", nargs="+", choices=ALL_STAGES, default=list(GRID_STAGES), help=roles_help())
    what.add_argument("--affinity-every", type=positive_int, default=20,
                      help="affinity stage: take a look-ahead affinity measurement every this many training steps")
    what.add_argument("--affinity-batches", type=positive_int, default=1,
                      help="affinity stage: probe batches per task and measurement")
    what.add_argument("--affinity-epochs", type=positive_int, default=None,
                      help="affinity stage: stop the preview after this many epochs of the all-task run's schedule "
                           "(its learning rate decays as over the whole run; default: train the whole run)")
    what.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds to run (None: the profile's seeds)")
    add_profile_flags(what, DEFAULT_MODEL)
    add_data_flags(what)
    where = parser.add_argument_group("where and how")
    add_results_flag(where)
    where.add_argument("--backend", choices=BACKENDS, default="local",
                       help="local: worker subprocesses on this machine's device slots; dask: a Dask cluster")
    where.add_argument("--devices", type=_devices, default="auto",
                       help="local slots: auto (every visible GPU, else the CPU), cpu, or GPU ids like 0,1")
    where.add_argument("--jobs-per-device", type=_jobs, default=None, metavar="N|auto",
                       help="runs at once per GPU, or CPU slots sharing the cores (auto, the default: one run per "
                            "GPU; on the CPU one single-thread run per core, 5 GiB of memory each)")
    where.add_argument("--scheduler-address", default=None,
                       help="dask: scheduler address, e.g. tcp://host:8786 (default: a LocalCluster here)")
    where.add_argument("--worker-gpus", action=argparse.BooleanOptionalAction, default=False,
                       help="dask: workers have one GPU each; submit every run with resources={'GPU': 1}")
    where.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                       help="run done runs again too")
    where.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=False,
                       help="run failed runs again (otherwise they are reported, not retried)")
    where.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=False,
                       help="print the plan as a table and exit without running or writing anything")
    where.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False,
                       help="log lines instead of the live view (batch systems)")
    add_common_flags(where)
    return parser


@dataclass(frozen=True)
class GridRequest:
    """The parsed command: what to plan."""

    domain: str | None
    tasks: tuple[str, ...]
    stages: tuple[str, ...]
    seeds: tuple[int, ...]
    profile: Profile


def resolve_request(args: argparse.Namespace, table: TaskTable, parser: argparse.ArgumentParser) -> GridRequest:
    if not args.domain and not args.tasks:
        parser.error("say what to run: --domain (every task of it) or --tasks")
    stages = tuple(s for s in ALL_STAGES if s in args.stages)
    for name in stages:
        parent = ROLES[name].parent
        if parent and parent not in stages:
            parser.error(f"--stages {name} needs {parent} (the run it starts from; skipped when already done)")
    home = table.domain_of(args.tasks, args.domain) if args.tasks else table.domain(args.domain)
    domain = home.name if home else None  # None: tasks of several domains, each read from its own
    tasks = ordered_tasks(table, domain, args.tasks)
    short = [s for s in stages if len(tasks) < ROLES[s].min_tasks]
    if short:
        parser.error(f"stages {', '.join(short)} need at least two tasks")
    profile = profile_with_overrides(args.profile, args.overrides)
    seeds = tuple(dict.fromkeys(args.seeds or profile.seeds))
    return GridRequest(domain, tasks, stages, seeds, profile)


def _configure_logging(quiet: bool, console) -> None:
    if quiet:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        return
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console)])


def _execute(args: argparse.Namespace, plan: list[PlannedRun], store: ResultsStore, console) -> Board:
    options = GridOptions(force=args.force, retry_failed=args.retry_failed, data_dir=args.data_dir,
                          task_files=list(args.task_file))
    board = Board.from_plan(plan)
    view = LogView(board) if args.quiet else GridView(board, store, console)
    if args.backend == "local":
        slots = device_slots(args.devices, args.jobs_per_device)
        logger.info("local slots: %s", ", ".join(f"{s.name} ({s.threads} threads)" for s in slots))
        with view:
            return LocalScheduler(store, slots, options, view).run(board)
    from transfer.scheduling.dask_backend import DaskScheduler, dask_client

    with dask_client(args.scheduler_address) as client, view:
        return DaskScheduler(store, client, options, args.worker_gpus, view).run(board)


def report(board: Board, store: ResultsStore, scores: Path | None) -> None:
    """The CLI's closing lines: counts, failed runs with their error and log, where the scores are."""
    cached = sum(1 for run in board.runs.values() if run.cached)
    done = board.count("done")
    print(f"{len(board.runs)} runs: {done} done ({cached} already done before), "
          f"{board.count('failed')} failed, {board.count('skipped')} skipped")
    for run in board.runs.values():
        if run.state in ("failed", "skipped"):
            print(f"  {run.state.upper()} {run.run_id}: {run.error}\n    log: {store.run(run.run_id).log_file}")
    print(f"scores: {scores}" if scores else "scores: not rewritten (see the warning above)")
    summary = convergence((r.stage, r.tasks, r.metrics()) for r in store.records() if r.run_id in board.runs and r.done)
    if summary.get("all_task_runs"):
        print(f"convergence: {summary['all_peaked']} of {summary['all_task_runs']} task-runs peaked at their last "
              f"epoch (single-task runs: {summary['single_peaked']} of {summary['single_task_runs']})")
    if summary.get("warning"):
        logger.warning(summary["warning"])


@command
def main(argv: list[str] | None = None) -> int:
    table = load_task_table(pre_parse_task_files(argv))
    parser = build_parser(table)
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True)
    _configure_logging(args.quiet, console)
    request = resolve_request(args, table, parser)
    if args.backend == "local":  # a Dask cluster's workers may hold a model this host does not
        check_max_length(args.model, request.profile.max_length, local_only=True)  # and a --model folder exists
    plan = plan_grid(table, request.domain, request.tasks, request.stages, request.seeds, request.profile,
                     args.model, args.data_dir, write_cache=not args.dry_run,
                     affinity_every=args.affinity_every, affinity_batches=args.affinity_batches,
                     affinity_epochs=args.affinity_epochs or 0)
    store = ResultsStore(args.results)
    if args.dry_run:
        out = Console(width=None if sys.stdout.isatty() else 250)
        out.print(plan_table(plan, _slot_class(args), store))
        done = sum(1 for p in plan if store.is_done(p.run_id))
        out.print(f"{len(plan)} runs, {done} already done in {store.root}; "
                  f"{sum(p.estimated_examples for p in plan):,} estimated training examples in all")
        return 0
    try:
        with sigterm_interrupts():  # a SIGTERM stops the workers too, as Ctrl-C does
            board = _execute(args, plan, store, console)
    except KeyboardInterrupt:
        store.try_write_scores_table()
        print("interrupted: runs in progress are left 'running'; rerun the same command to resume", file=sys.stderr)
        return 130
    report(board, store, store.try_write_scores_table())
    return 0 if board.succeeded() else 1


def _slot_class(args: argparse.Namespace) -> str:
    if args.backend == "dask":
        return "dask GPU" if args.worker_gpus else "dask"
    return device_slots(args.devices, args.jobs_per_device)[0].kind


if __name__ == "__main__":
    raise SystemExit(main())
