"""The results store's claim protocol (the parts the grid relies on)."""

from __future__ import annotations

import json
import subprocess
import sys

from transfer.experiment.atomic import read_json
from transfer.experiment.store import ResultsStore

SPEC = {"tasks": ["chemprot"], "stage": "single", "seed": 1, "model": "m", "profile": {"name": "test"}}


def finish(store: ResultsStore, run_id: str, tasks=("chemprot",)) -> None:
    """Record a run as done with a (tiny) result, as the worker does."""
    result = {"run_id": run_id,
              "tasks": {t: {"metric": "acc", "test_score": 0.5, "examples": {"test": 2}} for t in tasks},
              "predictions": {t: [{"uid": "u1", "gold": "a", "pred": "a"}, {"uid": "u2", "gold": "b", "pred": "a"}]
                              for t in tasks}}
    store.run(run_id).write_result(result)
    store.set_status(run_id, "done")


def test_claim_is_exclusive_and_done_runs_are_not_claimed(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.try_claim("r1", SPEC, "a")
    assert not store.try_claim("r1", SPEC, "b")
    assert read_json(store.folder("r1") / "spec.json")["run_id"] == "r1"
    finish(store, "r1")
    store.release("r1")
    assert not store.try_claim("r1", SPEC, "b")
    assert store.try_claim("r1", SPEC, "b", force=True)
    assert read_json(store.folder("r1") / "status.json")["attempts"] == 2


def test_claim_of_a_dead_process_is_taken_over(tmp_path):
    store = ResultsStore(tmp_path)
    store.try_claim("r1", SPEC, "a")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = store.claim_info("r1")
    (store.folder("r1") / "claim").write_text(json.dumps({**info, "pid": int(dead.stdout)}))
    assert store.try_claim("r1", SPEC, "b")
    assert store.claim_info("r1")["owner"] == "b"


def test_adopt_claim_and_release_by_owner(tmp_path):
    store = ResultsStore(tmp_path)
    store.try_claim("r1", SPEC, "grid")
    assert not store.adopt_claim("r1", "someone-else")
    assert store.adopt_claim("r1", "grid")
    assert store.claim_info("r1")["owner"] == "grid"
    store.release("r1", owner="someone-else")
    assert store.claim_info("r1") is not None
    store.release("r1", owner="grid")
    assert store.claim_info("r1") is None
    assert not store.adopt_claim("r1", "grid")


def test_a_new_attempt_clears_the_last_failure(tmp_path):
    store = ResultsStore(tmp_path)
    store.try_claim("r1", SPEC, "a")
    store.set_status("r1", "failed", error="boom", traceback="tb", log_tail="tail", returncode=-9)
    store.release("r1")
    assert store.try_claim("r1", SPEC, "b")
    status = read_json(store.folder("r1") / "status.json")
    assert status["status"] == "running" and not {"error", "traceback", "log_tail", "returncode"} & set(status)
