"""Reliability: how many bad inputs are refused cleanly, and how many injected faults are survived.

    python benchmarks/reliability.py                       # everything; writes benchmarks/results/reliability.json
    python benchmarks/reliability.py --skip-store          # without the store faults (no transfer.graph runs)

Bad inputs: malformed files of every reader, bad task files (for ``transfer.train``, ``transfer.grid`` and
``transfer.graph``), bad profiles and ``--set`` values, bad command-line values. Each is run once and counted as

* **refused cleanly**: exit code 2, one ``error:`` line that names the file (and the line) where there is one,
  no traceback;
* **refused, wrong place**: exit 2 and one ``error:`` line, but it names the wrong line or not the file;
* **traceback**: an exception escaped (or a traceback was printed);
* **accepted silently**: exit code 0, the bad input went through;
* **other**: any other outcome (another exit code, several error lines).

Faults injected: into the feature cache (a planted pickle, another split's file copied over, truncated, emptied,
random bytes, a folder in its place, a foreign ``.npz``, a full disk on write, a cache folder that is a file),
into data files (stray quotes, a bad byte on line 20, byte-order marks, CRLF line ends, words without word
pieces), and, unless ``--skip-store``, into results stores (truncated or empty run files, a prediction file
cut mid-line, a spec naming an unknown task, a folder with a spec that is no run, an empty run folder, a stray
file): a copy of the committed store analysed with ``python -m transfer.graph``, and a tiny 3-run grid store
(test profile) resumed with ``python -m transfer.grid``. A fault is **survived** when the program did the right
thing with nothing lost: the cache served the right examples (and ran no code); the reader refused the file
naming the right line, or read it exactly as without the fault; the analysis finished without a traceback,
named the damaged run and left every other run as it was; the resumed grid finished with every run done and
no other run's files changed (no finished run redone).

Training is the test profile on a tiny random BERT (2 layers, hidden 32, the MiniLM vocabulary; as in
``tests/tiny_model.py``) and 24 examples per split cut from the shared data (as in ``tests/tiny_data.py``), so a
whole pass takes a few minutes on a laptop CPU. Commands that train run in this process (one torch import); the
torch-free commands (``grid``, ``graph``) run as subprocesses.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

OUTCOMES = ("refused cleanly", "refused, wrong place", "traceback", "accepted silently", "other")


# ----------------------------------------------------------------------------------------------- bad inputs

@dataclass
class Case:
    """One bad input: a command line, and where the error should point."""

    group: str
    name: str
    cli: str  # train | grid | graph
    argv: list[str]
    file: str | None = None  # the file the error must name
    line: int | None = None  # the line it must name
    outcome: str = ""
    message: str = ""


@dataclass
class Env:
    work: Path
    model: Path
    data: Path
    store: Path | None = None
    counter: int = 0
    logs: list[str] = field(default_factory=list)

    def folder(self, prefix: str) -> Path:
        self.counter += 1
        path = self.work / "cases" / f"{self.counter:03d}-{prefix}"
        path.mkdir(parents=True)
        return path

    def train_argv(self, task: str, data: Path | None = None, *extra: str) -> list[str]:
        domain = ["--domain", "clinical-public"] if task in CLINICAL_PUBLIC else []
        out = self.work / "out" / f"{self.counter:03d}"
        return ["--tasks", task, *domain, "--profile", "test", "--model", str(self.model), "--data-dir",
                str(data or self.data), "--quiet", "--out", str(out), "--set", "epochs=1", *extra]


CLINICAL_PUBLIC = {"clinicalsts", "shareclefe", "i2b2-2010-re", "mednli"}
FOLDER = {"chemprot": "blue", "bc5cdr-chemical": "blue", "biosses": "blue", "hoc": "blue", "ddi2013-type": "blue",
          "mednli": "clinical-public", "shareclefe": "clinical-public"}


def _data_copy(env: Env, task: str, mutate: Callable[[list[str]], list[str] | bytes], split: str = "train"
               ) -> tuple[Path, Path]:
    """A data directory whose ``task`` has a mutated ``split`` file; returns (data dir, that file)."""
    root = env.folder(f"{task}-{split}")
    source = env.data / FOLDER[task] / task
    target = root / FOLDER[task] / task
    shutil.copytree(source, target)
    path = target / f"{split}.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    new = mutate(lines)
    if isinstance(new, bytes):
        path.write_bytes(new)
    else:
        path.write_text("\n".join(new) + ("\n" if new else ""), encoding="utf-8")
    return root, path


def _set(lines: list[str], number: int, text: str) -> list[str]:
    out = list(lines)
    out[number - 1] = text
    return out


def _nonblank_at_or_after(lines: list[str], number: int) -> int:
    while not lines[number - 1].strip():
        number += 1
    return number


def _bad_byte(lines: list[str], number: int) -> bytes:
    raw = [line.encode("utf-8") for line in lines]
    raw[number - 1] = raw[number - 1].replace(b"\t", b"\xff\t", 1)
    return b"\n".join(raw) + b"\n"


def reader_cases(env: Env) -> list[Case]:
    cases = []

    def add(task: str, name: str, mutate, line_of: Callable[[list[str]], int | None]):
        lines = (env.data / FOLDER[task] / task / "train.tsv").read_text(encoding="utf-8").splitlines()
        line = line_of(lines)
        root, path = _data_copy(env, task, lambda ls: mutate(ls, line))
        cases.append(Case("data file", f"{task}: {name}", "train", env.train_argv(task, root), str(path), line))

    rel = "chemprot"
    add(rel, "stray opening quote", lambda ls, n: _set(ls, n, ls[n - 1].replace("\t", '\t"', 1)), lambda ls: 5)
    add(rel, "two stray quotes", lambda ls, n: _set(_set(ls, n, ls[n - 1].replace("\t", '\t"', 1)), 12,
                                                    ls[11].replace("\t", '\t"', 1)), lambda ls: 5)
    add(rel, "quoted field hiding a tab", lambda ls, n: _set(ls, n, ls[n - 1].split("\t")[0] + '\t"a\tb"\tfalse'),
        lambda ls: 7)
    add(rel, "missing column", lambda ls, n: _set(ls, n, "\t".join(ls[n - 1].split("\t")[:2])), lambda ls: 9)
    add(rel, "extra column", lambda ls, n: _set(ls, n, ls[n - 1] + "\textra"), lambda ls: 9)
    add(rel, "unknown label", lambda ls, n: _set(ls, n, ls[n - 1].rsplit("\t", 1)[0] + "\tCPR:7"), lambda ls: 10)
    add(rel, "no header", lambda ls, n: ls[1:], lambda ls: 1)
    add(rel, "header only", lambda ls, n: ls[:1], lambda ls: 2)
    add(rel, "empty file", lambda ls, n: [], lambda ls: 1)
    add(rel, "bad byte on line 20", lambda ls, n: _bad_byte(ls, n), lambda ls: 20)
    add(rel, "duplicate id (other text)", lambda ls, n: _set(ls, n, ls[2].split("\t")[0] + "\tother @GENE$\tfalse"),
        lambda ls: 15)
    add(rel, "carriage return inside a line", lambda ls, n: _set(ls, n, ls[n - 1].replace(" ", "\r", 1)), lambda ls: 6)
    add(rel, "unclosed quote on the last line", lambda ls, n: _set(ls, n, ls[n - 1].replace("\t", '\t"', 1)),
        lambda ls: len(ls))

    ner = "bc5cdr-chemical"
    add(ner, "three columns", lambda ls, n: _set(ls, n, "\t".join(ls[n - 1].split("\t")[:3])),
        lambda ls: _nonblank_at_or_after(ls, 8))
    add(ner, "five columns", lambda ls, n: _set(ls, n, ls[n - 1] + "\tX"), lambda ls: _nonblank_at_or_after(ls, 9))
    add(ner, "unknown tag", lambda ls, n: _set(ls, n, ls[n - 1].rsplit("\t", 1)[0] + "\tB-Chemical"),
        lambda ls: _nonblank_at_or_after(ls, 11))
    add(ner, "offset not a number", lambda ls, n: _set(ls, n, "\t".join(ls[n - 1].split("\t")[:2] + ["x", "O"])),
        lambda ls: _nonblank_at_or_after(ls, 13))
    add(ner, "first sentence without document id", lambda ls, n: _set(ls, 1, "\t".join(
        [ls[0].split("\t")[0], "-", *ls[0].split("\t")[2:]])), lambda ls: 1)
    add(ner, "bad byte on line 20", lambda ls, n: _bad_byte(ls, n), lambda ls: _nonblank_at_or_after(ls, 20))
    add(ner, "empty file", lambda ls, n: [], lambda ls: 1)

    sts = "biosses"
    add(sts, "score not a number", lambda ls, n: _set(ls, n, ls[n - 1].rsplit("\t", 1)[0] + "\thigh"), lambda ls: 3)
    add(sts, "score nan", lambda ls, n: _set(ls, n, ls[n - 1].rsplit("\t", 1)[0] + "\tnan"), lambda ls: 4)
    add(sts, "no header", lambda ls, n: ls[1:], lambda ls: 1)
    add(sts, "too few columns", lambda ls, n: _set(ls, n, "\t".join(ls[n - 1].split("\t")[-5:])), lambda ls: 4)
    add(sts, "bad byte", lambda ls, n: _bad_byte(ls, n), lambda ls: min(len(ls), 9))

    nli = "mednli"
    add(nli, "unknown label", lambda ls, n: _set(ls, n, ls[n - 1].rsplit("\t", 1)[0] + "\tmaybe"), lambda ls: 6)
    add(nli, "duplicate id", lambda ls, n: _set(ls, n, ls[1].split("\t")[0] + "\t" + ls[n - 1].split("\t", 1)[1]),
        lambda ls: 8)
    add(nli, "stray quote", lambda ls, n: _set(ls, n, ls[n - 1].replace("\t", '\t"', 1)), lambda ls: 4)

    hoc = "hoc"
    add(hoc, "nine label entries", lambda ls, n: _set(ls, n, ls[n - 1].replace(",9_0", "").replace(",9_1", "")),
        lambda ls: 3)
    add(hoc, "label entry 3_2", lambda ls, n: _set(ls, n, ls[n - 1].replace("3_0", "3_2").replace("3_1", "3_2")),
        lambda ls: 4)
    add(hoc, "index without _s", lambda ls, n: _set(ls, n, ls[n - 1].rsplit("\t", 1)[0] + "\t12345"), lambda ls: 5)
    add(hoc, "bad byte on line 20", lambda ls, n: _bad_byte(ls, n), lambda ls: 20)
    return cases


TASK_OK = 'domain = "biomedical"\nkind = "classification"\nreader = "relation"\nmetric = "accuracy"\n'


def task_file_cases(env: Env) -> list[Case]:
    bodies = {
        "labels a string": f'[tasks.mine]\n{TASK_OK}labels = "BIO"\n',
        "labels a number": f"[tasks.mine]\n{TASK_OK}labels = 5\n",
        "name with ../": f'[tasks."../../x"]\n{TASK_OK}labels = ["a", "b"]\n',
        "absolute name": f'[tasks."/x"]\n{TASK_OK}labels = ["a", "b"]\n',
        "folder outside": f'[tasks.mine]\n{TASK_OK}labels = ["a", "b"]\nfolder = "../../etc"\n',
        "not TOML": "[tasks.mine\nkind = \n",
        "unknown key": f'[tasks.mine]\n{TASK_OK}labels = ["a", "b"]\ncolour = "red"\n',
        "kind a number": '[tasks.mine]\ndomain = "biomedical"\nkind = 3\nreader = "relation"\nmetric = "accuracy"\n'
                         'labels = ["a", "b"]\n',
        "missing metric": '[tasks.mine]\ndomain = "biomedical"\nkind = "classification"\nreader = "relation"\n'
                          'labels = ["a", "b"]\n',
        "negative label not a label": f'[tasks.mine]\n{TASK_OK}labels = ["a", "b"]\nnegative_label = "c"\n',
        "bad cluster pattern": f'[tasks.mine]\n{TASK_OK}labels = ["a", "b"]\ncluster_pattern = "(x"\n',
        "redefines a built-in task": f'[tasks.chemprot]\n{TASK_OK}labels = ["a", "b"]\n',
        "tasks not a table": "tasks = 5\n",
        "entry not a table": "[tasks]\nmine = 5\n",
        "unknown domain": '[tasks.mine]\ndomain = "nowhere"\nkind = "regression"\nreader = "sts"\nmetric = "pearson"\n',
    }
    cases = []
    for name, body in bodies.items():
        path = env.folder("taskfile") / "tasks.toml"
        path.write_text(body, encoding="utf-8")
        cases.append(Case("task file", name, "train", env.train_argv("chemprot", None, "--task-file", str(path)),
                          str(path)))
    path = env.folder("taskfile") / "tasks.toml"
    path.write_bytes(b'[tasks.mine]\ndomain = "biomedical"\nkind = "classifi\xe9cation"\n')
    cases.append(Case("task file", "bad byte on line 3", "train",
                      env.train_argv("chemprot", None, "--task-file", str(path)), str(path), 3))
    missing = env.work / "no-such-tasks.toml"
    cases.append(Case("task file", "file does not exist", "train",
                      env.train_argv("chemprot", None, "--task-file", str(missing)), str(missing)))
    # the same kinds of mistakes through the torch-free commands
    for name in ("labels a string", "not TOML", "name with ../"):
        path = env.folder("taskfile") / "tasks.toml"
        path.write_text(bodies[name], encoding="utf-8")
        cases.append(Case("task file", f"grid --dry-run: {name}", "grid",
                          ["--domain", "biomedical", "--dry-run", "--results", str(env.work / "grid-store"),
                           "--task-file", str(path)], str(path)))
        if env.store is not None:
            cases.append(Case("task file", f"graph: {name}", "graph",
                              [str(env.store), "--out", str(env.work / "graph-out"), "--task-file", str(path)],
                              str(path)))
    return cases


def profile_cases(env: Env) -> list[Case]:
    cases = []
    files = {
        "profile not TOML": ("epochs = [\n", None),
        "profile epochs = 2.5": ("epochs = 2.5\n", None),
        "profile unknown key": ("learnin_rate = 1e-3\n", None),
        "profile seeds = [-1]": ("seeds = [-1]\n", None),
    }
    for name, (body, line) in files.items():
        path = env.folder("profile") / "mine.toml"
        path.write_text(body, encoding="utf-8")
        argv = env.train_argv("chemprot")
        argv[argv.index("--profile") + 1] = str(path)
        cases.append(Case("profile", name, "train", argv, str(path), line))
    path = env.folder("profile") / "mine.toml"
    path.write_bytes(b"epochs = 2\n# caf\xe9\n")
    argv = env.train_argv("chemprot")
    argv[argv.index("--profile") + 1] = str(path)
    cases.append(Case("profile", "profile with a bad byte on line 2", "train", argv, str(path), 2))
    argv = env.train_argv("chemprot")
    argv[argv.index("--profile") + 1] = "nosuch"
    cases.append(Case("profile", "unknown profile name", "train", argv))
    for value in ("epochs=2.5", "batch_size=true", "learning_rate=nan", "learning_rate=inf", "lr=1", "epochs",
                  "seeds=[-1]", "max_length=100000", "max_length=4", "warmup_ratio=1.5", "optimizer=sgd",
                  "max_train_examples=0", "epochs=abc", "dropout=-0.5", "precision=fp16"):
        cases.append(Case("--set", f"--set {value}", "train", env.train_argv("chemprot", None, "--set", value)))
    return cases


def cli_cases(env: Env) -> list[Case]:
    cases = []

    def add(name: str, *extra: str, task: str = "chemprot", data: Path | None = None, file: str | None = None):
        cases.append(Case("command line", name, "train", env.train_argv(task, data, *extra), file))

    add("--threads 0", "--threads", "0")
    add("--threads -2", "--threads", "-2")
    add("--threads x", "--threads", "x")
    add("--device gpu", "--device", "gpu")
    add("--device cuda:7", "--device", "cuda:7")
    add("--seed -1", "--seed", "-1")
    add("--seed 2**40", "--seed", str(2**40))
    add("--model missing folder", "--model", str(env.work / "no-such-model"), file=str(env.work / "no-such-model"))
    not_model = env.folder("not-a-model")
    add("--model folder that is no model", "--model", str(not_model), file=str(not_model))
    add("--parent missing folder", "--stage", "finetune", "--parent", str(env.work / "no-such-run"))
    bare = env.folder("bare-run")
    add("--parent without spec.json", "--stage", "finetune", "--parent", str(bare), file=str(bare))
    damaged = env.folder("damaged-run")
    (damaged / "spec.json").write_text('{"tasks": ["chemprot"], "sta', encoding="utf-8")
    (damaged / "encoder").mkdir()
    (damaged / "encoder" / "config.json").write_text("{}", encoding="utf-8")
    add("--parent with a damaged spec.json", "--stage", "finetune", "--parent", str(damaged),
        file=str(damaged / "spec.json"))
    add("--parent on a single-task stage", "--stage", "single", "--parent", str(damaged))
    add("--stage finetune without --parent", "--stage", "finetune")
    argv = env.train_argv("chemprot")
    cases.append(Case("command line", "--stage single with two tasks", "train",
                      ["--tasks", "chemprot", "ddi2013-type", *argv[2:]]))
    add("--tasks unknown", task="nosuch")
    add("--domain unknown", "--domain", "nowhere")
    out_file = env.folder("out-file") / "taken"
    out_file.write_text("x", encoding="utf-8")
    argv = env.train_argv("chemprot")
    argv[argv.index("--out") + 1] = str(out_file)
    cases.append(Case("command line", "--out is a file", "train", argv, str(out_file)))
    add("data directory missing", data=env.work / "no-such-data", file=str(env.work / "no-such-data"))
    root = env.folder("no-test-split")
    shutil.copytree(env.data / "blue" / "chemprot", root / "blue" / "chemprot")
    (root / "blue" / "chemprot" / "test.tsv").unlink()
    add("test split missing", data=root, file=str(root / "blue" / "chemprot"))
    return cases


# ----------------------------------------------------------------------------------------------- running a case

def run_train_in_process(argv: list[str]) -> tuple[int | None, str, BaseException | None]:
    from transfer.train import main

    err = io.StringIO()
    code, exc = None, None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException as caught:  # noqa: BLE001 - an escaped exception is what is being counted
            exc = caught
    return code, err.getvalue(), exc


def run_subprocess(module: str, argv: list[str], env: dict | None = None, timeout: int = 600
                   ) -> tuple[int | None, str, BaseException | None]:
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, cwd=ROOT,
                          env=env or os.environ.copy(), timeout=timeout)
    return proc.returncode, proc.stderr + proc.stdout, None


def classify(case: Case, code: int | None, err: str, exc: BaseException | None) -> tuple[str, str]:
    if exc is not None:
        return "traceback", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if "Traceback (most recent call last)" in err:
        return "traceback", err.strip().splitlines()[-1]
    if code == 0:
        return "accepted silently", ""
    errors = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    if code != 2 or len(errors) != 1:
        return "other", f"exit {code}: {err.strip()[-300:]}"
    message = errors[0]
    if case.file and case.file not in message:
        return "refused, wrong place", message
    if case.line and f"line {case.line}:" not in message and f"line {case.line}," not in message:
        return "refused, wrong place", message
    return "refused cleanly", message


def run_case(case: Case) -> None:
    if case.cli == "train":
        code, err, exc = run_train_in_process(case.argv)
    else:
        code, err, exc = run_subprocess(f"transfer.{case.cli}", case.argv)
    case.outcome, case.message = classify(case, code, err, exc)


# ----------------------------------------------------------------------------------------------- faults

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


# ----------------------------------------------------------------------------------------------- store faults

def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _cut_mid_line(path: Path) -> Path:
    data = path.read_bytes()
    middle = data.index(b"\n", len(data) // 2)
    path.write_bytes(data[:middle - 5])
    return path


def _not_a_run(runs: Path) -> Path:
    folder = runs / "notes"
    folder.mkdir()
    (folder / "spec.json").write_text('{"hello": "world"}', encoding="utf-8")
    return folder / "spec.json"


def _json_list(path: Path) -> Path:
    path.write_text("[1, 2]", encoding="utf-8")
    return path


def _missing(path: Path) -> Path:
    path.unlink()
    return path


def _empty_run_folder(runs: Path) -> Path:
    folder = runs / "empty-run"
    folder.mkdir()
    return folder / "."


def _stray_file(runs: Path) -> Path:
    (runs / "README.txt").write_text("notes about these runs\n", encoding="utf-8")
    return runs / "README.txt"


def _unknown_task(path: Path) -> Path:
    """The run's spec names a task the task table does not know (a task file left out)."""
    import json as _json

    spec = _json.loads(path.read_text(encoding="utf-8"))
    old = spec["tasks"][0]
    spec["tasks"] = ["nosuch-task" if name == old else name for name in spec["tasks"]]
    path.write_text(_json.dumps(spec), encoding="utf-8")
    return path


def _damages(store: Path, victim: Path) -> dict[str, tuple[Callable[[Path], Path], bool]]:
    """name -> (damage a store copy and return what was damaged, whether it damages the run ``victim``)."""
    predictions = sorted((store / victim / "predictions").glob("*.jsonl"))
    prediction = predictions[0].relative_to(store) if predictions else None
    damages = {
        "status.json truncated": (lambda root: _truncate(root / victim / "status.json"), True),
        "status.json empty": (lambda root: _empty(root / victim / "status.json"), True),
        "spec.json empty": (lambda root: _empty(root / victim / "spec.json"), True),
        "spec.json truncated": (lambda root: _truncate(root / victim / "spec.json"), True),
        "spec.json a JSON list": (lambda root: _json_list(root / victim / "spec.json"), True),
        "spec.json names an unknown task": (lambda root: _unknown_task(root / victim / "spec.json"), True),
        "metrics.json truncated": (lambda root: _truncate(root / victim / "metrics.json"), True),
        "metrics.json empty": (lambda root: _empty(root / victim / "metrics.json"), True),
        "folder with a spec.json that is no run": (lambda root: _not_a_run(root / "runs"), False),
        "empty run folder": (lambda root: _empty_run_folder(root / "runs"), False),
        "stray file among the runs": (lambda root: _stray_file(root / "runs"), False),
    }
    if prediction is not None:
        damages["predictions cut mid-line"] = (lambda root: _cut_mid_line(root / prediction), True)
        damages["predictions file missing"] = (lambda root: _missing(root / prediction), True)
    return damages


def _others_kept(before: dict[str, bytes], after: dict[str, bytes], damaged: Path) -> bool:
    """Every run file outside the damaged entry (a run folder, or one entry of runs/) is as it was.

    Files at the store's top level (the scores.csv summary) are derived from the runs and may be rewritten.
    """
    entry = str(Path(*damaged.parts[:2]))
    return all(after.get(k) == v for k, v in before.items()
               if not (k == entry or k.startswith(entry + os.sep)) and os.sep in k)


def _run(module: str, argv: list[str], timeout: int) -> tuple[int | None, str]:
    try:
        code, out, _ = run_subprocess(module, argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return code, out


def _damaged_copies(store: Path, victim: Path, copy: Path):
    """For each damage: a fresh copy of ``store`` with it applied; yields (name, whether it hits the victim run,
    the damaged path relative to the copy, a snapshot of the copy taken before the program under test runs)."""
    for name, (damage, hits_victim) in _damages(store, victim).items():
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(store, copy)
        damaged = damage(copy).relative_to(copy)
        yield name, hits_victim, damaged, _snapshot(copy)


def graph_store_faults(env: Env, store: Path, timeout: int) -> list[Fault]:
    """Damage a copy of ``store``: ``transfer.graph`` must finish, name the damaged run and touch no other run."""
    victim = next(p for p in sorted((store / "runs").iterdir()) if (p / "metrics.json").is_file()).relative_to(store)
    graph_help = run_subprocess("transfer.graph", ["--help"])[1]
    extra = ["--n-boot", "200"] if "--n-boot" in graph_help else []
    extra += ["--no-figures"] if "--no-figures" in graph_help else []  # tables are enough to read every run
    faults = []
    copy = env.work / "store-copy"
    for name, hits_victim, damaged, before in _damaged_copies(store, victim, copy):
        code, out = _run("transfer.graph", [str(copy), "--out", str(env.work / "graph-out"), *extra], timeout)
        kept = _others_kept(before, _snapshot(copy), damaged)
        traceback = "Traceback (most recent call last)" in out
        said = [line.strip() for line in out.splitlines() if victim.name in line]
        fault = Fault("results store", f"{name} (graph)")
        fault.survived = code == 0 and not traceback and kept and (bool(said) or not hits_victim)
        fault.detail = (f"exit {code}" + (", traceback" if traceback else "") + ("" if kept else ", other runs changed")
                        + ("" if said or not hits_victim else ", the damaged run is not named") + ": "
                        + ((said or out.strip().splitlines() or [""])[-1])[:240])
        faults.append(fault)
    return faults


def _run_intact(folder: Path) -> bool:
    """The run's spec, status and metrics parse, and every task has a predictions file whose lines all parse."""
    try:
        spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
        json.loads((folder / "status.json").read_text(encoding="utf-8"))
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        if not isinstance(spec, dict) or not isinstance(metrics, dict):
            return False
        for task in spec["tasks"]:
            lines = (folder / "predictions" / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
            if not lines or not all(isinstance(json.loads(line), dict) for line in lines):
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def grid_store_faults(env: Env, timeout: int) -> list[Fault]:
    """A tiny grid store (3 runs, test profile) damaged, then resumed: every run done, no finished run redone."""
    import re

    store = env.work / "tiny-store"
    argv = ["--domain", "biomedical", "--tasks", "chemprot", "ddi2013-type", "--stages", "single", "pair",
            "--profile", "test", "--model", str(env.model), "--data-dir", str(env.data), "--set", "epochs=1",
            "--quiet"]
    code, out = _run("transfer.grid", [*argv, "--results", str(store)], timeout)
    if code != 0:
        return [Fault("results store", "building the tiny grid store", False, out.strip()[-300:])]
    victim = next(p for p in sorted((store / "runs").iterdir()) if p.name.startswith("single-")).relative_to(store)
    faults = []
    copy = env.work / "tiny-store-copy"
    for name, hits_victim, damaged, before in _damaged_copies(store, victim, copy):
        code, out = _run("transfer.grid", [*argv, "--results", str(copy)], timeout)
        kept = _others_kept(before, _snapshot(copy), damaged)
        check_code, check = _run("transfer.grid", [*argv, "--results", str(copy), "--dry-run"], timeout)
        counts = re.search(r"(\d+) runs, (\d+) already done", check)
        all_done = bool(counts) and counts.group(1) == counts.group(2)
        traceback = "Traceback (most recent call last)" in out + check
        intact = _run_intact(copy / victim)  # redone, not counted as done while damaged
        fault = Fault("results store", f"{name} (grid resume)")
        fault.survived = code == 0 and check_code == 0 and not traceback and kept and all_done and intact
        fault.detail = (f"exit {code}" + (", traceback" if traceback else "") + ("" if kept else ", other runs changed")
                        + ("" if intact else ", the damaged run is still damaged")
                        + ": " + (counts.group(0) if counts else (check.strip().splitlines() or [""])[-1])[:200])
        faults.append(fault)
    return faults


# ----------------------------------------------------------------------------------------------- report

def summarise(cases: list[Case], faults: list[Fault]) -> dict:
    by_group: dict[str, Counter] = {}
    for case in cases:
        by_group.setdefault(case.group, Counter())[case.outcome] += 1
    fault_groups: dict[str, Counter] = {}
    for fault in faults:
        fault_groups.setdefault(fault.group, Counter())["survived" if fault.survived else "not survived"] += 1
    return {
        "bad_inputs": {"tried": len(cases), **{o: sum(c.outcome == o for c in cases) for o in OUTCOMES},
                       "by_group": {g: {"tried": sum(v.values()), **{o: v[o] for o in OUTCOMES}}
                                    for g, v in by_group.items()}},
        "faults": {"injected": len(faults), "survived": sum(f.survived for f in faults),
                   "by_group": {g: {"injected": sum(v.values()), "survived": v["survived"]}
                                for g, v in fault_groups.items()}},
    }


def render(report: dict) -> None:
    s = report["summary"]
    bad = s["bad_inputs"]
    print("\nbad inputs                 tried  refused cleanly  wrong place  traceback  accepted silently  other")
    for group, v in [*bad["by_group"].items(), ("all", bad)]:
        print(f"  {group:<24} {v['tried']:>5}  {v['refused cleanly']:>15}  {v['refused, wrong place']:>11}  "
              f"{v['traceback']:>9}  {v['accepted silently']:>17}  {v['other']:>5}")
    f = s["faults"]
    print("\nfaults injected            injected  survived")
    for group, v in [*f["by_group"].items(), ("all", {"injected": f["injected"], "survived": f["survived"]})]:
        print(f"  {group:<24} {v['injected']:>8}  {v['survived']:>8}")
    failures = [c for c in report["bad_inputs"] if c["outcome"] != "refused cleanly"]
    failures += [x for x in report["faults"] if not x["survived"]]
    if failures:
        print("\nnot clean:")
        for item in failures:
            print(f"  [{item['group']}] {item['name']}: {item.get('outcome', 'not survived')}: "
                  f"{item.get('message') or item.get('detail')}")


def _code_version() -> str:
    """transfer's version, and the git commit (``+changes`` when the tree has uncommitted edits) where there is one."""
    from transfer import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return __version__
    return f"{__version__} ({commit}{'+changes' if dirty else ''})"


def _portable(text: str, env: Env) -> str:
    return text.replace(str(env.work), "<work>").replace(str(ROOT) + os.sep, "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "results" / "reliability.json"), help="JSON report")
    parser.add_argument("--store", default=str(ROOT / "results"),
                        help="results store to copy for the store faults and the graph cases")
    parser.add_argument("--skip-store", action="store_true", help="leave out the store faults (no graph runs)")
    parser.add_argument("--store-timeout", type=int, default=600, help="seconds per graph/grid run on a store copy")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="transfer-reliability-"))
    os.environ["TRANSFER_CACHE_DIR"] = str(work / "cache" / "main")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("TRANSFER_TASK_FILE", None)
    # library warnings (cache rebuilt, ...) go to a file, not into the counted stderr of the cases
    logging.basicConfig(level=logging.WARNING, filename=str(work / "log.txt"))
    from tiny_data import make_tiny_data_dir
    from tiny_model import build_tiny_bert

    env = Env(work=work, model=build_tiny_bert(work / "model"), data=make_tiny_data_dir(work / "data"))
    store = Path(args.store)
    if not args.skip_store and (store / "runs").is_dir():
        env.store = work / "store"
        shutil.copytree(store, env.store)
    try:
        cases = reader_cases(env) + task_file_cases(env) + profile_cases(env) + cli_cases(env)
        for number, case in enumerate(cases, start=1):
            print(f"[{number}/{len(cases)}] {case.group}: {case.name}", file=sys.stderr, flush=True)
            run_case(case)
        faults = []
        groups = [("feature cache", cache_faults), ("data file", data_faults)]
        if env.store is not None:
            groups.append(("results store", lambda e: graph_store_faults(e, e.store, args.store_timeout)))
            groups.append(("results store", lambda e: grid_store_faults(e, args.store_timeout)))
        for group, inject in groups:
            print(f"faults: {group} ...", file=sys.stderr, flush=True)
            try:
                faults += inject(env)
            except Exception as exc:  # noqa: BLE001 - a group that cannot even run counts as one fault not survived
                faults.append(Fault(group, "injection could not run", False, f"{type(exc).__name__}: {exc}"))
        report = {
            "meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - start, 1),
                     "python": sys.version.split()[0], "code": _code_version(),
                     "store": _portable(str(store.resolve()), env) if env.store else None},
            "bad_inputs": [{"group": c.group, "name": c.name, "cli": c.cli, "outcome": c.outcome,
                            "message": _portable(c.message, env)} for c in cases],
            "faults": [{"group": f.group, "name": f.name, "survived": f.survived, "detail": _portable(f.detail, env)}
                       for f in faults],
        }
        report["summary"] = summarise(cases, faults)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        render(report)
        print(f"\nwritten to {out}")
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
