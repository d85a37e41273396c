"""Evaluation stages: one function per results table, for one (dataset, method, correction).

Each writes a partial table under ``results/{dataset}/eval/{method}/{correction}/``; :func:`gather`
concatenates the partial tables of every dataset × method × correction into ``results/{table}.tsv``
(sorted, so the same inputs give byte-identical tables) with a provenance sidecar.

Tables (REFERENCE §4):
- ``known_relationships``: dataset, method, correction, source, n_genes, n_pairs, recall_5_95,
  recall_10_90 (+ n_pairs_gene_missing, skip_reason)
- ``recall_curve``: dataset, method, correction, source, percentile (1–20 %), recall
- ``stringdb_gene_sets``: StringDB recall at 5 % FPR within gene sets (MAE-CVPR Table 5)
- ``jump_retrieval``: dataset, method, correction, task, condition (one row per condition and a
  ``mean ± sd`` row, MAE-CVPR Table 4), negatives, n_groups, mAP, mAP_sd, fraction_retrieved,
  fraction_retrieved_sd, null_size, seed (+ mAP_sem, n_conditions, n_groups_evaluated,
  n_groups_skipped, skip_reason); per-group detail parquet per task
- ``cp_regression`` / ``cp_regression_summary``: R² per CellProfiler feature / median per category
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from morphobench.io import MorphobenchError, read_table, write_parquet, write_provenance, write_tsv

log = logging.getLogger("morphobench.evaluate")

KEY_COLS = ("dataset", "method", "correction")
#: MAE-CVPR Table 2's row order
CORRECTION_ORDER = ("none", "pca", "center_plate", "center_experiment", "standardize_plate",
                    "standardize_experiment", "pca_standardize_plate", "pca_standardize_experiment", "tvn")


def _keyed(df: pd.DataFrame, key: Mapping[str, str]) -> pd.DataFrame:
    out = df.copy()
    for i, k in enumerate(KEY_COLS):
        out.insert(i, k, key[k])
    return out


# ------------------------------------------------------------------------------------------
# known relationships
# ------------------------------------------------------------------------------------------
def gene_profiles(pert: pd.DataFrame, source: str, aggregation: str = "spherical_mean",
                  condition: Sequence[str] = ("Metadata_CellType", "Metadata_Modality", "Metadata_Timepoint"),
                  ) -> pd.DataFrame:
    """One row per CRISPR gene (``Metadata_Gene``) from a perturbation-level table: the CRISPR
    rows (not ORFs, not compounds); a gene with several perturbations (guides) is aggregated by
    gene ("aggregating them by gene", MAE-CVPR Table 3) with ``aggregation`` (the spherical mean
    of the guides' profiles by default). Genes in several conditions are an error (recall takes
    one map: select a condition first)."""
    from morphobench.correct.stage import crispr_rows
    from morphobench.data.aggregate import aggregate

    if "Metadata_Gene" not in pert.columns:
        raise MorphobenchError(f"{source}: no Metadata_Gene column; known-relationship recall needs gene profiles")
    genes = pert.loc[crispr_rows(pert)].reset_index(drop=True)
    if genes.empty:
        raise MorphobenchError(f"{source}: no CRISPR gene perturbations (PertType trt with Metadata_Gene)")
    varying = [c for c in condition if c in genes.columns and genes[c].nunique(dropna=False) > 1]
    if varying:
        raise MorphobenchError(f"{source}: the CRISPR profiles span several conditions ({varying}); known-relationship "
                               "recall needs one map per condition (select one condition's wells)")
    if genes["Metadata_Gene"].duplicated().any():
        n_rows, n_genes = len(genes), genes["Metadata_Gene"].nunique()
        genes = aggregate(genes, ["Metadata_Gene"], aggregation, source=f"{source} (guides → genes)")
        log.info("%s: %d CRISPR perturbations aggregated to %d genes (%s)", source, n_rows, n_genes, aggregation)
    return genes


SET_COLS = ["gene_set", "n_set_genes", "source", "n_genes", "n_pairs", "recall", "fpr", "null",
            "null_distribution_size", "n_set_genes_missing", "skip_reason"]


def known_relationships(pert_path: str | os.PathLike, annotations: Mapping[str, str | os.PathLike],
                        key: Mapping[str, str], out_known: str | os.PathLike, out_curve: str | os.PathLike,
                        out_sets: str | os.PathLike, gene_sets: Mapping[str, Sequence[str] | str] | None = None,
                        percentiles: Sequence[float] = tuple(p / 100 for p in range(1, 21)),
                        fpr: float = 0.05, gene_set_null: str = "unannotated", seed: int = 0,
                        aggregation: str = "spherical_mean") -> None:
    """Recall of annotated pairs (EFAAR semantics) per source, the recall curve, and StringDB
    recall at ``fpr`` within each gene set (a list of genes, a gene-set file, or ``"all"``: every
    gene of the map), the FPR taken over the set's non-annotated pairs (``gene_set_null``)."""
    from morphobench.evaluate.recall import known_relationship_recall, recall_curve, recall_within_gene_set
    from morphobench.resources import load_annotation, resolve_gene_set

    pert = read_table(pert_path, what="perturbation profiles")
    from morphobench.correct.stage import crispr_rows

    if "Metadata_Gene" not in pert.columns or not crispr_rows(pert).any():
        # a screen without gene perturbations (e.g. compounds only) has no relationships to recall:
        # one row per source says so, instead of the dataset vanishing from the table
        reason = "no CRISPR gene perturbations in the plate map"
        log.info("%s: %s; known-relationship recall skipped", pert_path, reason)
        cols = ["source", "n_genes", "n_pairs", "recall_5_95", "recall_10_90", "n_pairs_gene_missing", "skip_reason"]
        tab = pd.DataFrame([{"source": s, "n_genes": 0, "n_pairs": 0, "recall_5_95": np.nan, "recall_10_90": np.nan,
                             "n_pairs_gene_missing": 0, "skip_reason": reason} for s in annotations], columns=cols)
        write_tsv(_keyed(tab, key), out_known)
        write_tsv(_keyed(pd.DataFrame(columns=["source", "percentile", "recall"]), key), out_curve)
        write_tsv(_keyed(pd.DataFrame(columns=SET_COLS), key), out_sets)
        return
    genes = gene_profiles(pert, str(pert_path), aggregation=aggregation)
    rels = {src: load_annotation(path, None) for src, path in annotations.items()}
    tab = known_relationship_recall(genes, rels, threshold_pairs=[(0.05, 0.95), (0.10, 0.90)], seed=seed,
                                    source=str(pert_path))
    tab = tab.rename(columns={"recall_0.05_0.95": "recall_5_95", "recall_0.1_0.9": "recall_10_90",
                              "n_pairs_used": "n_pairs"})
    tab["n_genes"] = len(genes)
    cols = ["source", "n_genes", "n_pairs", "recall_5_95", "recall_10_90", "n_pairs_gene_missing", "skip_reason"]
    write_tsv(_keyed(tab[cols], key), out_known)
    curve = recall_curve(genes, rels, percentiles=percentiles, seed=seed, source=str(pert_path))
    write_tsv(_keyed(curve[["source", "percentile", "recall"]], key), out_curve)
    rows = []
    if "StringDB" in rels:
        for name, members in (gene_sets or {}).items():
            members = resolve_gene_set(members, genes["Metadata_Gene"].tolist())
            t = recall_within_gene_set(genes, {"StringDB": rels["StringDB"]}, members, fpr=fpr, null=gene_set_null,
                                       seed=seed, source=str(pert_path))
            t = t.rename(columns={"n_pairs_used": "n_pairs", f"recall_top_{fpr}": "recall"})
            t.insert(0, "gene_set", name)
            t.insert(1, "n_set_genes", len(set(members)))
            rows.append(t[SET_COLS])
    sets = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=SET_COLS)
    write_tsv(_keyed(sets, key), out_sets)


# ------------------------------------------------------------------------------------------
# retrieval
# ------------------------------------------------------------------------------------------
def retrieval_stage(well_path: str | os.PathLike, pert_path: str | os.PathLike, key: Mapping[str, str],
                    tasks: Sequence[str], out_summary: str | os.PathLike, detail_dir: str | os.PathLike,
                    null_size: int = 10000, seed: int = 0, threshold: float = 0.05,
                    on_missing_negcon: str = "error", negatives: str = "controls",
                    condition: Sequence[str] = ("Metadata_CellType", "Metadata_Modality", "Metadata_Timepoint"),
                    cross_condition: Sequence[str] = ("Metadata_CellType",)) -> None:
    """JUMP retrieval tasks per condition (:mod:`morphobench.evaluate.retrieval`): the summary
    table (one row per task × condition + a ``mean ± sd`` row per task) and one per-group detail
    parquet per task."""
    from morphobench.evaluate.retrieval import retrieval_table

    well = read_table(well_path, what="well profiles")
    pert = read_table(pert_path, what="perturbation profiles")
    tab, details = retrieval_table(well, pert, tasks, condition=condition, cross_condition=cross_condition,
                                   negatives=negatives, null_size=null_size, seed=seed, threshold=threshold,
                                   on_missing_negcon=on_missing_negcon, source=str(well_path))
    detail_dir = Path(detail_dir)
    for task in tasks:
        write_parquet(_keyed(details[task].assign(task=task), key), detail_dir / f"{task}.parquet")
    tab.insert(tab.columns.get_loc("skip_reason"), "null_size", null_size)
    tab.insert(tab.columns.get_loc("skip_reason"), "seed", seed)
    write_tsv(_keyed(tab, key), out_summary)


# ------------------------------------------------------------------------------------------
# CellProfiler-feature regression
# ------------------------------------------------------------------------------------------
def cp_split_stage(cp_well_path: str | os.PathLike, out: str | os.PathLike, heldout_fraction: float,
                   seed: int, holdout: str = "experiment") -> None:
    """The saved train/test table of the CellProfiler regression (experiments or plates held out)."""
    from morphobench.evaluate.cp_regression import make_split

    wells = read_table(cp_well_path, what="CellProfiler well profiles")
    cols = [c for c in ("Metadata_Batch", "Metadata_Plate") if c in wells.columns]
    write_tsv(make_split(wells[cols], holdout, heldout_fraction, seed), out)


def cp_regression_stage(emb_well_path: str | os.PathLike, cp_well_path: str | os.PathLike,
                        split_path: str | os.PathLike, key: Mapping[str, str],
                        out: str | os.PathLike, model: str = "ols",
                        categories: Sequence[str] | None = None,
                        target_normalization: str = "standardize_plate") -> None:
    """R² per CellProfiler target feature (``categories``; default the paper's five). The targets
    are the well-level CellProfiler features normalized per plate on their negative controls
    (``target_normalization``: ``standardize_plate`` (default), ``center_plate`` or ``none``) —
    the paper is silent; without it the held-out experiment's batch offsets dominate R²."""
    from morphobench.correct.methods import apply_correction
    from morphobench.evaluate.cp_regression import PAPER_CATEGORIES, cp_regression

    if target_normalization not in ("standardize_plate", "center_plate", "none"):
        raise MorphobenchError("cp_regression.target_normalization must be standardize_plate | center_plate | none, "
                               f"got {target_normalization!r}")
    emb = read_table(emb_well_path, what="embedding well profiles")
    cp = read_table(cp_well_path, what="CellProfiler well profiles")
    if target_normalization != "none":
        cp = apply_correction(cp, target_normalization, source=f"{cp_well_path} (targets)")
    split = read_table(split_path, what="plate split")
    keep_meta = ["Metadata_Plate", "Metadata_Well"]
    emb = emb[keep_meta + [c for c in emb.columns if not c.startswith("Metadata_")]]
    cp = cp[keep_meta + [c for c in cp.columns if not c.startswith("Metadata_")]]
    res = cp_regression(emb, cp, split, model=model,
                        categories=PAPER_CATEGORIES if categories is None else categories)
    write_tsv(_keyed(res, key), out)


# ------------------------------------------------------------------------------------------
# gathering
# ------------------------------------------------------------------------------------------
def gather(parts: Sequence[str | os.PathLike], out: str | os.PathLike, config_digest: str | None = None,
           sort_by: Sequence[str] | None = None, methods: Mapping | None = None) -> pd.DataFrame:
    """Concatenate partial TSV tables (sorted by the key columns) + provenance sidecar."""
    frames = [read_table(p, what="partial results table") for p in parts]
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        raise MorphobenchError(f"gather {out}: no partial tables")
    tab = pd.concat(frames, ignore_index=True)
    by = [c for c in (sort_by or KEY_COLS) if c in tab.columns]
    tab = tab.sort_values(by, kind="stable").reset_index(drop=True)
    write_tsv(tab, out)
    write_provenance(out, config_digest=config_digest, methods=methods)
    return tab


def cp_regression_summary(per_feature_path: str | os.PathLike, out: str | os.PathLike,
                          config_digest: str | None = None, methods: Mapping | None = None) -> None:
    from morphobench.evaluate.cp_regression import summarize

    tab = read_table(per_feature_path, what="CellProfiler regression table")
    write_tsv(summarize(tab, by=list(KEY_COLS)), out)
    write_provenance(out, config_digest=config_digest, methods=methods)


def batch_correction_table(known_path: str | os.PathLike, method: str, out: str | os.PathLike,
                           corrections: Sequence[str] | None = None,
                           skipped: Mapping[str, Mapping[str, str]] | None = None,
                           config_digest: str | None = None, methods: Mapping | None = None) -> pd.DataFrame:
    """MAE-CVPR Table 2 layout: one row per dataset × correction of ``method`` with the recall
    (top and bottom 5 %) of each source as columns ``recall_5_95_<source>``.

    Rows follow the paper's order (none, PCA, center plate, center experiment, standardize plate,
    standardize experiment, PCA+standardize plate, PCA+standardize experiment, TVN), first every
    correction without, then with the chromosome-arm correction (the paper's TVN row is its Table 3
    protocol, TVN + arm). ``corrections`` (default: those in the table) selects rows;
    ``skipped`` ({dataset: {correction: reason}}) adds recorded rows for corrections that were not
    run (e.g. ``+arm`` without an expression table), with NaN recall and the reason.
    """
    from morphobench.correct.stage import parse_correction

    tab = read_table(known_path, what="known relationships table")
    sub = tab[tab["method"] == method]
    if sub.empty:
        raise MorphobenchError(f"batch-correction table: method {method!r} not in {known_path} "
                               f"(methods: {sorted(tab['method'].unique())})")
    sources = list(dict.fromkeys(sub["source"]))
    wide = sub.pivot_table(index=["dataset", "correction"], columns="source", values="recall_5_95",
                           aggfunc="first", dropna=False)
    wide = wide.reindex(columns=sources)
    wide.columns = [f"recall_5_95_{c}" for c in wide.columns]
    n_genes = sub.groupby(["dataset", "correction"])["n_genes"].first()
    wide = wide.join(n_genes).reset_index()
    wide["skip_reason"] = ""
    extra = [{"dataset": d, "correction": c, "skip_reason": why}
             for d, per in (skipped or {}).items() for c, why in per.items()]
    if extra:
        wide = pd.concat([wide, pd.DataFrame(extra)], ignore_index=True)
    if corrections is not None:
        wide = wide[wide["correction"].isin(list(corrections))]
    order = {c: i for i, c in enumerate(CORRECTION_ORDER)}
    parsed = [parse_correction(c) for c in wide["correction"]]
    wide["base_correction"] = [b for b, _ in parsed]
    wide["arm"] = [a for _, a in parsed]
    wide["_k"] = [order[b] + (len(order) if a else 0) for b, a in parsed]
    wide = wide.sort_values(["dataset", "_k"], kind="stable").drop(columns="_k").reset_index(drop=True)
    wide.insert(1, "method", method)
    wide.insert(2, "row", wide.groupby("dataset").cumcount() + 1)
    cols = ["dataset", "method", "row", "correction", "base_correction", "arm", "n_genes"]
    wide = wide[cols + [c for c in wide.columns if c.startswith("recall_5_95_")] + ["skip_reason"]]
    write_tsv(wide, out)
    write_provenance(out, config_digest=config_digest, methods=methods)
    return wide
