"""What tables and figures share: number formats, captions, the wide model table, metric display names and the
networkx graphs of a setting (the measured transfer graph and the affinity preview graph).

Pure formatting of ``transfer.analysis.DomainAnalysis``; nothing here computes a statistic.
"""

from __future__ import annotations

import math

import networkx as nx
import pandas as pd

from transfer.analysis import MODEL_LABELS, MODEL_TYPES, AffinityPreview, DomainAnalysis
from transfer.scoring.metrics import display_name

NA = "n/a"
DELTA_DIGITS = 4


def metric_name(metric: str) -> str:
    """Display name of a metric ("" for none)."""
    return display_name(metric) if metric else ""


def model_label(model_type: str) -> str:
    """How tables and figures name a model type (the type itself where it has no label)."""
    return MODEL_LABELS.get(model_type, model_type)


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_score(value, digits: int = 3) -> str:
    return NA if is_missing(value) else f"{value:.{digits}f}"


def fmt_delta(value, typographic: bool = False) -> str:
    """A delta: signed, 4 decimals. ``typographic`` (figures): a true minus sign, and a delta that rounds to
    zero shown as 0.0000 without a sign."""
    if is_missing(value):
        return NA
    text = f"{value:+.{DELTA_DIGITS}f}"
    if not typographic:
        return text
    return f"{0:.{DELTA_DIGITS}f}" if float(text) == 0 else text.replace("-", "\u2212")


def fmt_p(value) -> str:
    if is_missing(value):
        return NA
    return f"{value:.1e}" if value < 0.0005 else f"{value:.3f}"  # 1/(n_boot+1) = 0.000999 shows as 0.001


def fmt_sci(value, digits: int = 3) -> str:
    """Signed scientific notation (Z is typically 1e-4 .. 1e-2)."""
    return NA if is_missing(value) else f"{value:+.{digits}e}"


def fmt_seconds(value) -> str:
    return NA if is_missing(value) else f"{value:,.0f} s" if value >= 100 else f"{value:.1f} s"


def fmt_share(hits: int, total: int, share) -> str:
    return NA if not total or is_missing(share) else f"{hits}/{total} = {share:.3f}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def affinity_caption(analysis: DomainAnalysis, short: bool = False) -> str:
    """Setting and measurement settings of the preview (one line; ``short``: without the probe batches)."""
    preview = analysis.affinity
    every = "/".join(map(str, sorted(set(preview.every))))
    batches = "/".join(map(str, sorted(set(preview.num_batches))))
    text = (f"domain {analysis.setting.domain}, model {analysis.setting.model}, profile {analysis.setting.profile}; "
            f"{plural(len(preview.run_ids), 'affinity run')} (seed{'s' if len(preview.seeds) > 1 else ''} "
            f"{', '.join(map(str, preview.seeds))}), affinity measured every {every} steps")
    return text if short else f"{text} on {batches} probe batch{'es' if batches != '1' else ''} per task"


def affinity_validation_text(preview: AffinityPreview) -> str:
    """Two lines: how well Z predicts the measured deltas, and what the preview cost."""
    v = preview.validation
    if v["n_edges"] == 0:
        agreement = ("validation n/a: every measured edge is n/a (untrained heads or missing predictions)"
                     if preview.has_grid else "validation n/a: no measured pairwise edge in the store to compare with")
    else:
        if is_missing(v["spearman_rho"]):  # p_method says why: "n/a (fewer than 3 edges)", "n/a (constant values)"
            rho = f"n/a (n = {v['n_edges']} edges: {v['p_method'].removeprefix('n/a (').rstrip(')')})"
        else:
            p_text = "" if is_missing(v["spearman_p"]) else f"{v['p_method']} p = {fmt_p(v['spearman_p'])}, "
            rho = f"{v['spearman_rho']:+.3f} ({p_text}n = {v['n_edges']} edges)"
        shares = fmt_share(v["n_sign_agree_significant"], v["n_significant"], v["sign_agreement_significant"])
        significant = f"on significant edges {shares}" if v["n_significant"] else "no significant (helps/hurts) edge"
        agreement = (f"Spearman ρ(Z, Δ) = {rho}; sign agreement "
                     f"{fmt_share(v['n_sign_agree'], v['n_edges'], v['sign_agreement'])}, {significant}")
    grid = (f"grid {fmt_seconds(v['grid_wall_s'])} ({plural(v['n_grid_runs'], 'single/pair run')}), ratio "
            f"{fmt_score(v['time_ratio'])}" if v["n_grid_runs"] else "no single/pair runs (ratio n/a)")
    overhead = (f"tracking overhead {fmt_score(v['tracking_overhead'])} × the plain all-task run"
                if not is_missing(v["tracking_overhead"]) else "tracking overhead n/a (no plain all-task run to match)")
    cost = (f"wall time: preview {fmt_seconds(v['preview_wall_s'])}, {grid}; {overhead}; tracker "
            f"{fmt_seconds(v['tracker_s'])} (+{fmt_score(v['tracker_overhead'])} over the run's own training)")
    return f"{agreement}\n{cost}"


def predictor_caption(preview: AffinityPreview) -> str:
    """One short line for figures: Z's (and M's) within-target agreement and top-1 against a random pick."""
    frame = preview.predictors.set_index("predictor")
    if preview.validation["n_edges"] == 0 or is_missing(frame.loc["z", "top1_accuracy"]):
        return "within-target check n/a (no compared edge)"
    parts = []
    for name, label in (("z", "Z"), ("z_marginal", "M")):
        row = frame.loc[name]
        if is_missing(row["top1_accuracy"]):
            parts.append(f"{label}: absent (stored before the marginal affinity existed)")
            continue
        parts.append(f"{label}: within-target ρ {row['within_rho']:+.2f} (block p {fmt_p(row['within_p'])}), top-1 "
                     f"{row['top1_accuracy']:.2f}")
    random = frame.loc["random"]
    return (f"{'; '.join(parts)}; a random pick: top-1 {random['top1_accuracy']:.2f} "
            f"({plural(int(random['top1_targets']), 'target')}, grid seeds per edge "
            f"{preview.validation['n_grid_seeds']})")


def predictor_summary(preview: AffinityPreview) -> str:
    """One line per the preview's predictors: within-target rho (one-sided block p), top-1 and regret, and the
    noise ceiling; predictors that are absent or undefined are named once."""
    v, frame = preview.validation, preview.predictors
    if v["n_edges"] == 0:
        return "predictors: n/a (no compared edge)"
    scored, absent = [], []
    for _, row in frame.iterrows():
        if is_missing(row["top1_accuracy"]):
            absent.append(str(row["predictor"]))
            continue
        within = "" if is_missing(row["within_rho"]) else f"within-t rho {row['within_rho']:+.2f}"
        p = "" if is_missing(row["within_p"]) else f" (p {fmt_p(row['within_p'])})"
        scored.append(f"{row['predictor']} {within}{p}, top-1 {row['top1_accuracy']:.2f}, regret {row['regret']:.4f}")
    ceiling = (f"reliability of delta {v['delta_reliability']:.2f}" if not is_missing(v["delta_reliability"])
               else f"reliability of delta {v['delta_reliability_method']}")
    targets = int(frame["top1_targets"].dropna().max()) if frame["top1_targets"].notna().any() else 0
    return (f"predictors over {v['n_edges']} edges, {plural(targets, 'target')} (grid seeds per edge "
            f"{v['n_grid_seeds']}, preview seeds {len(preview.run_ids)}): " + "; ".join(scored)
            + (f"; absent: {', '.join(absent)}" if absent else "") + f"; {ceiling}")


def setting_caption(analysis: DomainAnalysis) -> str:
    seeds = ", ".join(map(str, analysis.seeds)) or "none"
    return (f"domain {analysis.setting.domain}, model {analysis.setting.model}, profile {analysis.setting.profile}, "
            f"seeds {seeds}")


def model_seeds_text(analysis: DomainAnalysis) -> str | None:
    """Which seeds each model's scores are over ("Single-Task 13 14 15; MT-Refinement 13 14"), where the models
    differ in them; None where every model has the same seeds (the setting's caption says which)."""
    rows = analysis.models[(analysis.models["task"] != "Avg") & (analysis.models["n_seeds"] > 0)]
    per_model = {model_type: sorted({s for seeds in group["seeds"] for s in str(seeds).split()}, key=int)
                 for model_type, group in rows.groupby("model_type", sort=False)}
    if len({tuple(seeds) for seeds in per_model.values()}) <= 1:
        return None
    return "; ".join(f"{model_label(m)} {' '.join(seeds)}" for m, seeds in per_model.items())


def models_wide(models: pd.DataFrame, column: str = "mean") -> pd.DataFrame:
    """Rows: model types (the paper's three in its order, then any other in order of appearance); columns: tasks
    then Avg."""
    wide = models.pivot(index="model_type", columns="task", values=column)
    tasks, present = list(dict.fromkeys(models["task"])), list(dict.fromkeys(models["model_type"]))
    order = [m for m in MODEL_TYPES if m in present] + [m for m in present if m not in MODEL_TYPES]
    return wide.reindex(index=order, columns=tasks)


def _graphml_value(value):
    """GraphML takes str, int, float and bool; NaN stays a float (written as 'nan')."""
    if value is None:
        return ""
    if hasattr(value, "item"):
        value = value.item()
    return value


GRAPH_EDGE_KEYS = ("state", "reason", "delta", "seed_deltas", "se_seed", "se_test", "se", "ci_low", "ci_high", "p",
                   "p_adj", "p_equiv_adj", "mde", "n_seeds", "metric", "note")


def correction_label(analysis: DomainAnalysis) -> str:
    return {"holm": "Holm", "bh": "BH"}[analysis.options.correction]


def state_legend(analysis: DomainAnalysis) -> dict[str, str]:
    """The one wording of every evidence state (graph and heatmap legends, table captions)."""
    o = analysis.options
    test = "sign-flip p" if o.test == "sign-flip" else "p"
    adjusted = f"{correction_label(analysis)} {test} < {o.alpha:g}"
    return {
        "helps": f"helps: Δ > {o.margin:g}, {adjusted}",
        "hurts": f"hurts: Δ < −{o.margin:g}, {adjusted}",
        "equivalent": f"equivalent: |Δ| < {o.margin:g} (TOST, {correction_label(analysis)})",
        "inconclusive": "inconclusive: neither",
        "exploratory": f"exploratory: < {o.seeds_to_colour} seeds, not tested",
        "n/a": "n/a: runs missing or untrained",
    }


def state_rule_text(analysis: DomainAnalysis) -> str:
    """One sentence: how an edge gets its state (for captions)."""
    o = analysis.options
    test = ("exact sign-flip test over seeds (the test set held fixed)" if o.test == "sign-flip" else
            "Welch t test on the between-seed variance of the per-seed deltas / k plus the clustered test-set "
            "resampling variance of their mean")
    return (f"Test: {test}; p corrected over the tested edges ({correction_label(analysis)}). "
            + "; ".join(state_legend(analysis).values()) + ".")


def transfer_digraph(analysis: DomainAnalysis) -> nx.DiGraph:
    """Nodes = tasks (with their single-task score, and ``learned``: False where no single-task run passed the
    learning gate), edges s->t with the edge row's state, reason, delta, SEs, CI,
    p, adjusted p, MDE and seeds (``GRAPH_EDGE_KEYS``)."""
    o = analysis.options
    graph = nx.DiGraph(domain=analysis.setting.domain, model=analysis.setting.model,
                       profile=analysis.setting.profile, alpha=float(o.alpha), margin=float(o.margin),
                       min_seeds=int(o.seeds_to_colour), test=o.test, correction=o.correction,
                       n_boot=int(analysis.n_boot))
    single = analysis.models[analysis.models["model_type"] == "single"].set_index("task")["mean"]
    unlearned = analysis.unlearned
    for task in analysis.tasks:
        graph.add_node(task, label=task, single_score=float(single.get(task, math.nan)),
                       learned=task not in unlearned)
    for _, row in analysis.edges.iterrows():
        attributes = {key: _graphml_value(row[key]) for key in GRAPH_EDGE_KEYS}
        for key in ("note", "reason", "seed_deltas"):
            attributes[key] = str(attributes[key] or "")
        graph.add_edge(row["source"], row["target"], **attributes)
    return graph


def affinity_digraph(analysis: DomainAnalysis) -> nx.DiGraph:
    """Nodes = the preview's tasks; edges s->t with z, z_std, z_marginal, delta, value (what the figure draws: the
    marginal affinity M where recorded, else Z; graph attribute ``measure`` says which), colour = sign of value
    (green > 0, red < 0, grey = 0, missing: not measured) and measured_state = the measured edge's evidence state."""
    preview = analysis.affinity
    column = "z_marginal" if preview.marginal is not None else "z"
    graph = nx.DiGraph(domain=analysis.setting.domain, model=analysis.setting.model,
                       profile=analysis.setting.profile, preview=True, measure="M" if column == "z_marginal" else "Z")
    for task in preview.tasks:
        graph.add_node(task, label=task)
    for _, row in preview.edges.iterrows():
        value = float(row[column])
        colour = "missing" if math.isnan(value) else "green" if value > 0 else "red" if value < 0 else "grey"
        graph.add_edge(row["source"], row["target"], z=float(row["z"]), z_std=float(row["z_std"]),
                       z_marginal=float(row["z_marginal"]), value=value, delta=float(row["delta"]),
                       colour=colour, measured_state=str(row["state"]))
    return graph


