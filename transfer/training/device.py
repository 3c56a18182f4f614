"""Where and in which precision a run computes: device choice, resolved precision, autocast, memory peaks.

``precision = "auto"`` resolves to bf16 where the hardware runs it natively and to fp32 (CPU) or fp16 (older
GPUs) elsewhere; the resolved value and the device class are recorded with each run (``transfer.training.provenance``).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX)."""
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_host_class(cpuinfo: str | None = None) -> str:
    """``<model name> (<best matmul instructions>)``, e.g. ``Intel(R) Xeon(R) Processor (amx_bf16)``: hosts with
    the same device class run at very different speeds (AMX against AVX512-BF16 against AVX2), which a store's
    reader needs to know when comparing wall times; the arithmetic is the device class's."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    isa = next((name for name in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if name in flags), "no avx2")
    return f"{model} ({isa})"


def device_class(device: torch.device) -> str:
    """``cuda:<device name>``, or ``cpu (bf16)`` / ``cpu (no bf16)``: what changes the arithmetic, not the unit."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return "cpu (bf16)" if cpu_supports_bf16() else "cpu (no bf16)"
    return device.type


def pick_device(device: str | None = None) -> torch.device:
    """``auto`` (or None): the visible GPU if any, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware runs it natively (Ampere+ GPUs, AVX512-BF16/AMX CPUs), else fp32."""
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str, native: bool = False):
    """``torch.autocast`` for ``precision``; none in fp32 or for a model that computes in bf16 itself (``native``)."""
    if precision == "fp32" or native:
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_memory(device: torch.device) -> dict:
    """The process's peak resident memory so far (MB), and on CUDA the peak allocated on the device."""
    import resource
    import sys

    per_mb = 2**20 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb, 1)}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak
