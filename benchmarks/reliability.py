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
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from relialib.cases import Case, Env, cli_cases, profile_cases, reader_cases, task_file_cases
from relialib.faults import Fault, cache_faults, data_faults
from relialib.judge import classify, run_case
from relialib.report import _code_version, _portable, render, summarise
from relialib.store_faults import graph_store_faults, grid_store_faults

# re-exported: tests/test_reliability.py judges hand-made cases with reliability.Case and reliability.classify
__all__ = ["Case", "classify", "main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))


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
