"""Model FLOPs of a BERT encoder: the non-embedding parameter count ``N`` and the training and forward FLOPs of
sequences of given real lengths (the formula in ``bench_train``'s docstring), ``Arch``, the encoder shape they
need, and ``BatchRecord``, one batch as the FLOP count sees it (rows, real tokens, padded width, FLOPs)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def layer_params(hidden: int, intermediate: int) -> int:
    """Parameters of one BERT layer: attention projections, feed-forward and two LayerNorms (with biases)."""
    return 4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden + intermediate


def nonembedding_params(layers: int, hidden: int, intermediate: int) -> int:
    """``N`` of the FLOP formula: parameters of the transformer layers (see ``bench_train``'s docstring)."""
    return layers * layer_params(hidden, intermediate)


def train_flops(lengths, n_params: int, layers: int, hidden: int) -> float:
    """Model FLOPs of one training pass (forward + backward) over sequences of the given real lengths."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(np.sum(6.0 * n_params * lengths + 12.0 * layers * hidden * lengths ** 2))


def forward_flops(lengths, n_params: int, layers: int, hidden: int) -> float:
    """Model FLOPs of one forward pass over sequences of the given real lengths."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(np.sum(2.0 * n_params * lengths + 4.0 * layers * hidden * lengths ** 2))


@dataclass(frozen=True)
class Arch:
    """The encoder's shape, as the FLOP formula needs it."""

    layers: int
    hidden: int
    intermediate: int

    @property
    def n_params(self) -> int:
        return nonembedding_params(self.layers, self.hidden, self.intermediate)

    def train_flops(self, lengths) -> float:
        return train_flops(lengths, self.n_params, self.layers, self.hidden)

    def forward_flops(self, lengths) -> float:
        return forward_flops(lengths, self.n_params, self.layers, self.hidden)

    def padded_train_flops(self, batches: list["BatchRecord"]) -> float:
        """FLOPs as executed: every row of a batch at the batch's padded width."""
        return sum(self.train_flops(np.full(b.rows, b.width)) for b in batches)

    def padded_forward_flops(self, batches: list["BatchRecord"]) -> float:
        return sum(self.forward_flops(np.full(b.rows, b.width)) for b in batches)


@dataclass
class BatchRecord:
    """One batch actually used: its rows, real (non-pad) tokens, padded width and the model FLOPs of its rows
    at their real lengths (training FLOPs for a training batch, forward FLOPs for an inference batch)."""

    rows: int
    real_tokens: int
    width: int
    flops: float

    @property
    def padded_tokens(self) -> int:
        return self.rows * self.width
