"""MultiTaskModel: one shared BERT-family encoder and one small head per task.

Heads follow the paper: dropout 0.1 then a linear layer, on the [CLS] vector (classification, regression,
multilabel) or on every token (tagging). Which one is decided by the task's kind (``transfer.training.kinds``).
A head's weights start as BERT's and MT-DNN's do, N(0, 0.02) with zero bias (``head_init = "normal"``), or as
torch's ``nn.Linear`` default (``"torch"``, the scheme of runs stored before the option existed), drawn from the
task's own generator (``transfer.training.streams``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from transfer.experiment.encoders import load_encoder
from transfer.training.fast_bert import FastBertEncoder, FastDropout
from transfer.training.masks import MaskSource
from transfer.training.kinds import kind_ops
from transfer.data.tasks import TaskSpec

logger = logging.getLogger(__name__)


class TaskHead(nn.Module):
    """Dropout, then a linear layer to the task's outputs."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, token_level: bool):
        super().__init__()
        self.token_level = token_level
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, num_labels)

    @torch.no_grad()
    def initialise(self, scheme: str, generator: torch.Generator | None = None) -> None:
        """Redraw the linear layer's weights: ``normal`` N(0, 0.02) and zero bias, or ``torch`` (nn.Linear's rule)."""
        weight, bias = self.linear.weight, self.linear.bias
        if scheme == "normal":
            weight.normal_(0.0, 0.02, generator=generator)
            bias.zero_()
        elif scheme == "torch":
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(weight.shape[1])
            bias.uniform_(-bound, bound, generator=generator)
        else:
            raise ValueError(f"unknown head initialisation {scheme!r}; use 'normal' or 'torch'")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        features = hidden if self.token_level else hidden[:, 0]
        return self.linear(self.dropout(features))


class MultiTaskModel(nn.Module):
    """Shared encoder + ``heads[task_name]``; ``forward`` runs one task's batch."""

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.tasks = {task.name: task for task in tasks}
        self.heads = nn.ModuleDict({
            task.name: TaskHead(hidden, task.num_labels, dropout, kind_ops(task).token_level) for task in tasks
        })
        self.fast: FastBertEncoder | None = None

    def use_fast_encoder(self, source: MaskSource | None, compute_dtype: torch.dtype | None = None) -> None:
        """Run the encoder through ``transfer.training.fast_bert`` (raises if the architecture is not supported).

        ``source``: where CPU dropout masks come from (the heads' dropout too); None keeps torch's dropout.
        ``compute_dtype``: bf16 to compute the layers in bf16 end to end (no autocast around them).
        """
        self.fast = FastBertEncoder(self.encoder, source, compute_dtype)
        if source is not None:
            for head in self.heads.values():
                head.dropout = FastDropout(head.dropout.p, source).train(head.dropout.training)

    def initialise_heads(self, scheme: str, generators: dict[str, torch.Generator | None]) -> None:
        """Redraw every head from its task's generator (None: torch's global generator, in task order)."""
        for name, head in self.heads.items():
            head.initialise(scheme, generators.get(name))

    @property
    def encoder_impl(self) -> str:
        return "transfer" if self.fast is not None else "hf"

    @property
    def native_compute(self) -> bool:
        """True when the encoder casts its own weights to bf16, so no autocast may wrap its forward."""
        return self.fast is not None and self.fast.compute_dtype is not None

    @classmethod
    def from_pretrained(cls, model: str, tasks: list[TaskSpec], dropout: float = 0.1) -> "MultiTaskModel":
        return cls(load_encoder(model), tasks, dropout)

    def forward(self, task_name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None,
                encoder_params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of one task's batch; ``encoder_params`` runs the encoder with other weights (look-ahead)."""
        if self.fast is not None:
            # a sentence-level head reads [CLS] only, so the last layer computes nothing else
            cls_only = not self.heads[task_name].token_level
            hidden = self.fast(input_ids, attention_mask, token_type_ids, encoder_params, cls_only=cls_only)
            return self.heads[task_name](hidden)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if encoder_params is None:
            hidden = self.encoder(**inputs).last_hidden_state
        else:
            hidden = torch.func.functional_call(self.encoder, encoder_params, args=(), kwargs=inputs).last_hidden_state
        return self.heads[task_name](hidden)

    def loss(self, task_name: str, batch: dict[str, torch.Tensor],
             encoder_params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        logits = self(task_name, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], encoder_params)
        return kind_ops(self.tasks[task_name]).loss(logits, batch["targets"])

    def save_encoder(self, folder: Path) -> None:
        """Save the shared encoder (weights + config) for a later fine-tune stage."""
        self.encoder.save_pretrained(folder)

    def load_encoder_state(self, folder: Path) -> None:
        """Replace the encoder weights with a saved refinement encoder (heads stay fresh)."""
        from transformers import AutoModel

        saved = AutoModel.from_pretrained(folder)
        missing, unexpected = self.encoder.load_state_dict(saved.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"encoder in {folder} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
