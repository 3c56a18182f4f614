"""Core split on the CPU: one run with every core, or one run per core?

    python benchmarks/bench_threads.py --steps 40
    python benchmarks/bench_threads.py --configs 1x2,2x1,1x1 --steps 20 --out benchmarks/results/threads.json

A configuration ``PxT`` starts P worker processes at once with T threads each (``torch.set_num_threads`` plus
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, as the grid's CPU slots set them). Every worker trains the same
short workload with transfer's own loop: bench_train's fixed training sample (default: ChemProt, batch 32,
max_length 128), AdamW, transfer's default precision (bf16 where native) and length-grouped batches. Workers
load data and model first, then wait for each other (a file barrier in ``Reporter.start``), so their training
steps run side by side.

Numbers per configuration (training steps after ``--skip-steps``, as in bench_train):

* ``per_process_examples_per_s``: each worker's steady-state examples/s (end of step skip -> end of last step).
* ``aggregate_examples_per_s``: their sum, the rate at which the machine gets training work done while all
  P processes train (what a grid with P slots of T threads gets).
* ``makespan_examples_per_s``: all timed examples / (last worker's last step end - first worker's step-skip end),
  a conservative version that charges any misalignment between the workers.
* ``vs_first``: aggregate over the first configuration's (the default order is ``1xC`` then ``Cx1``).

Each configuration is watched by bench_train's load check (``load``: the CPU time of processes other than this
one and its workers, in cores); ``meta.quiet`` is whether every configuration was quiet.

The question answered: does ``Cx1`` (one run per core) beat ``1xC`` (one run, all cores) on this machine?
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from benchlib.machine import QUIET_CORES, LoadCheck, _loadavg  # noqa: E402
from benchlib.records import timed_summary  # noqa: E402
from benchlib.report import busy_warning, report_console, write_report  # noqa: E402
from benchlib.variants import run_transfer_loop  # noqa: E402
from benchlib.workload import DEFAULT_TASK, SMALL_EVAL, load_workload, quiet_transformers  # noqa: E402


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_config(text: str) -> tuple[int, int]:
    """``"2x1"`` -> (2 processes, 1 thread each)."""
    try:
        procs, threads = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"a configuration is PROCESSESxTHREADS like 2x1, got {text!r}") from None
    if procs < 1 or threads < 1:
        raise SystemExit(f"configuration {text!r}: processes and threads must be at least 1")
    return procs, threads


def wait_barrier(folder: Path, parties: int, timeout: float = 600.0) -> None:
    """Mark this process ready and wait until ``parties`` processes are."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready.{os.getpid()}").touch()
    deadline = time.time() + timeout
    while len(list(folder.glob("ready.*"))) < parties:
        if time.time() > deadline:
            raise TimeoutError(f"only {len(list(folder.glob('ready.*')))} of {parties} workers became ready")
        time.sleep(0.005)


def worker(args: argparse.Namespace) -> int:
    """One worker process: train the workload with ``--threads`` threads and write its timings."""
    import torch

    torch.set_num_threads(args.threads)
    quiet_transformers()
    device = torch.device("cpu")
    workload = load_workload(model=args.model, task_name=args.task, data_dir=args.data_dir, batch_size=args.batch_size,
                             max_length=args.max_length, steps=args.steps, skip=args.skip_steps,
                             eval_examples=SMALL_EVAL, device=device)
    barrier = (lambda summary: wait_barrier(Path(args.barrier), args.parties)) if args.barrier else None
    result, clock, recorder, memory = run_transfer_loop(workload, precision=args.precision, grouped=True,
                                                         on_start=barrier, now=time.time)
    out = {
        "pid": os.getpid(), "threads": torch.get_num_threads(), "precision": result["train"]["precision"],
        "begin": clock.begin, "ends": clock.ends, "skip": workload.skip,
        "summary": timed_summary(clock, recorder.train, workload.arch, None),
        "train_seconds": result["train"]["train_seconds"], "wall_seconds": result["train"]["wall_seconds"],
        "peak_memory_mb": round(memory.peak_mb, 1),
    }
    Path(args.worker_out).write_text(json.dumps(out) + "\n", encoding="utf-8")
    return 0


def aggregate(workers: list[dict]) -> dict:
    """Per-process and aggregate steady-state rates of one configuration's workers."""
    rates = [w["summary"]["examples_per_s"] for w in workers]
    token_rates = [w["summary"]["real_tokens_per_s"] for w in workers]
    starts = [w["ends"][w["summary"]["skipped_steps"] - 1] for w in workers]
    ends = [w["ends"][-1] for w in workers]
    span = max(ends) - min(starts)
    overlap = max(0.0, min(ends) - max(starts))
    examples = sum(w["summary"]["examples"] for w in workers)
    tokens = sum(w["summary"]["real_tokens"] for w in workers)
    return {
        "processes": len(workers), "threads_per_process": workers[0]["threads"], "precision": workers[0]["precision"],
        "per_process_examples_per_s": rates,
        "aggregate_examples_per_s": round(sum(rates), 3),
        "aggregate_real_tokens_per_s": round(sum(token_rates), 1),
        "makespan_seconds": round(span, 4),
        "makespan_examples_per_s": round(examples / span, 3),
        "makespan_real_tokens_per_s": round(tokens / span, 1),
        "overlap_fraction": round(overlap / span, 4) if span else 1.0,
        "peak_memory_mb_per_process": [w["peak_memory_mb"] for w in workers],
        "workers": workers,
    }


def worker_command(args: argparse.Namespace, threads: int, barrier: Path, parties: int, out: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--barrier", str(barrier),
           "--parties", str(parties), "--worker-out", str(out), "--steps", str(args.steps),
           "--skip-steps", str(args.skip_steps), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--model", args.model, "--task", args.task,
           "--precision", args.precision]
    if args.data_dir:
        cmd += ["--data-dir", str(args.data_dir)]
    return cmd


def run_config(args: argparse.Namespace, procs: int, threads: int) -> dict:
    """Start ``procs`` workers of ``threads`` threads at once; wait for all; aggregate."""
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        outs = [tmp / f"worker{k}.json" for k in range(procs)]
        logs = [open(tmp / f"worker{k}.log", "w+") for k in range(procs)]
        started = time.time()
        # the workers are this process's children, so their CPU time counts as its own: "others" is the rest
        with LoadCheck(f"core split {procs}x{threads}", threshold_cores=args.quiet_cores) as check:
            children = [subprocess.Popen(worker_command(args, threads, tmp / "barrier", procs, out), env=env,
                                         stdout=log, stderr=subprocess.STDOUT) for out, log in zip(outs, logs)]
            try:
                codes = [child.wait(timeout=args.timeout) for child in children]
            except subprocess.TimeoutExpired:
                for child in children:
                    child.kill()
                raise
        failed = [k for k, code in enumerate(codes) if code != 0]
        if failed:
            logs[failed[0]].seek(0)
            tail = logs[failed[0]].read()[-3000:]
            raise RuntimeError(f"{procs}x{threads}: worker {failed[0]} exited with {codes[failed[0]]}:\n{tail}")
        for log in logs:
            log.close()
        result = aggregate([json.loads(out.read_text()) for out in outs])
    result["config"] = f"{procs}x{threads}"
    result["elapsed_seconds"] = round(time.time() - started, 2)
    result["load"] = check.result
    return result


def render(report: dict, console=None) -> None:
    from rich.table import Table

    console = report_console(console)
    meta = report["meta"]
    table = Table(title=f"core split: {meta['steps']} steps x batch {meta['batch_size']} per process, timed after "
                        f"{meta['skip_steps']}; {meta['usable_cores']} cores, load average {meta['load_average_start']} "
                        f"-> {meta['load_average_end']}", header_style="bold")
    for col in ("config", "per-process ex/s", "aggregate ex/s", "makespan ex/s", "aggregate real tok/s", "overlap",
                "vs first"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for item in report["configs"].values():
        table.add_row(item["config"], ", ".join(f"{r:.1f}" for r in item["per_process_examples_per_s"]),
                      f"{item['aggregate_examples_per_s']:.1f}", f"{item['makespan_examples_per_s']:.1f}",
                      f"{item['aggregate_real_tokens_per_s']:,.0f}", f"{100 * item['overlap_fraction']:.0f}%",
                      f"{item['vs_first']:.2f}x")
    console.print(table)
    if meta.get("busy"):
        label = "note" if meta.get("quiet") else "[bold red]warning[/]"
        console.print(f"{label}: {meta['busy']}")
    if meta.get("not_quiet"):
        console.print(f"[bold red]warning:[/] other processes used the CPU while {', '.join(meta['not_quiet'])} ran "
                      "(see each configuration's load)")
    if report.get("verdict"):
        console.print(report["verdict"])


def build_parser() -> argparse.ArgumentParser:
    cores = usable_cores()
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_threads.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--configs", default=f"1x{cores},{cores}x1",
                        help="comma-separated PROCESSESxTHREADS configurations, run one after the other")
    parser.add_argument("--steps", type=int, default=40, help="training steps per process")
    parser.add_argument("--skip-steps", type=int, default=3, help="first steps of each process run but not timed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--model", default="minilm", help="encoder: 'minilm' or a local path")
    parser.add_argument("--task", default=DEFAULT_TASK, help="a single-label classification task")
    parser.add_argument("--data-dir", default=None, help="data directory (else $TRANSFER_DATA_DIR, else ./data)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="transfer's precision")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one configuration")
    parser.add_argument("--quiet-cores", type=float, default=QUIET_CORES,
                        help="cores' worth of other processes' CPU time above which a configuration was not quiet")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/threads-<time>.json)")
    worker_group = parser.add_argument_group("worker (internal)")
    worker_group.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    worker_group.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    worker_group.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    worker_group.add_argument("--parties", type=int, default=1, help=argparse.SUPPRESS)
    worker_group.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return parser


def run_benchmark(args: argparse.Namespace) -> dict:
    configs = [parse_config(c) for c in args.configs.split(",") if c.strip()]
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2")
    args.skip_steps = min(max(args.skip_steps, 1), args.steps - 1)
    import torch

    # Tokenise once here, so the workers all read transfer's feature cache instead of racing to fill it.
    quiet_transformers()
    load_workload(model=args.model, task_name=args.task, data_dir=args.data_dir, batch_size=args.batch_size,
                  max_length=args.max_length, steps=args.steps, skip=args.skip_steps, eval_examples=SMALL_EVAL,
                  device=torch.device("cpu"))
    report = {"meta": {"time": _dt.datetime.now().isoformat(timespec="seconds"), "usable_cores": usable_cores(),
                       "steps": args.steps, "skip_steps": args.skip_steps, "batch_size": args.batch_size,
                       "max_length": args.max_length, "task": args.task, "model": args.model,
                       "precision": args.precision, "load_average_start": _loadavg()},
              "configs": {}}
    for procs, threads in configs:
        print(f"running {procs}x{threads} ...", file=sys.stderr, flush=True)
        report["configs"][f"{procs}x{threads}"] = run_config(args, procs, threads)
    first = next(iter(report["configs"].values()))
    for item in report["configs"].values():
        item["vs_first"] = round(item["aggregate_examples_per_s"] / first["aggregate_examples_per_s"], 3)
    report["meta"]["load_average_end"] = _loadavg()
    verdicts = [item["load"]["quiet"] for item in report["configs"].values()]
    report["meta"]["quiet"] = None if None in verdicts else all(verdicts)
    report["meta"]["not_quiet"] = [item["config"] for item in report["configs"].values()
                                   if item["load"]["quiet"] is False] or None
    report["meta"]["busy"] = busy_warning(report["meta"], report["meta"]["quiet"])
    if len(report["configs"]) > 1:
        best = max(report["configs"].values(), key=lambda c: c["aggregate_examples_per_s"])
        report["verdict"] = (f"best aggregate throughput: {best['config']} ({best['aggregate_examples_per_s']:.1f} ex/s, "
                             f"{best['vs_first']:.2f}x {first['config']})")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args)
    return write_report(run_benchmark(args), args.out, "threads", render)


if __name__ == "__main__":
    raise SystemExit(main())
