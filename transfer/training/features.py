"""Examples -> token ids, cached on disk (batching is ``transfer.training.batches``).

Pairs are packed ``[CLS] a [SEP] b [SEP]`` and truncated longest-first to ``max_length``. Tagging sentences
longer than 30 words are cut into sub-sentences (only after an outside word), each word's tag sits on its first
wordpiece and every other position is ignored. Features are cached under ``$TRANSFER_CACHE_DIR`` (default
``~/.cache/transfer``), keyed by the split file's content, the tokenizer's full definition, ``max_length``
and the task's label set, so a second run of the same task does not read or tokenise again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.data.examples import Example
from transfer.data.files import CACHE_ENV, cache_dir, file_fingerprint  # noqa: F401 (re-exported)
from transfer.training.kinds import IGNORE_INDEX, kind_ops
from transfer.data.readers import read_split, split_long_sentence
from transfer.data.tasks import TaskSpec

logger = logging.getLogger(__name__)

FEATURE_VERSION = 1  # bump when the feature layout or tokenisation rules change
MAX_WORDS = 30


@dataclass
class TaskFeatures:
    """Token ids of one split of one task; row i came from example ``example_index[i]``."""

    task_name: str
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    targets: list  # per row: int / float / multi-hot list / per-token tag ids (tagging)
    example_index: np.ndarray
    word_offset: np.ndarray  # tagging: index of the row's first word in its sentence
    word_starts: list[np.ndarray] = field(default_factory=list)  # tagging: first-piece position of each word
    truncated_words: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def rows_of(self, example_ids: np.ndarray) -> np.ndarray:
        """Row numbers whose example is in ``example_ids``."""
        return np.flatnonzero(np.isin(self.example_index, example_ids))


@dataclass
class SplitData:
    """The examples of one split (gold labels for scoring) and their features."""

    task: TaskSpec
    split: str
    examples: list[Example]
    features: TaskFeatures
    rows: np.ndarray  # feature rows in use (all rows, or those of the sampled examples)

    @property
    def num_examples(self) -> int:
        return len(np.unique(self.features.example_index[self.rows]))


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's complete definition (vocabulary, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; transfer needs one (word alignment)")
    definition = json.loads(backend.to_str())
    # Truncation and padding are call-time state that the tokenizer keeps from its last call, not part of it.
    definition.pop("truncation", None)
    definition.pop("padding", None)
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


def _cache_key(task: TaskSpec, path: Path, tokenizer, max_length: int) -> str:
    key = {
        "version": FEATURE_VERSION,
        "file": file_fingerprint(path),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "kind": task.kind,
        "reader": task.reader,
        "labels": task.labels,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _tokenize_sequences(examples: list[Example], task: TaskSpec, tokenizer, max_length: int) -> TaskFeatures:
    ops = kind_ops(task)
    text_b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    encoded = tokenizer(
        [ex.text_a for ex in examples], text_b, truncation="longest_first", max_length=max_length,
        return_token_type_ids=True, return_attention_mask=False,
    )
    n = len(examples)
    return TaskFeatures(
        task_name=task.name,
        input_ids=[np.asarray(ids, dtype=np.int32) for ids in encoded["input_ids"]],
        token_type_ids=[np.asarray(ids, dtype=np.int8) for ids in encoded["token_type_ids"]],
        targets=[ops.encode(ex.label, task) for ex in examples],
        example_index=np.arange(n, dtype=np.int64),
        word_offset=np.zeros(n, dtype=np.int64),
    )


def _tagging_chunks(examples: list[Example], task: TaskSpec) -> list[tuple[int, int, int]]:
    """(example, first word, end word) of every sub-sentence."""
    chunks = []
    for i, ex in enumerate(examples):
        for start, end in split_long_sentence(ex.text_a, ex.label, max_words=MAX_WORDS, outside=task.negative_label):
            chunks.append((i, start, end))
    return chunks


def _tokenize_tagging(examples: list[Example], task: TaskSpec, tokenizer, max_length: int) -> TaskFeatures:
    ops = kind_ops(task)
    chunks = _tagging_chunks(examples, task)
    encoded = tokenizer(
        [list(examples[i].text_a[s:e]) for i, s, e in chunks], is_split_into_words=True, truncation=True,
        max_length=max_length, return_token_type_ids=True, return_attention_mask=False,
    )
    targets, starts, truncated = [], [], 0
    for row, (i, s, e) in enumerate(chunks):
        tag_ids = ops.encode(examples[i].label[s:e], task)
        word_ids = encoded.word_ids(row)
        target = np.full(len(word_ids), IGNORE_INDEX, dtype=np.int64)
        first = [pos for pos, w in enumerate(word_ids) if w is not None and (pos == 0 or word_ids[pos - 1] != w)]
        for pos in first:
            target[pos] = tag_ids[word_ids[pos]]
        truncated += (e - s) - len(first)
        targets.append(target)
        starts.append(np.asarray(first, dtype=np.int32))
    if truncated:
        logger.warning("%s: %d words fell beyond max_length=%d; they are scored as %r", task.name, truncated,
                       max_length, task.negative_label)
    return TaskFeatures(
        task_name=task.name,
        input_ids=[np.asarray(ids, dtype=np.int32) for ids in encoded["input_ids"]],
        token_type_ids=[np.asarray(ids, dtype=np.int8) for ids in encoded["token_type_ids"]],
        targets=targets,
        example_index=np.asarray([c[0] for c in chunks], dtype=np.int64),
        word_offset=np.asarray([c[1] for c in chunks], dtype=np.int64),
        word_starts=starts,
        truncated_words=truncated,
    )


def build_features(examples: list[Example], task: TaskSpec, tokenizer, max_length: int) -> TaskFeatures:
    """Tokenise a split (no cache)."""
    if kind_ops(task).token_level:
        return _tokenize_tagging(examples, task, tokenizer, max_length)
    return _tokenize_sequences(examples, task, tokenizer, max_length)


def _atomic_pickle(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_split(task: TaskSpec, split: str, path: Path, tokenizer, max_length: int, use_cache: bool = True
               ) -> tuple[list[Example], TaskFeatures, bool]:
    """Examples and features of one split, from the cache when possible; the bool says it was a cache hit."""
    target = cache_dir() / f"{task.name}-{split}-{_cache_key(task, path, tokenizer, max_length)}.pkl"
    if use_cache and target.is_file():
        with open(target, "rb") as handle:
            examples, features = pickle.load(handle)
        return examples, features, True
    examples = read_split(path, task)
    features = build_features(examples, task, tokenizer, max_length)
    if use_cache:
        _atomic_pickle((examples, features), target)
    return examples, features, False
