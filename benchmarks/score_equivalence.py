"""Do the fast path's scores match the reference path's? Single-task runs of one task over several seeds, both ways.

    python benchmarks/score_equivalence.py --task ddi2013-type --seeds 1 2 3 4 5           # runs, then compares
    python benchmarks/score_equivalence.py --task ddi2013-type --seeds 1 2 3 4 5 --no-run  # compares what is stored
    python benchmarks/score_equivalence.py --task ddi2013-type --seeds 1 2 3 4 5 --ablate ungrouped autocast

The fast path is the profile as it is (bf16 where native, the lean BERT forward, length-grouped batches); the
reference path is the same profile in fp32 on the Hugging Face forward with random batches
(``--set precision=fp32 --set encoder_impl=hf --set group_by_length=false``). Each is a grid of single runs
(``python -m transfer.grid --stages single``) in its own store under ``--stores``, so an interrupted comparison
resumes. The comparison is the edge's test (``transfer.analysis.compare``): per seed, the fast run's test score
minus the reference run's on the same test units; the seed mean with the between-seed variance over k plus the
clustered test-set variance, equivalence within ``--margin`` by two one-sided tests. It reports the verdict
(equivalent / different / inconclusive), the difference and its CI, and both methods' mean and SD over seeds, to
``--out`` (JSON) and the console. Dev scores are in each run's ``metrics.json``; test scores are compared here
because they are the ones the analysis reports.

Where the two differ, ``--ablate`` says which piece does it: each ablation is the fast path with one piece of the
reference put back (``ungrouped``: random batches; ``autocast``: bf16 under autocast over fp32 weights instead of
native bf16; ``hf-forward``: the Hugging Face forward; ``fp32``: fp32 arithmetic; and ``window-4``, length
grouping in windows of 4 batches instead of 50), in a store of its own, compared
with the same test against the reference and against the fast path (``ablations`` in the report).

Where the reference path is too dear (a converged profile, whose fp32 Hugging Face runs take about four times as
long), ``--no-reference`` leaves it out and compares each ablation with the fast path alone, and ``--fast-store``
takes the fast path's runs from a store that already holds them (the committed grid, ``results/``) instead of
running them again:

    python benchmarks/score_equivalence.py --profile cpu --seeds 13 14 15 16 17 --fast-store results \
        --no-reference --ablate ungrouped --set bf16_compute=autocast
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE = ("precision=fp32", "encoder_impl=hf", "group_by_length=false")
# the fast path with one piece of the reference put back
ABLATIONS = {"ungrouped": ("group_by_length=false",), "autocast": ("bf16_compute=autocast",),
             "hf-forward": ("encoder_impl=hf",), "fp32": ("precision=fp32",),
             # not a piece of the reference: length grouping in windows of 4 batches instead of 50
             "window-4": ("group_window=4",)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="ddi2013-type")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--stores", type=Path, default=Path("runs") / "score-equivalence",
                        help="folder of the two stores (fast/ and reference/)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default=None, help="encoder (default: the profile's grid default, minilm)")
    parser.add_argument("--margin", type=float, default=0.01, help="equivalence margin on the task's primary metric")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--run", action=argparse.BooleanOptionalAction, default=True,
                        help="run the missing runs first (--no-run: compare what the stores hold)")
    parser.add_argument("--ablate", nargs="*", default=[], choices=sorted(ABLATIONS), metavar="PIECE",
                        help=f"also run the fast path with one piece of the reference back: {', '.join(ABLATIONS)}")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="run and compare the reference path (--no-reference: ablations against the fast path)")
    parser.add_argument("--fast-store", type=Path, default=None,
                        help="a store whose runs of this task, profile and seeds are the fast path (not run here)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="a profile field for every path run here (e.g. the fast store's bf16_compute=autocast)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: benchmarks/results/...)")
    return parser.parse_args(argv)


def grid_command(args: argparse.Namespace, store: Path, overrides: tuple[str, ...]) -> list[str]:
    command = [sys.executable, "-m", "transfer.grid", "--tasks", args.task, "--stages", "single", "--profile",
               args.profile, "--seeds", *map(str, args.seeds), "--results", str(store), "--quiet"]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if args.model:
        command += ["--model", args.model]
    for item in overrides:
        command += ["--set", item]
    return command


def compare(args: argparse.Namespace) -> dict:
    from transfer.analysis.evidence import EvidenceOptions

    options = EvidenceOptions(margin=args.margin)
    runs = {name: _stored_runs(args, name) for name in _paths(args)}
    result = _compared(args, runs, "fast", "reference", options) if args.reference else {"task": args.task}
    result["profile"] = args.profile
    if args.fast_store:  # its runs' settings are whatever they were run with (--set does not reach them)
        result["a"] = f"fast path as stored in {args.fast_store.as_posix()}"
    else:
        result["a"] = "fast path (profile defaults" + "".join(f", {o}" for o in args.overrides) + ")"
    if args.reference:
        result["b"] = "reference path (" + ", ".join((*REFERENCE, *args.overrides)) + ")"
    result["wall_seconds"] = {name: round(sum(r.wall_seconds or 0.0 for r in found.values()), 1)
                              for name, found in runs.items()}
    result["precision"] = {name: sorted({(r.metrics.get("provenance") or {}).get("precision", "?")
                                         for r in found.values()}) for name, found in runs.items()}
    result["ablations"] = {name: {"overrides": list(_overrides(args, name)),
                                  **({"vs_reference": _compared(args, runs, name, "reference", options)}
                                     if args.reference else {}),
                                  "vs_fast": _compared(args, runs, name, "fast", options)} for name in args.ablate}
    result["dev"] = _dev_scores(args, runs)
    return result


def _dev_scores(args: argparse.Namespace, runs: dict) -> dict:
    """Each path's dev score at its selected epoch, by seed, and each path minus the fast path over seeds.

    Dev scores are what model selection saw (the best epoch's, so biased upwards alike for every path) on a dev
    sample without stored per-unit predictions, so their comparison is a paired t interval over seeds alone; the
    test-set comparison above is the one with the test units' variance in it.
    """
    from transfer.analysis.stats import seed_test

    by_path = {name: {seed: float(run.metrics["tasks"][args.task]["dev_score"]) for seed, run in sorted(found.items())}
               for name, found in runs.items()}
    out = {name: {"by_seed": scores, "mean": float(np.mean(list(scores.values()))),
                  "sd": float(np.std(list(scores.values()), ddof=1)) if len(scores) > 1 else None}
           for name, scores in by_path.items()}
    for name, scores in by_path.items():
        if name == "fast":
            continue
        # the edge's seed test with no test-set variance: a paired t over seeds
        test = seed_test([scores[seed] - by_path["fast"][seed] for seed in scores], var_test=0.0, n_clusters=1,
                         alpha=0.05, margin=args.margin)
        out[name]["minus_fast"] = {"delta": test.delta, "ci_low": test.ci_low, "ci_high": test.ci_high,
                                   "p": test.p, "k": test.k}
    return out


def _paths(args: argparse.Namespace) -> list[str]:
    return ["fast", *(["reference"] if args.reference else []), *args.ablate]


def _overrides(args: argparse.Namespace, name: str) -> tuple[str, ...]:
    """The profile fields a path sets: --set's, then the path's own (which win where they name the same field)."""
    own = {"fast": (), "reference": REFERENCE, **ABLATIONS}[name]
    return (*args.overrides, *own)


def _store(args: argparse.Namespace, name: str) -> Path:
    return args.fast_store if name == "fast" and args.fast_store else args.stores / name


def _stored_runs(args: argparse.Namespace, name: str) -> dict:
    from transfer.analysis.compare import runs_by_seed
    from transfer.analysis.index import load_runs
    from transfer.data.tasks import load_task_table
    from transfer.experiment.store import ResultsStore

    stored = [r for r in load_runs(ResultsStore(_store(args, name)), load_task_table()) if r.setting.profile == args.profile]
    found = runs_by_seed(stored, args.task)
    found = {s: r for s, r in found.items() if s in set(args.seeds)}
    missing = sorted(set(args.seeds) - set(found))
    if missing:
        raise SystemExit(f"error: {_store(args, name).as_posix()} holds no done {args.task} single run "
                         f"for seed(s) {' '.join(map(str, missing))} (the {name} path)")
    return found


def _compared(args: argparse.Namespace, runs: dict, a: str, b: str, options) -> dict:
    from transfer.analysis.compare import compare_methods
    from transfer.data.tasks import load_task_table

    return compare_methods(load_task_table().task(args.task), runs[a], runs[b], options, n_boot=args.n_boot)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run:
        for name in _paths(args):
            if name == "fast" and args.fast_store:
                continue  # already run, in the store given
            code = subprocess.call(grid_command(args, args.stores / name, _overrides(args, name)))
            if code != 0:
                print(f"error: the {name} grid exited with {code}", file=sys.stderr)
                return code
    result = compare(args)
    out = args.out or HERE / "results" / f"score-equivalence-{args.task}-{args.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _print(args, result)
    _print_dev(result["dev"])
    print(f"written to {out}")
    return 0


def _print(args: argparse.Namespace, result: dict) -> None:
    seeds = " ".join(map(str, args.seeds))
    print(f"{args.task}, profile {args.profile}, seeds {seeds} ({result['a']}; {result['wall_seconds']['fast']:.0f} s):")
    if args.reference:
        print(f"  fast      {result['mean_a']:.4f} +/- {result['sd_a']:.4f}")
        print(f"  reference {result['mean_b']:.4f} +/- {result['sd_b']:.4f}   ({result['wall_seconds']['reference']:.0f} s)")
        print(f"  fast - reference = {_difference(result)}")
    for name, item in result["ablations"].items():
        fast = item["vs_fast"]
        line = f"  {name:9s} {fast['mean_a']:.4f} +/- {fast['sd_a']:.4f}   ({', '.join(item['overrides'])})"
        if "vs_reference" in item:
            line += f": - reference {_difference(item['vs_reference'])};"
        print(f"{line} - fast {_difference(fast)}   (fast {fast['mean_b']:.4f} +/- {fast['sd_b']:.4f})")


def _print_dev(dev: dict) -> None:
    line = "  dev (selected epoch): " + "; ".join(
        f"{name} {item['mean']:.4f}" + (f" ({item['minus_fast']['delta']:+.4f} [{item['minus_fast']['ci_low']:+.4f}, "
                                         f"{item['minus_fast']['ci_high']:+.4f}] vs fast)" if "minus_fast" in item else "")
        for name, item in dev.items())
    print(line)


def _difference(c: dict) -> str:
    return (f"{c['delta']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], p {c['p']:.3g}, TOST p "
            f"{c['p_equivalence']:.3g} (margin {c['margin']:g}): {c['verdict']}")


if __name__ == "__main__":
    raise SystemExit(main())
