"""Chromosome-arm correction, proxbias ``arm_centering`` semantics (REFERENCE.md §3).

proxbias (``build_arm_centering_df`` + ``perform_arm_centering``): among genes that are NOT
expressed in the cell line (zFPKM < −3), take the mean embedding per chromosome arm; for arms with
MORE than ``min_genes`` (20) such genes (strict ``>``), subtract that mean from every gene on the
arm. Other arms, and genes without a known arm, are left unchanged (recorded in the log and in
``df.attrs['arm_centering']``).

The profiles may be gene-level (one row per gene) or well-level (several rows per gene: MAE-W §4
corrects the TVN-normalized wells, then takes the spherical mean per perturbation). Either way
the rule counts **genes**, not rows: an arm qualifies when more than ``min_genes`` distinct
unexpressed genes of the table lie on it (proxbias counts rows, which is the same for gene-level
tables; counting rows would let a few genes with many wells qualify an arm). The arm's mean is the
mean over the rows of those genes, as proxbias computes it (with equal replicate counts, the mean
of the genes' means).

Inputs: a profile table with a gene column (``gene_col``), a gene → arm table (DataFrame with
``gene`` and ``arm`` columns, or a mapping/Series gene → arm), and the list of unexpressed genes
(e.g. ``zfpkm < -3`` from an expression table, see :func:`unexpressed_genes`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from morphobench.data.tables import feature_columns
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.correct.arm")

__all__ = ["arm_centering", "arm_means", "unexpressed_genes"]


def unexpressed_genes(expression: pd.DataFrame, *, gene_col: str = "gene", zfpkm_col: str = "zfpkm",
                      threshold: float = -3.0, source: str = "expression table") -> list[str]:
    """Genes with zFPKM strictly below ``threshold`` (proxbias ``subset_query='zfpkm <-3'``)."""
    for c in (gene_col, zfpkm_col):
        if c not in expression.columns:
            raise MorphobenchError(f"{source}: column {c!r} missing (have {list(expression.columns)})")
    return expression.loc[expression[zfpkm_col] < threshold, gene_col].astype(str).tolist()


def _arm_series(arm_table, gene_col_in_table: str = "gene", arm_col: str = "arm") -> pd.Series:
    if isinstance(arm_table, pd.Series):
        s = arm_table
    elif isinstance(arm_table, Mapping):
        s = pd.Series(dict(arm_table))
    elif isinstance(arm_table, pd.DataFrame):
        cols = [c for c in (gene_col_in_table, arm_col) if c not in arm_table.columns]
        if cols:
            raise MorphobenchError(f"arm table: column(s) {cols} missing (have {list(arm_table.columns)})")
        s = arm_table.drop_duplicates(gene_col_in_table).set_index(gene_col_in_table)[arm_col]
    else:
        raise MorphobenchError("arm table must be a DataFrame (gene, arm), a Series or a mapping")
    return s.dropna()


def arm_means(df: pd.DataFrame, arm_table, unexpressed: Iterable[str], *, gene_col: str = "Metadata_Gene",
              min_genes: int = 20) -> pd.DataFrame:
    """Mean feature vector over the rows of the unexpressed genes of each arm, for arms with more
    than ``min_genes`` distinct unexpressed genes (proxbias ``build_arm_centering_df``, counting
    genes). Index: arm; columns: features; ``attrs['n_genes']``: genes per arm (all arms)."""
    feats = feature_columns(df)
    arms = df[gene_col].map(_arm_series(arm_table))
    unexp = df[gene_col].isin(set(unexpressed)) & arms.notna()
    means = df.loc[unexp, feats].groupby(arms[unexp]).mean()
    n_genes = df.loc[unexp, gene_col].groupby(arms[unexp]).nunique()
    keep = n_genes[n_genes > min_genes].index
    out = means.loc[means.index.isin(keep)]
    out.attrs["n_genes"] = {str(k): int(v) for k, v in n_genes.items()}
    return out


def arm_centering(df: pd.DataFrame, arm_table, unexpressed: Iterable[str], *, gene_col: str = "Metadata_Gene",
                  min_genes: int = 20, source: str = "profiles") -> pd.DataFrame:
    """Subtract each qualifying arm's unexpressed-gene mean from every row (gene or well) of a
    gene on that arm. Rows without a gene are not allowed here (pass the gene rows only)."""
    if gene_col not in df.columns:
        raise MorphobenchError(f"{source}: column {gene_col!r} missing (arm correction works on gene profiles)")
    if df[gene_col].isna().any():
        raise MorphobenchError(f"{source}: {int(df[gene_col].isna().sum())} row(s) without a {gene_col}; "
                               "arm correction applies to CRISPR gene rows only")
    df = df.reset_index(drop=True)
    feats = feature_columns(df)
    arm_of = _arm_series(arm_table)
    arms = df[gene_col].map(arm_of)
    means = arm_means(df, arm_of, unexpressed, gene_col=gene_col, min_genes=min_genes)
    x = df[feats].to_numpy(dtype=np.float64, copy=True)
    corrected = np.zeros(len(df), dtype=bool)
    for arm, mu in means.iterrows():
        rows = (arms == arm).to_numpy()
        x[rows] -= mu.to_numpy(dtype=np.float64)
        corrected |= rows
    no_arm = arms.isna().to_numpy()
    info = {"arms_corrected": sorted(map(str, means.index)),
            "n_genes_corrected": int(df.loc[corrected, gene_col].nunique()),
            "n_rows_corrected": int(corrected.sum()),
            "n_genes_without_arm": int(df.loc[no_arm, gene_col].nunique()),
            "unexpressed_genes_per_arm": means.attrs.get("n_genes", {})}
    log.info("%s: arm centering corrected %d gene(s) (%d row(s)) on %d arm(s) with > %d unexpressed genes; "
             "%d gene(s) without a known arm left unchanged", source, info["n_genes_corrected"],
             info["n_rows_corrected"], len(means), min_genes, info["n_genes_without_arm"])
    out = df.copy()
    dtype = np.float32 if all(df[c].dtype == np.float32 for c in feats) else np.float64
    out[feats] = x.astype(dtype)
    out.attrs["arm_centering"] = info
    return out
