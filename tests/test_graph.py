"""Tests for the transfer.graph command line (with transfer.report.tables and transfer.report.plots) on stores built in tmp_path."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pandas as pd
import pytest

from store_builder import TABLE, TASKS3, build_store, stored_score, write_affinity_run
from transfer.analysis import analyse_store
from transfer.analysis import PREDICTORS
from transfer.graph import build_parser, main

SLUG = "clinical-public"
TABLE_FILES = [f"models_{SLUG}.md", f"models_{SLUG}.csv", f"models_{SLUG}.tex", f"edges_{SLUG}.md",
               f"edges_{SLUG}.csv", f"edges_{SLUG}.tex", f"transfer_graph_{SLUG}.graphml"]
FIGURE_STEMS = [f"transfer_graph_{SLUG}", f"delta_heatmap_{SLUG}", f"model_scores_{SLUG}"]
AFFINITY_FILES = [f"affinity_{SLUG}.md", f"affinity_{SLUG}.csv", f"affinity_{SLUG}.tex", "affinity_validation.md",
                  "affinity_validation.csv"]
AFFINITY_STEMS = [f"affinity_{SLUG}", f"affinity_graph_{SLUG}"]
# Z of the 3-task store's edges with the measured deltas' ranks (see test_analysis.DELTA_ORDER)
Z_AGREE = {("clinicalsts", "mednli"): -3e-3, ("clinicalsts", "shareclefe"): -1e-3, ("mednli", "clinicalsts"): 1e-3,
           ("shareclefe", "mednli"): 2e-3, ("mednli", "shareclefe"): 4e-3, ("shareclefe", "clinicalsts"): 5e-3}


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


@pytest.fixture(scope="module")
def affinity_cli(tmp_path_factory):
    """The CLI on the complete 3-task store plus an affinity run: (store, out folder, printed output, status)."""
    root = build_store(tmp_path_factory.mktemp("affinity-store"))
    write_affinity_run(root, TASKS3, 13, Z_AGREE, wall_seconds=330.0, tracker_seconds=25.0)
    out = tmp_path_factory.mktemp("affinity-figures")
    capture = _run_cli([str(root), "--out", str(out), "--n-boot", "1000", "--formats", "png", "svg", "--quiet"])
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
    assert ("clinical-public (model minilm, profile quick, seeds 13): 3 task(s), 6 edges: 0 helps, 0 hurts, "
            "0 equivalent, 0 inconclusive, 6 exploratory, 0 n/a") in printed
    assert "missing:" not in printed and "untrained" not in printed
    assert printed.split("files written:")[0].rstrip().splitlines()[-1].startswith("  Plan: 6 of 6 edges have fewer")


def test_summary_prints_the_budget_diagnostic_and_the_compute_of_the_store(full_run, tmp_path):
    from store_builder import WALL_SECONDS

    root, _, printed, _ = full_run
    assert "  budget diagnostic: n/a (no edge has a delta and both runs' step counts)" in printed  # none recorded
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    by_role = analysis.compute["by_role"]  # this store records no roles: its runs count by trainer stage
    assert by_role == {"single": (3, 3 * WALL_SECONDS["single"]),
                       "mtl": (4, 3 * WALL_SECONDS["pair"] + WALL_SECONDS["all"]),
                       "finetune": (3, 3 * WALL_SECONDS["finetune"])}
    assert analysis.compute["runs"] == 10 and analysis.compute["wall_s"] == sum(w for _, w in by_role.values())
    total = analysis.compute["wall_s"] / 3600
    assert f"  compute: 10 done runs, {total:.1f} h of run wall time (finetune 3: " in printed


def test_grid_wall_time_is_the_union_of_the_runs_intervals(tmp_path):
    from transfer.analysis.driver import union_length
    from transfer.graph import _compute_line

    assert union_length([(0.0, 10.0), (5.0, 15.0), (20.0, 30.0)]) == 25.0  # overlap once, gap left out
    assert union_length([(0.0, 10.0), (2.0, 3.0)]) == 10.0 and union_length([]) == 0.0
    root = build_store(tmp_path / "store")
    folders = sorted((root / "runs").iterdir())
    # two slots: runs back to back in pairs, 100 s each, with an idle hour between two grid invocations
    for k, folder in enumerate(folders):
        start = (k // 2) * 100.0 + (3600.0 if k >= 6 else 0.0)
        status = json.loads((folder / "status.json").read_text())
        (folder / "status.json").write_text(json.dumps({**status, "started": start, "time": start + 100.0}))
    (analysis,) = analyse_store(root, TABLE, n_boot=100)
    assert analysis.compute["timed"] == len(folders) == 10
    assert analysis.compute["elapsed_s"] == 500.0 and analysis.compute["busy_s"] == 1000.0
    assert "; grid wall time 0.1 h with at least one run running, 2.00 runs at a time on average" in \
        _compute_line(analysis.compute)


def test_edge_csv_matches_the_store(full_run):
    root, out, _, _ = full_run
    edges = pd.read_csv(out / f"edges_{SLUG}.csv")
    assert len(edges) == 6
    for _, row in edges.iterrows():
        pair = tuple(t for t in TASKS3 if t in (row["source"], row["target"]))
        expected = (stored_score(root, "mtl", pair, 13, row["target"])
                    - stored_score(root, "single", (row["target"],), 13, row["target"]))
        assert row["delta"] == pytest.approx(expected, abs=1e-9)
        assert 0 < row["p_test"] <= 1 and math.isnan(row["p"]) and row["state"] == "exploratory"
    assert set(edges.columns) >= {"state", "reason", "seed_deltas", "se_seed", "se_test", "se", "ci_low", "ci_high",
                                  "p", "p_adj", "mde", "seeds_needed", "n_seeds", "step_ratio"}


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
    assert data["state"] == "exploratory" and data["delta"] < 0 and data["reason"] == "" and data["n_seeds"] == 1
    assert graph.graph["margin"] == 0.01 and graph.graph["min_seeds"] == 5 and graph.graph["correction"] == "holm"
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
    assert row["state"] == "exploratory"  # seed 42 still has the pair run
    assert row["n_seeds"] == 1 and "seed 13: no pair run" in row["note"]
    models = pd.read_csv(out / f"models_{SLUG}.csv").set_index(["model_type", "task"])
    assert math.isnan(models.loc[("mt-finetune", "mednli"), "mean"])
    for stem in FIGURE_STEMS:  # what the figures show is tested on the Figure objects (test_report.py)
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(out / f"{stem}.png") in printed


def test_a_pair_missing_for_every_seed_is_drawn_missing(tmp_path):
    root = build_store(tmp_path / "store", skip={("pair", "shareclefe", "mednli", 13)})
    out = tmp_path / "out"
    printed, status = _run_cli([str(root), "--out", str(out), "--n-boot", "100", "--no-figures", "--quiet"])
    assert status == 0
    graph = nx.read_graphml(out / f"transfer_graph_{SLUG}.graphml")
    assert graph.edges["shareclefe", "mednli"]["state"] == "n/a"
    assert graph.edges["shareclefe", "mednli"]["reason"] == "runs missing"
    assert math.isnan(graph.edges["shareclefe", "mednli"]["delta"])
    assert "| shareclefe | mednli | n/a | n/a |" in (out / f"edges_{SLUG}.md").read_text()


def test_unknown_domain_and_not_a_store_exit_with_2(tmp_path, capsys):
    root = build_store(tmp_path / "store", tasks=("shareclefe", "mednli"), effects={})
    assert main([str(root), "--domain", "nowhere", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "present: clinical-public" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--quiet"]) == 2


def test_parser_defaults():
    args = build_parser().parse_args(["results"])
    assert args.results_dir == Path("results") and args.out == Path("figures")
    assert (args.alpha, args.margin, args.n_boot, args.seed) == (0.05, 0.01, None, 0)
    assert (args.min_seeds, args.test, args.correction, args.power) == (5, "t", "holm", 0.8)
    assert (args.gate, args.gate_majority, args.gate_sd_ratio, args.gate_chance_se, args.gate_rise,
            args.gate_rise_min) == (True, 0.95, 0.3, 2.0, 0.5, 0.01)
    assert args.formats == ["png", "svg"] and args.figures is True and args.quiet is False
    assert args.domain is None and args.model is None and args.profile is None and args.task_file == []
    assert build_parser().parse_args(["r", "--n-boot", "300"]).n_boot == 300


def test_malformed_task_file_is_one_error_line(tmp_path, capsys):
    root = build_store(tmp_path / "store", tasks=("shareclefe", "mednli"), effects={})
    bad = tmp_path / "tasks.toml"
    bad.write_text("[tasks.extra]\nkind = 'tagging'\n")  # no domain, reader or metric
    assert main([str(root), "--task-file", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "tasks.toml" in err[0]
    assert not (tmp_path / "o").exists()


COMMITTED = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (COMMITTED / "results" / "runs").is_dir(), reason="the committed results/ store is absent")
def test_committed_store_reproduces_the_committed_tables(tmp_path):
    """The tables of figures/ are what the analysis makes of results/ (figures/ is regenerated with the analysis)."""
    import shutil

    store = tmp_path / "results"
    shutil.copytree(COMMITTED / "results", store)  # the CLI rebuilds scores.csv: never write into the checkout
    out = tmp_path / "figures"
    printed, status = _run_cli([str(store), "--out", str(out), "--no-figures", "--quiet"])
    assert status == 0
    names = sorted(p.name for p in out.iterdir() if p.suffix in (".md", ".csv", ".tex", ".graphml"))
    committed = sorted(p.name for p in (COMMITTED / "figures").iterdir()
                       if p.suffix in (".md", ".csv", ".tex", ".graphml"))
    assert names == committed
    for name in names:
        assert (out / name).read_bytes() == (COMMITTED / "figures" / name).read_bytes(), name


def test_graph_cli_never_imports_torch(affinity_cli, tmp_path):
    """House rule: analysis and plotting read only the store; a whole CLI run (affinity outputs included) leaves
    torch unimported."""
    root = affinity_cli[0]
    code = ("import json, sys\n"
            "from transfer.graph import main\n"
            f"status = main([{str(root)!r}, '--out', {str(tmp_path)!r}, '--n-boot', '50', '--formats', 'png', "
            "'--quiet'])\n"
            "print(json.dumps([status, sorted(m for m in ('torch', 'transformers') if m in sys.modules)]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [0, []]


# ---------------------------------------------------------------------------------------------------------------
# Affinity preview outputs
# ---------------------------------------------------------------------------------------------------------------

def test_affinity_outputs_are_written_and_listed(affinity_cli):
    _, out, printed, status = affinity_cli
    assert status == 0
    expected = [out / name for name in AFFINITY_FILES]
    expected += [out / f"{stem}.{fmt}" for stem in AFFINITY_STEMS for fmt in ("png", "svg")]
    for path in expected:
        assert path.is_file() and path.stat().st_size > 0, path
        assert str(path) in printed
    assert (out / f"affinity_{SLUG}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_affinity_summary_line(affinity_cli):
    _, _, printed, _ = affinity_cli
    line = next(line for line in printed.splitlines() if "affinity preview" in line)
    assert "Spearman rho +1.000 (n 6, p 0.00278)" in line
    assert "sign agreement 5/6 = 0.83 (no significant edge)" in line
    assert "time ratio 0.367 (preview 330 s / grid 900 s)" in line
    predictors = next(line for line in printed.splitlines() if "affinity predictors" in line)
    assert predictors.startswith("  affinity predictors over 6 edges, 3 targets (grid seeds per edge 1, preview seeds 1)")
    assert "z within-t rho +1.00 (p 0.125)" in predictors  # Z_AGREE orders every target's two sources right
    assert "absent: z_marginal, step_ratio, grad_cosine" in predictors  # the store records no steps, no M


def test_affinity_run_leaves_the_grid_outputs_unchanged(full_run, affinity_cli):
    _, plain_out, plain_printed, _ = full_run
    _, out, printed, _ = affinity_cli
    for name in TABLE_FILES:
        assert (out / name).read_text() == (plain_out / name).read_text(), name
    first = [line for line in printed.splitlines() if line.startswith("clinical-public")]
    assert first == [line for line in plain_printed.splitlines() if line.startswith("clinical-public")]


def test_affinity_tables_match_the_analysis(affinity_cli):
    root, out, _, _ = affinity_cli
    edges = pd.read_csv(out / f"affinity_{SLUG}.csv")
    assert len(edges) == 6 and set(edges.columns) >= {"source", "target", "z", "delta", "state", "sign_agree"}
    for _, row in edges.iterrows():
        assert row["z"] == pytest.approx(Z_AGREE[(row["source"], row["target"])])
        pair = tuple(t for t in TASKS3 if t in (row["source"], row["target"]))
        expected = (stored_score(root, "mtl", pair, 13, row["target"])
                    - stored_score(root, "single", (row["target"],), 13, row["target"]))
        assert row["delta"] == pytest.approx(expected, abs=1e-9)
    validation = pd.read_csv(out / "affinity_validation.csv")
    assert list(validation["predictor"]) == [name for name, _ in PREDICTORS]  # one row per predictor
    row = validation.set_index("predictor").loc["z"]
    assert row["domain"] == "clinical-public" and row["n_edges"] == 6
    assert row["spearman_rho"] == pytest.approx(1.0) and row["sign_agreement"] == pytest.approx(5 / 6)
    assert row["time_ratio"] == pytest.approx(330 / 900) and row["tracking_overhead"] == pytest.approx(1.1)
    markdown = (out / f"affinity_{SLUG}.md").read_text()
    assert "| Spearman ρ (Z vs Δ) | +1.000 |" in markdown and "| time ratio, preview / grid | 0.367 |" in markdown
    assert "| sign agreement, significant (helps/hurts) edges | n/a |" in markdown
    assert "| clinicalsts | shareclefe | -1.000e-03 | +0.0000 | exploratory | no (Δ = 0) |" in markdown
    latex = (out / f"affinity_{SLUG}.tex").read_text()
    assert r"\begin{tabular}" in latex and r"$-3.000 \times 10^{-3}$" in latex and "ρ" not in latex
    combined = (out / "affinity_validation.md").read_text()
    assert ("| clinical-public | minilm | quick | 6 | +1.000 | 0.003 | 5/6 = 0.833 | n/a | 330 s | 900 s "
            "| 0.367 |") in combined


def test_no_affinity_run_no_affinity_outputs(full_run):
    _, out, printed, _ = full_run
    assert not list(out.glob("affinity*"))
    assert "affinity preview: none (no affinity run in the store" in printed


def test_affinity_only_store_draws_the_preview_alone(tmp_path):
    root = tmp_path / "store"
    write_affinity_run(root, TASKS3, 13, Z_AGREE)
    out = tmp_path / "out"
    printed, status = _run_cli([str(root), "--out", str(out), "--n-boot", "100", "--formats", "png", "--quiet"])
    assert status == 0
    assert "no grid runs" in printed and "validation n/a (no measured edge)" in printed
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted([f"affinity_{SLUG}.md", f"affinity_{SLUG}.csv", f"affinity_{SLUG}.tex",
                            f"affinity_{SLUG}.png", f"affinity_graph_{SLUG}.png", "affinity_validation.md",
                            "affinity_validation.csv"])
    validation = pd.read_csv(out / "affinity_validation.csv")
    assert validation.iloc[0]["predictor"] == "z"
    assert validation.iloc[0]["n_edges"] == 0 and math.isnan(validation.iloc[0]["spearman_rho"])


def test_runs_computed_differently_are_refused_in_one_line(tmp_path, capsys):
    root = build_store(tmp_path / "store", tasks=("shareclefe", "mednli"), effects={})
    for folder in (root / "runs").iterdir():
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["train"]["encoder_impl"] = "hf" if folder.name.startswith("single-") else "transfer"
        (folder / "metrics.json").write_text(json.dumps(metrics))
    assert main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: edge ") and "encoder_impl: " in err[0] and "single-" in err[0]
