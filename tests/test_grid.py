"""The grid: plan expansion, device slots, resume after kill -9, failures, two grids on one store, Dask,
and one real tiny end-to-end grid.

Most tests use the fake training function of ``test_worker`` (``TRANSFER_TRAIN_FN``), so the scheduler is
tested in seconds; each run still is a real worker subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from test_worker import read_fake_log
from transfer import grid
from transfer.scheduling.plan import dedupe, expand_specs, ordered_tasks, plan_grid
from transfer.experiment.config import load_profile
from transfer.experiment.atomic import read_json
from transfer.experiment.store import ResultsStore
from transfer.data.tasks import load_task_table

BIOMEDICAL = ("bc5cdr-chemical", "bc5cdr-disease", "chemprot", "ddi2013-type")
TWO = ("chemprot", "ddi2013-type")


def _args(results: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["--results", str(results), "--data-dir", str(data_dir), "--profile", "test", "--quiet", *extra]


def _stage_counts(runs) -> Counter:
    return Counter("+".join(roles) for roles, _ in runs)


def _expand(tasks=BIOMEDICAL, stages=grid.GRID_STAGES, seeds=(1,)):
    return dedupe(expand_specs(tuple(tasks), tuple(stages), tuple(seeds), profile=load_profile("test"),
                               model="minilm", domain="biomedical"))


def _statuses(results: Path) -> dict[str, str]:
    return {record.run_id: record.status for record in ResultsStore(results).records()}


# ----------------------------------------------------------------------------------------------- the plan

def test_plan_sizes_per_stage_and_seed():
    runs = _expand()
    assert len(runs) == 15
    assert _stage_counts(runs) == {"single": 4, "pair": 6, "all": 1, "finetune": 4}
    assert len(_expand(seeds=(1, 2))) == 30
    assert len({spec.run_id for _, spec in _expand(seeds=(1, 2))}) == 30
    assert _stage_counts(_expand(stages=("single",))) == {"single": 4}
    assert _stage_counts(_expand(stages=("single", "pair"))) == {"single": 4, "pair": 6}
    assert _stage_counts(_expand(stages=("all", "finetune"))) == {"all": 1, "finetune": 4}
    with pytest.raises(ValueError, match="needs the all stage"):
        _expand(stages=("finetune",))


def test_plan_links_finetune_to_refinement_and_saves_its_encoder_only_then():
    runs = dict((spec.run_id, ("+".join(roles), spec)) for roles, spec in _expand())
    refinement = [spec for stage, spec in runs.values() if stage == "all"][0]
    assert refinement.save_encoder and refinement.stage == "mtl" and refinement.tasks == BIOMEDICAL
    for stage, spec in runs.values():
        assert spec.parent == (refinement.run_id if stage == "finetune" else None)
        assert spec.save_encoder == (stage == "all")
    assert not [spec for stage, spec in _expand(stages=("single", "pair", "all")) if spec.save_encoder]


def test_two_tasks_pair_and_all_task_run_are_one_run():
    runs = _expand(tasks=TWO)
    assert _stage_counts(runs) == {"single": 2, "pair+all": 1, "finetune": 2}
    merged = [spec for roles, spec in runs if roles == ("pair", "all")][0]
    assert merged.save_encoder  # the finetune runs need its encoder
    assert {spec.parent for roles, spec in runs if roles == ("finetune",)} == {merged.run_id}


def test_plan_grid_fingerprints_and_estimates(tiny_data_dir):
    table = load_task_table()
    profile = load_profile("test")
    tasks = ordered_tasks(table, "biomedical", ["ddi2013-type", "chemprot"])
    assert tasks == TWO  # the domain's order, whatever the command line's
    plan = plan_grid(table, "biomedical", tasks, grid.GRID_STAGES, (1,), profile, "minilm", str(tiny_data_dir))
    by_stage = {p.label: p for p in plan}
    single = by_stage["single"]
    assert {key.split("/")[0] for key, _ in single.spec.data_fingerprints} == {single.spec.tasks[0]}
    assert {key for key, _ in by_stage["pair+all"].spec.data_fingerprints} == {
        f"{t}/{s}" for t in TWO for s in ("train", "dev", "test")}
    assert single.spec.domain == "biomedical" and single.spec.code_version == __import__("transfer").__version__
    cap = profile.max_train_examples  # tiny files have 24 training examples, capped at 12
    assert single.estimated_examples == cap * profile.epochs
    assert by_stage["pair+all"].estimated_examples == 2 * cap * profile.epochs
    assert by_stage["finetune"].estimated_examples == cap * profile.finetune_epochs


def test_tasks_of_several_domains_keep_the_task_table_order():
    table = load_task_table()
    tasks = ordered_tasks(table, None, ["mednli", "chemprot"])
    assert tasks == ("chemprot", "mednli")
    runs = dedupe(expand_specs(tasks, ("single", "pair"), (1,), profile=load_profile("test"),
                               model="minilm", domain=None))
    assert len(runs) == 3 and all(spec.domain is None for _, spec in runs)


def test_cli_rejects_finetune_without_all_and_missing_tasks(tmp_path, tiny_data_dir):
    with pytest.raises(SystemExit) as exc:
        grid.main(_args(tmp_path, tiny_data_dir, "--tasks", *TWO, "--stages", "finetune", "--dry-run"))
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        grid.main(_args(tmp_path, tiny_data_dir, "--dry-run"))


def test_jobs_per_device_takes_auto_or_a_positive_number(capsys):
    parser = grid.build_parser(load_task_table())
    assert parser.parse_args(["--domain", "biomedical"]).jobs_per_device is None  # auto
    assert parser.parse_args(["--domain", "biomedical", "--jobs-per-device", "auto"]).jobs_per_device is None
    assert parser.parse_args(["--domain", "biomedical", "--jobs-per-device", "3"]).jobs_per_device == 3
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--domain", "biomedical", "--jobs-per-device", bad])
    assert "jobs-per-device" in capsys.readouterr().err


@pytest.mark.parametrize("extra, expected", [
    (["--set", "max_length=1024"], "max_length = 1024 exceeds the 512 positions"),
    (["--model", "./no/such/model"], "./no/such/model: model folder does not exist"),
])
def test_grid_refuses_a_model_or_max_length_before_it_runs_anything(tmp_path, tiny_data_dir, capsys, extra, expected):
    # without the check every worker of the grid failed on it, one run after another
    results = tmp_path / "results"
    assert grid.main(_args(results, tiny_data_dir, "--tasks", *TWO, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
    assert not results.exists()


def test_grid_reads_a_cached_hub_models_positions_and_leaves_an_uncached_id_to_the_workers(tmp_path, tiny_data_dir,
                                                                                            capsys, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--owner--small" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "bert", "max_position_embeddings": 16}')
    (tmp_path / "hub" / "models--owner--small" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--small" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    base = _args(tmp_path / "results", tiny_data_dir, "--tasks", *TWO, "--dry-run")
    assert grid.main([*base, "--model", "owner/small"]) == 2
    assert "exceeds the 16 positions of the encoder owner/small" in capsys.readouterr().err
    assert grid.main([*base, "--model", "owner/small", "--set", "max_length=16"]) == 0
    assert grid.main([*base, "--model", "owner/elsewhere"]) == 0  # not on disk: the workers load (or refuse) it


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, tiny_data_dir, capsys):
    results = tmp_path / "results"
    assert grid.main(_args(results, tiny_data_dir, "--domain", "biomedical", "--devices", "cpu", "--dry-run")) == 0
    out = capsys.readouterr().out
    for stage, spec in _expand():
        assert spec.run_id.rsplit("-", 1)[0] in out
    assert "finetune" in out and "cpu" in out and "15 runs" in out
    assert not results.exists()


# ----------------------------------------------------------------------------------------------- local runs

def test_simulated_gpus_one_device_per_run_and_no_shared_slot(tmp_path, tiny_data_dir, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.6")
    results = tmp_path / "results"
    code = grid.main(_args(results, tiny_data_dir, "--tasks", *BIOMEDICAL, "--stages", "single",
                           "--devices", "0,1", "--jobs-per-device", "1"))
    assert code == 0
    seen = read_fake_log(fake_env)
    assert len(seen) == 4 and len({r["run_id"] for r in seen}) == 4
    assert all(r["cuda"] in ("0", "1") and r["device"] == "cuda" for r in seen)
    for gpu in ("0", "1"):
        spans = sorted((r["start"], r["end"]) for r in seen if r["cuda"] == gpu)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
    assert {r["cuda"] for r in seen} == {"0", "1"}  # both slots were used
    assert (results / "scores.csv").is_file()


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_sigterm_to_the_grid_stops_its_workers_and_leaves_the_run_resumable(tmp_path, tiny_data_dir, fake_env,
                                                                             monkeypatch):
    # A batch system preempts with SIGTERM, sent to the grid alone: the workers must not run on as orphans
    # (they would write into the store after the grid is gone, racing the next grid).
    psutil = pytest.importorskip("psutil")
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "60")
    results = tmp_path / "results"
    args = _args(results, tiny_data_dir, "--tasks", "chemprot", "--stages", "single", "--devices", "cpu",
                 "--jobs-per-device", "1")
    with open(tmp_path / "grid.out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "transfer.grid", *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    store = ResultsStore(results)
    try:
        _wait_for(lambda: any((store.folder(r) / "progress.json").is_file() for r in _statuses(results)), 90,
                  "a run in progress")
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert list(_statuses(results).values()) == ["running"]  # left for the next grid, claim released
    assert all(store.claim_info(r) is None for r in _statuses(results))
    assert "rerun the same command to resume" in (tmp_path / "grid.out").read_text()


def test_resume_after_kill_9_redoes_only_the_interrupted_run(tmp_path, tiny_data_dir, fake_env, monkeypatch):
    # One slot, and runs long enough that the one caught running cannot finish between the check and the kill,
    # even on a loaded machine (with two slots a second run could end, or the next not yet start, in that window).
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "5")
    results = tmp_path / "results"
    args = _args(results, tiny_data_dir, "--tasks", *TWO, "--stages", "single", "pair", "--devices", "cpu",
                 "--jobs-per-device", "1")
    with open(tmp_path / "grid.out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "transfer.grid", *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    store = ResultsStore(results)

    def one_done_one_running() -> bool:
        statuses = _statuses(results)
        running = [rid for rid, s in statuses.items() if s == "running"]
        return ("done" in statuses.values() and len(running) == 1
                and (store.folder(running[0]) / "progress.json").is_file())

    try:
        _wait_for(one_done_one_running, 90, "one run done and one running")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    statuses = _statuses(results)
    done = [rid for rid, s in statuses.items() if s == "done"]
    interrupted = [rid for rid, s in statuses.items() if s == "running"]
    assert len(interrupted) == 1
    before = {rid: (store.folder(rid) / "metrics.json").stat().st_mtime_ns for rid in done}
    content = {rid: (store.folder(rid) / "metrics.json").read_bytes() for rid in done}

    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0")
    assert grid.main(args) == 0
    assert set(_statuses(results).values()) == {"done"} and len(_statuses(results)) == 3
    for rid in done:
        assert (store.folder(rid) / "metrics.json").stat().st_mtime_ns == before[rid]
        assert (store.folder(rid) / "metrics.json").read_bytes() == content[rid]
    assert read_json(store.folder(interrupted[0]) / "status.json")["attempts"] == 2
    assert Counter(r["run_id"] for r in read_fake_log(fake_env)) == Counter({rid: 1 for rid in _statuses(results)})
    rows = list(csv.DictReader(open(results / "scores.csv")))
    assert len(rows) == 4 and {row["status"] for row in rows} == {"done"}


def test_failures_are_recorded_the_rest_goes_on_and_retry_failed_reruns(tmp_path, tiny_data_dir, fake_env,
                                                                         monkeypatch, capsys):
    monkeypatch.setenv("FAKE_TRAIN_FAIL", "single-chemprot")
    monkeypatch.setenv("FAKE_TRAIN_KILL", "single-ddi2013")
    results = tmp_path / "results"
    args = _args(results, tiny_data_dir, "--tasks", *TWO, "--stages", "single", "pair", "--devices", "cpu",
                 "--jobs-per-device", "2")
    assert grid.main(args) == 1
    store = ResultsStore(results)
    status = {r.run_id.split("-s1-")[0]: r.status_info for r in store.records()}
    assert status["mtl-chemprot+ddi2013-type"]["status"] == "done"
    assert status["single-chemprot"]["status"] == "failed"
    assert "RuntimeError: fake failure" in status["single-chemprot"]["traceback"]
    assert status["single-ddi2013-type"]["status"] == "failed"
    assert "SIGKILL" in status["single-ddi2013-type"]["error"]
    assert "worker pid" in status["single-ddi2013-type"]["log_tail"]
    assert "FAILED" in capsys.readouterr().out

    assert grid.main(args) == 1  # failed runs are reported, not retried
    assert len(read_fake_log(fake_env)) == 1
    monkeypatch.delenv("FAKE_TRAIN_FAIL")
    monkeypatch.delenv("FAKE_TRAIN_KILL")
    assert grid.main([*args, "--retry-failed"]) == 0
    assert Counter(r["run_id"].split("-s1-")[0] for r in read_fake_log(fake_env)) == {
        "mtl-chemprot+ddi2013-type": 1, "single-chemprot": 1, "single-ddi2013-type": 1}
    assert not any("error" in r.status_info for r in store.records())


def test_finetune_is_skipped_when_its_refinement_fails(tmp_path, tiny_data_dir, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAIL", "mtl-")
    results = tmp_path / "results"
    args = ["--results", str(results), "--data-dir", str(tiny_data_dir), "--profile", "test", "--tasks", *TWO,
            "--stages", "all", "finetune", "--devices", "cpu", "--no-quiet"]  # also exercises the live view
    assert grid.main(args) == 1
    records = {r.spec["stage"]: r for r in ResultsStore(results).records() if r.spec["stage"] != "finetune"}
    finetunes = [r for r in ResultsStore(results).records() if r.spec["stage"] == "finetune"]
    assert records["mtl"].status == "failed" and len(finetunes) == 2
    assert all(r.status == "failed" and r.status_info["skipped"] for r in finetunes)
    assert all(records["mtl"].run_id in r.status_info["error"] for r in finetunes)
    assert [r["run_id"] for r in read_fake_log(fake_env)] == []

    monkeypatch.delenv("FAKE_TRAIN_FAIL")
    assert grid.main([*args, "--retry-failed"]) == 0
    seen = read_fake_log(fake_env)
    assert [r["run_id"].split("-")[0] for r in seen] == ["mtl", "finetune", "finetune"]


def test_force_reruns_done_runs(tmp_path, tiny_data_dir, fake_env):
    results = tmp_path / "results"
    args = _args(results, tiny_data_dir, "--tasks", "chemprot", "--stages", "single", "--devices", "cpu")
    assert grid.main(args) == 0
    assert grid.main(args) == 0
    assert len(read_fake_log(fake_env)) == 1
    assert grid.main([*args, "--force"]) == 0
    assert len(read_fake_log(fake_env)) == 2


def test_two_grids_on_one_store_run_each_spec_once(tmp_path, tiny_data_dir, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.5")
    results = tmp_path / "results"
    args = _args(results, tiny_data_dir, "--tasks", *TWO, "--stages", "single", "pair", "--devices", "cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "transfer.grid", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    seen = Counter(r["run_id"] for r in read_fake_log(fake_env))
    assert len(seen) == 3 and set(seen.values()) == {1}
    assert set(_statuses(results).values()) == {"done"}


# ----------------------------------------------------------------------------------------------- Dask

def test_dask_backend_runs_plan_with_gpu_resources_and_dependencies(tmp_path, tiny_data_dir, fake_env):
    distributed = pytest.importorskip("distributed")
    results = tmp_path / "results"
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2, resources={"GPU": 1},
                                  dashboard_address=None) as cluster:
        code = grid.main(_args(results, tiny_data_dir, "--tasks", *TWO, "--stages", "all", "finetune",
                               "--backend", "dask", "--scheduler-address", cluster.scheduler_address,
                               "--worker-gpus"))
    assert code == 0
    seen = sorted(read_fake_log(fake_env), key=lambda r: r["start"])
    assert [r["run_id"].split("-")[0] for r in seen] == ["mtl", "finetune", "finetune"]
    assert all(a["end"] <= b["start"] for a, b in zip(seen, seen[1:]))  # GPU=1: one run at a time
    assert set(_statuses(results).values()) == {"done"}
    assert all(r.status_info["owner"].startswith("dask:") for r in ResultsStore(results).records())


# ----------------------------------------------------------------------------------------------- real runs

def test_real_tiny_grid_end_to_end(tmp_path, tiny_data_dir, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("TRANSFER_TRAIN_FN", raising=False)
    results = tmp_path / "results"
    code = grid.main(_args(results, tiny_data_dir, "--tasks", *TWO, "--model", str(tiny_model_dir),
                           "--devices", "cpu", "--jobs-per-device", "2"))
    assert code == 0, [r.status_info.get("error") for r in ResultsStore(results).records()]
    rows = list(csv.DictReader(open(results / "scores.csv")))
    assert Counter(row["stage"] for row in rows) == {"single": 2, "mtl": 2, "finetune": 2}
    assert all(row["status"] == "done" and row["test_score"] != "" for row in rows)
    store = ResultsStore(results)
    mtl = [r for r in store.records() if r.spec["stage"] == "mtl"][0]
    assert (mtl.folder / "encoder").is_dir()
    for record in store.records():
        if record.spec["stage"] == "finetune":
            assert record.spec["parent"] == mtl.run_id
            metrics = json.loads(record.metrics_file.read_text())
            assert metrics["train"]["epochs_run"] == load_profile("test").finetune_epochs
            assert (record.folder / "log.txt").read_text().count("Traceback") == 0
