"""Training and evaluation throughput: the Hugging Face ``Trainer`` against transfer's own loop.

    python benchmarks/bench_train.py --steps 100 --out benchmarks/results/quiet-epyc.json
    python benchmarks/bench_train.py --steps 10 --eval-examples 64          # a quick look
    python benchmarks/bench_train.py --parts grid --grid-results results    # only the grid view

Every training variant sees the same encoder, the same fixed sample of ``steps x batch`` training examples
(transfer's seed-0 sample), the same batch size, AdamW (lr, weight decay 0.01, clip 1.0, linear schedule with
10% warm-up) and the same number of steps:

* ``hf_maxlen_fp32``  (a) ``Trainer``, tokenizer ``padding="max_length"``, fp32, random sampler.
* ``hf_dynamic_best`` (b) ``Trainer`` at its best: ``DataCollatorWithPadding``, length-grouped sampler,
  ``bf16=True`` where the hardware runs bf16 natively, no data-loader workers on the CPU (they would compete
  with the compute threads for the same cores), two pinned-memory workers on CUDA. Both Trainer variants keep
  the Trainer's default AdamW implementation (``adamw_torch_fused`` with torch >= 2.8); transfer's loop uses
  ``torch.optim.AdamW`` as ``build_optimizer`` makes it (fused on CUDA only). The Trainer groups lengths within
  "megabatches" of ``min(steps // 4, 50)`` batches, transfer within windows of 50 batches, so (b) groups less
  on short runs: compare padding at ``--steps 200`` or more.
* ``transfer_fp32_ungrouped`` / ``transfer_fp32_grouped`` / ``transfer_bf16_hf_forward`` /
  ``transfer_lean_autocast`` / ``transfer`` (c) ``transfer.training.loop.train`` with fp32 and random batches,
  fp32 and length-grouped batches, then bf16 autocast on the Hugging Face forward, then the lean forward under
  autocast, and its default (``precision="auto"``, i.e. bf16 where native, computed natively by the lean forward;
  grouped batches): the ablation of what each piece buys.

Processes: each training variant runs in a fresh Python process of its own (the same arguments, that variant
alone, the parent's measured peak), so that no row inherits the heap, the oneDNN primitive cache or the warm
pages the rows before it left: in one process transfer's default, run after six other variants, measured 99-101
examples/s against 117 in a fresh process (README, Performance). ``--in-process`` runs every variant in this process instead, as the benchmark did before. The peak,
the evaluations and the profiled step run in this process either way.

Timers (all are wall clock, ``time.perf_counter``):

* **timed (steady state)**, the numbers in the main table: from the end of step ``skip`` to the end of the last
  step, so the first ``--skip-steps`` steps (allocator growth, first kernel selection) are left out. One
  interval covers everything a training iteration does: fetching and collating the next batch, forward,
  backward, gradient clipping, optimizer and scheduler step, zeroing gradients, and the loop's own bookkeeping.
  For the ``Trainer`` the step ends come from a ``TrainerCallback.on_step_end``; for transfer's loop from its
  ``Reporter.step`` hook, which the loop calls right after each step. On CUDA both synchronise the device at
  the two ends that bound the interval.
* **all steps**: transfer's own ``train_seconds`` (time inside the epoch loop, every step) and, for the
  ``Trainer``, first ``on_step_begin`` to last ``on_step_end``; shown for reference.

Tokens: the benchmark records every training batch actually used (rows, real tokens = attention-mask sum,
padded width); for the ``Trainer`` through a forward pre-hook on the model, for transfer's loop by wrapping
``transfer.training.loop.collate`` for the duration of the run (it only counts; the batch is unchanged).

Model FLOPs (the MFU numerator) of one training example with ``l`` real tokens, for a BERT encoder with ``L``
layers, hidden size ``H`` and feed-forward size ``I``::

    F_train(l) = 6 * N * l + 12 * L * H * l**2        F_forward(l) = 2 * N * l + 4 * L * H * l**2
    N = L * (4*H**2 + 2*H*I + 9*H + I)                 (non-embedding parameters, applied to every token)

``N`` counts the Q, K, V and output projections with biases (4H^2 + 4H), the two feed-forward matrices with
biases (2HI + I + H) and the two LayerNorms (4H) of each layer. A multiply-add is 2 FLOPs, so the forward
pass costs 2N per token and the backward pass twice that (6N in all). The attention term: per layer and
token, the scores QK^T (2*H*l) and the weighted sum AV (2*H*l) are 4*H*l forward, 12*H*l forward+backward.
Embeddings (table look-ups), the pooler and the classifier (once per sequence, < 2% of one token) are left
out. MFU = sum of F_train over the real tokens of the timed steps / timed seconds / measured matmul peak of
the variant's precision (bf16 peak for bf16 variants, fp32 peak for fp32). Padding positions are waste and
do not count; ``executed_util`` counts every padded position instead (what the hardware actually computed),
so ``executed_util - mfu`` is the part lost to padding and the rest of the gap to 1 is kernel efficiency.

The peak (the MFU denominator, part ``peak``) is measured per precision: fp32 (TF32 on CUDA, as training runs
it), bf16 where it runs natively, and fp16 on CUDA. Each precision is timed on several shapes: squares of
``--matmul-size`` and twice that (skipped where the operands would take over a quarter of the free memory), and
the encoder's own forward matmuls at one training batch at its widest (``batch x max_length`` rows; the fused
Q/K/V projection ``H x 3H``, the attention output ``H x H``, the feed-forward ``H x I`` and ``I x H``). Each
shape runs ``torch.mm(a, b, out=c)`` on preallocated operands with the benchmark's thread count: two untimed
calls, then timed repeats until ``--peak-seconds`` have passed and at least ``--matmul-repeats`` ran. A shape's
figure is its **best** repeat and a precision's peak is its **fastest shape**; every shape's best and median
are in the JSON. Why: a matmul is never faster than the hardware allows but is slower whenever another process
takes a core or the clock has not ramped up, so the median of a few repeats undercounts on a shared or
frequency-scaling CPU (one machine gave 153 GFLOP/s fp32 that way, 333 with the best of ten on a quiet
machine), and a single shape can miss the blocking the kernel library does best (on an AMX CPU a
4096 x 384 x 1536 bf16 matmul ran about 1.4x faster than the 2048 square).

Load check: around the peak measurement, each training variant and each evaluation, the benchmark reads the
CPU time every process used (``/proc/stat``) and its own (the process clock, children included); what other
processes used over the interval, in cores, is recorded as ``load`` (with the load averages before and after).
Above ``--quiet-cores`` (default 0.1 of one core) the interval is not quiet: a warning line says the numbers
are not trustworthy and the report's ``meta.quiet`` is false.

Impossible utilisation: the hardware cannot run faster than its peak, so an MFU or executed utilisation above
100% means the peak was measured too low. Such a row records ``mfu`` and ``executed_util`` as null with a
``utilisation_error`` (both are dropped: they share the wrong denominator), the tables print
``n/a (>100%: peak too low)``, and one warning line (``meta.peak_too_low``) says the measured peak is wrong.
Values are never clamped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib.grid_view import grid_view
from benchlib.machine import (PEAK_DTYPES, PEAK_MIN_REPEATS, PEAK_SECONDS, PEAK_WARMUP, QUIET_CORES, LoadCheck,
                              _loadavg, encoder_arch, free_memory_bytes, load_warning_text, machine_info,
                              measure_peaks, peak_precisions, peak_shapes)
from benchlib.report import busy_warning, peak_errors, render, write_report
from benchlib.variants import add_ratios, eval_hf, eval_transfer, hf_dataset, profile_step, run_trainer, run_transfer
from benchlib.workload import (DEFAULT_TASK, LEARNING_RATE, MAX_GRAD_NORM, SEED, WARMUP_RATIO, WEIGHT_DECAY,
                               load_workload, quiet_transformers)

PARTS = ("peak", "train", "eval", "profile", "grid")
TRAIN_VARIANTS = ("hf_maxlen_fp32", "hf_dynamic_best", "transfer_fp32_ungrouped", "transfer_fp32_grouped",
                  "transfer_bf16_hf_forward", "transfer_lean_autocast", "transfer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_train.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="training steps of every variant (one epoch of steps x batch examples)")
    parser.add_argument("--skip-steps", type=int, default=5, help="first steps of each variant run but not timed")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--max-length", type=int, default=128, help="max tokens per example (and (a)'s padded width)")
    parser.add_argument("--eval-examples", type=int, default=1024, help="dev examples in the inference comparison")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="transfer's evaluation batch size (its profile default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--model", default="minilm", help="encoder: 'minilm' (bundled all-MiniLM-L6-v2) or a local path")
    parser.add_argument("--task", default=DEFAULT_TASK, help="a single-label classification task of transfer's table")
    parser.add_argument("--data-dir", default=None, help="data directory (else $TRANSFER_DATA_DIR, else ./data)")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="n of the square n^3 peak matmul (2n^3 is timed too where memory allows)")
    parser.add_argument("--matmul-repeats", type=int, default=PEAK_MIN_REPEATS,
                        help="fewest timed matmuls per peak shape (the best is used)")
    parser.add_argument("--peak-seconds", type=float, default=PEAK_SECONDS,
                        help="time budget of each peak shape: repeat until it has passed")
    parser.add_argument("--quiet-cores", type=float, default=QUIET_CORES,
                        help="CPU other processes may use during a measurement (in cores) before it is flagged")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--variants", default=",".join(TRAIN_VARIANTS),
                        help=f"comma-separated subset of the training variants {','.join(TRAIN_VARIANTS)}")
    parser.add_argument("--profile-warm-steps", type=int, default=3, help="profile the step after this many")
    parser.add_argument("--grid-results", default=None, help="a results store (folder with runs/) to summarise")
    parser.add_argument("--grid-wall-seconds", type=float, default=None, help="wall-clock time of that whole grid, if known")
    parser.add_argument("--out", default=None, help="JSON file for all numbers (default: benchmarks/results/train-<time>.json)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every training variant in this process (default: each in a fresh process)")
    # a fresh variant process takes the parent's measured peaks (precision=GFLOP/s,...) instead of measuring again
    parser.add_argument("--given-peaks", default=None, help=argparse.SUPPRESS)
    return parser


def _split_list(text: str, known: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return items


def run_benchmark(args: argparse.Namespace) -> dict:
    """All parts asked for, in one process; returns the report dict."""
    import torch

    from transfer.training.device import pick_device, resolve_precision
    from transfer.training.host_memory import keep_freed_memory
    from transfer.training.kernel_cache import size_primitive_cache

    parts = _split_list(args.parts, PARTS, "part")
    variants = _split_list(args.variants, TRAIN_VARIANTS, "variant")
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (one untimed step, one timed)")
    if args.matmul_size < 1 or args.matmul_repeats < 1 or args.peak_seconds < 0 or args.quiet_cores < 0:
        raise SystemExit("--matmul-size and --matmul-repeats must be at least 1, --peak-seconds and --quiet-cores "
                         "at least 0")
    skip = min(max(args.skip_steps, 1), args.steps - 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_transformers()
    device = pick_device(args.device)
    if device.type == "cuda":  # transfer's loop turns TF32 on for the process; use it everywhere, peak included
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report: dict = {"meta": {**machine_info(device), "pid": os.getpid()}}
    # transfer's loop applies these on its first run and they last for the process: apply them before any variant,
    # so that every row runs under the same allocator whatever the order (TRANSFER_MALLOC=default: none of them)
    report["meta"]["host_allocator"] = keep_freed_memory()
    # likewise oneDNN's primitive cache, before the peak's first matmul (oneDNN reads its size once per process)
    report["meta"]["onednn_primitive_cache"] = size_primitive_cache()
    peaks: dict[str, float] = _given_peaks(args.given_peaks)
    loads: list[dict] = []

    def checked(what: str, fn):
        """``fn()`` under a load check; the check's record goes into the result (a dict) and ``loads``."""
        with LoadCheck(what, threshold_cores=args.quiet_cores) as check:
            result = fn()
        result["load"] = check.result
        loads.append(check.result)
        return result

    if "peak" in parts:
        print("measuring the matmul peak ...", file=sys.stderr, flush=True)
        shapes = peak_shapes(args.matmul_size, encoder_arch(args.model), args.batch_size * args.max_length)
        report["peak"] = checked("the peak measurement", lambda: measure_peaks(
            shapes, peak_precisions(device), device, budget_s=args.peak_seconds, min_repeats=args.matmul_repeats,
            free_bytes=free_memory_bytes(device)))
        report["peak"]["method"] = {
            "statistic": "best repeat of each shape, fastest shape of each precision",
            "budget_seconds_per_shape": args.peak_seconds, "min_repeats": args.matmul_repeats,
            "warmup_calls": PEAK_WARMUP, "torch_threads": torch.get_num_threads(), "call": "torch.mm(a, b, out=c)",
            "tf32": bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
            "encoder_shape_rows": args.batch_size * args.max_length,
        }
        peaks.update({k: v["gflops"] for k, v in report["peak"].items() if k in PEAK_DTYPES})
    if {"train", "eval", "profile"} & set(parts):
        workload = load_workload(model=args.model, task_name=args.task, data_dir=args.data_dir, batch_size=args.batch_size,
                                 max_length=args.max_length, steps=args.steps, skip=skip, eval_examples=args.eval_examples,
                                 device=device, eval_batch_size=args.eval_batch_size)
        hf_real = sum(sum(d["attention_mask"]) for d in hf_dataset(workload, False))
        report["workload"] = {
            "task": args.task, "model": workload.model_path, "steps": args.steps, "skip_steps": skip,
            "batch_size": args.batch_size, "max_length": args.max_length, "train_examples": workload.train_cap,
            "train_real_tokens": int(workload.train_lengths.sum()), "mean_length": round(float(workload.train_lengths.mean()), 2),
            "hf_tokenisation_matches": bool(hf_real == int(workload.train_lengths.sum())),
            "eval_examples": int(len(workload.dev_split.rows)), "learning_rate": LEARNING_RATE,
            "weight_decay": WEIGHT_DECAY, "warmup_ratio": WARMUP_RATIO, "max_grad_norm": MAX_GRAD_NORM, "seed": SEED,
            "arch": {"layers": workload.arch.layers, "hidden": workload.arch.hidden,
                     "intermediate": workload.arch.intermediate, "nonembedding_params": workload.arch.n_params},
            "flops": "train 6*N*l + 12*L*H*l^2, forward 2*N*l + 4*L*H*l^2 per example of l real tokens",
        }
    if "train" in parts:
        runners = {
            "hf_maxlen_fp32": lambda: run_trainer(workload, best=False, peaks=peaks),
            "hf_dynamic_best": lambda: run_trainer(workload, best=True, peaks=peaks),
            "transfer_fp32_ungrouped": lambda: run_transfer(workload, precision="fp32", grouped=False, peaks=peaks,
                                                            encoder_impl="hf"),
            "transfer_fp32_grouped": lambda: run_transfer(workload, precision="fp32", grouped=True, peaks=peaks,
                                                          encoder_impl="hf"),
            "transfer_bf16_hf_forward": lambda: run_transfer(workload, precision="auto", grouped=True, peaks=peaks,
                                                             encoder_impl="hf"),
            "transfer_lean_autocast": lambda: run_transfer(workload, precision="auto", grouped=True, peaks=peaks,
                                                           bf16_compute="autocast"),
            "transfer": lambda: run_transfer(workload, precision="auto", grouped=True, peaks=peaks),
        }
        report["train"] = {}
        for name in TRAIN_VARIANTS:
            if name in variants:
                print(f"training variant {name} ...", file=sys.stderr, flush=True)
                if args.in_process:
                    report["train"][name] = {**checked(f"training {name}", runners[name]), "process": "shared",
                                             "pid": os.getpid()}
                else:
                    report["train"][name] = {**run_in_fresh_process(name, args, peaks), "process": "fresh"}
                    loads.append(report["train"][name]["load"])  # measured there, counted here
        add_ratios(report["train"])
    if "eval" in parts:
        print("evaluation ...", file=sys.stderr, flush=True)
        report["eval"] = {"hf_maxlen_fp32": checked("evaluation hf_maxlen_fp32", lambda: eval_hf(workload, peaks)),
                          "transfer": checked("evaluation transfer", lambda: eval_transfer(workload, peaks))}
        if resolve_precision("auto", device) == "bf16":
            report["eval"]["transfer_autocast"] = checked(
                "evaluation transfer_autocast", lambda: eval_transfer(workload, peaks, bf16_compute="autocast"))
        if resolve_precision("auto", device) != "fp32":
            report["eval"]["transfer_fp32"] = checked("evaluation transfer_fp32",
                                                      lambda: eval_transfer(workload, peaks, precision="fp32"))
        base = report["eval"]["hf_maxlen_fp32"]["real_tokens_per_s"]
        for item in report["eval"].values():
            item["real_tokens_per_s_vs_a"] = round(item["real_tokens_per_s"] / base, 3)
            item["examples_per_s_vs_a"] = round(item["examples_per_s"] / report["eval"]["hf_maxlen_fp32"]["examples_per_s"], 3)
    if "profile" in parts:
        print("profiling one training step ...", file=sys.stderr, flush=True)
        report["profile"] = profile_step(workload, warm_steps=max(1, args.profile_warm_steps))
    if "grid" in parts and args.grid_results:
        report["grid"] = grid_view(args.grid_results, args.grid_wall_seconds)
    report["meta"]["load_average_end"] = _loadavg()
    quiet = [r["quiet"] for r in loads]
    report["meta"]["quiet"] = False if False in quiet else (True if quiet and all(quiet) else None)
    report["meta"]["busy"] = busy_warning(report["meta"], report["meta"]["quiet"])
    report["meta"]["not_quiet"] = load_warning_text(loads)
    report["meta"]["peak_too_low"] = peak_errors(report)
    report["meta"]["args"] = {key: value for key, value in vars(args).items() if key != "argv"}
    return report


def _given_peaks(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    return {name: float(value) for name, value in (item.split("=", 1) for item in text.split(","))}


def run_in_fresh_process(name: str, args: argparse.Namespace, peaks: dict[str, float]) -> dict:
    """One training variant's row, measured by a fresh interpreter running this file with the same arguments,
    ``--parts train --variants <name>`` and the peaks measured here (its own load check included)."""
    with tempfile.TemporaryDirectory(prefix="bench-variant-") as folder:
        out = Path(folder) / "variant.json"
        given = ",".join(f"{key}={value!r}" for key, value in peaks.items())
        argv = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--parts", "train", "--variants", name,
                "--in-process", "--out", str(out), *(["--given-peaks", given] if given else [])]
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
            raise RuntimeError(f"training variant {name} failed in its own process: {last}")
        return json.loads(out.read_text())["train"][name]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what a fresh variant process is started with (its own options appended, so they win)
    return write_report(run_benchmark(args), args.out, "train", render)


if __name__ == "__main__":
    raise SystemExit(main())
