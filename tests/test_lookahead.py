"""Look-ahead affinity: Z equals a real optimiser step on a copy; the marginal affinity cancels the shared momentum;
tracking leaves training unchanged."""

import copy

import numpy as np
import pytest
import torch

from transfer.experiment.config import ConfigError, RunSpec, load_profile
from transfer.training.features import SplitData, build_features
from transfer.training.batches import collate
from transfer.training.lookahead import AffinityTracker, lookahead_params
from transfer.experiment.encoders import load_tokenizer
from transfer.training.model import MultiTaskModel
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
    monkeypatch.setattr(tracker, "_probe_batches", lambda: (batches, batches))
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
    for key in ("matrix", "marginal", "momentum_only", "grad_cosine"):
        matrix = np.array(affinity[key])
        assert matrix.shape == (2, 2) and np.isfinite(matrix).all(), key
    assert np.allclose(np.diag(affinity["grad_cosine"]), 1.0)
    assert affinity["precision"] == "fp32" and affinity["diagonal"] == "held-out"  # the test profile trains in fp32
    assert affinity["measurements"] >= 2 and affinity["skipped_zero_lr"] == 0  # no warm-up step at this size
    assert "affinity" not in a


def test_a_short_preview_follows_the_start_of_the_all_task_runs_trajectory(tiny_model_dir, tiny_data_dir):
    # affinity_epochs = 1 of a 2-epoch schedule: the preview's steps are the all-task run's first epoch, step for
    # step (same learning-rate schedule), and it stops there
    profile = load_profile("test").replace(epochs=2, max_train_examples=12)
    plain = RunSpec(tasks=TASKS, stage="mtl", profile=profile, seed=2, model=str(tiny_model_dir))
    preview = RunSpec(tasks=TASKS, stage="mtl", profile=profile, seed=2, model=str(tiny_model_dir), affinity_every=2,
                      affinity_epochs=1)
    a = train(plain, data_dir=tiny_data_dir)
    b = train(preview, data_dir=tiny_data_dir)
    assert (a["train"]["epochs_run"], b["train"]["epochs_run"]) == (2, 1)
    first_epoch = len(b["train"]["losses"])
    assert 0 < first_epoch < len(a["train"]["losses"])
    assert b["train"]["losses"] == a["train"]["losses"][:first_epoch]
    assert len(b["affinity"]["per_epoch"]) == 1


def test_affinity_epochs_is_hashed_only_when_set_and_only_for_affinity_runs(tiny_model_dir):
    profile = load_profile("test")
    tracked = RunSpec(tasks=TASKS, stage="mtl", profile=profile, seed=2, model=str(tiny_model_dir), affinity_every=2)
    short = RunSpec(tasks=TASKS, stage="mtl", profile=profile, seed=2, model=str(tiny_model_dir), affinity_every=2,
                    affinity_epochs=1)
    assert '"affinity_epochs"' not in tracked.canonical_json() and short.run_id != tracked.run_id
    assert short.last_epoch == 1 and tracked.last_epoch == short.epochs == profile.epochs
    with pytest.raises(ConfigError, match="affinity_epochs"):
        RunSpec(tasks=TASKS, stage="mtl", profile=profile, affinity_epochs=1)  # not an affinity run


def test_probe_precision_changes_only_the_affinity_run_ids(tiny_model_dir):
    profile = load_profile("test")
    plain = RunSpec(tasks=TASKS, stage="mtl", profile=profile, seed=2, model=str(tiny_model_dir))
    tracked = RunSpec(tasks=TASKS, stage="mtl", profile=profile, seed=2, model=str(tiny_model_dir), affinity_every=2)
    full = profile.replace(affinity_precision="fp32")
    assert RunSpec(tasks=TASKS, stage="mtl", profile=full, seed=2, model=str(tiny_model_dir)).run_id == plain.run_id
    assert RunSpec(tasks=TASKS, stage="mtl", profile=full, seed=2, model=str(tiny_model_dir),
                   affinity_every=2).run_id != tracked.run_id
    assert '"affinity_precision"' not in plain.canonical_json() and '"affinity_tracker"' not in plain.canonical_json()
    assert '"affinity_tracker":2' in tracked.canonical_json()  # runs measured by the older tracker get other ids


def test_gradient_and_evaluation_probe_rows_are_disjoint(setup):
    _, splits, pad_id = setup
    tracker = AffinityTracker(splits, every=1, num_batches=2, batch_size=4, pad_id=pad_id, device=torch.device("cpu"),
                              autocast_factory=_null, max_grad_norm=1.0, seed=0)
    for split in splits.values():
        gradient, evaluation = tracker._probe_rows(split)
        assert len(gradient) == len(evaluation) == 2
        for g, e in zip(gradient, evaluation):
            assert len(g) == len(e) == 4 and not set(g) & set(e)


# ---------------------------------------------------------------------------------------------------------------
# Marginal affinity on a toy model whose "encoder" is one weight vector w
# ---------------------------------------------------------------------------------------------------------------

class _Toy(torch.nn.Module):
    """Task a's loss reads only w[0] and task b's only w[1] (one tensor, so both gradients are dense): the two
    tasks' gradients are orthogonal, and under Adam's elementwise update a step on a moves w[1] exactly as the
    momentum-only step does."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Module()
        self.encoder.w = torch.nn.Parameter(torch.tensor([0.4, -0.3]))

    def loss(self, name, batch, params=None):
        w = params["w"] if params else self.encoder.w
        return ((batch["x"] @ w - batch["y"]) ** 2).mean() + 0.5


def _toy_batches():
    x_a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]])
    x_b = torch.tensor([[0.0, 1.0], [0.0, -1.5], [0.0, 0.7]])
    return {"a": [{"x": x_a, "y": torch.tensor([1.0, 1.5, 0.2])}],
            "b": [{"x": x_b, "y": torch.tensor([-0.5, 0.8, 0.1])}]}


def _toy_tracker(monkeypatch, betas, weight_decay, warm_steps=5, lr=0.05):
    model = _Toy()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    batches = _toy_batches()
    for step in range(warm_steps):  # real steps on both tasks, so the optimiser carries momentum
        name = "ab"[step % 2]
        model.loss(name, batches[name][0]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    tracker = AffinityTracker({"a": None, "b": None}, every=1, num_batches=1, batch_size=3, pad_id=0,
                              device=torch.device("cpu"), autocast_factory=_null, max_grad_norm=1e9, seed=0)
    monkeypatch.setattr(tracker, "_probe_batches", lambda: (batches, batches))
    z = tracker.probe(model, optimizer, lr)
    tracker.end_epoch()
    return z, tracker.result()


def test_marginal_affinity_of_orthogonal_task_gradients_is_zero(monkeypatch):
    z, block = _toy_tracker(monkeypatch, betas=(0.9, 0.999), weight_decay=0.01)
    marginal = np.array(block["marginal"])
    lr = 0.05
    for i, j in ((0, 1), (1, 0)):
        assert abs(marginal[i, j]) < 1e-6
        assert abs(z[i, j]) > 1e-4  # the plain Z sees the shared momentum (and weight decay)
        assert abs(z[i, j] / lr) > 1e3 * abs(marginal[i, j])
    assert abs(marginal[0, 0]) > 1e-3 and abs(marginal[1, 1]) > 1e-3  # a task's own gradient moves its own loss
    assert block["grad_cosine"][0][1] == pytest.approx(0.0, abs=1e-7)
    assert np.array(block["momentum_only"])[0] == pytest.approx(z[0] - lr * marginal[0], abs=1e-7)


def test_without_momentum_the_marginal_is_the_plain_affinity_per_unit_learning_rate(setup, monkeypatch):
    model, splits, pad_id = setup
    model = copy.deepcopy(model)
    lr = 2e-3
    optimizer = build_optimizer(model, "adamw", lr, 0.0, torch.device("cpu"))
    for group in optimizer.param_groups:
        group["betas"] = (0.0, 0.999)
    batches = {n: [collate(s.features, np.arange(6), pad_id)] for n, s in splits.items()}
    model.train()
    model.loss("chemprot", batches["chemprot"][0]).backward()  # a real step: second moments and step count
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    held_out = {n: [collate(s.features, np.arange(6, 12), pad_id)] for n, s in splits.items()}
    tracker = AffinityTracker(splits, every=1, num_batches=1, batch_size=6, pad_id=pad_id, device=torch.device("cpu"),
                              autocast_factory=_null, max_grad_norm=1.0, seed=0)
    monkeypatch.setattr(tracker, "_probe_batches", lambda: (batches, held_out))
    z = tracker.probe(model, optimizer, lr)
    tracker.end_epoch()
    block = tracker.result()
    np.testing.assert_allclose(np.array(block["marginal"]), z / lr, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.array(block["momentum_only"]), 0.0, atol=1e-9)
    assert np.abs(z).max() > 0


def test_a_probe_at_learning_rate_zero_records_nothing(monkeypatch):
    model = _Toy()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    tracker = AffinityTracker({"a": None, "b": None}, every=1, num_batches=1, batch_size=3, pad_id=0,
                              device=torch.device("cpu"), autocast_factory=_null, max_grad_norm=1.0, seed=0)
    monkeypatch.setattr(tracker, "_probe_batches", lambda: (_toy_batches(), _toy_batches()))
    assert tracker.probe(model, optimizer, 0.0) is None
    tracker.end_epoch()
    block = tracker.result()
    assert block["matrix"] is None and block["marginal"] is None and block["skipped_zero_lr"] == 1


def test_affinity_stage_plans_one_tracked_all_task_run(tiny_data_dir, tmp_path, capsys):
    from transfer import affinity
    from transfer.scheduling.plan import expand_specs

    profile = load_profile("test")
    runs = expand_specs(TASKS, ("all", "affinity"), (1,), profile=profile, model="m", domain="biomedical",
                        affinity_every=7, affinity_batches=2, affinity_epochs=1)
    (_, plain), (stage, tracked) = runs
    assert tracked.affinity_epochs == 1 and tracked.last_epoch == 1
    assert stage == "affinity" and tracked.tasks == plain.tasks and tracked.stage == "mtl"
    assert (tracked.affinity_every, tracked.affinity_batches, plain.affinity_every) == (7, 2, 0)
    assert tracked.run_id != plain.run_id
    code = affinity.main(["--domain", "biomedical", "--data-dir", str(tiny_data_dir), "--profile", "test",
                          "--results", str(tmp_path / "store"), "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "affinity" in out and "1 runs" in out
    assert not (tmp_path / "store").exists()


def test_gradient_cosines_tensor_by_tensor_equal_those_of_the_flattened_gradients():
    from transfer.training.lookahead import _cosines

    gen = torch.Generator().manual_seed(0)
    shapes = {"a": (3, 4), "b": (5,), "c": (2, 2)}
    grads = [{k: torch.randn(s, generator=gen) for k, s in shapes.items()} for _ in range(3)]
    del grads[2]["b"]  # a weight the third source's loss does not reach: a zero gradient there
    flat = [torch.cat([(g[k] if k in g else torch.zeros(s)).reshape(-1) for k, s in shapes.items()]) for g in grads]
    expected = np.array([[float(torch.nn.functional.cosine_similarity(x, y, dim=0)) for y in flat] for x in flat])
    assert np.allclose(_cosines(grads), expected, atol=1e-6)
