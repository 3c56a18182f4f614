"""The feature cache: no pickle, checked on load, rebuilt on any problem, and a failed write is only a warning."""

from __future__ import annotations

import errno
import logging
import pickle
import shutil

import numpy as np
import pytest

from transfer.data.readers import read_split
from transfer.data.tasks import locate_tasks
from transfer.training import features as features_module
from transfer.training.features import _cache_key, cache_path, load_split

MAX_LENGTH = 40


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A cache folder of this test's own."""
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


def _paths(table, tiny_data_dir, name):
    domain = "clinical-public" if name in table.domain("clinical-public").tasks else None
    return locate_tasks(table, [name], domain=domain, data_dir=tiny_data_dir)[name]


def _target(table, tokenizer, tiny_data_dir, name, split):
    task = table.task(name)
    path = _paths(table, tiny_data_dir, name)[split]
    return cache_path(task, split, _cache_key(task, path, tokenizer, MAX_LENGTH))


def _same_features(a, b) -> bool:
    simple = ("task_name", "truncated_words", "pieceless_words")
    if any(getattr(a, f) != getattr(b, f) for f in simple):
        return False
    ragged = ("input_ids", "token_type_ids", "word_starts", "word_numbers")
    if any(len(getattr(a, f)) != len(getattr(b, f)) or
           not all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(getattr(a, f), getattr(b, f)))
           for f in ragged):
        return False
    if not (np.array_equal(a.example_index, b.example_index) and np.array_equal(a.word_offset, b.word_offset)):
        return False
    if len(a.targets) != len(b.targets):
        return False
    for x, y in zip(a.targets, b.targets):
        if isinstance(x, np.ndarray):
            if not (isinstance(y, np.ndarray) and np.array_equal(x, y)):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


@pytest.mark.parametrize("name", ["chemprot", "bc5cdr-chemical", "biosses", "hoc", "mednli", "shareclefe"])
def test_cache_round_trip_gives_the_same_examples_and_features(cache, tokenizer, table, tiny_data_dir, name):
    task, path = table.task(name), _paths(table, tiny_data_dir, name)["train"]
    examples, feats, hit = load_split(task, "train", path, tokenizer, MAX_LENGTH)
    assert not hit
    examples2, feats2, hit2 = load_split(task, "train", path, tokenizer, MAX_LENGTH)
    assert hit2
    assert examples2 == examples and examples2 == read_split(path, task)
    assert _same_features(feats, feats2)
    # the file is a plain .npz: it opens without pickle
    with np.load(_target(table, tokenizer, tiny_data_dir, name, "train"), allow_pickle=False) as stored:
        assert all(stored[k].dtype != object for k in stored.files)


class _Planted:
    """Unpickling this creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_never_runs_and_is_rebuilt(cache, tokenizer, table, tiny_data_dir, tmp_path, caplog):
    task, path = table.task("chemprot"), _paths(table, tiny_data_dir, "chemprot")["test"]
    target = _target(table, tokenizer, tiny_data_dir, "chemprot", "test")
    target.parent.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "pickle-ran"
    target.write_bytes(pickle.dumps(_Planted(marker)))
    with caplog.at_level(logging.WARNING, logger="transfer.training.features"):
        examples, _, hit = load_split(task, "test", path, tokenizer, MAX_LENGTH)
    assert not marker.exists()
    assert not hit and examples == read_split(path, task)
    assert "unusable" in caplog.text and "rebuilding" in caplog.text
    assert load_split(task, "test", path, tokenizer, MAX_LENGTH)[2]  # the rebuilt file is used next time


def test_dev_cache_copied_over_the_test_one_is_detected(cache, tokenizer, table, tiny_data_dir, caplog):
    task, paths = table.task("chemprot"), _paths(table, tiny_data_dir, "chemprot")
    load_split(task, "dev", paths["dev"], tokenizer, MAX_LENGTH)
    load_split(task, "test", paths["test"], tokenizer, MAX_LENGTH)
    dev_file = _target(table, tokenizer, tiny_data_dir, "chemprot", "dev")
    test_file = _target(table, tokenizer, tiny_data_dir, "chemprot", "test")
    shutil.copyfile(dev_file, test_file)
    with caplog.at_level(logging.WARNING, logger="transfer.training.features"):
        examples, _, hit = load_split(task, "test", paths["test"], tokenizer, MAX_LENGTH)
    assert not hit
    assert examples == read_split(paths["test"], task) != read_split(paths["dev"], task)
    assert "split 'dev'" in caplog.text


@pytest.mark.parametrize("keep", [0, 0.5, 0.99])
def test_truncated_cache_file_is_rebuilt(cache, tokenizer, table, tiny_data_dir, keep):
    task, path = table.task("bc5cdr-chemical"), _paths(table, tiny_data_dir, "bc5cdr-chemical")["train"]
    examples, feats, _ = load_split(task, "train", path, tokenizer, MAX_LENGTH)
    target = _target(table, tokenizer, tiny_data_dir, "bc5cdr-chemical", "train")
    data = target.read_bytes()
    target.write_bytes(data[:int(len(data) * keep)])
    examples2, feats2, hit = load_split(task, "train", path, tokenizer, MAX_LENGTH)
    assert not hit and examples2 == examples and _same_features(feats, feats2)
    assert target.read_bytes() == data  # rebuilt in full
    assert load_split(task, "train", path, tokenizer, MAX_LENGTH)[2]


def test_cache_path_that_is_a_folder_is_replaced(cache, tokenizer, table, tiny_data_dir):
    task, path = table.task("chemprot"), _paths(table, tiny_data_dir, "chemprot")["dev"]
    target = _target(table, tokenizer, tiny_data_dir, "chemprot", "dev")
    (target / "inside").mkdir(parents=True)
    assert not load_split(task, "dev", path, tokenizer, MAX_LENGTH)[2]
    assert target.is_file() and load_split(task, "dev", path, tokenizer, MAX_LENGTH)[2]


def test_full_disk_on_cache_write_only_warns(cache, tokenizer, table, tiny_data_dir, monkeypatch, caplog):
    task, path = table.task("chemprot"), _paths(table, tiny_data_dir, "chemprot")["train"]

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(features_module.np, "savez", no_space)
    with caplog.at_level(logging.WARNING, logger="transfer.training.features"):
        examples, feats, hit = load_split(task, "train", path, tokenizer, MAX_LENGTH)
    assert not hit and len(feats) == len(examples) == len(read_split(path, task))
    assert "could not write the feature cache" in caplog.text and "No space left" in caplog.text
    assert list(cache.iterdir()) == []  # no partial or temporary file left behind


def test_key_covers_negative_label_and_tokenizers_version(cache, tokenizer, table, tiny_data_dir, monkeypatch):
    task, path = table.task("bc5cdr-chemical"), _paths(table, tiny_data_dir, "bc5cdr-chemical")["train"]
    key = _cache_key(task, path, tokenizer, MAX_LENGTH)
    from dataclasses import replace

    assert _cache_key(replace(task, negative_label="B"), path, tokenizer, MAX_LENGTH) != key
    monkeypatch.setattr(features_module, "_tokenizers_version", lambda: "0.0.0-other")
    assert _cache_key(task, path, tokenizer, MAX_LENGTH) != key


def test_cache_with_out_of_range_word_numbers_is_rebuilt(cache, tokenizer, table, tiny_data_dir):
    """A file that parses but whose bookkeeping cannot be right (here: word numbers past the sentence) is rebuilt."""
    task, path = table.task("bc5cdr-chemical"), _paths(table, tiny_data_dir, "bc5cdr-chemical")["test"]
    examples, feats, _ = load_split(task, "test", path, tokenizer, MAX_LENGTH)
    target = _target(table, tokenizer, tiny_data_dir, "bc5cdr-chemical", "test")
    with np.load(target, allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files}
    arrays["word_numbers"] = arrays["word_numbers"] + 10_000
    with open(target, "wb") as handle:
        np.savez(handle, **arrays)
    examples2, feats2, hit = load_split(task, "test", path, tokenizer, MAX_LENGTH)
    assert not hit and _same_features(feats, feats2)
