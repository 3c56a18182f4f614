"""Each run records how it was computed; new profile fields leave the run ids of earlier stores as they were."""

import json
import subprocess
from pathlib import Path

import pytest

from transfer.experiment.config import LEGACY_PROFILE_VALUES, RunSpec, load_profile, run_spec_from_dict
from transfer.training import device
from transfer.training import provenance as prov
from transfer.training.loop import train

REPO = Path(__file__).resolve().parents[1]


def test_a_run_records_precision_encoder_device_versions_and_commit(tiny_model_dir, tiny_data_dir, monkeypatch):
    import torch
    import transformers

    import transfer

    spec = RunSpec(tasks=("chemprot",), stage="single", profile=load_profile("test").replace(epochs=1), seed=3,
                   model=str(tiny_model_dir))
    moved = "f" * 40
    monkeypatch.setattr(prov, "git_commit", lambda start=None: moved)  # the checkout moves on while a run trains
    block = train(spec, data_dir=tiny_data_dir)["provenance"]
    assert block["precision"] == "fp32" and block["encoder_impl"] == "transfer" and block["random_streams"] == "task"
    assert block["device_class"] in ("cpu (bf16)", "cpu (no bf16)")
    assert block["cpu"] == device.cpu_host_class()
    assert (block["torch"], block["transformers"], block["transfer"]) == (
        torch.__version__, transformers.__version__, transfer.__version__)
    assert block["git_commit"] == prov._CODE_AT_IMPORT["git_commit"] != moved  # the commit the process started from
    assert block["package_changed"] == prov._CODE_AT_IMPORT["package_changed"]


def test_device_class_names_bf16_support_and_the_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: False)
    assert device.device_class(torch.device("cpu")) == "cpu (no bf16)"
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    assert device.device_class(torch.device("cpu")) == "cpu (bf16)"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    assert device.device_class(torch.device("cuda", 0)) == "cuda:NVIDIA H100"


def test_cpu_host_class_names_the_model_and_its_best_matmul_instructions():
    def info(flags):
        return f"processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu {flags} sse2\n\nprocessor\t: 1\n"

    assert device.cpu_host_class(info("avx2 avx512f avx512_bf16 amx_bf16 amx_tile")) == "Some CPU 9000 (amx_bf16)"
    assert device.cpu_host_class(info("avx2 avx512f avx512_bf16")) == "Some CPU 9000 (avx512_bf16)"
    assert device.cpu_host_class(info("avx2 fma")) == "Some CPU 9000 (avx2)"
    assert device.cpu_host_class(info("sse4_2")) == "Some CPU 9000 (no avx2)"
    assert device.cpu_host_class("") == "unknown CPU (no avx2)"  # no /proc/cpuinfo (not Linux)


def test_git_commit_is_read_from_the_git_folder_without_running_git(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert prov.git_commit(tmp_path) is None  # no .git: no commit, no error
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert prov.git_commit(tmp_path) is None  # a branch with no commit yet
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert prov.git_commit(tmp_path) == sha
    (git / "refs" / "heads" / "main").write_text(sha.replace("0", "f") + "\n")
    assert prov.git_commit(tmp_path) == sha.replace("0", "f")  # a loose ref wins over the packed one
    (git / "HEAD").write_text(sha + "\n")
    assert prov.git_commit(tmp_path) == sha  # detached HEAD


def test_package_changed_says_whether_tracked_package_files_differ_from_the_commit(tmp_path):
    import shutil

    if shutil.which("git") is None:
        pytest.skip("no git here")
    assert prov.package_changed(tmp_path) is None  # not a checkout
    run = lambda *args: subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, check=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "transfer").mkdir()
    (tmp_path / "transfer" / "m.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("a\n")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert prov.package_changed(tmp_path) is False
    (tmp_path / "README.md").write_text("b\n")  # outside the package: not the code that ran
    (tmp_path / "transfer" / "new.py").write_text("")  # untracked: not imported by the tracked code
    assert prov.package_changed(tmp_path) is False
    (tmp_path / "transfer" / "m.py").write_text("x = 2\n")
    assert prov.package_changed(tmp_path) is True


def test_git_commit_of_this_checkout_matches_git(monkeypatch):
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git here")
    assert prov.git_commit() == head.stdout.strip()


def test_new_profile_fields_keep_earlier_run_ids_and_change_new_ones():
    legacy = load_profile("test").replace(**LEGACY_PROFILE_VALUES)
    old = RunSpec(tasks=("chemprot",), stage="single", profile=legacy, seed=1)
    assert not any(name in old.canonical_json() for name in LEGACY_PROFILE_VALUES)
    stored = old.to_dict()
    for name in LEGACY_PROFILE_VALUES:  # a spec.json written before the fields existed
        stored["profile"].pop(name)
    assert run_spec_from_dict(stored).run_id == old.run_id
    assert run_spec_from_dict(stored).profile.random_streams == "shared"
    new = RunSpec(tasks=("chemprot",), stage="single", profile=load_profile("test"), seed=1)
    assert new.run_id != old.run_id and '"random_streams":"task"' in new.canonical_json()
    for name, value in (("head_init", "xavier"), ("random_streams", "global"), ("refinement_selection", "best")):
        with pytest.raises(ValueError, match=f"{name} must be one of"):
            load_profile("test").replace(**{name: value})


def test_legacy_store_is_read_with_the_earlier_values_and_hashed_without_them():
    """The new fields leave every earlier run id alone (other spec changes are checked where they are made)."""
    from stores import LEGACY_STORE

    specs = sorted((LEGACY_STORE / "runs").glob("*/spec.json"))
    assert specs
    fields = set(RunSpec.__dataclass_fields__)
    for path in specs:
        data = json.loads(path.read_text())
        spec = run_spec_from_dict({k: v for k, v in data.items() if k in fields})
        assert all(getattr(spec.profile, name) == value for name, value in LEGACY_PROFILE_VALUES.items())
        assert not any(f'"{name}"' in spec.canonical_json() for name in LEGACY_PROFILE_VALUES)
