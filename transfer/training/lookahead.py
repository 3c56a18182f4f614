"""Look-ahead task affinity (Fifty et al. 2021, "Efficiently Identifying Task Groupings for Multi-Task
Learning"), adapted to tasks that each have their own dataset.

Every ``every`` training steps the tracker draws, for each task, *gradient* probe batches and disjoint *evaluation*
probe batches of its training data. For each source task i it takes one look-ahead optimiser step on i's loss
(gradient batches), applied to the shared encoder only, on a functional copy of its weights, and for each target
task j it reads j's loss on j's evaluation batches:

* plain affinity ``Z(i->j) = 1 - L_j(after the step on i) / L_j(before)`` (Fifty et al.'s definition);
* marginal affinity ``M(i->j) = (L_j(after a zero-gradient step) - L_j(after the step on i)) / (lr * L_j(before))``.

The look-ahead step of AdamW/Adamax with the live moments is mostly the shared momentum (0.9 m + 0.1 g_i), the same
for every source; the zero-gradient step is that momentum-only part (the optimiser's own update with g = 0: moment
decay, bias correction, weight decay), so subtracting it leaves what source i's own gradient adds. Dividing by the
current learning rate keeps warm-up and decay from reweighting the average over the run; probes at a learning rate
of 0 (the first warm-up step) measure nothing and are skipped. The diagonal Z(i->i) is read on i's evaluation
batches, so it is out of sample like the off-diagonal. Also recorded: the cosine similarity of the source
gradients (the gradient-similarity baseline of TAG), from the gradients the probe computes anyway.

Probes run with dropout off and their own random generator, and never touch the real parameters, gradients or
optimiser state, so the training trajectory is unchanged. ``autocast_factory`` chooses the probes' precision
(the profile's ``affinity_precision``: the training precision by default, fp32 as an option; see
``transfer.experiment.config.Profile``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from transfer.training.features import SplitData
from transfer.training.batches import collate

# metrics.json "affinity" keys with one matrix each (rows: source, columns: target) and what they hold
MATRICES = ("matrix", "marginal", "momentum_only", "grad_cosine")


def lookahead_params(optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter],
                     grads: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
    """Weights after one step of ``optimizer``'s own rule (AdamW or Adamax) with ``grads``, state left as is.

    A weight missing from ``grads`` gets a zero gradient: ``grads = {}`` is the momentum-only step (moment decay,
    bias correction and weight decay of the same update, without a new gradient).
    """
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    eps = group["eps"]
    is_adamw = isinstance(optimizer, torch.optim.AdamW)
    out = {}
    for name, param in named.items():
        grad, weights = grads.get(name), param.detach()
        state = optimizer.state.get(param, {})
        step = float(state.get("step", 0)) + 1
        decay = _weight_decay_of(optimizer, param)
        # Fused forms (lerp, addcmul, addcdiv) of the optimiser's formulas: fewer temporaries of encoder size, so
        # the n + 1 look-ahead steps of a probe cost less; a missing gradient is a zero gradient.
        if is_adamw:  # decoupled weight decay
            if state:
                exp_avg = state["exp_avg"] * beta1 if grad is None else torch.lerp(state["exp_avg"], grad, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"] * beta2
                if grad is not None:
                    exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
            elif grad is None:
                out[name] = weights * (1 - lr * decay)
                continue
            else:
                exp_avg, exp_avg_sq = grad * (1 - beta1), grad * grad * (1 - beta2)
            denom = exp_avg_sq.div_(1 - beta2 ** step).sqrt_().add_(eps)
            out[name] = torch.addcdiv(weights * (1 - lr * decay), exp_avg, denom, value=-lr / (1 - beta1 ** step))
        else:  # Adamax: weight decay added to the gradient, infinity norm of past gradients
            if grad is None:
                grad = torch.zeros_like(weights)
            grad = grad + decay * weights if decay else grad
            exp_avg = torch.lerp(state["exp_avg"], grad, 1 - beta1) if state else (1 - beta1) * grad
            exp_inf = torch.maximum(beta2 * state["exp_inf"], grad.abs() + eps) if state else grad.abs() + eps
            out[name] = torch.addcdiv(weights, exp_avg, exp_inf, value=-lr / (1 - beta1 ** step))
    return out


def _weight_decay_of(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter) -> float:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group["weight_decay"]
    return 0.0


class _Running:
    """Per-epoch means of one matrix, then the mean over epochs."""

    def __init__(self, n: int):
        self.epoch_sum, self.epoch_count = np.zeros((n, n)), 0
        self.per_epoch: list[list[list[float]]] = []
        self.total_sum, self.total_count = np.zeros((n, n)), 0

    def add(self, values: np.ndarray) -> None:
        self.epoch_sum += values
        self.epoch_count += 1

    def end_epoch(self) -> None:
        if self.epoch_count:
            epoch_mean = self.epoch_sum / self.epoch_count
            self.per_epoch.append(_rounded(epoch_mean))
            self.total_sum += epoch_mean
            self.total_count += 1
        self.epoch_sum[:] = 0
        self.epoch_count = 0

    def mean(self) -> list | None:
        return _rounded(self.total_sum / self.total_count) if self.total_count else None


def _rounded(values: np.ndarray) -> list:
    """Eight significant digits: the marginal affinity is per unit learning rate, so it can be far from 1."""
    return [[float(f"{v:.8g}") for v in row] for row in values]


class AffinityTracker:
    """Accumulates the look-ahead affinity matrices over a run (rows: source task, columns: target task)."""

    def __init__(self, train: dict[str, SplitData], every: int, num_batches: int, batch_size: int, pad_id: int,
                 device: torch.device, autocast_factory, max_grad_norm: float, seed: int, precision: str = ""):
        self.train, self.every, self.num_batches = train, every, num_batches
        self.batch_size, self.pad_id, self.device = batch_size, pad_id, device
        self.autocast, self.max_grad_norm, self.precision = autocast_factory, max_grad_norm, precision
        self.tasks = list(train)
        self.rng = np.random.default_rng(seed + 104_729)  # never the training generator
        n = len(self.tasks)
        self.running = {key: _Running(n) for key in MATRICES}
        self.measurements, self.skipped = 0, 0
        self.seconds = 0.0

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def _probe_rows(self, split: SplitData) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Rows of the gradient and of the evaluation batches: disjoint where the split has 2 batches' worth."""
        size = min(self.batch_size, len(split.rows))
        gradient, evaluation = [], []
        for _ in range(self.num_batches):
            drawn = self.rng.choice(split.rows, size=min(2 * size, len(split.rows)), replace=False)
            gradient.append(drawn[:size])
            evaluation.append(drawn[size:] if len(drawn) > size else drawn[len(drawn) // 2:])
        return gradient, evaluation

    def _probe_batches(self) -> tuple[dict, dict]:
        """(gradient batches, evaluation batches) per task."""
        gradient, evaluation = {}, {}
        for name, split in self.train.items():
            grad_rows, eval_rows = self._probe_rows(split)
            gradient[name] = [self._collate(split, rows) for rows in grad_rows]
            evaluation[name] = [self._collate(split, rows) for rows in eval_rows]
        return gradient, evaluation

    def _collate(self, split: SplitData, rows) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in collate(split.features, rows, self.pad_id).items()}

    def _mean_loss(self, model, name, batches, params=None) -> torch.Tensor:
        with self.autocast():
            return torch.stack([model.loss(name, b, params) for b in batches]).mean().float()

    def probe(self, model, optimizer, lr: float) -> np.ndarray | None:
        """One look-ahead measurement at the current weights; returns (and accumulates) the plain Z.

        None (nothing recorded) at a learning rate of 0: a step of size 0 moves nothing.
        """
        if lr <= 0:
            self.skipped += 1
            return None
        start = time.perf_counter()
        was_training = model.training
        model.eval()  # no dropout: deterministic, and the training RNG is not consumed
        gradient_batches, batches = self._probe_batches()
        named = {n: p for n, p in model.encoder.named_parameters() if p.requires_grad}
        n = len(self.tasks)
        with torch.no_grad():
            before = np.array([float(self._mean_loss(model, t, batches[t])) for t in self.tasks])
        after, momentum, source_grads = np.zeros((n, n)), np.zeros((n, n)), []
        resting: dict[frozenset, np.ndarray] = {}  # parameter set -> target losses after its momentum-only step
        for i, source in enumerate(self.tasks):
            loss = self._mean_loss(model, source, gradient_batches[source])
            grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
            # Weights the loss does not reach (e.g. an unused pooler) get no gradient and, as in a real step, stay
            # put; the momentum-only reference moves the same weights, so the two differ only by i's gradient.
            grads = {k: g for k, g in zip(named, grads) if g is not None}
            _clip_(grads, self.max_grad_norm)
            source_grads.append(grads)  # kept for the cosines (no flattened copy of the encoder per source)
            moved = {k: named[k] for k in grads}
            if frozenset(moved) not in resting:
                resting[frozenset(moved)] = self._losses(model, lookahead_params(optimizer, moved, {}, lr), batches)
            momentum[i] = resting[frozenset(moved)]
            after[i] = self._losses(model, lookahead_params(optimizer, moved, grads, lr), batches)
            del moved
        model.train(was_training)
        z = 1.0 - after / before[None, :]
        self.running["matrix"].add(z)
        self.running["marginal"].add((momentum - after) / (lr * before[None, :]))
        self.running["momentum_only"].add(1.0 - momentum / before[None, :])
        self.running["grad_cosine"].add(_cosines(source_grads))
        self.measurements += 1
        self.seconds += time.perf_counter() - start
        return z

    def _losses(self, model, params: dict[str, torch.Tensor], batches: dict) -> np.ndarray:
        """Every target's loss on its evaluation batches at the look-ahead weights ``params``."""
        with torch.no_grad():
            return np.array([float(self._mean_loss(model, t, batches[t], params)) for t in self.tasks])

    def end_epoch(self) -> None:
        for running in self.running.values():
            running.end_epoch()

    def result(self) -> dict:
        """Each matrix averaged per epoch, then over epochs (``per_epoch*``: the epoch means)."""
        plain = self.running["matrix"]
        block = {"tasks": self.tasks, "matrix": plain.mean(), "per_epoch": plain.per_epoch}
        for key in MATRICES[1:]:
            block[key] = self.running[key].mean()
            block[f"{key}_per_epoch"] = self.running[key].per_epoch
        return block | {"every": self.every, "num_batches": self.num_batches, "precision": self.precision,
                        "diagonal": "held-out", "marginal_unit": "per unit learning rate",
                        "measurements": self.measurements, "skipped_zero_lr": self.skipped,
                        "seconds": round(self.seconds, 3)}


def _cosines(grads: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """Cosine similarity of every pair of (clipped) source gradients over the shared weights; 0 where a gradient is
    zero. A weight one source's loss does not reach has a zero gradient there (it adds nothing to the dot product).

    Summed tensor by tensor, in fp32: flattening each source's gradient into one vector first cost a copy of the
    encoder's size per source (about a twentieth of a probe's time for MiniLM).
    """
    n = len(grads)
    gram = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            shared = grads[i].keys() & grads[j].keys()
            gram[i, j] = gram[j, i] = float(sum(torch.dot(grads[i][k].reshape(-1).float(), grads[j][k].reshape(-1).float())
                                                for k in shared)) if shared else 0.0
    norms = np.sqrt(np.clip(np.diag(gram), 1e-60, None))
    return gram / np.outer(norms, norms)


def _clip_(grads: dict[str, torch.Tensor], max_norm: float) -> None:
    present = list(grads.values())
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for g in present:
            g.mul_(scale)
