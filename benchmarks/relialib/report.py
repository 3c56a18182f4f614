"""The report: the summary counts (``summarise``), the printed tables (``render``), the code version and the
portable form of this machine's paths."""

from __future__ import annotations

import os
import subprocess
from collections import Counter

from relialib.cases import Case, Env
from relialib.faults import Fault
from relialib.judge import OUTCOMES, ROOT


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
