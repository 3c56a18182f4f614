"""What the machine can do and what it did during a measurement: device synchronisation, the matmul peak
(shapes, timed repeats, the fastest shape per precision), the load check (CPU time other processes used),
utilisation against the peak, peak memory of a block, and the machine's description for the report."""

from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import os
import platform
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib.flops import Arch


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
