"""Compiled (numba) kernels of the mAP engine's hot loops:

* :func:`tile_counts` — one pass over a float32 similarity tile of the dense design counting,
  for each row (and column) query, the negatives ranked above each of its positives, exactly:
  float32 values farther from a threshold than the float32 GEMM's error bound decide by
  themselves, the few others by their float64 similarity;
* :func:`floyd_bitmap_ap` — the fast null's Floyd draws on a one-bit-per-position bitmap per
  list (cache resident), APs summed in rank order from the bitmap (no sort).

Importing this module imports numba (a dependency of umap-learn) and compiles or loads the
cached kernels on first use; without numba the engine uses its NumPy paths, whose results are
the same (tested).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["tile_counts", "column_counts", "sorted_counts", "floyd_bitmap_ap", "warm_up"]


@njit(nogil=True, cache=True, boundscheck=False)
def _dot(x: np.ndarray, a: int, b: int) -> float:
    """float64 dot product of rows ``a`` and ``b`` of ``x`` (four interleaved partial sums)."""
    d = x.shape[1]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    t = 0
    while t + 4 <= d:
        s0 += x[a, t] * x[b, t]
        s1 += x[a, t + 1] * x[b, t + 1]
        s2 += x[a, t + 2] * x[b, t + 2]
        s3 += x[a, t + 3] * x[b, t + 3]
        t += 4
    while t < d:
        s0 += x[a, t] * x[b, t]
        t += 1
    return (s0 + s1) + (s2 + s3)


@njit(nogil=True, cache=True, boundscheck=False)
def tile_counts(s, x, r0, c0, row_thr, row_lo, row_hi, row_k, cnt_rows,
                col_thr, col_lo, col_hi, col_kmax, cnt_cols):
    """Count, in the float32 tile ``s`` (rows ``r0 …``, columns ``c0 …`` of the group; non-pairs
    −inf), the entries ranking above each threshold.

    Row ``i`` has ``row_k[r0+i]`` thresholds ``row_thr[r0+i, j]`` (float64; an entry of exact
    similarity t ranks above iff ``t > θ``) bracketed by float32 ``row_lo < θ < row_hi``, farther
    from θ than the tile's error bound: ``s > hi`` counts, ``s ≤ lo`` does not, and an entry in
    between is decided by its float64 similarity ``x[r0+i]·x[c0+e]``. Counts are added to
    ``cnt_rows[r0+i, j]``. With ``col_kmax > 0`` the columns are queries too: thresholds
    ``col_thr[j, c0+e]`` (j < col_kmax, +inf padded), counts added to ``cnt_cols[j, c0+e]``,
    counted over blocks of rows (per-column accumulators of a block stay in cache; a column's
    entries within the bound are looked up in the block only)."""
    nr, nc = s.shape
    chunk = 128
    for i in range(nr):
        gi = r0 + i
        row = s[i]
        for j in range(row_k[gi]):
            lo = row_lo[gi, j]
            hi = row_hi[gi, j]
            total = 0
            for e0 in range(0, nc, chunk):          # chunks: a rescan stays in L1
                e1 = min(nc, e0 + chunk)
                n_hi = 0
                n_lo = 0
                for e in range(e0, e1):
                    v = row[e]
                    n_hi += v > hi
                    n_lo += v > lo
                if n_lo != n_hi:                    # entries within the error bound: float64
                    t = row_thr[gi, j]
                    for e in range(e0, e1):
                        v = row[e]
                        if (v > lo) & (v <= hi):
                            if _dot(x, gi, c0 + e) > t:
                                n_hi += 1
                total += n_hi
            cnt_rows[gi, j] += total
    if col_kmax == 0:
        return
    # columns: per block of rows, counts above hi (low 16 bits) and above lo (high 16 bits) of
    # each (threshold, column) in one int32, four rows per pass over the accumulators
    acc = np.zeros((col_kmax, nc), dtype=np.int32)
    block = 32
    for b0 in range(0, nr, block):
        b1 = min(nr, b0 + block)
        i = b0
        while i + 4 <= b1:
            s0 = s[i]
            s1 = s[i + 1]
            s2 = s[i + 2]
            s3 = s[i + 3]
            for j in range(col_kmax):
                hj = col_hi[j, c0:c0 + nc]
                lj = col_lo[j, c0:c0 + nc]
                aj = acc[j]
                for e in range(nc):
                    h = hj[e]
                    lo = lj[e]
                    aj[e] += (np.int32(s0[e] > h) + np.int32(s1[e] > h) + np.int32(s2[e] > h)
                              + np.int32(s3[e] > h)) + ((np.int32(s0[e] > lo) + np.int32(s1[e] > lo)
                                                         + np.int32(s2[e] > lo) + np.int32(s3[e] > lo)) << 16)
            i += 4
        while i < b1:
            s0 = s[i]
            for j in range(col_kmax):
                hj = col_hi[j, c0:c0 + nc]
                lj = col_lo[j, c0:c0 + nc]
                aj = acc[j]
                for e in range(nc):
                    v = s0[e]
                    aj[e] += np.int32(v > hj[e]) + (np.int32(v > lj[e]) << 16)
            i += 1
        for j in range(col_kmax):
            for e in range(nc):
                w = acc[j, e]
                h = w & 0xFFFF
                if (w >> 16) != h:                 # entries within the error bound: float64
                    lo = col_lo[j, c0 + e]
                    hi = col_hi[j, c0 + e]
                    t = col_thr[j, c0 + e]
                    for i in range(b0, b1):
                        v = s[i, e]
                        if (v > lo) & (v <= hi):
                            if _dot(x, r0 + i, c0 + e) > t:
                                h += 1
                cnt_cols[j, c0 + e] += h
                acc[j, e] = 0


@njit(nogil=True, cache=True, boundscheck=False)
def column_counts(s, nc, c0, col_thr, col_kmax, cnt_cols):
    """Add to ``cnt_cols[j, c0+e]`` the entries of column e < ``nc`` of the float64 block ``s``
    (non-pairs −inf) above the threshold ``col_thr[j, c0+e]`` (j < col_kmax), four rows a pass."""
    nr = s.shape[0]
    for j in range(col_kmax):
        tj = col_thr[j, c0:c0 + nc]
        aj = cnt_cols[j, c0:c0 + nc]
        i = 0
        while i + 4 <= nr:
            s0 = s[i]
            s1 = s[i + 1]
            s2 = s[i + 2]
            s3 = s[i + 3]
            for e in range(nc):
                t = tj[e]
                aj[e] += (np.int64(s0[e] > t) + np.int64(s1[e] > t)) + (np.int64(s2[e] > t) + np.int64(s3[e] > t))
            i += 4
        while i < nr:
            s0 = s[i]
            for e in range(nc):
                aj[e] += np.int64(s0[e] > tj[e])
            i += 1


@njit(nogil=True, cache=True, boundscheck=False)
def sorted_counts(comp, cnt):
    """For rows of sorted ``key·2 + is_negative`` entries: ``cnt[i, r]`` = the entries before the
    (r+1)-th positive (even entry) of row i that are not positives — the negatives above it."""
    nr, w = comp.shape
    for i in range(nr):
        r = 0
        for e in range(w):
            if (comp[i, e] & 1) == 0:
                cnt[i, r] = e - r
                r += 1


# de Bruijn table: index of the lowest set bit of a uint64
_DEBRUIJN_MUL = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN = np.zeros(64, dtype=np.int64)
for _b in range(64):
    _DEBRUIJN[(((1 << _b) * int(_DEBRUIJN_MUL)) & (2**64 - 1)) >> 58] = _b


@njit(nogil=True, cache=True, boundscheck=False)
def floyd_bitmap_ap(words, s0, m, n_pos, total, out, debruijn):
    """Null APs of lists ``s0 … s0+m`` (``out[s]`` for list ``s0+s``): Floyd's algorithm with the
    words ``words[t, s0+s]`` (step t: ``r = (w·(J+1)) >> 32``, J = total − n_pos + t, J taken
    when r is drawn), then ``Σ_i (i+1)/(pos_i+1)`` over the positions in ascending order, summed
    in that order, ``/ n_pos`` — the operations of ``nulls._ap_from_positions``."""
    nw = (total + 63) // 64
    bm = np.zeros(nw, dtype=np.uint64)
    one = np.uint64(1)
    sh = np.uint64(32)
    base = total - n_pos
    for s in range(m):
        bm[:] = 0
        for t in range(n_pos):
            j = base + t
            r = np.int64((np.uint64(words[t, s0 + s]) * np.uint64(j + 1)) >> sh)
            if (bm[r >> 6] >> np.uint64(r & 63)) & one:
                r = j
            bm[r >> 6] |= one << np.uint64(r & 63)
        acc = 0.0
        i = 0
        for wi in range(nw):
            w = bm[wi]
            while w != 0:
                low = w & (~w + one)
                p = wi * 64 + debruijn[np.int64((low * _DEBRUIJN_MUL) >> np.uint64(58))]
                i += 1
                acc += i / (p + 1.0)
                w ^= low
        out[s] = acc / n_pos


def warm_up() -> None:
    """Load (or compile and cache) every kernel for the argument types the engine passes."""
    f32, f64, i64 = np.float32, np.float64, np.int64
    s = np.zeros((2, 2), f32)
    thr = np.zeros((2, 1), f64)
    lim = np.zeros((2, 1), f32)
    tile_counts(s, np.zeros((2, 3), f64), 0, 0, thr, lim, lim, np.ones(2, i64), np.zeros((2, 1), i64),
                np.zeros((1, 2), f64), np.zeros((1, 2), f32), np.zeros((1, 2), f32), 1, np.zeros((1, 2), i64))
    column_counts(np.zeros((5, 3), f64), 2, 0, np.zeros((1, 2), f64), 1, np.zeros((1, 2), i64))
    sorted_counts(np.zeros((2, 3), np.uint32), np.zeros((2, 3), i64))
    floyd_bitmap_ap(np.zeros((2, 1), np.uint32), 0, 1, 2, 10, np.empty(1), _DEBRUIJN)
