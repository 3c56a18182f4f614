"""Shared fixtures: a tiny random BERT and its tokenizer, the task table, a miniature data directory and an
isolated feature cache, and the grid tests' fake training function."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from transfer.scheduling import worker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_data import SHARED, make_tiny_data_dir  # noqa: E402
from tiny_model import build_tiny_bert  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT with the MiniLM vocabulary, randomly initialised from seed 0."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """The shared data layout with 24 examples per split (cut from the real files)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set TRANSFER_DATA_DIR)")
    return make_tiny_data_dir(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def table():
    """The built-in task table."""
    from transfer.data.tasks import load_task_table

    return load_task_table()


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    """The tiny BERT's fast tokenizer."""
    from transfer.experiment.encoders import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Feature cache in a temporary folder, so tests never read a user's cache."""
    previous = os.environ.get("TRANSFER_CACHE_DIR")
    os.environ["TRANSFER_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))
    yield
    if previous is None:
        os.environ.pop("TRANSFER_CACHE_DIR", None)
    else:
        os.environ["TRANSFER_CACHE_DIR"] = previous


FAKE_FN = "test_worker:fake_train"  # ``fake_train`` in test_worker.py, imported by worker subprocesses too


@pytest.fixture
def fake_env(monkeypatch, tmp_path):
    """The fake training function, importable from tests/ here and in worker subprocesses; returns its log file."""
    monkeypatch.setenv(worker.TRAIN_FN_ENV, FAKE_FN)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(tmp_path / "fake-log.jsonl"))
    monkeypatch.delenv("FAKE_TRAIN_FAIL", raising=False)
    monkeypatch.delenv("FAKE_TRAIN_KILL", raising=False)
    monkeypatch.delenv("FAKE_TRAIN_SLEEP", raising=False)
    return tmp_path / "fake-log.jsonl"
