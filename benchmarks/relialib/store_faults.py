"""The faults injected into results stores: damaged copies of a store, analysed with ``transfer.graph``
(``graph_store_faults``) or resumed with ``transfer.grid`` (``grid_store_faults``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from relialib.cases import Env
from relialib.faults import Fault
from relialib.judge import run_subprocess


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
