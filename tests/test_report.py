"""Tests for transfer.report: the one number formatter, and the figures as matplotlib objects (cell texts of the
heatmap, labels and colours of the graph's edges, legend entries, bars per model type)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.patches import FancyArrowPatch, Rectangle

from store_builder import TABLE, TASKS3, build_store
from transfer.analysis import STATES, analyse_store
from transfer.report import plots
from transfer.report.draw import GREEN, GREY, MISSING, RED
from transfer.report.present import fmt_delta, metric_name, models_wide, transfer_digraph


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    """Five seeds: helps, hurts and equivalent edges (see test_analysis)."""
    root = build_store(tmp_path_factory.mktemp("store"), seeds=(1, 2, 3, 4, 5))
    (result,) = analyse_store(root, TABLE, n_boot=300, seed=0)
    return result


def _row(analysis, source, target):
    edges = analysis.edges
    return edges[(edges["source"] == source) & (edges["target"] == target)].iloc[0]


def test_one_delta_format_for_tables_and_figures():
    assert fmt_delta(0.01234) == "+0.0123" and fmt_delta(-0.01234) == "-0.0123"
    assert fmt_delta(-0.01234, typographic=True) == "\u22120.0123"
    assert fmt_delta(-0.00001) == "-0.0000" and fmt_delta(-0.00001, typographic=True) == "0.0000"
    assert fmt_delta(float("nan")) == "n/a" and fmt_delta(None, typographic=True) == "n/a"
    assert metric_name("micro_f1") == "micro-F1" and metric_name("") == ""


def _edge_texts(figure) -> list[str]:
    ax = figure.axes[0]
    return [t.get_text() for t in ax.texts if t.get_bbox_patch() is not None]


def test_graph_edges_carry_the_state_in_colour_style_and_label(analysis):
    assert set(analysis.edges["state"]) == {"helps", "hurts", "equivalent"}
    figure = plots.plot_transfer_graph(analysis)
    ax = figure.axes[0]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == len(analysis.edges) == 6
    colours = sorted(to_hex(a.get_edgecolor()) for a in arrows)
    assert colours == sorted(to_hex(plots.EDGE_STYLE[s][0]) for s in analysis.edges["state"])
    assert sorted(to_hex(c) for c in (GREEN, RED, GREY)) == sorted(set(colours))
    labels = _edge_texts(figure)
    for _, row in analysis.edges.iterrows():
        text = fmt_delta(row["delta"], typographic=True) + ("*" if row["state"] in ("helps", "hurts") else "")
        assert text in labels
    hurt = analysis.edges[analysis.edges["state"] == "hurts"].iloc[0]
    assert fmt_delta(hurt["delta"], typographic=True) + "*" in labels and hurt["delta"] < 0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.split(":")[0] for t in legend] == list(STATES)
    assert legend[0] == "helps: Δ > 0.01, Holm p < 0.05"


def test_one_seed_graph_is_all_exploratory_dashed(tmp_path):
    (result,) = analyse_store(build_store(tmp_path), TABLE, n_boot=100)
    arrows = [p for p in plots.plot_transfer_graph(result).axes[0].patches if isinstance(p, FancyArrowPatch)]
    assert {to_hex(a.get_edgecolor()) for a in arrows} == {to_hex(plots.EXPLORATORY)}
    assert all(a.get_linestyle() not in ("-", "solid") for a in arrows)


def test_graph_draws_a_missing_edge_dashed_with_na(tmp_path):
    root = build_store(tmp_path, skip={("pair", "shareclefe", "mednli", 13)})
    (result,) = analyse_store(root, TABLE, n_boot=100)
    figure = plots.plot_transfer_graph(result)
    arrows = [p for p in figure.axes[0].patches if isinstance(p, FancyArrowPatch)]
    dashed = [a for a in arrows if to_hex(a.get_edgecolor()) == to_hex(MISSING)]
    assert len(dashed) == 2 and all(a.get_linestyle() not in ("-", "solid") for a in dashed)
    assert _edge_texts(figure).count("n/a") == 2


def test_a_task_no_single_run_learned_is_hatched_and_its_incoming_edges_are_not_drawn(tmp_path):
    from store_builder import write_run

    root = build_store(tmp_path, seeds=(13, 14), skip={("single", "mednli", 13), ("single", "mednli", 14)})
    for seed in (13, 14):
        write_run(root, ("mednli",), "single", seed, {"mednli": ["entailment"] * 400})  # one class: untrained
    (result,) = analyse_store(root, TABLE, n_boot=100)
    assert result.unlearned == ("mednli",)
    assert set(_row(result, s, "mednli")["state"] for s in TASKS3 if s != "mednli") == {"n/a"}  # the table keeps them
    figure = plots.plot_transfer_graph(result)
    ax = figure.axes[0]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 6 - 2  # the two edges into mednli are left out; its outgoing ones stay
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1
    assert "edges into mednli not drawn" in " ".join(t.get_text() for t in ax.texts)
    graph = transfer_digraph(result)
    assert graph.nodes["mednli"]["learned"] is False and graph.has_edge("shareclefe", "mednli")  # GraphML keeps all
    # one seed that learned is enough: the task is then a target like any other
    partly = build_store(tmp_path / "b", seeds=(13, 14), skip={("single", "mednli", 13)})
    write_run(partly, ("mednli",), "single", 13, {"mednli": ["entailment"] * 400})
    (result,) = analyse_store(partly, TABLE, n_boot=100)
    assert result.unlearned == () and not any(p.get_hatch() for p in plots.plot_transfer_graph(result).axes[0].patches)


def test_heatmap_cells_show_each_delta_and_its_state(analysis):
    figure = plots.plot_delta_heatmap(analysis)
    ax = figure.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.split(":")[0] for t in legend] == list(STATES)
    grey_cells = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() == pytest.approx(0.9)]
    assert len(grey_cells) == int((analysis.edges["state"] == "equivalent").sum()) == 2
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
             if t.get_text() and t.get_position()[0] >= 0 and t.get_position()[1] >= 0 and "\n" not in t.get_text()}
    for i, source in enumerate(TASKS3):
        for j, target in enumerate(TASKS3):
            if i == j:
                assert texts[(i, j)] == "—"
                continue
            row = _row(analysis, source, target)
            mark = "*" if row["state"] in ("helps", "hurts") else ""
            assert texts[(i, j)] == fmt_delta(row["delta"], typographic=True) + mark
    assert [t.get_text() for t in ax.get_xticklabels()] == [plots.wrap_task(t, 12) for t in TASKS3]


def test_heatmap_hatches_a_missing_cell(tmp_path):
    root = build_store(tmp_path, skip={("pair", "clinicalsts", "mednli", 13)})
    (result,) = analyse_store(root, TABLE, n_boot=100)
    ax = plots.plot_delta_heatmap(result).axes[0]
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 2 and [t.get_text() for t in ax.texts].count("n/a") == 2


def test_bar_chart_takes_any_number_of_model_types(analysis):
    extra = analysis.models[analysis.models["model_type"] == "single"].assign(model_type="step-matched")
    extra["mean"] = extra["mean"] + 0.01
    wider = dataclasses.replace(analysis, models=pd.concat([analysis.models, extra], ignore_index=True))
    assert list(models_wide(wider.models).index) == ["single", "mt-refinement", "mt-finetune", "step-matched"]
    ax = plots.plot_model_bars(wider).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["BERT (single task)", "MT-Refinement", "MT-Fine-Tune", "step-matched"]
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_hatch() and p.get_height() > 0]
    assert len(bars) == 4 * (len(TASKS3) + 1)  # every type has a score for every task and the average
    centres = sorted({round(b.get_x() + b.get_width() / 2, 6) for b in bars})
    assert len(centres) == 4 * (len(TASKS3) + 1)  # no two bars drawn on top of each other
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0].endswith("(Pearson r)") and labels[-1] == "Average"


def test_digraph_attributes_are_the_edge_rows(analysis):
    graph = transfer_digraph(analysis)
    for _, row in analysis.edges.iterrows():
        data = graph.edges[row["source"], row["target"]]
        assert data["state"] == row["state"] and data["delta"] == pytest.approx(row["delta"])
        assert data["p_adj"] == pytest.approx(row["p_adj"]) and data["seed_deltas"] == row["seed_deltas"]
    assert graph.nodes["mednli"]["single_score"] == pytest.approx(
        float(analysis.models.set_index(["model_type", "task"]).loc[("single", "mednli"), "mean"]))
    assert np.isfinite(graph.graph["alpha"])


def test_a_figure_drawn_twice_is_saved_byte_for_byte_the_same(analysis, tmp_path):
    """Committed figures are regenerated on every store update: without a fixed SVG id salt every clip path got
    a new random id, so each regeneration changed every SVG although nothing it shows had changed."""
    from transfer.report.draw import save_figure

    saved = [save_figure(plots.plot_transfer_graph(analysis), tmp_path / name, "graph", ("svg", "png"))
             for name in ("one", "two")]
    for first, second in zip(*saved):
        assert first.read_bytes() == second.read_bytes(), first.name
    assert b'clip-path="url(#' in saved[0][0].read_bytes()  # the ids the salt fixes are there
