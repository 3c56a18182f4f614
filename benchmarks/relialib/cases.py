"""The bad inputs: ``Case`` (one bad command line and where its error should point), ``Env`` (the scratch folder,
model and data they use), the damaged data copies and the four groups of cases (data files, task files,
profiles and ``--set`` values, command-line values)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


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
