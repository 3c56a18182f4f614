"""Writers for the analysis results: the paper's model tables and the edge table (Markdown, CSV, LaTeX), the
transfer graph (networkx DiGraph, GraphML), and the look-ahead affinity preview next to the measured edges
(per setting: Markdown, CSV, LaTeX; across settings: the validation table, Markdown and CSV).

Pure formatting of ``transfer.analysis.DomainAnalysis``; nothing here computes a statistic. About 480 lines, over
the ~450 guide: one job (every table writer in every format), each format a few small functions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import networkx as nx
import pandas as pd

from transfer.analysis import PREDICTOR_COLUMNS, VALIDATION_COLUMNS, AffinityPreview, DomainAnalysis
from transfer.experiment.atomic import write_text_atomic
from transfer.report.present import (NA, model_seeds_text, affinity_caption, correction_label, state_rule_text, fmt_delta, fmt_p, fmt_score, fmt_sci, fmt_seconds,
                                     fmt_share, is_missing, model_label, plural, models_wide, setting_caption, transfer_digraph)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Model table (paper Tables 2 and 3)
# ---------------------------------------------------------------------------------------------------------------

def _best_per_column(wide: pd.DataFrame) -> dict[str, str | None]:
    best = {}
    for column in wide.columns:
        values = wide[column].dropna()
        best[column] = values.idxmax() if len(values) > 1 else None
    return best


def _model_cell(mean, std, bold: bool, markdown: bool, untrained: str = "") -> str:
    text = fmt_score(mean)
    if not is_missing(mean) and not is_missing(std):
        text += f" ± {std:.3f}" if markdown else f" $\\pm$ {std:.3f}"
    if bold and not is_missing(mean):
        text = f"**{text}**" if markdown else f"\\textbf{{{text}}}"
    return text + (UNTRAINED_MARK if markdown else r"$^\dagger$") * bool(untrained)


UNTRAINED_MARK = " †"


def _untrained(analysis: DomainAnalysis):
    """model_type x task -> the learning gate's reasons ("" where none)."""
    if "untrained" not in analysis.models:
        return None
    return models_wide(analysis.models.assign(untrained=analysis.models["untrained"].fillna("")), "untrained")


def _untrained_lines(analysis: DomainAnalysis) -> list[str]:
    flagged = analysis.models[analysis.models.get("untrained", "").astype(str) != ""] if "untrained" in analysis.models \
        else analysis.models.iloc[:0]
    if not len(flagged):
        return []
    return ["", "† untrained (the learning gate; its edges are n/a):", ""] + [
        f"- {model_label(r['model_type'])} {r['task']}: {r['untrained']}" for _, r in flagged.iterrows()]


def models_markdown(analysis: DomainAnalysis) -> str:
    means, stds = models_wide(analysis.models), models_wide(analysis.models, "std")
    best = _best_per_column(means)
    header = ["Model", *means.columns]
    lines = [f"### Test scores: {setting_caption(analysis)}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * len(means.columns)) + "|"]
    flags = _untrained(analysis)
    for model_type in means.index:
        cells = [_model_cell(means.at[model_type, c], stds.at[model_type, c], best[c] == model_type, True,
                             flags.at[model_type, c] if flags is not None else "") for c in means.columns]
        lines.append("| " + " | ".join([model_label(model_type), *cells]) + " |")
    lines += ["", "Mean over seeds (± sample standard deviation where there are two or more seeds); best per "
              "column in bold. Avg is given only when every task has a score.", *_seed_counts_line(analysis)]
    return "\n".join(lines + _untrained_lines(analysis) + _methods_markdown(analysis) + _missing_note(analysis)) + "\n"


def _seed_counts_line(analysis: DomainAnalysis) -> list[str]:
    text = model_seeds_text(analysis)
    return [f"Seeds: {text}."] if text else []


def _methods_markdown(analysis: DomainAnalysis) -> list[str]:
    """MT-Refinement and MT-Fine-Tune against single-task training, per task, with the edges' test and states."""
    frame = analysis.methods
    if frame is None or not len(frame) or not (frame["n_seeds"] > 0).any():
        return []
    tested = int(frame["p_adj"].notna().sum())
    family = (f"{correction_label(analysis)} over the {tested} of these {len(frame)} comparisons with at least "
              f"{analysis.options.seeds_to_colour} seeds" if tested else
              f"no comparison has the {analysis.options.seeds_to_colour} seeds to be tested, so all are exploratory "
              f"or n/a")
    lines = ["", f"**Against single-task training** (Δ = the multi-task model's test score minus the single-task "
             f"run's, per seed, mean over the seeds with both; the edges' test, {family}):", "",
             "| Model | task | state | Δ | 95% CI (unadj.) | p | p (corrected) | seeds | reason / note |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    for _, row in frame.iterrows():
        ci = NA if is_missing(row["ci_low"]) else f"[{fmt_delta(row['ci_low'])}, {fmt_delta(row['ci_high'])}]"
        lines.append(f"| {model_label(row['model_type'])} | {row['task']} | {row['state']} | {fmt_delta(row['delta'])} "
                     f"| {ci} | {fmt_p(row['p'])} | {fmt_p(row['p_adj'])} | {row['seeds'] or NA} | "
                     f"{'; '.join(filter(None, [row['reason'], row['note']]))} |")
    return lines


def methods_csv(analysis: DomainAnalysis) -> str:
    frame = analysis.methods.copy() if analysis.methods is not None else pd.DataFrame()
    frame.insert(0, "domain", analysis.setting.domain)
    frame.insert(1, "model", analysis.setting.model)
    frame.insert(2, "profile", analysis.setting.profile)
    return frame_to_csv(frame)


def _missing_note(analysis: DomainAnalysis) -> list[str]:
    if not analysis.missing and not analysis.notes:
        return []
    lines = [""]
    if analysis.missing:
        lines += ["**Note: missing runs** (their cells are n/a and their edges untested):", ""]
        lines += [f"- {item}" for item in analysis.missing]
    if analysis.notes:
        lines += ["", "Notes:", ""] + [f"- {item}" for item in analysis.notes]
    return lines


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in one pass (so replacements are never escaped again)."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def models_latex(analysis: DomainAnalysis) -> str:
    means, stds = models_wide(analysis.models), models_wide(analysis.models, "std")
    best = _best_per_column(means)
    columns, flags = list(means.columns), _untrained(analysis)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "c" * len(columns) + "}",
             r"\toprule", " & ".join(["Model", *map(latex_escape, columns)]) + r" \\", r"\midrule"]
    for model_type in means.index:
        cells = [_model_cell(means.at[model_type, c], stds.at[model_type, c], best[c] == model_type, False,
                             flags.at[model_type, c] if flags is not None else "") for c in columns]
        lines.append(" & ".join([latex_escape(model_label(model_type)), *cells]) + r" \\")
    caption = (f"Test results, {latex_escape(setting_caption(analysis))}. Mean over seeds; best per column in bold."
               + (" n/a: missing runs." if analysis.missing else "")
               + (r" $^\dagger$: untrained (learning gate)." if _untrained_lines(analysis) else ""))
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}",
              f"\\label{{tab:models-{latex_escape(analysis.slug)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Edge table
# ---------------------------------------------------------------------------------------------------------------

def _se_cell(row) -> str:
    """Total SE with its parts, seed / test: "0.012 (0.010 / 0.007)"; test only at one seed."""
    if is_missing(row["se"]):
        return NA if is_missing(row["se_test"]) else f"test {row['se_test']:.4f}"
    return f"{row['se']:.4f} ({row['se_seed']:.4f} / {row['se_test']:.4f})"


def _edge_cells(row) -> list[str]:
    ci = NA if is_missing(row["ci_low"]) else f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
    needed = NA if is_missing(row["seeds_needed"]) else str(int(row["seeds_needed"]))
    return [str(row["source"]), str(row["target"]), str(row["state"]), fmt_delta(row["delta"]), _se_cell(row), ci,
            fmt_p(row["p"]), fmt_p(row["p_adj"]), fmt_score(row["mde"], 4), needed, str(int(row["n_seeds"]))]


def _edge_note(row) -> str:
    return "; ".join(filter(None, [str(row["reason"] or ""), str(row["note"] or "")]))


def _edges_definitions(analysis: DomainAnalysis) -> str:
    o = analysis.options
    return (f"Δ = test score of t trained with s (pair run) minus t alone (single run), mean over the seeds with "
            f"both; per-seed Δ in the CSV (seed_deltas). SE = total (between seeds / test set): between seeds = "
            f"sd of the per-seed Δ / √k; test set = from {analysis.n_boot} resamples of the test set's clusters "
            f"(documents, abstracts; one resample shared by every run and seed): the part of the resampling "
            f"variance of Δ that all seeds share (their mean covariance; at one seed, the sd of Δ). "
            f"{100 * (1 - o.alpha):.0f}% CI: unadjusted (t with Welch-Satterthwaite df). "
            f"p ({correction_label(analysis)}): corrected over the edges with at least {o.seeds_to_colour} seeds. "
            f"MDE: minimum detectable effect at the edge's seeds ({o.power:.0%} power, level α/m); seeds for "
            f"±{o.margin:g}: seeds that would detect the margin. {state_rule_text(analysis)}")


def edges_markdown(analysis: DomainAnalysis) -> str:
    header = ["s", "t", "state", "Δ", "SE (seed / test)", f"{100 * (1 - analysis.alpha):.0f}% CI (unadj.)", "p",
              f"p ({correction_label(analysis)})", "MDE", f"seeds for ±{analysis.margin:g}", "seeds", "reason / note"]
    lines = [f"### Transfer edges s → t: {setting_caption(analysis)}", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * 8 + ["---"]) + "|"]
    for _, row in analysis.edges.iterrows():
        lines.append("| " + " | ".join(_edge_cells(row) + [_edge_note(row).replace("|", "/")]) + " |")
    lines += ["", _edges_definitions(analysis)]
    if analysis.plan:
        lines += ["", analysis.plan]
    return "\n".join(lines + _missing_note(analysis)) + "\n"


def edges_latex(analysis: DomainAnalysis) -> str:
    header = [r"$s$", r"$t$", "state", r"$\Delta$", "SE", r"CI", r"$p$", r"$p_\mathrm{adj}$", "MDE", "seeds needed",
              "seeds"]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{lllrrcrrrrr}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    for _, row in analysis.edges.iterrows():
        cells = [latex_escape(c) for c in _edge_cells(row)]
        for i in (3, 5, 6, 7, 8):  # numbers in math mode, so that '-' prints as a minus sign
            cells[i] = cells[i] if cells[i] == NA else f"${cells[i]}$"
        lines.append(" & ".join(cells) + r" \\")
    caption = (f"Pairwise transfer edges $s \\rightarrow t$, {latex_escape(setting_caption(analysis))}. "
               + latex_escape(_edges_definitions(analysis)).replace("Δ", r"$\Delta$").replace("α", r"$\alpha$")
               .replace("√", r"$\sqrt{}$").replace("±", r"$\pm$").replace("−", "-").replace("≥", r"$\geq$"))
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}",
              f"\\label{{tab:edges-{latex_escape(analysis.slug)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def frame_to_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.10g")


def edges_csv(analysis: DomainAnalysis) -> str:
    frame = analysis.edges.copy()
    frame.insert(0, "domain", analysis.setting.domain)
    frame.insert(1, "model", analysis.setting.model)
    frame.insert(2, "profile", analysis.setting.profile)
    return frame_to_csv(frame)


def models_csv(analysis: DomainAnalysis) -> str:
    frame = analysis.models.copy()
    frame.insert(0, "domain", analysis.setting.domain)
    frame.insert(1, "model", analysis.setting.model)
    frame.insert(2, "profile", analysis.setting.profile)
    frame.insert(4, "model_label", frame["model_type"].map(model_label))
    return frame_to_csv(frame)


# ---------------------------------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------------------------------

def write_graphml(analysis: DomainAnalysis, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    nx.write_graphml(transfer_digraph(analysis), tmp)
    tmp.replace(path)
    return path


def write_tables(analysis: DomainAnalysis, out: Path) -> list[Path]:
    """Model and edge tables (.md, .csv, .tex) and the GraphML graph of one setting; returns the paths."""
    out = Path(out)
    texts = {
        f"models_{analysis.slug}.md": models_markdown(analysis),
        f"models_{analysis.slug}.csv": models_csv(analysis),
        f"models_{analysis.slug}.tex": models_latex(analysis),
        f"model_deltas_{analysis.slug}.csv": methods_csv(analysis),
        f"edges_{analysis.slug}.md": edges_markdown(analysis),
        f"edges_{analysis.slug}.csv": edges_csv(analysis),
        f"edges_{analysis.slug}.tex": edges_latex(analysis),
    }
    written = []
    for name, text in texts.items():
        write_text_atomic(out / name, text)
        written.append(out / name)
    written.append(write_graphml(analysis, out / f"transfer_graph_{analysis.slug}.graphml"))
    logger.info("tables for %s written to %s", analysis.slug, out)
    return written


# ---------------------------------------------------------------------------------------------------------------
# Look-ahead affinity preview vs the measured edges
# ---------------------------------------------------------------------------------------------------------------

AFFINITY_DEFINITIONS = (
    "Z(s→t) = 1 − L_t(after one look-ahead optimiser step on s's loss) / L_t(before), on probe batches of t's "
    "training data, averaged over the measurements of an epoch, then over epochs (and over seeds); > 0: a step on "
    "s lowers t's loss. Δ(s→t): measured transfer, score of t trained with s minus t alone (see the edge table). "
    "Validation over the edges with both (edges whose state is n/a left out): Spearman ρ (scipy.stats.spearmanr; p exact over all n! pairings for "
    "n ≤ 8 edges, else spearmanr's t approximation; n/a for a constant vector or fewer than 3 edges); sign "
    "agreement = share of edges with sign(Z) = sign(Δ) (a Δ or Z of exactly 0 has sign 0), also over the "
    "significant (helps/hurts) edges only. Time ratio = wall time of the affinity run(s) / summed wall time of the "
    "setting's done single and pair runs (all seeds); tracking overhead = affinity run wall time / plain all-task "
    "run wall time, per training step where both record their steps (a preview may stop after its first epochs; "
    "same seeds; sensitive to machine load when the two ran at different times); tracker = the "
    "tracker's own affinity.seconds; tracker overhead = tracker seconds / (affinity run wall - tracker seconds), "
    "measured within the same run.")

PREDICTOR_DEFINITIONS = (
    "Predictors of Δ(s→t), each scored on the same compared edges. M (marginal affinity) = (L_t(after a "
    "zero-gradient step) − L_t(after the step on s)) / (lr · L_t(before)): the part of the look-ahead step that s's "
    "own gradient adds beyond the momentum every source shares, per unit learning rate (recorded by affinity runs "
    "since it existed; absent in older stores). Baselines: target only (Z's column mean: knows only t), source only "
    "(Z's row mean), the pair/single step ratio, the training-set size ratio n(s)/n(t) (Weller et al. 2022), the "
    "cosine of s's and t's probe gradients (TAG's baseline), and a random ordering (expected values). ρ: Spearman "
    "over all edges, p exch. treats edges as exchangeable, p block permutes the sources within each target (the "
    "target's main effect stays in the null); within-t ρ: mean over targets with ≥ 2 sources of Spearman across "
    "that target's sources (a target whose predictor or Δ is tied contributes 0), with its block p; block p values "
    "are one-sided (agreement), exact over every within-target permutation when there are at most 200,000 of "
    "them. null 95%: the within-t ρ an uninformed predictor reaches 5% of the time. top-1: share of targets whose "
    "top-ranked source is the grid's best (ties share the pick); regret: best Δ − picked Δ, mean over targets "
    "(targets whose sources' Δ are all equal offer no decision and are left out). "
    "Reliability: split-half over seeds (Spearman of the two halves' means across edges, averaged over splits, "
    "Spearman-Brown corrected), n/a below 2 seeds; ceiling = √(reliability of the predictor × reliability of Δ), "
    "the highest correlation the noise allows. Seeds: grid seeds per compared edge / preview seeds.")


def _summary_rows(preview: AffinityPreview) -> list[tuple[str, str]]:
    v = preview.validation
    p_label = "p" if v["p_method"].startswith(NA) else f"p ({v['p_method']})"
    return [
        ("edges with Z and measured Δ", str(v["n_edges"])),
        ("Spearman ρ (Z vs Δ)", v["p_method"] if is_missing(v["spearman_rho"]) else f"{v['spearman_rho']:+.3f}"),
        (p_label, fmt_p(v["spearman_p"])),
        ("sign agreement, all edges", fmt_share(v["n_sign_agree"], v["n_edges"], v["sign_agreement"])),
        ("sign agreement, significant (helps/hurts) edges",
         fmt_share(v["n_sign_agree_significant"], v["n_significant"], v["sign_agreement_significant"])),
        (f"preview wall time ({plural(v['affinity_runs'], 'affinity run')})", fmt_seconds(v["preview_wall_s"])),
        (f"grid wall time ({plural(v['n_grid_runs'], 'single/pair run')})", fmt_seconds(v["grid_wall_s"])),
        ("time ratio, preview / grid", fmt_score(v["time_ratio"])),
        ("plain all-task run wall time", fmt_seconds(v["plain_all_wall_s"])),
        ("tracking overhead, affinity / plain all-task wall", fmt_score(v["tracking_overhead"])),
        ("tracker's own time (affinity.seconds)", fmt_seconds(v["tracker_s"])),
        ("tracker overhead, tracker / rest of the affinity run", fmt_score(v["tracker_overhead"])),
        ("marginal affinity M in the affinity run(s)", str(v["marginal"])),
        ("grid seeds per compared edge", str(v["n_grid_seeds"])),
        ("reliability of Δ (noise ceiling)", _reliability_cell(v["delta_reliability"], v["delta_reliability_method"])),
    ]


def _rho(value) -> str:
    return NA if is_missing(value) else f"{value:+.3f}"


def _reliability_cell(value, method) -> str:
    return str(method) if is_missing(value) else f"{value:.3f} ({method})"


PREDICTOR_HEADER = ["predictor", "edges", "ρ", "p exch.", "p block", "within-t ρ", "p block", "null 95%", "top-1",
                    "regret", "reliability", "ceiling", "seeds", "note"]


def _predictor_cells(row) -> list[str]:
    top1 = (NA if is_missing(row["top1_accuracy"]) else
            f"{row['top1_accuracy']:.2f} of {int(row['top1_targets'])}")
    return [str(row["predictor"]), str(int(row["n_edges"])), _rho(row["spearman_rho"]), fmt_p(row["spearman_p"]),
            fmt_p(row["spearman_p_block"]), _rho(row["within_rho"]), fmt_p(row["within_p"]), _rho(row["null_q95"]),
            top1, NA if is_missing(row["regret"]) else f"{row['regret']:.4f}",
            _reliability_cell(row["reliability"], row["reliability_method"]) if not is_missing(row["reliability"])
            else NA, fmt_score(row["ceiling"]), f"{row['n_grid_seeds']} / {int(row['n_preview_seeds'])}",
            str(row["note"] or "")]


def _predictor_markdown(frame: pd.DataFrame, lead: list[str] | None = None) -> list[str]:
    """The predictor comparison as Markdown rows (``lead``: extra first columns, e.g. the domain)."""
    lead = lead or []
    lines = ["| " + " | ".join([*lead, *PREDICTOR_HEADER]) + " |",
             "|" + "|".join(["---"] * (len(lead) + 1) + ["---:"] * (len(PREDICTOR_HEADER) - 2) + ["---"]) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join([*(str(row[c]) for c in lead), *_predictor_cells(row)]) + " |")
    return lines


def _sign_agree_cell(row) -> str:
    value = row["sign_agree"]
    if value is None or is_missing(value):
        return NA
    return "yes" if value else ("no (Δ = 0)" if row["delta"] == 0 else "no (Z = 0)" if row["z"] == 0 else "no")


def affinity_markdown(analysis: DomainAnalysis) -> str:
    preview = analysis.affinity
    several = len(preview.run_ids) > 1
    lines = [f"### Look-ahead affinity preview vs measured transfer: {affinity_caption(analysis)}", "",
             f"Affinity run{'s' if several else ''}: {', '.join(f'`{r}`' for r in preview.run_ids)}", "",
             "| measure | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in _summary_rows(preview)]
    lines += ["", f"Predictors of Δ on the {preview.validation['n_edges']} compared edges:", "",
              *_predictor_markdown(preview.predictors)]
    marginal = preview.marginal is not None
    header = ["s", "t", "Z", *(["Z sd over seeds"] if several else []), *(["M"] if marginal else []), "Δ",
              "state (Δ)", "sign(Z) = sign(Δ)"]
    lines += ["", "| " + " | ".join(header) + " |",
              "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 4) + ["---", "---"]) + "|"]
    for _, row in preview.edges.iterrows():
        cells = [str(row["source"]), str(row["target"]), fmt_sci(row["z"]),
                 *([fmt_sci(row["z_std"])] if several else []), *([fmt_sci(row["z_marginal"])] if marginal else []),
                 fmt_delta(row["delta"]), str(row["state"]), _sign_agree_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", AFFINITY_DEFINITIONS, "", PREDICTOR_DEFINITIONS]
    if analysis.affinity_notes:
        lines += ["", "Notes:", ""] + [f"- {item}" for item in analysis.affinity_notes]
    return "\n".join(lines) + "\n"


def _latex_sci(value) -> str:
    if is_missing(value):
        return NA
    mantissa, exponent = f"{value:+.3e}".split("e")
    return f"${mantissa} \\times 10^{{{int(exponent)}}}$"


def affinity_latex(analysis: DomainAnalysis) -> str:
    preview = analysis.affinity
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{llrrll}", r"\toprule",
             r"$s$ & $t$ & $Z$ & $\Delta$ & state & sign agrees \\", r"\midrule"]
    for _, row in preview.edges.iterrows():
        delta = fmt_delta(row["delta"])
        cells = [latex_escape(row["source"]), latex_escape(row["target"]), _latex_sci(row["z"]),
                 delta if delta == NA else f"${delta}$", latex_escape(row["state"]),
                 _sign_agree_cell(row).replace("Δ", r"$\Delta$").replace("Z = 0", "$Z = 0$")]
        lines.append(" & ".join(cells) + r" \\")
    summary = "; ".join(f"{name}: {value}" for name, value in _summary_rows(preview))
    caption = (f"Look-ahead affinity $Z(s \\rightarrow t)$ vs measured transfer $\\Delta$, "
               f"{latex_escape(affinity_caption(analysis))}. {latex_escape(summary)}.")
    caption = caption.replace("ρ", r"$\rho$").replace("Δ", r"$\Delta$")
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}",
              f"\\label{{tab:affinity-{latex_escape(analysis.slug)}}}", r"\end{table}"]
    return "\n".join(lines + _predictor_latex(analysis)) + "\n"


def _latex_cell(text: str) -> str:
    return latex_escape(text).replace("ρ", r"$\rho$").replace("Δ", r"$\Delta$").replace("√", r"$\surd$")


def _predictor_latex(analysis: DomainAnalysis) -> list[str]:
    """The predictor comparison as a second table (without the note column)."""
    header = PREDICTOR_HEADER[:-1]
    lines = ["", r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
             r"\toprule", " & ".join(_latex_cell(h) for h in header) + r" \\", r"\midrule"]
    for _, row in analysis.affinity.predictors.iterrows():
        lines.append(" & ".join(_latex_cell(c) for c in _predictor_cells(row)[:-1]) + r" \\")
    caption = (f"Predictors of measured transfer $\\Delta$, {latex_escape(affinity_caption(analysis))}. "
               f"{_latex_cell(PREDICTOR_DEFINITIONS)}")
    return lines + [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}",
                    f"\\label{{tab:affinity-predictors-{latex_escape(analysis.slug)}}}", r"\end{table}"]


def affinity_csv(analysis: DomainAnalysis) -> str:
    frame = analysis.affinity.edges.copy()
    frame.insert(0, "domain", analysis.setting.domain)
    frame.insert(1, "model", analysis.setting.model)
    frame.insert(2, "profile", analysis.setting.profile)
    return frame_to_csv(frame)


def validation_frame(analyses: list[DomainAnalysis]) -> pd.DataFrame:
    """One row per setting with an affinity preview: domain, model, profile and VALIDATION_COLUMNS."""
    rows = [{"domain": a.setting.domain, "model": a.setting.model, "profile": a.setting.profile,
             **a.affinity.validation} for a in analyses if a.affinity is not None]
    return pd.DataFrame(rows, columns=["domain", "model", "profile", *VALIDATION_COLUMNS])


def predictor_frame(analyses: list[DomainAnalysis]) -> pd.DataFrame:
    """The validation CSV: one row per (setting, predictor): domain, model, profile, PREDICTOR_COLUMNS, then the
    setting's VALIDATION_COLUMNS that the predictor columns do not already hold (the row of predictor "z" has the
    same n_edges, Spearman and sign agreement as the setting's summary)."""
    extra = [c for c in VALIDATION_COLUMNS if c not in PREDICTOR_COLUMNS]
    rows = []
    for a in analyses:
        if a.affinity is None:
            continue
        setting = {"domain": a.setting.domain, "model": a.setting.model, "profile": a.setting.profile}
        for _, row in a.affinity.predictors.iterrows():
            rows.append({**setting, **row.to_dict(), **{c: a.affinity.validation[c] for c in extra}})
    return pd.DataFrame(rows, columns=["domain", "model", "profile", *PREDICTOR_COLUMNS, *extra])


def affinity_validation_markdown(analyses: list[DomainAnalysis]) -> str:
    frame = validation_frame(analyses)
    header = ["domain", "model", "profile", "edges", "Spearman ρ", "p", "sign agreement",
              "sign agreement (significant)", "preview wall", "grid wall", "ratio", "tracking overhead",
              "tracker overhead"]
    lines = ["### Look-ahead affinity preview vs the measured pairwise grid", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 10) + "|"]
    for _, v in frame.iterrows():
        cells = [str(v["domain"]), str(v["model"]), str(v["profile"]), str(v["n_edges"]),
                 NA if is_missing(v["spearman_rho"]) else f"{v['spearman_rho']:+.3f}", fmt_p(v["spearman_p"]),
                 fmt_share(v["n_sign_agree"], v["n_edges"], v["sign_agreement"]),
                 fmt_share(v["n_sign_agree_significant"], v["n_significant"], v["sign_agreement_significant"]),
                 fmt_seconds(v["preview_wall_s"]), fmt_seconds(v["grid_wall_s"]), fmt_score(v["time_ratio"]),
                 fmt_score(v["tracking_overhead"]), fmt_score(v["tracker_overhead"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", AFFINITY_DEFINITIONS, "", "p: exact permutation p for up to 8 edges, else spearmanr's "
              "(the CSV's p_method column says which)."]
    lines += ["", "#### Predictors of Δ (one row per setting and predictor; the CSV holds these rows)", "",
              *_predictor_markdown(predictor_frame(analyses), ["domain"]), "", PREDICTOR_DEFINITIONS]
    return "\n".join(lines) + "\n"


def write_affinity_tables(analysis: DomainAnalysis, out: Path) -> list[Path]:
    """``affinity_<slug>.{md,csv,tex}`` of one setting; [] without a preview."""
    if analysis.affinity is None:
        return []
    out = Path(out)
    written = []
    for name, text in ((f"affinity_{analysis.slug}.md", affinity_markdown(analysis)),
                       (f"affinity_{analysis.slug}.csv", affinity_csv(analysis)),
                       (f"affinity_{analysis.slug}.tex", affinity_latex(analysis))):
        write_text_atomic(out / name, text)
        written.append(out / name)
    return written


def write_affinity_validation(analyses: list[DomainAnalysis], out: Path) -> list[Path]:
    """``affinity_validation.{md,csv}``: one row per setting with a preview; [] when no setting has one."""
    if not any(a.affinity is not None for a in analyses):
        return []
    out = Path(out)
    written = []
    for name, text in (("affinity_validation.md", affinity_validation_markdown(analyses)),
                       ("affinity_validation.csv", frame_to_csv(predictor_frame(analyses)))):
        write_text_atomic(out / name, text)
        written.append(out / name)
    return written
