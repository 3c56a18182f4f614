"""Profiles and run specs: validation, unknown keys, stable run ids."""

import pytest

from transfer.experiment.config import ConfigError, Profile, RunSpec, load_profile, profile_from_dict, run_spec_from_dict


def test_shipped_profiles_load():
    paper = load_profile("paper")
    assert (paper.learning_rate, paper.batch_size, paper.optimizer, paper.epochs) == (5e-5, 32, "adamax", 100)
    assert (paper.finetune_learning_rate, paper.finetune_epochs, paper.max_length) == (1e-5, 10, 128)
    quick = load_profile("quick")
    assert quick.max_train_examples == 2000
    assert load_profile("test").precision == "fp32"


def test_unknown_profile_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown profile key.*learnin_rate"):
        profile_from_dict({"learnin_rate": 1e-3}, name="typo")


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "batch_size must be > 0"),
    ({"optimizer": "sgd"}, "optimizer must be one of"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"precision": "fp8"}, "precision must be one of"),
])
def test_bad_profile_values_say_what_to_change(change, message):
    with pytest.raises(ConfigError, match=message):
        Profile(**change)


def test_run_id_is_stable_and_sensitive_to_what_matters():
    profile = load_profile("quick")
    spec = RunSpec(tasks=("chemprot",), stage="single", profile=profile, seed=1)
    assert spec.run_id == RunSpec(tasks=("chemprot",), stage="single", profile=profile, seed=1).run_id
    assert spec.run_id != RunSpec(tasks=("chemprot",), stage="single", profile=profile, seed=2).run_id
    assert spec.run_id != RunSpec(tasks=("chemprot",), stage="single", profile=profile.replace(epochs=4), seed=1).run_id
    renamed = RunSpec(tasks=("chemprot",), stage="single", profile=profile.replace(name="other"), seed=1)
    assert spec.run_id == renamed.run_id
    assert run_spec_from_dict(spec.to_dict()) == spec


def test_run_spec_checks_stage_and_tasks():
    profile = load_profile("test")
    with pytest.raises(ConfigError, match="single-task run takes exactly one task"):
        RunSpec(tasks=("a", "b"), stage="single", profile=profile)
    with pytest.raises(ConfigError, match="needs the mtl run"):
        RunSpec(tasks=("a",), stage="finetune", profile=profile)
