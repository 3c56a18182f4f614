"""Readers: turn a task's split files into ``Example`` records.

There is one reader per file format named in the task table's ``reader`` column (``ner``, ``relation``,
``sts``, ``nli``, ``hoc``); ``READERS`` maps each name to its function and ``read_split`` dispatches through it,
so code never branches on a task's name. The formats are BLUE's, as described in the data READMEs.

Every problem with a file raises ``DataFormatError``, whose message names the file, the 1-based line and what is
wrong, so a user with their own copy of a data set can fix it without reading this code. Files are decoded one
line at a time (a bad byte is reported on its own line), a UTF-8 byte-order mark is accepted, and a record never
spans lines: a stray double quote is an error on its line, never a reason to merge the rows that follow.

Each example carries its ``cluster``, the document it comes from (NER: the document id column; HoC: the PMID;
the other formats: the task's ``cluster_pattern`` on the example id), so resampling can draw whole documents;
``legacy_cluster`` derives the same value from a uid alone, for prediction files written before records had it.

``split_long_sentence`` (cutting long NER sentences only where no gold entity is cut) lives here because it is a
property of the tagging format; the feature builder calls it.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from transfer.data.examples import Example
from transfer.errors import UserError
from transfer.data.tasks import TaskSpec

logger = logging.getLogger(__name__)

Reader = Callable[[Path, TaskSpec], list[Example]]

RELATION_HEADER = ("index", "sentence", "label")
NLI_HEADER = ("index", "premise", "hypothesis", "label")
HOC_HEADER = ("labels", "sentence", "index")
STS_LAST_COLUMNS = ("sentence1", "sentence2", "score")
NER_COLUMNS = 4
NO_DOCID = "-"
REPEAT_MARK = "#"  # relation rows repeating an index get <index>#2, #3, ...
BOM = "\ufeff".encode("utf-8")


class DataFormatError(UserError, ValueError):
    """A data file does not have the expected format; the message names the file, the line and the problem."""

    def __init__(self, path: str | Path, line: int, problem: str) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{path}, line {line}: {problem}")

    def __reduce__(self):
        # Keep the error picklable, so it survives being raised inside a worker process.
        return (type(self), (self.path, self.line, self.problem))


def _show(row: Sequence[str]) -> str:
    return "<TAB>".join(row)


def _check_label(path: Path, line: int, label: str, allowed: Sequence[str]) -> None:
    if label not in allowed:
        raise DataFormatError(path, line, f"unknown label {label!r}; allowed labels: {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------------------------------
# Tables with a header row (relation, sts, nli, hoc)
# ---------------------------------------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of every physical line, decoded one line at a time.

    Decoding line by line (not in blocks) is what makes a bad byte's line number exact. A UTF-8 byte-order
    mark at the start of the file is dropped; line ends (``\\n`` or ``\\r\\n``) are stripped.
    """
    data = path.read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM):]
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()  # the file's final line end
    for number, raw in enumerate(pieces, start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFormatError(
                path, number, f"not valid UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}: "
                f"{exc.reason}); save the file as UTF-8"
            ) from None
        if "\r" in text:
            raise DataFormatError(path, number, "a carriage return inside the line; fields may not contain line breaks")
        yield number, text


def _split_line(path: Path, line: int, text: str, quoting: int) -> list[str]:
    """The tab-separated fields of one line; a record never continues on the next line.

    csv quoting is honoured within the line (BLUE's writer quotes a field that contains ``"``), but a field
    that opens a quote and does not close it on the same line is refused instead of swallowing the following
    rows, and so is a quoted field that hides a tab: BLUE's files have neither, so either one means the
    file was damaged or hand-edited.
    """
    if quoting == csv.QUOTE_NONE:
        return text.split("\t")
    try:
        fields = next(csv.reader([text], delimiter="\t", quoting=quoting, strict=True))
    except csv.Error as exc:
        raise DataFormatError(
            path, line, f"malformed double quotes ({exc}): a field that starts with \" must end with \" on the same "
            "line, with inner quotes doubled (\"\"); records may not span lines"
        ) from None
    except StopIteration:  # pragma: no cover - a non-blank line always gives a row
        return []
    for position, field in enumerate(fields, start=1):
        if "\t" in field:
            raise DataFormatError(path, line, f"field {position} contains a tab inside double quotes; fields may not "
                                  "contain tabs (check for a stray \")")
    return fields


def _csv_rows(path: Path, quoting: int) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` for every non-blank row of a tab-separated file."""
    for number, text in _lines(path):
        if text.strip():  # a blank line (e.g. a trailing one) carries no example
            yield number, _split_line(path, number, text, quoting)


def _table_rows(
    path: Path, header_ok: Callable[[list[str]], bool], expected: str, quoting: int = csv.QUOTE_MINIMAL
) -> Iterator[tuple[int, list[str]]]:
    """Data rows of a file with a header row; the header is checked, every row must have as many columns."""
    rows = _csv_rows(path, quoting)
    first = next(rows, None)
    if first is None:
        raise DataFormatError(path, 1, f"the file is empty: expected the header {expected} and then examples")
    line, header = first
    if not header_ok(header):
        raise DataFormatError(path, line, f"expected the header {expected}, found {_show(header)!r}")
    for line, row in rows:
        if len(row) != len(header):
            raise DataFormatError(path, line, f"expected {len(header)} tab-separated columns, found {len(row)}")
        yield line, row


def _fixed_header_rows(path: Path, header: tuple[str, ...], quoting: int = csv.QUOTE_MINIMAL):
    return _table_rows(path, lambda row: tuple(row) == header, repr(_show(header)), quoting)


def read_relation(path: Path, task: TaskSpec) -> list[Example]:
    """ChemProt / DDI / i2b2 layout: header ``index sentence label``, one row per entity pair.

    A pair with two gold labels appears as two rows with the same index. Uids must be unique within a split
    (predictions are keyed by uid), so the second row of an index gets ``<index>#2``, the third ``#3``, etc.
    """
    seen: Counter[str] = Counter()
    first: dict[str, tuple[int, str]] = {}
    examples = []
    for line, (index, sentence, label) in _fixed_header_rows(path, RELATION_HEADER):
        _check_label(path, line, label, task.labels)
        first_line, first_sentence = first.setdefault(index, (line, sentence))
        if sentence != first_sentence:  # a repeated index is another label of the same pair, never other text
            raise DataFormatError(path, line, f"index {index!r} repeats line {first_line} with a different sentence "
                                  "(a repeated index gives a second label to the same entity pair)")
        seen[index] += 1
        uid = index if seen[index] == 1 else f"{index}{REPEAT_MARK}{seen[index]}"
        examples.append(Example(uid=uid, text_a=sentence, label=label, line=line, cluster=_id_cluster(task, index)))
    return examples


def _parse_score(path: Path, line: int, field: str) -> float:
    try:
        score = float(field)
    except ValueError:
        raise DataFormatError(path, line, f"score {field!r} (last column) is not a number") from None
    if not math.isfinite(score):
        raise DataFormatError(path, line, f"score {field!r} (last column) is not a finite number")
    return score


def _sts_header_ok(header: list[str]) -> bool:
    return len(header) > 8 and tuple(header[-3:]) == STS_LAST_COLUMNS


def read_sts(path: Path, task: TaskSpec) -> list[Example]:
    """STS-B layout (BIOSSES, ClinicalSTS): more than 8 columns, the last three ``sentence1 sentence2 score``."""
    expected = "of more than 8 columns (STS-B layout) ending in 'sentence1<TAB>sentence2<TAB>score'"
    examples = []
    for line, row in _table_rows(path, _sts_header_ok, expected):
        score = _parse_score(path, line, row[-1])
        examples.append(Example(uid=row[0], text_a=row[-3], text_b=row[-2], label=score, line=line,
                                cluster=_id_cluster(task, row[0])))
    return examples


def read_nli(path: Path, task: TaskSpec) -> list[Example]:
    """MedNLI layout (BLUE's column order): header ``index premise hypothesis label``."""
    examples = []
    for line, (index, premise, hypothesis, label) in _fixed_header_rows(path, NLI_HEADER):
        _check_label(path, line, label, task.labels)
        examples.append(Example(uid=index, text_a=premise, text_b=hypothesis, label=label, line=line,
                                cluster=_id_cluster(task, index)))
    return examples


def _hoc_labels(path: Path, line: int, field: str, names: Sequence[str]) -> tuple[str, ...]:
    """``0_v,1_v,...`` (one entry per label column, in order, v in {0, 1}) -> the names whose v is 1."""
    entries = field.split(",")
    if len(entries) != len(names):
        problem = f"expected {len(names)} comma-separated label entries i_v, found {len(entries)}"
        raise DataFormatError(path, line, problem)
    active = []
    for position, entry in enumerate(entries):
        number, _, value = entry.partition("_")
        if number != str(position) or value not in ("0", "1"):
            raise DataFormatError(
                path, line, f"label entry {entry!r} at position {position}: expected '{position}_0' or '{position}_1'"
            )
        if value == "1":
            active.append(names[position])
    return tuple(active)


def read_hoc(path: Path, task: TaskSpec) -> list[Example]:
    """HoC layout: header ``labels sentence index``; one sentence per row, index ``PMID_s<i>``.

    The group is the PMID: HoC is scored per abstract, pooling the sentences' label sets.
    These files are plain tab-joined text, *not* csv-quoted (a sentence may start with a bare ``"``, e.g.
    ``" Reactive " or activated stroma ...``), so quote characters are read literally here.
    """
    examples = []
    for line, (field, sentence, index) in _fixed_header_rows(path, HOC_HEADER, quoting=csv.QUOTE_NONE):
        labels = _hoc_labels(path, line, field, task.labels)
        pmid, separator, _ = index.rpartition("_s")
        if not separator or not pmid:
            raise DataFormatError(path, line, f"index {index!r} is not of the form PMID_s<i>")
        examples.append(Example(uid=index, text_a=sentence, label=labels, group=pmid, line=line, cluster=pmid))
    return examples


# ---------------------------------------------------------------------------------------------------------------
# Token-per-line NER files
# ---------------------------------------------------------------------------------------------------------------


def _ner_sentences(path: Path) -> Iterator[list[tuple[int, list[str]]]]:
    """Groups of ``(line, columns)``, one group per sentence; a blank line ends a sentence.

    Lines are split on tabs with no CSV unquoting, as BLUE's and MT-BERT's loaders do: a double-quote token,
    which BLUE's csv writer wrote as four double quotes, stays that literal 4-character token.
    """
    sentence: list[tuple[int, list[str]]] = []
    for number, text in _lines(path):
        if not text.strip():
            if sentence:
                yield sentence
            sentence = []
            continue
        columns = text.split("\t")
        if len(columns) != NER_COLUMNS:
            raise DataFormatError(
                path, number, f"expected {NER_COLUMNS} tab-separated columns (token, docid or '-', "
                f"offset, label), found {len(columns)}"
            )
        sentence.append((number, columns))
    if sentence:  # the last sentence may lack its closing blank line
        yield sentence


def read_ner(path: Path, task: TaskSpec) -> list[Example]:
    """BLUE's NER layout: ``token docid-or-'-' offset label``, one token a line, blank line after a sentence.

    The document id sits in column 2 of a sentence's first token (``-`` elsewhere); a sentence whose first
    token has ``-`` continues the current document. The uid is ``<docid>.<offset of the first token>``.
    """
    examples = []
    docid: str | None = None
    for sentence in _ner_sentences(path):
        first_line, first = sentence[0]
        if first[1] != NO_DOCID:
            docid = first[1]
        if docid is None:
            raise DataFormatError(path, first_line, "the first sentence has no document id in column 2")
        for line, (_, _, offset, tag) in sentence:
            if not offset.isdigit():
                raise DataFormatError(path, line, f"offset {offset!r} (column 3) is not a non-negative integer")
            _check_label(path, line, tag, task.labels)
        words = tuple(columns[0] for _, columns in sentence)
        tags = tuple(columns[3] for _, columns in sentence)
        examples.append(Example(uid=f"{docid}.{first[2]}", text_a=words, label=tags, line=first_line, cluster=docid))
    return examples


def split_long_sentence(
    words: Sequence[str], tags: Sequence[str], max_words: int = 30, outside: str = "O", inside: str = "I"
) -> list[tuple[int, int]]:
    """Cut a tagged sentence into ``[start, end)`` spans of at most ``max_words`` words without cutting an entity.

    A cut may fall between words k-1 and k only if word k-1 is tagged ``outside`` and word k is not an
    ``inside`` tag (``I`` or ``I-<type>``), so every gold entity stays whole. Each span takes the furthest legal
    cut within ``max_words``; if there is none, the span grows to the next legal cut (or the sentence end).
    A sentence of at most ``max_words`` words is one span; an empty one gives no span.
    """
    if len(words) != len(tags):
        raise ValueError(f"{len(words)} words but {len(tags)} tags")
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    size = len(words)
    legal = [k for k in range(1, size) if tags[k - 1] == outside and not _is_inside(tags[k], inside)]
    spans = []
    start = 0
    while size - start > max_words:
        end = _next_cut(legal, start, start + max_words, size)
        spans.append((start, end))
        start = end
    if start < size:
        spans.append((start, size))
    return spans


def _is_inside(tag: str, inside: str) -> bool:
    return tag == inside or tag.startswith(inside + "-")


def _next_cut(legal: list[int], start: int, limit: int, size: int) -> int:
    """The furthest legal cut in ``(start, limit]``, else the nearest one after ``limit``, else ``size``."""
    best = None
    for cut in legal:
        if cut <= start:
            continue
        if cut > limit:
            return best if best is not None else cut
        best = cut
    return best if best is not None else size


# ---------------------------------------------------------------------------------------------------------------
# Clusters: the document a unit comes from
# ---------------------------------------------------------------------------------------------------------------


def _id_cluster(task: TaskSpec, index: str) -> str | None:
    """Group 1 of the task's ``cluster_pattern`` at the start of an example id; None without a pattern or match."""
    if task.cluster_pattern is None:
        return None
    found = _compiled(task.cluster_pattern).match(index)
    return found.group(1) if found else None


_PATTERNS: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    if pattern not in _PATTERNS:
        _PATTERNS[pattern] = re.compile(pattern)
    return _PATTERNS[pattern]


def legacy_cluster(task: TaskSpec, uid: str) -> str | None:
    """The cluster the reader gives the unit with id ``uid``, derived from the id alone.

    For prediction files written before records carried their cluster. NER uids are ``<docid>.<offset>``, HoC
    uids ``<PMID>_s<i>``; other formats apply the task's ``cluster_pattern`` to the id without its repeat mark.
    """
    if task.reader == "ner":
        docid, dot, offset = uid.rpartition(".")
        return docid if dot and offset.isdigit() else None
    if task.reader == "hoc":
        pmid, separator, _ = uid.rpartition("_s")
        return pmid if separator and pmid else None
    base, mark, count = uid.rpartition(REPEAT_MARK)
    index = base if mark and count.isdigit() else uid
    return _id_cluster(task, index)


def _warn_unclustered(path: Path, task: TaskSpec, examples: list[Example]) -> None:
    missing = sum(example.cluster is None for example in examples)
    if task.cluster_pattern is not None and missing:
        first = next(example for example in examples if example.cluster is None)
        logger.warning("%s: %d of %d example ids (first %r, line %d) do not match the task's cluster_pattern %r; "
                       "those units count as independent", path, missing, len(examples), first.uid, first.line,
                       task.cluster_pattern)


# ---------------------------------------------------------------------------------------------------------------
# Registry and entry points
# ---------------------------------------------------------------------------------------------------------------

READERS: dict[str, Reader] = {
    "ner": read_ner,
    "relation": read_relation,
    "sts": read_sts,
    "nli": read_nli,
    "hoc": read_hoc,
}


def _line_after_end(path: Path) -> int:
    return sum(1 for _ in _lines(path)) + 1


def _check_unique_uids(path: Path, examples: list[Example]) -> None:
    first_seen: dict[str, int] = {}
    for example in examples:
        if example.uid in first_seen:
            problem = f"duplicate example id {example.uid!r} (first seen on line {first_seen[example.uid]})"
            raise DataFormatError(path, example.line, problem)
        first_seen[example.uid] = example.line


def read_split(path: Path, task: TaskSpec) -> list[Example]:
    """All examples of one split file, read with the reader the task table names for this task."""
    path = Path(path)
    examples = READERS[task.reader](path, task)
    if not examples:
        raise DataFormatError(path, _line_after_end(path), "no examples in the file (it is empty or only a header)")
    _check_unique_uids(path, examples)
    _warn_unclustered(path, task, examples)
    logger.info("read %d examples of task %s from %s", len(examples), task.name, path)
    return examples


def load_task(task: TaskSpec, paths: dict[str, Path]) -> dict[str, list[Example]]:
    """Every split of a task, ``{split: examples}``; ``paths`` is one entry of ``transfer.data.tasks.locate_tasks``."""
    return {split: read_split(path, task) for split, path in paths.items()}
