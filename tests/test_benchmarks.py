"""Smoke tests of benchmarks/: the FLOP formula by hand, one tiny end-to-end run, the grid and core-split arithmetic."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    arch = bench_train.Arch(layers=2, hidden=4, intermediate=8)
    assert bench_train.layer_params(4, 8) == 172
    assert arch.n_params == 344
    # two examples of 3 and 5 real tokens: 6*344*(3+5) + 12*2*4*(9+25) = 16512 + 3264
    assert arch.train_flops([3, 5]) == 19776
    # forward: 2*344*8 + 4*2*4*34 = 5504 + 1088
    assert arch.forward_flops([3, 5]) == 6592
    # padded to width 5: two rows of 5 tokens
    record = bench_train.BatchRecord(rows=2, real_tokens=8, width=5, flops=arch.train_flops([3, 5]))
    assert arch.padded_train_flops([record]) == arch.train_flops([5, 5]) == 2 * (6 * 344 * 5 + 12 * 2 * 4 * 25)


def test_nonembedding_params_match_a_real_bert(tiny_model_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dir)
    cfg = model.config
    counted = sum(p.numel() for p in model.encoder.layer.parameters())
    assert bench_train.nonembedding_params(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == counted


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
    grid = bench_train.grid_view(_fake_store(tmp_path), grid_wall_seconds=250.0)
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


def test_tiny_end_to_end_run_writes_every_number(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    store = _fake_store(tmp_path / "store")
    code = bench_train.main(["--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--steps", "2",
                             "--skip-steps", "1", "--batch-size", "4", "--max-length", "32", "--eval-examples", "8",
                             "--eval-batch-size", "8", "--matmul-size", "64", "--matmul-repeats", "2",
                             "--profile-warm-steps", "1", "--grid-results", str(store), "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"meta", "peak", "workload", "train", "eval", "profile", "grid"}
    assert report["peak"]["fp32"]["gflops"] > 0
    assert report["workload"]["hf_tokenisation_matches"] is True
    assert list(report["train"]) == list(bench_train.TRAIN_VARIANTS)
    for name, item in report["train"].items():
        assert TRAIN_KEYS <= set(item), name
        _positive_numbers(item, TRAIN_KEYS)
        assert item["timed_steps"] == 1 and item["examples"] == 4
    assert report["train"]["hf_maxlen_fp32"]["real_tokens_per_s_vs_a"] == 1.0
    assert report["train"]["hf_maxlen_fp32"]["padded_tokens"] == 4 * 32  # padding="max_length"
    assert report["train"]["transfer_fp32_grouped"]["precision"] == "fp32"
    impls = {name: item.get("encoder_impl") for name, item in report["train"].items() if name.startswith("transfer")}
    assert impls == {"transfer_fp32_ungrouped": "hf", "transfer_fp32_grouped": "hf",
                     "transfer_bf16_hf_forward": "hf", "transfer": "transfer"}
    assert "transfer forward" in report["eval"]["transfer"]["label"]
    for name, item in report["eval"].items():
        assert EVAL_KEYS <= set(item), name
        _positive_numbers(item, EVAL_KEYS)
        assert item["examples"] == 8
    ops = report["profile"]["top_ops"]
    assert ops and all(op["self_cpu_ms"] >= 0 for op in ops) and report["profile"]["step"] == 2
    assert report["grid"]["runs"] == 3
    assert "all numbers written to" in capsys.readouterr().out


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
