"""Drawing machinery the figures share: Agg figures without pyplot, saving with stable metadata, the directed
task-graph layout (nodes on a circle, curved arcs, labels placed clear of each other) and the source x target
matrix panel on a symmetric diverging scale.

Colours keep the paper's green/red/grey meaning in colour-blind-distinguishable shades: dark teal-green
``#11845f``, vermilion ``#d95f02``, light grey ``#a6a6a6`` and a lighter grey for what is missing; the diverging
map runs vermilion -> white -> teal-green.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Colour-blind check (Machado et al. 2009 simulation): under deuteranopia/protanopia the teal-green turns a dark
# grey-olive (L* ~47), the vermilion a saturated yellow-olive (L* ~50-59) and the grey stays a light grey (L* 68),
# so the three calls differ in lightness and saturation; line width, the * on significant labels and the sign of
# every label carry the call as well.
GREEN, RED, GREY, MISSING = "#11845f", "#d95f02", "#a6a6a6", "#cccccc"
DPI = 200
_REPRODUCIBLE_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}  # no timestamps: stable files
NODE_RADIUS = 0.25  # data units; the layout circle has radius 1
LABEL_FONT = 9.5
EDGE_RAD = 0.18  # arc3 curvature of the shortest edges
LABEL_GAP = 0.06  # data units kept free between two edge labels


def new_figure(width: float, height: float):
    """A Figure on an Agg canvas, independent of pyplot and of the session's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, out: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    """Save as ``out/stem.<fmt>`` for each format (PNG at 200 dpi); returns the paths."""
    from matplotlib import rc_context

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        tmp = path.with_name(f".{stem}.tmp.{fmt}")
        # SVG element ids (clip paths, glyphs) are random unless salted: a fixed salt makes a regenerated
        # figure byte-identical when nothing it shows changed, so a commit's figure diff is a real change
        with rc_context({"svg.hashsalt": stem}):
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


def _is_nan(value) -> bool:
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


def legend_handles(styles: dict, labels: dict[str, str], widths: dict[str, float] | None = None) -> list:
    """One line handle per style key in ``labels`` (in that order), drawn like the edges (``widths``: overrides)."""
    from matplotlib.lines import Line2D

    widths = widths or {}
    return [Line2D([], [], color=styles[key][0], lw=widths.get(key, styles[key][1]), ls=styles[key][2], label=text)
            for key, text in labels.items()]


def _graph_legend(ax, handles: list) -> None:
    ax.legend(handles=handles, loc="upper center", ncol=3 if len(handles) > 4 else 2, frameon=False, fontsize=9,
              bbox_to_anchor=(0.5, 0.0), handlelength=2.6, columnspacing=1.6)


def _draw_nodes(ax, tasks: tuple[str, ...], pos: dict, hatched: tuple[str, ...] = ()) -> dict:
    from matplotlib.patches import Circle

    patches = {}
    for task in tasks:
        marked = task in hatched
        circle = Circle(pos[task], NODE_RADIUS, facecolor="#f4f4f4", edgecolor="#8a8a8a" if marked else "#333333",
                        lw=1.4, zorder=3, hatch="///" if marked else None, linestyle=(0, (3, 2)) if marked else "solid")
        ax.add_patch(circle)
        ax.text(*pos[task], wrap_task(task), ha="center", va="center", fontsize=10, fontweight="bold",
                color="#1a1a1a", zorder=4, linespacing=1.1,
                bbox={"boxstyle": "round,pad=0.2", "fc": "#f4f4f4", "ec": "none"} if marked else None)
        patches[task] = circle
    return patches


def _edge_rad(length: float, shortest: float) -> float:
    """Curvature of an arc3 edge: shorter chords bend more, so that at every node the arcs to its neighbours
    and across the layout leave at distinct angles (for a square: about 20, 35, 55 and 70 degrees)."""
    return EDGE_RAD * (shortest / length) ** 2


def _draw_edges(ax, graph, pos: dict, patches: dict, styles: dict, label_of: Callable[[dict], str],
                key: str) -> list[dict]:
    from matplotlib.patches import FancyArrowPatch

    lengths = {(s, t): float(np.linalg.norm(pos[t] - pos[s])) for s, t in graph.edges}
    shortest = min(lengths.values(), default=1.0)
    drawn = []
    for source, target, data in graph.edges(data=True):
        colour, width, style, text_colour = styles[data[key]]
        width = data.get("width", width)  # an edge may carry its own width (the preview: |Z|)
        rad = _edge_rad(lengths[(source, target)], shortest)
        arrow = FancyArrowPatch(pos[source], pos[target], connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                mutation_scale=16 + 2 * width, lw=width, color=colour, linestyle=style,
                                patchA=patches[source], patchB=patches[target], shrinkA=3, shrinkB=3,
                                zorder=2 if width >= 2 else 1)  # strong calls above the rest
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
               caption: str, handles: list, key: str = "colour", hatched: tuple[str, ...] = ()):
    """A directed task graph in the transfer-graph layout: nodes on a circle, two arcs per task pair styled by
    ``styles[edge[key]]`` (line colour, width, line style, label colour), labels placed clear of each other;
    ``hatched`` nodes are drawn hatched with a dashed outline."""
    pos = _layout(tasks)
    size = 7.0 + 0.75 * max(0, len(tasks) - 4)  # more tasks: more edges and labels to fit
    figure = new_figure(size, size + 0.4)
    ax = _graph_axes(figure, pos)
    patches = _draw_nodes(ax, tasks, pos, hatched)
    edges = _draw_edges(ax, graph, pos, patches, styles, label_of, key)
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


def _diverging_cmap():
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("transfer_delta", [RED, "#f7f7f7", GREEN])


def _cell_text_colour(value: float, limit: float) -> str:
    return "white" if abs(value) > 0.62 * limit else "#1a1a1a"


def _heatmap_cells(ax, values: np.ndarray, texts: list[list[str]], bold: np.ndarray, limit: float,
                   cell_styles: dict | None = None) -> None:
    """Cell labels: grey "—" on the diagonal, a cell of ``cell_styles[(i, j)]`` (face, hatch, edge colour, line
    style, text colour) with its text, hatched "n/a" where NaN, else ``texts`` on the scale (bold where ``bold``)."""
    from matplotlib.patches import Rectangle

    n = values.shape[0]
    cell_styles = cell_styles or {}
    for i in range(n):
        for j in range(n):
            if i != j and (i, j) in cell_styles:
                face, hatch, edge, style, text_colour = cell_styles[(i, j)]
                ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, facecolor=face, hatch=hatch, edgecolor=edge,
                                       linestyle=style, lw=1.2 if edge != "none" else 0.0))
                ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=10, color=text_colour,
                        bbox={"boxstyle": "round,pad=0.15", "fc": face, "ec": "none"} if hatch else None)
            elif i == j:
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


def symmetric_limit(values: np.ndarray, floor: float) -> float:
    """Half-range of a diverging scale centred on 0: the largest |value| off the diagonal, at least ``floor``."""
    off = values[~np.eye(values.shape[0], dtype=bool)] if values.size else values
    finite = np.abs(off[np.isfinite(off)])
    return max(float(finite.max()) if finite.size else 0.0, floor)


def matrix_panel(figure, ax, values: np.ndarray, texts: list[list[str]], bold: np.ndarray, limit: float,
                 tasks: tuple[str, ...], colorbar_label: str, title: str, cell_styles: dict | None = None):
    """One source x target heatmap on the symmetric diverging scale [-limit, limit], with its own colour bar;
    cells in ``cell_styles`` are drawn in their own style instead (their value is not on the scale)."""
    n = max(len(tasks), 1)
    shown = np.array(values, dtype=float)
    np.fill_diagonal(shown, np.nan)  # the diagonal is drawn as a grey "—" cell, never on the scale
    for cell in cell_styles or {}:
        shown[cell] = np.nan  # drawn by its style, never on the colour scale
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=_diverging_cmap(), vmin=-limit, vmax=limit)
    _heatmap_cells(ax, shown, texts, bold, limit, cell_styles)
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
