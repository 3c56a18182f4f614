"""Records of the steps a benchmark timed: ``record_from_mask`` (the ``BatchRecord`` of an attention mask),
``BatchRecorder`` (a counting stand-in for transfer's collate), ``StepClock`` (end-of-step timestamps) and
``timed_summary``, the steady-state throughput and utilisation of a run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from benchlib.flops import Arch, BatchRecord
from benchlib.machine import sync, utilisation


def record_from_mask(mask, arch: Arch, training: bool = True) -> BatchRecord:
    """Batch record of an attention mask (rows x width, 1 on real tokens; a tensor or an array)."""
    lengths = mask.sum(dim=1).cpu().numpy() if hasattr(mask, "cpu") else np.sum(mask, axis=1)
    flops = arch.train_flops(lengths) if training else arch.forward_flops(lengths)
    return BatchRecord(int(mask.shape[0]), int(lengths.sum()), int(mask.shape[1]), flops)


class BatchRecorder:
    """Stands in for ``transfer.training.batches.collate``: calls it and keeps a ``BatchRecord`` of every batch."""

    def __init__(self, collate_fn, arch: Arch):
        self.collate_fn, self.arch = collate_fn, arch
        self.train: list[BatchRecord] = []  # training batches (with targets)
        self.eval: list[BatchRecord] = []  # inference batches (predict_split)

    def __call__(self, features, rows, pad_id, with_targets: bool = True):
        batch = self.collate_fn(features, rows, pad_id, with_targets=with_targets)
        (self.train if with_targets else self.eval).append(record_from_mask(batch["attention_mask"], self.arch, with_targets))
        return batch


@dataclass
class StepClock:
    """End-of-step timestamps of one training run, fed by a Trainer callback or a transfer Reporter.

    ``begin`` is the start of step 1 where known. On CUDA the device is synchronised at the end of step
    ``skip`` and of the last step (``total``), the two ends of the timed interval.
    """

    device: object
    skip: int
    total: int
    now: object = time.perf_counter
    begin: float | None = None
    ends: list[float] = field(default_factory=list)

    def start(self) -> None:
        if self.begin is None:
            self.begin = self.now()

    def step_end(self) -> None:
        if len(self.ends) + 1 in (self.skip, self.total):
            sync(self.device)
        self.ends.append(self.now())


def timed_summary(clock: StepClock, batches: list[BatchRecord], arch: Arch, peak_gflops: float | None) -> dict:
    """Steady-state throughput: steps ``skip+1 .. last``, from the end of step ``skip`` to the end of the last."""
    steps = len(clock.ends)
    if steps < 2 or len(batches) < steps:
        raise RuntimeError(f"need at least 2 recorded steps with their batches, got {steps} steps / {len(batches)} batches")
    skip = min(max(clock.skip, 1), steps - 1)
    seconds = clock.ends[-1] - clock.ends[skip - 1]
    timed = batches[skip:steps]
    examples = sum(b.rows for b in timed)
    real = sum(b.real_tokens for b in timed)
    padded = sum(b.padded_tokens for b in timed)
    model_gflops = sum(b.flops for b in timed) / seconds / 1e9
    executed_gflops = arch.padded_train_flops(timed) / seconds / 1e9
    return {
        "steps_run": steps, "skipped_steps": skip, "timed_steps": steps - skip, "timed_seconds": round(seconds, 4),
        "seconds_per_step": round(seconds / (steps - skip), 4),
        "examples": examples, "real_tokens": real, "padded_tokens": padded,
        "pad_fraction": round(1 - real / padded, 4) if padded else 0.0,
        "examples_per_s": round(examples / seconds, 3), "real_tokens_per_s": round(real / seconds, 1),
        "padded_tokens_per_s": round(padded / seconds, 1),
        "model_gflops_per_s": round(model_gflops, 3), "executed_gflops_per_s": round(executed_gflops, 3),
        "peak_gflops": peak_gflops, **utilisation(model_gflops, executed_gflops, peak_gflops),
    }
