"""CellProfiler-feature regression (MAE-CVPR §5.5): OLS (or ridge with CV α) fit on training
experiments/plates, R² on held-out ones, targets of the paper's five categories."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import r2_score

from morphobench.evaluate.cp_regression import (
    cp_regression,
    experiment_split,
    feature_category,
    make_split,
    plate_split,
    summarize,
)
from morphobench.io import MorphobenchError


def _wells(n_plates=4, n_wells=40, batches=2):
    rows = []
    for p in range(n_plates):
        for w in range(n_wells):
            rows.append({"Metadata_Batch": f"B{p % batches}", "Metadata_Plate": f"P{p}",
                         "Metadata_Well": f"W{w:02d}"})
    return pd.DataFrame(rows)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    meta = _wells()
    z = rng.standard_normal((len(meta), 8))
    emb = pd.concat([meta, pd.DataFrame(z @ rng.standard_normal((8, 16)), columns=[f"e{i}" for i in range(16)])], axis=1)
    y = pd.DataFrame({
        "Cells_AreaShape_Area": z[:, 0] * 3 + 0.1 * rng.standard_normal(len(meta)),  # predictable
        "Nuclei_Intensity_MeanIntensity_DNA": z[:, 1] - z[:, 2] + 0.1 * rng.standard_normal(len(meta)),
        "Cells_Texture_Contrast_AGP": rng.standard_normal(len(meta)),                 # pure noise
        "Cytoplasm_Granularity_1_Mito": rng.standard_normal(len(meta)),               # not a target category
        "Cells_RadialDistribution_FracAtD_DNA_1of4": np.ones(len(meta)),              # constant
        "Cells_Neighbors_NumberOfNeighbors_Adjacent": z[:, 3] + 0.2 * rng.standard_normal(len(meta)),
    })
    cp = pd.concat([meta, y], axis=1)
    return emb, cp


def test_feature_category():
    assert feature_category("Cells_AreaShape_Area") == "AreaShape"
    assert feature_category("Nuclei_Texture_Contrast_DNA_3_00_256") == "Texture"
    assert feature_category("emb_0001") == "other"


def test_plate_split_is_seeded_and_holds_out_per_batch():
    plates = _wells()[["Metadata_Batch", "Metadata_Plate"]].drop_duplicates()
    a = plate_split(plates, seed=1)
    assert a.equals(plate_split(plates, seed=1))
    assert (a.groupby("Metadata_Batch")["split"].apply(lambda s: (s == "test").sum()) == 1).all()
    with pytest.raises(MorphobenchError, match="≥ 2 plates"):
        plate_split(plates.iloc[:1])


def test_experiment_split_holds_out_whole_batches():
    plates = _wells(n_plates=6, batches=3)[["Metadata_Batch", "Metadata_Plate"]].drop_duplicates()
    a = experiment_split(plates, seed=2)
    assert a.equals(make_split(plates, "experiment", 0.25, 2))
    per_batch = a.groupby("Metadata_Batch")["split"].nunique()
    assert (per_batch == 1).all()                                 # a batch is never split
    assert a.groupby("split")["Metadata_Batch"].nunique().to_dict() == {"test": 1, "train": 2}
    assert experiment_split(plates, heldout_fraction=0.99, seed=0)["split"].eq("train").any()
    with pytest.raises(MorphobenchError, match="holdout: plate"):
        experiment_split(plates.assign(Metadata_Batch="B0"))
    with pytest.raises(MorphobenchError, match="holdout"):
        make_split(plates, "well")


def test_ols_r2_equals_sklearn_on_held_out_experiment():
    emb, cp = _data()
    split = experiment_split(emb[["Metadata_Batch", "Metadata_Plate"]].drop_duplicates(), seed=0)
    res = cp_regression(emb, cp, split).set_index("feature")      # defaults: OLS, the paper's five categories
    assert "Cytoplasm_Granularity_1_Mito" not in res.index       # Granularity is not a target category
    assert set(res["category"]) == {"AreaShape", "Intensity", "Texture", "RadialDistribution", "Neighbors"}
    assert (res["n_targets"] == 5).all() and (res["model"] == "ols").all() and res["alpha"].isna().all()
    assert res.loc["Cells_AreaShape_Area", "r2"] > 0.95
    assert res.loc["Cells_Texture_Contrast_AGP", "r2"] < 0.1
    assert res.loc["Cells_RadialDistribution_FracAtD_DNA_1of4", "status"] == "constant_on_training_plates"
    test = emb["Metadata_Plate"].isin(split.loc[split.split == "test", "Metadata_Plate"]).to_numpy()
    assert set(emb.loc[test, "Metadata_Batch"]) == set(split.loc[split.split == "test", "Metadata_Batch"])
    x = emb.filter(regex=r"^e\d+$").to_numpy()
    for feat in ("Nuclei_Intensity_MeanIntensity_DNA", "Cells_Neighbors_NumberOfNeighbors_Adjacent"):
        y = cp[feat].to_numpy()
        pred = LinearRegression().fit(x[~test], y[~test]).predict(x[test])   # raw data: R² is scale-free
        assert res.loc[feat, "r2"] == pytest.approx(r2_score(y[test], pred), abs=1e-9)
    summ = summarize(res.reset_index())
    assert (summ["n_targets"] == 5).all()
    assert summ.set_index("category").loc["RadialDistribution", "n_skipped"] == 1


def test_ridge_option_matches_sklearn_ridge_with_the_chosen_alpha():
    emb, cp = _data()
    split = plate_split(emb[["Metadata_Batch", "Metadata_Plate"]].drop_duplicates(), seed=0)
    res = cp_regression(emb, cp, split, model="ridge", categories=None).set_index("feature")
    assert res.loc["Cells_AreaShape_Area", "r2"] > 0.95 and len(res) == 6
    test = emb["Metadata_Plate"].isin(split.loc[split.split == "test", "Metadata_Plate"]).to_numpy()
    x = emb.filter(regex=r"^e\d+$").to_numpy()
    feat = "Nuclei_Intensity_MeanIntensity_DNA"
    y = cp[feat].to_numpy()
    mx, sx = x[~test].mean(0), x[~test].std(0)
    my, sy = y[~test].mean(), y[~test].std()
    m = Ridge(alpha=res.loc[feat, "alpha"]).fit((x[~test] - mx) / sx, (y[~test] - my) / sy)
    expected = r2_score((y[test] - my) / sy, m.predict((x[test] - mx) / sx))
    assert res.loc[feat, "r2"] == pytest.approx(expected, abs=1e-9)
    by = summarize(res.reset_index().assign(method="m"), by=["method"])
    assert (by["n_targets"] == 6).all()


def test_bad_input_is_rejected_with_clear_errors():
    emb, cp = _data()
    split = plate_split(emb[["Metadata_Batch", "Metadata_Plate"]].drop_duplicates(), seed=0)
    bad = emb.copy()
    bad.loc[3, "e2"] = np.nan
    with pytest.raises(MorphobenchError, match="NaN"):
        cp_regression(bad, cp, split)
    # wells missing from one table (a cell-level method without crops in a well): the wells both
    # tables have are used, and the counts say so
    part = cp_regression(emb.iloc[:-5], cp, split)
    full = cp_regression(emb, cp, split)
    assert (part["n_train"] + part["n_test"]).max() == (full["n_train"] + full["n_test"]).max() - 5
    with pytest.raises(MorphobenchError, match="share no well"):
        cp_regression(emb.assign(Metadata_Well="Z99", Metadata_Plate=emb["Metadata_Plate"] + "x").iloc[:1], cp, split)
    with pytest.raises(MorphobenchError, match="not in the split"):
        cp_regression(emb, cp, split.iloc[1:])
    with pytest.raises(MorphobenchError, match="no CellProfiler feature of the categories"):
        cp_regression(emb, cp[["Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Cytoplasm_Granularity_1_Mito"]],
                      split)
    with pytest.raises(MorphobenchError, match="model"):
        cp_regression(emb, cp, split, model="lasso")


def test_stage_normalizes_targets_per_plate_on_controls(tmp_path):
    """The stage regresses onto CellProfiler features standardized per plate on their negative
    controls (default) — a held-out experiment's plate offsets are not part of the targets."""
    from morphobench.correct import apply_correction
    from morphobench.evaluate.stages import cp_regression_stage

    emb, cp = _data()
    ctrl = np.tile(np.arange(40) < 8, 4)
    cp = cp.assign(Metadata_PertType=np.where(ctrl, "negcon", "trt"))
    shift = cp["Metadata_Plate"].map({"P0": 0.0, "P1": 5.0, "P2": -3.0, "P3": 9.0}).to_numpy()
    cp["Cells_AreaShape_Area"] += shift                                   # plate offsets in a target
    split = experiment_split(emb[["Metadata_Batch", "Metadata_Plate"]].drop_duplicates(), seed=0)
    emb.to_parquet(tmp_path / "e.parquet")
    cp.to_parquet(tmp_path / "c.parquet")
    split.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    key = {"dataset": "d", "method": "m", "correction": "none"}
    cp_regression_stage(tmp_path / "e.parquet", tmp_path / "c.parquet", tmp_path / "s.tsv", key, tmp_path / "o.tsv")
    got = pd.read_csv(tmp_path / "o.tsv", sep="\t").set_index("feature")
    norm = apply_correction(cp, "standardize_plate").drop(columns="Metadata_PertType")
    ref = cp_regression(emb, norm, split).set_index("feature")
    np.testing.assert_allclose(got.loc[ref.index, "r2"], ref["r2"], rtol=0, atol=1e-9)   # TSV: 10 digits
    cp_regression_stage(tmp_path / "e.parquet", tmp_path / "c.parquet", tmp_path / "s.tsv", key, tmp_path / "raw.tsv",
                        target_normalization="none")
    raw = pd.read_csv(tmp_path / "raw.tsv", sep="\t").set_index("feature")
    assert raw.loc["Cells_AreaShape_Area", "r2"] < got.loc["Cells_AreaShape_Area", "r2"]
    with pytest.raises(MorphobenchError, match="target_normalization"):
        cp_regression_stage(tmp_path / "e.parquet", tmp_path / "c.parquet", tmp_path / "s.tsv", key,
                            tmp_path / "x.tsv", target_normalization="robust")
