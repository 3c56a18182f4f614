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
    """A step on one task's loss moves the shared encoder (so every task's output) and no other task's head."""
    import copy

    twin = copy.deepcopy(model).eval()
    ids = torch.randint(1000, 2000, (2, 5))
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    before = twin("bc5cdr-chemical", ids, mask, types).detach()
    other_head = {k: v.clone() for k, v in twin.heads["bc5cdr-chemical"].state_dict().items()}
    twin.zero_grad()
    twin.loss("chemprot", {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                           "targets": torch.tensor([0, 5])}).backward()
    with torch.no_grad():
        for param in twin.parameters():
            if param.grad is not None:
                param -= 0.5 * param.grad
    assert not torch.allclose(twin("bc5cdr-chemical", ids, mask, types), before)
    assert all(torch.equal(v, other_head[k]) for k, v in twin.heads["bc5cdr-chemical"].state_dict().items())
    assert all(head.dropout.p == 0.1 for head in model.heads.values())


def test_head_initialisation_schemes():
    from torch import nn

    from transfer.training.model import TaskHead

    head = TaskHead(64, 5, 0.1, token_level=False)
    head.initialise("normal", torch.Generator().manual_seed(1))
    assert abs(float(head.linear.weight.detach().std()) - 0.02) < 0.004 and not head.linear.bias.any()
    torch.manual_seed(7)
    reference = nn.Linear(64, 5)  # torch's own rule, from the global generator
    torch.manual_seed(7)
    head.initialise("torch")
    assert torch.equal(head.linear.weight, reference.weight) and torch.equal(head.linear.bias, reference.bias)
    with pytest.raises(ValueError, match="unknown head initialisation"):
        head.initialise("xavier")
