"""Retrieval mAP engine vs copairs 0.5.5 (same profiles, same pair definitions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from morphobench.evaluate import map as M
from morphobench.io import MorphobenchError

copairs_map = pytest.importorskip("copairs.map")
from copairs.map.average_precision import p_values as cp_p_values  # noqa: E402

from copairs import compute as cp_compute  # noqa: E402

REF = "Metadata_ref"
REPLICATE_ARGS = (["Metadata_Perturbation", REF], [], ["Metadata_Plate"], ["Metadata_PertType", REF])


@pytest.fixture(autouse=True)
def _isolated_copairs_cache(tmp_path, monkeypatch):
    """copairs caches nulls in ~/.copairs keyed without its per-configuration seed: isolate it."""
    monkeypatch.setenv("HOME", str(tmp_path))


def screen(n_plates=4, n_pert=30, n_ctrl=8, d=16, quant=None, seed=0, keep=0.7):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_plates):
        for i in range(n_pert):
            if rng.random() < keep:
                rows.append(("P%d" % p, "c%d" % i, "trt", "t%d" % (i % 5)))
        for _ in range(n_ctrl):
            rows.append(("P%d" % p, "DMSO", "negcon", "none"))
    meta = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Perturbation", "Metadata_PertType",
                                       "Metadata_Target"])
    eff = {f"c{i}": rng.normal(size=d) * rng.random() for i in range(n_pert)}
    eff["DMSO"] = np.zeros(d)
    x = np.stack([eff[p] for p in meta["Metadata_Perturbation"]]) + rng.normal(size=(len(meta), d))
    if quant is not None:
        x = np.round(x * quant) / quant
        x[np.all(x == 0, axis=1), 0] = 1.0
    meta[REF] = np.where(meta["Metadata_PertType"] == "negcon", np.arange(len(meta)), -1)
    return meta, x


def _cmp_ap(meta, x, args, **kw):
    ref = copairs_map.average_precision(meta, x, *args, progress_bar=False)
    ours = M.average_precision(meta, x, *args, no_negatives="keep", **kw)
    np.testing.assert_array_equal(ours["n_pos_pairs"], ref["n_pos_pairs"])
    np.testing.assert_array_equal(ours["n_total_pairs"], ref["n_total_pairs"])
    np.testing.assert_allclose(ours["average_precision"], ref["average_precision"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["normalized_average_precision"], ref["normalized_average_precision"],
                               rtol=0, atol=1e-9)
    return ref, ours


DEFINITIONS = {
    "replicates_vs_plate_negcon": REPLICATE_ARGS,
    "replicates_other_plate": (["Metadata_Perturbation", REF], ["Metadata_Plate"], ["Metadata_Plate"],
                               ["Metadata_PertType", REF]),
    "dense_negatives": (["Metadata_Perturbation"], [], [], ["Metadata_Perturbation"]),
    "target_siblings": (["Metadata_Target"], ["Metadata_Perturbation"], [], ["Metadata_Target"]),
}


@pytest.mark.parametrize("quant", [None, 1, 4], ids=["continuous", "ties_q1", "ties_q4"])
@pytest.mark.parametrize("definition", list(DEFINITIONS))
def test_ap_equals_copairs(definition, quant):
    meta, x = screen(quant=quant, d=6 if quant else 16)
    _cmp_ap(meta, x, DEFINITIONS[definition])


def test_ties_rank_positives_first():
    """Exact ties between a query's positives and negatives exist and are resolved as copairs."""
    meta, x = screen(d=3, quant=1, seed=3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = (xn @ xn.T).astype(np.float32)
    pert, plate = meta["Metadata_Perturbation"].to_numpy(), meta["Metadata_Plate"].to_numpy()
    ctrl = (meta["Metadata_PertType"] == "negcon").to_numpy()
    tied = 0
    for i in np.flatnonzero(~ctrl):
        pos = (pert == pert[i]) & (np.arange(len(meta)) != i)
        neg = ctrl & (plate == plate[i])
        tied += len(np.intersect1d(s[i, pos], s[i, neg]))
    assert tied > 10
    _cmp_ap(meta, x, REPLICATE_ARGS)


def test_blocks_and_backends_do_not_change_results():
    meta, x = screen(seed=5)
    a = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep")
    b = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep", max_entries=50)
    np.testing.assert_array_equal(a["average_precision"], b["average_precision"])
    pytest.importorskip("torch")
    c = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep", backend="torch", device="cpu")
    np.testing.assert_allclose(a["average_precision"], c["average_precision"], atol=1e-12)


@pytest.mark.parametrize("definition", ["replicates_vs_plate_negcon", "dense_negatives", "target_siblings"])
@pytest.mark.parametrize("algo", ["compare", "sort"])
def test_both_ap_algorithms_equal_copairs(definition, algo, monkeypatch):
    monkeypatch.setattr(M, "_AP_METHOD", algo)
    meta, x = screen(quant=1, d=4, seed=13)
    _cmp_ap(meta, x, DEFINITIONS[definition])


def test_gemm_path_equals_gather_path(monkeypatch):
    meta, x = screen(n_plates=2, n_pert=60, n_ctrl=40, seed=2)
    a = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep")
    monkeypatch.setattr(M, "_GEMM_MIN_ENTRIES", 10**12)
    b = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep")
    monkeypatch.setattr(M, "_GEMM_MIN_ENTRIES", 1)
    c = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep")
    np.testing.assert_allclose(a["average_precision"], b["average_precision"], atol=1e-12)
    np.testing.assert_allclose(a["average_precision"], c["average_precision"], atol=1e-12)


@pytest.mark.parametrize("quant", [None, 1])
def test_p_values_exact_with_copairs_draws(quant, tmp_path):
    meta, x = screen(quant=quant, d=6 if quant else 16, seed=1)
    ref, ours = _cmp_ap(meta, x, REPLICATE_ARGS)
    p_ref = cp_p_values(ref, 500, 7, progress_bar=False)
    p_ours = M.ap_p_values(ours, 500, 7, method="copairs")
    np.testing.assert_array_equal(p_ours.astype(np.float32), p_ref)

    m_ref = copairs_map.mean_average_precision(ref, ["Metadata_Perturbation"], 500, 0.05, 7,
                                               progress_bar=False, cache_dir=tmp_path / "cache")
    m_ours = M.mean_average_precision(ours, ["Metadata_Perturbation"], 500, 7, method="copairs")
    ev = m_ours[m_ours["p_value"].notna()].reset_index(drop=True)
    assert list(ev["Metadata_Perturbation"]) == list(m_ref["Metadata_Perturbation"])
    np.testing.assert_array_equal(ev["mean_average_precision"], m_ref["mean_average_precision"])
    np.testing.assert_allclose(ev["mean_normalized_average_precision"], m_ref["mean_normalized_average_precision"],
                               atol=1e-12)
    np.testing.assert_array_equal(ev["p_value"], m_ref["p_value"])
    np.testing.assert_array_equal(ev["corrected_p_value"], m_ref["corrected_p_value"])
    np.testing.assert_array_equal(ev["below_corrected_p"], m_ref["below_corrected_p"])
    np.testing.assert_array_equal(ev["below_p"], m_ref["below_p"])


def test_injected_null_samples_reproduce_copairs(tmp_path):
    meta, x = screen(seed=4)
    ref, ours = _cmp_ap(meta, x, REPLICATE_ARGS)
    valid = ref.query("~average_precision.isna() and n_pos_pairs > 0")
    confs = np.unique(valid[["n_pos_pairs", "n_total_pairs"]].to_numpy(), axis=0)
    nd = cp_compute.get_null_dists(confs, 300, 11, cache_dir=tmp_path / "c", progress_bar=False)
    injected = {tuple(map(int, c)): nd[i] for i, c in enumerate(confs)}
    p_ours = M.ap_p_values(ours, 300, 0, nulls=injected)
    np.testing.assert_array_equal(p_ours.astype(np.float32), cp_p_values(ref, 300, 11, progress_bar=False))
    m_ours = M.mean_average_precision(ours, ["Metadata_Perturbation"], 300, 0, nulls=injected)
    m_ref = copairs_map.mean_average_precision(ref, ["Metadata_Perturbation"], 300, 0.05, 11,
                                               progress_bar=False, cache_dir=tmp_path / "c2")
    np.testing.assert_array_equal(m_ours["p_value"].dropna().to_numpy(), m_ref["p_value"].to_numpy())


@pytest.mark.parametrize("k,m", [(1, 9), (3, 35), (8, 10), (5, 5), (20, 60)])
def test_fast_null_has_copairs_distribution(k, m):
    n = 4000
    fast = M.null_distributions(np.array([[k, m]]), n, 3, method="fast")[0]
    ref = M.null_distributions(np.array([[k, m]]), n, 3, method="copairs")[0]
    exact = cp_compute.random_ap(n, k, m, 5)
    np.testing.assert_array_equal(ref, cp_compute.random_ap(n, k, m, np.random.default_rng(3).integers(8096, size=1)[0]))
    mu0 = M._expected_ap(np.array([k]), np.array([m]))[0]
    sd = exact.std()
    assert abs(fast.mean() - mu0) < 5 * sd / np.sqrt(n) + 1e-6
    assert abs(fast.std() - sd) < 0.1 * sd + 1e-6
    # same support and similar quantiles
    for q in (0.1, 0.5, 0.9, 0.99):
        assert abs(np.quantile(fast, q) - np.quantile(exact, q)) <= 0.06


def test_fast_p_values_within_monte_carlo_error():
    meta, x = screen(seed=6, n_pert=40)
    ours = M.average_precision(meta, x, *REPLICATE_ARGS)
    n = 4000
    p_fast = M.ap_p_values(ours, n, 1, method="fast")
    p_cp = M.ap_p_values(ours, n, 1, method="copairs")
    ok = ~np.isnan(p_fast)
    tol = 5 * np.sqrt(p_cp[ok] * (1 - p_cp[ok]) / n) * np.sqrt(2) + 2 / n
    assert (np.abs(p_fast[ok] - p_cp[ok]) <= tol).all()
    mf = M.mean_average_precision(ours, ["Metadata_Perturbation"], n, 1, method="fast")
    mc = M.mean_average_precision(ours, ["Metadata_Perturbation"], n, 1, method="copairs")
    pf, pc = mf["p_value"].to_numpy(), mc["p_value"].to_numpy()
    ok = ~np.isnan(pf)
    assert (np.abs(pf[ok] - pc[ok]) <= 5 * np.sqrt(2 * pc[ok] * (1 - pc[ok]) / n) + 2 / n).all()


def test_fast_null_independent_of_other_configurations():
    a = M.null_distributions(np.array([[2, 10], [3, 12]]), 100, 0)
    b = M.null_distributions(np.array([[3, 12]]), 100, 0)
    np.testing.assert_array_equal(a[1], b[0])


def test_replicate_retrieval_equals_copairs_recipe(tmp_path):
    meta, x = screen(seed=8)
    df = pd.concat([meta.drop(columns=[REF]), pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])], axis=1)
    res = M.replicate_retrieval(df, null_size=400, seed=2, null_method="copairs")
    ref = copairs_map.average_precision(meta, x, *REPLICATE_ARGS, progress_bar=False)
    np.testing.assert_allclose(res.ap["average_precision"], ref["average_precision"], atol=1e-9)
    m_ref = copairs_map.mean_average_precision(ref, ["Metadata_Perturbation"], 400, 0.05, 2,
                                               progress_bar=False, cache_dir=tmp_path / "c")
    ev = res.map[res.map["p_value"].notna()].reset_index(drop=True)
    np.testing.assert_array_equal(ev["p_value"], m_ref["p_value"])
    np.testing.assert_array_equal(ev["corrected_p_value"], m_ref["corrected_p_value"])
    assert "DMSO" not in set(res.map["Metadata_Perturbation"])
    assert res.summary["fraction_retrieved"] == pytest.approx(m_ref["below_corrected_p"].mean())
    assert res.summary["n_groups_evaluated"] == len(m_ref)


# ---------------------------------------------------------------------------------------------
# bad input / documented skips
# ---------------------------------------------------------------------------------------------
def _df(meta, x):
    return pd.concat([meta.drop(columns=[REF]), pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])],
                     axis=1)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_features_raise_naming_column(bad):
    meta, x = screen()
    x[3, 5] = bad
    with pytest.raises(MorphobenchError, match="f5"):
        M.replicate_retrieval(_df(meta, x), null_size=10)
    with pytest.raises(MorphobenchError, match=r"feature\[5\]"):
        M.average_precision(meta, x, *REPLICATE_ARGS)


def test_zero_vector_and_bad_columns_raise():
    meta, x = screen()
    x[0] = 0
    with pytest.raises(MorphobenchError, match="all-zero"):
        M.average_precision(meta, x, *REPLICATE_ARGS)
    meta, x = screen()
    with pytest.raises(MorphobenchError, match="Metadata_Nope"):
        M.average_precision(meta, x, ["Metadata_Nope"], [], [], ["Metadata_PertType"])
    meta.loc[2, "Metadata_Plate"] = None
    with pytest.raises(MorphobenchError, match="Metadata_Plate"):
        M.average_precision(meta, x, *REPLICATE_ARGS)


def test_single_replicate_group_is_recorded_not_silent():
    meta, x = screen(n_plates=3, seed=9)
    meta = pd.concat([meta, pd.DataFrame([{"Metadata_Plate": "P0", "Metadata_Perturbation": "lonely",
                                           "Metadata_PertType": "trt", "Metadata_Target": "t0", REF: -1}])],
                     ignore_index=True)
    x = np.vstack([x, np.ones((1, x.shape[1]))])
    res = M.replicate_retrieval(_df(meta, x), null_size=200)
    row = res.ap[res.ap["Metadata_Perturbation"] == "lonely"].iloc[0]
    assert np.isnan(row["average_precision"]) and row["skip_reason"] == "no positive pairs"
    g = res.map[res.map["Metadata_Perturbation"] == "lonely"].iloc[0]
    assert np.isnan(g["mean_average_precision"]) and np.isnan(g["p_value"]) and np.isnan(g["corrected_p_value"])
    assert g["skip_reason"] == "no positive pairs" and not g["below_corrected_p"]
    assert res.summary["n_groups_skipped"] >= 1
    assert res.summary["n_groups_evaluated"] + res.summary["n_groups_skipped"] == res.summary["n_groups"]


def test_plate_without_negcon_errors_or_is_recorded():
    meta, x = screen(n_plates=3, seed=10)
    drop = (meta["Metadata_Plate"] == "P1") & (meta["Metadata_PertType"] == "negcon")
    meta, x = meta[~drop].reset_index(drop=True), x[~drop.to_numpy()]
    meta[REF] = np.where(meta["Metadata_PertType"] == "negcon", np.arange(len(meta)), -1)
    with pytest.raises(MorphobenchError, match="P1"):
        M.replicate_retrieval(_df(meta, x), null_size=50)
    res = M.replicate_retrieval(_df(meta, x), null_size=50, on_missing_negcon="skip")
    p1 = res.ap[(res.ap["Metadata_Plate"] == "P1") & (res.ap["n_pos_pairs"] > 0)]
    assert len(p1) and p1["average_precision"].isna().all()
    assert (p1["skip_reason"] == "no negative pairs").all()
    with pytest.raises(MorphobenchError, match="no negative pairs"):
        M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="error")
    kept = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep")
    assert (kept.loc[p1.index, "average_precision"] == 1.0).all()  # copairs' number


def test_no_controls_at_all_raises():
    meta, x = screen()
    df = _df(meta, x)
    df["Metadata_PertType"] = "trt"
    with pytest.raises(MorphobenchError, match="no negative controls"):
        M.replicate_retrieval(df, null_size=10)


def test_fraction_retrieved_and_bh():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    q = M.benjamini_hochberg(p)
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(q[:4], multipletests(p[:4], method="fdr_bh")[1])
    assert np.isnan(q[4])
    df = pd.DataFrame({"corrected_p_value": q, "mean_average_precision": [0.5, 0.4, 0.3, 0.2, np.nan]})
    assert M.fraction_retrieved(df) == pytest.approx(1 / 4)  # q = .04, .053, .053, .2


@pytest.mark.slow
def test_large_equality_vs_copairs(tmp_path):
    meta, x = screen(n_plates=30, n_pert=350, n_ctrl=32, d=64, seed=12)  # ~8.3k profiles
    ref, ours = _cmp_ap(meta, x, REPLICATE_ARGS)
    m_ref = copairs_map.mean_average_precision(ref, ["Metadata_Perturbation"], 2000, 0.05, 3,
                                               progress_bar=False, cache_dir=tmp_path / "c")
    m_ours = M.mean_average_precision(ours, ["Metadata_Perturbation"], 2000, 3, method="copairs")
    ev = m_ours[m_ours["p_value"].notna()].reset_index(drop=True)
    np.testing.assert_array_equal(ev["p_value"], m_ref["p_value"])
    np.testing.assert_array_equal(ev["corrected_p_value"], m_ref["corrected_p_value"])
