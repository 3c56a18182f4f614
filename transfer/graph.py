"""Transfer edges, figures and tables from a results store.

    python -m transfer.graph results/ [--out figures/] [--domain biomedical ...]

For every domain (and model/profile) in the store: the delta of every ordered task pair s->t, tested over seeds
and clustered test units (Holm-corrected by default), its evidence state (helps, hurts, equivalent, inconclusive,
exploratory, n/a), the learning gate of every task-run, a seed plan and a budget diagnostic; the directed transfer
graph, the delta heatmap, the bar chart of single
task vs MT-Refinement vs MT-Fine-Tune, the paper-style tables (Markdown, CSV, LaTeX) and the graph as GraphML.
Where the store holds an affinity run (python -m transfer.affinity: an all-task run that records look-ahead task
affinity Z and the marginal affinity M), also the preview next to the measured grid: affinity_<slug>.{md,csv,tex}
(Z, M, the baselines and delta per edge; every predictor scored by rank agreement within targets with a block
permutation p, top-1 partner and regret, split-half reliability; wall-time ratio), affinity_<slug> figure (delta
and M, else Z, heatmaps side by side), affinity_graph_<slug> figure (preview graph coloured by the sign of M, else
Z), and affinity_validation.{md,csv} across domains (one CSV row per setting and predictor). Affinity runs never stand in for the all-task or pair runs of the grid.
Also rebuilds RESULTS_DIR/scores.csv. Reads only the store; never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from transfer.analysis import (DEFAULT_ALPHA, DEFAULT_MARGIN, DEFAULT_MIN_SEEDS, DEFAULT_SEED, SIGNIFICANT, STATES,
                               DomainAnalysis, EvidenceOptions, GateOptions, analyse_store, load_runs)
from transfer.analysis.evidence import MIN_COLOURED_SEEDS
from transfer.cli import add_common_flags, add_task_file_flag, command
from transfer.data.tasks import load_task_table
from transfer.errors import UsageError
from transfer.experiment.store import ResultsStore
from transfer.report.present import model_label, predictor_summary

logger = logging.getLogger(__name__)

FORMATS = ("png", "svg", "pdf")
_FORWARDS = {"transfer": "lean BERT forward", "hf": "Hugging Face forward"}  # a run's encoder_impl, as read
EPILOG = ("Edge s->t: delta = test score of t in the {s,t} mtl run minus t's single-task run, per seed (the "
          "same seed in both), mean over seeds. Test (default): Welch t on var(per-seed deltas)/k + the test-set "
          "variance that all seeds share (mean covariance of the seeds' deltas over resamples of the test set's "
          "clusters: documents, abstracts; the same resample for both runs and every seed); --test sign-flip: exact sign-flip test over seeds (smallest p 2/2^k). "
          "p corrected over the tested edges of a domain (Holm; --correction bh for Benjamini-Hochberg). "
          "States: helps/hurts: corrected p < alpha and |delta| > margin; equivalent: two one-sided tests within "
          "+/- margin; inconclusive: neither; exploratory: fewer than --min-seeds seeds (never coloured below "
          f"{MIN_COLOURED_SEEDS}); n/a: runs or predictions missing, or a task-run failed the learning gate. "
          "Affinity preview (domains with an affinity run, python -m transfer.affinity): "
          "Z(s->t) = 1 - L_t(after one look-ahead step on s) / L_t(before) and the marginal M(s->t) (the step "
          "on s minus the momentum-only step, per unit learning rate), compared with the measured deltas beside "
          "baselines (target only, source only, step ratio, size ratio, gradient cosine, random) in "
          "affinity_<slug>.{md,csv,tex}, the figures affinity_<slug> (delta and M, else Z, heatmaps) and "
          "affinity_graph_<slug> (preview graph, no test), and affinity_validation.{md,csv} (per domain and "
          "predictor: Spearman rho with exchangeable and within-target block permutation p, within-target rho, "
          "top-1 partner and regret, split-half reliability and ceiling, preview wall time / single+pair grid "
          "wall time).")


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
    parser.add_argument("--margin", type=_non_negative, default=DEFAULT_MARGIN,
                        help="smallest effect that matters, in metric units: helps/hurts need |delta| above it, "
                             "equivalent means within it, and the seed plan aims to detect it")
    parser.add_argument("--min-seeds", type=_positive_int, default=DEFAULT_MIN_SEEDS,
                        help=f"edges with fewer seeds are exploratory (never below {MIN_COLOURED_SEEDS})")
    parser.add_argument("--test", choices=("t", "sign-flip"), default="t",
                        help="t: seeds and test units (Welch t); sign-flip: exact over seeds, test set held fixed")
    parser.add_argument("--correction", choices=("holm", "bh"), default="holm",
                        help="multiplicity correction over a domain's edges (bh: false discovery rate)")
    parser.add_argument("--power", type=_probability, default=0.8, help="power the seed plan aims for")
    gate = parser.add_argument_group("learning gate (a task-run failing any check is untrained: its edges are n/a)")
    gate.add_argument("--gate", action=argparse.BooleanOptionalAction, default=True, help="apply the learning gate")
    gate.add_argument("--gate-majority", type=_probability, default=0.95,
                      help="untrained if one predicted class holds more than this share (and more than in gold)")
    gate.add_argument("--gate-sd-ratio", type=_non_negative, default=0.3,
                      help="untrained if a regression head's prediction SD is below this x the gold SD")
    gate.add_argument("--gate-chance-se", type=_non_negative, default=2.0,
                      help="untrained if accuracy is within this many SE of chance agreement")
    gate.add_argument("--gate-rise", type=_probability, default=0.5,
                      help="untrained if the last epoch was best and brought more than this share of the dev gain "
                           "(three or more epochs recorded)")
    gate.add_argument("--gate-rise-min", type=_non_negative, default=0.01,
                      help="...and gained more than this (metric units)")
    parser.add_argument("--n-boot", type=_n_boot, default="auto", metavar="B|auto",
                        help="resamples of the test set's clusters per edge, for its test-set variance; auto, the "
                             "default: 2000 (the variance to about 3%%)")
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
        agreement = (" validation n/a (every measured edge is n/a)" if preview.has_grid
                     else " validation n/a (no measured edge)")
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
    if analysis.affinity is None:
        return []
    return ([f"  affinity {predictor_summary(analysis.affinity)}"]
            + [f"  affinity note: {item}" for item in analysis.affinity_notes])


def _untrained_apart(conv: dict) -> str:
    single, every = conv.get("single_untrained", 0), conv.get("all_untrained", 0)
    if not every:
        return ""
    runs = "task-run" if every == 1 else "task-runs"
    return (f" (set apart: {every} untrained {runs} that peaked before the last epoch, {single} of them "
            "single-task)")


def _compute_line(compute: dict) -> str:
    """``compute: 14 done runs, 3.2 h of run wall time (single 4: 0.6 h, pair 6: 2.1 h, ...)``."""
    parts = ", ".join(f"{role} {n}: {wall / 3600:.1f} h" for role, (n, wall) in compute.get("by_role", {}).items())
    unknown = f"; {compute['without_wall']} without a recorded wall time" if compute.get("without_wall") else ""
    line = (f"  compute: {compute.get('runs', 0)} done runs, {compute.get('wall_s', 0.0) / 3600:.1f} h of run wall "
            f"time ({parts or 'none'}){unknown}")
    elapsed, timed = compute.get("elapsed_s", 0.0), compute.get("timed", 0)
    if timed and elapsed > 0:
        share = "" if timed == compute.get("runs") else f" ({timed} of the runs record when they ran)"
        line += (f"; grid wall time {elapsed / 3600:.1f} h with at least one run running{share}, "
                 f"{compute.get('busy_s', 0.0) / elapsed:.2f} runs at a time on average")
    return line


def _methods_lines(analysis: DomainAnalysis) -> list[str]:
    """One line per multi-task model that has runs: each task's delta against single, its state and seeds."""
    frame = analysis.methods
    if frame is None or not len(frame):
        return []
    lines = []
    for model_type, group in frame.groupby("model_type", sort=False):
        if not (group["n_seeds"] > 0).any():
            continue
        cells = [f"{row['task']} {row['delta']:+.4f} {row['state']} ({row['n_seeds']} seeds)" if row["n_seeds"]
                 else f"{row['task']} n/a" for _, row in group.iterrows()]
        lines.append(f"  {model_label(model_type)} vs single: " + "; ".join(cells))
    return lines


def _summary(analysis: DomainAnalysis) -> list[str]:
    if not analysis.has_grid:
        return [f"{analysis.setting.domain} (model {analysis.setting.model}, profile {analysis.setting.profile}): "
                f"no grid runs, {len(analysis.tasks)} task(s) in the affinity run(s)", _affinity_line(analysis),
                *_affinity_notes(analysis)]
    counts = analysis.edges["state"].value_counts().to_dict() if len(analysis.edges) else {}
    calls = ", ".join(f"{counts.get(c, 0)} {c}" for c in STATES)
    lines = [f"{analysis.setting.domain} (model {analysis.setting.model}, profile {analysis.setting.profile}, "
             f"seeds {' '.join(map(str, analysis.seeds))}): {len(analysis.tasks)} task(s), "
             f"{len(analysis.edges)} edges: {calls} ({analysis.n_boot} bootstrap resamples per edge)"]
    for _, row in analysis.edges[analysis.edges["state"].isin(SIGNIFICANT)].iterrows():
        lines.append(f"  {row['state']:>5}  {row['source']} -> {row['target']}  delta {row['delta']:+.4f}  "
                     f"p_adj {row['p_adj']:.4f}")
    lines += _methods_lines(analysis)
    conv = analysis.convergence
    if conv.get("single_task_runs"):
        converged = conv["single_task_runs"] - conv["single_peaked"]
        lines.append(f"  converged single task-runs (best dev epoch before the last): {converged} of "
                     f"{conv['single_task_runs']} ({converged / conv['single_task_runs']:.0%}); all task-runs: "
                     f"{conv['all_task_runs'] - conv['all_peaked']} of {conv['all_task_runs']}"
                     + _untrained_apart(conv))
    budget = analysis.budget
    if budget.get("n"):
        lines.append(f"  budget diagnostic: Spearman rho(pair/single step ratio, delta) = {budget['rho']:+.2f} over "
                     f"{budget['n']} edges (p {budget['p']:.3g}, {budget['p_method']})")
    else:
        lines.append("  budget diagnostic: n/a (no edge has a delta and both runs' step counts)")
    lines.append(_compute_line(analysis.compute))
    if analysis.hosts:
        lines.append("  computed as: " + "; ".join(
            f"{n} runs {precision} on {'an unrecorded device class' if device == 'unrecorded' else device}, "
            f"{_FORWARDS.get(encoder, f'encoder forward {encoder}')}" for (precision, device, encoder), n in analysis.hosts.items()))
    if analysis.untrained:
        lines.append(f"  untrained task-runs ({len(analysis.untrained)}):")
        lines += [f"    - {item}" for item in analysis.untrained]
    lines.append(_affinity_line(analysis))
    if analysis.missing:
        lines.append("  missing:")
        lines += [f"    - {item}" for item in analysis.missing]
    lines += [f"  note: {item}" for item in analysis.notes]
    return lines + _affinity_notes(analysis) + [f"  {analysis.plan}"]


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
    written = [path for path in [store.try_write_scores_table()] if path]  # a read-only store is still analysed
    options = EvidenceOptions(args.alpha, args.margin, args.min_seeds, args.test, args.correction, args.power)
    gate = GateOptions(args.gate, args.gate_majority, args.gate_sd_ratio, args.gate_chance_se, args.gate_rise,
                       args.gate_rise_min)
    analyses = analyse_store(args.results_dir, table, args.domain, args.n_boot, options, args.seed, args.model,
                             args.profile, gate)
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
    print(f"transfer.graph: {args.results_dir} -> {args.out} (alpha {args.alpha:g}, margin {args.margin:g}, "
          f"min-seeds {options.seeds_to_colour}, test {args.test}, {args.correction}, n-boot {resamples}, "
          f"seed {args.seed})")
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
