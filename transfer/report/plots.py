"""Figures of one analysed setting: the directed transfer graph, the source x target delta heatmap and the bar
chart of single-task vs MT-Refinement vs MT-Fine-Tune scores; where the setting has a look-ahead affinity preview,
the delta and Z heatmaps side by side and the preview graph (same drawing code, edges coloured by the sign of Z,
width by |Z|, no significance).

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas (no pyplot state, no display), the
graph comes from networkx (``transfer.report.tables.transfer_digraph``, circular layout). Colours keep the paper's
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

from transfer.analysis import MODEL_LABELS, MODEL_TYPES, AffinityPreview, DomainAnalysis
from transfer.report.tables import (METRIC_NAMES, affinity_caption, affinity_digraph, affinity_validation_text, models_wide,
                             setting_caption, transfer_digraph)

logger = logging.getLogger(__name__)

# Colour-blind check (Machado et al. 2009 simulation): under deuteranopia/protanopia the teal-green turns a dark
# grey-olive (L* ~47), the vermilion a saturated yellow-olive (L* ~50-59) and the grey stays a light grey (L* 68),
# so the three calls differ in lightness and saturation; line width, the * on significant labels and the sign of
# every label carry the call as well.
GREEN, RED, GREY, MISSING = "#11845f", "#d95f02", "#a6a6a6", "#cccccc"
EDGE_STYLE = {  # colour -> (line colour, width, line style, label text colour)
    "green": (GREEN, 2.6, "solid", "#0b5e44"),
    "red": (RED, 2.6, "solid", "#a34401"),
    "grey": (GREY, 1.4, "solid", "#555555"),
    "missing": (MISSING, 1.3, (0, (4, 3)), "#8a8a8a"),
}
BAR_COLOURS = {"single": "#bdbdbd", "mt-refinement": "#6baed6", "mt-finetune": "#08519c"}
DPI = 200
_REPRODUCIBLE_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}  # no timestamps: stable files
NODE_RADIUS = 0.25  # data units; the layout circle has radius 1
LABEL_FONT = 9.5
EDGE_RAD = 0.18  # arc3 curvature of the shortest edges
LABEL_GAP = 0.06  # data units kept free between two edge labels


def _new_figure(width: float, height: float):
    """A Figure on an Agg canvas, independent of pyplot and of the session's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, out: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    """Save as ``out/stem.<fmt>`` for each format (PNG at 200 dpi); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        tmp = path.with_name(f".{stem}.tmp.{fmt}")
        figure.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight", pad_inches=0.08,
                       metadata=_REPRODUCIBLE_METADATA.get(fmt))
        tmp.replace(path)
        paths.append(path)
    return paths


def wrap_task(name: str, width: int = 9) -> str:
    """Break a task name after hyphens into lines of about ``width`` characters (node and tick labels)."""
    parts = name.split("-")
    lines, current = [], ""
    for i, part in enumerate(parts):
        piece = part + ("-" if i < len(parts) - 1 else "")
        if current and len(current) + len(piece) > width:
            lines.append(current)
            current = piece
        else:
            current += piece
    return "\n".join([*lines, current])


# ---------------------------------------------------------------------------------------------------------------
# Transfer graph
# ---------------------------------------------------------------------------------------------------------------

def _layout(tasks: tuple[str, ...]) -> dict[str, np.ndarray]:
    """networkx's circular layout, turned so that 4 tasks form a square (like the paper's figure) and other
    counts start at the top; tasks go clockwise in table order."""
    import networkx as nx

    if len(tasks) == 1:
        return {tasks[0]: np.zeros(2)}
    start = math.pi * {2: 1.0, 4: 0.75}.get(len(tasks), 0.5)  # 2 tasks side by side, 4 in a square
    rotation = np.array([[math.cos(start), -math.sin(start)], [math.sin(start), math.cos(start)]])
    flip = np.array([[1.0, 0.0], [0.0, -1.0]])  # counter-clockwise -> clockwise
    scale = math.sqrt(2) if len(tasks) == 4 else 1.15  # 4 tasks: a square of side 2; others: radius 1.15
    pos = nx.circular_layout(nx.empty_graph(list(tasks)), scale=scale)
    return {task: rotation @ flip @ np.asarray(xy, dtype=float) for task, xy in pos.items()}


def _control_point(a: np.ndarray, b: np.ndarray, rad: float) -> np.ndarray:
    """Middle control point of matplotlib's ``arc3`` connection from a to b (equal-aspect axes)."""
    d = b - a
    return (a + b) / 2 + rad * np.array([d[1], -d[0]])


def _bezier(a: np.ndarray, c: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=float)[..., None]
    return (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t ** 2 * b


def fmt_delta(value: float) -> str:
    """Signed, 3 decimals, typographic minus; a delta that rounds to zero is shown as 0.000 (no sign)."""
    text = f"{value:+.3f}"
    return "0.000" if float(text) == 0 else text.replace("-", "\u2212")


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


def _edge_label(row) -> str:
    if row["colour"] == "missing":
        return "n/a" if _nan(row["delta"]) else f"{fmt_delta(row['delta'])}?"
    return fmt_delta(row["delta"]) + ("*" if row["colour"] in ("green", "red") else "")


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _box_overlap(a: tuple, b: tuple) -> float:
    """Overlap area of two boxes (x0, y0, x1, y1)."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _circle_box_overlap(centre: np.ndarray, radius: float, box: tuple) -> float:
    nearest = np.clip(centre, [box[0], box[1]], [box[2], box[3]])
    gap = radius + 0.03 - float(np.linalg.norm(centre - nearest))
    return max(0.0, gap) * (box[2] - box[0])


def _text_box(ax, text: str, xy: np.ndarray, renderer, fontsize: float) -> tuple:
    """Data-space box (x0, y0, x1, y1) of ``text`` centred at ``xy``, with the label's rounded padding."""
    artist = ax.text(*xy, text, fontsize=fontsize, fontweight="bold", ha="center", va="center")
    extent = artist.get_window_extent(renderer)
    artist.remove()
    pad = (0.25 * fontsize + 1.5) * ax.figure.dpi / 72
    corners = [[extent.x0 - pad, extent.y0 - pad], [extent.x1 + pad, extent.y1 + pad]]
    (x0, y0), (x1, y1) = ax.transData.inverted().transform(corners)
    return (x0, y0, x1, y1)


def _place_labels(ax, edges: list[dict], nodes: dict, renderer) -> list[np.ndarray]:
    """Greedy label placement: for each edge, the point along its arc whose label box overlaps least with
    the labels already placed, the nodes and the other arcs (ties go to the arc's middle)."""
    candidates = np.array([0.5, 0.44, 0.56, 0.38, 0.62, 0.32, 0.68, 0.27, 0.73, 0.22, 0.78])
    curves = [_bezier(e["a"], e["c"], e["b"], np.linspace(0.1, 0.9, 60)) for e in edges]
    placed: list[tuple] = []
    positions = []
    for i, edge in enumerate(edges):
        best, best_cost = None, math.inf
        for rank, t in enumerate(candidates):
            xy = _bezier(edge["a"], edge["c"], edge["b"], t)
            box = _text_box(ax, edge["text"], xy, renderer, LABEL_FONT)
            area = (box[2] - box[0]) * (box[3] - box[1])
            padded = (box[0] - LABEL_GAP, box[1] - LABEL_GAP, box[2] + LABEL_GAP, box[3] + LABEL_GAP)
            cost = sum(_box_overlap(padded, other) for other in placed) / area * 10
            cost += sum(_circle_box_overlap(centre, NODE_RADIUS, box) for centre in nodes.values()) * 10
            cost += 0.25 * sum(int(np.count_nonzero((c[:, 0] > box[0]) & (c[:, 0] < box[2]) & (c[:, 1] > box[1])
                                                    & (c[:, 1] < box[3]))) for j, c in enumerate(curves) if j != i)
            cost += 0.002 * rank
            if cost < best_cost:
                best, best_cost = (xy, box), cost
        positions.append(best[0])
        placed.append(best[1])
    return positions


def _legend_handles(styles: dict, labels: dict[str, str], widths: dict[str, float] | None = None) -> list:
    """One line handle per style key in ``labels`` (in that order), drawn like the edges (``widths``: overrides)."""
    from matplotlib.lines import Line2D

    widths = widths or {}
    return [Line2D([], [], color=styles[key][0], lw=widths.get(key, styles[key][1]), ls=styles[key][2], label=text)
            for key, text in labels.items()]


def _graph_legend(ax, handles: list) -> None:
    ax.legend(handles=handles, loc="upper center", ncol=2, frameon=False, fontsize=9,
              bbox_to_anchor=(0.5, 0.0), handlelength=2.6, columnspacing=1.6)


def _measured_legend(analysis: DomainAnalysis) -> list:
    alpha, floor = f"{analysis.alpha:g}", f"{analysis.min_delta:g}"
    return _legend_handles(EDGE_STYLE, {
        "green": f"s helps t (Δ > {floor}, Holm p < {alpha})",
        "red": f"s hurts t (Δ < {'-' if analysis.min_delta else ''}{floor}, Holm p < {alpha})",
        "grey": "no significant effect",
        "missing": "missing runs / not tested",
    }, widths={"grey": 1.5})


def _draw_nodes(ax, tasks: tuple[str, ...], pos: dict) -> dict:
    from matplotlib.patches import Circle

    patches = {}
    for task in tasks:
        circle = Circle(pos[task], NODE_RADIUS, facecolor="#f4f4f4", edgecolor="#333333", lw=1.4, zorder=3)
        ax.add_patch(circle)
        ax.text(*pos[task], wrap_task(task), ha="center", va="center", fontsize=10, fontweight="bold",
                color="#1a1a1a", zorder=4, linespacing=1.1)
        patches[task] = circle
    return patches


def _edge_rad(length: float, shortest: float) -> float:
    """Curvature of an arc3 edge: shorter chords bend more, so that at every node the arcs to its neighbours
    and across the layout leave at distinct angles (for a square: about 20, 35, 55 and 70 degrees)."""
    return EDGE_RAD * (shortest / length) ** 2


def _draw_edges(ax, graph, pos: dict, patches: dict, styles: dict, label_of: Callable[[dict], str]) -> list[dict]:
    from matplotlib.patches import FancyArrowPatch

    lengths = {(s, t): float(np.linalg.norm(pos[t] - pos[s])) for s, t in graph.edges}
    shortest = min(lengths.values(), default=1.0)
    drawn = []
    for source, target, data in graph.edges(data=True):
        colour, width, style, text_colour = styles[data["colour"]]
        width = data.get("width", width)  # an edge may carry its own width (the preview: |Z|)
        rad = _edge_rad(lengths[(source, target)], shortest)
        arrow = FancyArrowPatch(pos[source], pos[target], connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                mutation_scale=16 + 2 * width, lw=width, color=colour, linestyle=style,
                                patchA=patches[source], patchB=patches[target], shrinkA=3, shrinkB=3,
                                zorder=2 if data["colour"] in ("green", "red") else 1)
        ax.add_patch(arrow)
        a, b = pos[source], pos[target]
        drawn.append({"a": a, "b": b, "c": _control_point(a, b, rad), "text_colour": text_colour,
                      "edge_colour": colour, "text": label_of({**data})})
    return drawn


def _graph_axes(figure, pos: dict):
    # Room around the nodes for the outward arcs' bulge (rad * chord / 2) and their labels.
    shortest = min((float(np.linalg.norm(p - q)) for p in pos.values() for q in pos.values() if p is not q),
                   default=1.0)
    margin = max(NODE_RADIUS, EDGE_RAD * shortest / 2 + 0.1) + 0.06
    points = np.array(list(pos.values()))
    ax = figure.add_axes([0.03, 0.1, 0.94, 0.78])
    ax.set_xlim(points[:, 0].min() - margin, points[:, 0].max() + margin)
    ax.set_ylim(points[:, 1].min() - margin, points[:, 1].max() + margin)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def draw_graph(tasks: tuple[str, ...], graph, styles: dict, label_of: Callable[[dict], str], title: str,
               caption: str, handles: list):
    """A directed task graph in the transfer-graph layout: nodes on a circle, two arcs per task pair styled by
    ``styles[edge["colour"]]`` (line colour, width, line style, label colour), labels placed clear of each other."""
    pos = _layout(tasks)
    size = 7.0 + 0.75 * max(0, len(tasks) - 4)  # more tasks: more edges and labels to fit
    figure = _new_figure(size, size + 0.4)
    ax = _graph_axes(figure, pos)
    patches = _draw_nodes(ax, tasks, pos)
    edges = _draw_edges(ax, graph, pos, patches, styles, label_of)
    renderer = figure.canvas.get_renderer()
    for edge, xy in zip(edges, _place_labels(ax, edges, pos, renderer)):
        ax.text(*xy, edge["text"], fontsize=LABEL_FONT, ha="center", va="center", color=edge["text_colour"],
                fontweight="bold", zorder=5,
                bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": edge["edge_colour"], "lw": 0.8})
    if len(tasks) < 2:
        ax.text(0, -0.6, "one task only: no pairs", ha="center", fontsize=10, color="#555555")
    ax.set_title(title, fontsize=13, pad=14 + 13 * (caption.count("\n") + 1))  # room for the caption lines
    ax.text(0.5, 1.02, caption, transform=ax.transAxes, ha="center", va="bottom", fontsize=8.5, color="#444444")
    _graph_legend(ax, handles)
    return figure


def plot_transfer_graph(analysis: DomainAnalysis):
    """The directed transfer graph: two arcs per task pair, coloured by the edge's call, labelled with Δ."""
    caption = (f"{setting_caption(analysis)}\nlabel: Δ = score of t trained with s − t alone "
               f"(mean over seeds); * Holm-adjusted paired bootstrap p < {analysis.alpha:g}")
    return draw_graph(analysis.tasks, transfer_digraph(analysis), EDGE_STYLE, _edge_label,
                      f"Pairwise transfer s → t, {analysis.setting.domain}", caption, _measured_legend(analysis))


# ---------------------------------------------------------------------------------------------------------------
# Heatmap
# ---------------------------------------------------------------------------------------------------------------

def delta_matrix(analysis: DomainAnalysis, tasks: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(delta, significant) matrices, rows = source, columns = target (in ``tasks`` order, default the analysis's);
    NaN/False where missing or diagonal."""
    index = {task: i for i, task in enumerate(analysis.tasks if tasks is None else tasks)}
    n = len(index)
    delta, significant = np.full((n, n), np.nan), np.zeros((n, n), dtype=bool)
    for _, row in analysis.edges.iterrows():
        if row["source"] in index and row["target"] in index:
            i, j = index[row["source"]], index[row["target"]]
            delta[i, j] = row["delta"]
            significant[i, j] = row["colour"] in ("green", "red")
    return delta, significant


def _diverging_cmap():
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("transfer_delta", [RED, "#f7f7f7", GREEN])


def _cell_text_colour(value: float, limit: float) -> str:
    return "white" if abs(value) > 0.62 * limit else "#1a1a1a"


def _heatmap_cells(ax, values: np.ndarray, texts: list[list[str]], bold: np.ndarray, limit: float) -> None:
    """Cell labels: grey "—" on the diagonal, hatched "n/a" where NaN, else ``texts`` (bold where ``bold``)."""
    from matplotlib.patches import Rectangle

    n = values.shape[0]
    for i in range(n):
        for j in range(n):
            if i == j:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#e6e6e6", lw=0))
                ax.text(j, i, "—", ha="center", va="center", color="#777777", fontsize=11)
            elif np.isnan(values[i, j]):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", edgecolor="#9a9a9a",
                                       hatch="////", lw=0.0))
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=10, color="#444444",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none"})
            else:
                ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=10,
                        fontweight="bold" if bold[i, j] else "normal", color=_cell_text_colour(values[i, j], limit))


def _symmetric_limit(values: np.ndarray, floor: float) -> float:
    """Half-range of a diverging scale centred on 0: the largest |value| off the diagonal, at least ``floor``."""
    off = values[~np.eye(values.shape[0], dtype=bool)] if values.size else values
    finite = np.abs(off[np.isfinite(off)])
    return max(float(finite.max()) if finite.size else 0.0, floor)


def _matrix_panel(figure, ax, values: np.ndarray, texts: list[list[str]], bold: np.ndarray, limit: float,
                  tasks: tuple[str, ...], colorbar_label: str, title: str):
    """One source x target heatmap on the symmetric diverging scale [-limit, limit], with its own colour bar."""
    n = max(len(tasks), 1)
    shown = np.array(values, dtype=float)
    np.fill_diagonal(shown, np.nan)  # the diagonal is drawn as a grey "—" cell, never on the scale
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=_diverging_cmap(), vmin=-limit, vmax=limit)
    _heatmap_cells(ax, shown, texts, bold, limit)
    labels = [wrap_task(t, 12) for t in tasks]
    ax.set_xticks(range(len(tasks)), labels, fontsize=9.5)
    ax.set_yticks(range(len(tasks)), labels, fontsize=9.5)
    ax.set_xlabel("target t (task scored)", fontsize=10.5)
    ax.set_ylabel("source s (trained together with t)", fontsize=10.5)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=2.5)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(colorbar_label, fontsize=9)
    bar.ax.tick_params(labelsize=8.5)
    ax.set_title(title, fontsize=12, pad=10)
    return image


def _delta_panel(figure, ax, analysis: DomainAnalysis, tasks: tuple[str, ...], title: str) -> str:
    """The measured Δ heatmap on ``ax``; returns the note that explains its marks."""
    delta, significant = delta_matrix(analysis, tasks)
    position = {task: i for i, task in enumerate(tasks)}
    untested = np.zeros_like(significant)
    for _, row in analysis.edges.iterrows():
        if row["colour"] == "missing" and not _nan(row["delta"]) and row["source"] in position \
                and row["target"] in position:
            untested[position[row["source"]], position[row["target"]]] = True
    limit = _symmetric_limit(delta, 0.005)
    texts = [[f"{fmt_delta(delta[i, j])}{'*' if significant[i, j] else ('?' if untested[i, j] else '')}"
              for j in range(len(tasks))] for i in range(len(tasks))]
    _matrix_panel(figure, ax, delta, texts, significant, limit, tasks, "Δ = score(t with s) − score(t alone)", title)
    note = f"* Holm-adjusted paired bootstrap p < {analysis.alpha:g}; hatched n/a: missing runs"
    return note + ("; ?: not tested (no predictions)" if untested.any() else "")


def plot_delta_heatmap(analysis: DomainAnalysis):
    """Source x target matrix of Δ on a symmetric diverging scale; * marks Holm-significant cells."""
    n = max(len(analysis.tasks), 1)
    figure = _new_figure(1.45 * n + 3.2, 1.25 * n + 2.4)
    ax = figure.add_subplot(1, 1, 1)
    note = _delta_panel(figure, ax, analysis, analysis.tasks, f"Transfer Δ, {analysis.setting.domain}")
    ax.annotate(f"{note}\n{setting_caption(analysis)}", xy=(0.5, 0.0), xycoords=ax.xaxis.label, xytext=(0, -10),
                textcoords="offset points", ha="center", va="top", fontsize=8, color="#444444")
    return figure


# ---------------------------------------------------------------------------------------------------------------
# Look-ahead affinity preview: Z next to the measured Δ, and the preview graph
# ---------------------------------------------------------------------------------------------------------------

PREVIEW_EDGE_STYLE = {  # sign of Z -> (line colour, width, line style, label text colour); no significance here
    "green": (GREEN, 2.0, "solid", "#0b5e44"),
    "red": (RED, 2.0, "solid", "#a34401"),
    "grey": (GREY, 1.4, "solid", "#555555"),
    "missing": (MISSING, 1.3, (0, (4, 3)), "#8a8a8a"),
}


def _z_panel(figure, ax, preview: AffinityPreview, title: str) -> int:
    """The Z heatmap on ``ax`` in units of 10^exponent (cells and colour bar alike); returns the exponent."""
    exponent = z_exponent(preview.z)
    scaled = preview.z / 10.0 ** exponent
    n = len(preview.tasks)
    limit = _symmetric_limit(scaled, 0.0) or 1.0  # all zero: a plain -1..1 scale
    texts = [[fmt_z(preview.z[i, j], exponent) for j in range(n)] for i in range(n)]
    unit = f", in units of {power_of_ten(exponent)}" if exponent else ""
    _matrix_panel(figure, ax, scaled, texts, np.zeros((n, n), dtype=bool), limit, preview.tasks,
                  f"Z(s→t){unit} (> 0: a step on s lowers t's loss)", title)
    return exponent


def plot_affinity_heatmaps(analysis: DomainAnalysis):
    """Measured Δ (left) and look-ahead affinity Z (right) side by side, same task order, each on its own
    symmetric scale; only the Z panel where no measured edge exists."""
    preview = analysis.affinity
    tasks, n = preview.tasks, max(len(preview.tasks), 1)
    panels = 2 if preview.has_grid else 1
    figure = _new_figure(panels * (1.25 * n + 3.4), 1.25 * n + 1.7)
    figure.subplots_adjust(left=0.1 if panels == 2 else 0.18, right=0.95, top=0.9, bottom=0.12, wspace=0.36)
    note = ""
    if preview.has_grid:
        note = _delta_panel(figure, figure.add_subplot(1, 2, 1), analysis, tasks,
                            "Measured transfer Δ (pairwise grid)") + "\n"
    z_ax = figure.add_subplot(1, panels, panels)
    runs = len(preview.run_ids)
    _z_panel(figure, z_ax, preview, "Look-ahead affinity Z (" + ("all-task run)" if runs == 1 else
                                                                 f"all-task runs, mean over {runs} seeds)"))
    z_ax.set_ylabel("source s (look-ahead step on s's loss)", fontsize=10.5)
    title = ("Affinity preview vs measured pairwise transfer" if preview.has_grid
             else "Look-ahead affinity preview (no measured grid to compare with)")
    figure.suptitle(f"{title}, {analysis.setting.domain}", fontsize=13, y=0.99, va="bottom")
    if note:
        note = f"Δ (left): {note}"
    caption = (f"{affinity_validation_text(preview)}\n{note}Z{' (right)' if preview.has_grid else ''} = 1 − "
               f"L_t(after one look-ahead step on s) / L_t(before), mean over probes and epochs"
               f"{' and seeds' if runs > 1 else ''}; no significance test; diagonal (self-affinity) not shown\n"
               f"{affinity_caption(analysis)}")
    z_ax.annotate(caption, xy=(0.5, 0.0), xycoords=(figure.transFigure, z_ax.xaxis.label), xytext=(0, -12),
                  textcoords="offset points", ha="center", va="top", fontsize=8.5, color="#444444", linespacing=1.5)
    return figure


def _z_label(exponent: int) -> Callable[[dict], str]:
    def label(data: dict) -> str:
        return "n/a" if _nan(data["z"]) else fmt_z(data["z"], exponent)
    return label


def plot_affinity_graph(analysis: DomainAnalysis):
    """The preview transfer graph: arcs s → t coloured by the sign of Z (no test), labelled with Z."""
    preview = analysis.affinity
    graph = affinity_digraph(analysis)
    exponent = z_exponent(preview.z)
    largest = _symmetric_limit(preview.z, 1e-300)
    for _, _, data in graph.edges(data=True):  # width grows with |Z|: a tiny Z is a thin line, not a strong call
        if data["colour"] in ("green", "red"):
            data["width"] = 0.9 + 2.1 * abs(data["z"]) / largest
    present = {data["colour"] for _, _, data in graph.edges(data=True)}
    labels = {"green": "Z > 0: a step on s lowers t's loss", "red": "Z < 0: a step on s raises t's loss"}
    labels.update({key: text for key, text in (("grey", "Z = 0"), ("missing", "not measured")) if key in present})
    unit = f" in units of {power_of_ten(exponent)}" if exponent else ""
    caption = (f"{affinity_caption(analysis, short=True)}\nlabel: Z(s→t){unit}, Z = 1 − L_t(after a step on s) / "
               f"L_t(before)\ncolour: sign of Z, line width: |Z|; an unfitted preview, no significance test")
    return draw_graph(preview.tasks, graph, PREVIEW_EDGE_STYLE, _z_label(exponent),
                      f"Affinity preview s → t (unfitted, no test), {analysis.setting.domain}", caption,
                      _legend_handles(PREVIEW_EDGE_STYLE, labels))


# ---------------------------------------------------------------------------------------------------------------
# Bar chart
# ---------------------------------------------------------------------------------------------------------------

def _bar_tick_labels(analysis: DomainAnalysis, columns: list[str]) -> list[str]:
    metric = {row["target"]: row["metric"] for _, row in analysis.edges.iterrows()}
    labels = []
    for column in columns:
        name = "Average" if column == "Avg" else wrap_task(column, 12)
        extra = METRIC_NAMES.get(metric.get(column, ""), "")
        labels.append(f"{name}\n({extra})" if extra else name)
    return labels


def plot_model_bars(analysis: DomainAnalysis):
    """Grouped bars per task (and the average): single task vs MT-Refinement vs MT-Fine-Tune, ± sd over seeds."""
    means, stds = models_wide(analysis.models), models_wide(analysis.models, "std")
    columns = list(means.columns)
    x = np.arange(len(columns))
    width = 0.26
    figure = _new_figure(max(6.5, 1.55 * len(columns) + 2.0), 4.8)
    ax = figure.add_subplot(1, 1, 1)
    top = np.nanmax(means.to_numpy(dtype=float)) if np.isfinite(means.to_numpy(dtype=float)).any() else 1.0
    bottom = min(0.0, np.nanmin(means.to_numpy(dtype=float)) if np.isfinite(means.to_numpy(dtype=float)).any() else 0)
    for k, model_type in enumerate(MODEL_TYPES):
        offsets = x + (k - 1) * width
        values = means.loc[model_type].to_numpy(dtype=float)
        errors = stds.loc[model_type].to_numpy(dtype=float)
        present = ~np.isnan(values)
        ax.bar(offsets[present], values[present], width * 0.94, color=BAR_COLOURS[model_type], edgecolor="#333333",
               lw=0.6, label=MODEL_LABELS[model_type], zorder=2)
        spread = present & np.isfinite(errors) & (np.nan_to_num(errors) > 0)
        ax.errorbar(offsets[spread], values[spread], yerr=errors[spread], fmt="none", ecolor="#222222", lw=0.9,
                    capsize=2.5, zorder=3)
        for xo, value, error in zip(offsets[present], values[present], np.nan_to_num(errors[present])):
            ax.text(xo, max(value, 0) + error + 0.012 * (top - bottom), f"{value:.3f}", rotation=90, ha="center",
                    va="bottom", fontsize=7.5, color="#222222")
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
    handles = [Patch(facecolor=BAR_COLOURS[m], edgecolor="#333333", lw=0.6, label=MODEL_LABELS[m]) for m in MODEL_TYPES]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=9)
    ax.set_title(f"Single task vs multi-task, {analysis.setting.domain}", fontsize=12, pad=28)
    ax.set_xlabel(f"mean over seeds, error bar ±1 sd where there are 2+ seeds; hatched n/a: missing runs\n"
                  f"{setting_caption(analysis)}", fontsize=8, color="#444444", labelpad=10)
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
