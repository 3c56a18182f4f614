"""One-task batches: the training subsample, shuffled (optionally length-grouped) batches, dynamic padding."""

from __future__ import annotations

import numpy as np
import torch

from transfer.training.features import TaskFeatures
from transfer.training.kinds import IGNORE_INDEX


def sample_examples(n: int, cap: int | None, rng: np.random.Generator | None = None) -> np.ndarray:
    """A sample of ``cap`` example ids in file order, drawn from ``rng`` (default: a fixed seed-0 generator).

    Training subsamples come from the task's own stream (``transfer.training.streams``); dev and test samples use
    the fixed default, so every run and seed scores the same examples and paired comparisons stay paired.
    """
    if cap is None or cap >= n:
        return np.arange(n)
    rng = np.random.default_rng(0) if rng is None else rng
    return np.sort(rng.choice(n, size=cap, replace=False))


def make_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group_by_length: bool,
                 rows: np.ndarray | None = None, group_window: int = 50) -> list[np.ndarray]:
    """Shuffled batches of row numbers; with grouping, rows of similar length share a batch.

    Grouping sorts by length within windows of ``group_window`` batches of a random permutation, then shuffles
    the batches, so padding shrinks while batch order stays random. The wider the window, the less padding and
    the less random each batch's make-up: at 50 batches a 2,000-example task is sorted almost whole, so its
    batches sort examples by length, and where length goes with the label, by label too.
    """
    rows = np.arange(len(lengths)) if rows is None else rows
    order = rng.permutation(rows)
    if group_by_length:
        window = batch_size * group_window
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in np.array_split(order, max(1, -(-len(order) // window)))
        ])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(features: TaskFeatures, rows: np.ndarray, pad_id: int, with_targets: bool = True) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest row (dynamic padding)."""
    width = max(len(features.input_ids[r]) for r in rows)
    n = len(rows)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((n, width), dtype=np.int64)
    attention_mask = np.zeros((n, width), dtype=np.int64)
    for j, r in enumerate(rows):
        length = len(features.input_ids[r])
        input_ids[j, :length] = features.input_ids[r]
        token_type_ids[j, :length] = features.token_type_ids[r]
        attention_mask[j, :length] = 1
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "attention_mask": torch.from_numpy(attention_mask),
    }
    if with_targets:
        batch["targets"] = _collate_targets(features, rows, width)
    return batch


def _collate_targets(features: TaskFeatures, rows: np.ndarray, width: int) -> torch.Tensor:
    first = features.targets[rows[0]]
    if isinstance(first, np.ndarray):  # per-token tag ids
        out = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for j, r in enumerate(rows):
            out[j, :len(features.targets[r])] = features.targets[r]
        return torch.from_numpy(out)
    if isinstance(first, int):
        return torch.tensor([features.targets[r] for r in rows], dtype=torch.long)
    return torch.tensor([features.targets[r] for r in rows], dtype=torch.float32)
