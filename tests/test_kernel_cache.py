"""oneDNN's primitive cache: sized by transfer unless the environment chose, and the size takes effect."""

import os
import subprocess
import sys

import pytest

from transfer.training import kernel_cache

from fresh_process import TRAIN, run_python

_VARIABLES = kernel_cache._VARIABLES

# Builds SHAPES distinct bf16 matmuls twice over; oneDNN logs each primitive it builds ("create:cache_miss").
_SCRIPT = """
import sys
import torch  # loaded first, as in a run: oneDNN reads the size at its first primitive, not at import
from transfer.training.kernel_cache import size_primitive_cache
print("asked", size_primitive_cache(), flush=True)
shapes = int(sys.argv[1])
b = torch.ones(32, 32, dtype=torch.bfloat16)
for sweep in range(2):
    print("sweep", sweep, flush=True)
    for n in range(16, shapes + 16):  # past the sizes torch multiplies without oneDNN
        torch.ones(n, 32, dtype=torch.bfloat16) @ b
"""


def test_the_environment_wins_over_transfers_size():
    for name in _VARIABLES:
        environ = {name: "2048"}
        assert kernel_cache._ask(environ) == {"capacity": "2048", "set_by": f"environment ({name})"}
        assert environ == {name: "2048"}
    environ = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": " "}
    assert kernel_cache._ask(environ) == {"capacity": "16384", "set_by": "transfer"}
    assert environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "16384"


def _misses_per_sweep(extra_env: dict, shapes: int) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k not in _VARIABLES}
    env.update(extra_env, ONEDNN_VERBOSE="2")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(shapes)], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    misses = []
    for line in out.splitlines():
        if line.startswith("sweep"):
            misses.append(0)
        elif misses and "create:cache_miss" in line:
            misses[-1] += 1
    return misses


def test_a_run_keeps_more_primitives_than_onednns_default():
    """1,100 shapes swept twice: with oneDNN's 1,024 the second sweep builds them all again, with transfer's none."""
    shapes = 1100
    ours = _misses_per_sweep({}, shapes)
    if ours[0] == 0:
        pytest.skip("this CPU runs bf16 matmuls without oneDNN primitives")
    default = _misses_per_sweep({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}, shapes)
    assert default[0] >= shapes and default[1] >= shapes  # the control: evicted before they come round again
    assert ours[0] >= shapes and ours[1] == 0  # every one still cached


def _train(tiny_model_dir, tiny_data_dir, extra_env: dict) -> dict:
    return run_python(TRAIN, tiny_model_dir, tiny_data_dir, drop=lambda k: k in _VARIABLES, **extra_env)


def test_a_run_records_the_size_and_computes_the_same_with_oneDNNs_default(tiny_model_dir, tiny_data_dir):
    ours = _train(tiny_model_dir, tiny_data_dir, {})
    default = _train(tiny_model_dir, tiny_data_dir, {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"})
    assert ours["provenance"]["onednn_primitive_cache"] == {"capacity": "16384", "set_by": "transfer"}
    assert default["provenance"]["onednn_primitive_cache"] == {
        "capacity": "1024", "set_by": "environment (ONEDNN_PRIMITIVE_CACHE_CAPACITY)"}
    assert ours["losses"] and ours["losses"] == default["losses"]  # the same arithmetic, bit for bit
    assert ours["history"] == default["history"] and ours["predictions"] == default["predictions"]
