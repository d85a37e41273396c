"""Null draws: AP of random rank lists per configuration ``(n_pos, n_total)``.

``method="copairs"`` reproduces copairs 0.5.5's draws and float32 arithmetic bit for bit;
``method="fast"`` (default) draws each configuration from its own stream seeded by
``(seed, n_pos, n_total)`` (Floyd's algorithm, rejection sampling or a random-key partial sort,
chosen by the configuration only) and computes float64 APs with exactly the operations of the
observed AP. See the package docstring for the details.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from morphobench.evaluate.map.options import _kernels, _n_threads, _progress, _run_jobs
from morphobench.io import MorphobenchError

DEFAULT_NULL_SIZE = 10_000
_FLOYD_MAX_POS = 8         # fast nulls: Floyd's sampling + a sorting network up to this many positives
_NULL_BATCH = 1 << 22      # fast nulls: random words per batch of configurations

NullSource = Mapping[tuple[int, int], np.ndarray] | Callable[[int, int], np.ndarray]

__all__ = ["DEFAULT_NULL_SIZE", "NullSource", "null_ap_from_ranks", "null_distributions", "null_table"]


def null_ap_from_ranks(rel_k: np.ndarray) -> np.ndarray:
    """AP (float32, copairs' exact arithmetic) of rank lists given as sorted 0-based positive
    positions, shape ``(lists, n_pos)``; ``rel_k`` dtype uint16 when ``n_total < 2**16``."""
    num_pos = rel_k.shape[1]
    pr_k = np.arange(1, num_pos + 1, dtype=np.float32) / (rel_k + 1)
    return (pr_k.sum(axis=1) / num_pos).astype(np.float32)


def _ap_from_positions(cols: Sequence[np.ndarray], total: int | None = None) -> np.ndarray:
    """float64 AP of rank lists given column-wise (``cols[i]`` = 0-based position of the
    (i+1)-th positive, ascending): ``Σ_i (i+1)/(pos_i+1)`` summed in rank order, then ``/ n_pos`` —
    the operations of the observed AP (``r/(r+c)`` accumulated per query in rank order, then
    divided by n_pos), so identical rank lists give bitwise identical values. With ``total``
    (positions < total ≤ 2^16, and not much more than the lists) the correctly rounded quotients
    come from a lookup table."""
    table = total is not None and total <= 2**16 and (not len(cols) or total <= 4 * len(cols[0]))
    ranks = np.arange(1, total + 1, dtype=np.float64) if table else None
    acc = None
    for i, col in enumerate(cols):
        term = (np.take((i + 1) / ranks, col.astype(np.intp)) if table
                else (i + 1) / (col.astype(np.float64) + 1))
        acc = term if acc is None else np.add(acc, term, out=acc)
    return acc / len(cols)


def _rank_dtype(total: int):
    return np.uint16 if total < 2**16 else np.uint32


def _copairs_null(null_size: int, n_pos: int, total: int, seed, chunk: int = 1 << 24) -> np.ndarray:
    """copairs ``random_ap`` draw for draw (row chunks consume the generator in the same order)."""
    rng = np.random.default_rng(seed)
    dtype = _rank_dtype(total)
    rows = max(1, chunk // max(total, 1))
    out = np.empty(null_size, dtype=np.float32)
    base = np.arange(total, dtype=dtype)
    for s in range(0, null_size, rows):
        m = min(rows, null_size - s)
        idx = np.tile(base, (m, 1))
        rng.permuted(idx, axis=1, out=idx)
        out[s:s + m] = null_ap_from_ranks(np.sort(idx[:, :n_pos], axis=1))
    return out


def _conf_bitgen(seed: int, n_pos: int, total: int) -> np.random.PCG64:
    """The fast null's random stream of one configuration: a function of (seed, n_pos, n_total) only."""
    return np.random.PCG64(np.random.SeedSequence([int(seed), int(n_pos), int(total)]))


def _floyd_nulls(n_pos: int, totals: np.ndarray, null_size: int, seed: int) -> np.ndarray:
    """float64 null APs, shape ``(len(totals), null_size)``, for one small ``n_pos``: per list,
    Floyd's algorithm draws ``n_pos`` distinct positions (step t: r uniform on [0, J],
    J = n_total − n_pos + t, taking J instead when r is already drawn), a sorting network orders
    them. The uniform integers are ``(w · (J + 1)) >> 32`` of 32-bit words w of the
    configuration's own PCG64 stream (high then low half of each 64-bit output), so every row is
    a function of (seed, n_pos, n_total) only, whatever the batch."""
    k, c, s = n_pos, len(totals), null_size
    words = np.empty((c, k, s), dtype=np.uint32)
    for i, total in enumerate(totals):
        words[i] = _floyd_words(seed, k, int(total), s)
    tmax = int(totals.max())
    dtype = np.int16 if tmax < 2**15 else np.int32 if tmax < 2**31 else np.int64
    tot = totals.astype(np.int64)[:, None]
    pos = []
    hit = np.empty((c, s), dtype=bool)
    prod = np.empty((c, s), dtype=np.uint64)
    for t in range(k):
        j = tot - k + t                                                   # (c, 1)
        np.multiply(words[:, t, :], (j + 1).astype(np.uint64), out=prod)
        r = np.right_shift(prod, np.uint64(32), out=prod).astype(dtype)
        if pos:
            np.equal(pos[0], r, out=hit)
            for q in pos[1:]:
                hit |= q == r
            np.copyto(r, np.broadcast_to(j.astype(dtype), r.shape), where=hit)
        pos.append(r)
    tmp = np.empty((c, s), dtype=dtype)
    for i in range(1, k):                 # insertion sorting network: comparators (j-1, j)
        for j in range(i, 0, -1):
            np.minimum(pos[j - 1], pos[j], out=tmp)
            np.maximum(pos[j - 1], pos[j], out=pos[j])
            pos[j - 1], tmp = tmp, pos[j - 1]
    return _ap_from_positions(pos, tmax)


def _floyd_words(seed: int, n_pos: int, total: int, null_size: int) -> np.ndarray:
    """The 32-bit words of one configuration's stream, shape (n_pos, null_size), laid out as in
    :func:`_floyd_nulls` (word t·null_size + s draws step t of list s)."""
    k, s = n_pos, null_size
    half = (k * s + 1) // 2
    bitgen = _conf_bitgen(seed, k, total)
    words = np.empty(2 * half, dtype=np.uint32)
    step = 1 << 20                 # raw outputs per chunk (bounded scratch)
    hi_lo = (1, 0) if sys.byteorder == "little" else (0, 1)
    for a in range(0, half, step):
        b = min(half, a + step)
        pair = bitgen.random_raw(b - a).view(np.uint32)      # (low, high) halves, little endian
        words[a:b] = pair[hi_lo[0]::2]                        # high half of each output …
        words[half + a:half + b] = pair[hi_lo[1]::2]          # … then the low halves
    return words[:k * s].reshape(k, s)


def _bitmap_kernels(steps: int):
    """The compiled kernels for ``steps`` Floyd steps of bitmap nulls, or None (NumPy steps):
    when loaded, or when they save more than loading them costs (~50 ns a step)."""
    return _kernels(None, saves_s=steps * 5e-8)


def _floyd_bitmap_rows(words: np.ndarray, s0: int, m: int, n_pos: int, total: int, kernels=None) -> np.ndarray:
    """Null APs of lists ``s0 … s0+m`` by Floyd's algorithm on one bitmap per list: the compiled
    ``kernels`` (one list at a time, its bitmap in cache) or, without, the NumPy steps of
    :func:`_floyd_bitmap_rows_numpy` — the same values."""
    if kernels is None:
        return _floyd_bitmap_rows_numpy(words, s0, m, n_pos, total)
    out = np.empty(m)
    kernels.floyd_bitmap_ap(words, s0, m, n_pos, total, out, kernels._DEBRUIJN)
    return out


def _floyd_bitmap_rows_numpy(words: np.ndarray, s0: int, m: int, n_pos: int, total: int) -> np.ndarray:
    """Null APs of lists ``s0 … s0+m`` by Floyd's algorithm on one bitmap per list (one bit per
    position; O(n_pos) vectorized steps); positions collected as drawn, sorted per list."""
    k = n_pos
    stride = (total + 7) // 8                      # bytes per list: lists never share a byte
    bm = np.zeros(m * stride, dtype=np.uint8)
    base = np.arange(m, dtype=np.intp) * stride
    pos = np.empty((k, m), dtype=np.int32 if total < 2**31 else np.int64)   # step-major rows
    for t in range(k):
        j = total - k + t
        r = ((words[t, s0:s0 + m].astype(np.uint64) * np.uint64(j + 1)) >> np.uint64(32)).astype(np.intp)
        byte = base + (r >> 3)
        bit = np.left_shift(np.uint8(1), (r & 7).astype(np.uint8))
        hit = (bm[byte] & bit) != 0
        if hit.any():
            r[hit] = j
            byte[hit] = base[hit] + (j >> 3)
            bit[hit] = np.uint8(1 << (j & 7))
        bm[byte] |= bit
        pos[t] = r
    pos.sort(axis=0)                                        # each list's positions, ascending
    return _ap_from_positions(list(pos), total)


def _bitmap_chunks(null_size: int, total: int, parts: int = 1, budget: int = 1 << 26) -> list[tuple[int, int]]:
    """(start, length) of the list chunks of a bitmap null: at most ``budget`` bitmap bytes each,
    and at least ``parts`` chunks (for the worker threads). The draws do not depend on it."""
    rows = max(1, min(-(-null_size // max(1, parts)), budget // max(1, (total + 7) // 8)))
    return [(s0, min(rows, null_size - s0)) for s0 in range(0, null_size, rows)]


def _floyd_bitmap_null(null_size: int, n_pos: int, total: int, seed: int, budget: int = 1 << 26) -> np.ndarray:
    """Floyd's algorithm as in :func:`_floyd_nulls` (same words, same draws, same positions) for
    many positives, with a bitmap per list (:func:`_floyd_bitmap_rows`)."""
    words = _floyd_words(seed, n_pos, total, null_size)
    kernels = _bitmap_kernels(n_pos * null_size)
    out = np.empty(null_size)
    for s0, m in _bitmap_chunks(null_size, total, budget=budget):
        out[s0:s0 + m] = _floyd_bitmap_rows(words, s0, m, n_pos, total, kernels)
    return out


def _uses_bitmap(n_pos: int, total: int, null_size: int) -> bool:
    """Whether a many-positive configuration is drawn by Floyd on bitmaps (see :func:`_large_null`)."""
    return (n_pos < total and n_pos * (n_pos - 1) > total
            and -(-null_size // max(1, (1 << 26) // total)) * n_pos <= 400_000)


def _large_null(null_size: int, n_pos: int, total: int, seed: int, chunk: int = 1 << 24) -> np.ndarray:
    """float64 null APs for many positives (the configuration's own stream in every case):
    rejection sampling of sorted distinct positions when positives are sparse, else Floyd's
    algorithm on bitmaps (as the small-n_pos batches) when the number of vectorized steps is
    moderate, else (huge lists) a random-key partial sort. Which one depends on (n_pos, n_total)
    only."""
    if n_pos == total:
        return np.ones(null_size)
    rng = np.random.Generator(_conf_bitgen(seed, n_pos, total))
    if _uses_bitmap(n_pos, total, null_size):
        return _floyd_bitmap_null(null_size, n_pos, total, seed)
    if n_pos * (n_pos - 1) <= total:           # ≲ 40 % of lists need a redraw
        ranks = np.sort(rng.integers(0, total, size=(null_size, n_pos)), axis=1)
        while True:
            dup = (np.diff(ranks, axis=1) == 0).any(axis=1)
            k = int(dup.sum())
            if not k:
                break
            ranks[dup] = np.sort(rng.integers(0, total, size=(k, n_pos)), axis=1)
        return _ap_from_positions(list(ranks.T), total)
    out = np.empty(null_size)
    rows = max(1, chunk // max(total, 1))
    for s in range(0, null_size, rows):
        m = min(rows, null_size - s)
        keys = rng.random((m, total), dtype=np.float32)
        part = np.sort(np.argpartition(keys, n_pos - 1, axis=1)[:, :n_pos], axis=1)
        out[s:s + m] = _ap_from_positions(list(part.T), total)
    return out


def _fast_nulls(confs: np.ndarray, null_size: int, seed: int, show_progress: bool = False) -> np.ndarray:
    """The fast nulls of ``confs`` (float64 rows): small ``n_pos`` in batches, the others one by one."""
    out = np.empty((len(confs), null_size), dtype=np.float64)
    small = np.flatnonzero(confs[:, 0] <= _FLOYD_MAX_POS)
    jobs = []
    for k in np.unique(confs[small, 0]):
        idx = small[confs[small, 0] == k]
        step = max(1, _NULL_BATCH // (int(k) * null_size))
        jobs += [("floyd", int(k), idx[s:s + step]) for s in range(0, len(idx), step)]
    words = {}
    for i in np.flatnonzero(confs[:, 0] > _FLOYD_MAX_POS):
        k, total = int(confs[i, 0]), int(confs[i, 1])
        if _uses_bitmap(k, total, null_size):        # chunks of lists, one job each (threads)
            words[i] = _floyd_words(seed, k, total, null_size)
            jobs += [("bitmap", k, np.array([i]), s0, m)
                     for s0, m in _bitmap_chunks(null_size, total, parts=2 * _n_threads())]
        else:
            jobs.append(("large", k, np.array([i])))

    def run(job):
        kind, k, idx = job[:3]
        if kind == "floyd":
            out[idx] = _floyd_nulls(k, confs[idx, 1], null_size, seed)
        elif kind == "bitmap":
            s0, m = job[3:]
            out[idx[0], s0:s0 + m] = _floyd_bitmap_rows(words[idx[0]], s0, m, k, int(confs[idx[0], 1]), kernels)
        else:
            out[idx[0]] = _large_null(null_size, k, int(confs[idx[0], 1]), seed)

    # compiled Floyd steps (imported and loaded here, before the worker threads) when they pay off
    kernels = _bitmap_kernels(sum(int(confs[i, 0]) for i in words) * null_size) if words else None
    jobs.sort(key=lambda j: -len(j[2]) * j[1] * (j[4] if j[0] == "bitmap" else null_size))  # big first
    _run_jobs(run, list(_progress(jobs, "mAP: nulls", show_progress)))
    return out


def null_distributions(confs: np.ndarray, null_size: int = DEFAULT_NULL_SIZE, seed: int = 0, *,
                       method: str = "fast", nulls: NullSource | None = None,
                       show_progress: bool = False) -> np.ndarray:
    """Null AP samples, shape ``(len(confs), null_size)``, one row per ``(n_pos, n_total)``:
    float64 for ``method="fast"``, float32 (copairs' arithmetic) for ``"copairs"``.

    ``method="copairs"`` expects ``confs`` as copairs orders them (``np.unique(..., axis=0)``) and
    reproduces its draws; ``"fast"`` draws each configuration from its own stream seeded by
    ``(seed, n_pos, n_total)``. ``nulls`` (mapping or callable) overrides both (values kept,
    stored in the method's dtype).
    """
    confs = np.asarray(confs, dtype=np.int64).reshape(-1, 2)
    if method not in {"fast", "copairs"}:
        raise MorphobenchError(f"null method must be 'fast' or 'copairs', got {method!r}")
    if (confs[:, 0] < 1).any() or (confs[:, 0] > confs[:, 1]).any():
        raise MorphobenchError("null configurations need 1 ≤ n_pos ≤ n_total")
    dtype = np.float32 if method == "copairs" else np.float64
    if nulls is None and method == "fast":
        return _fast_nulls(confs, null_size, seed, show_progress)
    out = np.empty((len(confs), null_size), dtype=dtype)
    seeds = np.random.default_rng(seed).integers(8096, size=len(confs)) if nulls is None else None
    for i in _progress(range(len(confs)), "mAP: nulls", show_progress):
        k, m = int(confs[i, 0]), int(confs[i, 1])
        if nulls is not None:
            arr = nulls(k, m) if callable(nulls) else nulls[(k, m)]
            arr = np.asarray(arr).reshape(-1)
            if len(arr) != null_size:
                raise MorphobenchError(f"injected null for {(k, m)} has {len(arr)} samples, expected {null_size}")
            out[i] = arr
        else:
            out[i] = _copairs_null(null_size, k, m, seeds[i])
    return out


def _valid_mask(ap_df: pd.DataFrame) -> np.ndarray:
    return (ap_df["n_pos_pairs"].to_numpy() > 0) & ~np.isnan(ap_df["average_precision"].to_numpy(dtype=float))


def _conf_table(ap_df: pd.DataFrame, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(n_pos, n_total)`` of the valid rows in lexicographic order (as
    ``np.unique(axis=0)``, i.e. copairs' order) and each valid row's index among them."""
    return _conf_arrays(ap_df["n_pos_pairs"].to_numpy(dtype=np.int64)[valid],
                        ap_df["n_total_pairs"].to_numpy(dtype=np.int64)[valid])


def _conf_arrays(k: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(k):
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.int64)
    base = int(t.max()) + 1
    keys, rev = np.unique(k * base + t, return_inverse=True)
    return np.stack([keys // base, keys % base], axis=1), rev.reshape(-1)


def null_table(ap_df: pd.DataFrame, null_size: int = DEFAULT_NULL_SIZE, seed: int = 0, *,
               method: str = "fast", nulls: NullSource | None = None) -> dict[tuple[int, int], np.ndarray]:
    """Null AP samples for every configuration of the valid rows of ``ap_df`` (as
    :func:`ap_p_values` / :func:`mean_average_precision` would draw them), as a mapping
    ``{(n_pos, n_total): array}`` (float64 for ``"fast"``, float32 for ``"copairs"``) that can be
    passed back as ``nulls=`` to share the draws."""
    confs, _ = _conf_table(ap_df, _valid_mask(ap_df))
    arr = null_distributions(confs, null_size, seed, method=method, nulls=nulls)
    return {(int(k), int(m)): arr[i] for i, (k, m) in enumerate(confs)}
