"""The lean BERT forward computes what the Hugging Face forward computes, and its CPU dropout is a dropout."""

import numpy as np
import pytest
import torch

from transfer.training import fast_bert
from transfer.experiment.config import ConfigError, RunSpec, load_profile
from transfer.training.fast_bert import FastBertEncoder, FastDropout, MaskSource, unsupported_reason
from transfer.experiment.encoders import load_encoder
from transfer.training.model import MultiTaskModel
from transfer.data.tasks import load_task_table
from transfer.training.loop import setup_encoder, train


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


def test_mask_source_keeps_the_right_fraction_and_replays_from_its_state():
    source = MaskSource(11)
    state = source.state()
    keep = source.keep_mask(torch.Size([1000, 1000]), 0.1)
    assert keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - 0.9) < 0.002  # p rounded to 6554 / 65536
    source.set_state(state)
    assert torch.equal(source.keep_mask(torch.Size([1000, 1000]), 0.1), keep)
    assert not torch.equal(MaskSource(12).keep_mask(torch.Size([1000, 1000]), 0.1), keep)
    assert source.keep_mask(torch.Size([7, 3]), 0.0).all()  # odd sizes; p = 0 keeps everything


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
    assert setup_encoder(model, "auto", torch.device("cpu"), MaskSource(0)) == "hf" and model.fast is None
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
