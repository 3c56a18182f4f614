"""The store as keeper of the run folder: roles in spec.json, damaged folders, resuming the committed store,
process identity in claims, a full disk while recording, the loopback Dask cluster, and the CLIs' one-line errors.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from test_store import finish
from test_worker import read_fake_log
from transfer import affinity, grid
from transfer.experiment import claims
from transfer.experiment.config import Profile, load_profile
from transfer.experiment.roles import MODEL_LABELS, MODEL_TYPES, ROLES, STAGES, children_of
from transfer.experiment.atomic import read_json
from transfer.experiment.run_folder import DamagedRunError, RunFolder, predictions_damage, read_predictions
from transfer.experiment.store import ResultsStore
from transfer.scheduling import scheduler, worker
from transfer.scheduling.plan import PlannedRun, dedupe, expand_specs
from transfer.scheduling.dask_backend import dask_client
from transfer.scheduling.scheduler import Board, GridOptions, LocalScheduler, Slot, settle_run
from stores import COMMITTED_STORE, LEGACY_STORE, REPO

COMMITTED = COMMITTED_STORE
TWO = ("chemprot", "ddi2013-type")
SPEC = {"tasks": ["chemprot"], "stage": "single", "seed": 1, "model": "m", "profile": {"name": "test"}}


def _args(results: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["--results", str(results), "--data-dir", str(data_dir), "--profile", "test", "--quiet", *extra]


# ----------------------------------------------------------------------------------------------- roles

def test_roles_table_matches_the_trainer_and_the_analysis_labels():
    profile = Profile(learning_rate=1e-4, finetune_learning_rate=3e-5, epochs=3, finetune_epochs=2)
    assert ROLES["finetune"].learning_rate(profile) == 3e-5 and ROLES["finetune"].epochs(profile) == 2
    assert ROLES["pair"].learning_rate(profile) == 1e-4 and ROLES["all"].epochs(profile) == 3
    for spec in (s for _, s in expand_specs(TWO, tuple(ROLES), (1,), profile=profile, model="m", domain=None)):
        row = next(r for r in ROLES.values() if r.stage == spec.stage)
        assert (spec.learning_rate, spec.epochs) == (row.learning_rate(profile), row.epochs(profile))
    assert set(STAGES) == {"single", "mtl", "finetune"} and children_of("all") == ("finetune",)
    assert MODEL_TYPES == ("single", "mt-refinement", "mt-finetune")
    assert MODEL_LABELS == {"single": "BERT (single task)", "mt-refinement": "MT-Refinement",
                            "mt-finetune": "MT-Fine-Tune"}


def _stored_specs(store: Path) -> dict[str, dict]:
    return {p.parent.name: read_json(p) for p in sorted((store / "runs").glob("*/spec.json"))}


def _stored_profile(spec: dict) -> Profile:
    """The profile a stored spec ran with, as the spec reader completes it (values added since take their
    old behaviour there, so a stored run keeps its id)."""
    from transfer.experiment.config import run_spec_from_dict

    return run_spec_from_dict({k: v for k, v in spec.items() if k not in ("run_id", "roles")}).profile


def _replanned(specs: dict[str, dict]) -> set[str]:
    """The run ids today's planner gives the grids the stored specs came from (their domain, seed, profile,
    model and data), every stage included."""
    from transfer.data.tasks import load_task_table

    table = load_task_table()
    fingerprints: dict[str, set] = {}
    for spec in specs.values():
        fingerprints.setdefault(spec["domain"], set()).update(tuple(fp) for fp in spec["data_fingerprints"])
    grids = {(s["domain"], s["seed"], _stored_profile(s), s["model"], s["code_version"], s.get("affinity_every") or 20,
              s.get("affinity_batches") or 1, s.get("affinity_epochs") or 0) for s in specs.values()}
    planned = set()
    for domain, seed, profile, model, code_version, every, batches, epochs in grids:
        runs = dedupe(expand_specs(table.domain(domain).tasks, tuple(ROLES), (seed,), profile=profile, model=model,
                                   domain=domain, fingerprints=tuple(sorted(fingerprints[domain])),
                                   code_version=code_version, affinity_every=every, affinity_batches=batches,
                                   affinity_epochs=epochs))
        planned |= {spec.run_id for _, spec in runs}
    return planned


def test_plan_gives_the_run_ids_of_the_legacy_store():
    specs = _stored_specs(LEGACY_STORE)
    planned = _replanned(specs)
    # Affinity runs are the one exception, on purpose: the tracker's version is part of their identity (these
    # predate the marginal affinity), so a plan gives them new ids and a resume re-measures them.
    tracked_ids = {rid for rid, s in specs.items() if s.get("affinity_every")}
    assert tracked_ids and not tracked_ids & planned
    assert planned >= set(specs) - tracked_ids


@pytest.mark.skipif(not list(COMMITTED.glob("runs/*/spec.json")), reason="no committed store")
def test_plan_gives_the_run_ids_of_the_committed_store():
    specs = _stored_specs(COMMITTED)
    assert set(specs) <= _replanned(specs)  # so the grid's command resumes the store, never redoes it


def test_grid_writes_roles_beside_the_spec_without_changing_run_ids(tmp_path, tiny_data_dir, fake_env):
    results = tmp_path / "results"
    assert grid.main(_args(results, tiny_data_dir, "--tasks", *TWO, "--devices", "cpu")) == 0
    store = ResultsStore(results)
    roles = {r.run_id: r.roles for r in store.records()}
    assert Counter(roles.values()) == {("single",): 2, ("pair", "all"): 1, ("finetune",): 2}
    for record in store.records():
        document = read_json(record.run.spec_file)
        assert document["roles"] == list(record.roles) and document["run_id"] == record.run_id
        assert worker.load_spec(store, record.run_id).run_id == record.run_id  # roles are not hashed


# ----------------------------------------------------------------------------------------------- damage

def _done_run(store: ResultsStore, run_id: str = "r1") -> RunFolder:
    store.try_claim(run_id, SPEC, "a")
    finish(store, run_id)
    store.release(run_id)
    assert store.is_done(run_id)
    return store.run(run_id)


DAMAGE = {
    "empty status": lambda run: run.status_file.write_text(""),
    "cut status": lambda run: run.status_file.write_text('{"status": "do'),
    "empty spec": lambda run: run.spec_file.write_text(""),
    "non-run spec": lambda run: run.spec_file.write_text('{"name": "something else"}'),
    "cut metrics": lambda run: run.metrics_file.write_text(run.metrics_file.read_text()[:20]),
    "empty metrics": lambda run: run.metrics_file.write_text(""),
    "cut predictions": lambda run: run.predictions_file("chemprot").write_text('{"uid": "u1", "gold": "a"}\n{"uid'),
    "missing predictions": lambda run: run.predictions_file("chemprot").unlink(),
    "predictions cut at a line end": lambda run: run.predictions_file("chemprot").write_text(
        run.predictions_file("chemprot").read_text().splitlines(keepends=True)[0]),
    "predictions not UTF-8": lambda run: run.predictions_file("chemprot").write_bytes(b'{"uid": "\xff"}\n' * 2),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_folder_is_named_never_done_and_redone_with_its_files_set_aside(tmp_path, damage):
    store = ResultsStore(tmp_path)
    run = _done_run(store)
    DAMAGE[damage](run)
    problem = run.damage()
    assert problem and str(run.path) in problem
    assert not store.is_done("r1") and store.state("r1") == "damaged"
    [record] = store.records()
    assert record.damage == problem and not record.done
    with open(store.write_scores_table(), encoding="utf-8") as handle:  # does not crash on it
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == (["damaged"] if record.spec else [])
    assert store.try_claim("r1", SPEC, "b", roles=("single",))
    [aside] = run.damaged_attempts()
    assert (aside / "why.txt").read_text().strip() == problem
    assert run.damage() is None and run.read_roles() == ("single",) and store.status("r1") == "running"


def test_predictions_cut_mid_line_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"uid": 1}\n{"uid": 2}\n{"ui')
    with pytest.raises(DamagedRunError, match=r"p.jsonl, line 3"):
        read_predictions(path)
    assert "p.jsonl, line 3" in predictions_damage(path, 3)
    path.write_text('{"uid": 1}\n{"uid": 2}\n{"ui"\n')  # cut, then a newline: the last record does not parse
    assert "p.jsonl, line 3" in predictions_damage(path)
    path.write_text('{"uid": 1}\n{"uid": 2}\n')
    assert predictions_damage(path, 2) is None and predictions_damage(path) is None
    assert "2 records, but metrics.json counts 3" in predictions_damage(path, 3)


def test_grid_redoes_a_damaged_run_and_keeps_the_damaged_files(tmp_path, tiny_data_dir, fake_env):
    results = tmp_path / "results"
    args = _args(results, tiny_data_dir, "--tasks", "chemprot", "--stages", "single", "--devices", "cpu")
    assert grid.main(args) == 0
    store = ResultsStore(results)
    [record] = store.records()
    record.run.metrics_file.write_text('{"tasks": {"chem')  # cut short: once counted as done forever
    assert grid.main(args) == 0
    assert len(read_fake_log(fake_env)) == 2 and store.is_done(record.run_id)
    [aside] = record.run.damaged_attempts()
    assert (aside / "metrics.json").read_text() == '{"tasks": {"chem'


def test_atomic_writes_flush_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    RunFolder(tmp_path).write_progress({"step": 1})
    assert events[:2] == ["fsync", "replace"]


def test_a_read_only_store_is_read_without_writing(tmp_path):
    store = ResultsStore(tmp_path / "store")
    _done_run(store)
    _done_run(store, "r2").metrics_file.write_text("")
    before = {p: p.stat().st_mtime_ns for p in store.root.rglob("*")}
    records = store.records()
    assert [r.damage is None for r in records] == [True, False]
    assert [r.metrics()["tasks"]["chemprot"]["test_score"] for r in records if r.done] == [0.5]
    assert {p: p.stat().st_mtime_ns for p in store.root.rglob("*")} == before


def test_scores_table_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch, caplog):
    store = ResultsStore(tmp_path)
    _done_run(store)

    def full(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("transfer.experiment.scores.write_text_atomic", full)
    with caplog.at_level(logging.WARNING):
        assert store.try_write_scores_table() is None
    assert "Read-only" in caplog.text


# ----------------------------------------------------------------------------------------------- resume

def _board_of(specs: list[tuple[tuple[str, ...], object]]) -> Board:
    return Board.from_plan([PlannedRun(spec, roles, 1) for roles, spec in specs])


def test_resuming_a_complete_store_without_encoders_runs_nothing(tmp_path, fake_env):
    from transfer.data.tasks import load_task_table

    shutil.copytree(LEGACY_STORE / "runs", tmp_path / "results" / "runs")
    store = ResultsStore(tmp_path / "results")
    assert not any(store.run(r.run_id).has_encoder() for r in store.records())
    specs = _stored_specs(LEGACY_STORE)
    sample = next(s for s in specs.values() if s["domain"] == "biomedical" and s["stage"] == "single")
    fingerprints = tuple(sorted({tuple(fp) for s in specs.values() for fp in s["data_fingerprints"]}))
    tasks = load_task_table().domain("biomedical").tasks
    runs = dedupe(expand_specs(tasks, grid.GRID_STAGES, (13,), profile=_stored_profile(sample),
                               model=sample["model"], domain="biomedical", fingerprints=fingerprints,
                               code_version=sample["code_version"]))
    assert {spec.run_id for _, spec in runs} <= set(specs)
    board = LocalScheduler(store, [Slot("cpu", None, 1)], GridOptions()).run(_board_of(runs))
    assert all(run.cached for run in board.runs.values())
    assert read_fake_log(fake_env) == []


def test_a_missing_encoder_is_redone_only_while_a_finetune_needs_it(tmp_path, tiny_data_dir, fake_env):
    results = tmp_path / "results"
    args = _args(results, tiny_data_dir, "--tasks", *TWO, "--stages", "all", "finetune", "--devices", "cpu")
    assert grid.main(args) == 0
    store = ResultsStore(results)
    mtl = next(r for r in store.records() if r.stage == "mtl")
    shutil.rmtree(mtl.run.encoder_dir)
    assert grid.main(args) == 0
    assert len(read_fake_log(fake_env)) == 3  # nothing rerun: every finetune is done
    child = next(r for r in store.records() if r.stage == "finetune")
    child.run.status_file.unlink()  # one finetune to do again: it needs the encoder, so the parent is redone
    assert grid.main(args) == 0
    assert [r["run_id"] for r in read_fake_log(fake_env)[3:]] == [mtl.run_id, child.run_id]


# ----------------------------------------------------------------------------------------------- claims

def test_a_claim_naming_a_live_unrelated_process_is_taken_over(tmp_path):
    store = ResultsStore(tmp_path)
    store.try_claim("r1", SPEC, "a")
    info = store.claim_info("r1")
    assert info["pid_start"] == claims.process_start(os.getpid()) and info["boot_id"] == claims.boot_id()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # the pid is alive but started at another time than the claim says: a reused pid
        reused = {**info, "pid": other.pid, "pid_start": claims.process_start(other.pid) - 1}
        store.run("r1").claim_file.write_text(json.dumps(reused))
        assert store.try_claim("r1", SPEC, "b") and store.claim_info("r1")["owner"] == "b"
        # the same live process, with its true start time: held
        store.run("r1").claim_file.write_text(json.dumps({**reused, "pid_start": claims.process_start(other.pid)}))
        assert not store.try_claim("r1", SPEC, "c")
        # an earlier boot: whatever lives at that pid now is not the claimer
        store.run("r1").claim_file.write_text(json.dumps({**reused, "pid_start": claims.process_start(other.pid),
                                                          "boot_id": "another-boot"}))
        assert store.try_claim("r1", SPEC, "d")
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_process_start_reads_a_command_name_with_spaces_and_parentheses(tmp_path):
    script = tmp_path / "a b) c"
    script.write_text("import time; time.sleep(30)")
    exe = tmp_path / "py (x) y"
    exe.symlink_to(sys.executable)
    proc = subprocess.Popen([str(exe), str(script)])
    try:
        assert isinstance(claims.process_start(proc.pid), int)
        assert claims.process_start(proc.pid) >= claims.process_start(os.getpid())
    finally:
        proc.kill()
        proc.wait()


def test_a_run_that_stays_held_is_reported_with_its_holder(tmp_path, caplog, monkeypatch):
    store = ResultsStore(tmp_path)
    spec = next(s for _, s in expand_specs(("chemprot",), ("single",), (1,), profile=load_profile("test"),
                                           model="m", domain=None))
    assert store.try_claim(spec.run_id, spec.to_dict(), "other-grid")  # this live process, another owner
    board = Board.from_plan([PlannedRun(spec, ("single",), 1)])
    local = LocalScheduler(store, [Slot("cpu", None, 1)], GridOptions())
    monkeypatch.setattr(scheduler, "HELD_REPORT_S", 0.0)
    with caplog.at_level(logging.WARNING):
        local._start_ready(board)
    run = board.runs[spec.run_id]
    assert run.state == "pending" and run.held_since is not None
    assert "held by other-grid" in caplog.text and f"pid {os.getpid()}" in caplog.text
    assert "its process is alive" in caplog.text


# ----------------------------------------------------------------------------------------------- full disk

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_recording_a_failure_is_logged_and_the_run_left_to_redo(tmp_path, monkeypatch, caplog):
    store = ResultsStore(tmp_path)
    assert store.try_claim("r1", SPEC, "grid")
    monkeypatch.setattr(RunFolder, "set_status", _enospc)
    with caplog.at_level(logging.ERROR):
        outcome, error = settle_run(store, "r1", "grid", -9)
    assert outcome == "failed" and "not recorded" in error
    assert "disk full" in caplog.text and "next grid redoes it" in caplog.text
    monkeypatch.undo()
    assert store.status("r1") == "running" and store.claim_info("r1") is None  # the next grid restarts it
    assert store.try_claim("r1", SPEC, "next-grid")


def test_grid_survives_a_full_disk_when_claiming_and_recording(tmp_path, tiny_data_dir, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_KILL", "single-chemprot")
    real = RunFolder.set_status

    def full_for_failures(self, status, **info):
        if status == "failed":
            _enospc()
        return real(self, status, **info)

    monkeypatch.setattr(RunFolder, "set_status", full_for_failures)
    results = tmp_path / "results"
    args = _args(results, tiny_data_dir, "--tasks", *TWO, "--stages", "single", "--devices", "cpu")
    assert grid.main(args) == 1  # in-process grid: the monkeypatch applies to the grid's own writes
    store = ResultsStore(results)
    statuses = {r.run_id.split("-s1-")[0]: r.status for r in store.records()}
    assert statuses == {"single-chemprot": "running", "single-ddi2013-type": "done"}
    monkeypatch.setattr(RunFolder, "set_status", real)
    monkeypatch.delenv("FAKE_TRAIN_KILL")
    assert grid.main(args) == 0  # the unrecorded failure is simply redone
    assert [r["run_id"].split("-s1-")[0] for r in read_fake_log(fake_env)] == ["single-ddi2013-type", "single-chemprot"]


# ----------------------------------------------------------------------------------------------- Dask

def test_local_dask_cluster_listens_on_loopback_only():
    pytest.importorskip("distributed")
    psutil = pytest.importorskip("psutil")

    def listening() -> set[str]:
        return {c.laddr.ip for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}

    before = listening()
    with dask_client(None) as client:
        opened = listening() - before
        addresses = [client.scheduler.address, *client.scheduler_info()["workers"]]
        dashboard = client.dashboard_link
    assert opened and opened <= {"127.0.0.1"}, opened  # scheduler, worker and dashboard
    assert all(address.startswith("tcp://127.0.0.1:") for address in addresses), addresses
    assert dashboard is None or dashboard.startswith("http://127.0.0.1:")


def test_grid_on_the_local_dask_cluster_runs_the_plan(tmp_path, tiny_data_dir, fake_env):
    pytest.importorskip("distributed")
    results = tmp_path / "results"
    assert grid.main(_args(results, tiny_data_dir, "--tasks", *TWO, "--stages", "all", "finetune",
                           "--backend", "dask")) == 0
    assert [r["run_id"].split("-")[0] for r in sorted(read_fake_log(fake_env), key=lambda r: r["start"])][0] == "mtl"
    assert {r.status for r in ResultsStore(results).records()} == {"done"}


# ----------------------------------------------------------------------------------------------- CLI errors

def _no_traceback(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_grid_reports_a_malformed_task_file_in_one_line(tmp_path, tiny_data_dir, capsys):
    bad = tmp_path / "tasks.toml"
    bad.write_text("[tasks.x\nreader = 1\n")
    line = _no_traceback(capsys, grid.main(_args(tmp_path / "r", tiny_data_dir, "--task-file", str(bad),
                                                  "--tasks", "chemprot", "--dry-run")))
    assert str(bad) in line


def test_affinity_refuses_stages_in_one_line(capsys):
    line = _no_traceback(capsys, affinity.main(["--domain", "biomedical", "--stages", "single"]))
    assert "plans only the affinity run" in line


def test_worker_reports_a_run_without_spec_in_one_line(tmp_path, capsys):
    line = _no_traceback(capsys, worker.main(["--results", str(tmp_path), "--run-id", "nope"]))
    assert "spec.json" in line and "does not exist" in line
    store = ResultsStore(tmp_path)
    store.run("cut").path.mkdir(parents=True)
    store.run("cut").spec_file.write_text('{"tasks": ')
    assert "spec.json" in _no_traceback(capsys, worker.main(["--results", str(tmp_path), "--run-id", "cut"]))


def test_dry_run_never_imports_torch(tmp_path, tiny_data_dir):
    code = ("import sys; from transfer import grid; "
            f"code = grid.main(['--results', {str(tmp_path / 'r')!r}, '--data-dir', {str(tiny_data_dir)!r}, "
            "'--profile', 'test', '--domain', 'biomedical', '--devices', 'cpu', '--dry-run']); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
            "print('HEAVY', heavy); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "15 runs" in out.stdout
