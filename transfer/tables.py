"""Writers for the analysis results: the paper's model tables and the edge table (Markdown, CSV, LaTeX) and the
transfer graph (networkx DiGraph, GraphML).

Pure formatting of ``transfer.analysis.DomainAnalysis``; nothing here computes a statistic.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import networkx as nx
import pandas as pd

from transfer.analysis import MODEL_LABELS, MODEL_TYPES, DomainAnalysis
from transfer.store import write_text_atomic

logger = logging.getLogger(__name__)

NA = "n/a"
METRIC_NAMES = {"entity_f1": "entity F1", "micro_f1": "micro-F1", "macro_f1": "macro-F1", "accuracy": "accuracy",
                "pearson": "Pearson r", "hoc_f1": "HoC F1"}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_score(value, digits: int = 3) -> str:
    return NA if _missing(value) else f"{value:.{digits}f}"


def fmt_delta(value, digits: int = 4) -> str:
    return NA if _missing(value) else f"{value:+.{digits}f}"


def fmt_p(value) -> str:
    if _missing(value):
        return NA
    return f"{value:.1e}" if value < 0.0005 else f"{value:.3f}"  # 1/(n_boot+1) = 0.000999 shows as 0.001


def setting_caption(analysis: DomainAnalysis) -> str:
    seeds = ", ".join(map(str, analysis.seeds)) or "none"
    return (f"domain {analysis.setting.domain}, model {analysis.setting.model}, profile {analysis.setting.profile}, "
            f"seeds {seeds}")


# ---------------------------------------------------------------------------------------------------------------
# Model table (paper Tables 2 and 3)
# ---------------------------------------------------------------------------------------------------------------

def models_wide(models: pd.DataFrame, column: str = "mean") -> pd.DataFrame:
    """Rows: model types in paper order; columns: tasks then Avg."""
    wide = models.pivot(index="model_type", columns="task", values=column)
    tasks = list(dict.fromkeys(models["task"]))
    return wide.reindex(index=list(MODEL_TYPES), columns=tasks)


def _best_per_column(wide: pd.DataFrame) -> dict[str, str | None]:
    best = {}
    for column in wide.columns:
        values = wide[column].dropna()
        best[column] = values.idxmax() if len(values) > 1 else None
    return best


def _model_cell(mean, std, bold: bool, markdown: bool) -> str:
    text = fmt_score(mean)
    if not _missing(mean) and not _missing(std):
        text += f" ± {std:.3f}" if markdown else f" $\\pm$ {std:.3f}"
    if bold and not _missing(mean):
        text = f"**{text}**" if markdown else f"\\textbf{{{text}}}"
    return text


def models_markdown(analysis: DomainAnalysis) -> str:
    means, stds = models_wide(analysis.models), models_wide(analysis.models, "std")
    best = _best_per_column(means)
    header = ["Model", *means.columns]
    lines = [f"### Test scores: {setting_caption(analysis)}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * len(means.columns)) + "|"]
    for model_type in means.index:
        cells = [_model_cell(means.at[model_type, c], stds.at[model_type, c], best[c] == model_type, True)
                 for c in means.columns]
        lines.append("| " + " | ".join([MODEL_LABELS[model_type], *cells]) + " |")
    lines += ["", "Mean over seeds (± sample standard deviation where there are two or more seeds); best per "
              "column in bold. Avg is given only when every task has a score."]
    return "\n".join(lines + _missing_note(analysis)) + "\n"


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
    columns = list(means.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "c" * len(columns) + "}",
             r"\toprule", " & ".join(["Model", *map(latex_escape, columns)]) + r" \\", r"\midrule"]
    for model_type in means.index:
        cells = [_model_cell(means.at[model_type, c], stds.at[model_type, c], best[c] == model_type, False)
                 for c in columns]
        lines.append(" & ".join([latex_escape(MODEL_LABELS[model_type]), *cells]) + r" \\")
    caption = (f"Test results, {latex_escape(setting_caption(analysis))}. Mean over seeds; best per column in bold."
               + (" n/a: missing runs." if analysis.missing else ""))
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}",
              f"\\label{{tab:models-{latex_escape(analysis.slug)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Edge table
# ---------------------------------------------------------------------------------------------------------------

def _edge_cells(row) -> list[str]:
    ci = NA if _missing(row["ci_low"]) else f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
    return [str(row["source"]), str(row["target"]), fmt_delta(row["delta"]), fmt_score(row["delta_std"], 4), ci,
            fmt_p(row["p"]), fmt_p(row["p_holm"]), str(row["colour"]), str(int(row["n_seeds"]))]


def edges_markdown(analysis: DomainAnalysis) -> str:
    header = ["s", "t", "Δ", "sd over seeds", f"{100 * (1 - analysis.alpha):.0f}% CI", "p", "p (Holm)", "colour",
              "seeds", "note"]
    lines = [f"### Transfer edges s → t: {setting_caption(analysis)}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5 + ["---", "---:", "---"]) + "|"]
    for _, row in analysis.edges.iterrows():
        note = str(row["note"] or "").replace("|", "/")
        lines.append("| " + " | ".join(_edge_cells(row) + [note]) + " |")
    lines += ["", f"Δ = test score of t trained with s (pair run) minus t alone (single run), mean over seeds. "
              f"p: two-sided paired bootstrap ({analysis.n_boot} resamples of test units, shared across seeds); "
              f"p (Holm): Holm-adjusted over the tested edges of this table. green: Δ > {analysis.min_delta:g} and "
              f"p (Holm) < {analysis.alpha:g}; red: Δ < {-analysis.min_delta or 0.0:g} and p (Holm) < {analysis.alpha:g}; "
              "grey: otherwise; missing: not testable (runs or predictions missing)."]
    return "\n".join(lines + _missing_note(analysis)) + "\n"


def edges_latex(analysis: DomainAnalysis) -> str:
    header = [r"$s$", r"$t$", r"$\Delta$", "sd", r"CI", r"$p$", r"$p_\mathrm{Holm}$", "colour", "seeds"]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{llrrcrrlr}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    for _, row in analysis.edges.iterrows():
        cells = [latex_escape(c) for c in _edge_cells(row)]
        for i in (2, 3, 4, 5, 6):  # numbers in math mode, so that '-' prints as a minus sign
            cells[i] = cells[i] if cells[i] == NA else f"${cells[i]}$"
        lines.append(" & ".join(cells) + r" \\")
    caption = (f"Pairwise transfer edges $s \\rightarrow t$, {latex_escape(setting_caption(analysis))}. "
               f"$\\Delta$: score of $t$ trained with $s$ minus $t$ alone; paired bootstrap "
               f"({analysis.n_boot} resamples), Holm-adjusted, $\\alpha = {analysis.alpha:g}$.")
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
    frame.insert(4, "model_label", frame["model_type"].map(MODEL_LABELS))
    return frame_to_csv(frame)


# ---------------------------------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------------------------------

def _graphml_value(value):
    """GraphML takes str, int, float and bool; NaN stays a float (written as 'nan')."""
    if value is None:
        return ""
    if hasattr(value, "item"):
        value = value.item()
    return value


def transfer_digraph(analysis: DomainAnalysis) -> nx.DiGraph:
    """Nodes = tasks (with their single-task score), edges s->t with delta, CI, p, p_holm, colour, n_seeds."""
    graph = nx.DiGraph(domain=analysis.setting.domain, model=analysis.setting.model,
                       profile=analysis.setting.profile, alpha=float(analysis.alpha),
                       min_delta=float(analysis.min_delta), n_boot=int(analysis.n_boot))
    single = analysis.models[analysis.models["model_type"] == "single"].set_index("task")["mean"]
    for task in analysis.tasks:
        graph.add_node(task, label=task, single_score=float(single.get(task, math.nan)))
    for _, row in analysis.edges.iterrows():
        attributes = {key: _graphml_value(row[key]) for key in
                      ("delta", "delta_std", "ci_low", "ci_high", "p", "p_holm", "colour", "n_seeds", "metric",
                       "note")}
        attributes["note"] = str(attributes["note"] or "")
        graph.add_edge(row["source"], row["target"], **attributes)
    return graph


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
