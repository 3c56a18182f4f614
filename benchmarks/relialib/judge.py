"""Running a bad-input case (``transfer.train`` in this process, the torch-free commands as subprocesses) and
judging its outcome: one of ``OUTCOMES``."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from relialib.cases import Case

ROOT = Path(__file__).resolve().parents[2]  # the repository: the commands run here, the report names paths from it

OUTCOMES = ("refused cleanly", "refused, wrong place", "traceback", "accepted silently", "other")


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
