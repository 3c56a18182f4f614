"""The task table: which tasks exist, what kind each is, and where its data lives.

Tasks are data (``tasks.toml`` next to this file, plus any user file given with ``--task-file`` or
``TRANSFER_TASK_FILE``). Code looks a task up by name and branches on its ``kind``, never on its name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from transfer.data.files import read_toml
from transfer.errors import UserError

KINDS = ("tagging", "classification", "regression", "multilabel")
READERS = ("ner", "relation", "sts", "nli", "hoc")
METRICS = ("entity_f1", "micro_f1", "macro_f1", "accuracy", "pearson", "hoc_f1")
SPLITS = ("train", "dev", "test")
DATA_DIR_ENV = "TRANSFER_DATA_DIR"
TASK_FILE_ENV = "TRANSFER_TASK_FILE"
DEFAULT_TASK_FILE = Path(__file__).with_name("tasks.toml")

_TASK_KEYS = {"domain", "kind", "reader", "labels", "negative_label", "metric", "extra_metrics", "folder",
              "cluster_pattern"}
_DOMAIN_KEYS = {"folder", "tasks", "description", "alternative"}
# Task, domain and folder names become parts of paths (data folders, cache files, prediction files), so they are
# plain names: no separators, no "..", nothing absolute.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# readers whose format carries its own document column, so a uid pattern would be redundant
_FORMAT_CLUSTER_READERS = ("ner", "hoc")


class TaskConfigError(UserError, ValueError):
    """A task or domain entry is malformed; the message names the file and the entry."""


class UnknownNameError(UserError, KeyError):
    """A task or domain name that the table does not define."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(UserError, FileNotFoundError):
    """A task's data folder or split file is missing; the message says where we looked."""


@dataclass(frozen=True)
class TaskSpec:
    """One task: a row of the task table."""

    name: str
    domain: str
    kind: str
    reader: str
    metric: str
    labels: tuple[str, ...] = ()
    negative_label: str | None = None
    extra_metrics: tuple[str, ...] = ()
    folder: str = ""
    cluster_pattern: str | None = None  # regex; group 1 at the start of a uid is the unit's document

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        check_safe_name(self.name, "task name")
        if self.folder:
            check_safe_name(self.folder, f"{where}: folder")
        if self.kind not in KINDS:
            raise TaskConfigError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.reader not in READERS:
            raise TaskConfigError(f"{where}: reader {self.reader!r} is not one of {', '.join(READERS)}")
        for metric in (self.metric, *self.extra_metrics):
            if metric not in METRICS:
                raise TaskConfigError(f"{where}: metric {metric!r} is not one of {', '.join(METRICS)}")
        if self.kind == "regression" and self.labels:
            raise TaskConfigError(f"{where}: a regression task takes no labels")
        if self.kind != "regression" and len(self.labels) < 2:
            raise TaskConfigError(f"{where}: a {self.kind} task needs at least two labels in `labels`")
        if len(set(self.labels)) != len(self.labels):
            raise TaskConfigError(f"{where}: `labels` has duplicates")
        if self.kind == "tagging" and self.negative_label is None:
            raise TaskConfigError(f"{where}: a tagging task needs negative_label (its outside tag, e.g. 'O')")
        if self.negative_label is not None and self.negative_label not in self.labels:
            raise TaskConfigError(f"{where}: negative_label {self.negative_label!r} is not in labels")
        if not self.folder:
            object.__setattr__(self, "folder", self.name)
        if self.cluster_pattern is not None:
            self._check_cluster_pattern(where)

    def _check_cluster_pattern(self, where: str) -> None:
        if self.reader in _FORMAT_CLUSTER_READERS:
            raise TaskConfigError(f"{where}: the {self.reader} format names each unit's document itself; "
                                  "drop cluster_pattern")
        try:
            groups = re.compile(self.cluster_pattern).groups
        except re.error as exc:
            raise TaskConfigError(f"{where}: cluster_pattern {self.cluster_pattern!r} is not a valid regular "
                                  f"expression ({exc})") from None
        if groups < 1:
            raise TaskConfigError(f"{where}: cluster_pattern {self.cluster_pattern!r} needs a group, e.g. "
                                  r"'^(\d+)\.' (group 1 is the document)")

    @property
    def num_labels(self) -> int:
        """Output width of the task's head."""
        return 1 if self.kind == "regression" else len(self.labels)


@dataclass(frozen=True)
class DomainSpec:
    """A named set of tasks whose data sit in one folder of the data directory."""

    name: str
    folder: str
    tasks: tuple[str, ...]
    description: str = ""
    alternative: str | None = None


@dataclass(frozen=True)
class TaskTable:
    """All tasks and domains, looked up by name."""

    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    domains: dict[str, DomainSpec] = field(default_factory=dict)

    def task(self, name: str) -> TaskSpec:
        if name not in self.tasks:
            raise UnknownNameError(f"unknown task {name!r}; known tasks: {', '.join(sorted(self.tasks))}")
        return self.tasks[name]

    def domain(self, name: str) -> DomainSpec:
        if name not in self.domains:
            raise UnknownNameError(f"unknown domain {name!r}; known domains: {', '.join(sorted(self.domains))}")
        return self.domains[name]

    def domain_of(self, task_names: list[str] | tuple[str, ...], domain: str | None = None) -> DomainSpec | None:
        """The named domain, else the tasks' common home domain, else None (tasks from several domains)."""
        if domain is not None:
            return self.domain(domain)
        homes = {self.task(name).domain for name in task_names}
        return self.domain(homes.pop()) if len(homes) == 1 else None

    def data_domain(self, task_name: str, domain: str | None = None) -> DomainSpec:
        """Where a task's data is read: ``domain`` if it lists the task (e.g. clinical-public), else its home."""
        if domain is not None and task_name in self.domain(domain).tasks:
            return self.domain(domain)
        return self.domain(self.task(task_name).domain)


def check_safe_name(name: object, what: str) -> None:
    """``name`` must be a plain name (it becomes part of a path)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise TaskConfigError(f"{what} {name!r} is not a plain name: use letters, digits and . _ + - only, "
                              "starting with a letter or digit (it is used in file paths)")


def _string(entry: dict, key: str, where: str, default=None):
    value = entry.get(key, default)
    if value is not None and not isinstance(value, str):
        raise TaskConfigError(f"{where}: {key} must be a string, got {_type_name(value)} {value!r}")
    return value


def _strings(entry: dict, key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TaskConfigError(f"{where}: {key} must be a list of strings, e.g. {key} = [\"a\", \"b\"], "
                              f"got {_type_name(value)} {value!r}")
    return tuple(value)


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise TaskConfigError(f"{where}: {key} must be a table of entries ([{key}.<name>]), got {_type_name(value)}")
    return value


def _check_keys(entry: dict, allowed: set[str], where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise TaskConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")


def _parse_file(path: Path) -> tuple[dict[str, TaskSpec], dict[str, DomainSpec]]:
    raw = read_toml(path, TaskConfigError)
    _check_keys(raw, {"tasks", "domains"}, str(path))
    tasks: dict[str, TaskSpec] = {}
    for name, entry in _table(raw, "tasks", str(path)).items():
        where = f"{path}: [tasks.{name}]"
        if not isinstance(entry, dict):
            raise TaskConfigError(f"{where}: must be a table of keys (domain, kind, ...), got {_type_name(entry)}")
        _check_keys(entry, _TASK_KEYS, where)
        missing = {"domain", "kind", "reader", "metric"} - set(entry)
        if missing:
            raise TaskConfigError(f"{where}: missing key(s) {', '.join(sorted(missing))}")
        try:
            tasks[name] = TaskSpec(
                name=name,
                domain=_string(entry, "domain", where),
                kind=_string(entry, "kind", where),
                reader=_string(entry, "reader", where),
                metric=_string(entry, "metric", where),
                labels=_strings(entry, "labels", where),
                negative_label=_string(entry, "negative_label", where),
                extra_metrics=_strings(entry, "extra_metrics", where),
                folder=_string(entry, "folder", where, ""),
                cluster_pattern=_string(entry, "cluster_pattern", where),
            )
        except TaskConfigError as exc:
            message = str(exc)
            raise TaskConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    domains: dict[str, DomainSpec] = {}
    for name, entry in _table(raw, "domains", str(path)).items():
        where = f"{path}: [domains.{name}]"
        if not isinstance(entry, dict):
            raise TaskConfigError(f"{where}: must be a table of keys (folder, tasks, ...), got {_type_name(entry)}")
        _check_keys(entry, _DOMAIN_KEYS, where)
        if "folder" not in entry or "tasks" not in entry:
            raise TaskConfigError(f"{where}: needs `folder` and `tasks`")
        try:
            check_safe_name(name, "domain name")
            folder = _string(entry, "folder", where)
            check_safe_name(folder, f"{where}: folder")
        except TaskConfigError as exc:
            message = str(exc)
            raise TaskConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None
        domains[name] = DomainSpec(
            name=name,
            folder=folder,
            tasks=_strings(entry, "tasks", where),
            description=_string(entry, "description", where, ""),
            alternative=_string(entry, "alternative", where),
        )
    return tasks, domains


def load_task_table(extra_files: list[str | Path] | tuple[str | Path, ...] = ()) -> TaskTable:
    """The built-in table plus user files (``extra_files``, then ``$TRANSFER_TASK_FILE``)."""
    files = [DEFAULT_TASK_FILE, *map(Path, extra_files)]
    if os.environ.get(TASK_FILE_ENV):
        files.append(Path(os.environ[TASK_FILE_ENV]))
    tasks: dict[str, TaskSpec] = {}
    domains: dict[str, DomainSpec] = {}
    sources: dict[tuple[str, str], Path] = {}  # (kind, name) -> the file that defines it, for error messages
    for path in files:
        if not path.is_file():
            raise TaskConfigError(f"task file {path} does not exist")
        new_tasks, new_domains = _parse_file(path)
        for kind_name, new, old in (("task", new_tasks, tasks), ("domain", new_domains, domains)):
            clash = set(new) & set(old)
            if clash:
                raise TaskConfigError(f"{path}: {kind_name}(s) {', '.join(sorted(clash))} already defined; pick new names")
            old.update(new)
            sources.update({(kind_name, name): path for name in new})
    table = TaskTable(tasks=tasks, domains=domains)
    _check_references(table, sources)
    return table


def _check_references(table: TaskTable, sources: dict[tuple[str, str], Path]) -> None:
    for task in table.tasks.values():
        if task.domain not in table.domains:
            raise TaskConfigError(f"{sources[('task', task.name)]}: [tasks.{task.name}]: domain {task.domain!r} is not "
                                  f"defined; known domains: {', '.join(sorted(table.domains))}")
    for domain in table.domains.values():
        unknown = [name for name in domain.tasks if name not in table.tasks]
        if unknown:
            raise TaskConfigError(f"{sources[('domain', domain.name)]}: [domains.{domain.name}]: lists unknown "
                                  f"task(s) {', '.join(unknown)}")


def resolve_data_dir(data_dir: str | Path | None = None) -> tuple[Path, str]:
    """The data directory and how it was chosen: ``--data-dir``, else ``$TRANSFER_DATA_DIR``, else ``./data``."""
    if data_dir:
        return Path(data_dir), "--data-dir"
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV}"
    return Path("data"), "the default ./data"


def split_path(folder: Path, split: str) -> Path | None:
    """``<folder>/<split>.tsv``; ``dev`` also accepts ``devel.tsv``."""
    names = ("dev.tsv", "devel.tsv") if split == "dev" else (f"{split}.tsv",)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def locate_tasks(
    table: TaskTable, task_names: list[str] | tuple[str, ...], domain: str | None = None, data_dir: str | Path | None = None
) -> dict[str, dict[str, Path]]:
    """Split files of every task, ``{task: {split: path}}``; one error lists everything that is missing."""
    if domain is not None:
        table.domain(domain)  # unknown domain -> clear KeyError
    root, how = resolve_data_dir(data_dir)
    found: dict[str, dict[str, Path]] = {}
    problems: list[str] = []
    homes = set()
    for name in task_names:
        home = table.data_domain(name, domain)
        homes.add(home.name)
        folder = root / home.folder / table.task(name).folder
        if not folder.is_dir():
            problems.append(f"{name}: folder {folder} does not exist")
            continue
        paths = {split: split_path(folder, split) for split in SPLITS}
        absent = [split for split, path in paths.items() if path is None]
        if absent:
            problems.append(f"{name}: {folder} has no {', '.join(s + '.tsv' for s in absent)}")
            continue
        found[name] = paths  # type: ignore[assignment]
    if problems:
        message = (
            f"data for {', '.join(sorted(homes))} is missing (data directory {root.resolve()}, chosen by {how}; "
            f"set it with --data-dir or ${DATA_DIR_ENV}): " + "; ".join(problems)
        )
        for name in sorted(homes):
            home = table.domain(name)
            if home.alternative:
                message += (
                    f". The {home.name} tasks need data-use agreements and are read from your own copies. "
                    f"To run on the public stand-ins, use --domain {home.alternative}."
                )
        raise DataNotFoundError(message)
    return found
