"""The one training loop (single, mtl and finetune stages).

A single-task run is a multi-task run with one task. Each epoch pools one-task mini-batches of every task,
shuffles the pool (the paper's Algorithm 1) and steps on each batch with its own task's loss. Every random draw
of a task comes from that task's own streams (``transfer.training.streams``). After each epoch every task is
scored on dev; with ``patience`` the run stops once no task's dev score improved for that many epochs. Test is
scored with the weights of the chosen epoch (``transfer.training.selection``): each task's own best dev epoch,
or, in the all-task refinement run, the one epoch with the best mean dev score (one model, whose encoder the
fine-tune runs start from).

The command line is ``transfer.train``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from transfer.scoring import metrics
from transfer.experiment.config import RunSpec
from transfer.training.fast_bert import unsupported_reason
from transfer.training.features import SplitData, load_split
from transfer.training.batches import collate, make_batches, sample_examples
from transfer.training.kinds import kind_ops
from transfer.training.lookahead import AffinityTracker
from transfer.experiment.encoders import load_tokenizer
from transfer.training.model import MultiTaskModel
from transfer.training.device import autocast, peak_memory, pick_device, resolve_precision
from transfer.training.host_memory import keep_freed_memory
from transfer.training.kernel_cache import size_primitive_cache
from transfer.training.provenance import provenance
from transfer.training.selection import Selection, is_all_task_run
from transfer.training.streams import TaskStreams
from transfer.experiment.progress import Reporter
from transfer.experiment.run_folder import RunFolder
from transfer.data.tasks import TaskTable, load_task_table, locate_tasks

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- set-up

def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(spec: RunSpec, table: TaskTable, tokenizer, paths: dict[str, dict[str, Path]],
                 streams: TaskStreams) -> tuple[dict[str, dict[str, SplitData]], int]:
    """Examples and features of every split of every task (capped by the profile); also the cache hits.

    A capped training set is sampled from the task's own stream (it changes with the seed); capped dev and test
    sets are fixed samples, so every run and seed scores the same examples.
    """
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
            rng = streams.sample_generator(name) if split == "train" else None
            chosen = sample_examples(len(examples), caps[split], rng)
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


def setup_encoder(model: MultiTaskModel, impl: str, device: torch.device, masks=None, native_bf16: bool = False) -> str:
    """Switch ``model`` to the lean BERT forward when ``impl`` asks for it; return the one in use.

    ``auto`` takes ``transfer.training.fast_bert`` for BERT-architecture encoders and the Hugging Face forward for
    anything else (the choice is logged and stored with the run); ``transfer`` insists on the former.
    ``masks``: the CPU dropout mask source (``TaskStreams.mask_source``); None keeps torch's dropout (CUDA).
    ``native_bf16``: the lean forward computes in bf16 end to end (``bf16_compute = "native"``); the Hugging Face
    forward has no such path and runs under autocast (logged, and recorded as the run's ``bf16_compute``).
    """
    if impl == "hf":
        return "hf"
    reason = unsupported_reason(model.encoder)
    if reason is not None:
        if impl == "transfer":
            raise ValueError(f"encoder_impl = 'transfer' cannot run this encoder: {reason}; use 'auto' or 'hf'")
        logger.info("encoder_impl auto -> hf: %s", reason)
        return "hf"
    # CPU dropout masks from the tasks' own streams (see transfer.training.fast_bert); CUDA keeps torch's dropout
    model.use_fast_encoder(masks if device.type == "cpu" else None, torch.bfloat16 if native_bf16 else None)
    return "transfer"


def bf16_compute(precision: str, requested: str, model: MultiTaskModel) -> str | None:
    """How this run computes in bf16: ``native``, ``autocast`` (asked for, or the Hugging Face forward), or None."""
    if precision != "bf16":
        return None
    if requested == "native" and not model.native_compute:
        logger.info("bf16_compute native needs the lean BERT forward; this encoder runs under autocast")
    return "native" if model.native_compute else "autocast"


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_batches(train: dict[str, SplitData], batch_size: int, streams: TaskStreams,
                  group_by_length: bool, group_window: int = 50) -> list[tuple[str, np.ndarray]]:
    """Algorithm 1: every task's one-task mini-batches (from its own stream), pooled and shuffled."""
    names = list(train)
    own = [make_batches(split.features.lengths, batch_size, streams.batch_generator(name), group_by_length, split.rows,
                        group_window) for name, split in train.items()]
    return [(names[k], own[k][i]) for k, i in streams.interleave([len(batches) for batches in own])]


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
        with autocast(device, precision, model.native_compute):
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

SELECTION_FILE = "selection.json"  # beside a saved encoder: the run and the epoch it comes from


def train(spec: RunSpec, *, data_dir: str | Path | None = None, device: str | None = None,
          reporter: Reporter | None = None, table: TaskTable | None = None, parent_dir: Path | None = None,
          encoder_dir: Path | None = None) -> dict:
    """Train one run; return its result (scores, history, per-example test predictions, timings, provenance).

    ``parent_dir``: the mtl run folder a finetune run starts from (holds ``encoder/``).
    ``encoder_dir``: where to save the encoder when ``spec.save_encoder`` is set.
    """
    wall_start = time.perf_counter()
    if spec.save_encoder and encoder_dir is None:
        raise ValueError("save_encoder is set but no encoder_dir was given")
    allocator = keep_freed_memory()  # before the data and the model: every buffer after this benefits
    kernel_cache = size_primitive_cache()  # before the first matmul, when oneDNN reads it
    reporter = reporter or Reporter()
    table = table or load_task_table()
    dev = pick_device(device)
    precision = resolve_precision(spec.profile.precision, dev)
    streams = TaskStreams(spec.seed, spec.tasks, dev, shared=spec.profile.random_streams == "shared")
    paths = locate_tasks(table, spec.tasks, spec.domain, data_dir)
    tokenizer = load_tokenizer(spec.model)
    data, cache_hits = prepare_data(spec, table, tokenizer, paths, streams)
    model = build_model(spec, table, streams)
    parent = load_parent(model, spec, parent_dir) if spec.stage == "finetune" else None
    native = precision == "bf16" and spec.profile.bf16_compute == "native"
    encoder_impl = setup_encoder(model, spec.profile.encoder_impl, dev, streams.mask_source(), native)
    compute = bf16_compute(precision, spec.profile.bf16_compute, model)
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
    summary["bf16_compute"] = compute
    reporter.start(summary)
    one_model = spec.profile.refinement_selection == "mean" and is_all_task_run(spec.stage, spec.tasks, spec.domain, table)
    loop = _Loop(spec, model, optimizer, scheduler, data, dev, precision, tokenizer.pad_token_id, reporter, total_steps,
                 streams, "mean" if one_model else "task")
    if spec.affinity_every:
        probe_precision = "fp32" if spec.profile.affinity_precision == "fp32" else precision
        loop.tracker = AffinityTracker(train_data, spec.affinity_every, spec.affinity_batches, spec.profile.batch_size,
                                       tokenizer.pad_token_id, dev, lambda: autocast(dev, probe_precision),
                                       spec.profile.max_grad_norm, spec.seed, probe_precision)
    loop.run()
    loop.finish(Path(encoder_dir) if spec.save_encoder else None)
    result = loop.result(summary, time.perf_counter() - wall_start)
    result["provenance"] = provenance(dev, precision, encoder_impl, spec.profile.random_streams, compute)
    result["provenance"]["host_allocator"] = allocator
    result["provenance"]["onednn_primitive_cache"] = kernel_cache
    if parent is not None:
        result["parent"] = parent
    reporter.finish(result)
    return result


def build_model(spec: RunSpec, table: TaskTable, streams: TaskStreams) -> MultiTaskModel:
    """The pretrained encoder and one fresh head per task, each head drawn from its task's own generator."""
    set_seed(spec.seed)  # whatever loading the encoder draws (a missing pooler, say) is the same for every task set
    model = MultiTaskModel.from_pretrained(spec.model, [table.task(n) for n in spec.tasks], spec.profile.dropout)
    if not (streams.shared and spec.profile.head_init == "torch"):  # else nn.Linear's own draws, as stored runs had
        model.initialise_heads(spec.profile.head_init, {name: streams.head_generator(name) for name in spec.tasks})
    return model


def load_parent(model: MultiTaskModel, spec: RunSpec, parent_dir: Path | None) -> dict:
    """Start from the refinement run's saved encoder; return which run and epoch it is (None: not recorded)."""
    folder = RunFolder(parent_dir).encoder_dir if parent_dir is not None else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"finetune needs the refinement run's encoder; none in {parent_dir}/encoder")
    model.load_encoder_state(folder)
    info = json.loads((folder / SELECTION_FILE).read_text()) if (folder / SELECTION_FILE).is_file() else {}
    return {"run_id": info.get("run_id", spec.parent), "epoch": info.get("epoch"), "rule": info.get("rule")}


def _summary(spec, data, total_steps, dev, precision, cache_hits) -> dict:
    return {
        "run_id": spec.run_id, "stage": spec.stage, "tasks": list(spec.tasks), "seed": spec.seed,
        "model": spec.model, "profile": spec.profile.name, "device": str(dev), "precision": precision,
        "examples": {name: {split: s.num_examples for split, s in splits.items()} for name, splits in data.items()},
        "epochs": spec.epochs, "patience": spec.profile.patience, "steps": total_steps,
        "batch_size": spec.profile.batch_size, "effective_batch": spec.profile.batch_size,
        "learning_rate": spec.learning_rate, "optimizer": spec.profile.optimizer, "feature_cache_hits": cache_hits,
        "threads": torch.get_num_threads(),
    }


class _Loop:
    """State of one run's training; ``run`` reads top to bottom as the paper's Algorithm 1."""

    def __init__(self, spec, model, optimizer, scheduler, data, device, precision, pad_id, reporter, total_steps,
                 streams: TaskStreams, rule: str):
        self.spec, self.model, self.optimizer, self.scheduler = spec, model, optimizer, scheduler
        # fp16 needs loss scaling against gradient underflow; with bf16/fp32 the scaler is a pass-through.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.data, self.device, self.precision, self.pad_id = data, device, precision, pad_id
        self.reporter, self.total_steps = reporter, total_steps
        self.streams, self.rule = streams, rule  # rule: "task" (each task its own epoch) or "mean" (one model)
        self.selection = Selection({name: splits["dev"].task.metric for name, splits in data.items()})
        # the mean-dev epoch's weights are kept when they are reported or will be saved for fine-tuning
        self.keeps_mean = rule == "mean" or (spec.save_encoder and spec.profile.refinement_selection == "mean")
        self.snapshots: dict[int, dict] = {}  # epoch -> CPU copy of the model's weights, while a choice needs it
        self.tests: dict[tuple[int, str], tuple[dict, list]] = {}  # (epoch, task) -> test metrics, predictions
        self.history: list[dict] = []
        self.losses: list[float] = []
        self.step_count = 0
        self.examples_seen = 0
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.epochs_run = 0
        self.stopped_early = False
        self.saved_epoch: int | None = None
        self.tracker: AffinityTracker | None = None

    def run(self) -> None:
        stale, patience, ceiling = 0, self.spec.profile.patience, self.spec.last_epoch
        for epoch in range(1, ceiling + 1):
            self.train_epoch()
            improved = self.evaluate(epoch)
            self.epochs_run = epoch
            stale = 0 if improved else stale + 1
            self.stopped_early = bool(patience) and stale >= patience and epoch < ceiling
            last = epoch == ceiling or self.stopped_early
            self._keep_weights(epoch, last)
            if self.stopped_early:
                logger.info("no task improved on dev for %d epochs; stopping after epoch %d", stale, epoch)
            if last:
                break

    def train_epoch(self) -> None:
        self.model.train()
        profile = self.spec.profile
        train = {name: splits["train"] for name, splits in self.data.items()}
        batches = epoch_batches(train, profile.batch_size, self.streams, profile.group_by_length, profile.group_window)
        running = torch.zeros((), device=self.device)
        since_log, start = 0, time.perf_counter()
        for task_name, rows in batches:
            if self.tracker is not None and self.tracker.due(self.step_count):
                self.tracker.probe(self.model, self.optimizer, self.scheduler.get_last_lr()[0])
            self.streams.activate(task_name)  # this batch's dropout draws from its own task's streams
            batch = collate(train[task_name].features, rows, self.pad_id)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast(self.device, self.precision, self.model.native_compute):
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
        self.streams.deactivate()
        self.train_seconds += time.perf_counter() - start
        if self.tracker is not None:
            self.tracker.end_epoch()

    def evaluate(self, epoch: int) -> bool:
        """Score dev and update the choices of epoch; True if any task's own best improved."""
        start = time.perf_counter()
        dev = {name: score_split(splits["dev"], self._predict(splits["dev"]))[0] for name, splits in self.data.items()}
        improved, mean = self.selection.update(epoch, dev)
        self.history.append({"epoch": epoch, "dev": dev, "mean_dev": round(mean, 6)})
        self.eval_seconds += time.perf_counter() - start
        self.reporter.epoch_end(epoch, {n: s[self.data[n]["dev"].task.metric] for n, s in dev.items()})
        return improved

    def _keep_weights(self, epoch: int, last: bool) -> None:
        """Copy this epoch's weights if a choice points at it (the last epoch's stay live); drop unneeded copies."""
        needed = self.selection.epochs(with_mean=self.keeps_mean)
        self.snapshots = {e: weights for e, weights in self.snapshots.items() if e in needed}
        if epoch in needed and not last:
            self.snapshots[epoch] = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def finish(self, encoder_dir: Path | None) -> None:
        """Score test once per chosen (epoch, task), and save the encoder of the epoch chosen for fine-tuning.

        Equivalent to scoring test after every epoch and keeping the chosen ones, at a fraction of the cost. The
        live (last) epoch goes first, before any copy is loaded.
        """
        start = time.perf_counter()
        wanted: dict[int, set[str]] = {}
        for name in self.data:
            for choice in (self.selection.per_task[name], self.selection.chosen(self.rule, name)):
                if choice.epoch:
                    wanted.setdefault(choice.epoch, set()).add(name)
        if encoder_dir is not None:
            mean_epoch = self.selection.mean.epoch if self.spec.profile.refinement_selection == "mean" else 0
            self.saved_epoch = mean_epoch or self.epochs_run  # "task" selection keeps the last epoch, as before
            wanted.setdefault(self.saved_epoch, set())
        for epoch in sorted(wanted, key=lambda e: (e != self.epochs_run, e)):
            if epoch != self.epochs_run:
                self.model.load_state_dict(self.snapshots.pop(epoch))
            if epoch == self.saved_epoch:
                self._save_encoder(encoder_dir, epoch)
            for name in sorted(wanted[epoch]):
                self.tests[epoch, name] = score_split(self.data[name]["test"], self._predict(self.data[name]["test"]))
        self.eval_seconds += time.perf_counter() - start

    def _save_encoder(self, folder: Path, epoch: int) -> None:
        self.model.save_encoder(folder)
        rule = "mean dev score" if self.spec.profile.refinement_selection == "mean" else "last epoch"
        (folder / SELECTION_FILE).write_text(json.dumps({"run_id": self.spec.run_id, "epoch": epoch, "rule": rule}))

    def _predict(self, split: SplitData) -> dict[int, object]:
        return predict_split(self.model, split, self.spec.profile.eval_batch_size, self.device, self.precision, self.pad_id)

    def _task_entry(self, name: str, rule: str) -> dict:
        choice = self.selection.chosen(rule, name)
        metric = self.data[name]["dev"].task.metric
        dev = choice.dev.get(name)
        test = self.tests.get((choice.epoch, name), (None, None))[0]
        return {"metric": metric, "best_epoch": choice.epoch, "dev": dev, "test": test,
                "dev_score": dev[metric] if dev else None, "test_score": test[metric] if test else None}

    def result(self, summary: dict, wall_seconds: float) -> dict:
        tasks, predictions = {}, {}
        for name, splits in self.data.items():
            own_epoch = self.selection.per_task[name].epoch
            tasks[name] = {**self._task_entry(name, self.rule), "selection": self.rule,
                           "own_best_epoch": own_epoch, "peaked_at_last_epoch": own_epoch == self.epochs_run,
                           "examples": {split: s.num_examples for split, s in splits.items()}}
            if self.rule == "mean":  # the per-task choice stays as an extra column
                tasks[name]["per_task_selection"] = self._task_entry(name, "task")
            predictions[name] = self.tests.get((tasks[name]["best_epoch"], name), (None, None))[1]
        extra = {"affinity": self.tracker.result()} if self.tracker is not None else {}
        mean = self.selection.mean
        return {
            "run_id": self.spec.run_id,
            "spec": self.spec.to_dict(),
            "tasks": tasks,
            "model_selection": {"rule": self.rule, "mean_dev_epoch": mean.epoch,
                                "mean_dev_score": round(mean.score, 6) if mean.epoch else None,
                                "saved_encoder_epoch": self.saved_epoch},
            **extra,
            "history": self.history,
            "predictions": predictions,
            "train": {
                **summary, "epochs_run": self.epochs_run, "stopped_early": self.stopped_early,
                "steps_run": self.step_count, "train_examples_seen": self.examples_seen,
                "train_seconds": round(self.train_seconds, 3), "eval_seconds": round(self.eval_seconds, 3),
                "wall_seconds": round(wall_seconds, 3),
                "train_examples_per_s": round(self.examples_seen / max(self.train_seconds, 1e-9), 2),
                **peak_memory(self.device),
                "losses": self.losses,
            },
        }


def quiet_transformers() -> None:
    """Our own progress bar is enough; hide transformers' weight-loading bars and info lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
