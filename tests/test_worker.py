"""The grid's worker: claim hand-over, done/failed records, progress.json, the TRANSFER_TRAIN_FN hook.

``fake_train`` below is also the fake training function of the grid tests (``TRANSFER_TRAIN_FN=
test_worker:fake_train``); environment variables steer it:

* ``FAKE_TRAIN_LOG``: file to append one JSON line per finished run (run id, CUDA_VISIBLE_DEVICES, times);
* ``FAKE_TRAIN_SLEEP``: seconds each run takes;
* ``FAKE_TRAIN_FAIL``: runs whose id contains this string raise;
* ``FAKE_TRAIN_KILL``: runs whose id contains this string kill their own process (SIGKILL, like the OOM killer).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path


from transfer.scheduling import worker
from transfer.experiment.config import RunSpec, load_profile
from transfer.experiment.atomic import read_json
from transfer.experiment.store import ResultsStore



def fake_train(spec, *, data_dir=None, device=None, reporter=None, table=None, parent_dir=None, encoder_dir=None):
    """Stands in for transfer.training.loop.train: reports progress, sleeps, records what it saw, maybe raises."""
    start = time.time()
    if data_dir:  # as the readers do: the file read, under the resolved data folder
        logging.getLogger("fake_train").info("read 3 examples from %s", Path(data_dir).resolve() / "t" / "train.tsv")
    reporter.start({"run_id": spec.run_id, "epochs": spec.epochs, "steps": 2, "device": device})
    if spec.stage == "finetune" and not (Path(parent_dir) / "encoder" / "weights.txt").is_file():
        raise FileNotFoundError(f"no parent encoder in {parent_dir}")
    time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0")) / 2)
    reporter.step(1, 2, 0.5, 10.0)
    time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0")) / 2)
    fail = os.environ.get("FAKE_TRAIN_FAIL")
    if fail and fail in spec.run_id:
        raise RuntimeError(f"fake failure of {spec.run_id}")
    kill = os.environ.get("FAKE_TRAIN_KILL")
    if kill and kill in spec.run_id:
        os.kill(os.getpid(), signal.SIGKILL)
    reporter.step(2, 2, 0.25, 10.0)
    reporter.epoch_end(1, {name: 0.5 for name in spec.tasks})
    if spec.save_encoder:
        Path(encoder_dir).mkdir(parents=True, exist_ok=True)
        (Path(encoder_dir) / "weights.txt").write_text(spec.run_id)
    record = {"run_id": spec.run_id, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": device,
              "threads": os.environ.get("OMP_NUM_THREADS"), "start": start, "end": time.time(), "pid": os.getpid(),
              "parent_dir": str(parent_dir) if parent_dir else None}
    if os.environ.get("FAKE_TRAIN_LOG"):
        with open(os.environ["FAKE_TRAIN_LOG"], "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    result = {
        "run_id": spec.run_id, "spec": spec.to_dict(),
        "tasks": {name: {"metric": "micro_f1", "best_epoch": 1, "dev": {"micro_f1": 0.5}, "test": {"micro_f1": 0.4},
                         "dev_score": 0.5, "test_score": 0.4} for name in spec.tasks},
        "history": [], "predictions": {name: [{"uid": "u1", "gold": "a", "pred": "a"}] for name in spec.tasks},
        "train": {"train_seconds": 0.1, "wall_seconds": 0.1, "seen": record},
    }
    reporter.finish(result)
    return result


def read_fake_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _spec(tasks=("chemprot",), stage="single", **extra) -> RunSpec:
    return RunSpec(tasks=tuple(tasks), stage=stage, profile=load_profile("test"), seed=1, domain="biomedical", **extra)


def _claim(store: ResultsStore, spec: RunSpec, owner: str = "grid-test") -> str:
    assert store.try_claim(spec.run_id, spec.to_dict(), owner)
    return spec.run_id


def test_worker_runs_claimed_run_and_records_done(tmp_path, fake_env):
    store = ResultsStore(tmp_path / "results")
    run_id = _claim(store, _spec())
    code = worker.main(["--results", str(store.root), "--run-id", run_id, "--owner", "grid-test", "--device", "cpu"])
    assert code == worker.EXIT_DONE
    folder = store.folder(run_id)
    assert store.is_done(run_id)
    assert not (folder / "claim").exists()
    assert read_json(folder / "metrics.json")["tasks"]["chemprot"]["test_score"] == 0.4
    assert (folder / "predictions" / "chemprot.jsonl").is_file()
    progress = read_json(folder / "progress.json")
    assert progress["phase"] == "finished" and progress["step"] == 2 and progress["dev_scores"] == {"chemprot": 0.5}
    assert "run " + run_id in (folder / "log.txt").read_text()
    assert read_fake_log(fake_env)[0]["device"] == "cpu"


def test_the_run_log_names_no_folder_of_the_machine(tmp_path, fake_env):
    store = ResultsStore(tmp_path / "results")
    data = tmp_path / "data"
    data.mkdir()
    run_id = _claim(store, _spec())
    assert worker.main(["--results", str(store.root), "--run-id", run_id, "--owner", "grid-test", "--device", "cpu",
                        "--data-dir", str(data)]) == worker.EXIT_DONE
    log = (store.folder(run_id) / "log.txt").read_text()
    assert "read 3 examples from <data-dir>/t/train.tsv" in log
    assert str(tmp_path) not in log and str(tmp_path.resolve()) not in log


def test_portable_formatter_prefers_the_longest_folder():
    import logging as logging_module

    formatter = worker.PortableFormatter("%(message)s", {"<store>": Path("/x/project/results"), "~": Path("/x")})
    record = logging_module.LogRecord("t", logging_module.INFO, __file__, 1, "%s and %s", ("/x/project/results/runs/a",
                                      "/x/other"), None)
    assert formatter.format(record) == "<store>/runs/a and ~/other"


def test_worker_records_failure_with_traceback(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAIL", "chemprot")
    store = ResultsStore(tmp_path / "results")
    run_id = _claim(store, _spec())
    code = worker.main(["--results", str(store.root), "--run-id", run_id, "--owner", "grid-test"])
    assert code == worker.EXIT_FAILED
    status = read_json(store.folder(run_id) / "status.json")
    assert status["status"] == "failed"
    assert "RuntimeError: fake failure" in status["traceback"] and status["error"].startswith("RuntimeError")
    assert not (store.folder(run_id) / "claim").exists()
    assert "Traceback" in (store.folder(run_id) / "log.txt").read_text()


def test_sigterm_while_torch_imports_is_a_clean_interruption(tmp_path, fake_env, monkeypatch):
    # The grid stops its workers with SIGTERM, whose handler raises Interrupted wherever the worker is; a worker
    # still setting up torch (its import takes seconds) once let that escape as a traceback in log.txt.
    import torch

    from transfer.cli import Interrupted

    def interrupted(_threads):
        raise Interrupted("signal SIGTERM")

    monkeypatch.setattr(torch, "set_num_threads", interrupted)
    store = ResultsStore(tmp_path / "results")
    run_id = _claim(store, _spec())
    code = worker.main(["--results", str(store.root), "--run-id", run_id, "--owner", "grid-test", "--threads", "1"])
    assert code == worker.EXIT_INTERRUPTED
    log = (store.folder(run_id) / "log.txt").read_text()
    assert "interrupted; left 'running'" in log and "Traceback" not in log
    assert read_json(store.folder(run_id) / "status.json")["status"] == "running"
    assert not (store.folder(run_id) / "claim").exists()


def test_worker_refuses_a_claim_it_was_not_given(tmp_path, fake_env):
    store = ResultsStore(tmp_path / "results")
    run_id = _claim(store, _spec(), owner="someone-else")
    assert worker.main(["--results", str(store.root), "--run-id", run_id, "--owner", "grid-test"]) == worker.EXIT_NOT_CLAIMED
    assert store.claim_info(run_id)["owner"] == "someone-else"
    assert read_fake_log(fake_env) == []


def test_worker_without_owner_claims_itself_and_skips_done_runs(tmp_path, fake_env):
    store = ResultsStore(tmp_path / "results")
    run_id = _claim(store, _spec())
    store.release(run_id)  # a spec.json and a status, but nobody holds it (e.g. its grid died)
    args = ["--results", str(store.root), "--run-id", run_id]
    assert worker.main(args) == worker.EXIT_DONE
    assert worker.main(args) == worker.EXIT_NOT_CLAIMED
    assert len(read_fake_log(fake_env)) == 1


def test_worker_gives_finetune_its_parent_folder(tmp_path, fake_env):
    store = ResultsStore(tmp_path / "results")
    parent = _spec(("chemprot", "ddi2013-type"), "mtl", save_encoder=True)
    child = _spec(stage="finetune", parent=parent.run_id)
    for spec in (parent, child):
        run_id = _claim(store, spec)
        assert worker.main(["--results", str(store.root), "--run-id", run_id, "--owner", "grid-test"]) == 0
    assert (store.folder(parent.run_id) / "encoder" / "weights.txt").is_file()
    assert read_fake_log(fake_env)[1]["parent_dir"] == str(store.folder(parent.run_id))


def test_bad_train_fn_hook_is_a_recorded_failure(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv(worker.TRAIN_FN_ENV, "no_colon_here")
    store = ResultsStore(tmp_path / "results")
    run_id = _claim(store, _spec())
    assert worker.main(["--results", str(store.root), "--run-id", run_id, "--owner", "grid-test"]) == worker.EXIT_FAILED
    assert "module:function" in read_json(store.folder(run_id) / "status.json")["error"]


def test_load_spec_round_trips_the_stored_spec(tmp_path):
    store = ResultsStore(tmp_path / "results")
    spec = _spec(("chemprot", "ddi2013-type"), "mtl", save_encoder=True)
    _claim(store, spec)
    assert worker.load_spec(store, spec.run_id) == spec


def test_progress_reporter_throttles_step_writes(tmp_path):
    reporter = worker.ProgressFileReporter(tmp_path, every_s=3600)
    reporter.start({"run_id": "r", "epochs": 3, "steps": 10, "device": "cpu"})
    reporter.step(1, 10, 0.9, 5.0)  # within the throttle window: not written
    assert read_json(tmp_path / "progress.json")["step"] == 0
    reporter.epoch_end(1, {"chemprot": 0.25})
    info = read_json(tmp_path / "progress.json")
    assert (info["epoch"], info["epochs"], info["step"], info["total_steps"]) == (1, 3, 1, 10)
    assert info["dev_scores"] == {"chemprot": 0.25}
