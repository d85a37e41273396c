"""Known-relationship recall with EFAAR v1.0 semantics (REFERENCE.md §4).

EFAAR ``known_relationship_benchmark`` / ``compute_recall`` (efaar-benchmarking 1.0):

* the map has one row per gene (aggregated); cosine similarities are sklearn's
  ``cosine_similarity`` (rows L2-normalized, one matrix product, float32 when the features are
  float32, float64 otherwise);
* null = every upper-triangle (``i < j``) cosine of the map, N = n(n−1)/2 values;
* annotated pairs: ``entity1,entity2`` rows, each pair sorted, self-pairs and duplicates dropped,
  kept when both genes are in the map; the query value of pair (a, b), a < b, is the matrix entry
  ``[row(a), row(b)]``;
* a pair is recalled at thresholds (left, right) if ``searchsorted(null, s, 'right')/N ≤ left`` or
  ``searchsorted(null, s, 'left')/N ≥ right``; recall = fraction recalled.

What we do differently (results are the same): EFAAR materializes the n × n matrix, all N null
values (and their ``triu_indices``) and sorts them. The recall only needs, per threshold, the
null's order statistic at the rank where ``count/N`` crosses the threshold:
``searchsorted(null, s, 'right')/N ≤ left  ⇔  s < null_sorted[c_L]`` with ``c_L`` the largest
count with ``c_L/N ≤ left`` (float64 division, exactly EFAAR's comparison), and
``searchsorted(null, s, 'left')/N ≥ right  ⇔  s > null_sorted[c_R − 1]`` with ``c_R`` the smallest
count with ``c_R/N ≥ right``. We stream the upper triangle in row blocks (one GEMM per block,
half of EFAAR's products), histogram it into 2^20 value buckets, and keep only the values of the
buckets that contain the needed ranks (predicted from a small pilot sample of rows; a bucket the
pilot missed is collected in a second pass, so the order statistics are always exact). Memory is
O(block + kept values), never O(n²).

Bit-level caveat: a blocked matrix product may differ from EFAAR's full product in the last bit
for some entries (BLAS edge kernels); a recall could then differ only if a pair's similarity lies
within one ulp (~1e-16) of a null order statistic. Tests compare recall with EFAAR exactly.

Documented skips: annotated pairs with a gene missing from the map are dropped (counted in
``n_pairs_gene_missing``); a source with no usable pair gives a row with NaN recall and a
``skip_reason`` (EFAAR silently omits it). Duplicate genes in the map raise (EFAAR's check forgets
its ``raise``); a map with fewer than 2 genes raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from morphobench.data.tables import feature_columns
from morphobench.io import MorphobenchError, progress

log = logging.getLogger("morphobench.evaluate.recall")

BENCHMARK_SOURCES: tuple[str, ...] = ("CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB")
DEFAULT_THRESHOLD_PAIRS: tuple[tuple[float, float], ...] = ((0.05, 0.95), (0.1, 0.9))
#: recall curve: pairs (p, 1 − p) for p = 1 % … 20 %
CURVE_PERCENTILES: tuple[float, ...] = tuple(round(k / 100, 2) for k in range(1, 21))

_NBUCKETS = 1 << 20
_BLOCK_VALUES = 1 << 23        # similarities per row block
_SMALL_NULL = 1 << 22          # below this many null values keep them all (no pilot)
_MAX_KEEP = 60_000_000         # above this many predicted kept values: two passes instead

__all__ = [
    "BENCHMARK_SOURCES", "DEFAULT_THRESHOLD_PAIRS", "CURVE_PERCENTILES",
    "filter_relationships", "read_relationships", "recall_from_scores",
    "null_order_statistics", "known_relationship_recall", "recall_curve", "recall_within_gene_set",
]


# ----------------------------------------------------------------------------------------------
# relationships
# ----------------------------------------------------------------------------------------------
def filter_relationships(rels: pd.DataFrame) -> pd.DataFrame:
    """EFAAR ``filter_relationships``: sort each pair, drop self-pairs and duplicates (vectorized).

    Rows with a missing entity are dropped (EFAAR would fail on them).
    """
    for c in ("entity1", "entity2"):
        if c not in rels.columns:
            raise MorphobenchError(f"relationships need columns entity1, entity2 (have {list(rels.columns)})")
    df = rels[["entity1", "entity2"]].dropna()
    if len(df) < len(rels):
        log.warning("relationships: dropped %d row(s) with a missing entity", len(rels) - len(df))
    e1 = df["entity1"].to_numpy(dtype=object)
    e2 = df["entity2"].to_numpy(dtype=object)
    swap = np.array([a > b for a, b in zip(e1, e2, strict=True)], dtype=bool)
    a = np.where(swap, e2, e1)
    b = np.where(swap, e1, e2)
    out = pd.DataFrame({"entity1": a, "entity2": b}, index=df.index)
    return out[out["entity1"] != out["entity2"]].drop_duplicates()


def read_relationships(directory: str | os.PathLike, sources: Iterable[str] = BENCHMARK_SOURCES,
                       *, filter: bool = True) -> dict[str, pd.DataFrame]:
    """Read ``{directory}/{source}.txt`` (CSV ``entity1,entity2``), as EFAAR
    ``get_benchmark_relationships``."""
    out = {}
    for s in sources:
        path = Path(directory) / f"{s}.txt"
        if not path.exists():
            raise MorphobenchError(f"relationship file for source {s!r} not found: {path}")
        df = pd.read_csv(path)
        out[s] = filter_relationships(df) if filter else df
    return out


# ----------------------------------------------------------------------------------------------
# thresholds → ranks
# ----------------------------------------------------------------------------------------------
def _left_count(thr: float, n: int) -> int:
    """Largest c in [−1, n] with c/n ≤ thr (float64 division, as EFAAR compares)."""
    c = int(np.floor(thr * n))
    c = min(max(c, -1), n)
    while c + 1 <= n and (c + 1) / n <= thr:
        c += 1
    while c >= 0 and c / n > thr:
        c -= 1
    return c


def _right_count(thr: float, n: int) -> int:
    """Smallest c in [0, n + 1] with c/n ≥ thr (n + 1: never)."""
    c = int(np.ceil(thr * n))
    c = min(max(c, 0), n + 1)
    while c - 1 >= 0 and (c - 1) / n >= thr:
        c -= 1
    while c <= n and c / n < thr:
        c += 1
    return c


def _threshold_label(pair: Sequence[float]) -> str:
    return f"recall_{np.min(pair)}_{np.max(pair)}"


def recall_from_scores(null: np.ndarray, query: np.ndarray,
                       threshold_pairs: Sequence[Sequence[float]] = DEFAULT_THRESHOLD_PAIRS) -> dict:
    """EFAAR ``compute_recall`` on explicit null and query values (reference semantics; sorts)."""
    null = np.sort(np.asarray(null))
    query = np.asarray(query)
    out = {"null_distribution_size": null.shape[0], "query_distribution_size": query.shape[0]}
    left = np.searchsorted(null, query, side="left") / len(null)
    right = np.searchsorted(null, query, side="right") / len(null)
    for pair in threshold_pairs:
        lo, hi = np.min(pair), np.max(pair)
        out[_threshold_label(pair)] = np.sum((right <= lo) | (left >= hi)) / len(query)
    return out


# ----------------------------------------------------------------------------------------------
# streaming engine
# ----------------------------------------------------------------------------------------------
def _normalized(x: np.ndarray) -> np.ndarray:
    """sklearn ``normalize`` as used by ``cosine_similarity``: the same arithmetic and dtype
    (``einsum`` row norms, norms below 10 eps taken as 1, in-place division of a float copy),
    without importing scikit-learn (≈ 3 s of every recall job's start-up)."""
    x = np.array(x, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64, copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < 10 * np.finfo(norms.dtype).eps] = 1.0
    x /= norms[:, None]
    return x


def _buckets(vals: np.ndarray) -> np.ndarray:
    b = ((vals + 1.0) * (_NBUCKETS / 2)).astype(np.int64)
    np.clip(b, 0, _NBUCKETS - 1, out=b)
    return b


def _pilot_candidates(xn: np.ndarray, ranks: np.ndarray, n_null: int, rows: int, seed: int) -> np.ndarray:
    """Buckets likely to hold the wanted ranks, from a sample of whole rows of the matrix."""
    n = len(xn)
    rng = np.random.default_rng(seed)
    r = np.sort(rng.choice(n, size=min(rows, n), replace=False))
    s = xn[r] @ xn.T
    s[np.arange(len(r)), r] = np.nan
    sample = np.sort(s[~np.isnan(s)])
    m = len(sample)
    cand = np.zeros(_NBUCKETS, dtype=bool)
    for c in ranks:
        p = (c + 0.5) / n_null
        qhat = sample[min(m - 1, int(p * m))]
        f = np.mean(s < qhat, axis=1, where=~np.isnan(s))            # per-row CDF at the estimate
        se = max(float(np.std(f)) / np.sqrt(len(r)), np.sqrt(p * (1 - p) / m))
        delta = 8 * se + 16 / m
        lo = sample[max(0, int((p - delta) * m))]
        hi = sample[min(m - 1, int(np.ceil((p + delta) * m)))]
        cand[_buckets(np.array([lo]))[0]:_buckets(np.array([hi]))[0] + 1] = True
    if cand[_buckets(sample)].mean() * n_null > _MAX_KEEP:   # too many values to keep: two passes
        log.info("recall: pilot brackets too wide for one pass; using histogram + exact second pass")
        cand[:] = False
    return cand


def null_order_statistics(x: np.ndarray, ranks: Sequence[int], query_rows: np.ndarray | None = None,
                          query_cols: np.ndarray | None = None, *, exclude_queries: bool = False,
                          pilot_rows: int = 256, seed: int = 0, show_progress: bool = False,
                          _force: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact order statistics (0-based ``ranks``) of the upper-triangle cosines of ``x`` and the
    cosines of the pairs ``(query_rows[k], query_cols[k])`` (row < col), streamed in row blocks.
    With ``exclude_queries`` (distinct query pairs) the null is every upper-triangle pair but the
    queries (e.g. the pairs of a gene set that are not annotated: a false-positive rate).

    Returns ``(values at ranks, query similarities)``. ``_force`` ("all" | "two_pass") is for tests.
    """
    xn = _normalized(x)
    n = len(xn)
    n_null = n * (n - 1) // 2
    if exclude_queries and query_rows is not None and len(query_rows):
        keys = np.asarray(query_rows, dtype=np.int64) * n + np.asarray(query_cols, dtype=np.int64)
        if len(np.unique(keys)) != len(keys):
            raise MorphobenchError("exclude_queries needs distinct query pairs")
        n_null -= len(keys)
    ranks = np.asarray(sorted(set(int(c) for c in ranks)), dtype=np.int64)
    if len(ranks) and (ranks.min() < 0 or ranks.max() >= n_null):
        raise MorphobenchError("order-statistic rank out of range")
    qr = np.zeros(0, np.int64) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    qc = np.zeros(0, np.int64) if query_cols is None else np.asarray(query_cols, dtype=np.int64)
    if (qr >= qc).any():
        raise MorphobenchError("query pairs must have row < col")
    qsims = np.empty(len(qr), dtype=xn.dtype)
    qorder = np.argsort(qr, kind="stable")
    qr_sorted = qr[qorder]

    if _force == "all" or (_force is None and n_null <= _SMALL_NULL):
        cand = np.ones(_NBUCKETS, dtype=bool)
    elif _force == "two_pass" or not len(ranks):
        cand = np.zeros(_NBUCKETS, dtype=bool)
    else:
        cand = _pilot_candidates(xn, ranks, n_null, pilot_rows, seed)

    brows = max(1, _BLOCK_VALUES // max(n, 1))
    triu_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def blocks():
        for a in range(0, n - 1, brows):
            yield a, min(n, a + brows)

    def block_values(a: int, b: int, s: np.ndarray) -> np.ndarray:
        w = b - a
        if w not in triu_cache:
            triu_cache[w] = np.triu_indices(w, k=1)
        iu = triu_cache[w]
        return np.concatenate([s[:, :w][iu], s[:, w:].ravel()])

    def one_pass(want: np.ndarray, with_hist: bool):
        hist = np.zeros(_NBUCKETS, dtype=np.int64) if with_hist else None
        kept_b, kept_v = [], []
        for a, b in progress(list(blocks()), desc="recall: null", disable=not show_progress or None):
            s = xn[a:b] @ xn[a:].T
            if with_hist:
                lo, hi = np.searchsorted(qr_sorted, [a, b])
                if hi > lo:
                    sel = qorder[lo:hi]
                    qsims[sel] = s[qr[sel] - a, qc[sel] - a]
            vals = block_values(a, b, s)
            bk = _buckets(vals)
            if with_hist:
                hist += np.bincount(bk, minlength=_NBUCKETS)
            m = want[bk]
            if m.any():
                kept_b.append(bk[m])
                kept_v.append(vals[m])
        kb = np.concatenate(kept_b) if kept_b else np.zeros(0, np.int64)
        kv = np.concatenate(kept_v) if kept_v else np.zeros(0, xn.dtype)
        return hist, kb, kv

    hist, kb, kv = one_pass(cand, with_hist=True)
    qb = _buckets(qsims) if exclude_queries and len(qsims) else None
    if qb is not None:
        hist -= np.bincount(qb, minlength=_NBUCKETS)
    if hist.sum() != n_null:  # pragma: no cover - internal consistency
        raise MorphobenchError("internal error: null histogram does not add up")
    cum = np.cumsum(hist)
    bucket_of = np.searchsorted(cum, ranks, side="right")
    missing = np.setdiff1d(bucket_of[~cand[bucket_of]], [])
    if len(missing):
        log.info("recall: %d bucket(s) not kept by the pilot; second pass", len(missing))
        want = np.zeros(_NBUCKETS, dtype=bool)
        want[missing] = True
        _, kb2, kv2 = one_pass(want, with_hist=False)
        kb, kv = np.concatenate([kb, kb2]), np.concatenate([kv, kv2])
    stats = np.empty(len(ranks), dtype=np.float64)
    for k, (c, bk) in enumerate(zip(ranks, bucket_of, strict=True)):
        vals = kv[kb == bk]
        if qb is not None and (qb == bk).any():      # remove one copy of each query value
            vals = np.sort(vals)
            ex = np.sort(qsims[qb == bk])
            first = np.searchsorted(ex, ex, side="left")
            pos = np.searchsorted(vals, ex, side="left") + (np.arange(len(ex)) - first)
            if (pos >= len(vals)).any() or not np.array_equal(vals[pos], ex):  # pragma: no cover
                raise MorphobenchError("internal error: excluded query value not in the null stream")
            vals = np.delete(vals, pos)
        below = int(cum[bk - 1]) if bk > 0 else 0
        if len(vals) != hist[bk]:  # pragma: no cover - internal consistency
            raise MorphobenchError("internal error: kept bucket incomplete")
        stats[k] = np.partition(vals, c - below)[c - below]
    return stats, qsims


def _rank_plan(threshold_pairs, n_null: int):
    """Per threshold: (left count or None, right count or None) and the ranks they need."""
    plan, ranks = [], set()
    for lo, hi in threshold_pairs:
        cl = None if lo is None else _left_count(lo, n_null)
        cr = None if hi is None else _right_count(hi, n_null)
        if cl is not None and 0 <= cl < n_null:
            ranks.add(cl)
        if cr is not None and 1 <= cr <= n_null:
            ranks.add(cr - 1)
        plan.append((cl, cr))
    return plan, sorted(ranks)


def _recalled(s: np.ndarray, cl, cr, stat_of: dict, n_null: int) -> np.ndarray:
    hit = np.zeros(len(s), dtype=bool)
    if cl is not None:
        if cl >= n_null:
            hit[:] = True
        elif cl >= 0:
            hit |= s < stat_of[cl]
    if cr is not None:
        if cr == 0:
            hit[:] = True
        elif cr <= n_null:
            hit |= s > stat_of[cr - 1]
    return hit


def _map_matrix(profiles: pd.DataFrame, pert_col: str, source: str) -> tuple[np.ndarray, pd.Index]:
    if pert_col not in profiles.columns:
        raise MorphobenchError(f"{source}: column {pert_col!r} missing")
    genes = pd.Index(profiles[pert_col])
    if genes.hasnans:
        raise MorphobenchError(f"{source}: {int(genes.isna().sum())} row(s) without a {pert_col}")
    if genes.has_duplicates:
        dup = genes[genes.duplicated()].unique()[:5].tolist()
        raise MorphobenchError(f"{source}: {pert_col} has duplicates {dup}; recall needs one row per gene "
                               "(aggregate to perturbation level first)")
    feats = feature_columns(profiles)
    if not feats:
        raise MorphobenchError(f"{source}: no feature columns")
    block = profiles[feats]
    x = block.to_numpy()
    if not np.issubdtype(x.dtype, np.floating) or x.dtype != np.float32:
        x = block.to_numpy(dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        bad = [feats[j] for j in np.flatnonzero(~finite.all(axis=0))[:5]]
        raise MorphobenchError(f"{source}: NaN/inf feature values in column(s) {bad}")
    if len(x) < 2:
        raise MorphobenchError(f"{source}: recall needs at least 2 genes, got {len(x)}")
    return x, genes


def _pairs_in_map(rels: pd.DataFrame, genes: pd.Index) -> tuple[np.ndarray, np.ndarray, int]:
    rels = filter_relationships(rels)
    i = genes.get_indexer(rels["entity1"])
    j = genes.get_indexer(rels["entity2"])
    ok = (i >= 0) & (j >= 0)
    r, c = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])
    return r.astype(np.int64), c.astype(np.int64), int((~ok).sum())


def _recall_table(x: np.ndarray, genes: pd.Index, relationships: Mapping[str, pd.DataFrame],
                  threshold_pairs, labels, *, seed: int, show_progress: bool, _force=None) -> pd.DataFrame:
    n = len(x)
    n_null = n * (n - 1) // 2
    per_source = {s: _pairs_in_map(r, genes) for s, r in relationships.items()}
    qr = np.concatenate([v[0] for v in per_source.values()]) if per_source else np.zeros(0, np.int64)
    qc = np.concatenate([v[1] for v in per_source.values()]) if per_source else np.zeros(0, np.int64)
    plan, ranks = _rank_plan(threshold_pairs, n_null)
    stats, qs = null_order_statistics(x, ranks, qr, qc, seed=seed, show_progress=show_progress, _force=_force)
    stat_of = dict(zip(ranks, stats, strict=True))
    rows, off = [], 0
    for s, (r, _c, n_missing) in per_source.items():
        sims = qs[off:off + len(r)]
        off += len(r)
        row = {"source": s, "n_genes": n, "n_pairs_used": len(r), "n_pairs_gene_missing": n_missing,
               "null_distribution_size": n_null, "query_distribution_size": len(r)}
        for (cl, cr), lab in zip(plan, labels, strict=True):
            row[lab] = float(_recalled(sims, cl, cr, stat_of, n_null).sum() / len(r)) if len(r) else np.nan
        row["skip_reason"] = "" if len(r) else "no annotated pair with both genes in the map"
        rows.append(row)
    return pd.DataFrame(rows)


def known_relationship_recall(profiles: pd.DataFrame, relationships: Mapping[str, pd.DataFrame], *,
                              pert_col: str = "Metadata_Gene",
                              threshold_pairs: Sequence[Sequence[float]] = DEFAULT_THRESHOLD_PAIRS,
                              seed: int = 0, show_progress: bool = False,
                              source: str = "profiles") -> pd.DataFrame:
    """Recall of annotated gene pairs per relationship source (EFAAR
    ``known_relationship_benchmark``), one row per source: ``source, n_genes, n_pairs_used,
    n_pairs_gene_missing, null_distribution_size, query_distribution_size,
    recall_{left}_{right}…, skip_reason``.

    ``profiles``: one row per gene (``pert_col``) + feature columns. ``relationships``: source →
    DataFrame ``entity1, entity2`` (raw or filtered; filtering is applied here). ``seed`` only
    picks the pilot rows; results do not depend on it.
    """
    x, genes = _map_matrix(profiles, pert_col, source)
    pairs = [(float(np.min(p)), float(np.max(p))) for p in threshold_pairs]
    labels = [_threshold_label(p) for p in threshold_pairs]
    return _recall_table(x, genes, relationships, pairs, labels, seed=seed, show_progress=show_progress)


def recall_curve(profiles: pd.DataFrame, relationships: Mapping[str, pd.DataFrame], *,
                 pert_col: str = "Metadata_Gene", percentiles: Sequence[float] = CURVE_PERCENTILES,
                 seed: int = 0, source: str = "profiles") -> pd.DataFrame:
    """Recall at threshold pairs (p, 1 − p) for each ``p`` in ``percentiles`` (fractions, 0.01 =
    1 %); long table ``source, percentile (in %), recall, query_distribution_size``."""
    pairs = [(float(p), float(round(1 - p, 10))) for p in percentiles]
    tab = known_relationship_recall(profiles, relationships, pert_col=pert_col, threshold_pairs=pairs,
                                    seed=seed, source=source)
    rows = []
    for _, r in tab.iterrows():
        for p, pair in zip(percentiles, pairs, strict=True):
            rows.append({"source": r["source"], "percentile": round(100 * p, 6),
                         "recall": r[_threshold_label(pair)],
                         "query_distribution_size": r["query_distribution_size"]})
    return pd.DataFrame(rows)


def recall_within_gene_set(profiles: pd.DataFrame, relationships: Mapping[str, pd.DataFrame],
                           gene_set: Iterable[str], *, pert_col: str = "Metadata_Gene",
                           fpr: float = 0.05, null: str = "unannotated", seed: int = 0,
                           source: str = "profiles") -> pd.DataFrame:
    """One-sided recall at a false-positive rate ``fpr`` within a gene set (MAE-CVPR Table 5:
    StringDB recall at 5 % FPR on PoC-124 / MoA-300 / DG-1640).

    The map is restricted to genes of ``gene_set``. ``null="unannotated"`` (default): the FPR is
    taken over the set's pairs that are NOT annotated by the source — the similarity threshold is
    the (1 − fpr) quantile of the non-annotated pairs' cosines, EFAAR's right-tail rule
    ``searchsorted(null, s, 'left')/N ≥ 1 − fpr``; ``null="all"``: every pair of the set (EFAAR's
    null, our earlier choice). A pair of the set is recalled when it passes the threshold. Column
    ``recall_top_{fpr}``; genes of the set missing from the map are counted in
    ``n_set_genes_missing``.
    """
    if null not in ("unannotated", "all"):
        raise MorphobenchError(f"gene-set null must be 'unannotated' or 'all', got {null!r}")
    gene_set = set(gene_set)
    if pert_col not in profiles.columns:
        raise MorphobenchError(f"{source}: column {pert_col!r} missing")
    sub = profiles[profiles[pert_col].isin(gene_set)]
    x, genes = _map_matrix(sub, pert_col, f"{source} (within gene set)")
    label = f"recall_top_{fpr}"
    thr = float(round(1 - fpr, 12))
    if null == "all":
        tab = _recall_table(x, genes, relationships, [(None, thr)], [label], seed=seed, show_progress=False)
    else:
        rows = []
        n = len(x)
        for src, rels in relationships.items():
            r, c, n_missing = _pairs_in_map(rels, genes)
            n_null = n * (n - 1) // 2 - len(r)
            row = {"source": src, "n_genes": n, "n_pairs_used": len(r), "n_pairs_gene_missing": n_missing,
                   "null_distribution_size": n_null, "query_distribution_size": len(r)}
            if len(r) and n_null > 0:
                plan, ranks = _rank_plan([(None, thr)], n_null)
                stats, qs = null_order_statistics(x, ranks, r, c, exclude_queries=True, seed=seed)
                (cl, cr), = plan
                row[label] = float(_recalled(qs, cl, cr, dict(zip(ranks, stats, strict=True)), n_null).mean())
                row["skip_reason"] = ""
            else:
                row[label] = np.nan
                row["skip_reason"] = ("no annotated pair with both genes in the set" if not len(r)
                                      else "every pair of the set is annotated")
            rows.append(row)
        tab = pd.DataFrame(rows)
    tab["fpr"] = fpr
    tab["null"] = null
    tab["n_set_genes_missing"] = len(gene_set - set(genes))
    return tab
