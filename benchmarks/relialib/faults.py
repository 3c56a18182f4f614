"""The faults injected into the feature cache and into data files, words without word pieces included: ``Fault``
(one fault and whether it was survived) and its builders."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relialib.cases import Env


@dataclass
class Fault:
    group: str
    name: str
    survived: bool = False
    detail: str = ""


def _tokenizer(env: Env):
    from transfer.experiment.encoders import load_tokenizer

    return load_tokenizer(str(env.model))


def cache_faults(env: Env) -> list[Fault]:
    from transfer.data.readers import read_split
    from transfer.data.tasks import load_task_table, locate_tasks
    from transfer.training import features as feats

    table = load_task_table()
    tokenizer = _tokenizer(env)
    task = table.task("chemprot")
    paths = locate_tasks(table, ["chemprot"], data_dir=env.data)["chemprot"]
    max_length = 32
    faults = []

    def fresh_cache(name: str) -> Path:
        folder = env.work / "cache" / name
        os.environ["TRANSFER_CACHE_DIR"] = str(folder)
        return folder

    def target(split: str) -> Path:
        return feats.cache_path(task, split, feats._cache_key(task, paths[split], tokenizer, max_length))

    def check(name: str, damage: Callable[[], None], split: str = "test", extra: Callable[[], bool] | None = None):
        fresh_cache(name.replace(" ", "-"))
        feats.load_split(task, "dev", paths["dev"], tokenizer, max_length)
        feats.load_split(task, split, paths[split], tokenizer, max_length)
        fault = Fault("feature cache", name)
        try:
            damage()
            examples, features, _ = feats.load_split(task, split, paths[split], tokenizer, max_length)
            right = examples == read_split(paths[split], task) and len(features) == len(examples)
            again = feats.load_split(task, split, paths[split], tokenizer, max_length)[2]  # rebuilt and usable
            fault.survived = bool(right and again and (extra() if extra else True))
            fault.detail = "right examples, cache rebuilt" if fault.survived else "wrong data or not rebuilt"
        except Exception as exc:  # noqa: BLE001
            fault.detail = f"{type(exc).__name__}: {exc}"
        faults.append(fault)

    marker = env.work / "pickle-ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    check("planted pickle", lambda: target("test").write_bytes(pickle.dumps(Planted())),
          extra=lambda: not marker.exists())
    check("dev file copied over the test file", lambda: shutil.copyfile(target("dev"), target("test")))
    check("truncated to half", lambda: target("test").write_bytes(target("test").read_bytes()[
        :len(target("test").read_bytes()) // 2]))
    check("emptied", lambda: target("test").write_bytes(b""))
    check("random bytes", lambda: target("test").write_bytes(os.urandom(4096)))

    def folder_in_place():
        target("test").unlink()
        (target("test") / "x").mkdir(parents=True)

    check("a folder in its place", folder_in_place)

    def foreign_npz():
        import numpy as np

        with open(target("test"), "wb") as handle:
            np.savez(handle, meta=np.frombuffer(b'{"format": "other"}', dtype=np.uint8), input_ids=np.zeros(3))

    check("a foreign .npz", foreign_npz)

    # a full disk when the cache is written: the run must go on without it
    fresh_cache("full-disk")
    fault = Fault("feature cache", "full disk on write")
    real = feats.np.savez

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    feats.np.savez = no_space
    try:
        examples, features, _ = feats.load_split(task, "test", paths["test"], tokenizer, max_length)
        left = [p for p in (env.work / "cache" / "full-disk").rglob("*") if p.is_file()]
        fault.survived = examples == read_split(paths["test"], task) and not left
        fault.detail = "warned, no partial file" if fault.survived else f"left {left}"
    except Exception as exc:  # noqa: BLE001
        fault.detail = f"{type(exc).__name__}: {exc}"
    finally:
        feats.np.savez = real
    faults.append(fault)

    fault = Fault("feature cache", "cache folder is a file")
    blocker = env.work / "cache" / "is-a-file"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("x", encoding="utf-8")
    os.environ["TRANSFER_CACHE_DIR"] = str(blocker)
    try:
        examples, _, _ = feats.load_split(task, "test", paths["test"], tokenizer, max_length)
        fault.survived = examples == read_split(paths["test"], task)
        fault.detail = "warned, ran without the cache"
    except Exception as exc:  # noqa: BLE001
        fault.detail = f"{type(exc).__name__}: {exc}"
    faults.append(fault)
    os.environ["TRANSFER_CACHE_DIR"] = str(env.work / "cache" / "main")
    return faults


def data_faults(env: Env) -> list[Fault]:
    """Faults in full-size copies of the shared data files."""
    from tiny_data import SHARED

    from transfer.data.readers import DataFormatError, read_split
    from transfer.data.tasks import load_task_table

    table = load_task_table()
    faults = []
    folder = env.work / "data-faults"
    folder.mkdir()
    sources = {"chemprot": SHARED / "blue/chemprot/dev.tsv", "bc5cdr-chemical": SHARED / "blue/bc5cdr-chemical/dev.tsv",
               "biosses": SHARED / "blue/biosses/dev.tsv", "hoc": SHARED / "blue/hoc/dev.tsv",
               "mednli": SHARED / "clinical-public/mednli/dev.tsv"}

    def refused_at(task: str, data: bytes, line: int, name: str) -> None:
        path = folder / f"{task}-{len(faults)}.tsv"
        path.write_bytes(data)
        fault = Fault("data file", f"{task}: {name}")
        try:
            read_split(path, table.task(task))
            fault.detail = "read without an error"
        except DataFormatError as exc:
            fault.survived = exc.line == line
            fault.detail = str(exc).replace(str(path), "<file>")
        faults.append(fault)

    def same_as_clean(task: str, data: bytes, name: str) -> None:
        path = folder / f"{task}-{len(faults)}.tsv"
        path.write_bytes(data)
        fault = Fault("data file", f"{task}: {name}")
        try:
            fault.survived = read_split(path, table.task(task)) == read_split(sources[task], table.task(task))
            fault.detail = "read exactly as the clean file" if fault.survived else "read differently"
        except Exception as exc:  # noqa: BLE001
            fault.detail = f"{type(exc).__name__}: {exc}"
        faults.append(fault)

    lines = sources["chemprot"].read_bytes().split(b"\n")
    two = list(lines)
    for number in (101, 140):
        two[number - 1] = two[number - 1].replace(b"\t", b'\t"', 1)
    refused_at("chemprot", b"\n".join(two), 101, "two stray quotes (full dev file)")
    for task, source in sources.items():
        raw = source.read_bytes().split(b"\n")
        number = min(20, len(raw) - 2)  # BIOSSES dev has 17 lines
        while not raw[number - 1].strip():
            number += 1
        raw[number - 1] = raw[number - 1].replace(b"\t", b"\xff\t", 1)
        refused_at(task, b"\n".join(raw), number, f"bad byte on line {number}")
    for task, source in sources.items():
        same_as_clean(task, b"\xef\xbb\xbf" + source.read_bytes(), "byte-order mark")
    same_as_clean("chemprot", sources["chemprot"].read_bytes().replace(b"\n", b"\r\n"), "CRLF line ends")
    faults += pieceless_faults(env)
    return faults


def pieceless_faults(env: Env) -> list[Fault]:
    """A word without word pieces mid-sentence: a perfect model must still score 1.0."""
    import numpy as np

    from transfer.data.examples import Example
    from transfer.data.tasks import load_task_table
    from transfer.scoring import metrics
    from transfer.training.features import SplitData, build_features
    from transfer.training.kinds import IGNORE_INDEX
    from transfer.training.loop import _assemble

    task = load_task_table().task("bc5cdr-chemical")
    tokenizer = _tokenizer(env)
    faults = []
    for name, odd in (("zero-width space", "\u200b"), ("soft hyphen", "\u00ad"), ("lone combining mark", "\u0301"),
                      ("empty token", "")):
        fault = Fault("data file", f"NER word without word pieces: {name}")
        words = ("Aspirin", odd, "and", "more", "Naloxone", "helps")
        tags = ("B", "O", "O", "O", "B", "O")
        examples = [Example("d.0", words, label=tags)]
        logging.getLogger("transfer.training.features").disabled = True
        features = build_features(examples, task, tokenizer, max_length=32)
        logging.getLogger("transfer.training.features").disabled = False
        perfect = {r: np.where(features.targets[r] == IGNORE_INDEX, 0, features.targets[r]) for r in range(len(features))}
        assembled = _assemble(SplitData(task, "test", examples, features, np.arange(len(features))), perfect)
        score = metrics.score_task(task, [tags], [assembled[0]], None)["entity_f1"]
        fault.survived = score == 1.0
        fault.detail = f"perfect model scores {score:.3f}"
        faults.append(fault)
    return faults
