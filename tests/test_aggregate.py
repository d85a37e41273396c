"""Aggregation cell/tile → well → perturbation and centering on negative controls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from morphobench.data.aggregate import (
    COUNT_COL,
    aggregate,
    aggregate_perturbations,
    aggregate_wells,
    center_on_controls,
    spherical_mean,
)
from morphobench.io import MorphobenchError


def cells(seed=0, float32=False):
    rng = np.random.default_rng(seed)
    rows = []
    for p in ("P1", "P2"):
        for w, (pert, kind) in enumerate([("DMSO", "negcon"), ("A", "trt"), ("B", "trt"), ("DMSO", "negcon")]):
            for c in range(int(rng.integers(3, 7))):
                rows.append({"Metadata_Plate": p, "Metadata_Well": f"A0{w + 1}", "Metadata_Perturbation": pert,
                             "Metadata_PertType": kind, "Metadata_Cell": c})
    meta = pd.DataFrame(rows)
    x = rng.normal(size=(len(meta), 5)) + 3
    return pd.concat([meta, pd.DataFrame(x.astype(np.float32 if float32 else float),
                                         columns=[f"f{i}" for i in range(5)])], axis=1)


def _x(df):
    return df[[c for c in df.columns if not c.startswith("Metadata_")]].to_numpy(dtype=float)


def test_well_mean_and_median():
    df = cells()
    wells = aggregate_wells(df)
    assert len(wells) == 8 and "Metadata_Cell" not in wells.columns
    assert {"Metadata_Perturbation", "Metadata_PertType", COUNT_COL} <= set(wells.columns)
    for _, r in wells.iterrows():
        sel = df[(df["Metadata_Plate"] == r["Metadata_Plate"]) & (df["Metadata_Well"] == r["Metadata_Well"])]
        np.testing.assert_allclose(r[[f"f{i}" for i in range(5)]].to_numpy(float), _x(sel).mean(0))
        assert r[COUNT_COL] == len(sel)
    med = aggregate_wells(df, "median")
    sel = df[(df["Metadata_Plate"] == "P1") & (df["Metadata_Well"] == "A02")]
    np.testing.assert_allclose(_x(med)[1], np.median(_x(sel), axis=0))
    with pytest.raises(MorphobenchError, match="mean or median"):
        aggregate_wells(df, "spherical_mean")


def test_perturbation_spherical_mean():
    wells = aggregate_wells(cells(seed=1))
    pert = aggregate_perturbations(wells, "spherical_mean")
    assert list(pert["Metadata_Perturbation"]) == ["A", "B", "DMSO"]
    np.testing.assert_allclose(np.linalg.norm(_x(pert), axis=1), 1.0)
    a = _x(wells[wells["Metadata_Perturbation"] == "A"])
    np.testing.assert_allclose(_x(pert)[0], spherical_mean(a))
    manual = (a / np.linalg.norm(a, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(_x(pert)[0], manual / np.linalg.norm(manual))
    assert pert.loc[0, COUNT_COL] == wells.loc[wells["Metadata_Perturbation"] == "A", COUNT_COL].sum()
    assert "Metadata_Plate" not in pert.columns and "Metadata_PertType" in pert.columns
    mean = aggregate_perturbations(wells, "mean")
    np.testing.assert_allclose(_x(mean)[0], a.mean(0))


def test_spherical_mean_without_a_direction_names_the_group():
    from morphobench.data.aggregate import aggregate

    df = pd.DataFrame({"Metadata_Perturbation": ["a", "a", "b", "c"], "f": [1.0, -1.0, 2.0, 0.0]})
    with pytest.raises(MorphobenchError, match=r"all-zero.*'c'"):
        aggregate(df, ["Metadata_Perturbation"], "spherical_mean")
    with pytest.raises(MorphobenchError, match=r"cancel exactly.*'a'"):
        aggregate(df.iloc[:3], ["Metadata_Perturbation"], "spherical_mean")


def test_center_on_controls_and_dtype():
    wells = aggregate_wells(cells(seed=2, float32=True))
    assert all(wells[f"f{i}"].dtype == np.float32 for i in range(5))
    glob = center_on_controls(wells)
    ctrl = (glob["Metadata_PertType"] == "negcon").to_numpy()
    np.testing.assert_allclose(_x(glob)[ctrl].mean(0), 0, atol=1e-5)
    per = center_on_controls(wells, by="Metadata_Plate")
    for p in ("P1", "P2"):
        rows = (per["Metadata_Plate"] == p).to_numpy()
        np.testing.assert_allclose(_x(per)[rows & ctrl].mean(0), 0, atol=1e-5)
    bad = wells[~((wells["Metadata_Plate"] == "P2") & (wells["Metadata_PertType"] == "negcon"))]
    with pytest.raises(MorphobenchError, match="P2"):
        center_on_controls(bad, by="Metadata_Plate")


def test_aggregate_errors():
    df = cells()
    with pytest.raises(MorphobenchError, match="unknown aggregation"):
        aggregate(df, ["Metadata_Plate"], "mode")
    with pytest.raises(MorphobenchError, match="Metadata_Nope"):
        aggregate(df, ["Metadata_Nope"])
    nan = df.copy()
    nan.loc[0, "f3"] = np.inf
    with pytest.raises(MorphobenchError, match="NaN/inf"):
        aggregate(nan, ["Metadata_Plate"])
    zero = df.copy()
    zero.loc[0, [f"f{i}" for i in range(5)]] = 0.0
    with pytest.raises(MorphobenchError, match="all-zero"):
        aggregate(zero, ["Metadata_Perturbation"], "spherical_mean")


def test_nan_omit_equals_pandas_and_raise_names_the_column():
    df = cells(seed=3)
    df.loc[[0, 5, 6], "f1"] = np.nan
    df.loc[7, "f2"] = np.inf
    with pytest.raises(MorphobenchError, match="NaN/inf"):
        aggregate_wells(df)
    keys = ["Metadata_Plate", "Metadata_Well"]
    for how in ("mean", "median"):
        ours = aggregate_wells(df, how, nan="omit", count_col="Metadata_Count_Cells")
        ref = getattr(df.replace(np.inf, np.nan).groupby(keys)[[f"f{i}" for i in range(5)]], how)().reset_index()
        np.testing.assert_allclose(_x(ours), ref[[f"f{i}" for i in range(5)]].to_numpy(), rtol=1e-12)
        assert "Metadata_Count_Cells" in ours and COUNT_COL not in ours
    # a group whose values are all missing gives NaN, not 0
    one = df[keys].drop_duplicates().iloc[0]
    sel = (df["Metadata_Plate"] == one["Metadata_Plate"]) & (df["Metadata_Well"] == one["Metadata_Well"])
    df.loc[sel, "f3"] = np.nan
    assert np.isnan(aggregate_wells(df, nan="omit")["f3"].iloc[0])
