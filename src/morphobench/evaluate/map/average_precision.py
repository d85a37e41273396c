"""Average precision of every profile against its positive and negative pairs (copairs
``average_precision``): AP from ranks, copairs' expected AP and normalized AP.

With positives sorted by key within a query (rank r = 1, 2, …) and c = #negatives with a strictly
smaller key (ties: positives first), the positive sits at rank r + c with r true positives above
it: ``AP = mean_r r / (r + c)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pandas as pd

from morphobench.evaluate.map.options import (
    DEFAULT_OPTIONS,
    MapOptions,
    _kernels,
    _n_threads,
    _progress,
    _run_jobs,
    _run_split,
    _single_thread_blas,
)
from morphobench.evaluate.map.pairs import PairDefinition, _as_list, encode_columns
from morphobench.evaluate.map.similarity import PAD_KEY, Similarity, rank_keys, unit_rows
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.evaluate.map")

__all__ = ["average_precision", "expected_ap", "normalize_ap"]


def _neg_table(nq: int, neg_qi: np.ndarray, nk: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """Negative keys as a (query × max n_neg) table padded with ``PAD_KEY``."""
    nmax = int(n_neg.max()) if len(nk) else 0
    if len(nk) and (np.diff(neg_qi) < 0).any():
        o = np.argsort(neg_qi, kind="stable")
        neg_qi, nk = neg_qi[o], nk[o]
    table = np.full((nq, max(nmax, 1)), PAD_KEY, dtype=np.uint32)
    table[neg_qi, np.arange(len(nk)) - (np.cumsum(n_neg) - n_neg)[neg_qi]] = nk
    return table


def _ap_compare(nq, pos_qi, pk, table, n_pos) -> np.ndarray:
    """AP by counting, for each positive, its query's negatives (a row of ``table``, padded with
    keys that are never smaller) with a smaller key."""
    comp = np.sort((pos_qi.astype(np.uint64) << np.uint64(32)) | pk.astype(np.uint64))
    qp = (comp >> np.uint64(32)).astype(np.int64)
    kp = (comp & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    r = np.arange(len(kp)) - (np.cumsum(n_pos) - n_pos)[qp] + 1      # rank among the positives
    width = table.shape[1]
    c = np.empty(len(kp), dtype=np.int64)
    cdt = np.uint16 if width < 2**16 else np.uint32
    step = max(1, (1 << 18) // width)
    for s in range(0, len(kp), step):
        less = table[qp[s:s + step]] < kp[s:s + step, None]
        c[s:s + step] = less.view(np.uint8).sum(axis=1, dtype=cdt)
    return np.bincount(qp, weights=r / (r + c), minlength=nq) / n_pos


def _ap_sort(nq, pos_qi, pk, neg_qi, nk, n_pos, n_neg) -> np.ndarray:
    """AP from one sort of (query, key, negative?) over all entries."""
    qi = np.concatenate([pos_qi, neg_qi]).astype(np.uint64)
    is_neg = np.concatenate([np.zeros(len(pk), np.uint64), np.ones(len(nk), np.uint64)])
    keys = np.concatenate([pk, nk]).astype(np.uint64)
    comp = (qi << np.uint64(33)) | (keys << np.uint64(1)) | is_neg
    comp.sort()
    lab = (comp & np.uint64(1)) == 0
    q_sorted = (comp >> np.uint64(33)).astype(np.int64)
    counts = n_pos + n_neg
    starts = np.cumsum(counts) - counts
    cum = np.cumsum(lab)
    pos_at = np.flatnonzero(lab)
    qp = q_sorted[pos_at]
    before = (cum - lab)[starts[qp]]          # positives of earlier queries
    tp = cum[pos_at] - before
    k = pos_at - starts[qp] + 1
    return np.bincount(qp, weights=tp / k, minlength=nq) / n_pos


def _ap_rowsort(nq, pos_qi, pk, table, n_pos) -> np.ndarray:
    """AP from each query's row of negative keys sorted (padding sorts last, never counted) and
    its positives located in it by binary search: c = #{negative keys < positive key}."""
    tab = np.sort(table, axis=1)
    comp = np.sort((pos_qi.astype(np.uint64) << np.uint64(32)) | pk.astype(np.uint64))
    qp = (comp >> np.uint64(32)).astype(np.int64)
    kp = (comp & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    starts = np.cumsum(n_pos) - n_pos
    c = np.empty(len(kp), dtype=np.int64)
    for i in np.flatnonzero(n_pos):
        a, b = starts[i], starts[i] + n_pos[i]
        c[a:b] = np.searchsorted(tab[i], kp[a:b], side="left")
    r = np.arange(len(kp)) - starts[qp] + 1
    return np.bincount(qp, weights=r / (r + c), minlength=nq) / n_pos


def _block_ap(nq: int, pos_qi: np.ndarray, pos_s: np.ndarray, neg_qi: np.ndarray | None = None,
              neg_s: np.ndarray | None = None, *, neg_table: np.ndarray | None = None,
              n_neg: np.ndarray | None = None, method: str = "auto") -> np.ndarray:
    """AP of ``nq`` queries from their positive (query, similarity) entries and their negatives,
    given as (query, similarity) entries or as a key table (``neg_table``, one padded row of
    ``rank_keys`` per query, with ``n_neg``).

    With positives sorted by key within a query (rank r = 1, 2, …) and c = #negatives with a
    strictly smaller key (ties: positives first), the positive sits at rank r + c with r true
    positives above it: AP = mean_r r / (r + c). Per query, ``c`` is either counted by comparing
    each positive with the query's negatives (cheap when positives are few, e.g. replicates) or
    read off one sort of all its entries — whichever costs less.
    """
    pk = rank_keys(pos_s)
    n_pos = np.bincount(pos_qi, minlength=nq)
    if neg_table is None:
        nk = rank_keys(neg_s)
        n_neg = np.bincount(neg_qi, minlength=nq)
    tot = n_pos + n_neg
    use_cmp = n_pos * n_neg <= tot * np.log2(tot + 2)
    if method != "auto":
        use_cmp[:] = method == "compare"
    ap = np.full(nq, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for flag in (True, False):
            sel = use_cmp == flag
            if not sel.any():
                continue
            every = bool(sel.all())
            remap = np.cumsum(sel) - 1
            pm = sel[pos_qi]
            pqi, ppk = (pos_qi, pk) if every else (remap[pos_qi[pm]], pk[pm])
            nsel = nq if every else int(sel.sum())
            if neg_table is not None:
                tab = neg_table if every else neg_table[sel]
                if flag:
                    res = _ap_compare(nsel, pqi, ppk, tab, n_pos[sel])
                else:
                    res = _ap_rowsort(nsel, pqi, ppk, tab, n_pos[sel])
            else:
                nm = sel[neg_qi]
                nqi, nnk = (neg_qi, nk) if every else (remap[neg_qi[nm]], nk[nm])
                if flag:
                    res = _ap_compare(nsel, pqi, ppk, _neg_table(nsel, nqi, nnk, n_neg[sel]), n_pos[sel])
                else:
                    res = _ap_sort(nsel, pqi, ppk, nqi, nnk, n_pos[sel], n_neg[sel])
            ap[sel] = res
    return ap


def expected_ap(m: np.ndarray, total: np.ndarray) -> np.ndarray:
    """copairs ``expected_ap`` (μ0) vectorized; harmonic numbers summed in the same order."""
    m = m.astype(np.int64)
    total = total.astype(np.int64)
    out = np.zeros(len(m), dtype=np.float64)
    lmax = int(total.max()) if len(total) else 0
    if lmax >= 1:
        harm = np.zeros(lmax + 1)
        acc = 0.0
        inv = 1.0 / np.arange(1, lmax + 1, dtype=np.float64)
        for i in range(lmax):  # sequential like copairs' python sum
            acc += inv[i]
            harm[i + 1] = acc
    for_l1 = total == 1
    out[for_l1] = (m[for_l1] == 1).astype(float)
    full = (m == total) & (total > 1)
    out[full] = 1.0
    gen = (total > 1) & (m > 0) & (m < total)
    lg, mg = total[gen].astype(float), m[gen].astype(float)
    h = harm[total[gen]] if gen.any() else np.zeros(0)
    out[gen] = (1.0 / lg) * (((mg - 1.0) / (lg - 1.0)) * (lg - h) + h)
    return out


def normalize_ap(ap: np.ndarray, n_pos: np.ndarray, n_total: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    mu0 = expected_ap(n_pos, n_total)
    with np.errstate(invalid="ignore"):
        return np.clip((ap - mu0) / np.maximum(1 - mu0, eps), -1.0, 1.0)


# ----------------------------------------------------------------------------------------------
# the dense design: symmetric tiles
# ----------------------------------------------------------------------------------------------
_SYM_MAX_POS = 32      # group queries with more positives: sorted rows of the group's GEMM


def _ordinal(x: np.ndarray) -> np.ndarray:
    """float64 → int64, order preserving (±0 → 0)."""
    i = np.ascontiguousarray(x, dtype=np.float64).view(np.int64)
    return np.where(i < 0, -(i & np.int64(0x7FFFFFFFFFFFFFFF)), i)


def _from_ordinal(o: np.ndarray) -> np.ndarray:
    return np.where(o < 0, (-o) | np.int64(-0x8000000000000000), o).astype(np.int64).view(np.float64)


def _key32(s: np.ndarray) -> np.ndarray:
    """copairs' rank key ``float32(1 − float32(s))`` (float32 values; see :func:`rank_keys`)."""
    k = np.asarray(s, dtype=np.float64).astype(np.float32)
    return np.subtract(np.float32(1), k, out=k)


def key_thresholds(s: np.ndarray) -> np.ndarray:
    """For positive similarities ``s``: θ, the largest float64 whose rank key is ≥ key(s). As
    the key is non-increasing in the similarity, a negative of similarity t ranks above the
    positive (``key(t) < key(s)``, ties ranking positives first) exactly when ``t > θ`` — so
    negatives are counted against float64 thresholds without computing their keys."""
    s = np.asarray(s, dtype=np.float64)
    kp = _key32(s)
    lo = _ordinal(s)                                   # key(s) ≥ kp
    hi = np.full_like(lo, _ordinal(np.array([2.0]))[0])   # key(2) = −1 < kp (kp ≥ 0)
    while True:
        gap = hi - lo
        open_ = gap > 1
        if not open_.any():
            return _from_ordinal(lo)
        mid = lo + gap // 2
        ok = _key32(_from_ordinal(mid)) >= kp
        lo = np.where(open_ & ok, mid, lo)
        hi = np.where(open_ & ~ok, mid, hi)


def _symmetric_groups(neg_def: PairDefinition, n_pos: np.ndarray, opts: MapOptions) -> list:
    """Negative-pair groups counted from symmetric tiles: ``(members, na)`` with the ``na``
    symmetric queries (1 ≤ n_pos ≤ _SYM_MAX_POS) first, ordered by (n_pos, sub-group), then the
    other members: those without positives, then those with many, each by sub-group. Only groups
    of ≥ ``opts.symmetric_min`` profiles, at least half of them such queries (numpy backend)."""
    if opts.symmetric_min <= 0 or opts.backend != "numpy":
        return []
    out = []
    for g in np.flatnonzero(neg_def.gcount >= opts.symmetric_min):
        start, size = int(neg_def.gstart[g]), int(neg_def.gcount[g])
        members = neg_def.order[start:start + size]
        k = n_pos[members]
        symq = (k > 0) & (k <= _SYM_MAX_POS)
        if 2 * int(symq.sum()) < size:
            continue
        sub = neg_def.sub[members] if neg_def.has_diff else np.zeros(size, dtype=np.int64)
        a, b = members[symq], members[~symq]
        a = a[np.lexsort((sub[symq], k[symq]))]
        b = b[np.lexsort((sub[~symq], k[~symq] > 0))]
        out.append((np.concatenate([a, b]), len(a)))
    return out


class _SubRuns:
    """Runs of equal sub-group ids along the members' order (same-sub members are contiguous
    runs: members are ordered by sub-group within each n_pos class)."""

    def __init__(self, sub: np.ndarray):
        cut = np.flatnonzero(np.diff(sub)) + 1
        self.start = np.concatenate([[0], cut]).astype(np.int64)
        self.end = np.concatenate([cut, [len(sub)]]).astype(np.int64)
        self.val = sub[self.start]

    def within(self, a: int, b: int) -> np.ndarray:
        """Indices of the runs overlapping [a, b)."""
        return np.arange(np.searchsorted(self.end, a, side="right"), np.searchsorted(self.start, b, side="left"))


def _tile_mask(s: np.ndarray, r0: int, r1: int, c0: int, c1: int, runs: _SubRuns | None, rest: list) -> None:
    """Set the non-pairs of a tile to −inf (never counted): same sub-group (the first ``diffby``
    column; self included) as rectangles of runs, equal values of the other ``diffby`` columns,
    or — without ``diffby`` — self pairs."""
    if runs is not None:
        ri, ci = runs.within(r0, r1), runs.within(c0, c1)
        common = np.intersect1d(runs.val[ri], runs.val[ci])
        if len(common):
            ri = ri[np.isin(runs.val[ri], common)]
            ci = ci[np.isin(runs.val[ci], common)]
            cols: dict[int, list[tuple[int, int]]] = {}
            for c in ci.tolist():
                cols.setdefault(int(runs.val[c]), []).append(
                    (max(int(runs.start[c]), c0) - c0, min(int(runs.end[c]), c1) - c0))
            for r in ri.tolist():
                a, b = max(int(runs.start[r]), r0) - r0, min(int(runs.end[r]), r1) - r0
                for ca, cb in cols[int(runs.val[r])]:
                    s[a:b, ca:cb] = -np.inf
    elif r0 == c0:
        np.fill_diagonal(s, -np.inf)
    for code in rest:
        s[code[r0:r1][:, None] == code[c0:c1][None, :]] = -np.inf


def _symmetric_group_ap(xg: np.ndarray, members: np.ndarray, na: int, many: np.ndarray, inner: np.ndarray,
                        pos_def: PairDefinition, neg_def: PairDefinition, sim: Similarity,
                        opts: MapOptions) -> tuple[np.ndarray, np.ndarray]:
    """AP of the ``na`` symmetric queries of one negative-pair group (``members`` in tile order,
    ``xg`` their unit vectors) and of its queries with many positives ``members[many]`` (the
    last members; ``inner``: all their positives are group members).

    Each positive's similarity becomes a float64 threshold (:func:`key_thresholds`); the group's
    similarity matrix is computed once per unordered tile pair (I ≤ J) — never stored whole —
    and each tile counts, for its rows and (off the diagonal) its columns, the negatives above
    every threshold: float32 tiles counted by the compiled kernel (exact: entries within the
    float32 error bound of a threshold are decided in float64) or float64 NumPy tiles. The
    many-positive queries rank sorted float64 rows (:func:`_group_rows_ap`), which on the
    compiled path also count, for the symmetric queries, these columns (no float32 tile
    computes them). AP = mean over positives (rank r among them) of r / (r + c)."""
    m = len(members)
    q = members[:na]
    kq = pos_def.count[q]
    kmax = int(kq.max())
    # positives' similarities → thresholds, sorted by key (best first) per query
    thr = np.full((na, kmax), np.inf)
    step = max(1, opts.max_entries // max(1, kmax))
    for s0 in range(0, na, step):
        qq = q[s0:s0 + step]
        pqi, pp = pos_def.entries(qq)
        ps = sim.entries(qq[pqi], pp, pos_def.gid[qq[pqi]], pos_def)
        order = np.lexsort((rank_keys(ps), pqi))        # by query, then key (best first)
        qi = pqi[order]
        per_q = np.bincount(qi, minlength=len(qq))
        slot = np.arange(len(qi)) - (np.cumsum(per_q) - per_q)[qi]
        thr[s0 + qi, slot] = key_thresholds(ps[order])
    runs = _SubRuns(neg_def.sub[members]) if neg_def.has_diff else None
    rest = [code[members] for code in neg_def.rest]
    kernels = _kernels(opts.compiled, saves_s=na * (m - na / 2) * 1.5e-8) if opts.backend == "numpy" else None
    cut = m - len(many) if kernels is not None else m       # tile columns [0, cut)
    if kernels is not None:
        cnt = _symmetric_counts_f32(kernels, xg, na, cut, thr, kq, runs, rest, opts)
    else:
        cnt = _symmetric_counts_f64(xg, na, thr, kq, runs, rest, opts)
    ap_many = np.empty(len(many))
    cols = (np.ascontiguousarray(thr.T), kq, []) if cut < m else None
    for flag in (True, False):
        sel = np.flatnonzero(inner == flag)
        if len(sel):
            ap_many[sel] = _group_rows_ap(xg, members, many[sel], pos_def, neg_def, sim, opts, flag, kernels, cols)
    if cols is not None:            # the symmetric queries' negatives among the many-positive rows
        for c in cols[2]:
            cnt += c.T
    return _rank_ap(cnt, kq), ap_many


def _tile_jobs(na: int, m: int, t: int) -> list[tuple[int, int, int, int]]:
    """The tiles (r0, r1, c0, c1) of the upper triangle (c0 ≥ r0) of the ``na`` query rows × all
    ``m`` columns; no tile straddles column ``na``."""
    rcuts = list(range(0, na, t)) + [na]
    ccuts = rcuts[:-1] + list(range(na, m, t)) + [m]
    return [(r0, r1, c0, c1) for r0, r1 in pairwise(rcuts) for c0, c1 in pairwise(ccuts) if c0 >= r0]


def _f32_margin(d: int) -> float:
    """A bound on |float32 cosine − float64 cosine| of unit rows with ``d`` features: rounding
    the rows to float32 moves a dot product by ≤ (2u + u²)·Σ|x_i y_i|, a float32 dot product (any
    summation order, FMA or not) is within γ_d·Σ|x_i y_i| of the exact one of its operands, with
    u = 2^-24, γ_d = d·u/(1 − d·u) and Σ|x_i y_i| ≤ ‖x‖‖y‖ ≤ 1 + 2^-40; a float64 one within
    2·d·2^-53 of the exact one (any order); plus d·2^-140 for float32 subnormals; 1 % slack."""
    u = 2.0 ** -24
    norms = 1 + 2.0 ** -40
    bound = (d * u / (1 - d * u) * (1 + u) ** 2 + 2 * u + u * u) * norms + 2 * d * 2.0 ** -53 + d * 2.0 ** -140
    return 1.01 * bound


def _symmetric_counts_f32(kernels, xg: np.ndarray, na: int, cut: int, thr: np.ndarray, kq: np.ndarray,
                          runs: _SubRuns | None, rest: list, opts: MapOptions) -> np.ndarray:
    """Per query and positive slot, the negatives among the members ``[0, cut)`` ranked above
    (``t > θ``), from float32 tiles counted by the compiled kernel: a float32 similarity more
    than :func:`_f32_margin` above (below) θ is (is not) above it in float64; the few within the
    margin are decided by their float64 similarity. Exactly the float64 counts."""
    d = xg.shape[1]
    m = cut
    kmax = thr.shape[1]
    x32 = xg[:m].astype(np.float32)
    delta = _f32_margin(d)
    with np.errstate(invalid="ignore", over="ignore"):
        lo64, hi64 = thr - delta, thr + delta
        lo = lo64.astype(np.float32)
        hi = hi64.astype(np.float32)
    lo = np.where(lo > lo64, np.nextafter(lo, np.float32(-np.inf)), lo)   # round outwards
    hi = np.where(hi < hi64, np.nextafter(hi, np.float32(np.inf)), hi)
    row_k = kq.astype(np.int64)
    col_thr, col_lo, col_hi = (np.ascontiguousarray(a.T) for a in (thr, lo, hi))
    t = max(1, min(opts.tile, opts.compiled_tile, max(256, -(-na // 12))))

    def run(part):
        cnt_rows = np.zeros((na, kmax), dtype=np.int64)
        cnt_cols = np.zeros((kmax, na), dtype=np.int64)
        buf = np.empty(t * t, dtype=np.float32)
        for r0, r1, c0, c1 in part:
            s = np.matmul(x32[r0:r1], x32[c0:c1].T, out=buf[:(r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0))
            _tile_mask(s, r0, r1, c0, c1, runs, rest)
            col_kmax = int(kq[c0:c1].max()) if c0 > r0 and c1 <= na else 0
            kernels.tile_counts(s, xg, r0, c0, thr, lo, hi, row_k, cnt_rows,
                                col_thr, col_lo, col_hi, col_kmax, cnt_cols)
        cnt_rows += cnt_cols.T
        return cnt_rows

    return _summed(_run_split(run, _tile_jobs(na, m, t), opts.threads))


def _symmetric_counts_f64(xg: np.ndarray, na: int, thr: np.ndarray, kq: np.ndarray,
                          runs: _SubRuns | None, rest: list, opts: MapOptions) -> np.ndarray:
    """Per query and positive slot, the negatives ranked above (``t > θ``), from float64 tiles
    (NumPy)."""
    m = len(xg)
    kmax = thr.shape[1]
    # tiles of at most opts.tile rows, smaller for small groups (the diagonal tiles compute both
    # triangles: about 12 tiles per side keep that waste under ~5 %)
    t = max(1, min(opts.tile, max(256, -(-na // 12))))

    def run(part):
        cnt = np.zeros((na, kmax), dtype=np.int64)
        buf = np.empty((t, t))
        hit = np.empty((t, t), dtype=bool)
        for r0, r1, c0, c1 in part:
            s = np.matmul(xg[r0:r1], xg[c0:c1].T, out=buf[:r1 - r0, :c1 - c0])
            _tile_mask(s, r0, r1, c0, c1, runs, rest)
            h = hit[:r1 - r0, :c1 - c0]
            for j in range(int(kq[r0:r1].max())):
                np.greater(s, thr[r0:r1, j, None], out=h)
                cnt[r0:r1, j] += h.view(np.uint8).sum(axis=1, dtype=np.uint32)
            if c0 > r0 and c1 <= na:                 # off-diagonal: count for the columns too
                for j in range(int(kq[c0:c1].max())):
                    np.greater(s, thr[c0:c1, j][None, :], out=h)
                    cnt[c0:c1, j] += h.view(np.uint8).sum(axis=0, dtype=np.uint32)
        return cnt

    return _summed(_run_split(run, _tile_jobs(na, m, t), opts.threads))


def _summed(counts: list[np.ndarray]) -> np.ndarray:
    """The workers' count arrays added into the first (in place)."""
    total = counts[0]
    for c in counts[1:]:
        total += c
    return total


def _rank_ap(cnt: np.ndarray, k: np.ndarray) -> np.ndarray:
    """AP of queries from ``cnt[i, j]`` = #negatives ranked above the (j+1)-th of the ``k[i]``
    positives of query i: the mean of r / (r + c), summed in rank order (as ``np.bincount``)."""
    qi = np.repeat(np.arange(len(k)), k)
    slot = np.arange(len(qi)) - np.repeat(np.cumsum(k) - k, k)
    r = slot + 1
    return np.bincount(qi, weights=r / (r + cnt[qi, slot]), minlength=len(k)) / k


def _group_masks(defn: PairDefinition, members: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Which (row ``r[i]``, column ``c[e]``) are pairs of ``defn`` in the group ``members``
    (``r``, ``c``: indices into ``members``): same ``sameby`` group, different in every
    ``diffby`` column, not the profile itself."""
    p, q = members[r], members[c]
    ok = defn.gid[p][:, None] == defn.gid[q][None, :]
    if defn.has_diff:
        ok &= defn.sub[p][:, None] != defn.sub[q][None, :]
    else:
        ok &= r[:, None] != c[None, :]
    for code in defn.rest:
        ok &= code[p][:, None] != code[q][None, :]
    return ok


def _group_rows_ap(xg: np.ndarray, members: np.ndarray, rows: np.ndarray, pos_def: PairDefinition,
                   neg_def: PairDefinition, sim: Similarity, opts: MapOptions,
                   pos_inside: bool = False, kernels=None, cols: tuple | None = None) -> np.ndarray:
    """AP of the group members ``members[rows]`` that are queries with many positives (too many
    for thresholds), against the whole group: blocks of their rows × all members (``xg``, the
    group's unit vectors in ``members`` order) as float64 GEMMs; per row the negatives' keys and
    the positives' keys sorted together as ``key·2 + is_negative`` (ties rank positives first,
    non-pairs last) and each positive's position read off the sorted row: r + c.

    With ``pos_inside`` (all positive partners of these queries are group members) the
    positives' similarities are the same GEMM rows; else they come from
    :meth:`Similarity.entries` (in chunks of at most ``max_entries`` positives). Memory per
    worker: a block's sorted rows (~4·``max_entries`` keys) and one GEMM chunk (~``max_entries``
    similarities).

    ``cols = (thresholds (kmax × na), n_pos, out)`` (with the compiled ``kernels``): the first
    ``na`` members are symmetric queries; each worker also counts, per threshold, their
    negatives among these rows above it (float64, exact), in an array appended to ``out``."""
    m = len(members)
    q = members[rows]
    kq = pos_def.count[q]
    ap = np.empty(len(q))
    pad = np.uint32(0xFFFFFFFF)                  # odd (not a positive), above every entry
    acc = np.cumsum(kq)
    # the members that can be positive partners of these queries (same sameby group)
    pcand = np.flatnonzero(np.isin(pos_def.gid[members], pos_def.gid[q])) if pos_inside else None
    s0 = 0
    while s0 < len(q):             # chunks of queries (their positives' keys when not inside)
        s1 = len(q) if pos_inside else \
            max(s0 + 1, int(np.searchsorted(acc, (acc[s0 - 1] if s0 else 0) + opts.max_entries, side="right")))
        kk = kq[s0:s1]
        kmax = int(kk.max())
        pos_comp = None
        if not pos_inside:
            qq = q[s0:s1]
            pqi, pp = pos_def.entries(qq)
            ps = sim.entries(qq[pqi], pp, pos_def.gid[qq[pqi]], pos_def)
            comp = np.sort((pqi.astype(np.uint64) << np.uint64(32)) | rank_keys(ps).astype(np.uint64))
            del pqi, pp, ps
            qi = (comp >> np.uint64(32)).astype(np.int64)
            slot = np.arange(len(qi)) - (np.cumsum(kk) - kk)[qi]
            pos_comp = np.full((len(qq), kmax), pad, dtype=np.uint32)
            pos_comp[qi, slot] = (comp & np.uint64(0xFFFFFFFF)).astype(np.uint32) << np.uint32(1)
            del comp, qi, slot
        # blocks of rows (up to 128: each GEMM packs the group's vectors once per block) whose
        # sorted rows hold ~4·max_entries keys; GEMMs over chunks of ~max_entries similarities
        b = int(np.clip(4 * opts.max_entries // (m + kmax), 1, 128))
        cw = max(64, opts.max_entries // b)
        blocks = [(b0, min(s1 - s0, b0 + b)) for b0 in range(0, s1 - s0, b)]

        def run(part, s0=s0, kk=kk, kmax=kmax, pos_comp=pos_comp, cw=cw):
            if cols is not None:
                col_thr, col_k, out = cols
                na = col_thr.shape[1]
                cnt_cols = np.zeros(col_thr.shape, dtype=np.int64)
                out.append(cnt_cols)
            for b0, b1 in part:
                r = rows[s0 + b0:s0 + b1]
                nb = b1 - b0
                xr = xg[r]
                comp = np.empty((nb, m + kmax), dtype=np.uint32)
                if pos_comp is None:
                    comp[:, m:] = pad
                    filled = np.zeros(nb, dtype=np.int64)
                else:
                    comp[:, m:] = pos_comp[b0:b1]
                for c0 in range(0, m, cw):
                    c1 = min(m, c0 + cw)
                    sims = xr @ xg[c0:c1].T
                    if pos_comp is None:       # positives from the same rows
                        pc = pcand[np.searchsorted(pcand, c0):np.searchsorted(pcand, c1)]
                        rr, cc = np.nonzero(_group_masks(pos_def, members, r, pc))
                        per = np.bincount(rr, minlength=nb)
                        comp[rr, m + filled[rr] + np.arange(len(rr)) - (np.cumsum(per) - per)[rr]] = \
                            rank_keys(sims[rr, pc[cc] - c0]) << np.uint32(1)
                        filled += per
                    # non-pairs: −inf, whose key (+inf) sorts after every key, as an odd entry
                    np.putmask(sims, ~_group_masks(neg_def, members, r, np.arange(c0, c1)), -np.inf)
                    part_ = comp[:, c0:c1]
                    np.left_shift(rank_keys(sims), np.uint32(1), out=part_)
                    part_ |= np.uint32(1)
                    if cols is not None and c0 < na:    # columns that are symmetric queries
                        e1 = min(c1, na) - c0
                        kernels.column_counts(sims, e1, c0, col_thr, int(col_k[c0:c0 + e1].max()), cnt_cols)
                    del sims
                comp.sort(axis=1)
                cnt = np.zeros((nb, kmax), dtype=np.int64)
                if kernels is not None:
                    kernels.sorted_counts(comp, cnt)
                else:
                    at = np.flatnonzero((comp & np.uint32(1)) == 0)
                    rr, at = at // (m + kmax), at % (m + kmax)
                    per = np.bincount(rr, minlength=nb)
                    slot = np.arange(len(rr)) - (np.cumsum(per) - per)[rr]
                    cnt[rr, slot] = at - slot                   # negatives ranked above
                ap[s0 + b0:s0 + b1] = _rank_ap(cnt, kk[b0:b1])

        _run_split(run, blocks, opts.threads)
        s0 = s1
    return ap


# ----------------------------------------------------------------------------------------------
# average precision
# ----------------------------------------------------------------------------------------------
def average_precision(
    meta: pd.DataFrame,
    feats: np.ndarray | pd.DataFrame,
    pos_sameby: Sequence[str] | str,
    pos_diffby: Sequence[str] | str,
    neg_sameby: Sequence[str] | str,
    neg_diffby: Sequence[str] | str,
    *,
    distance: str = "cosine",
    no_negatives: str = "skip",
    exclude_negatives: np.ndarray | None = None,
    options: MapOptions | None = None,
    max_entries: int | None = None,
    backend: str | None = None,
    device: str | None = None,
    show_progress: bool = False,
    source: str = "profiles",
) -> pd.DataFrame:
    """AP of every profile against its positive and negative pairs (copairs ``average_precision``).

    Parameters mirror copairs; ``meta`` and ``feats`` have one row per profile.
    Returns ``meta`` (index reset) plus ``n_pos_pairs``, ``n_total_pairs``, ``average_precision``,
    ``normalized_average_precision`` and ``skip_reason`` ("" when the AP is valid).
    ``no_negatives``: ``"skip"`` | ``"error"`` | ``"keep"`` (see module docstring).
    ``exclude_negatives``: profile index pairs ``(i, j)`` (either order; an ``(m, 2)`` array) that
    are never negative pairs even when the definition makes them so — e.g. two compounds sharing
    one of several targets (copairs' multilabel rule, for rows exploded per label).
    ``options`` (:class:`MapOptions`) sets how it is computed (never the result);
    ``max_entries``, ``backend`` and ``device`` override the same-named options
    (``backend="torch"`` computes similarities with torch on ``device``: ``"cuda"``, ``"auto"``).
    """
    opts = options or DEFAULT_OPTIONS
    over = {k: v for k, v in (("max_entries", max_entries), ("backend", backend), ("device", device))
            if v is not None}
    if over:
        opts = replace(opts, **over)
    max_entries = opts.max_entries
    if distance != "cosine":
        raise MorphobenchError(f"distance {distance!r} not supported (only 'cosine')")
    if no_negatives not in {"skip", "error", "keep"}:
        raise MorphobenchError(f"no_negatives must be skip | error | keep, got {no_negatives!r}")
    pos_sameby, pos_diffby = _as_list(pos_sameby), _as_list(pos_diffby)
    neg_sameby, neg_diffby = _as_list(neg_sameby), _as_list(neg_diffby)
    for name, s, d in (("positive", pos_sameby, pos_diffby), ("negative", neg_sameby, neg_diffby)):
        if not s and not d:
            raise MorphobenchError(f"{source}: {name} pairs need at least one sameby or diffby column")
        if set(s) & set(d):
            raise MorphobenchError(f"{source}: {name} sameby and diffby overlap: {sorted(set(s) & set(d))}")
    meta = meta.reset_index(drop=True)
    n = len(meta)
    n_feat = len(feats) if hasattr(feats, "__len__") else -1
    if n_feat != n:
        raise MorphobenchError(f"{source}: {n} metadata rows but {n_feat} feature rows")
    codes = encode_columns(meta, sorted(set(pos_sameby + pos_diffby + neg_sameby + neg_diffby)), source)
    pos_def = PairDefinition(codes, pos_sameby, pos_diffby, n)
    neg_def = PairDefinition(codes, neg_sameby, neg_diffby, n)

    n_pos, n_neg = pos_def.count, neg_def.count
    excl = None
    if exclude_negatives is not None and len(exclude_negatives):
        e = np.asarray(exclude_negatives, dtype=np.int64).reshape(-1, 2)
        if (e < 0).any() or (e >= n).any():
            raise MorphobenchError(f"{source}: exclude_negatives holds indices outside [0, {n})")
        e = np.concatenate([e, e[:, ::-1]])
        e = e[neg_def.is_pair(e[:, 0], e[:, 1])]
        excl = np.unique(e[:, 0] * n + e[:, 1])
        n_neg = n_neg - np.bincount(excl // n, minlength=n)
        opts = replace(opts, neg_dense=False, symmetric_min=0)     # excluded pairs: entry lists
    ap = np.full(n, np.nan)
    # big negative-pair groups made mostly of queries (the dense, sibling-style design): counted
    # from symmetric tiles; their members come first in the unit-vector store, in tile order
    sym = _symmetric_groups(neg_def, n_pos, opts)
    in_sym = np.zeros(n, dtype=bool)
    for members, _ in sym:
        in_sym[members[n_pos[members] > 0]] = True      # the other queries: sorted rows
    # other queries with positives, ordered by their negative-pair group so that a block's
    # negatives fall in few groups (one GEMM each); blocks bounded by their exact number of pairs
    queries = neg_def.query_order(np.flatnonzero((n_pos > 0) & ~in_sym))
    # unit vectors stored in query order (a dense block's query rows are then a slice, no gather)
    placed = np.zeros(n, dtype=bool)
    head = []
    for members, _ in sym:
        head.append(members)
        placed[members] = True
    rest = queries[~placed[queries]]
    placed[rest] = True
    perm = np.concatenate(head + [rest, np.flatnonzero(~placed)]).astype(np.int64)
    xn = unit_rows(feats, source, rows=perm, threads=opts.threads)
    sim = Similarity(xn, rows=perm, opts=opts)
    offset = 0
    for members, na in _progress(sym, "mAP: symmetric groups", show_progress):
        xg = xn[offset:offset + len(members)]
        many = na + np.flatnonzero(n_pos[members[na:]] > 0)       # the last members
        # many-positive queries whose positives are all in the group (their similarities then
        # come with the group's GEMM rows)
        inner = (PairDefinition({c: codes[c][members] for c in pos_sameby + pos_diffby}, pos_sameby,
                                pos_diffby, len(members)).count[many] == n_pos[members[many]]) if len(many) else many
        ap[members[:na]], ap[members[many]] = _symmetric_group_ap(xg, members, na, many, inner, pos_def,
                                                                  neg_def, sim, opts)
        offset += len(members)
    acc = np.cumsum(n_pos[queries] + n_neg[queries])
    cuts = [0]
    while cuts[-1] < len(queries):
        base = acc[cuts[-1] - 1] if cuts[-1] else 0
        nxt = int(np.searchsorted(acc, base + max_entries, side="right"))
        cuts.append(min(len(queries), max(nxt, cuts[-1] + 1)))
    blocks = list(pairwise(cuts))
    for a, b in _progress(blocks, "mAP: queries", show_progress):
        q = queries[a:b]
        pqi, pp = pos_def.entries(q)
        ps = sim.entries(q[pqi], pp, pos_def.gid[q[pqi]], pos_def)
        plan = neg_def.dense_plan(q, opts.dense_min_entries) if opts.neg_dense else None
        if plan is None:       # scattered negatives: entry lists
            nqi, npart = neg_def.entries(q)
            if excl is not None:
                keep = ~np.isin(q[nqi] * n + npart, excl)
                nqi, npart = nqi[keep], npart[keep]
            ns = sim.entries(q[nqi], npart, neg_def.gid[q[nqi]])
            ap[q] = _block_ap(len(q), pqi, ps, nqi, ns, method=opts.ap_method)
            continue
        # negatives as dense (query rows × candidate) blocks: one GEMM each, keys straight into
        # the padded per-query table (non-pairs masked with keys that are never smaller)
        width = max([len(c) for _, _, c, _ in plan] + [1])
        if len(q) * width > 4 * max(max_entries, int(n_neg[q].sum())):   # skewed groups: sparse
            nqi, npart = neg_def.entries(q)
            ns = sim.entries(q[nqi], npart, neg_def.gid[q[nqi]])
            ap[q] = _block_ap(len(q), pqi, ps, nqi, ns, method=opts.ap_method)
            continue
        table = np.full((len(q), width), PAD_KEY, dtype=np.uint32)

        def fill(part, q=q, table=table):
            for r0, r1, cols, merged in part:
                keys = rank_keys(sim.matrix(q[r0:r1], cols))
                bad = neg_def.invalid(q[r0:r1], cols, merged)
                if bad is not None:
                    keys[bad] = PAD_KEY
                table[r0:r1, :len(cols)] = keys

        small = max([(r1 - r0) * len(c) for r0, r1, c, _ in plan] + [0]) * xn.shape[1] < opts.blas_small
        if small and opts.backend == "numpy":   # many small GEMMs: one BLAS thread each, in parallel
            nt = _n_threads(opts.threads)
            parts = [plan[i::nt] for i in range(min(nt, len(plan)))]
            with _single_thread_blas():
                _run_jobs(fill, parts, opts.threads)
        else:
            fill(plan)
        ap[q] = _block_ap(len(q), pqi, ps, neg_table=table, n_neg=n_neg[q], method=opts.ap_method)

    n_total = n_pos + n_neg
    reason = np.full(n, "", dtype=object)
    reason[n_pos == 0] = "no positive pairs"
    reason[n_total == 0] = "no pairs"
    lacking = (n_pos > 0) & (n_neg == 0)
    if lacking.any():
        msg = (f"{source}: {int(lacking.sum())} profile(s) have positive but no negative pairs "
               f"(e.g. rows {np.flatnonzero(lacking)[:5].tolist()}; no negative controls in their group?)")
        if no_negatives == "error":
            raise MorphobenchError(msg)
        if no_negatives == "skip":
            log.warning("%s; their AP is recorded as NaN (skip_reason 'no negative pairs')", msg)
            ap[lacking] = np.nan
            reason[lacking] = "no negative pairs"
    if not (n_pos > 0).any():
        log.warning("%s: no positive pairs at all", source)
    out = meta.copy()
    out["n_pos_pairs"] = n_pos
    out["n_total_pairs"] = n_total
    out["average_precision"] = ap
    out["normalized_average_precision"] = normalize_ap(ap, n_pos, n_total)
    out["skip_reason"] = reason
    return out
