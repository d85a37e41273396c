"""CellProfiler-feature regression (MAE-CVPR §5.5).

For every well-level CellProfiler feature, a ridge regression from a method's well embedding, with
α chosen by cross-validation on the training plates only (``RidgeCV``, efficient leave-one-out,
one α per feature), fit on the training plates and scored by R² on held-out plates. The plate split
is a saved table so every method is scored on the same wells.

Choices where the paper is silent (documented, configurable): embeddings and targets are
standardized with training-plate statistics; α grid ``logspace(-2, 5, 15)``; held-out plates are
chosen per batch (≥ 1 plate per batch when a batch has ≥ 2 plates, else whole plates across
batches) with a seeded RNG.
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
DEFAULT_ALPHAS = tuple(np.logspace(-2, 5, 15))


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


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu = train.mean(0)
    sd = train.std(0)
    ok = sd > 0
    sd = np.where(ok, sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd, ok


def cp_regression(embeddings: pd.DataFrame, cp_features: pd.DataFrame, split: pd.DataFrame,
                  alphas: Sequence[float] = DEFAULT_ALPHAS,
                  keys: Sequence[str] = ("Metadata_Plate", "Metadata_Well")) -> pd.DataFrame:
    """R² on held-out plates of a ridge regression embedding → each CellProfiler feature.

    Returns one row per CellProfiler feature: ``feature, category, r2, alpha, n_train, n_test,
    status`` where status is ``ok`` or why the feature was not scored (constant on the training
    plates → R² undefined; recorded, not dropped).
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    keys = list(keys)
    validate_profiles(embeddings, "embeddings", required_meta=keys)
    validate_profiles(cp_features, "CellProfiler well profiles", required_meta=keys)
    if embeddings.duplicated(keys).any() or cp_features.duplicated(keys).any():
        raise MorphobenchError(f"cp_regression: profiles must have one row per {keys}")
    emb_cols = feature_columns(embeddings)
    cp_cols = feature_columns(cp_features)
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
    rows = []
    alpha = np.full(len(cp_cols), np.nan)
    r2 = np.full(len(cp_cols), np.nan)
    if y_ok.any():
        model = RidgeCV(alphas=np.asarray(alphas, dtype=float), alpha_per_target=True)
        model.fit(xtr, ytr[:, y_ok])
        pred = model.predict(xte)
        if pred.ndim == 1:
            pred = pred[:, None]
        alpha[y_ok] = np.broadcast_to(model.alpha_, (int(y_ok.sum()),))
        r2[y_ok] = r2_score(yte[:, y_ok], pred, multioutput="raw_values")
    for j, feat in enumerate(cp_cols):
        rows.append({
            "feature": feat,
            "category": feature_category(feat),
            "r2": r2[j],
            "alpha": alpha[j],
            "n_train": int((~is_test).sum()),
            "n_test": int(is_test.sum()),
            "status": "ok" if y_ok[j] else "constant_on_training_plates",
        })
    return pd.DataFrame(rows)


def summarize(per_feature: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Median R² per category (only scored features), with the count of features used/skipped."""
    by = list(by)
    ok = per_feature[per_feature["status"] == "ok"]
    med = ok.groupby(by + ["category"], sort=True)["r2"].agg(median_r2="median", n_features="size")
    skipped = (per_feature[per_feature["status"] != "ok"].groupby(by + ["category"]).size()
               .rename("n_skipped"))
    out = med.join(skipped, how="outer").fillna({"n_skipped": 0, "n_features": 0}).reset_index()
    return out.astype({"n_skipped": int, "n_features": int})
