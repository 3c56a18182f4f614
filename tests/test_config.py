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


def test_every_profile_file_loads_and_cpu_clinical_differs_from_cpu_only_in_its_epoch_budget():
    from dataclasses import asdict

    from transfer.experiment.config import EXPERIMENTS_DIR

    profiles = {path.stem: load_profile(path.stem) for path in sorted(EXPERIMENTS_DIR.glob("*.toml"))}
    assert {"paper", "quick", "cpu", "cpu-clinical", "test"} <= set(profiles)
    cpu, clinical = asdict(profiles["cpu"]), asdict(profiles["cpu-clinical"])
    differs = {key for key in cpu if cpu[key] != clinical[key]}
    assert differs == {"name", "epochs", "finetune_epochs", "patience"}
    assert (clinical["epochs"], clinical["finetune_epochs"], clinical["patience"]) == (12, 8, 3)


def test_unknown_profile_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown profile key.*learnin_rate"):
        profile_from_dict({"learnin_rate": 1e-3}, name="typo")


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "batch_size must be > 0"),
    ({"group_window": 0}, "group_window must be > 0"),
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
    assert spec.run_id != RunSpec(tasks=("chemprot",), stage="single", profile=profile.replace(epochs=profile.epochs + 1), seed=1).run_id
    renamed = RunSpec(tasks=("chemprot",), stage="single", profile=profile.replace(name="other"), seed=1)
    assert spec.run_id == renamed.run_id
    assert run_spec_from_dict(spec.to_dict()) == spec


def test_run_spec_checks_stage_and_tasks():
    profile = load_profile("test")
    with pytest.raises(ConfigError, match="single-task run takes exactly one task"):
        RunSpec(tasks=("a", "b"), stage="single", profile=profile)
    with pytest.raises(ConfigError, match="needs the mtl run"):
        RunSpec(tasks=("a",), stage="finetune", profile=profile)


@pytest.mark.parametrize("change, message", [
    ({"epochs": 2.5}, "epochs must be a whole number, got 2.5"),
    ({"epochs": True}, "epochs must be a whole number, got the boolean true"),
    ({"max_train_examples": 100.0}, "max_train_examples must be a whole number"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    ({"dropout": float("inf")}, "dropout must be a finite number"),
    ({"optimizer": 3}, "optimizer must be a string"),
    ({"group_by_length": 1}, "group_by_length must be true or false"),
    ({"seeds": (-1,)}, "seeds must be a whole number from 0 to 4294967295"),
    ({"seeds": (2**32,)}, "seeds must be a whole number from 0"),
    ({"seeds": (1.5,)}, "seeds must be a list of whole numbers"),
])
def test_profile_values_have_their_types(change, message):
    with pytest.raises(ConfigError, match=message):
        Profile(**change)


def test_integer_given_for_a_float_is_a_float():
    assert Profile(learning_rate=1).learning_rate == 1.0 and isinstance(Profile(learning_rate=1).learning_rate, float)


@pytest.mark.parametrize("pair, message", [
    ("epochs", "expected key=value"),
    ("lr=1", "unknown profile key 'lr'"),
    ("learning_rate=nan", "must be a finite number"),
    ("learning_rate=-inf", "must be a finite number"),
    ("epochs=2.0", "epochs must be a whole number"),
])
def test_bad_overrides_are_config_errors(pair, message):
    from transfer.experiment.config import profile_with_overrides

    with pytest.raises(ConfigError, match=message):
        profile_with_overrides("test", [pair])


def test_run_seed_in_range():
    with pytest.raises(ConfigError, match="seed must be a whole number from 0"):
        RunSpec(tasks=("chemprot",), stage="single", profile=load_profile("test"), seed=-3)


def test_profile_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_bytes(b"\xef\xbb\xbfepochs = 2\n")
    assert load_profile(str(path)).epochs == 2


def test_stored_profiles_of_the_committed_store_still_load():
    import json

    from stores import COMMITTED_STORE, LEGACY_STORE

    specs = sorted(LEGACY_STORE.glob("runs/*/spec.json")) + sorted(COMMITTED_STORE.glob("**/spec.json"))
    assert specs
    for spec_file in specs:
        data = json.loads(spec_file.read_text())
        data.pop("run_id", None)
        data.pop("roles", None)
        run_spec_from_dict(data)
