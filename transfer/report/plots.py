"""Figures of one analysed setting: the directed transfer graph, the source x target delta heatmap and the bar
chart of single-task vs MT-Refinement vs MT-Fine-Tune scores; where the setting has a look-ahead affinity preview,
the delta and Z heatmaps side by side and the preview graph (same drawing code, edges coloured by the sign of Z,
width by |Z|, no significance).

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas (no pyplot state, no display), the
graph comes from networkx (``transfer.report.present.transfer_digraph``, circular layout). Colours keep the paper's
green/red/grey meaning in colour-blind-distinguishable shades: dark teal-green ``#11845f`` for "s helps t",
vermilion ``#d95f02`` for "s hurts t", light grey ``#a6a6a6`` for "no significant effect", lighter grey dashed
for "missing / not tested"; the heatmap's diverging map runs vermilion -> white -> teal-green.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from transfer.analysis import AffinityPreview, DomainAnalysis
from transfer.report.draw import (GREEN, GREY, MISSING, RED, draw_graph, legend_handles, matrix_panel, new_figure,
                                  save_figure, symmetric_limit, wrap_task)
from transfer.report.present import (affinity_caption, model_seeds_text, affinity_digraph, affinity_validation_text, correction_label,
                                     fmt_delta, is_missing, metric_name, model_label, models_wide, predictor_caption,
                                     setting_caption, state_legend, state_rule_text, transfer_digraph)

logger = logging.getLogger(__name__)

EXPLORATORY = "#4d4d4d"
EDGE_STYLE = {  # evidence state -> (line colour, width, line style, label text colour)
    "helps": (GREEN, 2.6, "solid", "#0b5e44"),
    "hurts": (RED, 2.6, "solid", "#a34401"),
    "equivalent": (GREY, 1.8, "solid", "#555555"),
    "inconclusive": (GREY, 1.4, (0, (1, 1.6)), "#555555"),
    "exploratory": (EXPLORATORY, 0.9, (0, (5, 3)), EXPLORATORY),
    "n/a": (MISSING, 1.1, (0, (2, 3)), "#8a8a8a"),
}
CELL_STYLE = {  # evidence state -> heatmap cell (face, hatch, edge colour, line style, text colour); helps/hurts: on
    # the diverging scale; n/a: hatched "n/a"
    "equivalent": ("#b8b8b8", None, "none", "solid", "#1a1a1a"),
    "inconclusive": ("#efefef", "...", "#b0b0b0", "solid", "#333333"),
    "exploratory": ("white", None, EXPLORATORY, (0, (4, 3)), EXPLORATORY),
}
BAR_COLOURS = {"single": "#bdbdbd", "mt-refinement": "#6baed6", "mt-finetune": "#08519c"}
EXTRA_BAR_COLOURS = ("#fdae6b", "#a1d99b", "#9e9ac8", "#e6550d", "#31a354")  # model types beyond the paper's three


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def power_of_ten(exponent: int) -> str:
    """10 to the ``exponent`` with superscript digits, e.g. 10⁻³."""
    return "10" + str(exponent).translate(_SUPERSCRIPT)


def z_exponent(z: np.ndarray) -> int:
    """Power of ten the figures show Z in: floor(log10(max |Z| off the diagonal)) when that is below 0.1 (so the
    largest shows as 1.00 to 9.99), else 0 (Z as it is)."""
    z = np.asarray(z, dtype=float)
    off = np.abs(z[~np.eye(z.shape[0], dtype=bool)]) if z.ndim == 2 and z.size else np.abs(z.ravel())
    largest = float(off[np.isfinite(off)].max()) if np.isfinite(off).any() else 0.0
    return math.floor(math.log10(largest)) if 0 < largest < 0.1 else 0


def fmt_z(value: float, exponent: int) -> str:
    """Z in units of 10^exponent: signed, 2 decimals, typographic minus; one that rounds to zero shows 0.00."""
    text = f"{value / 10.0 ** exponent:+.2f}"
    return "0.00" if float(text) == 0 else text.replace("-", "\u2212")


def edge_label(data) -> str:
    """An edge's label: Δ, * where it helps or hurts, "n/a" where it is n/a (a delta of an untrained head is no
    evidence, so it is not shown)."""
    if data["state"] == "n/a" or is_missing(data["delta"]):
        return "n/a"
    return fmt_delta(data["delta"], typographic=True) + ("*" if data["state"] in ("helps", "hurts") else "")


def state_handles(analysis: DomainAnalysis) -> list:
    """One legend entry per evidence state (all six, always, in the order of STATES)."""
    return legend_handles(EDGE_STYLE, state_legend(analysis), widths={"equivalent": 1.9})


def plot_transfer_graph(analysis: DomainAnalysis):
    """The directed transfer graph: two arcs per task pair, styled by the edge's evidence state, labelled Δ.

    A task whose single-task run never learned (the learning gate, at every seed) is drawn hatched, and the edges
    into it are left out: such a target measures nothing, and an arc would look like a finding. Its outgoing edges
    stay (a partner that does not learn its own task can still change another's)."""
    caption = (f"{setting_caption(analysis)}\nlabel: Δ = score of t trained with s − t alone (mean over seeds); "
               f"* helps/hurts ({correction_label(analysis)}-corrected p < {analysis.alpha:g}, "
               f"|Δ| > {analysis.margin:g})")
    graph = transfer_digraph(analysis)
    unlearned = analysis.unlearned
    if unlearned:
        graph.remove_edges_from([(s, t) for s, t in list(graph.edges) if t in unlearned])
        caption += (f"\nhatched: no single-task run learned the task (learning gate, every seed); "
                    f"edges into {', '.join(unlearned)} not drawn")
    return draw_graph(analysis.tasks, graph, EDGE_STYLE, edge_label,
                      f"Pairwise transfer s → t, {analysis.setting.domain}", caption, state_handles(analysis),
                      key="state", hatched=unlearned)


# ---------------------------------------------------------------------------------------------------------------
# Heatmap
# ---------------------------------------------------------------------------------------------------------------

def delta_matrix(analysis: DomainAnalysis, tasks: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(delta, state) matrices, rows = source, columns = target (in ``tasks`` order, default the analysis's);
    NaN / "n/a" where missing and on the diagonal."""
    index = {task: i for i, task in enumerate(analysis.tasks if tasks is None else tasks)}
    n = len(index)
    delta, states = np.full((n, n), np.nan), np.full((n, n), "n/a", dtype=object)
    for _, row in analysis.edges.iterrows():
        if row["source"] in index and row["target"] in index:
            i, j = index[row["source"]], index[row["target"]]
            delta[i, j], states[i, j] = row["delta"], row["state"]
    return delta, states


def _delta_panel(figure, ax, analysis: DomainAnalysis, tasks: tuple[str, ...], title: str) -> str:
    """The measured Δ heatmap on ``ax``, cells drawn by evidence state; returns the note that explains them."""
    delta, states = delta_matrix(analysis, tasks)
    shown = np.where(states == "n/a", np.nan, delta)
    coloured = np.isin(states, ("helps", "hurts"))
    styles = {(i, j): CELL_STYLE[states[i, j]] for i in range(len(tasks)) for j in range(len(tasks))
              if i != j and states[i, j] in CELL_STYLE}
    limit = symmetric_limit(np.where(coloured, delta, np.nan), max(0.005, analysis.margin))
    texts = [[edge_label({"state": states[i, j], "delta": delta[i, j]}) for j in range(len(tasks))]
             for i in range(len(tasks))]
    matrix_panel(figure, ax, shown, texts, coloured, limit, tasks, "Δ = score(t with s) − score(t alone)", title,
                 styles)
    return (f"coloured: helps/hurts (*); grey: equivalent; dotted: inconclusive; dashed: exploratory; "
            f"hatched: n/a\n{state_rule_text(analysis)}")


def _cell_handles(analysis: DomainAnalysis) -> list:
    from matplotlib.patches import Patch

    face = {"helps": (GREEN, None, "none", "solid"), "hurts": (RED, None, "none", "solid"),
            "n/a": ("white", "////", "#9a9a9a", "solid")}
    face.update({state: style[:4] for state, style in CELL_STYLE.items()})
    return [Patch(facecolor=face[state][0], hatch=face[state][1], edgecolor=face[state][2], linestyle=face[state][3],
                  label=text) for state, text in state_legend(analysis).items()]


def plot_delta_heatmap(analysis: DomainAnalysis):
    """Source x target matrix of Δ: helps/hurts cells on a symmetric diverging scale (*), the other states in
    their own cell styles, with the states' legend."""
    n = max(len(analysis.tasks), 1)
    figure = new_figure(1.45 * n + 3.2, 1.25 * n + 2.4)
    ax = figure.add_subplot(1, 1, 1)
    note = _delta_panel(figure, ax, analysis, analysis.tasks, f"Transfer Δ, {analysis.setting.domain}")
    ax.legend(handles=_cell_handles(analysis), loc="upper left", bbox_to_anchor=(1.32, 1.0), frameon=False,
              fontsize=8.5, title="evidence state", title_fontsize=9, handlelength=1.6, handleheight=1.4)
    ax.annotate(f"{_wrap(note, 110)}\n{setting_caption(analysis)}", xy=(0.5, 0.0), xycoords=ax.xaxis.label,
                xytext=(0, -10), textcoords="offset points", ha="center", va="top", fontsize=7.5, color="#444444")
    return figure


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


# ---------------------------------------------------------------------------------------------------------------
# Look-ahead affinity preview: Z next to the measured Δ, and the preview graph
# ---------------------------------------------------------------------------------------------------------------

PREVIEW_EDGE_STYLE = {  # sign of Z -> (line colour, width, line style, label text colour); no significance here
    "green": (GREEN, 2.0, "solid", "#0b5e44"),
    "red": (RED, 2.0, "solid", "#a34401"),
    "grey": (GREY, 1.4, "solid", "#555555"),
    "missing": (MISSING, 1.3, (0, (4, 3)), "#8a8a8a"),
}


def _mover(symbol: str) -> str:
    """What lowers the target's loss when the value is positive: a step on s (Z), or s's own gradient (M)."""
    return "a step on s" if symbol == "Z" else "s's gradient"


def _z_panel(figure, ax, preview: AffinityPreview, title: str) -> int:
    """The affinity heatmap on ``ax`` in units of 10^exponent (cells and colour bar alike): the marginal affinity
    M where the affinity runs recorded it, else the plain Z; returns the exponent."""
    values = preview.marginal if preview.marginal is not None else preview.z
    symbol = "M" if preview.marginal is not None else "Z"
    exponent = z_exponent(values)
    scaled = values / 10.0 ** exponent
    n = len(preview.tasks)
    limit = symmetric_limit(scaled, 0.0) or 1.0  # all zero: a plain -1..1 scale
    texts = [[fmt_z(values[i, j], exponent) for j in range(n)] for i in range(n)]
    unit = f", in units of {power_of_ten(exponent)}" if exponent else ""
    matrix_panel(figure, ax, scaled, texts, np.zeros((n, n), dtype=bool), limit, preview.tasks,
                  f"{symbol}(s→t){unit} (> 0: {_mover(symbol)} lowers t's loss)", title)
    return exponent


def plot_affinity_heatmaps(analysis: DomainAnalysis):
    """Measured Δ (left) and look-ahead affinity Z (right) side by side, same task order, each on its own
    symmetric scale; only the Z panel where no measured edge exists."""
    preview = analysis.affinity
    tasks, n = preview.tasks, max(len(preview.tasks), 1)
    panels = 2 if preview.has_grid else 1
    figure = new_figure(panels * (1.25 * n + 3.4), 1.25 * n + 1.7)
    figure.subplots_adjust(left=0.1 if panels == 2 else 0.18, right=0.95, top=0.9, bottom=0.12, wspace=0.36)
    note = ""
    if preview.has_grid:
        note = _delta_panel(figure, figure.add_subplot(1, 2, 1), analysis, tasks,
                            "Measured transfer Δ (pairwise grid)") + "\n"
    z_ax = figure.add_subplot(1, panels, panels)
    runs = len(preview.run_ids)
    name = "Marginal affinity M" if preview.marginal is not None else "Look-ahead affinity Z"
    _z_panel(figure, z_ax, preview, f"{name} (" + ("all-task run)" if runs == 1 else
                                                  f"all-task runs, mean over {runs} seeds)"))
    z_ax.set_ylabel("source s (look-ahead step on s's loss)", fontsize=10.5)
    title = ("Affinity preview vs measured pairwise transfer" if preview.has_grid
             else "Look-ahead affinity preview (no measured grid to compare with)")
    figure.suptitle(f"{title}, {analysis.setting.domain}", fontsize=13, y=0.99, va="bottom")
    if note:
        note = f"Δ (left): {note}"
    where = " (right)" if preview.has_grid else ""
    definition = (f"M{where} = (L_t(after a zero-gradient step) − L_t(after the step on s)) / (lr · L_t(before)): "
                  "what s's own gradient adds beyond the shared momentum" if preview.marginal is not None else
                  f"Z{where} = 1 − L_t(after one look-ahead step on s) / L_t(before)")
    caption = (f"{affinity_validation_text(preview)}\n{predictor_caption(preview)}\n{note}{definition}, mean over "
               f"probes and epochs{' and seeds' if runs > 1 else ''}; no significance test; diagonal (self-affinity) "
               f"not shown\n{affinity_caption(analysis)}")
    z_ax.annotate(_wrap(caption, 150), xy=(0.5, 0.0), xycoords=(figure.transFigure, z_ax.xaxis.label), xytext=(0, -12),
                  textcoords="offset points", ha="center", va="top", fontsize=8.5, color="#444444", linespacing=1.5)
    return figure


def _z_label(exponent: int) -> Callable[[dict], str]:
    def label(data: dict) -> str:
        return "n/a" if is_missing(data["value"]) else fmt_z(data["value"], exponent)
    return label


def plot_affinity_graph(analysis: DomainAnalysis):
    """The preview transfer graph: arcs s → t coloured by the sign of the marginal affinity M where the affinity
    runs recorded it, else of Z (no test), labelled with it."""
    preview = analysis.affinity
    graph = affinity_digraph(analysis)
    symbol = graph.graph["measure"]
    values = preview.marginal if symbol == "M" else preview.z
    exponent = z_exponent(values)
    largest = symmetric_limit(values, 1e-300)
    for _, _, data in graph.edges(data=True):  # width grows with |value|: a tiny one is a thin line, not a strong call
        if data["colour"] in ("green", "red"):
            data["width"] = 0.9 + 2.1 * abs(data["value"]) / largest
    present = {data["colour"] for _, _, data in graph.edges(data=True)}
    labels = {"green": f"{symbol} > 0: {_mover(symbol)} lowers t's loss",
              "red": f"{symbol} < 0: {_mover(symbol)} raises t's loss"}
    labels.update({key: text for key, text in (("grey", f"{symbol} = 0"), ("missing", "not measured")) if key in present})
    unit = f" in units of {power_of_ten(exponent)}" if exponent else ""
    definition = ("M = (L_t(after a zero-gradient step) − L_t(after the step on s)) / (lr · L_t(before))"
                  if symbol == "M" else "Z = 1 − L_t(after a step on s) / L_t(before)")
    caption = (f"{affinity_caption(analysis, short=True)}\nlabel: {symbol}(s→t){unit}, {definition}\n"
               f"colour: sign of {symbol}, line width: |{symbol}|; an unfitted preview, no significance test")
    return draw_graph(preview.tasks, graph, PREVIEW_EDGE_STYLE, _z_label(exponent),
                      f"Affinity preview s → t (unfitted, no test), {analysis.setting.domain}", caption,
                      legend_handles(PREVIEW_EDGE_STYLE, labels))


# ---------------------------------------------------------------------------------------------------------------
# Bar chart
# ---------------------------------------------------------------------------------------------------------------

def _bar_tick_labels(analysis: DomainAnalysis, columns: list[str]) -> list[str]:
    metric = {row["target"]: row["metric"] for _, row in analysis.edges.iterrows()}
    labels = []
    for column in columns:
        name = "Average" if column == "Avg" else wrap_task(column, 12)
        extra = metric_name(metric.get(column, ""))
        labels.append(f"{name}\n({extra})" if extra else name)
    return labels


def _bar_colours(types: list[str]) -> dict[str, str]:
    """The paper's three model types keep their colours; others take the extra palette in order."""
    extra = iter(EXTRA_BAR_COLOURS * (1 + len(types) // len(EXTRA_BAR_COLOURS)))
    return {m: BAR_COLOURS[m] if m in BAR_COLOURS else next(extra) for m in types}


def plot_model_bars(analysis: DomainAnalysis):
    """Grouped bars per task (and the average), one bar per model type of the table (single task,
    MT-Refinement, MT-Fine-Tune, and any other), ± sd over seeds."""
    means, stds = models_wide(analysis.models), models_wide(analysis.models, "std")
    flags = (models_wide(analysis.models.assign(untrained=analysis.models["untrained"].fillna("") != ""), "untrained")
             if "untrained" in analysis.models else means.notna() & False).fillna(False).astype(bool)
    columns, types = list(means.columns), list(means.index)
    colours = _bar_colours(types)
    x = np.arange(len(columns))
    width = 0.78 / max(len(types), 1)
    figure = new_figure(max(6.5, 1.55 * len(columns) + 2.0), 4.8)
    ax = figure.add_subplot(1, 1, 1)
    top = np.nanmax(means.to_numpy(dtype=float)) if np.isfinite(means.to_numpy(dtype=float)).any() else 1.0
    bottom = min(0.0, np.nanmin(means.to_numpy(dtype=float)) if np.isfinite(means.to_numpy(dtype=float)).any() else 0)
    for k, model_type in enumerate(types):
        offsets = x + (k - (len(types) - 1) / 2) * width
        values = means.loc[model_type].to_numpy(dtype=float)
        errors = stds.loc[model_type].to_numpy(dtype=float)
        present = ~np.isnan(values)
        ax.bar(offsets[present], values[present], width * 0.94, color=colours[model_type], edgecolor="#333333",
               lw=0.6, label=model_label(model_type), zorder=2)
        spread = present & np.isfinite(errors) & (np.nan_to_num(errors) > 0)
        ax.errorbar(offsets[spread], values[spread], yerr=errors[spread], fmt="none", ecolor="#222222", lw=0.9,
                    capsize=2.5, zorder=3)
        marks = flags.loc[model_type].to_numpy(dtype=bool)
        for xo, value, error, mark in zip(offsets[present], values[present], np.nan_to_num(errors[present]),
                                          marks[present]):
            ax.text(xo, max(value, 0) + error + 0.012 * (top - bottom), f"{value:.3f}{' †' if mark else ''}",
                    rotation=90, ha="center", va="bottom", fontsize=7.5, color="#a34401" if mark else "#222222")
        for xo in offsets[~present]:  # a short hatched stub, so a missing score never looks like a zero
            ax.bar(xo, 0.05 * (top - bottom), width * 0.94, bottom=0, facecolor="white", edgecolor="#9a9a9a",
                   hatch="////", lw=0.6, zorder=1)
            ax.text(xo, 0.07 * (top - bottom), "n/a", rotation=90, ha="center", va="bottom", fontsize=7.5,
                    color="#555555")
    ax.set_xticks(x, _bar_tick_labels(analysis, columns), fontsize=9)
    margin = 0.06 * (top - bottom) if bottom < 0 else 0.0  # room under a negative bar (e.g. Pearson < 0)
    ax.set_ylim(bottom - margin, top + 0.2 * (top - bottom))
    ax.set_ylabel("test score (each task's metric)", fontsize=10)
    ax.grid(axis="y", color="#e3e3e3", lw=0.8, zorder=0)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    if len(columns) > 1:
        ax.axvline(x[-1] - 0.5, color="#999999", lw=0.8, ls=":")
    from matplotlib.patches import Patch

    # Explicit handles: a model type with no bars at all would otherwise get matplotlib's default colour.
    handles = [Patch(facecolor=colours[m], edgecolor="#333333", lw=0.6, label=model_label(m)) for m in types]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(types), 4) or 1,
              frameon=False, fontsize=9)
    ax.set_title(f"Single task vs multi-task, {analysis.setting.domain}", fontsize=12, pad=28)
    seeds = model_seeds_text(analysis)  # the setting's seeds are the grid's; a model may have fewer runs
    seeds_line = f"\nscores over seeds: {seeds}" if seeds else ""
    ax.set_xlabel(f"mean over seeds, error bar ±1 sd where there are 2+ seeds; hatched n/a: missing runs"
                  f"{'; † untrained (learning gate)' if flags.to_numpy(dtype=bool).any() else ''}\n"
                  f"{setting_caption(analysis)}{seeds_line}", fontsize=8,
                  color="#444444", labelpad=10)
    return figure


# ---------------------------------------------------------------------------------------------------------------
# All figures of one setting
# ---------------------------------------------------------------------------------------------------------------

def write_affinity_figures(analysis: DomainAnalysis, out: Path,
                           formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """``affinity_<slug>`` (Δ and Z heatmaps) and ``affinity_graph_<slug>`` (preview graph); [] without a preview."""
    if analysis.affinity is None:
        return []
    written = []
    for stem, draw in ((f"affinity_{analysis.slug}", plot_affinity_heatmaps),
                       (f"affinity_graph_{analysis.slug}", plot_affinity_graph)):
        written += save_figure(draw(analysis), Path(out), stem, tuple(formats))
        logger.info("figure %s written", stem)
    return written


def write_figures(analysis: DomainAnalysis, out: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Transfer graph, heatmap and bar chart of one setting, each in every format; returns the paths."""
    out = Path(out)
    written = []
    for stem, draw in ((f"transfer_graph_{analysis.slug}", plot_transfer_graph),
                       (f"delta_heatmap_{analysis.slug}", plot_delta_heatmap),
                       (f"model_scores_{analysis.slug}", plot_model_bars)):
        figure = draw(analysis)
        written += save_figure(figure, out, stem, tuple(formats))
        logger.info("figure %s written", stem)
    return written
