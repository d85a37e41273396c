"""Aggregation of profiles: cell/tile → well → perturbation (REFERENCE.md §3).

* cell/tile → well: ``mean`` (default) or ``median`` of the rows of each well;
* well → perturbation: ``mean``, or ``spherical_mean`` (MAE-CVPR §5.1): L2-normalize each
  replicate, average, renormalize to unit length;
* similarities are cosines with the origin at the negative-control mean:
  :func:`center_on_controls` subtracts the controls' mean (globally or per group) so that the
  written profiles are exactly the vectors the metrics take cosines of.

Aggregated tables keep the ``Metadata_*`` columns that are constant within every group (others are
dropped and logged) and add ``Metadata_Count`` (number of rows aggregated), unless the input
already has it (then counts are summed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from morphobench.data.tables import DEFAULT_CONTROL_QUERY, metadata_columns, validate_profiles
from morphobench.data.tables import control_mask as _control_mask
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.data.aggregate")

METHODS: tuple[str, ...] = ("mean", "median", "spherical_mean")
COUNT_COL = "Metadata_Count"

__all__ = ["METHODS", "COUNT_COL", "aggregate", "aggregate_wells", "aggregate_perturbations",
           "spherical_mean", "center_on_controls", "l2_normalize"]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row raises (no direction)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise MorphobenchError(f"{int((norms == 0).sum())} all-zero profile(s) cannot be L2-normalized")
    return x / norms


def spherical_mean(x: np.ndarray) -> np.ndarray:
    """Normalize each row, average, renormalize (a zero mean direction raises)."""
    m = l2_normalize(np.asarray(x, dtype=np.float64)).mean(axis=0, keepdims=True)
    return l2_normalize(m)[0]


def aggregate(df: pd.DataFrame, by: Sequence[str], method: str = "mean", *,
              nan: str = "raise", count_col: str = COUNT_COL, source: str = "profiles") -> pd.DataFrame:
    """One row per unique ``by`` combination: features aggregated by ``method``; metadata columns
    constant within every group kept; ``count_col`` (rows aggregated) added. Rows sorted by ``by``.

    ``nan="raise"`` (profiles) refuses NaN/inf features, naming the column; ``nan="omit"``
    (object-level CellProfiler measurements, where e.g. a correlation can be undefined) ignores
    non-finite values per feature and group, as pandas/pycytominer do (a group without any finite
    value gives NaN)."""
    if nan not in ("raise", "omit"):
        raise MorphobenchError(f"aggregate: nan must be 'raise' or 'omit', got {nan!r}")
    if method not in METHODS:
        raise MorphobenchError(f"unknown aggregation {method!r}; choose from {list(METHODS)}")
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise MorphobenchError(f"{source}: aggregation column(s) {missing} missing")
    nulls = [c for c in by if df[c].isna().any()]
    if nulls:
        raise MorphobenchError(f"{source}: aggregation column(s) {nulls} have missing values")
    if nan == "raise":
        feats = validate_profiles(df, source)
    else:
        feats = [c for c in df.columns if not c.startswith("Metadata_")]
        nonnum = [c for c in feats if not pd.api.types.is_numeric_dtype(df[c])]
        if nonnum:
            raise MorphobenchError(f"{source}: non-numeric feature column(s) {nonnum[:5]}")
    df = df.reset_index(drop=True)
    codes, keys = pd.MultiIndex.from_frame(df[by]).factorize(sort=True)
    n_groups = len(keys)
    x = df[feats].to_numpy(dtype=np.float64, copy=True)
    if nan == "omit":
        x[~np.isfinite(x)] = np.nan
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if n_groups else np.zeros(0, np.int64)
    if n_groups == 0:
        agg = np.zeros((0, len(feats)))
    elif method == "mean" and nan == "omit":
        finite = ~np.isnan(x[order])
        with np.errstate(invalid="ignore", divide="ignore"):
            agg = (np.add.reduceat(np.where(finite, x[order], 0.0), starts, axis=0)
                   / np.add.reduceat(finite, starts, axis=0))
    elif method == "mean":
        agg = np.add.reduceat(x[order], starts, axis=0) / sizes[:, None]
    elif method == "spherical_mean" and nan == "omit":
        raise MorphobenchError(f"{source}: spherical_mean needs complete profiles (nan='raise')")
    elif method == "median":
        agg = pd.DataFrame(x).groupby(codes).median().to_numpy()
    else:  # spherical mean
        zero = np.linalg.norm(x, axis=1) == 0
        if zero.any():
            raise MorphobenchError(f"{source}: {int(zero.sum())} all-zero profile(s) have no direction for the "
                                   f"spherical mean, e.g. {df.loc[zero, by].head(3).to_dict('records')}")
        m = np.add.reduceat(l2_normalize(x)[order], starts, axis=0) / sizes[:, None]
        cancel = np.linalg.norm(m, axis=1) == 0
        if cancel.any():
            raise MorphobenchError(
                f"{source}: the unit vectors of {int(cancel.sum())} group(s) cancel exactly (their spherical mean "
                f"has no direction; e.g. a 1-D profile with as many positive as negative replicates): "
                f"{[dict(zip(by, k if isinstance(k, tuple) else (k,))) for k in keys[np.flatnonzero(cancel)[:3]]]}; "
                "use aggregate.perturbation: mean, or more features")
        agg = l2_normalize(m)
    # metadata constant within every group
    meta_cols = [c for c in metadata_columns(df) if c not in by and c != count_col]
    keep, dropped = [], []
    for c in meta_cols:
        per = df[c].groupby(codes).nunique(dropna=False)
        (keep if (per <= 1).all() else dropped).append(c)
    if dropped:
        log.info("%s: metadata column(s) %s vary within groups of %s; dropped", source, dropped, by)
    first = np.unique(codes, return_index=True)[1]
    out = pd.DataFrame({c: keys.get_level_values(i) for i, c in enumerate(by)})
    for c in keep:
        out[c] = df[c].to_numpy()[first]
    if count_col in df.columns:
        out[count_col] = df[count_col].groupby(codes).sum().to_numpy()
    else:
        out[count_col] = np.bincount(codes, minlength=n_groups).astype(np.int64)
    dtype = np.float32 if all(df[c].dtype == np.float32 for c in feats) else np.float64
    feat_df = pd.DataFrame(agg.astype(dtype), columns=feats)
    return pd.concat([out, feat_df], axis=1)


def aggregate_wells(df: pd.DataFrame, method: str = "mean", *,
                    keys: Sequence[str] = ("Metadata_Plate", "Metadata_Well"), nan: str = "raise",
                    count_col: str = COUNT_COL, source: str = "profiles") -> pd.DataFrame:
    """Cell/tile/site → well (``mean`` or ``median``): the one well aggregation of every method
    (embeddings, pixel statistics, CellProfiler objects with ``nan="omit"``)."""
    if method not in ("mean", "median"):
        raise MorphobenchError(f"well aggregation must be mean or median, got {method!r}")
    return aggregate(df, list(keys), method, nan=nan, count_col=count_col, source=source)


def aggregate_perturbations(df: pd.DataFrame, method: str = "mean", *,
                            pert_col: str = "Metadata_Perturbation", source: str = "profiles") -> pd.DataFrame:
    """Well → perturbation (``mean`` or ``spherical_mean``; ``median`` allowed)."""
    return aggregate(df, [pert_col], method, source=source)


def center_on_controls(df: pd.DataFrame, *, control_query: str | None = DEFAULT_CONTROL_QUERY,
                       control_mask: np.ndarray | None = None, by: str | Sequence[str] | None = None,
                       source: str = "profiles") -> pd.DataFrame:
    """Subtract the negative-control mean (over all rows, or per ``by`` group) from every row, so
    that cosines are taken with the origin at the control mean."""
    feats = validate_profiles(df, source)
    df = df.reset_index(drop=True)
    ctrl = _control_mask(df, control_query, control_mask, source=source)
    x = df[feats].to_numpy(dtype=np.float64, copy=True)
    if by is None:
        x = x - x[ctrl].mean(axis=0)
    else:
        by = [by] if isinstance(by, str) else list(by)
        codes = pd.MultiIndex.from_frame(df[by]).factorize()[0]
        n_ctrl = np.bincount(codes[ctrl], minlength=codes.max() + 1)
        if (n_ctrl == 0).any():
            bad = df.loc[np.isin(codes, np.flatnonzero(n_ctrl == 0)), by].drop_duplicates().head(5)
            raise MorphobenchError(f"{source}: group(s) without controls: {bad.to_dict('records')}")
        for g in range(codes.max() + 1):
            rows = codes == g
            x[rows] -= x[rows & ctrl].mean(axis=0)
    out = df.copy()
    dtype = np.float32 if all(df[c].dtype == np.float32 for c in feats) else np.float64
    out[feats] = x.astype(dtype)
    return out
