"""What each task *kind* means for the model: head placement, loss, and how outputs become predictions.

This is the one lookup (``KIND_OPS[task.kind]``) through which the model, trainer and evaluator branch
on a task; nothing branches on a task's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from transfer.data.examples import Label
from transfer.data.tasks import TaskSpec

IGNORE_INDEX = -100


@dataclass(frozen=True)
class KindOps:
    """Behaviour of one task kind.

    * ``token_level``: the head reads every token (tagging) rather than the [CLS] vector.
    * ``encode``: example label -> training target (tagging: one tag id per word).
    * ``loss``: (logits, targets) -> scalar loss.
    * ``predict``: logits -> compact predictions, still on the device.
    * ``to_label``: one prediction row (numpy) -> a label in ``Example.label`` form.
    """

    token_level: bool
    encode: Callable[[Label, TaskSpec], object]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    predict: Callable[[torch.Tensor], torch.Tensor]
    to_label: Callable[[np.ndarray, TaskSpec], Label]
    target_dtype: np.dtype


def _encode_class(label: Label, task: TaskSpec) -> int:
    return task.labels.index(label)


def _encode_tags(label: Label, task: TaskSpec) -> list[int]:
    return [task.labels.index(tag) for tag in label]


def _encode_float(label: Label, task: TaskSpec) -> float:
    return float(label)


def _encode_multi_hot(label: Label, task: TaskSpec) -> list[float]:
    on = set(label)
    return [1.0 if name in on else 0.0 for name in task.labels]


def _classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


def _tagging_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def _regression_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(logits.float().squeeze(-1), targets)


def _multilabel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


KIND_OPS: dict[str, KindOps] = {
    "classification": KindOps(
        token_level=False,
        encode=_encode_class,
        loss=_classification_loss,
        predict=lambda logits: logits.argmax(-1),
        to_label=lambda row, task: task.labels[int(row)],
        target_dtype=np.dtype(np.int64),
    ),
    "tagging": KindOps(
        token_level=True,
        encode=_encode_tags,
        loss=_tagging_loss,
        predict=lambda logits: logits.argmax(-1),
        to_label=lambda row, task: tuple(task.labels[int(i)] for i in row),
        target_dtype=np.dtype(np.int64),
    ),
    "regression": KindOps(
        token_level=False,
        encode=_encode_float,
        loss=_regression_loss,
        predict=lambda logits: logits.float().squeeze(-1),
        to_label=lambda row, task: float(row),
        target_dtype=np.dtype(np.float32),
    ),
    "multilabel": KindOps(
        token_level=False,
        encode=_encode_multi_hot,
        loss=_multilabel_loss,
        predict=lambda logits: logits > 0,  # sigmoid(x) > 0.5
        to_label=lambda row, task: tuple(name for name, on in zip(task.labels, row) if on),
        target_dtype=np.dtype(np.float32),
    ),
}


def kind_ops(task: TaskSpec) -> KindOps:
    return KIND_OPS[task.kind]
