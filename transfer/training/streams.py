"""Random streams per task: common random numbers for single-task and multi-task runs.

A transfer delta compares task t trained alone with t trained beside a partner s, run by run with the same seed.
For that difference to measure the partner and not the dice, every random draw that belongs to t (its head
initialisation, its training subsample, its batch order and length grouping, its dropout masks) comes from a
generator derived from (seed, t's name) only. So t draws the same random numbers in its single run and in every
multi-task run with the same seed; only the interleaving of the tasks' batches in the pooled order is drawn from
(seed, task set), and it changes with the partner.

Streams are keyed by a SHA-256 of the task name (Python's ``hash`` is salted per process) and by a purpose
number, through NumPy's ``SeedSequence``, so streams of different tasks and purposes are independent.

Dropout: the lean forward's CPU masks come from a per-task :class:`~transfer.training.masks.MaskSource`
behind :class:`MaskRouter`; every other dropout (the Hugging Face forward, and any dropout on CUDA) draws from
torch's global generators, whose state is swapped per task by :meth:`TaskStreams.activate` before each batch.

``random_streams = "shared"`` in a profile keeps the earlier scheme (one generator for all tasks, a fixed seed-0
training subsample), which stored runs were computed with and which measures what common random numbers buy.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from transfer.training.masks import MaskSource

# One number per kind of draw, so the streams of one task are independent of each other.
_PURPOSES = {"head": 1, "sample": 2, "batches": 3, "masks": 4, "torch": 5, "interleave": 6}
_SHARED_MASK_OFFSET = 7919  # the shared scheme's dropout stream: seed + 7919, as stored runs drew it
FIXED_SAMPLE_SEED = 0  # dev and test samples (and the shared scheme's training sample) are the same for every seed


def _name_words(name: str) -> list[int]:
    """Four 32-bit words of the name's SHA-256: stable across processes and machines."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def seed_sequence(seed: int, name: str, purpose: str) -> np.random.SeedSequence:
    """The seed sequence of one (seed, name, purpose); a negative seed is taken modulo 2**64."""
    return np.random.SeedSequence([seed % 2**64, *_name_words(name), _PURPOSES[purpose]])


def task_set_name(tasks) -> str:
    """The key of a task set: order-free, so the same tasks listed differently interleave the same way."""
    return "\x1f".join(sorted(tasks))


def _torch_seed(sequence: np.random.SeedSequence) -> int:
    return int(sequence.generate_state(1, np.uint64)[0])


class MaskRouter:
    """A mask source that hands each request to the active task's own :class:`MaskSource`."""

    def __init__(self, sources: dict[str, MaskSource]):
        self.sources = sources
        self.name = next(iter(sources))
        self.current = sources[self.name]

    def use(self, name: str) -> None:
        self.name, self.current = name, self.sources[name]

    def keep_mask(self, shape: torch.Size, p: float) -> torch.Tensor:
        return self.current.keep_mask(shape, p)

    def scaled_mask(self, shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
        return self.current.scaled_mask(shape, p, dtype)


class TaskStreams:
    """Every random generator of one run, by task (``shared=True``: one generator for all, the earlier scheme)."""

    def __init__(self, seed: int, tasks, device: torch.device | str = "cpu", shared: bool = False):
        self.seed, self.tasks, self.shared = seed, tuple(tasks), shared
        self.device = torch.device(device)
        if shared:
            one = np.random.default_rng(seed)
            self._batches = {name: one for name in self.tasks}
            self._interleave = one
            self._masks = MaskSource(seed + _SHARED_MASK_OFFSET)
        else:
            self._batches = {name: np.random.default_rng(seed_sequence(seed, name, "batches")) for name in self.tasks}
            self._interleave = np.random.default_rng(seed_sequence(seed, task_set_name(self.tasks), "interleave"))
            self._masks = MaskRouter({name: MaskSource(seed_sequence(seed, name, "masks")) for name in self.tasks})
        self._torch_states: dict[str | None, tuple] = {}
        self._active: str | None = None

    # -- draws made once, before training

    def sample_generator(self, name: str) -> np.random.Generator:
        """Where the training subsample of a capped profile is drawn from."""
        if self.shared:
            return np.random.default_rng(FIXED_SAMPLE_SEED)
        return np.random.default_rng(seed_sequence(self.seed, name, "sample"))

    def head_generator(self, name: str) -> torch.Generator | None:
        """A CPU generator for the task's head initialisation (None: torch's global one, the shared scheme)."""
        if self.shared:
            return None
        return torch.Generator().manual_seed(_torch_seed(seed_sequence(self.seed, name, "head")))

    # -- draws made while training

    def batch_generator(self, name: str) -> np.random.Generator:
        """Where the task's batch order and length grouping are drawn from, epoch after epoch."""
        return self._batches[name]

    def mask_source(self):
        """The CPU dropout mask source of the lean forward (a router over per-task sources)."""
        return self._masks

    def interleave(self, sizes: list[int]) -> list[tuple[int, int]]:
        """The pooled batch order: (task index, that task's batch index) for every batch of the epoch.

        Per-task streams draw only which task comes next, so each task keeps its own batch sequence; the shared
        scheme permutes the concatenated pool (the paper's Algorithm 1 as first implemented).
        """
        if self.shared:
            pool = [(k, i) for k, size in enumerate(sizes) for i in range(size)]
            return [pool[j] for j in self._interleave.permutation(len(pool))]
        ranked = sorted(range(len(sizes)), key=lambda k: self.tasks[k])  # order-free, like the stream's key
        labels = self._interleave.permutation(np.repeat(np.array(ranked, dtype=np.int64), [sizes[k] for k in ranked]))
        taken = [0] * len(sizes)
        order = []
        for k in labels.tolist():
            order.append((k, taken[k]))
            taken[k] += 1
        return order

    def activate(self, name: str) -> None:
        """Make ``name``'s streams the ones the next forward pass draws dropout from."""
        if self.shared or name == self._active:
            return
        self._torch_states[self._active] = self._get_torch_state()
        if name not in self._torch_states:
            self._torch_states[name] = self._initial_torch_state(name)
        self._set_torch_state(self._torch_states[name])
        self._masks.use(name)
        self._active = name

    def deactivate(self) -> None:
        """Give torch's global generators back the state they had outside any task (before evaluation)."""
        if self.shared or self._active is None:
            return
        self._torch_states[self._active] = self._get_torch_state()
        self._set_torch_state(self._torch_states.pop(None))
        self._active = None

    def _initial_torch_state(self, name: str) -> tuple:
        seed = _torch_seed(seed_sequence(self.seed, name, "torch"))
        cpu = torch.Generator().manual_seed(seed).get_state()
        if self.device.type != "cuda":
            return (cpu, None)
        saved = torch.cuda.get_rng_state(self.device)
        torch.cuda.manual_seed(seed)  # the current device's generator: the one this run trains on
        cuda = torch.cuda.get_rng_state(self.device)
        torch.cuda.set_rng_state(saved, self.device)
        return (cpu, cuda)

    def _get_torch_state(self) -> tuple:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return (torch.get_rng_state(), cuda)

    def _set_torch_state(self, state: tuple) -> None:
        cpu, cuda = state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
