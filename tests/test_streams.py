"""Common random numbers: a task's own draws are bit for bit the same in its single run and in a pair run."""

import numpy as np
import pytest
import torch

from transfer.data.tasks import load_task_table
from transfer.experiment.config import RunSpec, load_profile
from transfer.training import loop
from transfer.training.streams import MaskRouter, TaskStreams, seed_sequence

T, PARTNER, OTHER = "chemprot", "bc5cdr-chemical", "ddi2013-type"


def _spec(model_dir, tasks, seed=3, **changes):
    profile = load_profile("test").replace(**{"epochs": 2, "max_train_examples": 12, **changes})
    return RunSpec(tasks=tasks, stage="single" if len(tasks) == 1 else "mtl", profile=profile, seed=seed,
                   model=str(model_dir))


def _record(monkeypatch, spec, data_dir, hf_dropout=False):
    """Train ``spec``; return the batches (task, rows) in run order and each task's dropout masks in draw order."""
    batches, masks = [], {}
    collate = loop.collate

    def recording_collate(features, rows, pad_id, with_targets=True):
        if with_targets:  # training batches only (evaluation collates without targets)
            batches.append((features.task_name, rows.tolist()))
        return collate(features, rows, pad_id, with_targets)

    scaled_mask = MaskRouter.scaled_mask

    def recording_scaled_mask(self, shape, p, dtype):
        mask = scaled_mask(self, shape, p, dtype)
        masks.setdefault(self.name, []).append(mask != 0)
        return mask

    monkeypatch.setattr(loop, "collate", recording_collate)
    monkeypatch.setattr(MaskRouter, "scaled_mask", recording_scaled_mask)
    if hf_dropout:  # the Hugging Face forward draws from torch's global generator, swapped per task
        dropout = torch.nn.functional.dropout

        def recording_dropout(x, p=0.5, training=True, inplace=False):
            out = dropout(x, p, training, inplace)
            if training and p > 0:
                masks.setdefault(batches[-1][0], []).append(out != 0)
            return out

        monkeypatch.setattr(torch.nn.functional, "dropout", recording_dropout)
    result = loop.train(spec, data_dir=data_dir)
    monkeypatch.undo()
    return result, batches, masks


def _own(batches, name):
    return [rows for task, rows in batches if task == name]


@pytest.mark.parametrize("impl", ["transfer", "hf"])
def test_a_tasks_batches_and_dropout_masks_are_the_same_alone_and_with_a_partner(
        tiny_model_dir, tiny_data_dir, monkeypatch, impl):
    _, alone, alone_masks = _record(monkeypatch, _spec(tiny_model_dir, (T,), encoder_impl=impl), tiny_data_dir,
                                    hf_dropout=impl == "hf")
    _, paired, paired_masks = _record(monkeypatch, _spec(tiny_model_dir, (PARTNER, T), encoder_impl=impl),
                                      tiny_data_dir, hf_dropout=impl == "hf")
    assert len(_own(alone, T)) == 6 and _own(alone, T) == _own(paired, T)  # 3 batches x 2 epochs, same rows, same order
    assert len(alone_masks[T]) == len(paired_masks[T]) > 0
    assert all(torch.equal(a, b) for a, b in zip(alone_masks[T], paired_masks[T]))
    assert {task for task, _ in paired} == {T, PARTNER}


def test_the_shared_scheme_gives_a_task_other_draws_beside_a_partner(tiny_model_dir, tiny_data_dir, monkeypatch):
    """The confound the per-task streams remove: with one generator, the partner shifts t's batch order."""
    changes = {"random_streams": "shared", "head_init": "torch"}
    _, alone, _ = _record(monkeypatch, _spec(tiny_model_dir, (T,), **changes), tiny_data_dir)
    _, paired, _ = _record(monkeypatch, _spec(tiny_model_dir, (PARTNER, T), **changes), tiny_data_dir)
    assert _own(alone, T) != _own(paired, T)


def test_a_tasks_head_starts_from_the_same_weights_alone_and_with_a_partner(tiny_model_dir):
    table = load_task_table()

    def head(tasks, seed=3):
        spec = _spec(tiny_model_dir, tasks, seed)
        model = loop.build_model(spec, table, TaskStreams(seed, tasks))
        return {k: v.clone() for k, v in model.heads[T].state_dict().items()}

    alone, paired, other_partner = head((T,)), head((PARTNER, T)), head((T, OTHER, PARTNER))
    for key in alone:
        assert torch.equal(alone[key], paired[key]) and torch.equal(alone[key], other_partner[key])
    assert not torch.equal(head((T,), seed=4)["linear.weight"], alone["linear.weight"])
    assert float(alone["linear.weight"].std()) == pytest.approx(0.02, rel=0.15) and not alone["linear.bias"].any()


def test_training_subsample_follows_seed_and_task_while_dev_and_test_stay_fixed(tiny_model_dir, tiny_data_dir,
                                                                                 monkeypatch):
    runs = {}
    for key, tasks, seed in (("alone", (T,), 3), ("paired", (PARTNER, T), 3), ("seed4", (T,), 4)):
        result, batches, _ = _record(monkeypatch, _spec(tiny_model_dir, tasks, seed, epochs=1, max_train_examples=8),
                                     tiny_data_dir)
        runs[key] = (sorted(r for rows in _own(batches, T) for r in rows), result)
    assert runs["alone"][0] == runs["paired"][0] and len(runs["alone"][0]) == 8
    assert runs["alone"][0] != runs["seed4"][0]  # 8 of 24 rows: another seed, another sample
    uids = {key: [r["uid"] for r in result["predictions"][T]] for key, (_, result) in runs.items()}
    assert uids["alone"] == uids["seed4"] == uids["paired"]  # the same test units for every seed and run


def test_pooled_order_changes_with_the_partner_but_not_with_the_listing_order():
    def labels(tasks, sizes, seed=3):
        streams = TaskStreams(seed, tasks)
        return [tasks[k] for k, _ in streams.interleave(sizes)]

    first = labels((T, PARTNER), [20, 20])
    assert labels((PARTNER, T), [20, 20]) == first  # the same task set interleaves the same way
    assert labels((T, OTHER), [20, 20]) != [name.replace(PARTNER, OTHER) for name in first]
    assert labels((T, PARTNER), [20, 20], seed=4) != first
    order = TaskStreams(3, (T, PARTNER)).interleave([3, 5])
    assert [i for k, i in order if k == 0] == [0, 1, 2] and [i for k, i in order if k == 1] == list(range(5))


def test_streams_are_keyed_by_a_stable_hash_of_the_name():
    # SHA-256 of the name, not Python's per-process salted hash(): these are fixed numbers
    words = seed_sequence(13, "chemprot", "batches").generate_state(2)
    assert words.tolist() == seed_sequence(13, "chemprot", "batches").generate_state(2).tolist()
    assert words.tolist() != seed_sequence(13, "chemprot", "masks").generate_state(2).tolist()
    assert words.tolist() != seed_sequence(13, "ddi2013-type", "batches").generate_state(2).tolist()
    a = np.random.default_rng(seed_sequence(13, "chemprot", "sample")).integers(0, 2**31, 3)
    assert a.tolist() == np.random.default_rng(seed_sequence(13, "chemprot", "sample")).integers(0, 2**31, 3).tolist()


def test_activate_keeps_each_tasks_torch_generator_apart():
    streams = TaskStreams(3, (T, PARTNER))
    outside = torch.get_rng_state()
    streams.activate(T)
    first_t = torch.rand(4)
    streams.activate(PARTNER)
    torch.rand(100)  # the partner's draws do not move t's stream
    streams.activate(T)
    second_t = torch.rand(4)
    streams.deactivate()
    assert torch.equal(torch.get_rng_state(), outside)
    alone = TaskStreams(3, (T,))
    alone.activate(T)
    assert torch.equal(torch.rand(4), first_t) and torch.equal(torch.rand(4), second_t)
    alone.deactivate()
