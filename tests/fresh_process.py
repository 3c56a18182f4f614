"""Code run in a fresh interpreter, for settings a process applies once (the allocator's, oneDNN's kernel cache):
each test starts one with exactly the environment it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# one short training run of the tiny model; prints what the run recorded and what it computed
TRAIN = """
import json, sys
from transfer.experiment.config import RunSpec, load_profile
from transfer.training.loop import train
spec = RunSpec(tasks=("chemprot",), stage="single", profile=load_profile("test").replace(epochs=1), seed=3,
               model=sys.argv[1])
result = train(spec, data_dir=sys.argv[2])
print(json.dumps({"provenance": result["provenance"], "losses": result["train"]["losses"],
                  "history": result["history"], "predictions": result["predictions"]}))
"""


def run_python(code: str, *args, drop=lambda name: False, **extra_env) -> dict:
    """The last line ``code`` prints, as JSON, from a fresh interpreter whose environment is this one's, less the
    variables ``drop`` names, plus ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if not drop(k)}
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], env={**env, **extra_env},
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
