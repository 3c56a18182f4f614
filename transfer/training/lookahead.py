"""Look-ahead task affinity (Fifty et al. 2021, "Efficiently Identifying Task Groupings for Multi-Task
Learning"), adapted to tasks that each have their own dataset.

Every ``every`` training steps the tracker draws probe batches of each task, and for each source task i takes one
look-ahead optimiser step on i's loss, applied to the shared encoder only, on a functional copy of its weights.
For each target task j it records ``Z(i->j) = 1 - L_j(after) / L_j(before)`` on j's probe batches. Positive Z
means a step on i lowers j's loss. Probes run with dropout off and their own random generator, and never
touch the real parameters, gradients or optimiser state, so the training trajectory is unchanged.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from transfer.training.features import SplitData
from transfer.training.batches import collate


def lookahead_params(optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter],
                     grads: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
    """Weights after one step of ``optimizer``'s own rule (AdamW or Adamax) with ``grads``, state left as is."""
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    eps = group["eps"]
    is_adamw = isinstance(optimizer, torch.optim.AdamW)
    out = {}
    for name, param in named.items():
        grad = grads[name]
        state = optimizer.state.get(param, {})
        step = float(state.get("step", 0)) + 1
        decay = _weight_decay_of(optimizer, param)
        if is_adamw:  # decoupled weight decay
            exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * grad if state else (1 - beta1) * grad
            exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad if state else (1 - beta2) * grad * grad
            denom = (exp_avg_sq / (1 - beta2 ** step)).sqrt() + eps
            out[name] = param.detach() * (1 - lr * decay) - lr * (exp_avg / (1 - beta1 ** step)) / denom
        else:  # Adamax: weight decay added to the gradient, infinity norm of past gradients
            grad = grad + decay * param.detach() if decay else grad
            exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * grad if state else (1 - beta1) * grad
            exp_inf = torch.maximum(beta2 * state["exp_inf"], grad.abs() + eps) if state else grad.abs() + eps
            out[name] = param.detach() - (lr / (1 - beta1 ** step)) * exp_avg / exp_inf
    return out


def _weight_decay_of(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter) -> float:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group["weight_decay"]
    return 0.0


class AffinityTracker:
    """Accumulates the look-ahead affinity matrix Z over a run (rows: source task, columns: target task)."""

    def __init__(self, train: dict[str, SplitData], every: int, num_batches: int, batch_size: int, pad_id: int,
                 device: torch.device, autocast_factory, max_grad_norm: float, seed: int):
        self.train, self.every, self.num_batches = train, every, num_batches
        self.batch_size, self.pad_id, self.device = batch_size, pad_id, device
        self.autocast, self.max_grad_norm = autocast_factory, max_grad_norm
        self.tasks = list(train)
        self.rng = np.random.default_rng(seed + 104_729)  # never the training generator
        n = len(self.tasks)
        self.epoch_sum, self.epoch_count = np.zeros((n, n)), 0
        self.per_epoch: list[list[list[float]]] = []
        self.total_sum, self.total_count = np.zeros((n, n)), 0
        self.seconds = 0.0

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def _probe_batches(self) -> dict[str, list[dict[str, torch.Tensor]]]:
        batches = {}
        for name, split in self.train.items():
            picks = [self.rng.choice(split.rows, size=min(self.batch_size, len(split.rows)), replace=False)
                     for _ in range(self.num_batches)]
            batches[name] = [{k: v.to(self.device) for k, v in collate(split.features, rows, self.pad_id).items()}
                             for rows in picks]
        return batches

    def _mean_loss(self, model, name, batches, params=None) -> torch.Tensor:
        with self.autocast():
            return torch.stack([model.loss(name, b, params) for b in batches]).mean()

    def probe(self, model, optimizer, lr: float) -> np.ndarray:
        """One look-ahead measurement at the current weights; returns (and accumulates) Z."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()  # no dropout: deterministic, and the training RNG is not consumed
        batches = self._probe_batches()
        named = {n: p for n, p in model.encoder.named_parameters() if p.requires_grad}
        with torch.no_grad():
            before = {name: float(self._mean_loss(model, name, batches[name])) for name in self.tasks}
        z = np.zeros((len(self.tasks), len(self.tasks)))
        for i, source in enumerate(self.tasks):
            loss = self._mean_loss(model, source, batches[source])
            grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
            # Weights the loss does not reach (e.g. an unused pooler) get no gradient and, as in a real step, stay put.
            grads = {n: g for n, g in zip(named, grads) if g is not None}
            _clip_(grads, self.max_grad_norm)
            after_params = lookahead_params(optimizer, {n: named[n] for n in grads}, grads, lr)
            with torch.no_grad():
                for j, target in enumerate(self.tasks):
                    after = float(self._mean_loss(model, target, batches[target], after_params))
                    z[i, j] = 1.0 - after / before[target]
        model.train(was_training)
        self.epoch_sum += z
        self.epoch_count += 1
        self.seconds += time.perf_counter() - start
        return z

    def end_epoch(self) -> None:
        if self.epoch_count:
            epoch_mean = self.epoch_sum / self.epoch_count
            self.per_epoch.append(epoch_mean.round(8).tolist())
            self.total_sum += epoch_mean
            self.total_count += 1
        self.epoch_sum[:] = 0
        self.epoch_count = 0

    def result(self) -> dict:
        """Z averaged per epoch, then over epochs."""
        matrix = (self.total_sum / self.total_count).round(8).tolist() if self.total_count else None
        return {"tasks": self.tasks, "matrix": matrix, "per_epoch": self.per_epoch, "every": self.every,
                "num_batches": self.num_batches, "seconds": round(self.seconds, 3)}


def _clip_(grads: dict[str, torch.Tensor], max_norm: float) -> None:
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for g in grads.values():
            g.mul_(scale)
