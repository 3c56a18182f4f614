"""The one in-memory record every reader produces and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass

Label = str | float | tuple[str, ...]


@dataclass(frozen=True)
class Example:
    """One labelled input of a task.

    * ``text_a``: the sentence (or premise / first sentence of a pair); for ``tagging`` tasks the tuple of words.
    * ``text_b``: the second member of a pair, else ``None``.
    * ``label``: ``classification`` -> label name; ``regression`` -> float; ``tagging`` -> one tag per word;
      ``multilabel`` -> the names of the labels that are on (possibly empty).
    * ``group``: the unit a metric pools over (HoC: the abstract's PMID), else ``None``.
    * ``line``: 1-based line of the source file where the example starts (for error messages).
    * ``cluster``: the document the unit comes from (ChemProt and HoC: the PMID; DDI: the document; NER: the
      document id column), so resampling can draw whole documents; ``None`` where units are independent.
    """

    uid: str
    text_a: str | tuple[str, ...]
    label: Label
    text_b: str | None = None
    group: str | None = None
    line: int = 0
    cluster: str | None = None
