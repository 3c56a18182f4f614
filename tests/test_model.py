"""MultiTaskModel: one head per task, output shape by kind, loss by kind."""

import pytest
import torch

from transfer.training.model import MultiTaskModel
from transfer.data.tasks import load_task_table


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    table = load_task_table()
    tasks = [table.task(n) for n in ("bc5cdr-chemical", "chemprot", "biosses", "hoc")]
    return MultiTaskModel.from_pretrained(str(tiny_model_dir), tasks, dropout=0.1)


@pytest.mark.parametrize("task_name, shape", [
    ("bc5cdr-chemical", (3, 7, 3)),  # tagging: every token, B/I/O
    ("chemprot", (3, 6)),            # classification: [CLS], 6 labels
    ("biosses", (3, 1)),             # regression: one value
    ("hoc", (3, 10)),                # multilabel: one logit per hallmark
])
def test_head_output_shapes(model, task_name, shape):
    ids = torch.randint(1000, 2000, (3, 7))
    logits = model(task_name, ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert tuple(logits.shape) == shape


def test_losses_by_kind_are_finite_and_backpropagate(model):
    ids = torch.randint(1000, 2000, (2, 5))
    base = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    targets = {
        "bc5cdr-chemical": torch.tensor([[-100, 0, 1, 2, -100], [-100, 2, 2, -100, -100]]),
        "chemprot": torch.tensor([0, 5]),
        "biosses": torch.tensor([1.5, 3.0]),
        "hoc": torch.zeros(2, 10),
    }
    for name, target in targets.items():
        model.zero_grad()
        loss = model.loss(name, {**base, "targets": target})
        assert torch.isfinite(loss)
        loss.backward()
        assert model.heads[name].linear.weight.grad is not None
        others = [n for n in targets if n != name]
        assert all(model.heads[o].linear.weight.grad is None or not model.heads[o].linear.weight.grad.any() for o in others)


def test_heads_share_one_encoder(model):
    assert set(model.heads) == {"bc5cdr-chemical", "chemprot", "biosses", "hoc"}
    assert sum(1 for _ in model.encoder.modules()) > 0
    assert all(head.dropout.p == 0.1 for head in model.heads.values())
