"""CellProfiler-feature regression: ridge with CV α, fit on training plates, R² on held-out plates."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from morphobench.evaluate.cp_regression import cp_regression, feature_category, plate_split, summarize
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
        "Cytoplasm_Granularity_1_Mito": np.ones(len(meta)),                           # constant
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


def test_r2_matches_sklearn_ridge_with_the_chosen_alpha():
    emb, cp = _data()
    split = plate_split(emb[["Metadata_Batch", "Metadata_Plate"]].drop_duplicates(), seed=0)
    res = cp_regression(emb, cp, split).set_index("feature")
    assert res.loc["Cells_AreaShape_Area", "r2"] > 0.95
    assert res.loc["Cells_Texture_Contrast_AGP", "r2"] < 0.1
    assert res.loc["Cytoplasm_Granularity_1_Mito", "status"] == "constant_on_training_plates"
    assert np.isnan(res.loc["Cytoplasm_Granularity_1_Mito", "r2"])
    # independent recomputation with sklearn Ridge at the chosen alpha
    test = emb["Metadata_Plate"].isin(split.loc[split.split == "test", "Metadata_Plate"]).to_numpy()
    x = emb.filter(regex=r"^e\d+$").to_numpy()
    feat = "Nuclei_Intensity_MeanIntensity_DNA"
    y = cp[feat].to_numpy()
    mx, sx = x[~test].mean(0), x[~test].std(0)
    my, sy = y[~test].mean(), y[~test].std()
    m = Ridge(alpha=res.loc[feat, "alpha"]).fit((x[~test] - mx) / sx, (y[~test] - my) / sy)
    expected = r2_score((y[test] - my) / sy, m.predict((x[test] - mx) / sx))
    assert res.loc[feat, "r2"] == pytest.approx(expected, abs=1e-9)
    summ = summarize(res.reset_index())
    assert set(summ.category) == {"AreaShape", "Intensity", "Texture", "Granularity"}
    assert summ.set_index("category").loc["Granularity", "n_skipped"] == 1


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
