"""The one training loop (single, mtl and finetune stages).

A single-task run is a multi-task run with one task. Each epoch pools one-task mini-batches of every task,
shuffles the pool (the paper's Algorithm 1) and steps on each batch with its own task's loss. After each
epoch every task is scored on dev; when a task's dev score improves, its test set is scored at that epoch,
so the reported test score is the one of the epoch with the best dev score *of that task*.

The command line is ``transfer.train``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transfer.scoring import metrics
from transfer.experiment.config import RunSpec
from transfer.training.fast_bert import MaskSource, unsupported_reason
from transfer.training.features import SplitData, load_split
from transfer.training.batches import collate, make_batches, sample_examples
from transfer.training.kinds import kind_ops
from transfer.training.lookahead import AffinityTracker
from transfer.training.model import MultiTaskModel, load_tokenizer
from transfer.experiment.progress import Reporter
from transfer.data.tasks import TaskTable, load_task_table, locate_tasks

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- set-up

def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device: str | None = None) -> torch.device:
    """``auto`` (or None): the visible GPU if any, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware runs it natively (Ampere+ GPUs, AVX512-BF16/AMX CPUs), else fp32."""
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_data(spec: RunSpec, table: TaskTable, tokenizer, paths: dict[str, dict[str, Path]]
                 ) -> tuple[dict[str, dict[str, SplitData]], int]:
    """Examples and features of every split of every task (capped by the profile); also the cache hits."""
    caps = {"train": spec.profile.max_train_examples, "dev": spec.profile.max_dev_examples,
            "test": spec.profile.max_test_examples}
    data: dict[str, dict[str, SplitData]] = {}
    hits = 0
    for name in spec.tasks:
        task = table.task(name)
        data[name] = {}
        for split, path in paths[name].items():
            examples, features, hit = load_split(task, split, path, tokenizer, spec.profile.max_length)
            hits += hit
            chosen = sample_examples(len(examples), caps[split])
            data[name][split] = SplitData(task, split, examples, features, features.rows_of(chosen))
    return data, hits


# ----------------------------------------------------------------------------------------------- optimiser

def build_optimizer(model: torch.nn.Module, optimizer: str, learning_rate: float, weight_decay: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """AdamW or Adamax; no weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optimizer == "adamw":
        # one fused kernel for all parameters (CUDA; CPU since torch 2.4) instead of a loop over 100+ tensors
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    return torch.optim.Adamax(groups, lr=learning_rate, foreach=True)


def setup_encoder(model: MultiTaskModel, impl: str, device: torch.device, seed: int) -> str:
    """Switch ``model`` to the lean BERT forward when ``impl`` asks for it; return the one in use.

    ``auto`` takes ``transfer.training.fast_bert`` for BERT-architecture encoders and the Hugging Face forward for
    anything else (the choice is logged and stored with the run); ``transfer`` insists on the former.
    """
    if impl == "hf":
        return "hf"
    reason = unsupported_reason(model.encoder)
    if reason is not None:
        if impl == "transfer":
            raise ValueError(f"encoder_impl = 'transfer' cannot run this encoder: {reason}; use 'auto' or 'hf'")
        logger.info("encoder_impl auto -> hf: %s", reason)
        return "hf"
    # CPU dropout masks from a seeded stream of their own (see transfer.training.fast_bert); CUDA keeps torch's dropout
    model.use_fast_encoder(MaskSource(seed + 7919) if device.type == "cpu" else None)
    return "transfer"


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_batches(train: dict[str, SplitData], batch_size: int, rng: np.random.Generator,
                  group_by_length: bool) -> list[tuple[str, np.ndarray]]:
    """Algorithm 1: every task's one-task mini-batches, pooled and shuffled."""
    pool = []
    for name, split in train.items():
        lengths = split.features.lengths
        pool += [(name, rows) for rows in make_batches(lengths, batch_size, rng, group_by_length, split.rows)]
    order = rng.permutation(len(pool))
    return [pool[i] for i in order]


def count_steps(train: dict[str, SplitData], batch_size: int) -> int:
    return sum(math.ceil(len(split.rows) / batch_size) for split in train.values())


# ----------------------------------------------------------------------------------------------- evaluation

@torch.inference_mode()
def predict_split(model: MultiTaskModel, split: SplitData, batch_size: int, device: torch.device,
                  precision: str, pad_id: int) -> dict[int, object]:
    """Predicted label of every example in use, keyed by example number."""
    model.eval()
    ops = kind_ops(split.task)
    feats = split.features
    rows = split.rows[np.argsort(-feats.lengths[split.rows], kind="stable")]
    outputs: dict[int, np.ndarray] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(feats, chunk, pad_id, with_targets=False).items()}
        with autocast(device, precision):
            logits = model(split.task.name, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        predicted = ops.predict(logits).cpu().numpy()
        outputs.update(zip(chunk.tolist(), predicted))
    return _assemble(split, outputs)


def _assemble(split: SplitData, outputs: dict[int, np.ndarray]) -> dict[int, object]:
    ops, feats, task = kind_ops(split.task), split.features, split.task
    if not ops.token_level:
        return {int(feats.example_index[r]): ops.to_label(out, task) for r, out in outputs.items()}
    labels: dict[int, list[str]] = {}
    for r, out in outputs.items():
        ex = int(feats.example_index[r])
        tags = labels.setdefault(ex, [task.negative_label] * len(split.examples[ex].text_a))
        words = ops.to_label(out[feats.word_starts[r]], task)
        # by word number, not as a slice from the row's offset: a word with no pieces has no start, and
        # every later word of the row would otherwise shift onto its left neighbour
        for number, tag in zip(feats.word_numbers[r].tolist(), words):
            tags[number] = tag
    return {ex: tuple(tags) for ex, tags in labels.items()}


def score_split(split: SplitData, predicted: dict[int, object]) -> tuple[dict[str, float], list[dict]]:
    """The task's metrics on this split, and one record per example (uid, gold, prediction)."""
    ids = sorted(predicted)
    examples = [split.examples[i] for i in ids]
    gold = [ex.label for ex in examples]
    pred = [predicted[i] for i in ids]
    groups = [ex.group for ex in examples] if examples and examples[0].group is not None else None
    scores = metrics.score_task(split.task, gold, pred, groups)
    records = [{"uid": ex.uid, "gold": _jsonable(ex.label), "pred": _jsonable(p), **({"group": ex.group} if ex.group else {}),
                "cluster": ex.cluster}  # the unit's document (None: independent), for clustered resampling
               for ex, p in zip(examples, pred)]
    return scores, records


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


# ----------------------------------------------------------------------------------------------- training

@dataclass
class TaskBest:
    """Best-dev bookkeeping of one task."""

    dev_score: float = -math.inf
    epoch: int = 0
    dev: dict | None = None
    test: dict | None = None
    predictions: list | None = None
    weights: dict | None = None  # CPU copy of encoder + this task's head at the best epoch


def train(spec: RunSpec, *, data_dir: str | Path | None = None, device: str | None = None,
          reporter: Reporter | None = None, table: TaskTable | None = None, parent_dir: Path | None = None,
          encoder_dir: Path | None = None) -> dict:
    """Train one run; return its result (scores, history, per-example test predictions, timings).

    ``parent_dir``: the mtl run folder a finetune run starts from (holds ``encoder/``).
    ``encoder_dir``: where to save the encoder when ``spec.save_encoder`` is set.
    """
    wall_start = time.perf_counter()
    reporter = reporter or Reporter()
    table = table or load_task_table()
    dev = pick_device(device)
    precision = resolve_precision(spec.profile.precision, dev)
    paths = locate_tasks(table, spec.tasks, spec.domain, data_dir)
    tokenizer = load_tokenizer(spec.model)
    data, cache_hits = prepare_data(spec, table, tokenizer, paths)
    set_seed(spec.seed)
    model = MultiTaskModel.from_pretrained(spec.model, [table.task(n) for n in spec.tasks], spec.profile.dropout)
    if spec.stage == "finetune":
        if parent_dir is None or not (Path(parent_dir) / "encoder").is_dir():
            raise FileNotFoundError(f"finetune needs the refinement run's encoder; none in {parent_dir}/encoder")
        model.load_encoder_state(Path(parent_dir) / "encoder")
    encoder_impl = setup_encoder(model, spec.profile.encoder_impl, dev, spec.seed)
    model.to(dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    train_data = {name: splits["train"] for name, splits in data.items()}
    total_steps = count_steps(train_data, spec.profile.batch_size) * spec.epochs
    optimizer = build_optimizer(model, spec.profile.optimizer, spec.learning_rate, spec.profile.weight_decay, dev)
    scheduler = linear_warmup_decay(optimizer, total_steps, spec.profile.warmup_ratio)
    summary = _summary(spec, data, total_steps, dev, precision, cache_hits)
    summary["encoder_impl"] = encoder_impl
    reporter.start(summary)
    loop = _Loop(spec, model, optimizer, scheduler, data, dev, precision, tokenizer.pad_token_id, reporter, total_steps)
    if spec.affinity_every:
        loop.tracker = AffinityTracker(train_data, spec.affinity_every, spec.affinity_batches, spec.profile.batch_size,
                                       tokenizer.pad_token_id, dev, lambda: autocast(dev, precision),
                                       spec.profile.max_grad_norm, spec.seed)
    loop.run()
    if spec.save_encoder:
        if encoder_dir is None:
            raise ValueError("save_encoder is set but no encoder_dir was given")
        model.save_encoder(Path(encoder_dir))
    loop.score_test()
    result = loop.result(summary, time.perf_counter() - wall_start)
    reporter.finish(result)
    return result


def _summary(spec, data, total_steps, dev, precision, cache_hits) -> dict:
    return {
        "run_id": spec.run_id, "stage": spec.stage, "tasks": list(spec.tasks), "seed": spec.seed,
        "model": spec.model, "profile": spec.profile.name, "device": str(dev), "precision": precision,
        "examples": {name: {split: s.num_examples for split, s in splits.items()} for name, splits in data.items()},
        "epochs": spec.epochs, "steps": total_steps, "batch_size": spec.profile.batch_size,
        "effective_batch": spec.profile.batch_size, "learning_rate": spec.learning_rate,
        "optimizer": spec.profile.optimizer, "feature_cache_hits": cache_hits, "threads": torch.get_num_threads(),
    }


class _Loop:
    """State of one run's training; ``run`` reads top to bottom as the paper's Algorithm 1."""

    def __init__(self, spec, model, optimizer, scheduler, data, device, precision, pad_id, reporter, total_steps):
        self.spec, self.model, self.optimizer, self.scheduler = spec, model, optimizer, scheduler
        # fp16 needs loss scaling against gradient underflow; with bf16/fp32 the scaler is a pass-through.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.data, self.device, self.precision, self.pad_id = data, device, precision, pad_id
        self.reporter, self.total_steps = reporter, total_steps
        self.rng = np.random.default_rng(spec.seed)
        self.best = {name: TaskBest() for name in spec.tasks}
        self.history: list[dict] = []
        self.losses: list[float] = []
        self.step_count = 0
        self.examples_seen = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.epochs_run = 0
        self.tracker: AffinityTracker | None = None

    def run(self) -> None:
        stale = 0
        for epoch in range(1, self.spec.epochs + 1):
            self.train_epoch()
            improved = self.evaluate(epoch)
            self.epochs_run = epoch
            stale = 0 if improved else stale + 1
            if self.spec.profile.patience and stale >= self.spec.profile.patience:
                logger.info("no task improved on dev for %d epochs; stopping after epoch %d", stale, epoch)
                break

    def train_epoch(self) -> None:
        self.model.train()
        profile = self.spec.profile
        train = {name: splits["train"] for name, splits in self.data.items()}
        batches = epoch_batches(train, profile.batch_size, self.rng, profile.group_by_length)
        running = torch.zeros((), device=self.device)
        since_log, start = 0, time.perf_counter()
        for task_name, rows in batches:
            if self.tracker is not None and self.tracker.due(self.step_count):
                self.tracker.probe(self.model, self.optimizer, self.scheduler.get_last_lr()[0])
            batch = collate(train[task_name].features, rows, self.pad_id)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast(self.device, self.precision):
                loss = self.model.loss(task_name, batch)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), profile.max_grad_norm, foreach=True)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            running += loss.detach()
            since_log += 1
            self.step_count += 1
            self.examples_seen += len(rows)
            mean_loss = None
            if since_log == profile.log_every or self.step_count == self.total_steps:
                mean_loss = float(running) / since_log  # the only host sync, every log_every steps
                self.losses.append(round(mean_loss, 6))
                running.zero_()
                since_log = 0
            elapsed = self.train_seconds + time.perf_counter() - start
            self.reporter.step(self.step_count, self.total_steps, mean_loss, self.examples_seen / max(elapsed, 1e-9))
        self.train_seconds += time.perf_counter() - start
        if self.tracker is not None:
            self.tracker.end_epoch()

    def evaluate(self, epoch: int) -> bool:
        """Score dev; keep a weight snapshot of each task whose dev score improved. True if any improved."""
        start = time.perf_counter()
        record, improved = {"epoch": epoch, "dev": {}}, False
        for name, splits in self.data.items():
            dev_scores, _ = score_split(splits["dev"], self._predict(splits["dev"]))
            record["dev"][name] = dev_scores
            primary = dev_scores[splits["dev"].task.metric]
            if primary > self.best[name].dev_score:
                improved = True
                snapshot = None if epoch == self.spec.epochs else self._snapshot(name)  # the last epoch's weights stay live
                self.best[name] = TaskBest(primary, epoch, dev_scores, weights=snapshot)
        self.history.append(record)
        self.eval_seconds += time.perf_counter() - start
        self.reporter.epoch_end(epoch, {n: s[self.data[n]["dev"].task.metric] for n, s in record["dev"].items()})
        return improved

    def _snapshot(self, name: str) -> dict:
        return {"encoder": {k: v.detach().to("cpu", copy=True) for k, v in self.model.encoder.state_dict().items()},
                "head": {k: v.detach().to("cpu", copy=True) for k, v in self.model.heads[name].state_dict().items()}}

    def score_test(self) -> None:
        """Score each task's test set once, with the weights of its best dev epoch.

        Equivalent to scoring test after every epoch and keeping the best-dev one, at a fraction of the cost.
        Tasks whose best epoch is the current one go first, before any snapshot is loaded.
        """
        start = time.perf_counter()
        current = [n for n, b in self.best.items() if b.weights is None and b.epoch == self.epochs_run]
        for name in current + [n for n in self.best if n not in current]:
            best = self.best[name]
            if best.epoch == 0:
                continue
            if best.weights is not None:
                self.model.encoder.load_state_dict(best.weights["encoder"])
                self.model.heads[name].load_state_dict(best.weights["head"])
            best.test, best.predictions = score_split(self.data[name]["test"], self._predict(self.data[name]["test"]))
            best.weights = None
        self.eval_seconds += time.perf_counter() - start

    def _predict(self, split: SplitData) -> dict[int, object]:
        return predict_split(self.model, split, self.spec.profile.eval_batch_size, self.device, self.precision, self.pad_id)

    def result(self, summary: dict, wall_seconds: float) -> dict:
        tasks = {}
        for name, best in self.best.items():
            task = self.data[name]["dev"].task
            tasks[name] = {
                "metric": task.metric, "best_epoch": best.epoch, "dev": best.dev, "test": best.test,
                "dev_score": best.dev[task.metric] if best.dev else None,
                "test_score": best.test[task.metric] if best.test else None,
                "examples": {split: s.num_examples for split, s in self.data[name].items()},
            }
        extra = {"affinity": self.tracker.result()} if self.tracker is not None else {}
        return {
            "run_id": self.spec.run_id,
            "spec": self.spec.to_dict(),
            "tasks": tasks,
            **extra,
            "history": self.history,
            "predictions": {name: best.predictions for name, best in self.best.items()},
            "train": {
                **summary, "epochs_run": self.epochs_run, "steps_run": self.step_count,
                "train_examples_seen": self.examples_seen, "train_seconds": round(self.train_seconds, 3),
                "eval_seconds": round(self.eval_seconds, 3), "wall_seconds": round(wall_seconds, 3),
                "train_examples_per_s": round(self.examples_seen / max(self.train_seconds, 1e-9), 2),
                **peak_memory(self.device),
                "losses": self.losses,
            },
        }


def peak_memory(device: torch.device) -> dict:
    """The process's peak resident memory so far (MB), and on CUDA the peak allocated on the device."""
    import resource
    import sys

    per_mb = 2**20 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb, 1)}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def quiet_transformers() -> None:
    """Our own progress bar is enough; hide transformers' weight-loading bars and info lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
