"""Scheduler pieces: device slots, the claim protocol at a run's turn, settling a worker's exit, the board."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from transfer.scheduling import scheduler
from transfer.scheduling import slots as slot_finder
from transfer.experiment.config import RunSpec, load_profile
from transfer.scheduling.plan import PlannedRun
from transfer.scheduling.scheduler import Board, claim_run, settle_run
from transfer.scheduling.slots import device_slots, parse_devices
from transfer.experiment.atomic import read_json
from transfer.experiment.store import ResultsStore


def _spec(tasks=("chemprot",), stage="single", seed=1, **extra) -> RunSpec:
    return RunSpec(tasks=tuple(tasks), stage=stage, profile=load_profile("test"), seed=seed, domain="biomedical",
                   **extra)


# ----------------------------------------------------------------------------------------------- slots

def test_parse_devices():
    assert parse_devices("auto") == "auto" and parse_devices("cpu") == "cpu"
    assert parse_devices("0, 1") == ["0", "1"]
    with pytest.raises(ValueError):
        parse_devices("0,,1")


def test_gpu_slots_interleave_devices_and_share_cores():
    slots = device_slots(["0", "1"], jobs_per_device=2, cores=8)
    assert [s.name for s in slots] == ["gpu0.0", "gpu1.0", "gpu0.1", "gpu1.1"]
    assert {s.threads for s in slots} == {2} and {s.device for s in slots} == {"cuda"}
    env = slots[1].env({"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert [s.name for s in device_slots(["3"], cores=4)] == ["gpu3"]


def test_cpu_slots_hide_gpus_and_divide_cores():
    slots = device_slots("cpu", jobs_per_device=3, cores=8)
    assert [s.name for s in slots] == ["cpu.0", "cpu.1", "cpu.2"] and {s.threads for s in slots} == {2}
    assert slots[0].env({})["CUDA_VISIBLE_DEVICES"] == "" and slots[0].device == "cpu"
    assert device_slots("cpu", cores=1)[0].threads == 1


def test_auto_devices_follow_visible_gpus_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [s.gpu for s in device_slots("auto", cores=4)] == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert {s.kind for s in device_slots("auto", cores=4)} == {"cpu"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-a)'\necho 'GPU 1: Fake (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slot_finder.visible_gpus() == ["0", "1"]
    fake.unlink()
    assert slot_finder.visible_gpus() == []


def test_auto_jobs_give_one_single_thread_cpu_run_per_core_as_memory_allows():
    gib = 1 << 30
    slots = device_slots("cpu", cores=2, memory=24 * gib)
    assert [s.name for s in slots] == ["cpu.0", "cpu.1"] and {s.threads for s in slots} == {1}
    # 16 cores but memory for three runs: three slots, the cores shared out among them
    slots = device_slots("cpu", cores=16, memory=3 * slot_finder.CPU_RUN_MEMORY + gib)
    assert len(slots) == 3 and {s.threads for s in slots} == {5}
    assert [s.name for s in device_slots("cpu", cores=8, memory=gib)] == ["cpu"]  # never fewer than one
    assert [s.name for s in device_slots(["0", "1"], cores=8, memory=gib)] == ["gpu0", "gpu1"]  # GPUs: one each
    assert slot_finder.memory_bytes() > 0


def test_jobs_per_device_must_be_positive():
    with pytest.raises(ValueError, match="jobs-per-device"):
        device_slots("cpu", jobs_per_device=0)


# ----------------------------------------------------------------------------------------------- claim protocol

def test_claim_run_outcomes(tmp_path):
    store = ResultsStore(tmp_path)
    spec = _spec()
    run_id, data = spec.run_id, spec.to_dict()
    assert claim_run(store, run_id, data, "a") == ("claimed", None)
    assert claim_run(store, run_id, data, "b") == ("held", None)  # a (this live process) holds it
    store.set_status(run_id, "failed", error="boom")
    store.release(run_id)
    assert claim_run(store, run_id, data, "b") == ("failed", "boom")
    assert claim_run(store, run_id, data, "b", retry_failed=True) == ("claimed", None)
    store.run(run_id).write_result({"tasks": {}, "predictions": {t: [] for t in spec.tasks}})
    store.set_status(run_id, "done")
    store.release(run_id)
    assert claim_run(store, run_id, data, "c") == ("done", None)
    assert claim_run(store, run_id, data, "c", needs_encoder=True) == ("claimed", None)  # encoder is missing
    store.set_status(run_id, "done")
    store.release(run_id)
    assert claim_run(store, run_id, data, "c", force=True) == ("claimed", None)
    assert store.status(run_id) == "running" and read_json(store.folder(run_id) / "status.json")["attempts"] == 4


def test_skipped_runs_are_not_treated_as_failures(tmp_path):
    store = ResultsStore(tmp_path)
    spec = _spec()
    store.try_claim(spec.run_id, spec.to_dict(), "a")
    store.set_status(spec.run_id, "failed", error="parent failed", skipped=True)
    store.release(spec.run_id)
    assert claim_run(store, spec.run_id, spec.to_dict(), "b")[0] == "claimed"


def test_settle_run_records_a_killed_worker(tmp_path):
    store = ResultsStore(tmp_path)
    spec = _spec()
    store.try_claim(spec.run_id, spec.to_dict(), "grid")
    (store.folder(spec.run_id) / "log.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    outcome, error = settle_run(store, spec.run_id, "grid", -signal.SIGKILL)
    assert outcome == "failed" and "SIGKILL" in error
    status = read_json(store.folder(spec.run_id) / "status.json")
    assert status["status"] == "failed" and status["returncode"] == -9
    assert status["log_tail"].startswith("line 60") and status["log_tail"].endswith("line 99\n")
    assert store.claim_info(spec.run_id) is None


def test_settle_run_leaves_interrupted_runs_resumable_and_other_owners_alone(tmp_path):
    store = ResultsStore(tmp_path)
    spec = _spec()
    store.try_claim(spec.run_id, spec.to_dict(), "grid")
    assert settle_run(store, spec.run_id, "grid", scheduler.EXIT_INTERRUPTED)[0] == "interrupted"
    assert store.status(spec.run_id) == "running" and store.claim_info(spec.run_id) is None
    store.try_claim(spec.run_id, spec.to_dict(), "other-grid")
    assert settle_run(store, spec.run_id, "grid", 1)[0] == "failed"
    assert store.status(spec.run_id) == "running"  # the other grid's attempt is not overwritten
    assert store.claim_info(spec.run_id)["owner"] == "other-grid"


def test_describe_exit():
    assert "SIGSEGV" in scheduler.describe_exit(-signal.SIGSEGV)
    assert "out of memory" in scheduler.describe_exit(-signal.SIGKILL)
    assert "code 2" in scheduler.describe_exit(2)


# ----------------------------------------------------------------------------------------------- the board

def test_board_starts_seed_by_seed_longest_first():
    # a grid stopped part-way must leave whole seeds: seed 13's short run goes before seed 14's long one
    long_14 = PlannedRun(_spec(("chemprot", "ddi2013-type"), "mtl", seed=14), "pair", 40)
    short_13 = PlannedRun(_spec(("ddi2013-type",), seed=13), "single", 10)
    long_13 = PlannedRun(_spec(("chemprot", "ddi2013-type"), "mtl", seed=13), "pair", 40)
    plan = [short_13, long_14, long_13]
    board = Board.from_plan(plan)
    assert [r.run_id for r in board.ready(0)] == [long_13.run_id, short_13.run_id, long_14.run_id]
    board = Board.from_plan([long_14, short_13, long_13])  # the plan's first seed comes first
    assert [r.run_id for r in board.ready(0)] == [long_14.run_id, long_13.run_id, short_13.run_id]


def test_board_orders_longest_first_and_holds_children_until_parent_done():
    parent = PlannedRun(_spec(("chemprot", "ddi2013-type"), "mtl", save_encoder=True), "all", 40)
    child = PlannedRun(_spec(stage="finetune", parent=parent.run_id), "finetune", 10)
    small = PlannedRun(_spec(("ddi2013-type",)), "single", 20)
    board = Board.from_plan([small, child, parent])
    assert [r.run_id for r in board.ready(0)] == [parent.run_id, small.run_id]
    board.mark(board.runs[parent.run_id], "running")
    assert [r.run_id for r in board.ready(0)] == [small.run_id]
    board.mark(board.runs[parent.run_id], "done")
    assert child.run_id in [r.run_id for r in board.ready(0)]
    board.mark(board.runs[parent.run_id], "failed")
    assert [r.run_id for r in board.orphans()] == [child.run_id]


def test_the_log_header_names_no_folder_of_this_machine(tmp_path, monkeypatch):
    # logs are committed with a store: the worker command in the header must carry no absolute path
    monkeypatch.chdir(tmp_path)
    cmd = [sys.executable, "-m", "transfer.scheduling.worker", "--results", str(tmp_path / "results"),
           "--data-dir", str(tmp_path.parent / "data"), "--device", "cpu"]
    shown = scheduler.portable_command(cmd)
    assert shown[0] == "python" and shown[4] == "results" and shown[6] == os.path.join("..", "data")
    assert not any(os.path.isabs(arg) for arg in shown)
