"""The lean BERT forward computes what the Hugging Face forward computes, and its CPU dropout is a dropout."""

import numpy as np
import pytest
import torch

from transfer.training import fast_bert
from transfer.experiment.config import ConfigError, RunSpec, load_profile
from transfer.training.fast_bert import FastBertEncoder, FastDropout, unsupported_reason
from transfer.training.masks import MaskSource
from transfer.experiment.encoders import load_encoder
from transfer.training.model import MultiTaskModel
from transfer.data.tasks import load_task_table
from transfer.training.loop import bf16_compute, setup_encoder, train


@pytest.fixture()
def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 20000, (3, 11), generator=generator)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


def _hf(encoder, ids, mask, types):
    return encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "with-grad"])
def test_same_hidden_states_as_hugging_face(tiny_model_dir, batch, grad):
    encoder = load_encoder(str(tiny_model_dir)).eval()
    fast = FastBertEncoder(encoder, MaskSource(0))
    ids, mask, types = batch
    with torch.set_grad_enabled(grad):
        ref = _hf(encoder, ids, mask, types)
        full = fast(ids, mask, types)
        cls = fast(ids, mask, types, cls_only=True)
    real = mask.bool()
    assert full.shape == ref.shape and cls.shape == (3, 1, ref.shape[-1])
    torch.testing.assert_close(full[real], ref[real], atol=1e-5, rtol=1e-5)  # padded positions are never read
    torch.testing.assert_close(cls, ref[:, :1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("explicit", [True, False], ids=["cpu-explicit-attention", "cuda-fused-attention"])
def test_same_gradients_as_hugging_face_in_training_mode_without_dropout(tiny_model_dir, batch, explicit, monkeypatch):
    """Both attention branches; the fused one is what CUDA training takes, simulated here on the CPU."""
    monkeypatch.setattr(fast_bert, "explicit_attention", lambda x: explicit)
    encoder = load_encoder(str(tiny_model_dir))
    encoder.config.hidden_dropout_prob = encoder.config.attention_probs_dropout_prob = 0.0
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    encoder.train()
    ids, mask, types = batch
    target = torch.randn(3, encoder.config.hidden_size, generator=torch.Generator().manual_seed(2))

    def grads(hidden):
        encoder.zero_grad()
        ((hidden[:, 0] - target) ** 2).sum().backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    ref = grads(_hf(encoder, ids, mask, types))
    ours = grads(FastBertEncoder(encoder, MaskSource(0))(ids, mask, types, cls_only=True))
    shared = set(ref) & set(ours)
    assert {n for n in ref if "pooler" not in n} <= shared  # every encoder weight gets its gradient
    for name in shared:
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_functional_params_replace_the_modules_weights(tiny_model_dir, batch):
    encoder = load_encoder(str(tiny_model_dir)).eval()
    fast = FastBertEncoder(encoder, None)
    ids, mask, types = batch
    params = {n: p.detach() * 1.5 for n, p in encoder.named_parameters()}
    expected = torch.func.functional_call(encoder, params, args=(), kwargs={
        "input_ids": ids, "attention_mask": mask, "token_type_ids": types}).last_hidden_state
    with torch.no_grad():
        got = fast(ids, mask, types, params=params, cls_only=True)
    torch.testing.assert_close(got, expected[:, :1], atol=1e-5, rtol=1e-5)


def test_dropout_scales_kept_values_and_routes_gradients_through_the_mask():
    x = torch.ones(400, 500, requires_grad=True)
    layer = FastDropout(0.25, MaskSource(3))
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    layer.eval()
    assert layer(x) is x


def test_dropout_off_the_cpu_or_without_a_source_uses_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(fast_bert.F, "dropout", lambda x, p, training: calls.append(p) or x)
    x = torch.ones(4, 4)
    fast_bert.dropout(x, 0.1, True, None)
    assert calls == [0.1]


def test_other_architectures_are_refused_with_the_reason(tmp_path):
    from transformers import RobertaConfig, RobertaModel

    roberta = RobertaModel(RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=40))
    assert "roberta" in unsupported_reason(roberta)
    with pytest.raises(ValueError, match="roberta"):
        FastBertEncoder(roberta, None)
    task = load_task_table().task("chemprot")
    model = MultiTaskModel(roberta, [task])
    assert setup_encoder(model, "auto", torch.device("cpu"), MaskSource(0), True) == "hf" and model.fast is None
    assert bf16_compute("bf16", "native", model) == "autocast"  # the Hugging Face forward has no native path
    with pytest.raises(ValueError, match="encoder_impl = 'transfer' cannot run"):
        setup_encoder(model, "transfer", torch.device("cpu"), MaskSource(0))


def test_encoder_impl_is_a_validated_profile_option_and_recorded(tiny_model_dir, tiny_data_dir):
    with pytest.raises(ConfigError, match="encoder_impl must be one of"):
        load_profile("test").replace(encoder_impl="fast")
    profile = load_profile("test").replace(epochs=1, max_train_examples=4)
    for impl in ("hf", "transfer"):
        spec = RunSpec(tasks=("chemprot",), stage="single", profile=profile.replace(encoder_impl=impl), seed=3,
                       model=str(tiny_model_dir))
        assert train(spec, data_dir=tiny_data_dir)["train"]["encoder_impl"] == impl


def test_both_forwards_predict_the_same_in_eval(tiny_model_dir, tiny_data_dir):
    """Token-level (tagging) and sentence-level heads: identical predictions from either forward."""
    from transfer.training.features import load_split
    from transfer.training.batches import collate
    from transfer.experiment.encoders import load_tokenizer
    from transfer.data.tasks import locate_tasks

    table = load_task_table()
    tasks = [table.task("bc5cdr-chemical"), table.task("chemprot")]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    model = MultiTaskModel.from_pretrained(str(tiny_model_dir), tasks).eval()
    paths = locate_tasks(table, [t.name for t in tasks], None, tiny_data_dir)
    outputs = {}
    for impl in ("hf", "transfer"):
        if impl == "transfer":
            model.use_fast_encoder(MaskSource(0))
        for task in tasks:
            _, features, _ = load_split(task, "dev", paths[task.name]["dev"], tokenizer, 32)
            b = collate(features, np.arange(6), tokenizer.pad_token_id, with_targets=False)
            with torch.inference_mode():
                outputs[impl, task.name] = model(task.name, b["input_ids"], b["attention_mask"], b["token_type_ids"])
    for task in tasks:
        torch.testing.assert_close(outputs["transfer", task.name], outputs["hf", task.name], atol=1e-5, rtol=1e-5)


def test_without_dropout_both_forwards_train_the_same(tiny_model_dir, tiny_data_dir, tmp_path):
    """End to end (loss, backward, clipping, fused AdamW, schedule): the same losses and predictions."""
    import json
    import shutil

    folder = tmp_path / "no-dropout"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    results = {}
    for impl in ("hf", "transfer"):
        profile = load_profile("test").replace(epochs=2, max_train_examples=12, dropout=0.0, encoder_impl=impl)
        spec = RunSpec(tasks=("bc5cdr-chemical", "chemprot"), stage="mtl", profile=profile, seed=3, model=str(folder))
        results[impl] = train(spec, data_dir=tiny_data_dir)
    assert results["transfer"]["train"]["losses"] == pytest.approx(results["hf"]["train"]["losses"], abs=1e-4)
    assert results["transfer"]["predictions"] == results["hf"]["predictions"]


# ----------------------------------------------------------------------------------------------- native bf16

def _close_in_bf16(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error; bf16 keeps 8 bits of mantissa, so a few 1e-3 per op, about 1e-2 through a network."""
    return float((got.float() - ref).norm() / ref.norm())


@pytest.mark.parametrize("cls_only", [False, True], ids=["every-token", "cls-only"])
def test_native_bf16_computes_the_fp32_function_to_bf16_accuracy_without_autocast(tiny_model_dir, batch, cls_only):
    """The fused, pre-scaled Q/K/V projection and the additive mask compute what the fp32 forward does."""
    from torch.utils._python_dispatch import TorchDispatchMode

    encoder = load_encoder(str(tiny_model_dir)).eval()
    with torch.no_grad():  # peaked attention that outweighs the residual, so a wrong score scale or mask shows
        for layer in encoder.encoder.layer:
            layer.attention.self.query.weight.mul_(8.0)
            layer.attention.self.key.weight.mul_(8.0)
            layer.attention.output.dense.weight.mul_(10.0)
    ids, mask, types = batch
    with torch.no_grad():
        ref = FastBertEncoder(encoder, None)(ids, mask, types, cls_only=cls_only)
    matmul_dtypes = set()

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("addmm", "mm", "bmm"):
                matmul_dtypes.add(args[1].dtype)
            return func(*args, **(kwargs or {}))

    native = FastBertEncoder(encoder, None, torch.bfloat16)
    with torch.no_grad(), Watch():
        got = native(ids, mask, types, cls_only=cls_only)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert matmul_dtypes == {torch.bfloat16}  # every matmul ran in bf16, with no autocast around it
    real = mask.bool() if not cls_only else torch.ones(3, 1, dtype=torch.bool)
    error = _close_in_bf16(got[real], ref[real])
    # bf16 rounding (about 5e-3 here), not zero (fp32 ran) and not a wrong function (an unscaled query: 7e-2; the
    # padding left unmasked: 4e-2)
    assert 1e-4 < error < 1.5e-2


@pytest.mark.parametrize("explicit", [True, False], ids=["cpu-explicit-attention", "cuda-fused-attention"])
def test_native_bf16_gradients_reach_the_fp32_weights(tiny_model_dir, batch, explicit, monkeypatch):
    monkeypatch.setattr(fast_bert, "explicit_attention", lambda x: explicit)
    encoder = load_encoder(str(tiny_model_dir)).train()
    encoder.config.hidden_dropout_prob = encoder.config.attention_probs_dropout_prob = 0.0
    ids, mask, types = batch
    target = torch.randn(3, encoder.config.hidden_size, generator=torch.Generator().manual_seed(2))

    def grads(fast):
        encoder.zero_grad()
        ((fast(ids, mask, types, cls_only=True)[:, 0] - target) ** 2).sum().backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    ref = grads(FastBertEncoder(encoder, None))
    got = grads(FastBertEncoder(encoder, None, torch.bfloat16))
    assert set(got) == set(ref)  # every weight, the fused query/key/value ones included, gets its gradient
    assert all(g.dtype == torch.float32 for g in got.values())
    flat_ref = torch.cat([ref[n].flatten() for n in sorted(ref)])
    flat_got = torch.cat([got[n].flatten() for n in sorted(ref)])
    assert _close_in_bf16(flat_got, flat_ref) < 5e-2


def _sdpa_key_lengths(monkeypatch) -> list[int]:
    """Record the key length of every fused attention call."""
    seen, real = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append(k.shape[-2])
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(fast_bert.F, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("cls_only", [False, True], ids=["every-token", "cls-only"])
def test_native_inference_pads_keys_to_a_multiple_of_16_and_computes_the_same(tiny_model_dir, batch, cls_only,
                                                                              monkeypatch):
    """The padded keys weigh nothing: the output matches the unpadded kernel's to bf16 rounding, with real padding
    in the batch (rows 1 and 2) and at an odd length (11 -> 16)."""
    encoder = load_encoder(str(tiny_model_dir)).eval()  # flat attention: a padded key given weight takes its share
    with torch.no_grad():  # attention that outweighs the residual, so what it computes shows in the output
        for layer in encoder.encoder.layer:
            layer.attention.output.dense.weight.mul_(10.0)
    ids, mask, types = batch
    native = FastBertEncoder(encoder, None, torch.bfloat16)
    seen = _sdpa_key_lengths(monkeypatch)
    with torch.inference_mode():
        padded = native(ids, mask, types, cls_only=cls_only)
        monkeypatch.setattr(fast_bert, "KEY_MULTIPLE", 1)
        plain = native(ids, mask, types, cls_only=cls_only)
    layers = encoder.config.num_hidden_layers
    assert seen == [16] * layers + [11] * layers
    real = mask.bool() if not cls_only else torch.ones(3, 1, dtype=torch.bool)
    # bf16 rounding at most (4e-4 here, 0 for [CLS] alone); padded keys given weight, below: 4e-2
    assert _close_in_bf16(padded[real], plain[real].float()) < 2e-3
    # the padded keys' bias zeroed, so that they take weight: caught
    monkeypatch.setattr(fast_bert, "KEY_MULTIPLE", 16)
    real_pad = torch.nn.functional.pad
    monkeypatch.setattr(fast_bert.F, "pad", lambda t, pad, value=0.0: real_pad(t, pad, value=0.0))
    with torch.inference_mode():
        leaky = native(ids, mask, types, cls_only=cls_only)
    assert _close_in_bf16(leaky[real], plain[real].float()) > 1e-2


def test_keys_are_padded_only_for_the_fused_cpu_kernel():
    x = torch.zeros(2, 11, 4)
    with torch.inference_mode():
        assert fast_bert.key_padding(x) == 5 and fast_bert.key_padding(torch.zeros(2, 32, 4)) == 0
    assert fast_bert.key_padding(x) == 0  # with gradients on the CPU: the explicit path, no padding
    assert fast_bert.key_padding(torch.zeros(2, 11, 4, device="meta")) == 0  # not a CPU tensor


def test_cls_only_inference_projects_the_query_with_one_matmul_not_an_expanded_weight(tiny_model_dir, batch):
    """A strided [CLS] slice sent F.linear to a batched matmul over a copied, batch-expanded weight."""
    from torch.utils._python_dispatch import TorchDispatchMode

    encoder = load_encoder(str(tiny_model_dir)).eval()
    calls = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
            calls.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    layers = encoder.config.num_hidden_layers
    # fp32: six projections per layer; native: the fused Q/K/V one, and [CLS]'s query beside a fused K/V in the last
    for compute_dtype, addmms in ((None, 6 * layers), (torch.bfloat16, 4 * layers + 1)):
        calls.clear()
        with torch.no_grad(), Watch():  # under inference_mode the mode sees F.linear itself, not what it runs
            FastBertEncoder(encoder, None, compute_dtype)(*batch, cls_only=True)
        assert "bmm" not in calls and calls.count("addmm") == addmms


def test_native_bf16_reuses_its_cast_weights_only_until_a_weight_changes(tiny_model_dir, batch):
    encoder = load_encoder(str(tiny_model_dir)).eval()
    native = FastBertEncoder(encoder, None, torch.bfloat16)
    ids, mask, types = batch
    with torch.inference_mode():
        first = native(ids, mask, types)
        cached = native._cast_cache[1]
        assert native(ids, mask, types).equal(first) and native._cast_cache[1] is cached
    with torch.no_grad():  # an optimizer step or a loaded snapshot changes the weights in place
        encoder.encoder.layer[0].intermediate.dense.weight.mul_(3.0)
    with torch.inference_mode():
        changed = native(ids, mask, types)
    assert native._cast_cache[1] is not cached and not changed.equal(first)
    with torch.enable_grad():  # training casts afresh (a differentiable cast), and keeps no cache
        native(ids, mask, types)
    assert native._cast_cache is None


def test_bf16_compute_is_a_validated_option_recorded_with_the_run(tiny_model_dir, tiny_data_dir):
    with pytest.raises(ConfigError, match="bf16_compute must be one of"):
        load_profile("test").replace(bf16_compute="pure")
    profile = load_profile("test").replace(epochs=1, max_train_examples=8, precision="bf16")
    recorded = {}
    for compute in ("native", "autocast"):
        spec = RunSpec(tasks=("bc5cdr-chemical", "chemprot"), stage="mtl", profile=profile.replace(bf16_compute=compute),
                       seed=3, model=str(tiny_model_dir))
        result = train(spec, data_dir=tiny_data_dir)
        recorded[compute] = result["provenance"].get("bf16_compute"), result["train"]["losses"]
    assert recorded["native"][0] == "native" and recorded["autocast"][0] == "autocast"
    assert recorded["native"][1] != recorded["autocast"][1]  # two arithmetics, two trajectories
    assert recorded["native"][1] == pytest.approx(recorded["autocast"][1], rel=0.05)
    fp32 = RunSpec(tasks=("chemprot",), stage="single", profile=profile.replace(precision="fp32", epochs=1), seed=3,
                   model=str(tiny_model_dir))
    assert "bf16_compute" not in train(fp32, data_dir=tiny_data_dir)["provenance"]
    # look-ahead probes run under autocast beside a native run (their own precision option), and measure something
    preview = RunSpec(tasks=("bc5cdr-chemical", "chemprot"), stage="mtl", profile=profile, seed=3,
                      model=str(tiny_model_dir), affinity_every=1)
    affinity = train(preview, data_dir=tiny_data_dir)["affinity"]
    assert np.isfinite(np.asarray(affinity["matrix"], dtype=float)).all()
