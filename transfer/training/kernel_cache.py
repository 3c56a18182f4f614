"""oneDNN's primitive cache, sized for length-grouped batches on the CPU.

torch runs bf16 matmuls on the CPU through oneDNN, which builds (JIT-compiles) a primitive for every matmul shape
and keeps the last 1,024 it built. A length-grouped batch has a width of its own, and each width brings a few dozen
shapes (the forward and backward matmuls of every layer, attention's batched matmuls, evaluation's larger batch),
so a run that meets a hundred widths needs a few thousand primitives: with 1,024 kept, the widths evict each other
and oneDNN builds the same primitives again and again (about 1.3 ms each on a 2-core AMX Xeon). With room for
16,384 the default training benchmark ran about 4% faster there and no larger in memory (README, Performance);
the Trainer baseline, which the benchmark also ran with it, did not change, nor did the AVX512-BF16 EPYC measurably.

oneDNN reads the capacity from ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` once, when the process builds its first
primitive, so the variable has to be in the environment before the first CPU matmul: ``transfer.training.loop.train``
sets it before it loads data or model, and the benchmarks before their first part. In a process that has already multiplied (a notebook
that trained before), setting it changes nothing; the record says what was asked, not what oneDNN took.

A cached primitive is the one oneDNN would build again, so no computed value changes (run ids and scores are the
same with and without it). A capacity chosen in the environment (``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` or the older
``DNNL_PRIMITIVE_CACHE_CAPACITY``, ``1024`` for oneDNN's own default) is left as it is.
"""

from __future__ import annotations

import os

CAPACITY = 16384
_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")
_asked: dict | None = None


def size_primitive_cache() -> dict:
    """Once per process: ask for ``CAPACITY`` primitives unless the environment chose; what was asked, by whom."""
    global _asked
    if _asked is None:
        _asked = _ask(os.environ)
    return dict(_asked)


def _ask(environ) -> dict:
    for name in _VARIABLES:
        if environ.get(name, "").strip():
            return {"capacity": environ[name].strip(), "set_by": f"environment ({name})"}
    environ[_VARIABLES[0]] = str(CAPACITY)
    return {"capacity": str(CAPACITY), "set_by": "transfer"}
