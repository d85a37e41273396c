"""Batch corrections: TVN vs EFAAR v1.0, control-based centering/standardizing, PCA, arm."""

from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pytest

from morphobench.correct import (
    CORRECTIONS,
    apply_correction,
    arm_centering,
    arm_means,
    tvn_on_controls,
    unexpressed_genes,
)
from morphobench.io import MorphobenchError


def _efaar_tvn():
    """efaar_benchmarking.efaar imports scvi (scVI embedding, unused here) at top level: stub it."""
    if "scvi" not in sys.modules:
        scvi, model = types.ModuleType("scvi"), types.ModuleType("scvi.model")
        model.SCVI = None
        scvi.model = model
        sys.modules["scvi"], sys.modules["scvi.model"] = scvi, model
    return pytest.importorskip("efaar_benchmarking.efaar").tvn_on_controls


def screen(n=480, d=12, seed=0, float32=False):
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({
        "Metadata_Batch": rng.choice(["B1", "B2", "B3"], n),
        "Metadata_Plate": rng.choice(["P1", "P2", "P3", "P4"], n),
        "Metadata_PertType": np.where(rng.random(n) < 0.3, "negcon", "trt"),
    })
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    x += 2.0 * (meta["Metadata_Batch"] == "B2").to_numpy()[:, None] + \
        0.5 * (meta["Metadata_Plate"] == "P3").to_numpy()[:, None] * rng.normal(size=d)
    feats = pd.DataFrame(x.astype(np.float32 if float32 else np.float64), columns=[f"f{i}" for i in range(d)])
    return pd.concat([meta, feats], axis=1)


def _x(df):
    cols = [c for c in df.columns if not c.startswith("Metadata_")]
    return df[cols].to_numpy(dtype=np.float64)


def test_tvn_equals_efaar():
    efaar_tvn = _efaar_tvn()
    df = screen()
    ref = efaar_tvn(_x(df), df, "Metadata_PertType", "negcon", "Metadata_Batch")
    ours = apply_correction(df, "tvn")
    np.testing.assert_allclose(_x(ours), np.real(ref), rtol=0, atol=1e-10)
    ref_nobatch = efaar_tvn(_x(df), df, "Metadata_PertType", "negcon", None)
    np.testing.assert_allclose(_x(apply_correction(df, "tvn", batch_col=None)), ref_nobatch, atol=1e-10)


def test_tvn_control_covariance():
    df = screen(seed=1)
    ctrl = (df["Metadata_PertType"] == "negcon").to_numpy()
    codes = pd.factorize(df["Metadata_Batch"])[0]
    # with the 0.5·I regularization (EFAAR): cov_after = C (C + 0.5 I)^-1 per batch
    pre = tvn_on_controls(_x(df), ctrl, None)
    post = tvn_on_controls(_x(df), ctrl, codes)
    for b in np.unique(codes):
        c = np.cov(pre[(codes == b) & ctrl], rowvar=False)
        expect = np.linalg.eigvalsh(c)
        expect = expect / (expect + 0.5)
        got = np.linalg.eigvalsh(np.cov(post[(codes == b) & ctrl], rowvar=False))
        np.testing.assert_allclose(np.sort(got), np.sort(expect), atol=1e-8)
    # without regularization the negative controls of every batch are whitened: cov ≈ I
    white = _x(apply_correction(df, "tvn", tvn_reg=0.0))
    for b in np.unique(codes):
        np.testing.assert_allclose(np.cov(white[(codes == b) & ctrl], rowvar=False), np.eye(white.shape[1]),
                                   atol=1e-8)


@pytest.mark.parametrize("name,col", [("center_plate", "Metadata_Plate"), ("center_experiment", "Metadata_Batch"),
                                      ("standardize_plate", "Metadata_Plate"),
                                      ("standardize_experiment", "Metadata_Batch"),
                                      ("pca_standardize_plate", "Metadata_Plate"),
                                      ("pca_standardize_experiment", "Metadata_Batch")])
def test_control_statistics_after_correction(name, col):
    df = screen(seed=2)
    out = apply_correction(df, name)
    assert list(out["Metadata_Plate"]) == list(df["Metadata_Plate"])
    x = _x(out)
    ctrl = (out["Metadata_PertType"] == "negcon").to_numpy()
    for g in out[col].unique():
        c = x[(out[col] == g).to_numpy() & ctrl]
        np.testing.assert_allclose(c.mean(axis=0), 0, atol=1e-10)
        if "standardize" in name:
            np.testing.assert_allclose(c.std(axis=0), 1, atol=1e-10)
    if name.startswith("pca"):
        assert [c for c in out.columns if not c.startswith("Metadata_")][0] == "PC1"


def test_pca_is_deterministic_and_complete():
    df = screen(seed=3)
    a, b = apply_correction(df, "pca", seed=1), apply_correction(df, "pca", seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert _x(a).shape == _x(df).shape
    # all components: cosine geometry of the standardized data is preserved
    z = (_x(df) - _x(df).mean(0)) / _x(df).std(0)
    np.testing.assert_allclose(_x(a) @ _x(a).T, z @ z.T, atol=1e-8)
    assert _x(apply_correction(df, "pca", pca_components=5)).shape[1] == 5


def test_none_float32_and_errors():
    df = screen(float32=True)
    pd.testing.assert_frame_equal(apply_correction(df, "none"), df)
    out = apply_correction(df, "center_plate")
    assert all(out[c].dtype == np.float32 for c in out.columns if not c.startswith("Metadata_"))
    with pytest.raises(MorphobenchError, match="unknown correction"):
        apply_correction(df, "magic")
    bad = df[~((df["Metadata_Plate"] == "P2") & (df["Metadata_PertType"] == "negcon"))]
    with pytest.raises(MorphobenchError, match="P2"):
        apply_correction(bad, "center_plate")
    with pytest.raises(MorphobenchError, match="no control rows"):
        apply_correction(df.assign(Metadata_PertType="trt"), "standardize_experiment")
    with pytest.raises(MorphobenchError, match="arm_table"):
        apply_correction(df, "arm")
    nan = df.copy()
    nan.loc[3, "f1"] = np.nan
    with pytest.raises(MorphobenchError, match="f1"):
        apply_correction(nan, "tvn")
    mask = (df["Metadata_Plate"] == "P1").to_numpy()
    out = apply_correction(df, "center_experiment", control_mask_=mask)
    x = _x(out)
    for b in out["Metadata_Batch"].unique():
        np.testing.assert_allclose(x[(out["Metadata_Batch"] == b).to_numpy() & mask].mean(0), 0, atol=1e-5)
    assert set(CORRECTIONS) >= {"none", "pca", "tvn", "arm"}


# ---------------------------------------------------------------------------------------------
# chromosome arm (proxbias arm_centering)
# ---------------------------------------------------------------------------------------------
def test_arm_matches_proxbias_example():
    """proxbias tests/test_arm_centering.py, in our data model (min_genes=1, subset zfpkm < 6)."""
    df = pd.DataFrame({"Metadata_Gene": list("abcdef"), "feature": [0.0, 2, 4, 6, 8, 10]})
    arms = pd.DataFrame({"gene": list("abcdef"), "arm": ["p", "p", "q", "q", "q", "q"]})
    expr = pd.DataFrame({"gene": list("abcdef"), "zfpkm": [1, 2, 3, 4, 5, 6]})
    unexp = unexpressed_genes(expr, threshold=6)
    means = arm_means(df, arms, unexp, min_genes=1)
    assert means.loc["p", "feature"] == 1 and means.loc["q", "feature"] == 6
    out = arm_centering(df, arms, unexp, min_genes=1)
    assert out["feature"].tolist() == [-1, 1, -2, 0, 2, 4]


def test_arm_needs_more_than_min_genes():
    rng = np.random.default_rng(4)
    genes = [f"g{i}" for i in range(60)]
    arm = ["1p"] * 25 + ["1q"] * 25 + ["2p"] * 10
    df = pd.DataFrame(rng.normal(size=(60, 3)) + 5, columns=["a", "b", "c"])
    df.insert(0, "Metadata_Gene", genes)
    unexp = genes[:21] + genes[25:45] + genes[50:60]   # 21 on 1p (> 20), 20 on 1q (not > 20)
    out = arm_centering(df, dict(zip(genes, arm, strict=True)) | {"extra": "3p"}, unexp + ["not_in_map"])
    x, y = df[["a", "b", "c"]].to_numpy(), out[["a", "b", "c"]].to_numpy()
    np.testing.assert_allclose(y[:25], x[:25] - x[:21].mean(0))
    np.testing.assert_array_equal(y[25:], x[25:])
    assert out.attrs["arm_centering"]["arms_corrected"] == ["1p"]
    routed = apply_correction(df, "arm", arm_table=pd.DataFrame({"gene": genes, "arm": arm}), unexpressed_genes=unexp)
    np.testing.assert_allclose(routed[["a", "b", "c"]].to_numpy(), y)
    with pytest.raises(MorphobenchError, match="without a Metadata_Gene"):
        arm_centering(df.assign(Metadata_Gene=[None] + genes[1:]), dict(zip(genes, arm, strict=True)), unexp)


def test_arm_rule_counts_genes_not_rows():
    """Well-level tables (several rows per gene): an arm qualifies by its number of distinct
    unexpressed genes (> 20), never by its number of rows; the mean is over the rows (proxbias)."""
    rng = np.random.default_rng(5)
    genes = [f"g{i}" for i in range(40)]
    arm = dict(zip(genes, ["1p"] * 21 + ["1q"] * 19, strict=True))
    # 1p: 21 genes x 2 wells; 1q: 19 genes x 3 wells = 57 rows (> 20 rows, but only 19 genes)
    reps = [2] * 21 + [3] * 19
    g = np.repeat(genes, reps)
    df = pd.DataFrame(rng.normal(size=(len(g), 4)) + 3, columns=list("abcd"))
    df.insert(0, "Metadata_Gene", g)
    out = arm_centering(df, arm, genes)
    x, y = df[list("abcd")].to_numpy(), out[list("abcd")].to_numpy()
    on_p = df["Metadata_Gene"].map(arm).eq("1p").to_numpy()
    np.testing.assert_allclose(y[on_p], x[on_p] - x[on_p].mean(0))
    np.testing.assert_array_equal(y[~on_p], x[~on_p])
    info = out.attrs["arm_centering"]
    assert info["arms_corrected"] == ["1p"] and info["n_genes_corrected"] == 21 and info["n_rows_corrected"] == 42
    assert info["unexpressed_genes_per_arm"] == {"1p": 21, "1q": 19}
    # gene level (one row per gene): the same rule is proxbias' row count
    gene_level = df.groupby("Metadata_Gene", sort=False).mean().reset_index()
    assert arm_centering(gene_level, arm, genes).attrs["arm_centering"]["arms_corrected"] == ["1p"]


def test_tvn_rank_deficient_controls_drop_null_components():
    """More features than control rows: EFAAR keeps a zero-variance component that step 3 blows up
    to ~1e15; ours drops it, so the output is finite, has rank(controls) columns and the controls'
    covariance follows C (C + 0.5 I)^-1 as in the full-rank case."""
    rng = np.random.default_rng(3)
    n_ctrl, n_trt, d = 12, 30, 40
    x = rng.normal(size=(n_ctrl + n_trt, d))
    ctrl = np.arange(n_ctrl + n_trt) < n_ctrl
    out = tvn_on_controls(x, ctrl, None)
    assert out.shape == (n_ctrl + n_trt, n_ctrl - 1)  # centred controls have rank n_ctrl - 1
    assert np.isfinite(out).all() and np.abs(out).max() < 1e3
    efaar_tvn = _efaar_tvn()
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(d)])
    df.insert(0, "Metadata_PertType", np.where(ctrl, "negcon", "trt"))
    ref = np.real(efaar_tvn(x, df, "Metadata_PertType", "negcon", None))
    assert ref.shape[1] == n_ctrl and np.abs(ref).max() > 1e6  # the degenerate column we drop
    # the kept components agree with EFAAR's up to the dropped one
    np.testing.assert_allclose(out, ref[:, :n_ctrl - 1], atol=1e-8)
