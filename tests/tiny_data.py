"""A miniature copy of the shared data layout (first few examples of each split), made at test time.

Nothing here is committed: the files are cut from ``$TRANSFER_DATA_DIR`` (the shared BLUE data) into a
temporary folder, so tests run on real formats while staying fast.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("TRANSFER_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
HEADERLESS = {"bc5cdr-chemical", "bc5cdr-disease", "shareclefe"}  # NER files: sentences, no header


def _head_ner(src: Path, dest: Path, sentences: int) -> None:
    out, seen = [], 0
    with open(src, encoding="utf-8") as handle:
        for line in handle:
            out.append(line)
            if not line.strip():
                seen += 1
                if seen == sentences:
                    break
    dest.write_text("".join(out), encoding="utf-8")


def _head_table(src: Path, dest: Path, rows: int, stride: int) -> None:
    with open(src, encoding="utf-8") as handle:
        lines = handle.readlines()
    body = lines[1:][::stride][:rows]  # a stride spreads the sample over the file, so several labels occur
    dest.write_text(lines[0] + "".join(body), encoding="utf-8")


def make_tiny_data_dir(dest: Path, examples: int = 24) -> Path:
    """``dest/{blue,clinical-public}/<task>/{train,dev,test}.tsv`` with ``examples`` examples per split."""
    for collection in ("blue", "clinical-public"):
        for task_dir in sorted((SHARED / collection).iterdir()):
            if not task_dir.is_dir():
                continue
            target = dest / collection / task_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for split in ("train", "dev", "test"):
                src = task_dir / f"{split}.tsv"
                if task_dir.name in HEADERLESS:
                    _head_ner(src, target / f"{split}.tsv", examples)
                else:
                    _head_table(src, target / f"{split}.tsv", examples, stride=7)
    return dest
