"""Transfer edges, figures and tables from a results store.

    python -m transfer.graph results/ [--out figures/] [--domain biomedical ...]

For every domain (and model/profile) in the store: the delta of every ordered task pair s->t with a paired
bootstrap test and Holm correction, the directed transfer graph, the delta heatmap, the bar chart of single
task vs MT-Refinement vs MT-Fine-Tune, the paper-style tables (Markdown, CSV, LaTeX) and the graph as GraphML.
Where the store holds an affinity run (python -m transfer.affinity: an all-task run that records look-ahead task
affinity Z), also the preview next to the measured grid: affinity_<slug>.{md,csv,tex} (Z and delta per edge,
Spearman rho, sign agreement, wall-time ratio), affinity_<slug> figure (delta and Z heatmaps side by side),
affinity_graph_<slug> figure (preview graph coloured by the sign of Z), and affinity_validation.{md,csv} across
domains. Affinity runs never stand in for the all-task or pair runs of the grid.
Also rebuilds RESULTS_DIR/scores.csv. Reads only the store; never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from transfer.analysis import (COLOURS, DEFAULT_ALPHA, DEFAULT_MIN_DELTA, DEFAULT_SEED,
                               DomainAnalysis, analyse_store, load_runs)
from transfer.cli import add_common_flags, add_task_file_flag, command
from transfer.data.tasks import load_task_table
from transfer.errors import UsageError
from transfer.experiment.store import ResultsStore

logger = logging.getLogger(__name__)

FORMATS = ("png", "svg", "pdf")
EPILOG = ("Edge s->t: delta = test score of t in the {s,t} mtl run minus t's single-task run, mean over seeds. "
          "Test: paired bootstrap over test examples (sentences for NER, abstracts for HoC), the same resample "
          "for both runs and every seed, the task's own metric recomputed on each; two-sided p, Holm-adjusted "
          "over the edges of a domain. green: delta > min-delta and Holm p < alpha; red: delta < -min-delta "
          "and Holm p < alpha; grey: otherwise; missing: runs or predictions absent. "
          "Affinity preview (domains with an affinity run, python -m transfer.affinity): "
          "Z(s->t) = 1 - L_t(after one look-ahead step on s) / L_t(before), compared with the measured deltas "
          "in affinity_<slug>.{md,csv,tex}, the figures affinity_<slug> (delta and Z heatmaps) and "
          "affinity_graph_<slug> (preview graph, coloured by the sign of Z, no test), and "
          "affinity_validation.{md,csv} (per domain: Spearman rho and p, sign agreement on all and on "
          "significant edges, preview wall time / single+pair grid wall time).")


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _n_boot(text: str) -> int | None:
    return None if text == "auto" else _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transfer.graph", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("results_dir", metavar="RESULTS_DIR", type=Path, help="the results store (e.g. results/)")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="folder for figures and tables")
    parser.add_argument("--domain", nargs="+", default=None, metavar="D",
                        help="analyse only these domains; None: every domain in the store")
    parser.add_argument("--model", nargs="+", default=None, help="analyse only runs of these models; None: all")
    parser.add_argument("--profile", nargs="+", default=None,
                        help="analyse only runs of these profile names; None: all")
    parser.add_argument("--alpha", type=_probability, default=DEFAULT_ALPHA,
                        help="significance level for the Holm-adjusted p-values (and 1 - CI level)")
    parser.add_argument("--min-delta", type=_non_negative, default=DEFAULT_MIN_DELTA,
                        help="an edge is green/red only if |delta| exceeds this (in metric units, e.g. 0.005)")
    parser.add_argument("--n-boot", type=_n_boot, default="auto", metavar="B|auto",
                        help="bootstrap resamples per edge (the smallest possible p is 1/(B+1)); auto, the default: "
                             "at least 1000 and 10 x edges / alpha, so Holm's correction is never starved")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap random generator")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=["png", "svg"],
                        help="figure formats (PNG at 200 dpi)")
    add_task_file_flag(parser)
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                        help="draw the figures (--no-figures: tables only)")
    parser.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False,
                        help="only warnings in the log")
    add_common_flags(parser)
    return parser


def _number(value, spec: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def _affinity_line(analysis: DomainAnalysis) -> str:
    """One line: how well the look-ahead preview predicts the measured edges, and at what cost."""
    preview = analysis.affinity
    if preview is None:
        why = "; ".join(analysis.affinity_notes) or "no affinity run in the store (python -m transfer.affinity)"
        return f"  affinity preview: none ({why})"
    v = preview.validation
    head = f"  affinity preview (seed{'s' if len(preview.seeds) > 1 else ''} {' '.join(map(str, preview.seeds))}):"
    if v["n_edges"] == 0:
        agreement = " validation n/a (no measured edge)"
    else:
        if math.isnan(v["spearman_rho"]):  # p_method says why: "n/a (fewer than 3 edges)", "n/a (constant values)"
            rho = f"n/a (n {v['n_edges']}: {v['p_method'].removeprefix('n/a (').rstrip(')')})"
        else:
            p = "" if math.isnan(v["spearman_p"]) else f", p {_number(v['spearman_p'], '.3g')}"
            rho = f"{v['spearman_rho']:+.3f} (n {v['n_edges']}{p})"
        agreement = (f" Spearman rho {rho}, sign agreement "
                     f"{v['n_sign_agree']}/{v['n_edges']} = {_number(v['sign_agreement'], '.2f')} "
                     + (f"(significant {v['n_sign_agree_significant']}/{v['n_significant']})" if v["n_significant"]
                        else "(no significant edge)"))
    seconds = {key: "n/a" if math.isnan(v[key]) else f"{v[key]:.0f} s" for key in ("preview_wall_s", "grid_wall_s")}
    return (f"{head}{agreement}, time ratio {_number(v['time_ratio'], '.3f')} (preview {seconds['preview_wall_s']} / "
            f"grid {seconds['grid_wall_s']})")


def _affinity_notes(analysis: DomainAnalysis) -> list[str]:
    return [f"  affinity note: {item}" for item in analysis.affinity_notes] if analysis.affinity is not None else []


def _summary(analysis: DomainAnalysis) -> list[str]:
    if not analysis.has_grid:
        return [f"{analysis.setting.domain} (model {analysis.setting.model}, profile {analysis.setting.profile}): "
                f"no grid runs, {len(analysis.tasks)} task(s) in the affinity run(s)", _affinity_line(analysis),
                *_affinity_notes(analysis)]
    counts = analysis.edges["colour"].value_counts().to_dict() if len(analysis.edges) else {}
    calls = ", ".join(f"{counts.get(c, 0)} {c}" for c in COLOURS)
    lines = [f"{analysis.setting.domain} (model {analysis.setting.model}, profile {analysis.setting.profile}, "
             f"seeds {' '.join(map(str, analysis.seeds))}): {len(analysis.tasks)} task(s), "
             f"{len(analysis.edges)} edges: {calls} ({analysis.n_boot} bootstrap resamples per edge)"]
    for _, row in analysis.edges[analysis.edges["colour"].isin(["green", "red"])].iterrows():
        lines.append(f"  {row['colour']:>5}  {row['source']} -> {row['target']}  delta {row['delta']:+.4f}  "
                     f"p_holm {row['p_holm']:.4f}")
    lines.append(_affinity_line(analysis))
    if analysis.missing:
        lines.append("  missing:")
        lines += [f"    - {item}" for item in analysis.missing]
    lines += [f"  note: {item}" for item in analysis.notes]
    return lines + _affinity_notes(analysis)


def run(args: argparse.Namespace) -> int:
    """Analyse, write everything, print the summary; returns the exit status."""
    from transfer.report import plots, tables

    table = load_task_table(args.task_file)
    store = ResultsStore(args.results_dir)
    if not store.runs_dir.is_dir():
        raise UsageError(f"{args.results_dir} has no runs/ folder: nothing stored yet (run python -m transfer.grid), "
                         "or not a results store")
    present = sorted({r.setting.domain for r in load_runs(store, table)})
    unknown = sorted(set(args.domain or []) - set(present))
    if unknown:
        raise UsageError(f"domain(s) {', '.join(unknown)} not in the store; present: {', '.join(present) or 'none'}")
    written = [store.write_scores_table()]
    analyses = analyse_store(args.results_dir, table, args.domain, args.n_boot, args.alpha, args.min_delta,
                             args.seed, args.model, args.profile)
    for analysis in analyses:
        if analysis.has_grid:
            written += tables.write_tables(analysis, args.out)
        written += tables.write_affinity_tables(analysis, args.out)
        if args.figures:
            if analysis.has_grid:
                written += plots.write_figures(analysis, args.out, tuple(args.formats))
            written += plots.write_affinity_figures(analysis, args.out, tuple(args.formats))
    written += tables.write_affinity_validation(analyses, args.out)
    resamples = "auto" if args.n_boot is None else args.n_boot
    print(f"transfer.graph: {args.results_dir} -> {args.out} (alpha {args.alpha:g}, min-delta {args.min_delta:g}, "
          f"n-boot {resamples}, seed {args.seed})")
    if not analyses:
        print("no runs matched: nothing to analyse")
    for analysis in analyses:
        print("\n".join(_summary(analysis)))
    print("files written:")
    print("\n".join(f"  {path}" for path in written))
    return 0


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    import matplotlib

    matplotlib.use("Agg")  # a script: no display needed (the figures use Agg canvases anyway)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
