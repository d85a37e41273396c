"""Retrieval mAP engine vs copairs 0.5.5 (same profiles, same pair definitions)."""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations

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


@pytest.fixture(params=["auto", "dense", "entries", "symmetric", "compiled"])
def neg_path(request):
    """Engine options: negatives as dense GEMM blocks (forced), as entry lists (forced), from
    symmetric tiles (forced, small tiles; float64 NumPy tiles or the compiled float32 kernel), or
    chosen per block."""
    if request.param == "compiled" and M.options._kernels() is None:
        pytest.skip("numba not importable")
    return {"auto": None, "dense": M.MapOptions(dense_min_entries=0),
            "entries": M.MapOptions(neg_dense=False),
            "symmetric": M.MapOptions(symmetric_min=1, tile=37, compiled=False),
            "compiled": M.MapOptions(symmetric_min=1, tile=37, compiled=True)}[request.param]


@pytest.mark.parametrize("quant", [None, 1, 4], ids=["continuous", "ties_q1", "ties_q4"])
@pytest.mark.parametrize("definition", list(DEFINITIONS))
def test_ap_equals_copairs(definition, quant, neg_path):
    meta, x = screen(quant=quant, d=6 if quant else 16)
    _cmp_ap(meta, x, DEFINITIONS[definition], options=neg_path)


def test_skewed_groups_and_small_blocks_equal_copairs(neg_path):
    """One huge plate next to small ones, in blocks mixing them (dense tables would be mostly
    padding: such blocks go through entry lists)."""
    big, xb = screen(n_plates=2, n_pert=100, n_ctrl=100, seed=31, keep=1.0)
    big["Metadata_Plate"] = "BIG"
    small, xs = screen(n_plates=6, n_pert=8, n_ctrl=3, seed=32)
    small["Metadata_Plate"] = "S" + small["Metadata_Plate"]
    small["Metadata_Perturbation"] = "s" + small["Metadata_Perturbation"]
    meta = pd.concat([small, big], ignore_index=True)
    meta[REF] = np.where(meta["Metadata_PertType"] == "negcon", np.arange(len(meta)), -1)
    x = np.vstack([xs, xb])
    _cmp_ap(meta, x, REPLICATE_ARGS, max_entries=2000, options=neg_path)


@pytest.mark.parametrize("definition", list(DEFINITIONS))
def test_negative_paths_and_gram_agree(definition):
    """Dense negative blocks, entry lists, and Gram vs row-wise positives give the same APs."""
    meta, x = screen(n_plates=3, n_pert=50, n_ctrl=30, seed=21)
    args = DEFINITIONS[definition]

    def ap(**opts):
        return M.average_precision(meta, x, *args, no_negatives="keep",
                                   options=M.MapOptions(symmetric_min=0, **opts))["average_precision"].to_numpy()

    dense = ap(dense_min_entries=0)
    entries = ap(neg_dense=False)
    rowwise = ap(neg_dense=False, gram_max=0)
    np.testing.assert_allclose(dense, entries, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(entries, rowwise)       # Gram entries are the same dot products


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
def test_both_ap_algorithms_equal_copairs(definition, algo):
    meta, x = screen(quant=1, d=4, seed=13)
    _cmp_ap(meta, x, DEFINITIONS[definition], options=M.MapOptions(ap_method=algo))


def test_gemm_path_equals_gather_path():
    meta, x = screen(n_plates=2, n_pert=60, n_ctrl=40, seed=2)
    a = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep")
    b = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep",
                            options=M.MapOptions(gemm_min_entries=10**12))
    c = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep", options=M.MapOptions(gemm_min_entries=1))
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
    # copairs' float32 draws compared with copairs' arithmetic (method="copairs")
    p_ours = M.ap_p_values(ours, 300, 0, method="copairs", nulls=injected)
    np.testing.assert_array_equal(p_ours.astype(np.float32), cp_p_values(ref, 300, 11, progress_bar=False))
    m_ours = M.mean_average_precision(ours, ["Metadata_Perturbation"], 300, 0, method="copairs", nulls=injected)
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
    mu0 = M.expected_ap(np.array([k]), np.array([m]))[0]
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
    confs = np.array([[1, 9], [3, 12], [3, 40], [12, 30], [40, 300], [7, 7]])
    many = M.null_distributions(confs, 300, 4)
    for i, c in enumerate(confs):
        np.testing.assert_array_equal(many[i], M.null_distributions(c[None], 300, 4)[0])


# ---------------------------------------------------------------------------------------------
# fast mode: exact p-values (ties included) against a plain rational-arithmetic reference
# ---------------------------------------------------------------------------------------------
def _frac_ap(pos) -> Fraction:
    """Exact AP of a rank list given by its sorted 0-based positive positions."""
    return sum(Fraction(i + 1, int(p) + 1) for i, p in enumerate(pos)) / len(pos)


def _floyd_positions(seed, k, total, size):
    """The fast null's draws, re-derived in plain Python (Floyd's algorithm on its words)."""
    words = M.nulls._floyd_words(seed, k, total, size)
    out = []
    for s in range(size):
        chosen = []
        for t in range(k):
            j = total - k + t
            r = (int(words[t, s]) * (j + 1)) >> 32
            chosen.append(j if r in chosen else r)
        out.append(sorted(chosen))
    return out


def _exact_observed(ap, k, total):
    """The rational an observed float AP stands for (distinct APs of small lists differ by far
    more than float error)."""
    cands = {_frac_ap(c) for c in combinations(range(total), k)}
    best = min(cands, key=lambda f: abs(float(f) - ap))
    assert abs(float(best) - ap) < 1e-12
    return best


def test_fast_p_values_equal_exact_reference_with_ties():
    meta, x = screen(n_plates=4, n_pert=14, n_ctrl=5, d=3, quant=1, seed=17, keep=0.9)
    ours = M.average_precision(meta, x, *REPLICATE_ARGS)
    size, seed = 300, 5
    p_fast = M.ap_p_values(ours, size, seed)
    m_fast = M.mean_average_precision(ours, ["Metadata_Perturbation"], size, seed)
    # the engine's own draws, as floats, equal the exact APs of the re-derived rank lists
    valid = M.nulls._valid_mask(ours)
    confs, _ = M.nulls._conf_table(ours, valid)
    table = M.null_table(ours, size, seed)
    nulls = {}
    for k, total in confs.tolist():
        exact = [_frac_ap(p) for p in _floyd_positions(seed, k, total, size)]
        np.testing.assert_allclose(table[(k, total)], [float(f) for f in exact], rtol=0, atol=1e-15)
        nulls[(k, total)] = exact
    # AP p-values: p = (1 + #{null ≥ AP}) / (1 + size), in rational arithmetic
    obs = {}
    ties = 0
    for i in np.flatnonzero(valid):
        k, total = int(ours.at[i, "n_pos_pairs"]), int(ours.at[i, "n_total_pairs"])
        a = obs[i] = _exact_observed(ours.at[i, "average_precision"], k, total)
        n_ge = sum(v >= a for v in nulls[(k, total)])
        ties += sum(v == a for v in nulls[(k, total)])
        assert p_fast[i] == (1 + n_ge) / (1 + size), i
    assert ties > 50                       # exact ties between null and observed APs occurred
    # mAP p-values: group null = element-wise mean of the members' nulls, strict >
    group_ties = 0
    for _, row in m_fast[m_fast["p_value"].notna()].iterrows():
        members = [i for i in np.flatnonzero(valid)
                   if ours.at[i, "Metadata_Perturbation"] == row["Metadata_Perturbation"]]
        m = len(members)
        map_exact = sum(obs[i] for i in members) / m
        assert abs(float(map_exact) - row["mean_average_precision"]) < 1e-12
        cols = [nulls[(int(ours.at[i, "n_pos_pairs"]), int(ours.at[i, "n_total_pairs"]))] for i in members]
        means = [sum(c[s] for c in cols) / m for s in range(size)]
        n_gt = sum(v > map_exact for v in means)
        group_ties += sum(v == map_exact for v in means)
        assert row["p_value"] == (1 + n_gt) / (1 + size), row["Metadata_Perturbation"]
    assert group_ties > 5                  # … and between group-null means and mAPs


def test_fast_p_values_equal_plain_reference_on_same_draws():
    """ap_p_values / mean_average_precision (fast) equal a brute-force count over the very null
    table they use: p = (1 + #{null ≥ AP − ε})/(1 + N), p = (1 + #{mean null > mAP + ε})/(1 + N)."""
    meta, x = screen(n_plates=6, n_pert=60, n_ctrl=12, seed=41, quant=2, d=8)
    ap = M.average_precision(meta, x, *REPLICATE_ARGS)
    size = 1000
    table = M.null_table(ap, size, 3)
    p = M.ap_p_values(ap, size, 3, nulls=table)
    mp = M.mean_average_precision(ap, ["Metadata_Perturbation"], size, 3, nulls=table)
    np.testing.assert_array_equal(p, M.ap_p_values(ap, size, 3))           # same draws either way
    valid = M.nulls._valid_mask(ap)
    for i in np.flatnonzero(valid):
        k, total = int(ap.at[i, "n_pos_pairs"]), int(ap.at[i, "n_total_pairs"])
        ref = np.count_nonzero(table[(k, total)] >= ap.at[i, "average_precision"] - M.significance._tie_eps(k + 2))
        assert p[i] == (1 + ref) / (1 + size)
    for _, row in mp[mp["p_value"].notna()].iterrows():
        mem = ap[valid & (ap["Metadata_Perturbation"] == row["Metadata_Perturbation"]).to_numpy()]
        k, t = mem["n_pos_pairs"].to_numpy(), mem["n_total_pairs"].to_numpy()
        mean = np.mean([table[(int(a), int(b))] for a, b in zip(k, t, strict=True)], axis=0)
        eps = M.significance._tie_eps(k.max() + len(mem) + 1)
        ref = np.count_nonzero(mean > row["mean_average_precision"] + eps)
        assert row["p_value"] == (1 + ref) / (1 + size), row["Metadata_Perturbation"]


def test_fast_counts_equal_plain_float_reference():
    """Histogram/bracketing counts equal brute-force counts on the same float64 null table,
    for every group size path (1 member, uint16 sums, > 64 members), near-threshold values
    included."""
    rng = np.random.default_rng(0)
    confs = np.array([[k, n] for k in (1, 2, 3, 5) for n in (k + 3, k + 20, k + 50)])
    null = M.null_distributions(confs, 2000, 9)
    sizes = rng.choice([1, 2, 3, 4, 6, 9, 70], size=400)
    member = rng.integers(0, len(confs), size=int(sizes.sum()))
    starts = np.cumsum(sizes) - sizes
    # thresholds: group-null means of sample 7 (ties), nudged values, and random ones
    sums = np.add.reduceat(null[member, 7], starts)
    maps = np.where(rng.random(len(sizes)) < 0.5, sums / sizes, rng.random(len(sizes)) * 0.6)
    maps[::7] += 1e-13
    got = M.significance._group_null_counts(null, member, sizes, maps, confs[:, 0])
    for g in range(len(sizes)):
        mem = member[starts[g]:starts[g] + sizes[g]]
        eps = M.significance._tie_eps(confs[mem, 0].max() + sizes[g] + 1)
        tot = null[mem].sum(axis=0)
        assert got[g] == np.count_nonzero(tot > sizes[g] * (maps[g] + eps)), g
    for c in range(len(confs)):
        t = np.concatenate([null[c, :40], null[c, :10] + 1e-13, null[c, :10] - 1e-13, rng.random(20), [0, 1, -1, 2]])
        np.testing.assert_array_equal(M.significance._count_at_least(null[c], t), (null[c][None, :] >= t[:, None]).sum(axis=1))


def test_floyd_batches_and_bitmaps_draw_the_same_lists():
    for k, total in [(1, 5), (3, 7), (5, 40), (8, 8), (6, 1000)]:
        a = M.nulls._floyd_nulls(k, np.array([total]), 500, 3)[0]
        b = M.nulls._floyd_bitmap_null(500, k, total, 3, budget=1 << 12)
        np.testing.assert_array_equal(a, b)
    ref = [_frac_ap(p) for p in _floyd_positions(2, 30, 90, 50)]
    np.testing.assert_allclose(M.null_distributions(np.array([[30, 90]]), 50, 2)[0], [float(f) for f in ref],
                               rtol=0, atol=1e-15)


def test_results_do_not_depend_on_threads(monkeypatch):
    meta, x = screen(seed=23, n_pert=40)
    out = []
    for threads in ("1", "3"):
        monkeypatch.setenv("MORPHOBENCH_MAP_THREADS", threads)
        ap = M.average_precision(meta, x, *REPLICATE_ARGS)
        ap["p"] = M.ap_p_values(ap, 500, 1)
        out.append((ap, M.mean_average_precision(ap, ["Metadata_Perturbation"], 500, 1)))
    pd.testing.assert_frame_equal(out[0][0], out[1][0])
    pd.testing.assert_frame_equal(out[0][1], out[1][1])


def test_map_groups_like_pandas_with_missing_keys(caplog):
    caplog.set_level("WARNING", logger="morphobench")
    meta, x = screen(seed=24)
    ap = M.average_precision(meta, x, *REPLICATE_ARGS)
    ap.loc[[3, 10], "Metadata_Perturbation"] = None       # not grouped (pandas drops NaN keys)
    ap.index = ap.index * 2 + 5
    res = M.mean_average_precision(ap, ["Metadata_Plate", "Metadata_Perturbation"], 200, 0)
    ref = ap.groupby(["Metadata_Plate", "Metadata_Perturbation"], observed=True, sort=True)
    sizes = ref.size()
    assert list(map(tuple, res[["Metadata_Plate", "Metadata_Perturbation"]].to_numpy())) == list(sizes.index)
    np.testing.assert_array_equal(res["n_profiles"], sizes.to_numpy())
    np.testing.assert_array_equal(res["mean_average_precision"], ref["average_precision"].mean().to_numpy())
    assert any("2 profile(s) with a missing" in r.getMessage() for r in caplog.records)  # said, not silent


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


def test_plate_without_negcon_errors_or_is_recorded(neg_path):
    meta, x = screen(n_plates=3, seed=10)
    drop = (meta["Metadata_Plate"] == "P1") & (meta["Metadata_PertType"] == "negcon")
    meta, x = meta[~drop].reset_index(drop=True), x[~drop.to_numpy()]
    meta[REF] = np.where(meta["Metadata_PertType"] == "negcon", np.arange(len(meta)), -1)
    with pytest.raises(MorphobenchError, match="P1"):
        M.replicate_retrieval(_df(meta, x), null_size=50)
    res = M.replicate_retrieval(_df(meta, x), null_size=50, on_missing_negcon="skip", options=neg_path)
    p1 = res.ap[(res.ap["Metadata_Plate"] == "P1") & (res.ap["n_pos_pairs"] > 0)]
    assert len(p1) and p1["average_precision"].isna().all()
    assert (p1["skip_reason"] == "no negative pairs").all()
    with pytest.raises(MorphobenchError, match="no negative pairs"):
        M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="error")
    kept = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep", options=neg_path)
    assert (kept.loc[p1.index, "average_precision"] == 1.0).all()  # copairs' number
    small_blocks = M.average_precision(meta, x, *REPLICATE_ARGS, no_negatives="keep", max_entries=40,
                                       options=neg_path)
    np.testing.assert_array_equal(small_blocks["average_precision"], kept["average_precision"])


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


def test_key_thresholds_decide_rank_keys_exactly():
    """θ(s) splits similarities exactly as copairs' float32 rank keys do: t ranks above s
    (key(t) < key(s)) iff t > θ(s), also next to float32 boundaries and ties."""
    A = __import__("sys").modules["morphobench.evaluate.map.average_precision"]
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.uniform(-1, 1, 2000), rng.uniform(-1, 1, 200).astype(np.float32).astype(np.float64),
                        [1.0, -1.0, 0.0, 1 - 2**-25, 2**-30, -(2**-30)]])
    theta = A.key_thresholds(s)
    key = lambda v: np.float32(1) - np.asarray(v, dtype=np.float64).astype(np.float32)  # noqa: E731
    for scale in (1e-6, 1e-8, 1e-10):
        t = np.clip(s + rng.normal(scale=scale, size=len(s)), -1, 1)
        np.testing.assert_array_equal(t > theta, key(t) < key(s))
    np.testing.assert_array_equal(theta >= s, np.ones(len(s), bool))
    nxt = np.nextafter(theta, np.inf)
    assert (key(nxt) < key(s)).all() and (key(theta) >= key(s)).all()   # θ is the last value ranking with s


def test_bitmap_nulls_do_not_depend_on_chunks_or_threads(monkeypatch):
    """Many-positive configurations drawn by Floyd on bitmaps, in chunks of lists run by the
    worker threads: the same draws whatever the chunking and the thread count."""
    confs = np.array([[40, 300], [3, 50], [60, 400]])
    ref = np.stack([M.nulls._floyd_bitmap_null(700, int(k), int(t), 5) for k, t in confs[[0, 2]]])
    for threads in ("1", "3"):
        monkeypatch.setenv("MORPHOBENCH_MAP_THREADS", threads)
        got = M.null_distributions(confs, 700, 5)
        np.testing.assert_array_equal(got[[0, 2]], ref)
    small = M.nulls._floyd_bitmap_null(700, 40, 300, 5, budget=64)      # many tiny chunks
    np.testing.assert_array_equal(small, ref[0])


def test_compiled_bitmap_nulls_equal_numpy_steps():
    """The compiled Floyd kernel (one list at a time, APs summed from its bitmap) draws the same
    lists and sums the same terms as the NumPy bitmap steps: bitwise equal null APs, also with
    many collisions (n_pos close to n_total) and word boundaries (n_total around 64)."""
    kernels = M.options._kernels()
    if kernels is None:
        pytest.skip("numba not importable")
    for k, total in [(40, 300), (63, 64), (64, 65), (60, 128), (200, 3000), (700, 701)]:
        words = M.nulls._floyd_words(5, k, total, 400)
        ref = M.nulls._floyd_bitmap_rows_numpy(words, 0, 400, k, total)
        for s0, m in ((0, 400), (17, 100)):
            got = np.empty(m)
            kernels.floyd_bitmap_ap(words, s0, m, k, total, got, kernels._DEBRUIJN)
            np.testing.assert_array_equal(got, ref[s0:s0 + m])


PLATE_NEGATIVES = (["Metadata_Perturbation"], [], ["Metadata_Plate"], [])     # every other well of the plate


@pytest.mark.parametrize("definition", ["dense_negatives", "plate_negatives"])
@pytest.mark.parametrize("quant", [None, 1], ids=["continuous", "ties_q1"])
@pytest.mark.parametrize("compiled", [False, True])
def test_many_positive_members_of_symmetric_groups_equal_copairs(definition, quant, compiled):
    """Queries of a symmetric group with more positives than thresholds allow (48 controls: 47
    positives) are ranked by sorted rows of the group's GEMM: equal to copairs, with diffby
    (same-perturbation entries masked) and without (self masked, positives across plates, a pair
    both positive and negative listed twice)."""
    if compiled and M.options._kernels() is None:
        pytest.skip("numba not importable")
    meta, x = screen(n_ctrl=12, quant=quant, d=6 if quant else 16, seed=41)
    args = DEFINITIONS[definition] if definition in DEFINITIONS else PLATE_NEGATIVES
    opts = M.MapOptions(symmetric_min=1, tile=29, max_entries=500, compiled=compiled)
    A = __import__("sys").modules["morphobench.evaluate.map.average_precision"]
    n_pos = M.average_precision(meta, x, *args, no_negatives="keep")["n_pos_pairs"].to_numpy()
    assert (n_pos > A._SYM_MAX_POS).sum() >= 12
    _cmp_ap(meta, x, args, options=opts)


def test_compiled_tiles_decide_within_the_margin_in_float64(monkeypatch):
    """The compiled float32 tiles count exactly: with the margin widened (almost every entry then
    decided by its float64 similarity) or as derived, the same APs as the float64 NumPy tiles
    and copairs, ties included; the margin bounds the float32 GEMM's error."""
    kernels = M.options._kernels()
    if kernels is None:
        pytest.skip("numba not importable")
    A = __import__("sys").modules["morphobench.evaluate.map.average_precision"]
    rng = np.random.default_rng(7)
    for d in (3, 64, 256):
        xs = rng.normal(size=(300, d)) * rng.random((300, 1)) ** 4
        xs /= np.linalg.norm(xs, axis=1, keepdims=True)
        err = np.abs((xs.astype(np.float32) @ xs.astype(np.float32).T).astype(np.float64) - xs @ xs.T).max()
        assert err < A._f32_margin(d)
    meta, x = screen(quant=1, d=6, seed=3)
    args = DEFINITIONS["dense_negatives"]
    ref = M.average_precision(meta, x, *args, no_negatives="keep",
                              options=M.MapOptions(symmetric_min=1, tile=31, compiled=False))["average_precision"]
    for margin, threads in ((None, 1), (None, 3), (0.05, None), (2.5, None)):
        if margin is not None:
            monkeypatch.setattr(A, "_f32_margin", lambda d, m=margin: m)
        opts = M.MapOptions(symmetric_min=1, tile=31, compiled=True, threads=threads)
        _, got = _cmp_ap(meta, x, args, options=opts)
        np.testing.assert_array_equal(got["average_precision"], ref)
