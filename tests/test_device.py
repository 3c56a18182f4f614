"""GPU code paths checked by simulation on the CPU: device and precision choice, fp16 loss scaling, TF32."""

import pytest
import torch

from transfer.training import device as device_module
from transfer.training import loop as train_module
from transfer.experiment.config import RunSpec, load_profile


def test_precision_auto_follows_the_hardware(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert device_module.resolve_precision("auto", cuda) == "bf16"  # Ampere and newer
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert device_module.resolve_precision("auto", cuda) == "fp16"  # older GPUs: fp16 with loss scaling
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: True)
    assert device_module.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: False)
    assert device_module.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert device_module.resolve_precision("fp32", cuda) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        device_module.resolve_precision("fp16", torch.device("cpu"))


def test_device_auto_picks_a_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_module.pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_module.pick_device(None).type == "cpu"
    assert device_module.pick_device("cuda:1") == torch.device("cuda", 1)


def test_fp16_path_scales_the_loss_and_still_learns(tiny_model_dir, tiny_data_dir, monkeypatch):
    """The fp16 branch (GradScaler + autocast) run on the CPU, where torch supports both."""
    monkeypatch.setattr(train_module, "resolve_precision", lambda precision, device: "fp16")
    scalers = []
    original = torch.amp.GradScaler

    def recording_scaler(*args, **kwargs):
        scaler = original(*args, **kwargs)
        scalers.append(scaler)
        return scaler

    monkeypatch.setattr(torch.amp, "GradScaler", recording_scaler)
    profile = load_profile("test").replace(epochs=1, max_train_examples=12)
    spec = RunSpec(tasks=("chemprot",), stage="single", profile=profile, seed=3, model=str(tiny_model_dir))
    result = train_module.train(spec, data_dir=tiny_data_dir)
    assert result["train"]["precision"] == "fp16"
    assert scalers and scalers[0].is_enabled()
    assert scalers[0].get_scale() > 0
    losses = result["train"]["losses"]
    assert len(losses) == 3 and all(l == l and l < 10 for l in losses)  # finite, no NaN  # noqa: E741
    # fp16 tracks the fp32 reference closely on this tiny model
    from test_train import RECORDED_LOSSES

    assert losses[0] == pytest.approx(RECORDED_LOSSES[0], abs=0.05)


def test_bf16_and_fp32_paths_leave_the_scaler_disabled(tiny_model_dir, tiny_data_dir, monkeypatch):
    scalers = []
    original = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *a, **k: scalers.append(original(*a, **k)) or scalers[-1])
    profile = load_profile("test").replace(epochs=1, max_train_examples=4, precision="bf16")
    spec = RunSpec(tasks=("chemprot",), stage="single", profile=profile, seed=3, model=str(tiny_model_dir))
    result = train_module.train(spec, data_dir=tiny_data_dir)
    assert result["train"]["precision"] == "bf16"
    assert not scalers[0].is_enabled()


def test_peak_memory_reports_the_cuda_peak_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**20)
    peak = device_module.peak_memory(torch.device("cuda", 0))
    assert peak["peak_cuda_mb"] == 3.0 and peak["peak_rss_mb"] > 0
    assert set(device_module.peak_memory(torch.device("cpu"))) == {"peak_rss_mb"}


def test_per_task_streams_keep_the_cuda_generator_per_task(monkeypatch):
    """The CUDA half of TaskStreams.activate, against a stand-in CUDA generator (seed and draw count)."""
    from transfer.training.streams import TaskStreams

    cuda = {"seed": 99, "drawn": 0}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.tensor([cuda["seed"], cuda["drawn"]]))
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device=None: cuda.update(seed=int(state[0]), drawn=int(state[1])))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: cuda.update(seed=seed % 2**62, drawn=0))
    streams = TaskStreams(3, ("chemprot", "ddi2013-type"), device="cuda")
    streams.activate("chemprot")
    own_seed = cuda["seed"]
    assert own_seed != 99 and cuda["drawn"] == 0
    cuda["drawn"] = 5  # chemprot's batch drew dropout masks
    streams.activate("ddi2013-type")
    assert cuda["seed"] not in (99, own_seed) and cuda["drawn"] == 0
    cuda["drawn"] = 7
    streams.activate("chemprot")
    assert (cuda["seed"], cuda["drawn"]) == (own_seed, 5)  # chemprot goes on where it stopped
    streams.deactivate()
    assert (cuda["seed"], cuda["drawn"]) == (99, 0)  # outside any task: the state from before
    alone = TaskStreams(3, ("chemprot",), device="cuda")
    alone.activate("chemprot")
    assert cuda["seed"] == own_seed  # the same stream in the single run
