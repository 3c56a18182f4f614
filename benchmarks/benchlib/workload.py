"""What every benchmarked variant shares: the training settings (seed, learning rate, schedule, clipping), the
task, the encoder, the fixed training sample and the dev sample, loaded once as a ``Workload``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchlib.flops import Arch

DEFAULT_TASK = "chemprot"
SEED = 13
LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0
SMALL_EVAL = 32  # dev/test examples scored at the end of each transfer run (not timed, kept small)


@dataclass
class Workload:
    """What every variant shares: task, encoder, the fixed training sample and the dev sample."""

    task: object
    model: str
    model_path: str
    tokenizer: object
    data_dir: Path | None
    batch_size: int
    max_length: int
    steps: int
    skip: int
    train_examples: list
    train_lengths: np.ndarray
    dev_split: object
    arch: Arch
    device: object
    eval_batch_size: int = 64

    @property
    def train_cap(self) -> int:
        return len(self.train_examples)


def load_workload(*, model: str, task_name: str, data_dir, batch_size: int, max_length: int, steps: int, skip: int,
                  eval_examples: int, device, eval_batch_size: int = 64) -> Workload:
    """Tokenise (or read from transfer's feature cache) the task and take the fixed samples."""
    from transformers import AutoConfig

    from transfer.training.features import SplitData, load_split
    from transfer.training.batches import sample_examples
    from transfer.training.kinds import kind_ops
    from transfer.experiment.encoders import load_tokenizer, resolve_model
    from transfer.data.tasks import load_task_table, locate_tasks

    table = load_task_table()
    task = table.task(task_name)
    if kind_ops(task).token_level or task.kind != "classification":
        raise SystemExit(f"--task must be a single-label classification task; {task_name} is {task.kind}")
    paths = locate_tasks(table, [task_name], None, data_dir)[task_name]
    tokenizer = load_tokenizer(model)
    examples, feats, _ = load_split(task, "train", paths["train"], tokenizer, max_length)
    if len(examples) < steps * batch_size:
        raise SystemExit(f"{task_name} has {len(examples)} training examples; --steps {steps} x --batch-size "
                         f"{batch_size} needs {steps * batch_size}")
    chosen = sample_examples(len(examples), steps * batch_size)
    rows = feats.rows_of(chosen)
    dev_examples, dev_feats, _ = load_split(task, "dev", paths["dev"], tokenizer, max_length)
    dev_rows = dev_feats.rows_of(sample_examples(len(dev_examples), eval_examples))
    path = resolve_model(model)
    config = AutoConfig.from_pretrained(path)
    arch = Arch(config.num_hidden_layers, config.hidden_size, config.intermediate_size)
    return Workload(task=task, model=model, model_path=path, tokenizer=tokenizer, data_dir=data_dir,
                    batch_size=batch_size, max_length=max_length, steps=steps, skip=skip,
                    train_examples=[examples[i] for i in chosen], train_lengths=feats.lengths[rows],
                    dev_split=SplitData(task, "dev", dev_examples, dev_feats, dev_rows), arch=arch, device=device,
                    eval_batch_size=eval_batch_size)


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
