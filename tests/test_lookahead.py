"""Look-ahead affinity: Z equals a real optimiser step on a copy; tracking leaves training unchanged."""

import copy

import numpy as np
import pytest
import torch

from transfer.experiment.config import RunSpec, load_profile
from transfer.training.features import SplitData, build_features
from transfer.training.batches import collate
from transfer.training.lookahead import AffinityTracker, lookahead_params
from transfer.training.model import MultiTaskModel, load_tokenizer
from transfer.data.readers import read_split
from transfer.data.tasks import load_task_table, locate_tasks
from transfer.training.loop import build_optimizer, train

TASKS = ("chemprot", "bc5cdr-chemical")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_data_dir):
    table = load_task_table()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    paths = locate_tasks(table, TASKS, data_dir=tiny_data_dir)
    splits = {}
    for name in TASKS:
        task = table.task(name)
        examples = read_split(paths[name]["train"], task)
        feats = build_features(examples, task, tokenizer, 32)
        splits[name] = SplitData(task, "train", examples, feats, np.arange(len(feats)))
    torch.manual_seed(0)
    model = MultiTaskModel.from_pretrained(str(tiny_model_dir), [table.task(n) for n in TASKS])
    return model, splits, tokenizer.pad_token_id


def _loss(model, name, batch, params=None):
    model.eval()
    return model.loss(name, batch, params)


@pytest.mark.parametrize("optimizer_name", ["adamw", "adamax"])
def test_lookahead_step_equals_a_real_optimizer_step_on_a_copy(setup, optimizer_name):
    model, splits, pad_id = setup
    model = copy.deepcopy(model)
    lr = 1e-3
    optimizer = build_optimizer(model, optimizer_name, lr, 0.01, torch.device("cpu"))
    batches = {n: collate(s.features, np.arange(4), pad_id) for n, s in splits.items()}
    # one real step first, so the optimiser has state (moments, step count)
    model.train()
    model.loss("chemprot", batches["chemprot"]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    named = {n: p for n, p in model.encoder.named_parameters()}
    loss = _loss(model, "bc5cdr-chemical", batches["bc5cdr-chemical"])
    raw = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    grads = {n: g for n, g in zip(named, raw) if g is not None}  # the pooler is unused
    named = {n: named[n] for n in grads}
    ours = lookahead_params(optimizer, named, grads, lr)

    twin = copy.deepcopy(model)
    twin_opt = build_optimizer(twin, optimizer_name, lr, 0.01, torch.device("cpu"))
    twin_opt.load_state_dict(optimizer.state_dict())
    for name, param in twin.encoder.named_parameters():
        param.grad = grads[name].clone() if name in grads else None
    twin_opt.step()  # heads and the pooler have no gradient, so only the used encoder weights move
    for name, param in twin.encoder.named_parameters():
        if name in ours:
            torch.testing.assert_close(ours[name], param.detach(), rtol=1e-5, atol=1e-7)


def test_z_matches_hand_computed_lookahead_on_fixed_batches(setup, monkeypatch):
    model, splits, pad_id = setup
    model = copy.deepcopy(model)
    lr = 5e-3
    optimizer = build_optimizer(model, "adamw", lr, 0.0, torch.device("cpu"))
    batches = {n: [collate(s.features, np.arange(6), pad_id)] for n, s in splits.items()}
    tracker = AffinityTracker(splits, every=1, num_batches=1, batch_size=6, pad_id=pad_id, device=torch.device("cpu"),
                              autocast_factory=_null,
                              max_grad_norm=1e9, seed=0)
    monkeypatch.setattr(tracker, "_probe_batches", lambda: batches)
    z = tracker.probe(model, optimizer, lr)

    # by hand: first AdamW step from empty state moves each weight by lr * g / (|g| + eps)
    for i, source in enumerate(TASKS):
        named = {n: p for n, p in model.encoder.named_parameters()}
        grads = torch.autograd.grad(_loss(model, source, batches[source][0]), list(named.values()), allow_unused=True)
        moved = {n: p.detach() - lr * g / (g.abs() + 1e-8) for (n, p), g in zip(named.items(), grads) if g is not None}
        for j, target in enumerate(TASKS):
            with torch.no_grad():
                before = _loss(model, target, batches[target][0])
                after = _loss(model, target, batches[target][0], moved)
            assert z[i, j] == pytest.approx(1 - float(after) / float(before), rel=1e-4, abs=1e-6)
    assert z[0, 0] > 0 and z[1, 1] > 0  # a step on a task's own loss lowers it


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_tracking_leaves_the_training_trajectory_unchanged(tiny_model_dir, tiny_data_dir):
    profile = load_profile("test").replace(epochs=2, max_train_examples=12)
    plain = RunSpec(tasks=TASKS, stage="mtl", profile=profile, seed=2, model=str(tiny_model_dir))
    tracked = RunSpec(tasks=TASKS, stage="mtl", profile=profile, seed=2, model=str(tiny_model_dir), affinity_every=2)
    a = train(plain, data_dir=tiny_data_dir)
    b = train(tracked, data_dir=tiny_data_dir)
    assert a["train"]["losses"] == b["train"]["losses"]
    assert a["predictions"] == b["predictions"]
    affinity = b["affinity"]
    assert affinity["tasks"] == list(TASKS)
    assert len(affinity["per_epoch"]) == 2
    matrix = np.array(affinity["matrix"])
    assert matrix.shape == (2, 2) and np.isfinite(matrix).all()
    assert "affinity" not in a


def test_affinity_stage_plans_one_tracked_all_task_run(tiny_data_dir, tmp_path, capsys):
    from transfer import affinity, grid

    profile = load_profile("test")
    runs = grid.expand_specs(TASKS, ("all", "affinity"), (1,), profile=profile, model="m", domain="biomedical",
                             affinity_every=7, affinity_batches=2)
    (_, plain), (stage, tracked) = runs
    assert stage == "affinity" and tracked.tasks == plain.tasks and tracked.stage == "mtl"
    assert (tracked.affinity_every, tracked.affinity_batches, plain.affinity_every) == (7, 2, 0)
    assert tracked.run_id != plain.run_id
    code = affinity.main(["--domain", "biomedical", "--data-dir", str(tiny_data_dir), "--profile", "test",
                          "--results", str(tmp_path / "store"), "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "affinity" in out and "1 runs" in out
    assert not (tmp_path / "store").exists()
