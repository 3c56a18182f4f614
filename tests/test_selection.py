"""Model selection: early stopping on dev, one-model MT-Refinement, fine-tunes from the chosen epoch's encoder."""

import json

import pytest
import torch

from transfer.data.tasks import load_task_table
from transfer.experiment.config import RunSpec, load_profile
from transfer.training import loop
from transfer.training.selection import Selection, is_all_task_run

BIOMEDICAL = ("bc5cdr-chemical", "bc5cdr-disease", "chemprot", "ddi2013-type")


def _spec(model_dir, tasks, stage=None, **changes):
    profile = load_profile("test").replace(**{"max_train_examples": 8, **changes})
    stage = stage or ("single" if len(tasks) == 1 else "mtl")
    return RunSpec(tasks=tasks, stage=stage, profile=profile, seed=3, model=str(model_dir), domain="biomedical",
                   parent="mtl-run" if stage == "finetune" else None)


def _script_dev(monkeypatch, scores: dict[str, list[float]]):
    """Dev scores by task and epoch as given (test is scored for real)."""
    real, calls = loop.score_split, {}

    def scripted(split, predicted):
        if split.split != "dev":
            return real(split, predicted)
        epoch = calls[split.task.name] = calls.get(split.task.name, 0) + 1
        return {split.task.metric: scores[split.task.name][epoch - 1]}, []

    monkeypatch.setattr(loop, "score_split", scripted)


def test_stops_after_patience_epochs_without_improvement_and_records_it(tiny_model_dir, tiny_data_dir, monkeypatch):
    _script_dev(monkeypatch, {"chemprot": [0.5, 0.6, 0.6, 0.55, 0.9, 0.9]})
    result = loop.train(_spec(tiny_model_dir, ("chemprot",), epochs=6, patience=2), data_dir=tiny_data_dir)
    info = result["tasks"]["chemprot"]
    assert result["train"]["epochs_run"] == 4 and result["train"]["stopped_early"] is True
    assert info["best_epoch"] == info["own_best_epoch"] == 2 and info["dev_score"] == 0.6
    assert info["peaked_at_last_epoch"] is False and info["selection"] == "task"
    assert result["train"]["patience"] == 2 and len(result["history"]) == 4


def test_a_multi_task_run_stops_only_when_no_task_improved(tiny_model_dir, tiny_data_dir, monkeypatch):
    _script_dev(monkeypatch, {"chemprot": [0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.9],
                              "ddi2013-type": [0.1, 0.1, 0.1, 0.3, 0.3, 0.3, 0.9]})
    spec = _spec(tiny_model_dir, ("chemprot", "ddi2013-type"), epochs=7, patience=2)
    result = loop.train(spec, data_dir=tiny_data_dir)
    assert result["train"]["epochs_run"] == 6 and result["train"]["stopped_early"] is True
    assert {n: t["best_epoch"] for n, t in result["tasks"].items()} == {"chemprot": 2, "ddi2013-type": 4}
    assert result["model_selection"]["rule"] == "task"  # a pair of a four-task domain is no all-task run


def test_running_to_the_ceiling_is_not_an_early_stop(tiny_model_dir, tiny_data_dir, monkeypatch):
    _script_dev(monkeypatch, {"chemprot": [0.1, 0.2, 0.3]})
    result = loop.train(_spec(tiny_model_dir, ("chemprot",), epochs=3, patience=2), data_dir=tiny_data_dir)
    assert result["train"]["stopped_early"] is False and result["tasks"]["chemprot"]["peaked_at_last_epoch"] is True


def test_mt_refinement_is_one_model_and_the_fine_tune_starts_from_its_encoder(tiny_model_dir, tiny_data_dir,
                                                                            monkeypatch, tmp_path):
    # chemprot alone would pick epoch 3; the mean over the four tasks is best at epoch 1
    _script_dev(monkeypatch, {name: ([0.5, 0.4, 0.6] if name == "chemprot" else [0.5, 0.3, 0.3]) for name in BIOMEDICAL})
    encoders = {}
    evaluate = loop._Loop.evaluate

    def remembering_evaluate(self, epoch):
        encoders[epoch] = {k: v.clone() for k, v in self.model.encoder.state_dict().items()}
        return evaluate(self, epoch)

    monkeypatch.setattr(loop._Loop, "evaluate", remembering_evaluate)
    spec = RunSpec(**{**_spec(tiny_model_dir, BIOMEDICAL, epochs=3).__dict__, "save_encoder": True})
    folder = tmp_path / "mtl"
    result = loop.train(spec, data_dir=tiny_data_dir, encoder_dir=folder / "encoder")

    assert {t["best_epoch"] for t in result["tasks"].values()} == {1}  # every row: one epoch, one model
    assert all(t["selection"] == "mean" for t in result["tasks"].values())
    assert result["tasks"]["chemprot"]["per_task_selection"]["best_epoch"] == 3  # kept as an extra column
    assert result["tasks"]["chemprot"]["per_task_selection"]["test_score"] is not None
    assert result["model_selection"] == {"rule": "mean", "mean_dev_epoch": 1, "mean_dev_score": 0.5,
                                         "saved_encoder_epoch": 1}
    assert json.loads((folder / "encoder" / loop.SELECTION_FILE).read_text())["epoch"] == 1

    refined, started = dict(encoders), {}  # the fine-tune's own epochs overwrite ``encoders``
    setup_encoder = loop.setup_encoder

    def remembering_setup(model, *args):
        started.update({k: v.clone() for k, v in model.encoder.state_dict().items()})
        return setup_encoder(model, *args)

    monkeypatch.setattr(loop, "setup_encoder", remembering_setup)
    finetune = _spec(tiny_model_dir, ("chemprot",), stage="finetune")
    _script_dev(monkeypatch, {"chemprot": [0.5]})
    tuned = loop.train(finetune, data_dir=tiny_data_dir, parent_dir=folder)
    assert tuned["parent"] == {"run_id": spec.run_id, "epoch": 1, "rule": "mean dev score"}
    same = [torch.equal(started[k], refined[1][k]) for k in refined[1] if k in started]
    assert same and all(same)  # the fine-tune loaded the epoch-1 encoder ...
    assert not all(torch.equal(started[k], refined[3][k]) for k in refined[3] if k in started)  # ... not the last


def test_per_task_selection_for_pairs_and_the_earlier_scheme(tiny_model_dir, tiny_data_dir, monkeypatch):
    table = load_task_table()
    assert is_all_task_run("mtl", BIOMEDICAL, "biomedical", table)
    assert not is_all_task_run("mtl", BIOMEDICAL[:2], "biomedical", table)
    assert not is_all_task_run("single", ("chemprot",), None, table)
    _script_dev(monkeypatch, {name: ([0.5, 0.4, 0.6] if name == "chemprot" else [0.5, 0.3, 0.3]) for name in BIOMEDICAL})
    result = loop.train(_spec(tiny_model_dir, BIOMEDICAL, epochs=3, refinement_selection="task"), data_dir=tiny_data_dir)
    assert result["tasks"]["chemprot"]["best_epoch"] == 3 and result["tasks"]["ddi2013-type"]["best_epoch"] == 1
    assert "per_task_selection" not in result["tasks"]["chemprot"]


def test_mean_selection_keeps_the_earlier_epoch_on_ties_and_treats_nan_as_no_skill():
    selection = Selection({"a": "f1", "b": "pearson"})
    selection.update(1, {"a": {"f1": 0.4}, "b": {"pearson": float("nan")}})
    selection.update(2, {"a": {"f1": 0.2}, "b": {"pearson": 0.2}})
    assert selection.mean.epoch == 1 and selection.mean.score == pytest.approx(0.2)
    assert selection.per_task["b"].epoch == 2
    assert selection.epochs(with_mean=False) == {1, 2}
