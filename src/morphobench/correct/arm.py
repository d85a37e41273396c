"""Chromosome-arm correction, proxbias ``arm_centering`` semantics (REFERENCE.md §3).

proxbias (``build_arm_centering_df`` + ``perform_arm_centering``): among genes that are NOT
expressed in the cell line (zFPKM < −3), take the mean embedding per chromosome arm; for arms with
MORE than ``min_genes`` (20) such genes (strict ``>``), subtract that mean from every gene on the
arm. Other arms, and genes without a known arm, are left unchanged (recorded in the log and in
``df.attrs['arm_centering']``).

Inputs: a gene-level profile table (one row per gene, ``gene_col``), a gene → arm table
(DataFrame with ``gene`` and ``arm`` columns, or a mapping/Series gene → arm), and the list of
unexpressed genes (e.g. ``zfpkm < -3`` from an expression table, see :func:`unexpressed_genes`).
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
                      threshold: float = -3.0) -> list[str]:
    """Genes with zFPKM strictly below ``threshold`` (proxbias ``subset_query='zfpkm <-3'``)."""
    for c in (gene_col, zfpkm_col):
        if c not in expression.columns:
            raise MorphobenchError(f"expression table: column {c!r} missing (have {list(expression.columns)})")
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
    """Mean feature vector of the unexpressed genes per arm, for arms with > ``min_genes`` of them
    (proxbias ``build_arm_centering_df``). Index: arm; columns: features."""
    feats = feature_columns(df)
    arms = df[gene_col].map(_arm_series(arm_table))
    unexp = df[gene_col].isin(set(unexpressed)) & arms.notna()
    sub = df.loc[unexp, feats]
    means = sub.groupby(arms[unexp]).mean()
    counts = arms[unexp].value_counts()
    keep = counts[counts > min_genes].index
    return means.loc[means.index.isin(keep)]


def arm_centering(df: pd.DataFrame, arm_table, unexpressed: Iterable[str], *, gene_col: str = "Metadata_Gene",
                  min_genes: int = 20, source: str = "profiles") -> pd.DataFrame:
    """Subtract each qualifying arm's unexpressed-gene mean from every gene on that arm."""
    if gene_col not in df.columns:
        raise MorphobenchError(f"{source}: column {gene_col!r} missing (arm correction works on gene-level profiles)")
    if df[gene_col].duplicated().any():
        raise MorphobenchError(f"{source}: {gene_col} has duplicates; arm correction needs one row per gene")
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
    n_no_arm = int(arms.isna().sum())
    info = {"arms_corrected": sorted(map(str, means.index)), "n_genes_corrected": int(corrected.sum()),
            "n_genes_without_arm": n_no_arm}
    log.info("%s: arm centering corrected %d gene(s) on %d arm(s); %d gene(s) without a known arm left unchanged",
             source, info["n_genes_corrected"], len(means), n_no_arm)
    out = df.copy()
    dtype = np.float32 if all(df[c].dtype == np.float32 for c in feats) else np.float64
    out[feats] = x.astype(dtype)
    out.attrs["arm_centering"] = info
    return out
