"""The glibc malloc settings: applied once where nothing else chose, left alone otherwise, and they do keep freed
memory (a process that frees and reallocates the same large blocks stops faulting pages in)."""

import platform
import sys

import pytest

from transfer.experiment.config import RunSpec, load_profile
from transfer.training import host_memory
from transfer.training.loop import train

from fresh_process import TRAIN, run_python

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the settings only apply to glibc malloc")


@needs_glibc
@pytest.mark.parametrize("environ, reason", [
    ({"TRANSFER_MALLOC": "default"}, "TRANSFER_MALLOC=default"),
    ({"TRANSFER_MALLOC": " Default "}, "TRANSFER_MALLOC=default"),
    ({"MALLOC_ARENA_MAX_": "2"}, "set in the environment (MALLOC_ARENA_MAX_)"),
    ({"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "0"}, "set in the environment (MALLOC_MMAP_THRESHOLD_)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "set in GLIBC_TUNABLES"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "another allocator is preloaded"),
    ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "another allocator is preloaded"),
])
def test_the_users_choice_of_allocator_settings_wins(environ, reason):
    assert host_memory._left_alone(environ) == reason


@needs_glibc
def test_settings_apply_where_nothing_else_chose():
    unrelated = {"TRANSFER_MALLOC": "", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F", "LD_PRELOAD": "libfoo.so",
                 "MALLOC": "not a glibc variable", "PATH": "/usr/bin"}
    assert host_memory._left_alone(unrelated) is None


def test_non_glibc_hosts_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    assert host_memory._left_alone({}) == "not glibc"


# a process that frees three blocks of argv[1] MiB (10 MiB: more than glibc's self-tuned trim threshold of twice the
# largest freed mmapped block) and allocates them again, ten times; the minor page faults of those ten rounds
_CHURN = """
import json, resource, sys
from transfer.training.host_memory import keep_freed_memory
applied = keep_freed_memory()
size = int(sys.argv[1]) << 20
def touched():
    block = bytearray(size)
    block[::4096] = b"\\x01" * len(range(0, size, 4096))
    return block
warm = touched(); del warm  # glibc raises its own thresholds after the first freed mmapped block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    blocks = [touched() for _ in range(3)]
    del blocks
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _python(code: str, *args, **extra_env) -> dict:
    """``code``'s JSON line from a fresh interpreter whose environment sets no allocator choice but ``extra_env``."""
    return run_python(code, *args, drop=lambda k: k.startswith("MALLOC_") or k in ("TRANSFER_MALLOC", "GLIBC_TUNABLES"),
                      **extra_env)


@needs_glibc
@pytest.mark.parametrize("mib", [10, 48], ids=["below-the-mmap-ceiling", "above-it"])
def test_the_settings_stop_a_freed_and_reallocated_heap_from_faulting_again(mib):
    """48 MiB is above glibc's 32 MiB mmap threshold ceiling, as MiniLM's word-embedding gradient (47 MB) is."""
    kept = _python(_CHURN, mib)
    default = _python(_CHURN, mib, TRANSFER_MALLOC="default")
    assert kept["applied"]["settings"] == "glibc mallopt" and kept["applied"]["mmap_max"] == 0
    assert default["applied"] == {"settings": "unchanged", "reason": "TRANSFER_MALLOC=default"}
    pages = 10 * 3 * (mib << 20) // 4096  # what faulting every block in again in every round costs
    assert default["faults"] > pages / 2  # glibc as shipped gives the blocks back and faults them in again
    assert kept["faults"] < pages / 5  # kept: after the first round the rounds reuse the same pages


def test_a_run_records_what_was_done_to_the_allocator(tiny_model_dir, tiny_data_dir):
    spec = RunSpec(tasks=("chemprot",), stage="single", profile=load_profile("test").replace(epochs=1), seed=3,
                   model=str(tiny_model_dir))
    block = train(spec, data_dir=tiny_data_dir)["provenance"]["host_allocator"]
    assert block == host_memory.keep_freed_memory()  # once per process: every run of it records the same
    assert block["settings"] in ("glibc mallopt", "unchanged")


@needs_glibc
def test_the_settings_change_no_computed_value(tiny_model_dir, tiny_data_dir):
    kept = _python(TRAIN, tiny_model_dir, tiny_data_dir)
    default = _python(TRAIN, tiny_model_dir, tiny_data_dir, TRANSFER_MALLOC="default")
    assert kept["provenance"]["host_allocator"]["settings"] == "glibc mallopt"
    assert default["provenance"]["host_allocator"]["settings"] == "unchanged"
    assert kept["losses"] and kept["losses"] == default["losses"]  # the same arithmetic, bit for bit
    assert kept["history"] == default["history"] and kept["predictions"] == default["predictions"]
