"""Where runs execute on this machine: one slot per GPU (or several), else shares of the CPU cores.

Found without initialising CUDA, so nothing here breaks a later fork or loads torch.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CPU_RUN_MEMORY = 5 << 30  # bytes per concurrent CPU run for --jobs-per-device auto (quick-profile runs: up to 4.0 GB)


@dataclass(frozen=True)
class Slot:
    """One place a run can execute: a GPU (CUDA_VISIBLE_DEVICES value) or a share of the CPU cores."""

    name: str
    gpu: str | None
    threads: int

    @property
    def kind(self) -> str:
        return "cpu" if self.gpu is None else "gpu"

    @property
    def device(self) -> str:
        return "cpu" if self.gpu is None else "cuda"

    def env(self, base: dict | None = None) -> dict:
        """The worker's environment: one GPU (none on CPU slots) and the slot's thread count."""
        env = dict(os.environ if base is None else base)
        env["CUDA_VISIBLE_DEVICES"] = self.gpu or ""
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(self.threads)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU ids this process may use, found without initialising CUDA (so nothing breaks a later fork).

    ``CUDA_VISIBLE_DEVICES`` when set (empty: none), else the GPUs ``nvidia-smi -L`` lists, else none.
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def parse_devices(text: str) -> str | list[str]:
    """argparse type of ``--devices``: ``auto``, ``cpu`` or a comma-separated list of GPU ids."""
    text = text.strip()
    if text in ("auto", "cpu"):
        return text
    ids = [d.strip() for d in text.split(",")]
    if not all(ids):
        raise ValueError(f"--devices takes auto, cpu or GPU ids like 0,1; got {text!r}")
    return ids


def memory_bytes() -> int:
    """Memory this process may use: the cgroup limit where one is set, else the machine's RAM."""
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def auto_cpu_jobs(cores: int, memory: int) -> int:
    """CPU runs at once for ``--jobs-per-device auto``: one single-thread run per core, as memory allows.

    ``benchmarks/bench_threads.py`` measured 2 runs x 1 thread at 1.05x (AVX512-BF16) and 1.11x (AVX2 only) the
    training throughput of 1 run x 2 threads on 2-core machines, and single-thread runs also overlap one run's evaluation and start-up with
    another's training. Each run is given ``CPU_RUN_MEMORY``: the largest run of a quick biomedical grid peaked
    at 4.0 GB resident.
    """
    return max(1, min(cores, memory // CPU_RUN_MEMORY))


def device_slots(devices: str | list[str], jobs_per_device: int | None = None, cores: int | None = None,
                 memory: int | None = None) -> list[Slot]:
    """Slots for ``--devices`` (auto/cpu/ids); GPU slots interleave devices so runs spread over GPUs first.

    ``jobs_per_device`` None is ``auto``: one run per GPU, or on the CPU :func:`auto_cpu_jobs` runs.
    """
    if jobs_per_device is not None and jobs_per_device < 1:
        raise ValueError(f"--jobs-per-device must be at least 1, got {jobs_per_device}")
    gpus = visible_gpus() if devices == "auto" else ([] if devices == "cpu" else list(devices))
    cores = cores or usable_cores()
    if jobs_per_device is None:
        jobs_per_device = 1 if gpus else auto_cpu_jobs(cores, memory or memory_bytes())
    count = len(gpus) * jobs_per_device if gpus else jobs_per_device
    threads = max(1, cores // count)
    if not gpus:
        return [Slot("cpu" if count == 1 else f"cpu.{k}", None, threads) for k in range(count)]
    suffix = (lambda k: "") if jobs_per_device == 1 else (lambda k: f".{k}")
    return [Slot(f"gpu{gpu}{suffix(k)}", gpu, threads) for k in range(jobs_per_device) for gpu in gpus]
