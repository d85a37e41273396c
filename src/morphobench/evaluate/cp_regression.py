"""CellProfiler-feature regression (MAE-CVPR §5.5, Fig. 6).

The paper: "linear regression to predict 955 CellProfiler features spanning area-shape, texture,
radial distribution, intensity, and neighbor categories", single-task, scored by the coefficient
of determination "from an independent experimental dataset". Our defaults follow it:

* targets: the well-level CellProfiler features of the categories ``categories`` (default the
  paper's five: AreaShape, Texture, RadialDistribution, Intensity, Neighbors); features of other
  categories are left out (counted in the log) and the number of targets is reported;
* model: ordinary least squares per feature (``model="ols"``; sklearn ``LinearRegression``, one
  least-squares solve shared by all targets, which is the same as one regression per feature;
  with more embedding dimensions than training wells it is the minimum-norm solution), or ridge
  with α chosen by efficient leave-one-out CV on the training wells only (``model="ridge"``,
  ``RidgeCV``, one α per feature; our option);
* split: whole experiments (``Metadata_Batch``) held out (``holdout="experiment"``, default), or
  plates within each experiment (``holdout="plate"``, our option). The split is a saved table so
  every method is scored on the same wells.

Choices where the paper is silent (documented, configurable): embeddings and targets are
standardized with training statistics (R² does not depend on it; OLS predictions neither); the
held-out experiments/plates are drawn with a seeded RNG (``max(1, round(fraction · n))``, at least
one left for training); ridge α grid ``logspace(-2, 5, 15)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from morphobench.data.tables import feature_columns, validate_profiles
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.evaluate.cp_regression")

CP_CATEGORIES = ("AreaShape", "Intensity", "Texture", "RadialDistribution", "Granularity",
                 "Correlation", "Neighbors", "Location")
#: MAE-CVPR §5.5: "area-shape, texture, radial distribution, intensity, and neighbor categories"
PAPER_CATEGORIES = ("AreaShape", "Texture", "RadialDistribution", "Intensity", "Neighbors")
MODELS = ("ols", "ridge")
HOLDOUTS = ("experiment", "plate")
DEFAULT_ALPHAS = tuple(np.logspace(-2, 5, 15))

log = logging.getLogger("morphobench.evaluate.cp_regression")


def feature_category(name: str) -> str:
    """``Cells_AreaShape_Area`` → ``AreaShape``; names outside the CellProfiler scheme → ``other``."""
    parts = name.split("_")
    if len(parts) >= 3 and parts[1] in CP_CATEGORIES:
        return parts[1]
    return "other"


def plate_split(plates: pd.DataFrame, heldout_fraction: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Assign plates to ``train`` / ``test``.

    ``plates``: one row per plate with ``Metadata_Plate`` and (optionally) ``Metadata_Batch``.
    Within each batch with ≥ 2 plates, ``max(1, round(fraction·n))`` plates are held out; if no
    batch has 2 plates, whole plates are held out across batches. At least one plate is always
    kept for training and one held out; fewer than 2 plates → error.
    """
    if "Metadata_Plate" not in plates.columns:
        raise MorphobenchError("plate_split: needs a Metadata_Plate column")
    df = plates.drop_duplicates("Metadata_Plate").sort_values("Metadata_Plate").reset_index(drop=True)
    if len(df) < 2:
        raise MorphobenchError(f"CellProfiler regression needs ≥ 2 plates to hold one out; got {len(df)}")
    if "Metadata_Batch" not in df.columns:
        df["Metadata_Batch"] = "all"
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for _, g in df.groupby("Metadata_Batch", sort=True):
        if len(g) >= 2:
            k = max(1, int(round(heldout_fraction * len(g))))
            k = min(k, len(g) - 1)
            test.update(rng.choice(g["Metadata_Plate"].to_numpy(), size=k, replace=False).tolist())
    if not test:
        k = min(max(1, int(round(heldout_fraction * len(df)))), len(df) - 1)
        test.update(rng.choice(df["Metadata_Plate"].to_numpy(), size=k, replace=False).tolist())
    df["split"] = np.where(df["Metadata_Plate"].isin(test), "test", "train")
    return df[["Metadata_Batch", "Metadata_Plate", "split"]]


def experiment_split(plates: pd.DataFrame, heldout_fraction: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Hold out whole experiments (``Metadata_Batch``): ``max(1, round(fraction · n))`` of the
    ``n`` experiments, at least one kept for training; fewer than 2 experiments → error."""
    for c in ("Metadata_Batch", "Metadata_Plate"):
        if c not in plates.columns:
            raise MorphobenchError(f"experiment split: needs a {c} column (have {list(plates.columns)})")
    df = plates.drop_duplicates("Metadata_Plate").sort_values("Metadata_Plate").reset_index(drop=True)
    if df["Metadata_Batch"].isna().any():
        raise MorphobenchError("experiment split: plates without a Metadata_Batch")
    batches = np.array(sorted(df["Metadata_Batch"].astype(str).unique()))
    if len(batches) < 2:
        raise MorphobenchError(f"CellProfiler regression on held-out experiments needs ≥ 2 experiments "
                               f"(Metadata_Batch); got {list(batches)}. Set evaluate.cp_regression.holdout: "
                               "plate to hold out plates instead")
    k = min(max(1, int(round(heldout_fraction * len(batches)))), len(batches) - 1)
    test = set(np.random.default_rng(seed).choice(batches, size=k, replace=False).tolist())
    df["split"] = np.where(df["Metadata_Batch"].astype(str).isin(test), "test", "train")
    return df[["Metadata_Batch", "Metadata_Plate", "split"]]


def make_split(plates: pd.DataFrame, holdout: str = "experiment", heldout_fraction: float = 0.25,
               seed: int = 0) -> pd.DataFrame:
    """The saved train/test table: whole experiments (default) or plates per experiment held out."""
    if holdout == "experiment":
        return experiment_split(plates, heldout_fraction, seed)
    if holdout == "plate":
        return plate_split(plates, heldout_fraction, seed)
    raise MorphobenchError(f"cp_regression.holdout must be one of {list(HOLDOUTS)}, got {holdout!r}")


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu = train.mean(0)
    sd = train.std(0)
    ok = sd > 0
    sd = np.where(ok, sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd, ok


def cp_regression(embeddings: pd.DataFrame, cp_features: pd.DataFrame, split: pd.DataFrame,
                  model: str = "ols", categories: Sequence[str] | None = PAPER_CATEGORIES,
                  alphas: Sequence[float] = DEFAULT_ALPHAS,
                  keys: Sequence[str] = ("Metadata_Plate", "Metadata_Well")) -> pd.DataFrame:
    """R² on the held-out wells of a linear regression embedding → each CellProfiler feature.

    ``categories``: the CellProfiler categories whose features are targets (None: every feature).
    Returns one row per target: ``feature, category, r2, alpha, n_train, n_test, n_dims,
    n_targets, model, status`` where status is ``ok`` or why the feature was not scored (constant
    on the training wells → R² undefined; recorded, not dropped).
    """
    from sklearn.linear_model import LinearRegression, RidgeCV
    from sklearn.metrics import r2_score

    if model not in MODELS:
        raise MorphobenchError(f"cp_regression.model must be one of {list(MODELS)}, got {model!r}")
    keys = list(keys)
    validate_profiles(embeddings, "embeddings", required_meta=keys)
    validate_profiles(cp_features, "CellProfiler well profiles", required_meta=keys)
    if embeddings.duplicated(keys).any() or cp_features.duplicated(keys).any():
        raise MorphobenchError(f"cp_regression: profiles must have one row per {keys}")
    emb_cols = feature_columns(embeddings)
    cp_all = feature_columns(cp_features)
    if categories is None:
        cp_cols = cp_all
    else:
        unknown = sorted(set(categories) - set(CP_CATEGORIES))
        if unknown:
            raise MorphobenchError(f"cp_regression: unknown categories {unknown}; choose from {list(CP_CATEGORIES)}")
        cp_cols = [c for c in cp_all if feature_category(c) in set(categories)]
        left = pd.Series([feature_category(c) for c in cp_all if c not in set(cp_cols)]).value_counts()
        if len(left):
            log.info("cp_regression: %d target feature(s) of %s; left out by category: %s", len(cp_cols),
                     list(categories), left.to_dict())
        if not cp_cols:
            raise MorphobenchError(f"cp_regression: no CellProfiler feature of the categories {list(categories)} "
                                   f"(features measured: {sorted(set(feature_category(c) for c in cp_all))}); "
                                   "measure those groups (images.features.groups)")
    merged = embeddings[keys + emb_cols].merge(
        cp_features[keys + cp_cols], on=keys, how="inner", validate="one_to_one",
        suffixes=("__emb", ""))
    if len(merged) < len(embeddings) or len(merged) < len(cp_features):
        # e.g. a cell-level method has no crop in a well whose cells all touch the border: the
        # regression uses the wells both tables have (n_train/n_test say how many)
        log.warning("cp_regression: %d embedding well(s) and %d CellProfiler well(s) have no counterpart; "
                    "using the %d wells in both", len(embeddings) - len(merged), len(cp_features) - len(merged),
                    len(merged))
    if merged.empty:
        raise MorphobenchError("cp_regression: the embedding and CellProfiler tables share no well")
    emb_cols_m = [c + "__emb" if c in cp_cols else c for c in emb_cols]
    plate_split_of = dict(zip(split["Metadata_Plate"], split["split"], strict=True))
    unknown = sorted(set(merged["Metadata_Plate"]) - set(plate_split_of))
    if unknown:
        raise MorphobenchError(f"cp_regression: plates {unknown[:5]} are not in the split table")
    is_test = merged["Metadata_Plate"].map(plate_split_of).eq("test").to_numpy()
    if is_test.all() or not is_test.any():
        raise MorphobenchError("cp_regression: the split must have both train and test plates")
    x = merged[emb_cols_m].to_numpy(np.float64)
    y = merged[cp_cols].to_numpy(np.float64)
    xtr, xte, _ = _standardize(x[~is_test], x[is_test])
    ytr, yte, y_ok = _standardize(y[~is_test], y[is_test])
    if model == "ols" and x.shape[1] >= (~is_test).sum():
        log.warning("cp_regression: OLS with %d embedding dimensions and %d training wells is the "
                    "minimum-norm least-squares fit (it interpolates the training wells); "
                    "evaluate.cp_regression.model: ridge regularizes", x.shape[1], int((~is_test).sum()))
    alpha = np.full(len(cp_cols), np.nan)
    r2 = np.full(len(cp_cols), np.nan)
    if y_ok.any():
        if model == "ols":
            reg = LinearRegression().fit(xtr, ytr[:, y_ok])
        else:
            reg = RidgeCV(alphas=np.asarray(alphas, dtype=float), alpha_per_target=True).fit(xtr, ytr[:, y_ok])
            alpha[y_ok] = np.broadcast_to(reg.alpha_, (int(y_ok.sum()),))
        pred = reg.predict(xte)
        if pred.ndim == 1:
            pred = pred[:, None]
        r2[y_ok] = r2_score(yte[:, y_ok], pred, multioutput="raw_values")
    return pd.DataFrame({
        "feature": cp_cols,
        "category": [feature_category(c) for c in cp_cols],
        "r2": r2,
        "alpha": alpha,
        "n_train": int((~is_test).sum()),
        "n_test": int(is_test.sum()),
        "n_dims": x.shape[1],
        "n_targets": len(cp_cols),
        "model": model,
        "status": np.where(y_ok, "ok", "constant_on_training_plates"),
    })


def summarize(per_feature: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Median R² per category (only scored features), with the count of features used/skipped,
    and ``n_targets`` (every target feature of the regression)."""
    by = list(by)
    ok = per_feature[per_feature["status"] == "ok"]
    med = ok.groupby(by + ["category"], sort=True)["r2"].agg(median_r2="median", n_features="size")
    skipped = (per_feature[per_feature["status"] != "ok"].groupby(by + ["category"]).size()
               .rename("n_skipped"))
    out = med.join(skipped, how="outer").fillna({"n_skipped": 0, "n_features": 0}).reset_index()
    out = out.astype({"n_skipped": int, "n_features": int})
    if not by:
        return out.assign(n_targets=len(per_feature))
    return out.merge(per_feature.groupby(by).size().rename("n_targets").reset_index(), on=by, how="left")
