"""Tests for the transfer.graph command line (with transfer.tables and transfer.plots) on stores built in tmp_path."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pandas as pd
import pytest

from test_analysis import TASKS3, build_store, stored_score
from transfer.graph import main

SLUG = "clinical-public"
TABLE_FILES = [f"models_{SLUG}.md", f"models_{SLUG}.csv", f"models_{SLUG}.tex", f"edges_{SLUG}.md",
               f"edges_{SLUG}.csv", f"edges_{SLUG}.tex", f"transfer_graph_{SLUG}.graphml"]
FIGURE_STEMS = [f"transfer_graph_{SLUG}", f"delta_heatmap_{SLUG}", f"model_scores_{SLUG}"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The CLI on a complete 3-task store: (store, out folder, printed output, exit status)."""
    root = build_store(tmp_path_factory.mktemp("store"))
    out = tmp_path_factory.mktemp("figures")
    capture = _run_cli([str(root), "--out", str(out), "--n-boot", "1000", "--formats", "png", "svg", "--quiet"])
    return root, out, *capture


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    """The CLI on a store with missing and failed runs (no finetune runs at all)."""
    skip = {("pair", "clinicalsts", "mednli", 13), ("single", "shareclefe", 42)}
    skip |= {("finetune", t, s) for t in TASKS3 for s in (13, 42)}
    root = build_store(tmp_path_factory.mktemp("partial"), seeds=(13, 42), skip=skip,
                       failed={("pair", "clinicalsts", "shareclefe", 42)})
    out = tmp_path_factory.mktemp("partial-figures")
    capture = _run_cli([str(root), "--out", str(out), "--n-boot", "200", "--formats", "png", "--quiet"])
    return root, out, *capture


def _run_cli(argv: list[str]) -> tuple[str, int]:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = main(argv)
    return buffer.getvalue(), status


def test_every_output_file_is_written_and_listed(full_run):
    root, out, printed, status = full_run
    assert status == 0
    expected = [out / name for name in TABLE_FILES]
    expected += [out / f"{stem}.{fmt}" for stem in FIGURE_STEMS for fmt in ("png", "svg")]
    for path in expected + [root / "scores.csv"]:
        assert path.is_file() and path.stat().st_size > 0, path
        assert str(path) in printed
    assert (out / f"transfer_graph_{SLUG}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_lists_calls(full_run):
    _, _, printed, _ = full_run
    assert "clinical-public (model minilm, profile quick, seeds 13): 3 task(s), 6 edges: 2 green, 1 red" in printed
    assert "red  clinicalsts -> mednli" in printed
    assert "missing:" not in printed


def test_edge_csv_matches_the_store(full_run):
    root, out, _, _ = full_run
    edges = pd.read_csv(out / f"edges_{SLUG}.csv")
    assert len(edges) == 6
    for _, row in edges.iterrows():
        pair = tuple(t for t in TASKS3 if t in (row["source"], row["target"]))
        expected = (stored_score(root, "mtl", pair, 13, row["target"])
                    - stored_score(root, "single", (row["target"],), 13, row["target"]))
        assert row["delta"] == pytest.approx(expected, abs=1e-9)
        assert row["p"] <= row["p_holm"] <= 1
    colours = dict(zip(zip(edges["source"], edges["target"]), edges["colour"]))
    assert colours[("mednli", "shareclefe")] == "green"
    assert colours[("clinicalsts", "mednli")] == "red"


def test_model_csv_matches_the_store(full_run):
    root, out, _, _ = full_run
    models = pd.read_csv(out / f"models_{SLUG}.csv").set_index(["model_type", "task"])
    for task in TASKS3:
        assert models.loc[("single", task), "mean"] == pytest.approx(stored_score(root, "single", (task,), 13, task))
        assert models.loc[("mt-refinement", task), "mean"] == pytest.approx(stored_score(root, "mtl", TASKS3, 13, task))
        assert models.loc[("mt-finetune", task), "mean"] == pytest.approx(
            stored_score(root, "finetune", (task,), 13, task))
    markdown = (out / f"models_{SLUG}.md").read_text()
    assert "| MT-Fine-Tune |" in markdown and f"{models.loc[('single', 'mednli'), 'mean']:.3f}" in markdown
    latex = (out / f"models_{SLUG}.tex").read_text()
    assert r"\begin{tabular}" in latex and "clinical-public" in latex


def test_graphml_carries_edge_attributes(full_run):
    _, out, _, _ = full_run
    graph = nx.read_graphml(out / f"transfer_graph_{SLUG}.graphml")
    assert set(graph.nodes) == set(TASKS3)
    data = graph.edges["clinicalsts", "mednli"]
    assert data["colour"] == "red" and data["delta"] < 0 and 0 < data["p"] < 0.05
    assert graph.number_of_edges() == 6


def test_scores_csv_is_rebuilt(full_run):
    root, _, _, _ = full_run
    scores = pd.read_csv(root / "scores.csv")
    assert set(scores["stage"]) == {"single", "mtl", "finetune"}


def test_partial_store_reports_missing_and_draws_them(partial_run):
    root, out, printed, status = partial_run
    assert status == 0
    assert "missing:" in printed
    assert "mtl pair clinicalsts+mednli: seed 13 (not in store)" in printed
    assert "mtl pair clinicalsts+shareclefe: seed 42 (failed)" in printed
    assert "single shareclefe: seed 42 (not in store)" in printed
    assert "finetune: no finetune runs in the store" in printed
    for name in ["edges_clinical-public.md", "models_clinical-public.md"]:
        text = (out / name).read_text()
        assert "**Note: missing runs**" in text and "n/a" in text
    edges = pd.read_csv(out / f"edges_{SLUG}.csv")
    row = edges[(edges["source"] == "clinicalsts") & (edges["target"] == "mednli")].iloc[0]
    assert row["colour"] in ("green", "red", "grey")  # seed 42 still has the pair run
    assert row["n_seeds"] == 1 and "seed 13: no pair run" in row["note"]
    models = pd.read_csv(out / f"models_{SLUG}.csv").set_index(["model_type", "task"])
    assert math.isnan(models.loc[("mt-finetune", "mednli"), "mean"])
    for stem in FIGURE_STEMS:
        assert (out / f"{stem}.png").stat().st_size > 0


def test_a_pair_missing_for_every_seed_is_drawn_missing(tmp_path):
    root = build_store(tmp_path / "store", skip={("pair", "shareclefe", "mednli", 13)})
    out = tmp_path / "out"
    printed, status = _run_cli([str(root), "--out", str(out), "--n-boot", "100", "--no-figures", "--quiet"])
    assert status == 0
    graph = nx.read_graphml(out / f"transfer_graph_{SLUG}.graphml")
    assert graph.edges["shareclefe", "mednli"]["colour"] == "missing"
    assert math.isnan(graph.edges["shareclefe", "mednli"]["delta"])
    assert "| shareclefe | mednli | n/a |" in (out / f"edges_{SLUG}.md").read_text()


def test_unknown_domain_and_not_a_store_exit_with_2(tmp_path, capsys):
    root = build_store(tmp_path / "store", tasks=("shareclefe", "mednli"), effects={})
    assert main([str(root), "--domain", "nowhere", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "present: clinical-public" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--quiet"]) == 2


def test_help_states_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ["--alpha", "(default: 0.05)", "--min-delta", "(default: 0.0)", "--n-boot", "(default: 1000)",
                     "--seed", "--formats", "(default: ['png', 'svg'])", "--out", "--domain"]:
        assert expected in text


def test_graph_cli_never_imports_torch(full_run, tmp_path):
    """House rule: analysis and plotting read only the store; a whole CLI run leaves torch unimported."""
    root = full_run[0]
    code = ("import json, sys\n"
            "from transfer.graph import main\n"
            f"status = main([{str(root)!r}, '--out', {str(tmp_path)!r}, '--n-boot', '50', '--formats', 'png', "
            "'--quiet'])\n"
            "print(json.dumps([status, sorted(m for m in ('torch', 'transformers') if m in sys.modules)]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [0, []]
