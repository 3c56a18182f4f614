"""Smoke tests of benchmarks/: the FLOP formula by hand, the peak measurement (best repeat, fastest shape), the
load check, the refusal of impossible utilisation, one tiny end-to-end run, the grid and core-split arithmetic."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import flops, machine, records, variants  # noqa: E402
from benchlib.grid_view import grid_view  # noqa: E402
from benchlib.report import UTIL_REFUSED, peak_errors, render, write_report  # noqa: E402


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_train = _load("bench_train")
bench_threads = _load("bench_threads")

TRAIN_KEYS = {"examples_per_s", "real_tokens_per_s", "padded_tokens_per_s", "pad_fraction", "real_tokens_per_s_vs_a",
              "real_tokens_per_s_vs_b", "peak_memory_mb", "train_peak_memory_mb", "mfu", "executed_util", "timed_seconds", "timed_steps",
              "all_steps_seconds", "precision", "label"}
EVAL_KEYS = {"examples_per_s", "real_tokens_per_s", "real_tokens_per_s_vs_a", "mfu", "seconds", "examples"}


def test_flop_formula_on_a_toy_config():
    # L=2, H=4, I=8: one layer = 4*16 + 2*4*8 + 9*4 + 8 = 64 + 64 + 36 + 8 = 172 -> N = 344
    arch = flops.Arch(layers=2, hidden=4, intermediate=8)
    assert flops.layer_params(4, 8) == 172
    assert arch.n_params == 344
    # two examples of 3 and 5 real tokens: 6*344*(3+5) + 12*2*4*(9+25) = 16512 + 3264
    assert arch.train_flops([3, 5]) == 19776
    # forward: 2*344*8 + 4*2*4*34 = 5504 + 1088
    assert arch.forward_flops([3, 5]) == 6592
    # padded to width 5: two rows of 5 tokens
    record = flops.BatchRecord(rows=2, real_tokens=8, width=5, flops=arch.train_flops([3, 5]))
    assert arch.padded_train_flops([record]) == arch.train_flops([5, 5]) == 2 * (6 * 344 * 5 + 12 * 2 * 4 * 25)


def test_nonembedding_params_match_a_real_bert(tiny_model_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dir)
    cfg = model.config
    counted = sum(p.numel() for p in model.encoder.layer.parameters())
    assert flops.nonembedding_params(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == counted


def _fake_store(root: Path) -> Path:
    runs = [("single", 100.0, 60.0, 10.0), ("mtl", 300.0, 240.0, 30.0), ("finetune", 100.0, 50.0, None)]
    for k, (stage, wall, train, evals) in enumerate(runs):
        folder = root / "runs" / f"run{k}"
        folder.mkdir(parents=True)
        info = {"stage": stage, "wall_seconds": wall, "train_seconds": train}
        if evals is not None:
            info["eval_seconds"] = evals
            info["peak_rss_mb"] = 1000.0 + wall
        (folder / "metrics.json").write_text(json.dumps({"train": info}))
    (root / "runs" / "broken").mkdir()
    (root / "runs" / "broken" / "metrics.json").write_text("{not json")
    return root


def test_grid_view_arithmetic(tmp_path):
    grid = grid_view(_fake_store(tmp_path), grid_wall_seconds=250.0)
    assert grid["runs"] == 3 and grid["unreadable"] == ["broken"] and grid["runs_without_eval_seconds"] == 1
    assert grid["wall_seconds"] == 500 and grid["train_seconds"] == 350 and grid["eval_seconds"] == 40
    assert grid["other_seconds"] == 110
    assert grid["share_outside_training_steps"] == pytest.approx(0.3)
    assert grid["outside_split"]["eval"] == pytest.approx(40 / 150, abs=1e-4)
    assert grid["mean_concurrent_runs"] == 2.0
    assert grid["max_run_peak_rss_mb"] == 1300.0 and grid["runs_with_peak_rss"] == 2
    assert grid["by_stage"]["mtl"] == {"runs": 1, "wall_seconds": 300.0, "train_seconds": 240.0, "eval_seconds": 30.0}


def _positive_numbers(item: dict, keys: set) -> None:
    for key in keys:
        value = item[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert value > 0 or key == "pad_fraction" and value >= 0, (key, value)


class FakeClock:
    """A clock that moves only when ``advance`` is called: a timed call lasts exactly what the test says."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_shape_is_timed_by_its_best_repeat_not_its_median(monkeypatch):
    import torch

    clock = FakeClock()
    # one warm-up call (10 us, must not count), then five timed repeats: best 1 us, median 3 us
    us = 1e-6
    durations = iter([10 * us, 4 * us, 1 * us, 3 * us, 3 * us, 5 * us])
    monkeypatch.setattr(machine, "sync", lambda device: clock.advance(next(durations)))
    shape = machine.MatmulShape("square 64", 64, 64, 64)
    row = machine.time_matmul(shape, "fp32", torch.device("cpu"), budget_s=0.0, min_repeats=5, warmup=1,
                                  timer=clock)
    assert row["repeats"] == 5
    assert row["best_seconds"] == pytest.approx(us) and row["median_seconds"] == pytest.approx(3 * us)
    assert row["worst_seconds"] == pytest.approx(5 * us)  # the warm-up's 10 us was not timed
    assert row["gflops"] == pytest.approx(2 * 64 ** 3 / us / 1e9, abs=0.01)  # 524.29, from the best repeat
    assert row["median_gflops"] == pytest.approx(2 * 64 ** 3 / (3 * us) / 1e9, abs=0.01)


def test_repeats_run_until_the_budget_has_passed_and_at_least_the_minimum_ran():
    clock = FakeClock()
    assert len(machine.time_repeats(lambda: clock.advance(1.0), budget_s=0.0, min_repeats=3, warmup=2,
                                        timer=clock)) == 3
    # a 7.5 s budget of 1 s calls: repeats start while under 7.5 s have passed, so 8 run
    times = machine.time_repeats(lambda: clock.advance(1.0), budget_s=7.5, min_repeats=3, warmup=0, timer=clock)
    assert times == [1.0] * 8
    assert len(machine.time_repeats(lambda: clock.advance(1.0), budget_s=1e9, min_repeats=1, warmup=0,
                                        timer=clock, max_repeats=20)) == 20


def test_the_peak_of_a_precision_is_its_fastest_shape():
    import torch

    arch = flops.Arch(layers=2, hidden=32, intermediate=128)
    shapes = machine.peak_shapes(64, arch, tokens=96)
    assert [(s.m, s.k, s.n) for s in shapes] == [(64, 64, 64), (128, 128, 128), (96, 32, 96), (96, 32, 32),
                                                 (96, 32, 128), (96, 128, 32)]
    speeds = {"fp32": [10.0, 12.0, 9.0, 8.0, 30.0, 11.0], "bf16": [40.0, 20.0, 20.0, 20.0, 20.0, 20.0]}
    calls = []

    def fake_time(shape, precision, device, **kwargs):
        calls.append((shape.name, precision, kwargs["budget_s"], kwargs["min_repeats"]))
        gflops = speeds[precision][shapes.index(shape)]
        return {"shape": shape.name, "m": shape.m, "k": shape.k, "n": shape.n, "gflops": gflops, "median_gflops": gflops / 2}

    peaks = machine.measure_peaks(shapes, ["fp32", "bf16"], torch.device("cpu"), budget_s=0.5, min_repeats=7,
                                      time_fn=fake_time)
    assert peaks["fp32"]["gflops"] == 30.0 and peaks["fp32"]["best_shape"] == "feed-forward in"
    assert peaks["bf16"]["gflops"] == 40.0 and peaks["bf16"]["best_shape"] == "square 64"
    assert [row["gflops"] for row in peaks["fp32"]["shapes"]] == speeds["fp32"]  # every shape is recorded
    assert len(calls) == 12 and all(c[2:] == (0.5, 7) for c in calls)
    # a shape whose operands would take more than a quarter of the free memory is skipped, and says why
    free = 4 * shapes[1].nbytes(4) - 1
    peaks = machine.measure_peaks(shapes, ["fp32"], torch.device("cpu"), time_fn=fake_time, free_bytes=free)
    assert [row["shape"] for row in peaks["fp32"]["skipped_shapes"]] == ["square 128"]
    assert "square 128" not in [row["shape"] for row in peaks["fp32"]["shapes"]]


def test_a_real_tiny_peak_measurement():
    import torch

    shapes = [machine.MatmulShape("square 64", 64, 64, 64), machine.MatmulShape("flat", 32, 64, 16)]
    peaks = machine.measure_peaks(shapes, ["fp32"], torch.device("cpu"), budget_s=0.0, min_repeats=3, warmup=1)
    rows = peaks["fp32"]["shapes"]
    assert [row["repeats"] for row in rows] == [3, 3]
    assert all(row["best_seconds"] <= row["median_seconds"] <= row["worst_seconds"] for row in rows)
    assert peaks["fp32"]["gflops"] == max(row["gflops"] for row in rows) > 0


def _stat(user: int, system: int, idle: int, steal: int = 0) -> str:
    return f"cpu  {user} 0 {system} {idle} 0 0 0 {steal} 0 0\ncpu0 {user} 0 {system} {idle} 0 0 0 {steal} 0 0\n"


def _check(stats, own, walls, threshold=0.1):
    stats, own, walls = iter(stats), iter(own), iter(walls)
    stream = io.StringIO()
    with machine.LoadCheck("the test", threshold_cores=threshold, read_stat=lambda: next(stats),
                               own_cpu=lambda: next(own), clock=lambda: next(walls), loadavg=lambda: [1.0, 1.0, 1.0],
                               ticks_per_second=100, stream=stream) as check:
        pass
    return check.result, stream.getvalue()


def test_the_load_check_flags_an_interval_where_other_processes_ran():
    # 2 s of wall time; all processes ran 6 s of CPU (400 + 200 ticks), this one 1 s: the others 2.5 cores
    result, printed = _check([_stat(1000, 500, 9000), _stat(1400, 700, 9100)], [10.0, 11.0], [100.0, 102.0])
    assert result["cpu_seconds_all"] == 6.0 and result["cpu_seconds_own"] == 1.0
    assert result["cpu_seconds_other"] == 5.0 and result["other_cores"] == 2.5 and result["quiet"] is False
    assert "not trustworthy" in printed and "2.50 cores during the test" in printed
    assert machine.load_warning_text([result]) in printed


def test_the_load_check_passes_a_quiet_interval_and_counts_steal():
    # this process ran 1.9 of the 2 CPU seconds: the others 0.05 cores, under the 0.1 threshold
    result, printed = _check([_stat(1000, 500, 9000), _stat(1150, 550, 9100)], [10.0, 11.9], [100.0, 102.0])
    assert result["other_cores"] == 0.05 and result["quiet"] is True and printed == ""
    assert machine.load_warning_text([result]) is None
    # the same interval with 0.4 s stolen by the hypervisor is not quiet
    result, printed = _check([_stat(1000, 500, 9000, 10), _stat(1150, 550, 9100, 50)], [10.0, 11.9], [100.0, 102.0])
    assert result["steal_seconds"] == 0.4 and result["other_cores"] == 0.25 and result["quiet"] is False
    assert "not trustworthy" in printed


def test_the_load_check_says_when_it_cannot_tell():
    def unreadable():
        raise OSError("no /proc/stat")

    stream = io.StringIO()
    with machine.LoadCheck("x", read_stat=unreadable, stream=stream) as check:
        pass
    assert check.result["quiet"] is None and "not checked" in check.result["how"] and stream.getvalue() == ""
    if Path("/proc/stat").is_file():  # the real file parses (Linux)
        used, steal = machine.cpu_seconds_of_stat(Path("/proc/stat").read_text(), 100)
        assert used > 0 and steal >= 0


def _percentages(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"(\d[\d,]*\.\d+)%", text)]


def _timed(peak):
    """Three steps of 1 s of a BERT-base-sized encoder, rows of 40 and 50 real tokens padded to 64 (~60 GFLOP/s)."""
    arch = flops.Arch(layers=12, hidden=768, intermediate=3072)
    clock = records.StepClock(device="cpu", skip=1, total=3, ends=[1.0, 2.0, 3.0])
    batches = [flops.BatchRecord(2, 90, 64, arch.train_flops([40, 50])) for _ in range(3)]
    return records.timed_summary(clock, batches, arch, peak), arch, batches


def test_a_utilisation_above_100_percent_is_refused_not_printed():
    from rich.console import Console

    possible, arch, batches = _timed(peak=1000.0)
    assert 0 < possible["mfu"] <= possible["executed_util"] <= 1 and "utilisation_error" not in possible
    executed = possible["executed_gflops_per_s"]
    impossible, _, _ = _timed(peak=executed * 0.96)  # executed 104% of the peak, MFU itself below 100%
    assert possible["model_gflops_per_s"] / (executed * 0.96) < 1
    assert impossible["mfu"] is None and impossible["executed_util"] is None
    assert "peak is too low" in impossible["utilisation_error"]
    evaluated = variants._eval_summary("(c) eval", "fp32", batches, 1.0, arch, peak=1e-9)
    assert evaluated["mfu"] is None and evaluated["executed_util"] is None and evaluated["utilisation_error"]

    possible.update(label="(c) possible", precision="fp32", peak_memory_mb=1.0)
    impossible.update(label="(c) impossible", precision="fp32", peak_memory_mb=1.0)
    report = {"meta": {"time": "t", "host": "h", "cpu": "c", "device": "cpu", "torch_threads": 1, "bf16_native": False},
              "workload": {"task": "t", "steps": 3, "batch_size": 2, "max_length": 4, "skip_steps": 1},
              "train": {"ok": possible, "bad": impossible}, "eval": {"bad": evaluated}}
    report["meta"]["peak_too_low"] = peak_errors(report)
    assert [e["rows"] for e in report["meta"]["peak_too_low"]] == [["train: (c) impossible", "eval: (c) eval"]]
    console = Console(file=io.StringIO(), width=250)
    render(report, console)
    text = console.file.getvalue()
    assert text.count(UTIL_REFUSED) == 4  # MFU and exec util of the two refused rows
    assert max(_percentages(text)) <= 100.0
    assert f"{100 * possible['mfu']:.1f}%" in text  # the possible row still shows its number
    warnings = [line for line in text.splitlines() if "measured matmul peak is wrong" in line]
    assert len(warnings) == 1


def test_an_older_report_with_a_stored_utilisation_above_100_percent_is_not_printed_as_a_number():
    from rich.console import Console

    row = {"label": "(c) old", "precision": "fp32", "examples": 8, "examples_per_s": 1.0, "real_tokens_per_s": 1.0,
           "pad_fraction": 0.0, "mfu": 0.969, "executed_util": 1.013, "peak_gflops": 212.2}
    report = {"meta": {"time": "t", "host": "h", "cpu": "c", "device": "cpu", "torch_threads": 1, "bf16_native": False},
              "eval": {"old": row}}
    console = Console(file=io.StringIO(), width=250)
    render(report, console)
    text = console.file.getvalue()
    assert text.count(UTIL_REFUSED) == 2 and "101.3%" not in text and "96.9%" not in text
    assert "fp32 peak 212.2 GFLOP/s, but 1 row(s) executed up to 215.0" in text


def test_a_refused_utilisation_is_null_in_the_json(tmp_path):
    impossible, _, _ = _timed(peak=1e-9)
    out = tmp_path / "r.json"
    assert write_report({"train": {"bad": impossible}}, str(out), "x", lambda r: None) == 0
    stored = json.loads(out.read_text())["train"]["bad"]
    assert stored["mfu"] is None and stored["executed_util"] is None and stored["utilisation_error"]


def test_a_run_against_a_too_low_peak_refuses_its_utilisation(tiny_model_dir, tiny_data_dir, tmp_path, capsys,
                                                              monkeypatch):
    def slow_peak(shape, precision, device, **kwargs):  # a peak far below anything the encoder runs at
        return {"shape": shape.name, "m": shape.m, "k": shape.k, "n": shape.n, "gflops": 1e-6, "median_gflops": 1e-6}

    monkeypatch.setattr(machine, "time_matmul", slow_peak)
    out = tmp_path / "bench.json"
    assert bench_train.main(["--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--parts", "peak,eval",
                             "--steps", "2", "--batch-size", "4", "--max-length", "32", "--eval-examples", "8",
                             "--eval-batch-size", "8", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["eval"] and all(item["mfu"] is None and item["executed_util"] is None and
                                  "peak is too low" in item["utilisation_error"] for item in report["eval"].values())
    assert report["meta"]["peak_too_low"][0]["peak_gflops"] == 1e-6
    printed = capsys.readouterr().out
    assert UTIL_REFUSED in printed and "measured matmul peak is wrong" in printed
    assert max(_percentages(printed), default=0.0) <= 100.0


def test_tiny_end_to_end_run_writes_every_number(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    store = _fake_store(tmp_path / "store")
    code = bench_train.main(["--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--steps", "2",
                             "--skip-steps", "1", "--batch-size", "4", "--max-length", "32", "--eval-examples", "8",
                             "--eval-batch-size", "8", "--matmul-size", "64", "--matmul-repeats", "2",
                             "--peak-seconds", "0", "--profile-warm-steps", "1", "--grid-results", str(store),
                             "--in-process", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"meta", "peak", "workload", "train", "eval", "profile", "grid"}
    assert all(row["process"] == "shared" and row["pid"] == report["meta"]["pid"] for row in report["train"].values())
    fp32 = report["peak"]["fp32"]
    assert fp32["gflops"] > 0 and fp32["gflops"] == max(row["gflops"] for row in fp32["shapes"])
    hidden = report["workload"]["arch"]["hidden"]
    assert [(r["m"], r["k"]) for r in fp32["shapes"]][:3] == [(64, 64), (128, 128), (4 * 32, hidden)]
    assert all(row["repeats"] >= 2 for row in fp32["shapes"])
    assert report["peak"]["load"]["what"] == "the peak measurement" and "quiet" in report["peak"]["load"]
    assert report["meta"]["quiet"] in (True, False, None) and isinstance(report["meta"]["peak_too_low"], list)
    assert report["workload"]["hf_tokenisation_matches"] is True
    assert list(report["train"]) == list(bench_train.TRAIN_VARIANTS)
    for name, item in report["train"].items():
        assert TRAIN_KEYS <= set(item), name
        _positive_numbers(item, TRAIN_KEYS)
        assert item["timed_steps"] == 1 and item["examples"] == 4
        assert item["load"]["what"] == f"training {name}"
    assert report["train"]["hf_maxlen_fp32"]["real_tokens_per_s_vs_a"] == 1.0
    assert report["train"]["hf_maxlen_fp32"]["padded_tokens"] == 4 * 32  # padding="max_length"
    assert report["train"]["transfer_fp32_grouped"]["precision"] == "fp32"
    impls = {name: item.get("encoder_impl") for name, item in report["train"].items() if name.startswith("transfer")}
    assert impls == {"transfer_fp32_ungrouped": "hf", "transfer_fp32_grouped": "hf",
                     "transfer_bf16_hf_forward": "hf", "transfer_lean_autocast": "transfer", "transfer": "transfer"}
    if report["train"]["transfer"]["precision"] == "bf16":  # the last two rows differ only in how bf16 is computed
        assert report["train"]["transfer_lean_autocast"]["bf16_compute"] == "autocast"
        assert report["train"]["transfer"]["bf16_compute"] == "native"
        assert report["eval"]["transfer_autocast"]["bf16_compute"] == "autocast"
    assert "transfer forward" in report["eval"]["transfer"]["label"]
    for name, item in report["eval"].items():
        assert EVAL_KEYS <= set(item), name
        _positive_numbers(item, EVAL_KEYS)
        assert item["examples"] == 8
    ops = report["profile"]["top_ops"]
    assert ops and all(op["self_cpu_ms"] >= 0 for op in ops) and report["profile"]["step"] == 2
    assert report["grid"]["runs"] == 3
    assert "all numbers written to" in capsys.readouterr().out


def test_each_training_variant_runs_in_a_fresh_process_by_default(tiny_model_dir, tiny_data_dir, tmp_path):
    """No row inherits the heap or kernel caches of the rows before it: each is measured by its own interpreter,
    against the peak the parent measured."""
    out = tmp_path / "bench.json"
    assert bench_train.main(["--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--steps", "2",
                             "--skip-steps", "1", "--batch-size", "4", "--max-length", "32", "--matmul-size", "64",
                             "--matmul-repeats", "2", "--peak-seconds", "0", "--parts", "peak,train",
                             "--variants", "transfer_fp32_grouped,transfer", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["train"]
    assert list(rows) == ["transfer_fp32_grouped", "transfer"]
    assert all(row["process"] == "fresh" for row in rows.values())
    pids = {row["pid"] for row in rows.values()}
    assert len(pids) == 2 and report["meta"]["pid"] not in pids
    for row in rows.values():  # the parent's peak is the child's denominator
        assert row["peak_gflops"] == report["peak"][row["precision"]]["gflops"]
        assert row["load"]["what"].startswith("training ") and row["timed_steps"] == 1
    assert rows["transfer"]["real_tokens_per_s_vs_a"] is None  # no (a) row to divide by


def test_a_failing_fresh_variant_process_says_which_variant_and_why(monkeypatch, tmp_path):
    import argparse

    args = argparse.Namespace(argv=["--steps", "1"])  # the child refuses --steps 1
    with pytest.raises(RuntimeError, match="training variant transfer failed in its own process: .*--steps"):
        bench_train.run_in_fresh_process("transfer", args, {"fp32": 1.0})


def test_a_high_load_average_at_the_start_is_a_note_when_every_interval_was_quiet():
    """The 1-minute load average still counts a run that ended just before; the interval checks decide."""
    from benchlib.report import busy_warning

    meta = {"device": "cpu", "usable_cores": 2, "load_average_start": [1.87, 1.8, 1.7]}
    assert "not reliable" in busy_warning(meta, None) and "not reliable" in busy_warning(meta, False)
    note = busy_warning(meta, True)
    assert "not reliable" not in note and "every measured interval was quiet" in note
    assert busy_warning({**meta, "load_average_start": [0.4, 1.0, 1.0]}, None) is None
    from rich.console import Console

    console = Console(file=io.StringIO(), width=250)
    render({"meta": {"time": "t", "host": "h", "cpu": "c", "device": "cpu", "torch_threads": 1, "bf16_native": False,
                     "busy": note, "quiet": True}}, console)
    assert "note:" in console.file.getvalue() and "warning:" not in console.file.getvalue()


def test_core_split_aggregation_and_config_parsing():
    assert bench_threads.parse_config("2x1") == (2, 1)
    with pytest.raises(SystemExit):
        bench_threads.parse_config("two")

    def worker(ends, examples, tokens):
        return {"threads": 1, "precision": "bf16", "peak_memory_mb": 10.0, "ends": ends,
                "summary": {"skipped_steps": 1, "examples_per_s": examples / (ends[-1] - ends[0]),
                            "real_tokens_per_s": tokens / (ends[-1] - ends[0]), "examples": examples, "real_tokens": tokens}}

    agg = bench_threads.aggregate([worker([0.0, 1.0, 2.0], 64, 640), worker([0.5, 1.5, 2.5], 64, 640)])
    assert agg["aggregate_examples_per_s"] == 64.0  # 32 + 32
    assert agg["makespan_seconds"] == 2.5 and agg["makespan_examples_per_s"] == pytest.approx(128 / 2.5)
    assert agg["overlap_fraction"] == pytest.approx(1.5 / 2.5)


def test_core_split_worker_in_process(tiny_model_dir, tiny_data_dir, tmp_path):
    import torch

    threads = torch.get_num_threads()
    args = bench_threads.build_parser().parse_args(
        ["--worker", "--threads", "1", "--barrier", str(tmp_path / "barrier"), "--parties", "1", "--worker-out",
         str(tmp_path / "w.json"), "--steps", "2", "--skip-steps", "1", "--batch-size", "4", "--max-length", "32",
         "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--precision", "fp32"])
    try:
        assert bench_threads.worker(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = json.loads((tmp_path / "w.json").read_text())
    assert out["threads"] == 1 and len(out["ends"]) == 2 and out["summary"]["examples_per_s"] > 0


def test_core_split_checks_the_load_of_each_configuration(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "threads.json"
    assert bench_threads.main(["--configs", "1x1", "--steps", "2", "--skip-steps", "1", "--batch-size", "4",
                               "--max-length", "32", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir),
                               "--precision", "fp32", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    load = report["configs"]["1x1"]["load"]
    assert load["what"] == "core split 1x1" and load["seconds"] > 0
    # the worker's CPU time is this process's own (its child), not another process's: it keeps one core busy
    assert load["cpu_seconds_own"] >= 0.5 * load["seconds"]
    assert report["meta"]["quiet"] == load["quiet"] and "core split" in capsys.readouterr().out


def test_score_equivalence_runs_both_paths_and_reports_the_seed_aware_comparison(tmp_path, tiny_data_dir,
                                                                                 tiny_model_dir):
    score_equivalence = _load("score_equivalence")
    out = tmp_path / "report.json"
    argv = ["--task", "chemprot", "--seeds", "1", "2", "--profile", "test", "--stores", str(tmp_path / "stores"),
            "--data-dir", str(tiny_data_dir), "--model", str(tiny_model_dir), "--n-boot", "100", "--out", str(out)]
    assert score_equivalence.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["seeds"] == [1, 2] and report["k"] == 2 and len(report["seed_deltas"]) == 2
    assert report["verdict"] in ("equivalent", "different", "inconclusive")
    reference = json.loads(next((tmp_path / "stores" / "reference" / "runs").glob("*/spec.json")).read_text())
    assert (reference["profile"]["precision"], reference["profile"]["encoder_impl"],
            reference["profile"]["group_by_length"]) == ("fp32", "hf", False)
    assert report["precision"] == {"fast": ["fp32"], "reference": ["fp32"]}  # the test profile trains in fp32
    assert score_equivalence.main([*argv, "--no-run"]) == 0  # compares what is stored, runs nothing
    assert "ablations" in report and report["ablations"] == {}
    assert score_equivalence.main([*argv, "--ablate", "ungrouped"]) == 0  # runs only the ablation's store
    ablation = json.loads(out.read_text())["ablations"]["ungrouped"]
    spec = json.loads(next((tmp_path / "stores" / "ungrouped" / "runs").glob("*/spec.json")).read_text())
    assert ablation["overrides"] == ["group_by_length=false"] and spec["profile"]["group_by_length"] is False
    assert spec["profile"]["encoder_impl"] != "hf"  # one piece of the reference back, not all of them
    assert ablation["vs_reference"]["k"] == ablation["vs_fast"]["k"] == 2

    # a converged profile's check: the fast runs taken from a store, no reference, --set on every path run here
    out_2 = tmp_path / "report-2.json"
    argv_2 = [*argv[:argv.index("--stores")], "--stores", str(tmp_path / "stores-2"), *argv[argv.index("--data-dir"):-2],
              "--out", str(out_2), "--fast-store", str(tmp_path / "stores" / "fast"), "--no-reference",
              "--ablate", "ungrouped", "--set", "max_grad_norm=0.5"]
    assert score_equivalence.main(argv_2) == 0
    report_2 = json.loads(out_2.read_text())
    assert report_2["a"] == f"fast path as stored in {(tmp_path / 'stores' / 'fast').as_posix()}"
    assert "verdict" not in report_2 and "b" not in report_2 and sorted(report_2["wall_seconds"]) == ["fast", "ungrouped"]
    assert sorted(p.name for p in (tmp_path / "stores-2").iterdir()) == ["ungrouped"]  # fast and reference not run
    ungrouped = report_2["ablations"]["ungrouped"]
    assert sorted(ungrouped) == ["overrides", "vs_fast"] and ungrouped["vs_fast"]["k"] == 2
    assert ungrouped["overrides"] == ["max_grad_norm=0.5", "group_by_length=false"]
    dev = report_2["dev"]  # each path's selected-epoch dev score by seed, and each path minus the fast path
    assert sorted(dev) == ["fast", "ungrouped"] and "minus_fast" not in dev["fast"]
    assert dev["fast"]["by_seed"] == {str(s): report["dev"]["fast"]["by_seed"][str(s)] for s in (1, 2)}
    shift = [dev["ungrouped"]["by_seed"][s] - dev["fast"]["by_seed"][s] for s in ("1", "2")]
    assert dev["ungrouped"]["minus_fast"]["delta"] == pytest.approx(sum(shift) / 2)
    assert dev["ungrouped"]["minus_fast"]["ci_low"] <= dev["ungrouped"]["minus_fast"]["delta"]
    spec = json.loads(next((tmp_path / "stores-2" / "ungrouped" / "runs").glob("*/spec.json")).read_text())
    assert (spec["profile"]["max_grad_norm"], spec["profile"]["group_by_length"]) == (0.5, False)
    with pytest.raises(SystemExit, match="seed.*3"):  # seeds the fast store lacks are named, not left out
        score_equivalence.main([*argv_2, "--seeds", "1", "2", "3", "--no-run"])


bench_compile = _load("bench_compile")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_compile_benchmark_times_the_lean_layer_arithmetic_on_the_same_masks(tiny_model_dir, dtype):
    """Its layer function, run eagerly, must compute what FastBertEncoder does, mask for mask, or the timing
    compares two different functions."""
    import torch
    from transformers import AutoModel

    from transfer.training.fast_bert import FastBertEncoder
    from transfer.training.masks import MaskSource

    compute = getattr(torch, dtype)
    encoder = AutoModel.from_pretrained(tiny_model_dir).train()
    ids, mask = bench_compile.fixed_batches(3, [9], encoder.config.vocab_size)[9]
    outputs, grads = [], []
    for forward in (FastBertEncoder(encoder, MaskSource(4), compute),
                    bench_compile.compiled_encoder(encoder, MaskSource(4), compute, bench_compile.layer_math)):
        for cls_only in (False, True):
            out = forward(ids, mask, cls_only=cls_only)
            out.float().square().mean().backward()
            outputs.append(out.detach())
            grads.append([p.grad.clone() for p in encoder.parameters() if p.grad is not None])
            encoder.zero_grad(set_to_none=True)
    for eager, bench in ((0, 2), (1, 3)):
        torch.testing.assert_close(outputs[bench], outputs[eager], rtol=0, atol=0)
        for g_bench, g_eager in zip(grads[bench], grads[eager]):
            torch.testing.assert_close(g_bench, g_eager, rtol=0, atol=0)
    assert not torch.equal(outputs[0][:, :1], outputs[1])  # different masks per call: the draws advance


def test_the_compile_benchmark_runs_end_to_end_on_the_eager_variant(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "compile.json"
    assert bench_compile.main(["--model", str(tiny_model_dir), "--variants", "eager", "--lengths", "8", "12",
                               "--repeats", "2", "--batch-size", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    eager = report["variants"]["eager"]
    assert eager["steps"] == 4 and eager["speedup"] == 1.0 and eager["max_abs_diff_vs_eager"] == 0.0
    assert eager["best_step_seconds"] <= eager["median_step_seconds"]
    assert "eager" in capsys.readouterr().out


bench_step = _load("bench_step")


def test_each_step_ablation_takes_out_the_piece_it_names(tiny_model_dir):
    import torch

    from transfer.data.tasks import load_task_table

    task = load_task_table().task(bench_step.TASK)
    batch = bench_step.make_batches(3, [9], 30522, task.num_labels)[9]

    def twice(name):
        model, _ = bench_step.build_variant(name, str(tiny_model_dir), task, native=False)
        # with gradients, as the step runs (the CPU's explicit attention, whose masks come from the source)
        return tuple(model(bench_step.TASK, batch["input_ids"], batch["attention_mask"]).detach() for _ in range(2))

    full = twice("full")
    assert not torch.equal(*full)  # fresh dropout masks every forward
    no_dropout, fixed = twice("no_dropout"), twice("fixed_masks")
    assert torch.equal(*no_dropout) and torch.equal(*fixed)  # no masks, or the same masks again
    assert not torch.equal(no_dropout[0], fixed[0])  # fixed masks still drop
    model, optimizer = bench_step.build_variant("no_activation", str(tiny_model_dir), task, native=False)
    assert model.fast.activation(torch.tensor([-1.0, 2.0])).tolist() == [-1.0, 2.0]
    model, optimizer = bench_step.build_variant("frozen_word_embeddings", str(tiny_model_dir), task, native=False)
    parts = bench_step.timed_step(model, optimizer, batch)
    assert len(parts) == len(bench_step.PARTS) and all(p > 0 for p in parts)
    words = model.encoder.embeddings.word_embeddings.weight
    assert words.grad is None and not any(words is p for group in optimizer.param_groups for p in group["params"])


def test_the_step_ablation_runs_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "step.json"
    assert bench_step.main(["--model", str(tiny_model_dir), "--lengths", "8", "--repeats", "2", "--warmup", "1",
                            "--batch-size", "3", "--onednn-steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["variants"]) == list(bench_step.VARIANTS)
    for item in report["variants"].values():
        assert item["steps"] == 2 and item["step_ms"] > 0 and all(item[f"{p}_ms"] > 0 for p in bench_step.PARTS)
    assert report["variants"]["full"]["saved_ms"] == 0.0
    inside = report["onednn"]
    assert inside["steps"] == 2 and list(inside["parts"]) == list(bench_step.PARTS)
    assert (inside["matmul_gflop"] > 0) == ("matmul" in inside["parts"]["forward"]["by_kind_ms"])
    for part in inside["parts"].values():  # kernels run inside their part: never longer than it
        assert part["wall_ms"] > 0 and 0 <= part["onednn_ms"] <= part["wall_ms"]
        assert sum(part["by_kind_ms"].values()) == pytest.approx(part["onednn_ms"], abs=0.05)
    printed = capsys.readouterr().out
    assert "full minus this" in printed and "inside oneDNN kernels" in printed


_ONEDNN_LOG = """onednn_verbose,v1,info,oneDNN v3.7.1 (commit 8d263e6)
onednn_verbose,v1,primitive,create:cache_miss,cpu,matmul,brg_matmul:avx512_core_bf16,undef,src:bf16,,32x384:384x384,1.25
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_bf16,undef,src:bf16::blocked:ab::f0,,2592x384:384x1536,3.5
onednn_verbose,v1,primitive,exec,cpu,eltwise,jit:avx512_core_bf16,undef,data:bf16,,32x81x1536,0.5
onednn_verbose,exec,cpu,matmul,gemm:jit,undef,src_f32::blocked:ab:f0,,8x8:8x8,0.25
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul,undef,src:bf16,,2x2:2x2,not-a-number
a line of something else, exec, 9
"""


def test_the_onednn_log_counts_executions_only_by_kind():
    from benchlib.onednn import parse_exec_lines

    parsed = parse_exec_lines(_ONEDNN_LOG)
    flops = 2 * 2592 * 384 * 1536 + 2 * 8 * 8 * 8
    assert parsed == {"ms": 4.25, "count": 3, "by_kind": {"matmul": 3.75, "eltwise": 0.5}, "matmul_flops": flops}


def test_a_matmuls_flops_come_from_its_shapes():
    from benchlib.onednn import matmul_flops

    assert matmul_flops("2592x384:384x1536") == 2 * 2592 * 384 * 1536
    assert matmul_flops("384x81x32:384x32x81") == 2 * 384 * 81 * 32 * 81  # batched: attention's scores
    assert matmul_flops("384x81x32:1x32x81") == 2 * 384 * 81 * 32 * 81  # a broadcast batch
    assert matmul_flops("8x4:5x8") is None and matmul_flops("32x81x1536") is None and matmul_flops("") is None


def test_the_onednn_log_sees_the_kernels_a_bf16_matmul_runs(capfd):
    import torch

    from benchlib.onednn import OneDnnLog

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        pytest.skip("this CPU multiplies bf16 without oneDNN")
    a, b = torch.ones(256, 64, dtype=torch.bfloat16), torch.ones(64, 64, dtype=torch.bfloat16)
    a @ b  # a first call outside the log: the log below times executions, not creation
    print("before", flush=True)
    with OneDnnLog() as log:
        for _ in range(3):
            a @ b
    print("after", flush=True)
    assert log.result["count"] == 3 and set(log.result["by_kind"]) == {"matmul"} and log.result["ms"] > 0
    seen = capfd.readouterr().out
    assert "before" in seen and "after" in seen and "onednn_verbose" not in seen  # the log went to its file only
    with OneDnnLog() as log:
        a + a  # an elementwise add torch computes itself
    assert log.result["count"] == 0
