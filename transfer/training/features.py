"""Examples -> token ids, cached on disk (batching is ``transfer.training.batches``).

Pairs are packed ``[CLS] a [SEP] b [SEP]`` and truncated longest-first to ``max_length``. Tagging sentences
longer than 30 words are cut into sub-sentences (only after an outside word), each word's tag sits on its first
wordpiece and every other position is ignored; each row records the sentence word number of every first piece,
so predictions go back to the right word even when a word has no pieces at all (a zero-width space, a soft
hyphen). Features are cached under ``$TRANSFER_CACHE_DIR`` (default ``~/.cache/transfer``), keyed by the split
file's content, the tokenizer's full definition and the tokenizers version, ``max_length``, the task's kind,
labels, negative label and cluster pattern, so a second run of the same task does not read or tokenise again.

The cache never unpickles: a cache file is one ``.npz`` of flat arrays (ragged rows as values + offsets), read
with ``allow_pickle=False``, whose ``meta`` array holds JSON: the format, the key, the task, the split and the
examples. Any problem loading it (damaged, truncated, another split's file, another format) is a warning; the
file is discarded and rebuilt. A failing write (a full disk) is a warning too: the run goes on without a cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.data.examples import Example
from transfer.data.files import cache_dir, file_fingerprint
from transfer.training.kinds import IGNORE_INDEX, kind_ops
from transfer.data.readers import read_split, split_long_sentence
from transfer.data.tasks import TaskSpec

logger = logging.getLogger(__name__)

FEATURE_VERSION = 2  # bump when the feature layout or tokenisation rules change
CACHE_FORMAT = "transfer-features"
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
    # tagging: the sentence word number of each entry of word_starts (a word without pieces has no entry)
    word_numbers: list[np.ndarray] = field(default_factory=list)
    pieceless_words: int = 0

    def __post_init__(self) -> None:
        if self.word_starts and not self.word_numbers:  # hand-made features: words are contiguous from the offset
            self.word_numbers = [np.arange(len(starts), dtype=np.int64) + int(offset)
                                 for starts, offset in zip(self.word_starts, self.word_offset)]

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


def _tokenizers_version() -> str:
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - transformers' fast tokenizers need it
        return "none"
    return tokenizers.__version__


def _cache_key(task: TaskSpec, path: Path, tokenizer, max_length: int) -> str:
    key = {
        "version": FEATURE_VERSION,
        "file": file_fingerprint(path),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "tokenizers": _tokenizers_version(),  # the same definition may tokenise differently in another release
        "max_length": max_length,
        "kind": task.kind,
        "reader": task.reader,
        "labels": task.labels,
        "negative_label": task.negative_label,  # decides where tagging sentences are cut
        "cluster_pattern": task.cluster_pattern,  # the examples' clusters are cached with them
        "max_words": MAX_WORDS,
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
    targets, starts, numbers = [], [], []
    truncated, pieceless, example_word = 0, 0, None
    for row, (i, s, e) in enumerate(chunks):
        tag_ids = ops.encode(examples[i].label[s:e], task)
        word_ids = encoded.word_ids(row)
        target = np.full(len(word_ids), IGNORE_INDEX, dtype=np.int64)
        first = [pos for pos, w in enumerate(word_ids) if w is not None and (pos == 0 or word_ids[pos - 1] != w)]
        for pos in first:
            target[pos] = tag_ids[word_ids[pos]]
        present = {word_ids[pos] for pos in first}
        for w in range(e - s):
            if w in present:
                continue
            if tokenizer.tokenize(examples[i].text_a[s + w]):  # it has pieces, so max_length cut it off
                truncated += 1
            else:
                pieceless += 1
                example_word = example_word or (examples[i].uid, s + w, examples[i].text_a[s + w])
        targets.append(target)
        starts.append(np.asarray(first, dtype=np.int32))
        numbers.append(np.asarray([s + word_ids[pos] for pos in first], dtype=np.int64))
    if truncated:
        logger.warning("%s: %d words fell beyond max_length=%d; they are scored as %r", task.name, truncated,
                       max_length, task.negative_label)
    if pieceless:
        uid, word, text = example_word
        logger.warning("%s: %d words have no word pieces (the tokenizer drops them entirely, e.g. word %d of %s, "
                       "%r: zero-width or combining characters, soft hyphens, empty tokens); the model never sees "
                       "them and they are scored as %r", task.name, pieceless, word, uid, text, task.negative_label)
    return TaskFeatures(
        task_name=task.name,
        input_ids=[np.asarray(ids, dtype=np.int32) for ids in encoded["input_ids"]],
        token_type_ids=[np.asarray(ids, dtype=np.int8) for ids in encoded["token_type_ids"]],
        targets=targets,
        example_index=np.asarray([c[0] for c in chunks], dtype=np.int64),
        word_offset=np.asarray([c[1] for c in chunks], dtype=np.int64),
        word_starts=starts,
        truncated_words=truncated,
        word_numbers=numbers,
        pieceless_words=pieceless,
    )


def build_features(examples: list[Example], task: TaskSpec, tokenizer, max_length: int) -> TaskFeatures:
    """Tokenise a split (no cache)."""
    if kind_ops(task).token_level:
        return _tokenize_tagging(examples, task, tokenizer, max_length)
    return _tokenize_sequences(examples, task, tokenizer, max_length)


# ----------------------------------------------------------------------------------------------- the cache


class CacheFileError(ValueError):
    """A cache file that cannot be used (damaged, foreign, or from another version); it is rebuilt."""


def _ragged(rows: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Rows of different lengths as one flat array and ``len(rows) + 1`` offsets."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=offsets[1:])
    flat = np.concatenate(rows).astype(dtype, copy=False) if rows else np.zeros(0, dtype=dtype)
    return flat, offsets


def _unragged(flat: np.ndarray, offsets: np.ndarray, rows: int) -> list[np.ndarray]:
    if offsets.ndim != 1 or len(offsets) != rows + 1 or offsets[0] != 0 or offsets[-1] != len(flat) \
            or (np.diff(offsets) < 0).any():
        raise CacheFileError("offsets do not fit their values")
    return np.split(flat, offsets[1:-1])


def _example_record(example: Example) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(example).items()}


def _example_from_record(record: dict) -> Example:
    if not isinstance(record, dict):
        raise CacheFileError("an example record is not an object")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in record.items()}
    return Example(**values)


def _features_arrays(features: TaskFeatures, task: TaskSpec) -> dict[str, np.ndarray]:
    arrays = {}
    arrays["input_ids"], arrays["row_offsets"] = _ragged(features.input_ids, np.int32)
    arrays["token_type_ids"], _ = _ragged(features.token_type_ids, np.int8)
    arrays["example_index"] = np.asarray(features.example_index, dtype=np.int64)
    arrays["word_offset"] = np.asarray(features.word_offset, dtype=np.int64)
    if kind_ops(task).token_level:
        arrays["targets"], _ = _ragged(features.targets, np.int64)  # one target per token, like input_ids
        arrays["word_starts"], arrays["word_offsets"] = _ragged(features.word_starts, np.int32)
        arrays["word_numbers"], _ = _ragged(features.word_numbers, np.int64)
    else:
        # float64 keeps each regression / multi-hot target exactly as build_features made it
        integer = np.issubdtype(kind_ops(task).target_dtype, np.integer)
        arrays["targets"] = np.asarray(features.targets, dtype=np.int64 if integer else np.float64)
    return arrays


_DTYPES = {"input_ids": np.int32, "row_offsets": np.int64, "token_type_ids": np.int8, "example_index": np.int64,
           "word_offset": np.int64, "word_starts": np.int32, "word_offsets": np.int64, "word_numbers": np.int64}


def _features_from_arrays(arrays, task: TaskSpec, meta: dict) -> TaskFeatures:
    for name, dtype in _DTYPES.items():
        if name in arrays and arrays[name].dtype != dtype:
            raise CacheFileError(f"array {name} is {arrays[name].dtype}, not {np.dtype(dtype)}")
    rows = int(meta["rows"])
    offsets = arrays["row_offsets"]
    input_ids = _unragged(arrays["input_ids"], offsets, rows)
    token_type_ids = _unragged(arrays["token_type_ids"], offsets, rows)
    example_index, word_offset = arrays["example_index"], arrays["word_offset"]
    if example_index.shape != (rows,) or word_offset.shape != (rows,):
        raise CacheFileError("row arrays have the wrong length")
    extra = {}
    if kind_ops(task).token_level:
        targets = _unragged(arrays["targets"], offsets, rows)
        starts = _unragged(arrays["word_starts"], arrays["word_offsets"], rows)
        numbers = _unragged(arrays["word_numbers"], arrays["word_offsets"], rows)
        if any(len(s) and (s.min() < 0 or s.max() >= len(ids)) for s, ids in zip(starts, input_ids)):
            raise CacheFileError("a word start lies outside its row")
        extra = {"word_starts": starts, "word_numbers": numbers, "truncated_words": int(meta["truncated_words"]),
                 "pieceless_words": int(meta["pieceless_words"])}
    else:
        values = arrays["targets"]
        if len(values) != rows:
            raise CacheFileError("targets have the wrong length")
        targets = values.tolist()  # Python ints / floats / lists, as build_features makes them
    return TaskFeatures(task_name=task.name, input_ids=input_ids, token_type_ids=token_type_ids, targets=targets,
                        example_index=example_index, word_offset=word_offset, **extra)


def _write_cache(path: Path, key: str, task: TaskSpec, split: str, examples: list[Example],
                 features: TaskFeatures) -> None:
    """Write the cache file atomically (temporary file, fsync, rename); a failure leaves no file behind."""
    meta = {"format": CACHE_FORMAT, "version": FEATURE_VERSION, "key": key, "task": task.name, "split": split,
            "rows": len(features), "truncated_words": features.truncated_words,
            "pieceless_words": features.pieceless_words, "examples": [_example_record(e) for e in examples]}
    arrays = _features_arrays(features, task)
    arrays["meta"] = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, key: str, task: TaskSpec, split: str) -> tuple[list[Example], TaskFeatures]:
    """The cached examples and features; ``CacheFileError`` (or any other error) when the file is not usable."""
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    if "meta" not in arrays or arrays["meta"].dtype != np.uint8:
        raise CacheFileError("no meta record")
    meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("version") != FEATURE_VERSION:
        raise CacheFileError("not a cache file of this version")
    found = (meta.get("key"), meta.get("task"), meta.get("split"))
    if found != (key, task.name, split):
        raise CacheFileError(f"it holds key {found[0]}, task {found[1]!r}, split {found[2]!r}, not key {key}, "
                             f"task {task.name!r}, split {split!r}")
    examples = [_example_from_record(record) for record in meta["examples"]]
    features = _features_from_arrays(arrays, task, meta)
    if not examples or int(features.example_index.max(initial=-1)) >= len(examples) \
            or int(features.example_index.min(initial=0)) < 0:
        raise CacheFileError("feature rows point at examples that are not there")
    for numbers, example in zip(features.word_numbers, features.example_index.tolist()):
        if len(numbers) and (numbers.min() < 0 or numbers.max() >= len(examples[example].text_a)):
            raise CacheFileError("a word number lies outside its sentence")
    return examples, features


def cache_path(task: TaskSpec, split: str, key: str) -> Path:
    """Where the cache file of one split lives (its name carries the key)."""
    return cache_dir() / f"{task.name}-{split}-{key}.npz"


def load_split(task: TaskSpec, split: str, path: Path, tokenizer, max_length: int, use_cache: bool = True
               ) -> tuple[list[Example], TaskFeatures, bool]:
    """Examples and features of one split, from the cache when possible; the bool says it was a cache hit."""
    key = _cache_key(task, path, tokenizer, max_length)
    target = cache_path(task, split, key)
    if use_cache and target.exists():
        try:
            examples, features = _read_cache(target, key, task, split)
            return examples, features, True
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, the remedy is to rebuild it
            logger.warning("feature cache %s is unusable (%s: %s); discarding and rebuilding it", target,
                           type(exc).__name__, exc)
            _discard(target)
    examples = read_split(path, task)
    features = build_features(examples, task, tokenizer, max_length)
    if use_cache:
        try:
            _write_cache(target, key, task, split, examples, features)
        except OSError as exc:
            logger.warning("could not write the feature cache %s (%s); continuing without it", target,
                           exc.strerror or exc)
    return examples, features, False


def _discard(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove the unusable feature cache %s (%s)", path, exc.strerror or exc)
