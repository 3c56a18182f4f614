"""The grid: expand a domain into every run the transfer analysis needs, and run what the store lacks.

    python -m transfer.grid --domain biomedical                      # all stages, every GPU (or the CPU)
    python -m transfer.grid --domain clinical-public --dry-run       # show the plan and exit
    python -m transfer.grid --tasks chemprot ddi2013-type --stages single pair --devices 0,1
    python -m transfer.grid --domain biomedical --backend dask --scheduler-address tcp://host:8786 --worker-gpus

Per seed, a domain of N tasks gives N ``single`` runs, N(N-1)/2 ``pair`` runs (multi-task refinement on two
tasks), the ``all``-task refinement run and N ``finetune`` runs that start from its encoder. Every run is a
folder of the results store keyed by its run id, so rerunning the command skips what is done, restarts what a
dead process left ``running`` and reports (or with ``--retry-failed`` retries) what failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import transfer
from transfer.experiment.config import DEFAULT_MODEL, ConfigError, Profile, RunSpec
from transfer.scheduling.scheduler import Board, DaskScheduler, GridOptions, LocalScheduler, device_slots, parse_devices
from transfer.experiment.store import ResultsStore, read_json, write_json_atomic
from transfer.data.tasks import DataNotFoundError, TaskConfigError, TaskTable, load_task_table, locate_tasks

logger = logging.getLogger(__name__)

GRID_STAGES = ("single", "pair", "all", "finetune")  # the default plan
ALL_STAGES = (*GRID_STAGES, "affinity")
STAGE_HELP = ("single: one run per task; pair: one multi-task run per unordered task pair; all: the all-task "
              "refinement run; finetune: one run per task from the all-task run's encoder (needs all); "
              "affinity: an all-task run that also records look-ahead task affinity (a cheap preview of the "
              "pairwise grid; not in the default plan, see python -m transfer.affinity)")
BACKENDS = ("local", "dask")


# ----------------------------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid: its spec, which grid stage(s) it serves and its estimated training examples."""

    spec: RunSpec
    stage: str  # single | pair | all | finetune, or pair+all when one run serves both (two tasks)
    estimated_examples: int = 0
    run_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_id", self.spec.run_id)


def ordered_tasks(table: TaskTable, domain: str | None, tasks: list[str] | None) -> tuple[str, ...]:
    """The grid's tasks in the domain's order, else the task table's (so a set always gives the same run ids)."""
    listed = table.domain(domain).tasks if domain else tuple(table.tasks)
    if not tasks:
        return tuple(listed)
    position = {name: i for i, name in enumerate(listed)}
    return tuple(sorted(dict.fromkeys(tasks), key=lambda name: (position.get(name, len(listed)), name)))


def expand_specs(tasks: tuple[str, ...], stages: tuple[str, ...], seeds: tuple[int, ...], *, profile: Profile,
                 model: str, domain: str | None, fingerprints: tuple[tuple[str, str], ...] = (),
                 code_version: str = transfer.__version__, affinity_every: int = 20,
                 affinity_batches: int = 1) -> list[tuple[str, RunSpec]]:
    """(grid stage, spec) of every run, seed by seed: singles, pairs, the all-task run, finetunes."""
    def spec(run_tasks: tuple[str, ...], stage: str, seed: int, **extra) -> RunSpec:
        own = tuple(fp for fp in fingerprints if fp[0].rpartition("/")[0] in run_tasks)
        return RunSpec(tasks=run_tasks, stage=stage, profile=profile, seed=seed, model=model, domain=domain,
                       data_fingerprints=own, code_version=code_version, **extra)

    if "finetune" in stages and "all" not in stages:
        raise ValueError("the finetune stage needs the all stage (the refinement run it starts from)")
    runs: list[tuple[str, RunSpec]] = []
    for seed in seeds:
        if "single" in stages:
            runs += [("single", spec((name,), "single", seed)) for name in tasks]
        if "pair" in stages:
            runs += [("pair", spec(pair, "mtl", seed)) for pair in combinations(tasks, 2)]
        if "all" in stages:
            refinement = spec(tasks, "mtl", seed, save_encoder="finetune" in stages)
            runs.append(("all", refinement))
            if "finetune" in stages:
                runs += [("finetune", spec((name,), "finetune", seed, parent=refinement.run_id)) for name in tasks]
        if "affinity" in stages:
            runs.append(("affinity", spec(tasks, "mtl", seed, affinity_every=affinity_every,
                                          affinity_batches=affinity_batches)))
    return runs


def dedupe(runs: list[tuple[str, RunSpec]]) -> list[tuple[str, RunSpec]]:
    """One entry per run id (with two tasks the pair run *is* the all-task run); stages joined with '+'."""
    merged: dict[str, tuple[str, RunSpec]] = {}
    for stage, spec in runs:
        if spec.run_id not in merged:
            merged[spec.run_id] = (stage, spec)
            continue
        old_stage, old_spec = merged[spec.run_id]
        keep = spec if spec.save_encoder else old_spec  # save_encoder is not part of the run id
        merged[spec.run_id] = (old_stage if stage in old_stage.split("+") else f"{old_stage}+{stage}", keep)
    return list(merged.values())


def estimate_examples(spec: RunSpec, train_counts: dict[str, int]) -> int:
    """Training examples the run goes through: sum of min(train size, max_train_examples), times epochs."""
    cap = spec.profile.max_train_examples
    return sum(min(train_counts[name], cap or train_counts[name]) for name in spec.tasks) * spec.epochs


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
    counts, changed = {}, False
    for name, splits in paths.items():
        task = table.task(name)
        key = f"{fingerprints[f'{name}/train']}:{task.reader}"
        if key not in cache:
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


def plan_grid(table: TaskTable, domain: str | None, tasks: tuple[str, ...], stages: tuple[str, ...],
              seeds: tuple[int, ...], profile: Profile, model: str, data_dir: str | None = None,
              write_cache: bool = True, affinity_every: int = 20, affinity_batches: int = 1) -> list[PlannedRun]:
    """Every run of the grid with its data fingerprints and estimated size."""
    from transfer.experiment.config import data_fingerprints

    paths = locate_tasks(table, tasks, domain, data_dir)
    fingerprints = data_fingerprints(paths)
    counts = train_counts(table, paths, dict(fingerprints), counts_cache_file(), write_cache)
    runs = dedupe(expand_specs(tasks, stages, seeds, profile=profile, model=model, domain=domain,
                               fingerprints=fingerprints, affinity_every=affinity_every,
                               affinity_batches=affinity_batches))
    return [PlannedRun(spec, stage, estimate_examples(spec, counts)) for stage, spec in runs]


# ----------------------------------------------------------------------------------------------- showing it

def _short_tasks(spec: RunSpec, all_tasks: int) -> str:
    return f"all {len(spec.tasks)}" if len(spec.tasks) == all_tasks and len(spec.tasks) > 2 else " + ".join(spec.tasks)


def plan_table(plan: list[PlannedRun], slot_class: str, store: ResultsStore | None = None):
    """A rich table of the plan: run id, stage, tasks, seed, slot class, estimated examples (and stored status)."""
    from rich.table import Table

    width = max((len(p.spec.tasks) for p in plan), default=0)
    table = Table(title=f"grid plan: {len(plan)} runs", header_style="bold")
    for column, justify in (("run id", "left"), ("stage", "left"), ("tasks", "left"), ("seed", "right"),
                            ("slot", "left"), ("est. train examples", "right"), ("stored", "left")):
        table.add_column(column, justify=justify, no_wrap=column == "run id")
    for p in plan:
        status = store.status(p.run_id) if store is not None else None
        table.add_row(p.run_id, p.stage, _short_tasks(p.spec, width), str(p.spec.seed), slot_class,
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
        try:
            return read_json(self.store.folder(run_id) / "progress.json")
        except (OSError, ValueError):
            return {}

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
        for column in ("run", "stage", "tasks", "slot", "epoch", "step", "last dev", "time"):
            table.add_column(column)
        for run in board.of_state("running"):
            info = progress.get(run.run_id, {})
            fresh = (info.get("time") or 0) >= (run.started or 0)
            table.add_row(run.run_id[-12:], run.planned.stage, _short_tasks(run.planned.spec, self.width), run.slot or "-",
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


# ----------------------------------------------------------------------------------------------- CLI

def _devices(text: str):
    try:
        return parse_devices(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _jobs(text: str) -> int | None:
    """``--jobs-per-device``: a positive number, or ``auto`` (None)."""
    return None if text == "auto" else _positive_int(text)


def build_parser(table: TaskTable) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transfer.grid", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = parser.add_argument_group("what to run")
    what.add_argument("--domain", choices=sorted(table.domains), default=None,
                      help="domain whose tasks make the grid (and whose data folder is read)")
    what.add_argument("--tasks", nargs="+", choices=sorted(table.tasks), metavar="TASK", default=None,
                      help=f"these tasks instead of the whole domain; known: {', '.join(sorted(table.tasks))}")
    what.add_argument("--stages", nargs="+", choices=ALL_STAGES, default=list(GRID_STAGES), help=STAGE_HELP)
    what.add_argument("--affinity-every", type=_positive_int, default=20,
                      help="affinity stage: take a look-ahead affinity measurement every this many training steps")
    what.add_argument("--affinity-batches", type=_positive_int, default=1,
                      help="affinity stage: probe batches per task and measurement")
    what.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds to run (None: the profile's seeds)")
    what.add_argument("--profile", default="quick", help="profile name in experiments/ or a .toml path")
    what.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a profile value, e.g. --set epochs=3 --set max_train_examples=none")
    what.add_argument("--model", default=DEFAULT_MODEL,
                      help="encoder: a local path or Hugging Face id; 'minilm' is the bundled all-MiniLM-L6-v2")
    what.add_argument("--data-dir", default=None, help="data directory (else $TRANSFER_DATA_DIR, else ./data)")
    what.add_argument("--task-file", action="append", default=[], help="extra task table (TOML) to load")
    where = parser.add_argument_group("where and how")
    where.add_argument("--results", default="results", help="results store folder (one folder per run)")
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
    from transfer.experiment.config import profile_with_overrides

    if not args.domain and not args.tasks:
        parser.error("say what to run: --domain (every task of it) or --tasks")
    stages = tuple(s for s in ALL_STAGES if s in args.stages)
    if "finetune" in stages and "all" not in stages:
        parser.error("--stages finetune needs all (the refinement run it starts from; skipped when already done)")
    home = table.domain_of(args.tasks, args.domain) if args.tasks else table.domain(args.domain)
    domain = home.name if home else None  # None: tasks of several domains, each read from its own
    tasks = ordered_tasks(table, domain, args.tasks)
    if len(tasks) < 2 and set(stages) - {"single"}:
        parser.error(f"stages {', '.join(s for s in stages if s != 'single')} need at least two tasks")
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
    with _dask_client(args.scheduler_address) as client, view:
        return DaskScheduler(store, client, options, args.worker_gpus, view).run(board)


def _dask_client(address: str | None):
    try:
        from distributed import Client
    except ImportError:
        raise SystemExit("--backend dask needs dask[distributed]: pip install 'dask[distributed]'") from None
    return Client(address) if address else Client(processes=False, dashboard_address=None)


def report(board: Board, store: ResultsStore, scores: Path) -> None:
    """The CLI's closing lines: counts, failed runs with their error and log, where the scores are."""
    cached = sum(1 for run in board.runs.values() if run.cached)
    done = board.count("done")
    print(f"{len(board.runs)} runs: {done} done ({cached} already done before), "
          f"{board.count('failed')} failed, {board.count('skipped')} skipped")
    for run in board.runs.values():
        if run.state in ("failed", "skipped"):
            print(f"  {run.state.upper()} {run.run_id}: {run.error}\n    log: {store.folder(run.run_id) / 'log.txt'}")
    print(f"scores: {scores}")


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task-file", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    table = load_task_table(known.task_file)
    parser = build_parser(table)
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True)
    _configure_logging(args.quiet, console)
    try:
        request = resolve_request(args, table, parser)
        plan = plan_grid(table, request.domain, request.tasks, request.stages, request.seeds, request.profile,
                         args.model, args.data_dir, write_cache=not args.dry_run,
                         affinity_every=args.affinity_every, affinity_batches=args.affinity_batches)
    except (ConfigError, TaskConfigError, DataNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = ResultsStore(args.results)
    if args.dry_run:
        out = Console(width=None if sys.stdout.isatty() else 250)
        out.print(plan_table(plan, _slot_class(args), store))
        done = sum(1 for p in plan if store.is_done(p.run_id))
        out.print(f"{len(plan)} runs, {done} already done in {store.root}; "
                  f"{sum(p.estimated_examples for p in plan):,} estimated training examples in all")
        return 0
    try:
        board = _execute(args, plan, store, console)
    except KeyboardInterrupt:
        store.write_scores_table()
        print("interrupted: runs in progress are left 'running'; rerun the same command to resume", file=sys.stderr)
        return 130
    report(board, store, store.write_scores_table())
    return 0 if board.succeeded() else 1


def _slot_class(args: argparse.Namespace) -> str:
    if args.backend == "dask":
        return "dask GPU" if args.worker_gpus else "dask"
    return device_slots(args.devices, args.jobs_per_device)[0].kind


if __name__ == "__main__":
    raise SystemExit(main())
