"""Where the stores that tests read lie: the committed store (``results/``, what the figures are made of) and a
store written by an earlier release (``tests/fixtures/legacy-store``: one seed per domain, its runs made with the
profile of that release, DDI selected by micro-F1, prediction records without a cluster, affinity runs of the
first tracker). Tests of reading older stores use the second; it is never written to (tests copy it)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMITTED_STORE = REPO / "results"
LEGACY_STORE = Path(__file__).resolve().parent / "fixtures" / "legacy-store"
