"""``python -m transfer.train``: every user mistake is one ``error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transfer.train import main


@pytest.fixture()
def common(tiny_model_dir, tiny_data_dir):
    return ["--profile", "test", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--quiet"]


def _refused(capsys, argv, *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.mark.parametrize("case, argv, expected", [
    ("unknown profile", ["--profile", "nosuch"], ["unknown profile 'nosuch'"]),
    ("set without =", ["--set", "epochs"], ["--set epochs: expected key=value"]),
    ("set unknown key", ["--set", "lr=3"], ["unknown profile key 'lr'"]),
    ("set float for int", ["--set", "epochs=2.5"], ["epochs must be a whole number, got 2.5"]),
    ("set bool for int", ["--set", "batch_size=true"], ["batch_size must be a whole number, got the boolean true"]),
    ("set nan", ["--set", "learning_rate=nan"], ["learning_rate must be a finite number"]),
    ("set word for int", ["--set", "epochs=abc"], ["epochs must be a whole number, got 'abc'"]),
    ("seed out of range", ["--seed", "-1"], ["seed must be a whole number from 0"]),
    ("threads 0", ["--threads", "0"], ["--threads: must be at least 1"]),
    ("bad device", ["--device", "gpu"], ["--device gpu: expected auto, cpu"]),
    ("unknown task", ["--tasks", "nosuch"], ["argument --tasks: invalid choice: 'nosuch'"]),
    ("model path missing", ["--model", "./no/such/model"], ["./no/such/model: model folder does not exist"]),
    ("max_length over positions", ["--set", "max_length=256"], ["max_length = 256 exceeds the 128 positions"]),
])
def test_bad_flags_and_values(capsys, common, case, argv, expected):
    tasks = [] if "--tasks" in argv else ["--tasks", "chemprot"]
    _refused(capsys, [*tasks, *common, *argv], *expected)


def test_cuda_device_that_is_not_there(capsys, common):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    _refused(capsys, ["--tasks", "chemprot", *common, "--device", "cuda:0"], "no CUDA device is visible")


def test_bad_profile_file(capsys, common, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("epochs = 2\nbatch_size = 4.5\n")
    _refused(capsys, ["--tasks", "chemprot", *common, "--profile", str(path)], str(path), "batch_size must be a whole")
    path.write_text("epochs = [\n")
    _refused(capsys, ["--tasks", "chemprot", *common, "--profile", str(path)], str(path), "not valid TOML")


@pytest.mark.parametrize("body, expected", [
    ('labels = "BIO"', "labels must be a list of strings"),
    ("labels = 5", "labels must be a list of strings"),
])
def test_bad_task_file(capsys, common, tmp_path, body, expected):
    path = tmp_path / "tasks.toml"
    path.write_text(f'[tasks.mine]\ndomain = "biomedical"\nkind = "classification"\nreader = "relation"\n'
                    f'metric = "accuracy"\n{body}\n')
    _refused(capsys, ["--tasks", "chemprot", *common, "--task-file", str(path)], str(path), expected)


def test_missing_data(capsys, common, tmp_path):
    argv = ["--tasks", "chemprot", *common]
    argv[argv.index("--data-dir") + 1] = str(tmp_path / "nowhere")
    _refused(capsys, argv, "data for biomedical is missing", "chemprot: folder")


def test_malformed_data_file_names_its_line(capsys, common, tiny_data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "blue" / "chemprot", data / "blue" / "chemprot")
    train = data / "blue" / "chemprot" / "train.tsv"
    lines = train.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace("\t", '\t"', 1)  # a stray opening quote on line 4
    train.write_text("".join(lines))
    argv = ["--tasks", "chemprot", *common]
    argv[argv.index("--data-dir") + 1] = str(data)
    _refused(capsys, argv, f"{train}, line 4: malformed double quotes")


def test_bad_parent(capsys, common, tmp_path):
    base = ["--tasks", "chemprot", *common]
    _refused(capsys, [*base, "--stage", "finetune", "--parent", str(tmp_path / "nowhere")], "folder does not exist")
    run = tmp_path / "run"
    run.mkdir()
    _refused(capsys, [*base, "--stage", "finetune", "--parent", str(run)], "spec.json: missing")
    (run / "spec.json").write_text('{"tasks": ["chemprot"], "stage": "mt')
    (run / "encoder").mkdir()
    (run / "encoder" / "config.json").write_text("{}")
    _refused(capsys, [*base, "--stage", "finetune", "--parent", str(run)], "spec.json: not a")
    (run / "spec.json").write_text(json.dumps({"tasks": ["chemprot"]}))
    _refused(capsys, [*base, "--stage", "finetune", "--parent", str(run)], "spec.json: not a")
    _refused(capsys, [*base, "--stage", "single", "--parent", str(run)], "only a finetune run starts from a parent")
    (run / "spec.json").unlink()
    shutil.rmtree(run / "encoder")
    (run / "spec.json").write_text("{}")
    _refused(capsys, [*base, "--stage", "finetune", "--parent", str(run)], "has no saved encoder")


def test_debug_shows_the_traceback(common):
    with pytest.raises(Exception, match="must be at least 1"):
        main(["--tasks", "chemprot", *common, "--threads", "0", "--debug"])


def test_a_real_process_prints_one_line(tiny_model_dir, tiny_data_dir):
    env = {**os.environ, "TRANSFER_DATA_DIR": str(tiny_data_dir)}
    proc = subprocess.run([sys.executable, "-m", "transfer.train", "--tasks", "chemprot", "--profile", "test",
                           "--model", str(tiny_model_dir), "--set", "epochs=1.5"],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --set: profile 'test': epochs must be a whole number, got 1.5"]
