"""Batch corrections of profile tables (REFERENCE.md §3; MAE-CVPR Table 2 variants).

Every correction takes a profile table (``Metadata_*`` + numeric features) and returns a table
with the same rows and metadata and corrected features. Controls are rows selected by
``control_query`` (default ``Metadata_PertType == "negcon"``) or an explicit boolean
``control_mask``. "experiment" means ``Metadata_Batch`` unless ``batch_col`` says otherwise.

Choices where the papers are silent (ours, configurable):

* **pca**: features standardized (mean 0, sd 1 over all rows; constant features get scale 1,
  as scikit-learn's ``StandardScaler``), then ``sklearn.decomposition.PCA`` fitted on all rows
  with ``svd_solver="full"`` (deterministic; the seed is passed as ``random_state`` and only
  matters for solvers that randomize), keeping all components unless ``pca_components`` (an int,
  or a variance fraction in (0, 1)) says otherwise — as EFAAR ``embed_by_pca``. Output columns
  ``PC1 … PCk``.
* **center_***: subtract the mean of the controls of the same plate / experiment.
* **standardize_***: subtract the controls' mean and divide by their standard deviation
  (population sd, ``ddof=0``, as ``StandardScaler``; a zero sd → 1).
* **pca_standardize_***: ``pca`` then ``standardize_*``.
* **tvn**: EFAAR v1.0 ``tvn_on_controls`` (4 steps): (1) standardize all rows with mean/sd of all
  control rows; (2) PCA with all components fitted on the controls (scikit-learn ``PCA()``
  defaults, as EFAAR, so signs and numbers match); (3) standardize again on the controls;
  (4) per experiment b: ``X_b ← X_b · (cov(controls_b) + 0.5·I)^(−1/2)`` (``ddof=1``). The inverse
  square root uses a symmetric eigendecomposition (EFAAR: ``scipy.linalg.fractional_matrix_power``;
  equal to ~1e-12). **Rank-deficient controls** (our choice): EFAAR keeps all
  ``min(n_controls, n_features)`` components; when there are no more control rows than features
  (e.g. ~1,400 CellProfiler features and a few dozen control wells) the centred controls have rank
  at most ``n_controls − 1``, so the trailing component(s) have (numerically) zero control variance
  and step 3 divides an arbitrary direction by ~1e-15, which then dominates every cosine. We drop
  the components whose control variance is below ``1e-10 ×`` the largest (logged); with
  full-rank controls nothing is dropped and the result equals EFAAR's. Note: with the 0.5·I
  regularization, the controls of batch b end with covariance ``C_b (C_b + 0.5 I)^−1``
  (eigenvalues λ/(λ+0.5)), not exactly I; ``tvn_reg=0`` gives whitening to I.
* **arm**: proxbias ``arm_centering`` (see :mod:`morphobench.correct.arm`).

A plate/experiment without controls raises :class:`MorphobenchError` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from morphobench.data.tables import DEFAULT_CONTROL_QUERY, control_mask, metadata_columns, validate_profiles
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.correct")

CORRECTIONS: tuple[str, ...] = (
    "none", "pca", "center_plate", "center_experiment", "standardize_plate", "standardize_experiment",
    "pca_standardize_plate", "pca_standardize_experiment", "tvn", "arm",
)
#: TVN: PCA components with control variance below this fraction of the largest are dropped.
RANK_TOL = 1e-10

__all__ = [
    "CORRECTIONS", "DEFAULT_CONTROL_QUERY", "apply_correction", "control_mask", "center_by",
    "standardize_by", "pca_transform", "tvn_on_controls", "inverse_sqrt_psd",
]


def _scale(sd: np.ndarray) -> np.ndarray:
    """StandardScaler's zero handling: a (near-)zero sd becomes 1."""
    sd = sd.copy()
    sd[sd < 10 * np.finfo(sd.dtype).eps] = 1.0
    return sd


def _groups(df: pd.DataFrame, col: str | None, source: str) -> np.ndarray:
    if col is None:
        return np.zeros(len(df), dtype=np.int64)
    if col not in df.columns:
        raise MorphobenchError(f"{source}: grouping column {col!r} missing")
    if df[col].isna().any():
        raise MorphobenchError(f"{source}: grouping column {col!r} has missing values")
    return pd.factorize(df[col], sort=True)[0]


def _check_groups_have_controls(df, col, codes, ctrl, source, need: int = 1):
    n_ctrl = np.bincount(codes[ctrl], minlength=codes.max() + 1)
    bad = np.flatnonzero(n_ctrl < need)
    if len(bad):
        names = pd.factorize(df[col], sort=True)[1][bad].tolist() if col else ["<all>"]
        raise MorphobenchError(f"{source}: {col or 'data'} value(s) {names[:10]} have fewer than {need} "
                               f"control row(s); cannot correct on controls")
    return n_ctrl


def center_by(x: np.ndarray, groups: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """Subtract, per group, the mean of that group's control rows."""
    out = np.empty_like(x, dtype=np.float64)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = x[rows] - x[rows & ctrl].mean(axis=0)
    return out


def standardize_by(x: np.ndarray, groups: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """Per group: (x − mean_ctrl) / sd_ctrl (``ddof=0``; zero sd → 1), as StandardScaler fitted
    on the group's controls."""
    out = np.empty_like(x, dtype=np.float64)
    for g in np.unique(groups):
        rows = groups == g
        c = x[rows & ctrl]
        out[rows] = (x[rows] - c.mean(axis=0)) / _scale(c.std(axis=0))
    return out


def pca_transform(x: np.ndarray, n_components: int | float | None = None, seed: int = 0) -> np.ndarray:
    """Standardize over all rows, then PCA fitted on all rows (``svd_solver='full'``)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(x)
    return PCA(n_components=n_components, svd_solver="full", random_state=seed).fit_transform(z)


def inverse_sqrt_psd(a: np.ndarray) -> np.ndarray:
    """``a^(−1/2)`` of a symmetric positive-definite matrix by eigendecomposition."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    if (w <= 0).any():
        raise MorphobenchError("matrix is not positive definite; cannot take its inverse square root")
    return (v / np.sqrt(w)) @ v.T


def tvn_on_controls(x: np.ndarray, ctrl: np.ndarray, batches: np.ndarray | None = None,
                    *, reg: float = 0.5) -> np.ndarray:
    """EFAAR v1.0 ``tvn_on_controls`` (see module docstring); ``batches``: codes or None."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float64)
    e = StandardScaler().fit(x[ctrl]).transform(x)
    pca = PCA().fit(e[ctrl])
    e = pca.transform(e)
    var = pca.explained_variance_
    keep = var > RANK_TOL * (var.max() if len(var) and var.max() > 0 else 1.0)
    if not keep.all():
        log.info("tvn: controls span %d of %d PCA components (%d control rows, %d features); "
                 "dropping %d with zero control variance", keep.sum(), len(keep), int(ctrl.sum()),
                 x.shape[1], int((~keep).sum()))
        e = e[:, keep]
    e = StandardScaler().fit(e[ctrl]).transform(e)
    if batches is not None:
        for b in np.unique(batches):
            rows = batches == b
            c = e[rows & ctrl]
            cov = np.cov(c, rowvar=False, ddof=1) + reg * np.eye(e.shape[1])
            e[rows] = e[rows] @ inverse_sqrt_psd(np.atleast_2d(cov))
    return e


def apply_correction(df: pd.DataFrame, name: str, *, control_query: str | None = DEFAULT_CONTROL_QUERY,
                     control_mask_: np.ndarray | None = None, plate_col: str = "Metadata_Plate",
                     batch_col: str = "Metadata_Batch", pca_components: int | float | None = None,
                     tvn_reg: float = 0.5, seed: int = 0, arm_table: pd.DataFrame | None = None,
                     unexpressed_genes: Sequence[str] | None = None, gene_col: str = "Metadata_Gene",
                     min_arm_genes: int = 20, source: str = "profiles") -> pd.DataFrame:
    """Apply the correction ``name`` (one of :data:`CORRECTIONS`) and return a new table.

    ``control_mask_`` (bool per row) overrides ``control_query``. ``batch_col`` is the
    "experiment" column (and TVN's batch). ``arm`` needs ``arm_table`` (gene → arm) and
    ``unexpressed_genes``. Output feature dtype: float32 when all input features are float32,
    else float64.
    """
    if name not in CORRECTIONS:
        raise MorphobenchError(f"unknown correction {name!r}; choose from {list(CORRECTIONS)}")
    feats = validate_profiles(df, source)
    df = df.reset_index(drop=True)
    meta = df[metadata_columns(df)]
    out_dtype = np.float32 if all(df[c].dtype == np.float32 for c in feats) else np.float64
    if name == "none":
        return df.copy()
    if name == "arm":
        from morphobench.correct.arm import arm_centering

        if arm_table is None or unexpressed_genes is None:
            raise MorphobenchError("correction 'arm' needs arm_table (gene → arm) and unexpressed_genes")
        return arm_centering(df, arm_table, unexpressed_genes, gene_col=gene_col, min_genes=min_arm_genes,
                             source=source)
    x = df[feats].to_numpy(dtype=np.float64)
    names = list(feats)
    if name.startswith("pca"):
        x = pca_transform(x, pca_components, seed)
        names = [f"PC{i + 1}" for i in range(x.shape[1])]
    if name != "pca":
        ctrl = control_mask(df, control_query, control_mask_, source=source)
        if name == "tvn":
            bcodes = None
            if batch_col:
                bcodes = _groups(df, batch_col, source)
                _check_groups_have_controls(df, batch_col, bcodes, ctrl, source, need=2)
            if ctrl.sum() < 2:
                raise MorphobenchError(f"{source}: TVN needs at least 2 control rows")
            x = tvn_on_controls(x, ctrl, bcodes, reg=tvn_reg)
            names = [f"TVN{i + 1}" for i in range(x.shape[1])]
        else:
            col = plate_col if name.endswith("_plate") else batch_col
            codes = _groups(df, col, source)
            _check_groups_have_controls(df, col, codes, ctrl, source)
            x = center_by(x, codes, ctrl) if name.startswith("center") else standardize_by(x, codes, ctrl)
    feat_df = pd.DataFrame(x.astype(out_dtype, copy=False), columns=names)
    return pd.concat([meta.reset_index(drop=True), feat_df], axis=1)
