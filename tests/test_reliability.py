"""The reliability script's judge: what counts as a clean refusal."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import reliability  # noqa: E402


def _case(**kwargs):
    return reliability.Case("data file", "x", "train", [], **kwargs)


def test_clean_refusal_names_file_and_line():
    case = _case(file="d/train.tsv", line=5)
    assert reliability.classify(case, 2, "error: d/train.tsv, line 5: bad\n", None)[0] == "refused cleanly"
    assert reliability.classify(case, 2, "error: d/train.tsv, line 1: bad\n", None)[0] == "refused, wrong place"
    assert reliability.classify(case, 2, "error: line 5: bad\n", None)[0] == "refused, wrong place"


def test_tracebacks_silence_and_other_outcomes():
    case = _case()
    assert reliability.classify(case, None, "", ValueError("boom"))[0] == "traceback"
    assert reliability.classify(case, 1, "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n", None)[0] == \
        "traceback"
    assert reliability.classify(case, 0, "", None)[0] == "accepted silently"
    assert reliability.classify(case, 2, "error: one\nerror: two\n", None)[0] == "other"
    assert reliability.classify(case, 1, "error: x\n", None)[0] == "other"
