"""Known-relationship recall engine vs EFAAR v1.0 (efaar-benchmarking, installed --no-deps)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pytest

from morphobench.evaluate import recall as R
from morphobench.io import MorphobenchError


def _efaar_benchmarking():
    """Import efaar_benchmarking.benchmarking with its unused heavy import (geomloss) stubbed."""
    if "geomloss" not in sys.modules:
        stub = types.ModuleType("geomloss")
        stub.SamplesLoss = None  # only used by pert_signal_magnitude_metric
        sys.modules["geomloss"] = stub
    bench = pytest.importorskip("efaar_benchmarking.benchmarking")
    from efaar_benchmarking import constants

    return bench, constants


@pytest.fixture(scope="module")
def efaar():
    return _efaar_benchmarking()


@pytest.fixture(scope="module")
def corum(efaar):
    return pd.read_csv(f"{efaar[1].BENCHMARK_DATA_DIR}/CORUM.txt")


@pytest.fixture(scope="module")
def reactome(efaar):
    return pd.read_csv(f"{efaar[1].BENCHMARK_DATA_DIR}/Reactome.txt")


THRESHOLDS = [(0.05, 0.95), (0.1, 0.9), (0.01, 0.99), (0.2, 0.8)]


def _map(genes, x):
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    df.insert(0, "Metadata_Gene", list(genes))
    return df


def _efaar_recall(bench, genes, x, rels, thresholds=THRESHOLDS, tmp=None):
    """EFAAR on the same relationships: written to a directory, as EFAAR reads them."""
    import tempfile
    from pathlib import Path

    from sklearn.utils import Bunch

    d = Path(tempfile.mkdtemp(dir=tmp))
    for name, df in rels.items():
        df.to_csv(d / f"{name}.txt", index=False)
    data = Bunch(features=pd.DataFrame(x), metadata=pd.DataFrame({"gene": list(genes)}))
    return bench.known_relationship_benchmark(data, "gene", benchmark_sources=list(rels),
                                              recall_thr_pairs=thresholds, benchmark_data_dir=str(d))


def _touching(rels, genes):
    """Relationship rows with at least one gene in the map (keeps EFAAR's slow row-wise filter
    short; pairs with one missing gene remain, so the dropping rule is still exercised)."""
    g = set(genes)
    return {k: v[v["entity1"].isin(g) | v["entity2"].isin(g)].reset_index(drop=True) for k, v in rels.items()}


def _structured(corum, n, d, seed):
    rng = np.random.default_rng(seed)
    genes = sorted(set(corum["entity1"]) | set(corum["entity2"]))
    sel = rng.choice(genes, n, replace=False)
    x = rng.normal(size=(n, d))
    idx = {g: i for i, g in enumerate(sel)}
    for a, b in corum.itertuples(index=False):
        if a in idx and b in idx and rng.random() < 0.4:
            x[idx[b]] += 0.6 * x[idx[a]]
    return sel, x


def _compare(efaar, genes, x, rels, **kw):
    bench, _ = efaar
    rels = _touching(rels, genes)
    ref = _efaar_recall(bench, genes, x, rels)
    ours = R.known_relationship_recall(_map(genes, x), rels, threshold_pairs=THRESHOLDS, **kw)
    cols = [c for c in ref.columns if c.startswith("recall_")]
    assert list(ours["source"]) == list(ref["source"])
    np.testing.assert_array_equal(ours[cols].to_numpy(dtype=float), ref[cols].to_numpy(dtype=float))
    np.testing.assert_array_equal(ours["null_distribution_size"], ref["null_distribution_size"])
    np.testing.assert_array_equal(ours["query_distribution_size"], ref["query_distribution_size"])
    return ref, ours


def test_random_profiles_exact_and_near_ten_percent(efaar, corum, reactome):
    rng = np.random.default_rng(0)
    genes = rng.choice(sorted(set(corum["entity1"]) | set(corum["entity2"])), 1200, replace=False)
    x = rng.normal(size=(1200, 24))
    _, ours = _compare(efaar, genes, x, {"CORUM": corum, "Reactome": reactome})
    rc = ours.loc[ours["source"] == "CORUM"].iloc[0]
    assert rc["query_distribution_size"] > 1000
    assert abs(rc["recall_0.05_0.95"] - 0.10) <= 0.02


def test_structured_profiles_exact(efaar, corum, reactome):
    genes, x = _structured(corum, 900, 16, seed=1)
    _, ours = _compare(efaar, genes, x, {"CORUM": corum, "Reactome": reactome})
    assert ours.loc[0, "recall_0.05_0.95"] > 0.3


@pytest.mark.parametrize("force", ["all", "two_pass", "pilot"])
def test_every_engine_path_is_exact(efaar, corum, force, monkeypatch):
    genes, x = _structured(corum, 700, 8, seed=2)
    bench, _ = efaar
    rels = _touching({"CORUM": corum}, genes)
    ref = _efaar_recall(bench, genes, x, rels)
    if force == "pilot":
        monkeypatch.setattr(R, "_SMALL_NULL", 1000)
        monkeypatch.setattr(R, "_BLOCK_VALUES", 5000)
        force = None
    pairs = [(min(p), max(p)) for p in THRESHOLDS]
    ours = R._recall_table(x, pd.Index(genes), rels, pairs,
                           [R._threshold_label(p) for p in THRESHOLDS], seed=0, show_progress=False, _force=force)
    cols = [c for c in ref.columns if c.startswith("recall_")]
    np.testing.assert_array_equal(ours[cols].to_numpy(dtype=float), ref[cols].to_numpy(dtype=float))


def test_order_statistics_exact_with_ties(monkeypatch):
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(300, 3)))  # many identical directions → tied cosines
    x[np.all(x == 0, axis=1)] = 1
    from sklearn.metrics.pairwise import cosine_similarity

    full = cosine_similarity(x)[np.triu_indices(300, k=1)]
    srt = np.sort(full)
    ranks = [0, 5, 100, len(srt) // 2, len(srt) - 1]
    for force in ("all", "two_pass"):
        stats, _ = R.null_order_statistics(x, ranks, _force=force)
        np.testing.assert_array_equal(stats, srt[ranks])
    monkeypatch.setattr(R, "_SMALL_NULL", 10)
    stats, _ = R.null_order_statistics(x, ranks, pilot_rows=20)
    np.testing.assert_array_equal(stats, srt[ranks])


def test_recall_from_scores_equals_compute_recall(efaar):
    bench, _ = efaar
    rng = np.random.default_rng(4)
    null = np.round(rng.normal(size=5000), 2)
    query = np.round(rng.normal(size=700) * 1.5, 2)
    ref = bench.compute_recall(null, query, THRESHOLDS)
    ours = R.recall_from_scores(null, query, THRESHOLDS)
    assert ref == ours
    # the order-statistic rule gives the same as the searchsorted rule, ties included
    plan, ranks = R._rank_plan([(min(p), max(p)) for p in THRESHOLDS], len(null))
    srt = np.sort(null)
    stat_of = {r: srt[r] for r in ranks}
    for (cl, cr), p in zip(plan, THRESHOLDS, strict=True):
        got = R._recalled(query, cl, cr, stat_of, len(null)).sum() / len(query)
        assert got == ref[R._threshold_label(p)]


@pytest.mark.parametrize("n", [1, 7, 19, 20, 21, 100, 12345, 4_000_000])
def test_threshold_counts_match_float_division(n):
    for thr in (0.0, 0.01, 0.05, 0.1, 0.2, 0.8, 0.9, 0.95, 0.99, 1.0):
        cl = R._left_count(thr, n)
        assert cl == max([c for c in range(-1, min(n, 30) + 1) if c <= n and (c < 0 or c / n <= thr)] +
                         ([cl] if cl > 30 else []))
        assert (cl < 0 or cl / n <= thr) and (cl + 1 > n or (cl + 1) / n > thr)
        cr = R._right_count(thr, n)
        assert (cr > n or cr / n >= thr) and (cr == 0 or (cr - 1) / n < thr)


def test_filter_relationships_equals_efaar(efaar, corum):
    bench, _ = efaar
    sub = corum.iloc[:3000].copy()
    sub.loc[sub.index[:5], "entity2"] = sub.loc[sub.index[:5], "entity1"]  # self pairs
    ref = bench.filter_relationships(sub.copy())
    ours = R.filter_relationships(sub)
    assert set(map(tuple, ref.to_numpy())) == set(map(tuple, ours.to_numpy()))
    assert len(ref) == len(ours)


def test_documented_skips_and_errors(corum):
    rng = np.random.default_rng(5)
    genes = ["AAA", "BBB", "CCC", "DDD"]
    x = rng.normal(size=(4, 5))
    rels = {"toy": pd.DataFrame({"entity1": ["AAA", "BBB", "AAA", "ZZZ"], "entity2": ["BBB", "AAA", "AAA", "CCC"]}),
            "none": pd.DataFrame({"entity1": ["XX"], "entity2": ["YY"]})}
    out = R.known_relationship_recall(_map(genes, x), rels)
    toy = out.set_index("source").loc["toy"]
    assert toy["n_pairs_used"] == 1 and toy["n_pairs_gene_missing"] == 1  # ZZZ missing from the map
    none = out.set_index("source").loc["none"]
    assert np.isnan(none["recall_0.05_0.95"]) and "no annotated pair" in none["skip_reason"]
    with pytest.raises(MorphobenchError, match="duplicates"):
        R.known_relationship_recall(_map(["AAA", "AAA", "BBB"], x[:3]), rels)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(MorphobenchError, match="f2"):
        R.known_relationship_recall(_map(genes, bad), rels)
    with pytest.raises(MorphobenchError, match="at least 2"):
        R.known_relationship_recall(_map(genes[:1], x[:1]), rels)


def test_curve_and_gene_set(efaar, corum):
    genes, x = _structured(corum, 600, 8, seed=6)
    curve = R.recall_curve(_map(genes, x), {"CORUM": corum})
    assert list(curve["percentile"])[:3] == [1.0, 2.0, 3.0] and len(curve) == 20
    assert np.all(np.diff(curve["recall"].to_numpy()) >= 0)
    bench, _ = efaar
    ref = _efaar_recall(bench, genes, x, _touching({"CORUM": corum}, genes), thresholds=[(0.03, 0.97), (0.15, 0.85)])
    got = curve.set_index("percentile").loc[[3.0, 15.0], "recall"].to_numpy()
    np.testing.assert_array_equal(got, ref[["recall_0.03_0.97", "recall_0.15_0.85"]].to_numpy()[0])

    gene_set = set(genes[:400]) | {"NOT_A_GENE"}
    tab = R.recall_within_gene_set(_map(genes, x), {"CORUM": corum}, gene_set, fpr=0.05, null="all")
    # explicit one-sided computation on the restricted map
    from sklearn.metrics.pairwise import cosine_similarity

    keep = [i for i, g in enumerate(genes) if g in gene_set]
    sub_genes = pd.Index([genes[i] for i in keep])
    c = cosine_similarity(x[keep])
    null = np.sort(c[np.triu_indices(len(keep), k=1)])
    rels = R.filter_relationships(corum)
    i, j = sub_genes.get_indexer(rels["entity1"]), sub_genes.get_indexer(rels["entity2"])
    ok = (i >= 0) & (j >= 0)
    s = c[i[ok], j[ok]]
    expect = np.mean(np.searchsorted(null, s, side="left") / len(null) >= 0.95)
    assert tab.loc[0, "recall_top_0.05"] == expect
    assert tab.loc[0, "n_set_genes_missing"] == 1
    # default (MAE-CVPR Table 5, a false-positive rate): the null is the set's NOT annotated pairs
    fp = R.recall_within_gene_set(_map(genes, x), {"CORUM": corum}, gene_set, fpr=0.05)
    annotated = set(zip(np.minimum(i[ok], j[ok]).tolist(), np.maximum(i[ok], j[ok]).tolist()))
    iu = np.triu_indices(len(keep), k=1)
    unannotated = np.sort([v for a, b, v in zip(*iu, c[iu], strict=True) if (a, b) not in annotated])
    expect_fp = np.mean(np.searchsorted(unannotated, s, side="left") / len(unannotated) >= 0.95)
    assert fp.loc[0, "recall_top_0.05"] == expect_fp and fp.loc[0, "null"] == "unannotated"
    assert fp.loc[0, "null_distribution_size"] == len(unannotated) == len(null) - len(annotated)


@pytest.mark.parametrize("mode", ["all", "two_pass", "pilot"])
def test_order_statistics_without_the_query_pairs(mode, monkeypatch):
    """exclude_queries: exact order statistics of every pair but the queries, on each engine path."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 5))
    x[:40] = np.round(x[:40])                     # exact ties among values
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    iu = np.triu_indices(300, k=1)
    pick = rng.choice(len(iu[0]), size=2000, replace=False)
    qr, qc = iu[0][pick], iu[1][pick]
    rest = np.ones(len(iu[0]), dtype=bool)
    rest[pick] = False
    if mode == "pilot":
        monkeypatch.setattr(R, "_SMALL_NULL", 0)
    ref = np.sort((xn @ xn.T)[iu][rest])
    ranks = [0, 17, len(ref) // 20, len(ref) // 2, len(ref) - len(ref) // 20, len(ref) - 1]
    stats, qs = R.null_order_statistics(x, ranks, qr, qc, exclude_queries=True,
                                        _force=None if mode == "pilot" else mode)
    np.testing.assert_allclose(stats, ref[ranks], rtol=0, atol=1e-15)
    np.testing.assert_allclose(qs, (xn @ xn.T)[qr, qc], rtol=0, atol=1e-15)
    with pytest.raises(MorphobenchError, match="distinct"):
        R.null_order_statistics(x, [0], np.array([0, 0]), np.array([1, 1]), exclude_queries=True)


def test_float32_maps_match_efaar(efaar, corum):
    genes, x = _structured(corum, 500, 12, seed=7)
    _compare(efaar, genes, x.astype(np.float32), {"CORUM": corum})


@pytest.mark.slow
def test_large_map_exact(efaar, corum, reactome):
    genes, x = _structured(corum, 3500, 32, seed=8)  # N = 6.1M null values: pilot path
    _compare(efaar, genes, x, {"CORUM": corum, "Reactome": reactome})


def test_normalized_equals_sklearn_normalize_bit_for_bit():
    from sklearn.preprocessing import normalize

    from morphobench.evaluate.recall import _normalized

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.normal(size=(50, 17)).astype(dtype)
        x[3] = 0.0
        x[7] = 1e-30
        got = _normalized(x)
        assert got.dtype == dtype and not np.shares_memory(got, x)
        np.testing.assert_array_equal(got, normalize(x, copy=True))
    ints = rng.integers(-5, 5, size=(6, 4))
    np.testing.assert_array_equal(_normalized(ints), normalize(ints.astype(np.float64)))
