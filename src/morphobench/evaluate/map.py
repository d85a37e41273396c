"""Retrieval mean average precision (mAP) with copairs ≥ 0.5 semantics (REFERENCE.md §4).

Our own vectorized, memory-bounded engine — not a wrapper around copairs — whose numbers equal
copairs 0.5.5 (``copairs.map.average_precision`` + ``mean_average_precision``) on the same
profiles and pair definitions.

Definitions (as copairs)
------------------------
* A pair ``(i, j)``, ``i ≠ j``, is **positive** when the two profiles share every ``pos_sameby``
  value and differ in every ``pos_diffby`` value; **negative** likewise with ``neg_sameby`` /
  ``neg_diffby``. Each unordered pair is ranked in the lists of both of its profiles. A pair that
  satisfies both definitions is listed twice (once as positive, once as negative), as in copairs.
* Every profile with at least one pair is a *query*: its positive and negative pairs are ranked by
  similarity, descending. Similarities are cosines computed in float64 and stored as float32, and
  the sort key is ``float32(1 - s)``, exactly as copairs does (so values equal in float32 are ties);
  ties rank positives before negatives (copairs' stable ``lexsort`` over ``[positives, negatives]``).
* ``AP = (1/n_pos) Σ_{positive ranks k} TP(k)/k``; no positive pair → NaN.
* ``normalized_average_precision = (AP − μ0)/(1 − μ0)``, μ0 the expected AP of a random ranking
  (copairs ``normalize_ap``).
* Null per configuration ``(n_pos, n_total)``: ``null_size`` random rank lists (``n_pos`` positive
  positions drawn uniformly without replacement among ``n_total``) and their APs.
  ``p(AP) = (1 + #{null ≥ AP})/(1 + null_size)``.
* ``mAP`` per group (``sameby``) = mean AP of members with a valid AP (pandas' grouped mean, as
  copairs); group null = element-wise mean of the members' nulls (members sharing a configuration
  share its null row, as in copairs); ``p(mAP) = (1 + #{null > mAP})/(1 + null_size)`` (strict
  ``>``, copairs ``get_map_pvalue``); ``q`` = Benjamini–Hochberg (statsmodels ``fdr_bh``) over the
  evaluated groups; **fraction retrieved** = fraction of evaluated groups with ``q < threshold``
  (0.05).

Nulls and p-values (``null_method`` / ``method``)
-------------------------------------------------
``"copairs"`` — copairs 0.5.5 bit for bit, draws and arithmetic:

* configurations sorted as ``np.unique(confs, axis=0)``, per-configuration seeds
  ``default_rng(seed).integers(8096, size=n_confs)``, each rank list from ``Generator.permuted``
  of ``arange(n_total)``, null APs in float32 as copairs computes them;
* ``#{null ≥ AP}`` compares the float32 null with the float64 AP (``searchsorted`` on the sorted
  null); the group null is the float32 mean of the members' nulls in member row order, compared
  with ``float32(mAP)`` (copairs compares with the mAP as a Python float, which NumPy ≥ 2 / NEP 50
  casts to float32). Ties between a null value and an observed (m)AP — both rationals from the
  same discrete set, so exact ties are common (e.g. AP = 1, 1/2, 7/12 …) — are therefore decided by
  float32 rounding: copairs counts a tied null AP iff its float32 rounding is not below the
  float64 AP, and a tied group-null mean only if float32 rounding lifts it above
  ``float32(mAP)``.
* Caveat (a copairs property, not ours): copairs caches nulls on disk under
  ``~/.copairs/seed{seed}/ns{null_size}/n{total}_k{pos}.npy`` keyed without the per-configuration
  seed, so copairs' numbers depend on what earlier runs left in that cache; ours equal copairs run
  with an empty cache.

``"fast"`` (default) — the same definitions with exact tie semantics, and much faster:

* Draws: every configuration's null is a function of ``(seed, n_pos, n_total)`` only (never of
  which other configurations are present): 32-bit words from its own stream
  ``PCG64(SeedSequence([seed, n_pos, n_total]))`` drive Floyd's algorithm — step t of a list draws
  ``r = (w·(J+1)) >> 32`` uniform on [0, J], ``J = n_total − n_pos + t``, and takes J instead when
  r is already drawn — which yields a uniform ``n_pos``-subset (up to the 2^-32 granularity of
  the multiply-shift). Configurations with the same ``n_pos ≤ 8`` are drawn in one vectorized
  batch (positions compared directly). Beyond 8 positives: rejection sampling of sorted distinct
  positions when they are sparse (``n_pos(n_pos−1) ≤ n_total``), else Floyd's algorithm on a
  bitmap per list (the same draws and positions as the batches would give), or for huge lists a
  random-key partial sort — the choice depending on ``(n_pos, n_total)`` only. Same distribution
  as copairs, different random numbers: p-values agree within Monte-Carlo error.
* Null APs are float64, computed with exactly the operations of the observed AP
  (``(i+1)/(pos_i+1)`` correctly rounded, summed in rank order, then ``/ n_pos``), so identical
  rank lists give bitwise identical values.
* Ties: values closer than ``ε = max(2^-40, n·2^-50)`` (``n`` = number of terms: ``n_pos + 2`` for
  AP, ``max n_pos + m + 1`` for the mean of m members) are equal: ``#{null ≥ AP}`` counts
  ``null ≥ AP − ε`` and ``#{null > mAP}`` counts ``null > mAP + ε``. Both sides are float64
  evaluations of rationals with a rounding error below ``n·2^-52`` (≪ ε), so exactly equal values
  always tie (distinct rank lists often give the same rational, e.g. 7/12 from positions {0, 11}
  and {1, 2}, whose float64 values can differ by an ulp); distinct values closer than ε would also
  tie — none exist for small configurations (exhaustively, n_pos ≤ 4 with n_total ≤ 40 and
  n_pos = 5 with n_total ≤ 30: distinct APs differ by ≥ 2.6e-10).
* Counting is exact without materializing group nulls: ``#{null ≥ t}`` per profile from a
  histogram of the null plus a sort of the few values sharing a bin with a threshold; per group,
  whole groups are decided from the members' null minima/maxima, the others by summing
  integer-floored nulls ``⌊null·2^b⌋`` (uint16; the float64 sum is bracketed within m/2^b) in
  chunks, re-summing in float64 only the samples whose bracket contains the threshold.
* Injected nulls (``nulls=``) are compared as given, with the method's arithmetic: copairs'
  float32 draws reproduce copairs with ``method="copairs"``.

``nulls=``: inject null AP samples yourself — a mapping ``{(n_pos, n_total): array}`` or a
callable ``(n_pos, n_total) -> array`` (e.g. copairs' own ``null_dists``, or :func:`null_table`'s
output to share one set of draws between :func:`ap_p_values` and :func:`mean_average_precision`).

Documented skips (never a silent number)
----------------------------------------
* A query without positive pairs (e.g. a perturbation with a single replicate) gets
  ``average_precision = NaN`` and ``skip_reason = "no positive pairs"``; a group none of whose
  members has a valid AP is listed by :func:`mean_average_precision` with NaN mAP/p/q and a
  ``skip_reason``; such groups are excluded from BH and from the fraction retrieved.
* A query with positives but **no negative pairs** (e.g. no negative controls on its plate):
  copairs reports AP = 1 (and p = 1). ``no_negatives="skip"`` (default) records
  ``skip_reason = "no negative pairs"`` and sets AP to NaN; ``"error"`` raises; ``"keep"`` keeps
  copairs' AP = 1.
* NaN/inf features raise :class:`MorphobenchError` naming the column; zero-norm profiles raise
  (cosine undefined); missing values in a pairing column raise naming the column.

Computation and memory: queries are processed in blocks whose pair count is bounded
(``max_entries``), never an n × n matrix (unless a definition has no ``sameby``, in which case
every profile is a candidate and a block holds ``block × n`` similarities, still bounded by
``max_entries``). Positive pairs inside small groups come from one small Gram matrix per group;
negatives come as dense (queries sharing their candidates) × (candidates) GEMM blocks whose keys
fill a padded per-query table (non-pairs masked), or as entry lists when they are scattered.
Small GEMMs run on one BLAS thread; the NumPy-heavy loops (GEMM blocks, null batches, counting)
run in a small thread pool — ``MORPHOBENCH_MAP_THREADS`` (default: usable CPUs, at most 4) sets
its size, 1 disables it. Results do not depend on it.
Not implemented: copairs' ``multilabel`` variants and query-string column filters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations, pairwise

import numpy as np
import pandas as pd

from morphobench.data.tables import feature_columns, metadata_columns
from morphobench.io import MorphobenchError, progress

log = logging.getLogger("morphobench.evaluate.map")

DEFAULT_NULL_SIZE = 10_000
_GEMM_MIN_ENTRIES = 4096       # a same-group segment at least this large uses one GEMM
_GRAM_MAX = 64                 # groups up to this size: pair similarities from one small Gram matrix
_NEG_DENSE = True              # negatives as dense GEMM blocks where they are (False: entry lists)
_DENSE_MIN_ENTRIES = 256       # … when the dense blocks hold at least this many pairs on average
_AP_METHOD = "auto"            # "compare" | "sort" force one AP algorithm (tests)
_GATHER_VALUES = 1 << 17       # gathered values per row-wise dot-product chunk (×2 operands, cache-sized)
_BLAS_SMALL = 1 << 26          # GEMMs below this many multiply-adds run on one BLAS thread

NullSource = Mapping[tuple[int, int], np.ndarray] | Callable[[int, int], np.ndarray]

__all__ = [
    "DEFAULT_NULL_SIZE",
    "average_precision",
    "ap_p_values",
    "null_distributions",
    "null_table",
    "null_ap_from_ranks",
    "mean_average_precision",
    "benjamini_hochberg",
    "fraction_retrieved",
    "summarize_map",
    "retrieval",
    "replicate_retrieval",
    "RetrievalResult",
]


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------
def _progress(iterable, desc: str, show: bool):
    """A progress bar only when asked for (importing tqdm is not free)."""
    return progress(iterable, desc=desc, disable=None) if show else iterable


def _as_list(cols: str | Sequence[str] | None) -> list[str]:
    if cols is None:
        return []
    if isinstance(cols, str):
        return [cols]
    return list(cols)


def _unit_rows(feats, source: str, rows: np.ndarray | None = None) -> np.ndarray:
    """float64 feature rows divided by their L2 norm (cosine ready), in one cache-friendly pass;
    with ``rows``, the output holds the rows ``rows`` in that order.

    The norm is computed exactly as ``np.linalg.norm(x, axis=1)`` (and copairs) does —
    ``sqrt(add.reduce(x*x, axis=1))`` on the float64 values — so the rows are bitwise those of
    ``x / norm``. NaN/inf features → error naming the column; all-zero rows → error."""
    if isinstance(feats, pd.DataFrame):
        names = [str(c) for c in feats.columns]
        nonnum = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
        if nonnum:
            raise MorphobenchError(f"{source}: non-numeric feature column(s) {nonnum[:5]}")
        x = feats.to_numpy()
    else:
        x = np.asarray(feats)
        if x.dtype.kind not in "biuf":
            x = np.asarray(feats, dtype=np.float64)
        names = [f"feature[{j}]" for j in range(x.shape[1])] if x.ndim == 2 else []
    if x.ndim != 2:
        raise MorphobenchError(f"{source}: features must be a 2-D matrix, got shape {x.shape}")
    d = x.shape[1]
    n = x.shape[0] if rows is None else len(rows)
    out = np.empty((n, d), dtype=np.float64)
    norms = np.empty(n)
    step = max(1, (1 << 15) // max(1, d))

    def run(part):
        lo, hi = part
        sq = np.empty((min(step, hi - lo), d))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for s in range(lo, hi, step):
                e = min(hi, s + step)
                o = out[s:e]
                np.copyto(o, x[s:e] if rows is None else x[rows[s:e]], casting="unsafe")
                b = sq[:e - s]
                np.multiply(o, o, out=b)
                nb = norms[s:e]
                np.add.reduce(b, axis=1, out=nb)
                np.sqrt(nb, out=nb)
                o /= nb[:, None]

    cuts = np.linspace(0, n, min(_n_threads(), max(1, n // 4096)) + 1).astype(int)
    _run_jobs(run, [(int(a), int(b)) for a, b in pairwise(cuts) if b > a])
    if not np.isfinite(norms).all():       # a NaN/inf feature (or an overflowing norm)
        finite = np.isfinite(x)
        if not finite.all():
            bad_cols = np.flatnonzero(~finite.all(axis=0))
            rows = np.flatnonzero(~finite[:, bad_cols[0]])
            raise MorphobenchError(
                f"{source}: {int((~finite).sum())} NaN/inf feature value(s) in column(s) "
                f"{[names[j] for j in bad_cols[:5]]} (first at row {int(rows[0])})")
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        zero = np.sort(zero if rows is None else rows[zero])
        raise MorphobenchError(
            f"{source}: {len(zero)} profile(s) with an all-zero feature vector (rows {zero[:5].tolist()}); "
            "cosine similarity is undefined for them")
    return out


def _encode_columns(meta: pd.DataFrame, cols: Sequence[str], source: str) -> dict[str, np.ndarray]:
    codes = {}
    for c in cols:
        if c not in meta.columns:
            raise MorphobenchError(f"{source}: pairing column {c!r} not in metadata "
                                   f"(have {list(meta.columns)[:10]})")
        col = meta[c]
        if col.isna().any():
            raise MorphobenchError(f"{source}: pairing column {c!r} has {int(col.isna().sum())} "
                                   "missing value(s); fill or drop those rows first")
        codes[c] = pd.factorize(col, sort=False)[0].astype(np.int64)
    return codes


def _group_ids(codes: list[np.ndarray]) -> np.ndarray | None:
    """Dense id of each row's combination of codes (None when no columns)."""
    if not codes:
        return None
    g = codes[0]
    for c in codes[1:]:
        g = pd.factorize(g * (int(c.max()) + 1) + c, sort=False)[0].astype(np.int64)
    return g


def _expand_ranges(starts: np.ndarray, lens: np.ndarray, gap_at: np.ndarray | None = None,
                   gap_len: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``range(start, start + len)`` per item, optionally skipping ``gap_len``
    positions after the first ``gap_at`` ones; returns (item index, position)."""
    total = int(lens.sum())
    rep = np.repeat(np.arange(len(lens)), lens)
    off = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    pos = np.repeat(starts, lens) + off
    if gap_at is not None:
        pos += (off >= np.repeat(gap_at, lens)) * np.repeat(gap_len, lens)
    return rep, pos


class _PairDefinition:
    """All pairs sharing every ``sameby`` code and differing in every ``diffby`` code.

    Pair counts per profile are exact by inclusion–exclusion over the ``diffby`` columns (no
    enumeration); enumeration sorts rows by (sameby group, first diffby column) so a profile's
    candidates are its group minus its own sub-group: two contiguous ranges.
    """

    def __init__(self, codes: dict[str, np.ndarray], sameby: list[str], diffby: list[str], n: int):
        self.n = n
        same = [codes[c] for c in sameby]
        diff = [codes[c] for c in diffby]
        g = _group_ids(same)
        self.gid = np.zeros(n, dtype=np.int64) if g is None else g
        count = np.zeros(n, dtype=np.int64)
        for r in range(len(diff) + 1):
            for sub in combinations(diff, r):
                gg = _group_ids(same + list(sub))
                size = np.full(n, n, dtype=np.int64) if gg is None else np.bincount(gg)[gg]
                count += (-1) ** r * (size - 1)
        self.count = count
        self.rest = diff[1:]
        self.has_diff = bool(diff)
        sub_id = _group_ids(same + diff[:1]) if diff else None
        self.order = (np.lexsort((sub_id, self.gid)) if sub_id is not None
                      else np.argsort(self.gid, kind="stable"))
        gcount = np.bincount(self.gid)
        self.gcount, self.gstart = gcount, np.cumsum(gcount) - gcount
        self.rank = np.empty(n, dtype=np.int64)          # position of each profile in ``order``
        self.rank[self.order] = np.arange(n)
        if sub_id is not None:
            self.sub = sub_id
            _, first = np.unique(sub_id[self.order], return_index=True)
            self.scount = np.bincount(sub_id)
            self.sstart = first.astype(np.int64)

    def query_order(self, q: np.ndarray) -> np.ndarray:
        """``q`` sorted by (group, sub-group): queries sharing their candidates are adjacent."""
        if self.has_diff:
            return q[np.lexsort((self.sub[q], self.gid[q]))]
        return q[np.argsort(self.gid[q], kind="stable")]

    def dense_plan(self, q: np.ndarray, min_entries: int | None = None, max_parts: int = 4096):
        """Dense blocks covering every pair of the queries ``q`` (sorted by :meth:`query_order`):
        a list of ``(r0, r1, cols, merged)`` — rows ``q[r0:r1]`` × candidate profiles ``cols``
        (their group minus their own sub-group; with ``merged`` the whole group, same-sub-group
        and self pairs to be masked) — or None when the pairs are too scattered for dense blocks
        (many tiny groups), the entry lists then being cheaper."""
        if not len(q):
            return []
        min_entries = _DENSE_MIN_ENTRIES if min_entries is None else min_entries
        g = self.gid[q]
        key = self.sub[q] if self.has_diff else g
        kb = np.concatenate([[0], np.flatnonzero((np.diff(key) != 0) | (np.diff(g) != 0)) + 1, [len(q)]])
        if len(kb) - 1 > max_parts:
            return None
        gb = np.concatenate([[0], np.flatnonzero(np.diff(g) != 0) + 1, [len(q)]])
        plan = []
        for a, b in pairwise(gb):
            gg = int(g[a])
            start, size = int(self.gstart[gg]), int(self.gcount[gg])
            ks = kb[(kb >= a) & (kb < b)]
            ke = np.append(ks[1:], b)
            if not self.has_diff:
                plan.append((int(a), int(b), self.order[start:start + size], True))
                continue
            subs = self.sub[q[ks]]
            cand = size - self.scount[subs]
            cost_keys = int(((ke - ks) * cand).sum())
            if cost_keys == 0:
                continue
            cost_merged = (b - a) * size
            if cost_merged <= 1.25 * cost_keys or (cost_merged <= 2 * cost_keys and (b - a) < 16 * len(ks)):
                plan.append((int(a), int(b), self.order[start:start + size], True))
                continue
            for k0, k1, sb in zip(ks, ke, subs, strict=True):
                ss, sl = int(self.sstart[sb]), int(self.scount[sb])
                cols = np.concatenate([self.order[start:ss], self.order[ss + sl:start + size]])
                if len(cols):
                    plan.append((int(k0), int(k1), cols, False))
        if sum((r1 - r0) * len(c) for r0, r1, c, _ in plan) < min_entries * max(1, len(plan)):
            return None
        return plan

    def invalid(self, rows: np.ndarray, cols: np.ndarray, merged: bool) -> np.ndarray | None:
        """Mask of the non-pairs in a dense block (self, same sub-group when ``merged``, equal
        values of the other ``diffby`` columns); None when there is none."""
        bad = None
        checks = list(self.rest)
        if merged and self.has_diff:
            checks.append(self.sub)
        if merged:
            bad = cols[None, :] == rows[:, None]
        for code in checks:
            eq = code[cols][None, :] == code[rows][:, None]
            bad = eq if bad is None else (bad | eq)
        return bad if bad is not None and bad.any() else None

    def entries(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``q``, partner) for every pair of the queries ``q``, grouped by query."""
        g = self.gid[q]
        gs, gl = self.gstart[g], self.gcount[g]
        if self.has_diff:
            s = self.sub[q]
            ss, sl = self.sstart[s], self.scount[s]
            rep, pos = _expand_ranges(gs, gl - sl, gap_at=ss - gs, gap_len=sl)
        else:
            rep, pos = _expand_ranges(gs, gl)
        partner = self.order[pos]
        qglob = q[rep]
        keep = partner != qglob
        for code in self.rest:
            keep &= code[partner] != code[qglob]
        return rep[keep], partner[keep]


# ----------------------------------------------------------------------------------------------
# similarities
# ----------------------------------------------------------------------------------------------
try:  # threadpoolctl: a scikit-learn dependency
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover
    ThreadpoolController = None
_BLAS_CONTROLLER = None


def _single_thread_blas():
    """Context limiting BLAS to one thread; a no-op when threadpoolctl is unavailable."""
    global _BLAS_CONTROLLER
    if ThreadpoolController is None:  # pragma: no cover
        return contextlib.nullcontext()
    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


class _Similarity:
    """Cosine of normalized rows, numpy (default) or torch (``device='cuda'`` …)."""

    def __init__(self, xn: np.ndarray, backend: str = "numpy", device: str = "cpu",
                 rows: np.ndarray | None = None):
        """``xn[i]`` is the unit vector of profile ``rows[i]`` (``rows`` None: of profile i); the
        methods take profile ids."""
        self.xn = xn
        self.n = len(xn)
        self.row = None
        if rows is not None:
            self.row = np.empty(len(rows), dtype=np.int64)
            self.row[rows] = np.arange(len(rows))
        self.backend = backend
        if backend == "torch":
            import torch

            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.torch = torch
            self.device = torch.device(device)
            self.xt = torch.from_numpy(xn).to(self.device)
        elif backend != "numpy":
            raise MorphobenchError(f"unknown similarity backend {backend!r} (numpy | torch)")

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        return ids if self.row is None else self.row[ids]

    def _take(self, ids: np.ndarray) -> np.ndarray:
        """``xn`` rows of profiles ``ids``: a view when they are consecutive rows."""
        r = self._rows(ids)
        if len(r) > 1 and r[-1] - r[0] == len(r) - 1 and (np.diff(r) == 1).all():
            return self.xn[r[0]:r[-1] + 1]
        return self.xn[r]

    def gemm(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.backend == "torch":
            t = self.torch
            r = t.from_numpy(self._rows(rows)).to(self.device)
            c = t.from_numpy(self._rows(cols)).to(self.device)
            return (self.xt[r] @ self.xt[c].T).cpu().numpy()
        if len(rows) * len(cols) * self.xn.shape[1] < _BLAS_SMALL:
            with _single_thread_blas():   # threaded BLAS is much slower on many small products
                return self.matrix(rows, cols)
        return self.matrix(rows, cols)

    def matrix(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``xn[rows] @ xn[cols].T`` (numpy backend; BLAS threads as currently set)."""
        if self.backend == "torch":
            return self.gemm(rows, cols)
        return self._take(rows) @ self._take(cols).T

    def rowwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Dot products of the row pairs (a[i], b[i]); a pair listed in both orders (a positive
        pair seen from both of its profiles) is computed once (``x·y == y·x`` bitwise)."""
        n = self.n
        if len(a) > 1024:
            key = np.minimum(a, b) * n + np.maximum(a, b)
            uk, inv = np.unique(key, return_inverse=True)
            if len(uk) < 0.8 * len(a):
                return self._rowwise(uk // n, uk % n)[inv.reshape(-1)]
        return self._rowwise(a, b)

    def _rowwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = self._rows(a), self._rows(b)
        out = np.empty(len(a), dtype=np.float64)
        d = max(1, self.xn.shape[1])
        chunk = min(len(a), max(64, _GATHER_VALUES // d))
        if self.backend != "torch" and chunk:
            ba, bb = np.empty((chunk, d)), np.empty((chunk, d))
        for s in range(0, len(a), chunk):
            ia, ib = a[s:s + chunk], b[s:s + chunk]
            if self.backend == "torch":
                t = self.torch
                ta = t.from_numpy(ia).to(self.device)
                tb = t.from_numpy(ib).to(self.device)
                out[s:s + len(ia)] = (self.xt[ta] * self.xt[tb]).sum(dim=1).cpu().numpy()
            else:
                xa, xb = ba[:len(ia)], bb[:len(ia)]
                np.take(self.xn, ia, axis=0, out=xa, mode="clip")
                np.take(self.xn, ib, axis=0, out=xb, mode="clip")
                out[s:s + len(ia)] = np.einsum("ij,ij->i", xa, xb)
        return out

    @staticmethod
    def _compact(idx: np.ndarray, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique values (ascending) of ``idx`` and each entry's position among them, in O(n)
        via the scratch array ``slot`` (all -1 on entry and on return)."""
        slot[idx] = 0
        u = np.flatnonzero(slot == 0)
        slot[u] = np.arange(len(u))
        inv = slot[idx]
        slot[u] = -1
        return u, inv

    def gram_entries(self, qglob: np.ndarray, partner: np.ndarray, gid: np.ndarray,
                     defn: _PairDefinition) -> np.ndarray:
        """Similarities of entries within small ``defn`` groups: each group's members are gathered
        once and the upper triangle of its Gram matrix filled by row-wise dot products (batched
        per group size); both orders of a pair read the same value."""
        d = self.xn.shape[1]
        need = np.zeros(len(defn.gcount), dtype=bool)
        need[gid] = True
        ug = np.flatnonzero(need)
        sz = defn.gcount[ug]
        off = np.zeros(len(defn.gcount), dtype=np.int64)
        flat = np.empty(int((sz * sz).sum()))
        pos, jobs = 0, []
        for mm in np.unique(sz):
            mm = int(mm)
            grp = ug[sz == mm]
            off[grp] = pos + np.arange(len(grp)) * mm * mm
            step = max(1, _GATHER_VALUES // (mm * max(d, 1)))
            for s in range(0, len(grp), step):
                jobs.append((mm, grp[s:s + step], pos + s * mm * mm))
            pos += len(grp) * mm * mm

        def run(job):
            mm, g, at = job
            members = self._rows(defn.order[defn.gstart[g][:, None] + np.arange(mm)].reshape(-1))
            a = np.take(self.xn, members, axis=0, out=_scratch("gram", (len(g) * mm, d), np.float64),
                        mode="clip").reshape(len(g), mm, d)
            block = flat[at:at + len(g) * mm * mm].reshape(len(g), mm, mm)
            for i in range(mm - 1):          # upper triangle, row-wise dot products
                for j in range(i + 1, mm):
                    block[:, i, j] = np.einsum("ij,ij->i", a[:, i], a[:, j])

        _run_jobs(run, jobs)
        lq = defn.rank[qglob] - defn.gstart[gid]
        lp = defn.rank[partner] - defn.gstart[gid]
        return flat[off[gid] + np.minimum(lq, lp) * defn.gcount[gid] + np.maximum(lq, lp)]

    def entries(self, qglob: np.ndarray, partner: np.ndarray, gid: np.ndarray,
                defn: _PairDefinition | None = None) -> np.ndarray:
        """Similarity of each (query, partner) entry of groups ``gid``; with ``defn``, entries of
        small groups (≤ _GRAM_MAX members) go through :meth:`gram_entries`."""
        sims = np.empty(len(qglob), dtype=np.float64)
        if len(qglob) == 0:
            return sims
        if defn is not None and self.backend == "numpy":
            small = defn.gcount[gid] <= _GRAM_MAX
            if small.all():
                return self.gram_entries(qglob, partner, gid, defn)
            if small.any():
                sims[small] = self.gram_entries(qglob[small], partner[small], gid[small], defn)
                rest = ~small
                sims[rest] = self.entries(qglob[rest], partner[rest], gid[rest])
                return sims
        if (np.diff(gid) < 0).any():   # make entries contiguous per group
            srt = np.argsort(gid, kind="stable")
            sims[srt] = self.entries(qglob[srt], partner[srt], gid[srt])
            return sims
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(gid)) + 1, [len(gid)]])
        sizes = np.diff(bounds)
        gathered = np.ones(len(qglob), dtype=bool)
        big = np.flatnonzero(sizes >= _GEMM_MIN_ENTRIES)
        if len(big):
            slot = np.full(self.n, -1, dtype=np.int64)
            for k in big:
                s, e = bounds[k], bounds[k + 1]
                qs, ps = qglob[s:e], partner[s:e]
                uq, iq = self._compact(qs, slot)
                up, ip = self._compact(ps, slot)
                if (e - s) * 4 < len(uq) * len(up):  # too sparse for a dense block
                    continue
                sims[s:e] = self.gemm(uq, up)[iq, ip]
                gathered[s:e] = False
        idx = np.flatnonzero(gathered)
        if len(idx):
            sims[idx] = self.rowwise(qglob[idx], partner[idx])
        return sims


def _rank_keys(sims: np.ndarray) -> np.ndarray:
    """copairs' sort key ``1 - s`` with ``s`` stored as float32, as order-preserving uint32 bits
    (equal floats ↔ equal keys, so ties stay ties). Cosines of unit vectors computed in float64
    round to float32 values in [-1, 1], so the key is a float32 in [+0, 2] (``1 − 1`` is +0.0),
    whose raw bits sort like the floats."""
    key = sims.astype(np.float32)
    np.subtract(np.float32(1), key, out=key)
    if key.size and not key.min() >= 0:  # pragma: no cover - impossible for unit vectors
        raise MorphobenchError("internal error: cosine similarity outside [-1, 1]")
    return key.view(np.uint32)


_PAD_KEY = np.uint32(0xFFFFFFFF)    # never a key (keys are bits of floats in [0, 2]: ≤ 0x40000000)


def _neg_table(nq: int, neg_qi: np.ndarray, nk: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """Negative keys as a (query × max n_neg) table padded with ``_PAD_KEY``."""
    nmax = int(n_neg.max()) if len(nk) else 0
    if len(nk) and (np.diff(neg_qi) < 0).any():
        o = np.argsort(neg_qi, kind="stable")
        neg_qi, nk = neg_qi[o], nk[o]
    table = np.full((nq, max(nmax, 1)), _PAD_KEY, dtype=np.uint32)
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


def _block_ap(nq: int, pos_qi: np.ndarray, pos_s: np.ndarray, neg_qi: np.ndarray | None = None,
              neg_s: np.ndarray | None = None, *, neg_table: np.ndarray | None = None,
              n_neg: np.ndarray | None = None) -> np.ndarray:
    """AP of ``nq`` queries from their positive (query, similarity) entries and their negatives,
    given as (query, similarity) entries or as a key table (``neg_table``, one padded row of
    ``_rank_keys`` per query, with ``n_neg``).

    With positives sorted by key within a query (rank r = 1, 2, …) and c = #negatives with a
    strictly smaller key (ties: positives first), the positive sits at rank r + c with r true
    positives above it: AP = mean_r r / (r + c). Per query, ``c`` is either counted by comparing
    each positive with the query's negatives (cheap when positives are few, e.g. replicates) or
    read off one sort of all its entries — whichever costs less.
    """
    pk = _rank_keys(pos_s)
    n_pos = np.bincount(pos_qi, minlength=nq)
    if neg_table is None:
        nk = _rank_keys(neg_s)
        n_neg = np.bincount(neg_qi, minlength=nq)
    tot = n_pos + n_neg
    use_cmp = n_pos * n_neg <= tot * np.log2(tot + 2)
    if _AP_METHOD != "auto":
        use_cmp[:] = _AP_METHOD == "compare"
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
                    keep = tab != _PAD_KEY
                    res = _ap_sort(nsel, pqi, ppk, np.nonzero(keep)[0], tab[keep], n_pos[sel], n_neg[sel])
            else:
                nm = sel[neg_qi]
                nqi, nnk = (neg_qi, nk) if every else (remap[neg_qi[nm]], nk[nm])
                if flag:
                    res = _ap_compare(nsel, pqi, ppk, _neg_table(nsel, nqi, nnk, n_neg[sel]), n_pos[sel])
                else:
                    res = _ap_sort(nsel, pqi, ppk, nqi, nnk, n_pos[sel], n_neg[sel])
            ap[sel] = res
    return ap


def _expected_ap(m: np.ndarray, total: np.ndarray) -> np.ndarray:
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


def _normalize_ap(ap: np.ndarray, n_pos: np.ndarray, n_total: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    mu0 = _expected_ap(n_pos, n_total)
    with np.errstate(invalid="ignore"):
        return np.clip((ap - mu0) / np.maximum(1 - mu0, eps), -1.0, 1.0)


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
    max_entries: int = 2_000_000,
    backend: str = "numpy",
    device: str = "cpu",
    show_progress: bool = False,
    source: str = "profiles",
) -> pd.DataFrame:
    """AP of every profile against its positive and negative pairs (copairs ``average_precision``).

    Parameters mirror copairs; ``meta`` and ``feats`` have one row per profile.
    Returns ``meta`` (index reset) plus ``n_pos_pairs``, ``n_total_pairs``, ``average_precision``,
    ``normalized_average_precision`` and ``skip_reason`` ("" when the AP is valid).
    ``no_negatives``: ``"skip"`` | ``"error"`` | ``"keep"`` (see module docstring).
    ``backend="torch"`` computes similarities with torch on ``device`` (``"cuda"``, ``"auto"``).
    """
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
    codes = _encode_columns(meta, sorted(set(pos_sameby + pos_diffby + neg_sameby + neg_diffby)), source)
    pos_def = _PairDefinition(codes, pos_sameby, pos_diffby, n)
    neg_def = _PairDefinition(codes, neg_sameby, neg_diffby, n)

    n_pos, n_neg = pos_def.count, neg_def.count
    ap = np.full(n, np.nan)
    # queries with positives, ordered by their negative-pair group so that a block's negatives
    # fall in few groups (one GEMM each); blocks bounded by their exact number of pairs
    queries = neg_def.query_order(np.flatnonzero(n_pos > 0))
    # unit vectors stored in query order (a dense block's query rows are then a slice, no gather)
    perm = np.concatenate([queries, np.flatnonzero(n_pos == 0)])
    xn = _unit_rows(feats, source, rows=perm)
    sim = _Similarity(xn, backend=backend, device=device, rows=perm)
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
        plan = neg_def.dense_plan(q) if _NEG_DENSE else None
        if plan is None:       # scattered negatives: entry lists
            nqi, npart = neg_def.entries(q)
            ns = sim.entries(q[nqi], npart, neg_def.gid[q[nqi]])
            ap[q] = _block_ap(len(q), pqi, ps, nqi, ns)
            continue
        # negatives as dense (query rows × candidate) blocks: one GEMM each, keys straight into
        # the padded per-query table (non-pairs masked with keys that are never smaller)
        width = max([len(c) for _, _, c, _ in plan] + [1])
        if len(q) * width > 4 * max(max_entries, int(n_neg[q].sum())):   # skewed groups: sparse
            nqi, npart = neg_def.entries(q)
            ns = sim.entries(q[nqi], npart, neg_def.gid[q[nqi]])
            ap[q] = _block_ap(len(q), pqi, ps, nqi, ns)
            continue
        table = np.full((len(q), width), _PAD_KEY, dtype=np.uint32)

        def fill(part, q=q, table=table):
            for r0, r1, cols, merged in part:
                keys = _rank_keys(sim.matrix(q[r0:r1], cols))
                bad = neg_def.invalid(q[r0:r1], cols, merged)
                if bad is not None:
                    keys[bad] = _PAD_KEY
                table[r0:r1, :len(cols)] = keys

        small = max([(r1 - r0) * len(c) for r0, r1, c, _ in plan] + [0]) * xn.shape[1] < _BLAS_SMALL
        if small and backend == "numpy":   # many small GEMMs: one BLAS thread each, in parallel
            parts = [plan[i::_n_threads()] for i in range(min(_n_threads(), len(plan)))]
            with _single_thread_blas():
                _run_jobs(fill, parts)
        else:
            fill(plan)
        ap[q] = _block_ap(len(q), pqi, ps, neg_table=table, n_neg=n_neg[q])

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
    out["normalized_average_precision"] = _normalize_ap(ap, n_pos, n_total)
    out["skip_reason"] = reason
    return out


# ----------------------------------------------------------------------------------------------
# null distributions and p-values
# ----------------------------------------------------------------------------------------------
_TIE_EPS = 2.0 ** -40      # fast mode: values closer than this are ties (scaled up for long lists)
_FLOYD_MAX_POS = 8         # fast nulls: Floyd's sampling + a sorting network up to this many positives
_NULL_BATCH = 1 << 22      # fast nulls: random words per batch of configurations
_COUNT_CHUNK = 1 << 20     # fast mAP p-values: group-null values per chunk (uint16)


def _tie_eps(n_terms) -> np.ndarray:
    """Tie tolerance of fast mode for quantities built from ``n_terms`` float64 roundings."""
    return np.maximum(_TIE_EPS, np.asarray(n_terms, dtype=np.float64) * 2.0 ** -50)


_LOCAL = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A per-thread reusable buffer (no page faults from fresh allocations in hot loops)."""
    key = (name, np.dtype(dtype).str)
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    size = int(np.prod(shape))
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def _n_threads() -> int:
    """Worker threads of the NumPy-heavy loops: ``MORPHOBENCH_MAP_THREADS`` or the usable CPUs
    (at most 4)."""
    env = os.environ.get("MORPHOBENCH_MAP_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise MorphobenchError(f"MORPHOBENCH_MAP_THREADS must be an integer, got {env!r}") from None
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _run_jobs(fn: Callable, jobs: Sequence) -> None:
    """``fn(job)`` for every job (each writing its own disjoint output), in a small thread pool:
    NumPy releases the GIL in the heavy loops."""
    nt = min(_n_threads(), len(jobs))
    if nt <= 1:
        try:
            for job in jobs:
                fn(job)
        finally:
            _LOCAL.__dict__.pop("bufs", None)      # no scratch kept between calls
        return
    with ThreadPoolExecutor(nt) as ex:
        for _ in ex.map(fn, jobs):
            pass


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
    (positions < total ≤ 2^16) the correctly rounded quotients come from a lookup table."""
    table = total is not None and total <= 2**16
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
    raw = _conf_bitgen(seed, k, total).random_raw(half)
    words = np.empty(2 * half, dtype=np.uint32)
    np.right_shift(raw, np.uint64(32), out=words[:half], casting="unsafe")
    np.bitwise_and(raw, np.uint64(0xFFFFFFFF), out=words[half:], casting="unsafe")
    return words[:k * s].reshape(k, s)


def _floyd_bitmap_null(null_size: int, n_pos: int, total: int, seed: int, budget: int = 1 << 26) -> np.ndarray:
    """Floyd's algorithm as in :func:`_floyd_nulls` (same words, same draws, same positions) for
    many positives, the drawn set kept as a bitmap per list (O(n_pos) vectorized steps)."""
    k, s = n_pos, null_size
    words = _floyd_words(seed, k, total, s)
    out = np.empty(s)
    rows = max(1, min(s, budget // max(total, 1)))
    for s0 in range(0, s, rows):
        m = min(rows, s - s0)
        bm = np.zeros(m * total, dtype=bool)
        base = np.arange(m, dtype=np.intp) * total
        w = words[:, s0:s0 + m].astype(np.uint64)
        for t in range(k):
            j = total - k + t
            r = ((w[t] * np.uint64(j + 1)) >> np.uint64(32)).astype(np.intp)
            r += base
            hit = bm[r]
            r[hit] = base[hit] + j
            bm[r] = True
        pos = np.flatnonzero(bm).reshape(m, k) - base[:, None]
        out[s0:s0 + m] = _ap_from_positions(list(pos.T), total)
    return out


def _large_null(null_size: int, n_pos: int, total: int, seed: int, chunk: int = 1 << 24) -> np.ndarray:
    """float64 null APs for many positives (the configuration's own stream in every case):
    rejection sampling of sorted distinct positions when positives are sparse, else Floyd's
    algorithm on bitmaps (as the small-n_pos batches) when the number of vectorized steps is
    moderate, else (huge lists) a random-key partial sort. Which one depends on (n_pos, n_total)
    only."""
    if n_pos == total:
        return np.ones(null_size)
    rng = np.random.Generator(_conf_bitgen(seed, n_pos, total))
    if n_pos * (n_pos - 1) > total and -(-null_size // max(1, (1 << 26) // total)) * n_pos <= 400_000:
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
    jobs += [("large", int(confs[i, 0]), np.array([i])) for i in np.flatnonzero(confs[:, 0] > _FLOYD_MAX_POS)]

    def run(job):
        kind, k, idx = job
        if kind == "floyd":
            out[idx] = _floyd_nulls(k, confs[idx, 1], null_size, seed)
        else:
            out[idx[0]] = _large_null(null_size, k, int(confs[idx[0], 1]), seed)

    jobs.sort(key=lambda j: -len(j[2]) * j[1])      # big batches first (thread balance)
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


def ap_p_values(ap_df: pd.DataFrame, null_size: int = DEFAULT_NULL_SIZE, seed: int = 0, *,
                method: str = "fast", nulls: NullSource | None = None,
                show_progress: bool = False) -> np.ndarray:
    """``p(AP) = (1 + #{null ≥ AP})/(1 + null_size)`` per profile; NaN where AP is not valid.

    ``"fast"``: float64 comparison with ties (``|null − AP| ≤ ε``) counted, see the module
    docstring; ``"copairs"``: copairs' comparison of its float32 null with the float64 AP."""
    valid = _valid_mask(ap_df)
    p = np.full(len(ap_df), np.nan)
    if not valid.any():
        return p
    confs, rev = _conf_table(ap_df, valid)
    null = null_distributions(confs, null_size, seed, method=method, nulls=nulls, show_progress=show_progress)
    scores = ap_df["average_precision"].to_numpy(dtype=np.float64)[valid]
    if method != "copairs":
        scores = scores - _tie_eps(confs[rev, 0] + 2)
    num = np.empty(len(scores), dtype=np.int64)
    order = np.argsort(rev, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(rev, minlength=len(confs)))])

    def run(cs):
        for c in cs:
            idx = order[bounds[c]:bounds[c + 1]]
            if method == "copairs":   # copairs: sorted float32 null, float64 scores
                num[idx] = null_size - np.searchsorted(np.sort(null[c]), scores[idx], side="left")
            else:
                num[idx] = _count_at_least(null[c], scores[idx])

    _run_jobs(run, [r for r in np.array_split(np.arange(len(confs)), min(len(confs), 4 * _n_threads())) if len(r)])
    p[valid] = (num + 1) / (null_size + 1)
    return p


def _count_at_least(x: np.ndarray, t: np.ndarray, bits: int = 13) -> np.ndarray:
    """``#{x ≥ t_i}`` for every threshold, exactly, for values ``x`` (a null, in [0, 1]) without
    sorting ``x``: a histogram of the bins ``⌊x·2^bits⌋`` (clipped to [0, 2^bits]) counts the
    bins above each threshold's bin, and only the values sharing a bin with some threshold are
    sorted to count within that bin."""
    nb = 1 << bits
    qx = np.clip(np.floor(x * nb), 0, nb).astype(np.intp)     # exact scaling by a power of 2
    ge = np.zeros(nb + 2, dtype=np.int64)                       # ge[h] = #{qx ≥ h}
    ge[:nb + 1] = np.cumsum(np.bincount(qx, minlength=nb + 1)[::-1])[::-1]
    ht = np.clip(np.floor(t * nb), 0, nb).astype(np.intp)
    mark = np.zeros(nb + 1, dtype=bool)
    mark[ht] = True
    xs = np.sort(x[mark[qx]])                  # the values in the thresholds' own bins
    upper = np.where(ht >= nb, np.inf, (ht + 1) / nb)          # x ≥ upper ⟺ x in a higher bin
    return ge[ht + 1] + np.searchsorted(xs, upper, side="left") - np.searchsorted(xs, t, side="left")


def _copairs_group_counts(null: np.ndarray, member_conf: np.ndarray, sizes: np.ndarray, maps: np.ndarray,
                          max_null_bytes: int = 256 << 20) -> np.ndarray:
    """copairs' ``#{null_mean > mAP}`` bit for bit: float32 mean of the members' float32 nulls in
    member row order, compared in float32 with ``float32(mAP)`` (copairs compares with the mAP as
    a Python float, which NumPy ≥ 2 (NEP 50) casts to float32)."""
    null_size = null.shape[1]
    maps32 = maps.astype(np.float32)
    num = np.zeros(len(sizes), dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    for m in np.unique(sizes):
        gs = np.flatnonzero(sizes == m)
        members = member_conf[starts[gs][:, None] + np.arange(m)[None, :]]   # (G, m) conf ids
        # groups whose members have the same configurations in the same order share a null
        keys, inv = np.unique(members, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        by_key = np.argsort(inv, kind="stable")
        kb = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=len(keys)))])
        step = max(1, int(max_null_bytes // (2 * null_size * 4)))
        for s in range(0, len(keys), step):
            e = min(len(keys), s + step)
            # float32 mean in member order, bit-identical to copairs' ``nulls[idx].mean(axis=0)``:
            # sequential float32 sum, then division by m (correctly rounded either way)
            mean_null = null[keys[s:e, 0]].copy()
            for j in range(1, m):
                mean_null += null[keys[s:e, j]]
            mean_null /= np.float32(m)
            sel = by_key[kb[s]:kb[e]]                                      # positions in gs
            local = inv[sel] - s
            for t in range(0, len(sel), step):
                ss, ll = sel[t:t + step], local[t:t + step]
                num[gs[ss]] = np.count_nonzero(mean_null[ll] > maps32[gs[ss], None], axis=1)
    return num


def _group_null_counts(null: np.ndarray, member_conf: np.ndarray, sizes: np.ndarray, maps: np.ndarray,
                       conf_pos: np.ndarray, max_null_bytes: int = 256 << 20) -> np.ndarray:
    """Per group g (members ``member_conf[start_g : start_g + sizes[g]]``, configuration ids into
    the float64 ``null`` rows): ``#{s : Σ_j null[c_j, s] > m_g·(mAP_g + ε_g)}``, i.e. the number of
    group-null values (element-wise mean of the members' nulls) above the mAP, ties excluded.

    Exact, but cheap: bounds from each configuration's min/max decide whole groups; one-member
    groups use a binary search; the others sum integer-floored nulls ``⌊null·2^b⌋`` (uint16, exact
    sums bracketing the real sum within m/2^b) in cache-sized chunks, and only the samples whose
    bracket contains the threshold are summed again in float64.
    """
    g_n, s_n = len(sizes), null.shape[1]
    counts = np.zeros(g_n, dtype=np.int64)
    if not g_n:
        return counts
    m = sizes.astype(np.int64)
    starts = np.cumsum(m) - m
    kmax = np.maximum.reduceat(conf_pos[member_conf], starts)
    thr = m * (maps + _tie_eps(kmax + m + 1))
    ub = np.add.reduceat(null.max(axis=1)[member_conf], starts)
    lb = np.add.reduceat(null.min(axis=1)[member_conf], starts)
    counts[lb > thr] = s_n
    todo = np.flatnonzero((ub > thr) & (lb <= thr))
    one = todo[m[todo] == 1]
    if len(one):
        c1 = member_conf[starts[one]]
        for c in np.unique(c1):
            sel = one[c1 == c]
            counts[sel] = s_n - np.searchsorted(np.sort(null[c]), thr[sel], side="right")
    rest = todo[m[todo] > 1]
    chunk = max(1, min(_COUNT_CHUNK, max_null_bytes // 16) // s_n)
    jobs, qtabs = [], {}
    for mm in np.unique(m[rest]):
        mm = int(mm)
        grp = rest[m[rest] == mm]
        mem = member_conf[starts[grp][:, None] + np.arange(mm)]
        b = int(np.log2(65534 // mm)) if mm <= 64 else None   # m·2^b ≤ 65534: uint16 sums never overflow
        if b is not None and b not in qtabs:
            qtabs[b] = np.floor(null * 2.0 ** b).astype(np.uint16)
        jobs += [(b, grp[s:s + chunk], mem[s:s + chunk]) for s in range(0, len(grp), chunk)]
    cnt_dtype = np.uint16 if s_n < 2**16 else np.uint32

    def run(job):
        b, g, mg = job
        n, mm = mg.shape
        if b is None:                  # large groups: plain float64 sums
            tot = null[mg[:, 0]]
            for j in range(1, mm):
                tot += null[mg[:, j]]
            counts[g] = np.count_nonzero(tot > thr[g, None], axis=1)
            return
        q = qtabs[b]
        a, t = _scratch("acc", (n, s_n), np.uint16), _scratch("tmp", (n, s_n), np.uint16)
        gh, gl = _scratch("ge_hi", (n, s_n), np.bool_), _scratch("ge_lo", (n, s_n), np.bool_)
        np.take(q, mg[:, 0], axis=0, out=a, mode="clip")
        for j in range(1, mm):
            np.take(q, mg[:, j], axis=0, out=t, mode="clip")
            a += t
        # real sum ∈ [a/2^b, (a + m)/2^b): certainly above thr when a ≥ ⌊thr·2^b⌋ + 1,
        # certainly not when a ≤ ⌊thr·2^b⌋ − m; in between, decide in float64
        h = np.floor(thr[g] * 2.0 ** b).astype(np.int64)
        np.greater_equal(a, np.clip(h + 1, 0, 65535).astype(np.uint16)[:, None], out=gh)
        np.greater_equal(a, np.clip(h - mm + 1, 0, 65535).astype(np.uint16)[:, None], out=gl)
        c_hi = gh.view(np.uint8).sum(axis=1, dtype=cnt_dtype).astype(np.int64)
        if (gl.view(np.uint8).sum(axis=1, dtype=cnt_dtype) > c_hi).any():
            gl ^= gh                                          # the undecided samples
            flat = np.flatnonzero(gl)
            rows, si = flat // s_n, flat % s_n
            tot = null[mg[rows, 0], si]
            for j in range(1, mm):
                tot += null[mg[rows, j], si]
            c_hi += np.bincount(rows[tot > thr[g][rows]], minlength=n)
        counts[g] = c_hi

    _run_jobs(run, jobs)
    return counts


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values (statsmodels ``multipletests(method='fdr_bh')``, as copairs); NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=float)
    q = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return q


def mean_average_precision(ap_df: pd.DataFrame, sameby: Sequence[str] | str,
                           null_size: int = DEFAULT_NULL_SIZE, seed: int = 0, *,
                           threshold: float = 0.05, method: str = "fast",
                           nulls: NullSource | None = None, max_null_bytes: int = 256 << 20,
                           show_progress: bool = False) -> pd.DataFrame:
    """mAP per ``sameby`` group with p-value, BH q-value and significance flags (copairs
    ``mean_average_precision``), plus every group without a valid AP listed with a skip reason.

    Columns: ``sameby…, n_profiles, n_evaluated, mean_average_precision,
    mean_normalized_average_precision, p_value, corrected_p_value, below_p, below_corrected_p,
    skip_reason``. Rows sorted by ``sameby`` (rows whose ``sameby`` value is missing are not
    grouped, as in pandas/copairs; a warning says how many).
    """
    sameby = _as_list(sameby)
    missing = [c for c in sameby if c not in ap_df.columns]
    if missing:
        raise MorphobenchError(f"mAP: grouping column(s) {missing} not in the AP table")
    if method not in {"fast", "copairs"}:
        raise MorphobenchError(f"null method must be 'fast' or 'copairs', got {method!r}")
    gid, keys = _group_codes(ap_df, sameby)             # groups sorted by sameby, as pandas
    n_groups = len(keys)
    if (gid < 0).any():
        log.warning("mAP: %d profile(s) with a missing %s value are in no group (as pandas/copairs)",
                    int((gid < 0).sum()), "/".join(sameby))
    valid = _valid_mask(ap_df)
    ev = np.flatnonzero(valid & (gid >= 0))
    gid_ev = gid[ev]
    out = keys
    out["n_profiles"] = np.bincount(gid[gid >= 0], minlength=n_groups)
    out["n_evaluated"] = np.bincount(gid_ev, minlength=n_groups)
    mean_ap = np.full(n_groups, np.nan)
    mean_nap = np.full(n_groups, np.nan)
    p_value = np.full(n_groups, np.nan)
    if len(ev):
        # pandas' grouped mean (as copairs), on integer group codes
        vals = pd.DataFrame({"a": ap_df["average_precision"].to_numpy(dtype=np.float64)[ev],
                             "n": ap_df["normalized_average_precision"].to_numpy(dtype=np.float64)[ev]})
        means = vals.groupby(gid_ev, sort=True).mean()
        present = means.index.to_numpy()
        mean_ap[present] = means["a"].to_numpy()
        mean_nap[present] = means["n"].to_numpy()
        confs, rev = _conf_arrays(ap_df["n_pos_pairs"].to_numpy(dtype=np.int64)[ev],
                                  ap_df["n_total_pairs"].to_numpy(dtype=np.int64)[ev])
        null = null_distributions(confs, null_size, seed, method=method, nulls=nulls,
                                  show_progress=show_progress)
        local = np.full(n_groups, -1, dtype=np.int64)
        local[present] = np.arange(len(present))
        gi = local[gid_ev]
        order = np.argsort(gi, kind="stable")                      # members in row order
        sizes = np.bincount(gi, minlength=len(present))
        maps = mean_ap[present]
        if method == "copairs":
            num = _copairs_group_counts(null, rev[order], sizes, maps, max_null_bytes)
        else:
            num = _group_null_counts(null, rev[order], sizes, maps, confs[:, 0], max_null_bytes)
        p_value[present] = (num + 1) / (null_size + 1)
    out["mean_average_precision"] = mean_ap
    out["mean_normalized_average_precision"] = mean_nap
    out["p_value"] = p_value
    out["corrected_p_value"] = benjamini_hochberg(p_value)
    ok = ~np.isnan(p_value)
    out["below_p"] = ok & (np.nan_to_num(p_value, nan=1.0) < threshold)
    out["below_corrected_p"] = ok & (np.nan_to_num(out["corrected_p_value"].to_numpy(), nan=1.0) < threshold)
    reason = np.full(n_groups, "", dtype=object)
    if (~ok).any():
        # why: the most common member skip reason of the group (ties: the first seen)
        bad = np.flatnonzero(~valid & (gid >= 0))
        why = (ap_df["skip_reason"].to_numpy() if "skip_reason" in ap_df.columns
               else np.full(len(ap_df), "", dtype=object))
        cnt = (pd.DataFrame({"g": gid[bad], "r": why[bad]})
               .groupby(["g", "r"], sort=False).size().rename("n").reset_index())
        cnt = cnt.iloc[np.argsort(-cnt["n"].to_numpy(), kind="stable")].drop_duplicates("g")
        most = dict(zip(cnt["g"].to_numpy().tolist(), cnt["r"].tolist(), strict=True))
        reason[~ok] = [most.get(g) or "no valid AP" for g in np.flatnonzero(~ok).tolist()]
    out["skip_reason"] = reason
    return out


def _group_codes(df: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Group id per row (−1 where a key is missing, as pandas drops it) with groups numbered in
    ``groupby(cols, sort=True, observed=True)`` order, and the groups' key values."""
    codes, uniques = [], []
    for c in cols:
        k, u = pd.factorize(df[c], sort=True)
        codes.append(k.astype(np.int64))
        uniques.append(u)
    ok = np.all([k >= 0 for k in codes], axis=0) if codes else np.ones(len(df), dtype=bool)
    sizes = [max(1, len(u)) for u in uniques]
    if float(np.prod(np.array(sizes, dtype=np.float64))) < 2**62:
        key = np.zeros(len(df), dtype=np.int64)
        for k, n_u in zip(codes, sizes, strict=True):
            key = key * n_u + np.where(k >= 0, k, 0)
        ukeys, inv = np.unique(key[ok], return_inverse=True)
        per_col, rem = [], ukeys
        for n_u in reversed(sizes):
            per_col.append(rem % n_u)
            rem = rem // n_u
        per_col = per_col[::-1]
    else:   # astronomically many combinations: lexicographic unique rows
        stacked = np.stack([k[ok] for k in codes], axis=1)
        urows, inv = np.unique(stacked, axis=0, return_inverse=True)
        per_col = [urows[:, j] for j in range(len(cols))]
    gid = np.full(len(df), -1, dtype=np.int64)
    gid[ok] = inv.reshape(-1)
    keys = pd.DataFrame({c: u.take(pc) for c, u, pc in zip(cols, uniques, per_col, strict=True)})
    return gid, keys


def fraction_retrieved(map_df: pd.DataFrame, threshold: float = 0.05) -> float:
    """Fraction of evaluated groups (valid p-value) with BH q < ``threshold``; NaN if none."""
    ok = map_df["corrected_p_value"].notna()
    if not ok.any():
        return float("nan")
    return float((map_df.loc[ok, "corrected_p_value"] < threshold).mean())


def summarize_map(map_df: pd.DataFrame, threshold: float = 0.05) -> dict:
    """``mAP`` (mean over evaluated groups), ``mAP_sem``, ``fraction_retrieved`` and group counts."""
    ok = map_df["mean_average_precision"].notna()
    vals = map_df.loc[ok, "mean_average_precision"].to_numpy(dtype=float)
    return {
        "mAP": float(vals.mean()) if len(vals) else float("nan"),
        "mAP_sem": float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else float("nan"),
        "fraction_retrieved": fraction_retrieved(map_df, threshold),
        "n_groups": int(len(map_df)),
        "n_groups_evaluated": int(ok.sum()),
        "n_groups_skipped": int((~ok).sum()),
    }


# ----------------------------------------------------------------------------------------------
# profile-table entry points
# ----------------------------------------------------------------------------------------------
@dataclass
class RetrievalResult:
    """AP per profile, mAP per group, and the summary (``summarize_map``)."""

    ap: pd.DataFrame
    map: pd.DataFrame
    summary: dict = field(default_factory=dict)


def retrieval(profiles: pd.DataFrame, *, pos_sameby: Sequence[str], pos_diffby: Sequence[str] = (),
              neg_sameby: Sequence[str] = (), neg_diffby: Sequence[str] = (),
              map_sameby: Sequence[str] | None = None, null_size: int = DEFAULT_NULL_SIZE,
              seed: int = 0, threshold: float = 0.05, null_method: str = "fast",
              query_mask: np.ndarray | None = None, source: str = "profiles",
              **ap_kwargs) -> RetrievalResult:
    """AP, p-values and mAP for a profile table (``Metadata_*`` + features).

    ``query_mask`` (bool per row) restricts which profiles' groups are reported in the mAP table
    (e.g. exclude negative controls); every row still takes part in pairs.
    """
    feats = feature_columns(profiles)
    if not feats:
        raise MorphobenchError(f"{source}: no feature columns")
    meta = profiles[metadata_columns(profiles)].reset_index(drop=True)
    ap = average_precision(meta, profiles[feats], pos_sameby, pos_diffby, neg_sameby, neg_diffby,
                           source=source, **ap_kwargs)
    shared = null_table(ap, null_size, seed, method=null_method)     # drawn once, used twice
    ap["p_value"] = ap_p_values(ap, null_size, seed, method=null_method, nulls=shared)
    sameby = _as_list(map_sameby) if map_sameby is not None else _as_list(pos_sameby)
    sel = ap if query_mask is None else ap.loc[np.asarray(query_mask, dtype=bool)]
    same_confs = np.array_equal(_conf_table(sel, _valid_mask(sel))[0], _conf_table(ap, _valid_mask(ap))[0])
    # copairs draws per configuration set: share only when the set is the same (always for "fast")
    mp = mean_average_precision(sel, sameby, null_size, seed, threshold=threshold, method=null_method,
                                nulls=shared if (same_confs or null_method == "fast") else None)
    return RetrievalResult(ap=ap, map=mp, summary=summarize_map(mp, threshold))


def replicate_retrieval(profiles: pd.DataFrame, *, pert_col: str = "Metadata_Perturbation",
                        control_col: str = "Metadata_PertType", control_value: str = "negcon",
                        plate_col: str | None = "Metadata_Plate", on_missing_negcon: str = "error",
                        null_size: int = DEFAULT_NULL_SIZE, seed: int = 0, threshold: float = 0.05,
                        null_method: str = "fast", source: str = "profiles", **ap_kwargs) -> RetrievalResult:
    """Perturbation retrieval (CPJUMP1): replicates of a perturbation vs negative controls.

    Positives: non-control profiles sharing ``pert_col``; negatives: (treatment, control) pairs on
    the same ``plate_col`` (any plate when ``plate_col`` is None). Equivalent to copairs with
    ``assign_reference_index`` on the controls, ``pos_sameby=[pert, ref]``,
    ``neg_sameby=[plate]``, ``neg_diffby=[control flag, ref]``. mAP per perturbation (controls are
    not reported). A plate with treatments but no controls: ``on_missing_negcon="error"`` raises
    naming the plates; ``"skip"`` records those profiles as ``no negative pairs``.
    """
    for c in [pert_col, control_col] + ([plate_col] if plate_col else []):
        if c not in profiles.columns:
            raise MorphobenchError(f"{source}: column {c!r} missing")
    if on_missing_negcon not in {"error", "skip"}:
        raise MorphobenchError(f"on_missing_negcon must be error | skip, got {on_missing_negcon!r}")
    df = profiles.reset_index(drop=True).copy()
    is_ctrl = (df[control_col] == control_value).to_numpy()
    if not is_ctrl.any():
        raise MorphobenchError(f"{source}: no negative controls ({control_col} == {control_value!r})")
    if plate_col:
        has_ctrl = df.loc[is_ctrl, plate_col].unique()
        lacking = sorted(set(df.loc[~is_ctrl, plate_col].unique()) - set(has_ctrl), key=str)
        if lacking and on_missing_negcon == "error":
            raise MorphobenchError(f"{source}: plate(s) without negative controls ({control_col} == "
                                   f"{control_value!r}): {lacking[:10]}; cannot rank their replicates "
                                   "against controls (on_missing_negcon='skip' records them instead)")
    df["Metadata__ref"] = np.where(is_ctrl, np.arange(len(df)), -1)
    df["Metadata__is_ctrl"] = is_ctrl
    res = retrieval(df, pos_sameby=[pert_col, "Metadata__ref"], pos_diffby=[],
                    neg_sameby=[plate_col] if plate_col else [], neg_diffby=["Metadata__is_ctrl", "Metadata__ref"],
                    map_sameby=[pert_col], null_size=null_size, seed=seed, threshold=threshold,
                    null_method=null_method, query_mask=~is_ctrl, source=source,
                    no_negatives=ap_kwargs.pop("no_negatives", "skip"), **ap_kwargs)
    res.ap = res.ap.drop(columns=["Metadata__ref", "Metadata__is_ctrl"])
    return res
