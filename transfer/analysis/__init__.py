"""Transfer analysis from the results store (no torch, no transformers).

    index.py    store -> settings -> roles -> seeds: which runs form which edge (the only reader of the store)
    stats.py    pure statistics: resampling counts, p-values, multiplicity corrections, rank correlation, the
                seed test (Welch t), the sign-flip test, power
    paired.py   predictions -> resampling units -> clusters -> the paired bootstrap of one edge
    evidence.py the learning gate, the provenance check and the evidence states of edges
    edges.py    the edge table of a setting: seed test, states, power plan, budget diagnostic
    models.py   the model table (paper Tables 2/3) and MT-Refinement / MT-Fine-Tune against single, tested
    driver.py   the driver over the store (``analyse_store``)
    preview.py  the look-ahead affinity preview against the measured edges
    predictors.py  rank agreement within targets (block permutation p), top-1 partner and regret, split-half
                reliability: how a predictor of transfer (Z, the marginal affinity, a baseline) is scored

The names below are the package's public interface; import them from ``transfer.analysis``.
"""

from transfer.analysis.driver import (DEFAULT_ALPHA, DEFAULT_N_BOOT, MODEL_LABELS, MODEL_TYPES, DomainAnalysis,
                                      analyse_store, auto_n_boot, resolve_n_boot)
from transfer.analysis.edges import DEFAULT_SEED, EDGE_COLUMNS, MIN_N_BOOT, edge_table, seed_plan
from transfer.analysis.evidence import (DEFAULT_MARGIN, DEFAULT_MIN_SEEDS, SIGNIFICANT, STATES, EvidenceOptions,
                                        GateOptions, ProvenanceError, edge_state)
from transfer.analysis.index import DomainRuns, RunInfo, Setting, index_runs, load_runs, missing_runs
from transfer.analysis.models import METHOD_COLUMNS, method_table, model_scores
from transfer.analysis.paired import (BootstrapResult, UnitData, bootstrap_edge, decomposed_score, unit_data,
                                      unit_statistics)
from transfer.analysis.preview import (AFFINITY_EDGE_COLUMNS, PREDICTOR_COLUMNS, PREDICTORS, VALIDATION_COLUMNS,
                                       AffinityPreview, affinity_preview, predictor_table, validate_affinity)
from transfer.analysis.stats import bootstrap_p_value, exact_spearman_p, holm, resample_counts, spearman

__all__ = [
    "AFFINITY_EDGE_COLUMNS", "DEFAULT_ALPHA", "DEFAULT_MARGIN", "DEFAULT_MIN_SEEDS", "DEFAULT_N_BOOT", "DEFAULT_SEED",
    "SIGNIFICANT", "STATES", "EvidenceOptions", "GateOptions", "ProvenanceError", "edge_state", "seed_plan",
    "EDGE_COLUMNS", "METHOD_COLUMNS", "MIN_N_BOOT", "MODEL_LABELS", "MODEL_TYPES", "VALIDATION_COLUMNS", "AffinityPreview",
    "PREDICTOR_COLUMNS", "PREDICTORS", "predictor_table",
    "BootstrapResult", "DomainAnalysis", "DomainRuns", "RunInfo", "Setting", "UnitData", "affinity_preview",
    "analyse_store", "auto_n_boot", "bootstrap_edge", "bootstrap_p_value", "decomposed_score",
    "edge_table", "exact_spearman_p", "holm", "index_runs", "load_runs", "method_table", "missing_runs", "model_scores",
    "resample_counts", "resolve_n_boot", "spearman", "unit_data", "unit_statistics", "validate_affinity",
]
