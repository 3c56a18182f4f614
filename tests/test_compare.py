"""Two methods of training one task compared with the edge's test (transfer.analysis.compare)."""

from __future__ import annotations

import pytest

from store_builder import TABLE, pair_predictions, single_predictions, write_run
from transfer.analysis.compare import compare_methods, runs_by_seed
from transfer.analysis.evidence import EvidenceOptions
from transfer.analysis.index import load_runs
from transfer.experiment.store import ResultsStore

SEEDS = (1, 2, 3, 4, 5)


def _store(root, predictions):
    for seed in SEEDS:
        write_run(root, ("mednli",), "single", seed, {"mednli": predictions(seed)})
    return runs_by_seed(load_runs(ResultsStore(root), TABLE), "mednli")


def test_the_same_predictions_are_equivalent_and_a_worse_method_is_different(tmp_path):
    task = TABLE.task("mednli")
    reference = _store(tmp_path / "ref", lambda s: single_predictions("mednli", s))
    same = _store(tmp_path / "same", lambda s: single_predictions("mednli", s))
    result = compare_methods(task, same, reference, n_boot=200)
    assert result["seeds"] == list(SEEDS) and result["delta"] == 0 and result["verdict"] == "equivalent"
    worse = _store(tmp_path / "worse", lambda s: pair_predictions("mednli", s, "worse"))
    result = compare_methods(task, worse, reference, n_boot=200)
    assert result["verdict"] == "different" and result["ci_high"] < -0.01 and result["delta"] < 0
    assert len(result["seed_deltas"]) == 5 and result["mean_a"] < result["mean_b"]
    close = _store(tmp_path / "close", lambda s: pair_predictions("mednli", s, "noise"))
    loose = compare_methods(task, close, reference, EvidenceOptions(margin=0.05), n_boot=200)
    assert loose["verdict"] == "equivalent" and abs(loose["delta"]) < 0.01  # within a 0.05 margin


def test_seeds_of_one_method_only_are_left_out_and_one_seed_is_not_tested(tmp_path):
    task = TABLE.task("mednli")
    reference = _store(tmp_path / "ref", lambda s: single_predictions("mednli", s))
    assert compare_methods(task, {1: reference[1]}, reference, n_boot=100)["verdict"].startswith("untested")
    with pytest.raises(ValueError, match="no seed has a run of both methods"):
        compare_methods(task, {}, reference, n_boot=100)
