"""Time spent inside oneDNN primitives, from oneDNN's own execution log.

torch runs the CPU's bf16 matmuls (and a few other ops: GELU, some reorders) through oneDNN, which can log every
primitive it executes with the milliseconds it took (``ONEDNN_VERBOSE``; torch switches it on and off at run time
with ``torch.backends.mkldnn.verbose``). Summing those lines over a step says how much of the step the kernels
themselves took and how much went to everything around them, without a profiler's per-op overhead. oneDNN writes
the log with C's stdio to file descriptor 1, so ``OneDnnLog`` points that descriptor at a temporary file for the
span it watches and reads the file back.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from collections import defaultdict


def matmul_flops(shapes: str) -> int | None:
    """2·batch·M·K·N of a matmul's shape field (``MxK:KxN``, or ``BxMxK:BxKxN`` with a batch); None if unreadable."""
    try:
        src, wei = ([int(d) for d in side.split("x")] for side in shapes.split(":"))
    except ValueError:
        return None
    if len(src) < 2 or len(src) != len(wei) or src[-1] != wei[-2]:
        return None
    batch = 1
    for a, b in zip(src[:-2], wei[:-2]):  # a batch dimension of 1 on one side is broadcast
        batch *= max(a, b)
    return 2 * batch * src[-2] * src[-1] * wei[-1]


def parse_exec_lines(text: str) -> dict:
    """{"ms": total, "count": n, "by_kind": {kind: ms}, "matmul_flops": n} of a oneDNN verbose log's ``exec`` lines.

    A line reads ``onednn_verbose[,v1],primitive,exec,cpu,<kind>,<implementation>,...,<shapes>,<ms>`` (the
    ``primitive`` field and the version tag come with newer oneDNN releases; older ones start
    ``onednn_verbose,exec,cpu``). Lines of another sort (creation, cache hits, information) are not executions and
    are left out."""
    total, count, by_kind, flops = 0.0, 0, defaultdict(float), 0
    for line in text.splitlines():
        fields = line.strip().split(",")
        if not fields or not fields[0].endswith("_verbose") or "exec" not in fields:
            continue
        at = fields.index("exec")
        try:
            ms = float(fields[-1])
            kind = fields[at + 2]  # after "exec" and the engine ("cpu")
        except (ValueError, IndexError):
            continue
        total += ms
        count += 1
        by_kind[kind] += ms
        if kind == "matmul":
            flops += matmul_flops(fields[-2]) or 0
    return {"ms": total, "count": count, "by_kind": dict(by_kind), "matmul_flops": flops}


class OneDnnLog:
    """``with OneDnnLog() as log: ...``, then ``log.result``: what oneDNN executed in the block (parse_exec_lines)."""

    def __init__(self):
        self.result: dict | None = None

    def __enter__(self):
        import torch

        _flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(1)
        os.dup2(self._file.fileno(), 1)
        self._verbose = torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON)
        self._verbose.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            self._verbose.__exit__(*exc)
            _flush()
        finally:
            os.dup2(self._saved, 1)
            os.close(self._saved)
        self._file.seek(0)
        self.result = parse_exec_lines(self._file.read().decode("utf-8", "replace"))
        self._file.close()
        return False


def _flush() -> None:
    """Both writers of descriptor 1 emptied, so nothing of the code around lands in the log or is lost from it."""
    sys.stdout.flush()
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask (not a POSIX system): oneDNN's lines may come late
        pass
