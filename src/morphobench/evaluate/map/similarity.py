"""Similarity backends: unit-normalized profiles and their cosines (GEMM blocks, Gram matrices of
small groups, row-wise dot products), with numpy (default) or torch; copairs' rank keys.

Cosines are computed in float64 from rows divided by their float64 L2 norm (as copairs) and
ranked by copairs' key ``float32(1 − float32(s))``.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd

from morphobench.evaluate.map.options import (
    DEFAULT_OPTIONS,
    MapOptions,
    _n_threads,
    _run_jobs,
    _scratch,
    _single_thread_blas,
)
from morphobench.evaluate.map.pairs import PairDefinition
from morphobench.io import MorphobenchError

__all__ = ["Similarity", "unit_rows", "rank_keys", "PAD_KEY"]


def unit_rows(feats, source: str, rows: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
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

    cuts = np.linspace(0, n, min(_n_threads(threads), max(1, n // 4096)) + 1).astype(int)
    _run_jobs(run, [(int(a), int(b)) for a, b in pairwise(cuts) if b > a], threads)
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


class Similarity:
    """Cosine of normalized rows, numpy (default) or torch (``device='cuda'`` …)."""

    def __init__(self, xn: np.ndarray, rows: np.ndarray | None = None, opts: MapOptions = DEFAULT_OPTIONS):
        """``xn[i]`` is the unit vector of profile ``rows[i]`` (``rows`` None: of profile i); the
        methods take profile ids. Backend, device and block sizes come from ``opts``."""
        self.opts = opts
        backend, device = opts.backend, opts.device
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
        if len(rows) * len(cols) * self.xn.shape[1] < self.opts.blas_small:
            with _single_thread_blas():   # threaded BLAS is much slower on many small products
                return self.matrix(rows, cols)
        return self.matrix(rows, cols)

    def matrix(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``xn[rows] @ xn[cols].T`` (numpy backend; BLAS threads as currently set)."""
        if self.backend == "torch":
            return self.gemm(rows, cols)
        rc = self._rows(cols)
        if len(rc) > 1:
            lo, hi = int(rc.min()), int(rc.max())
            if hi - lo + 1 == len(rc) and not (np.diff(rc) == 1).all():
                # distinct profiles filling a contiguous stretch of the store: multiply by the
                # slice (no gather of the operand) and reorder the product's columns
                return (self._take(rows) @ self.xn[lo:hi + 1].T)[:, rc - lo]
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
        chunk = min(len(a), max(64, self.opts.gather_values // d))
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
                     defn: PairDefinition) -> np.ndarray:
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
            step = max(1, self.opts.gather_values // (mm * max(d, 1)))
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

        _run_jobs(run, jobs, self.opts.threads)
        lq = defn.rank[qglob] - defn.gstart[gid]
        lp = defn.rank[partner] - defn.gstart[gid]
        return flat[off[gid] + np.minimum(lq, lp) * defn.gcount[gid] + np.maximum(lq, lp)]

    def entries(self, qglob: np.ndarray, partner: np.ndarray, gid: np.ndarray,
                defn: PairDefinition | None = None) -> np.ndarray:
        """Similarity of each (query, partner) entry of groups ``gid``; with ``defn``, entries of
        small groups (≤ ``opts.gram_max`` members) go through :meth:`gram_entries`."""
        sims = np.empty(len(qglob), dtype=np.float64)
        if len(qglob) == 0:
            return sims
        if defn is not None and self.backend == "numpy":
            small = defn.gcount[gid] <= self.opts.gram_max
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
        big = np.flatnonzero(sizes >= self.opts.gemm_min_entries)
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


def rank_keys(sims: np.ndarray) -> np.ndarray:
    """copairs' sort key ``1 - s`` with ``s`` stored as float32, as order-preserving uint32 bits
    (equal floats ↔ equal keys, so ties stay ties). Cosines of unit vectors computed in float64
    round to float32 values in [-1, 1], so the key is a float32 in [+0, 2] (``1 − 1`` is +0.0),
    whose raw bits sort like the floats."""
    key = sims.astype(np.float32)
    np.subtract(np.float32(1), key, out=key)
    if key.size and not key.min() >= 0:  # pragma: no cover - impossible for unit vectors
        raise MorphobenchError("internal error: cosine similarity outside [-1, 1]")
    return key.view(np.uint32)


PAD_KEY = np.uint32(0xFFFFFFFF)    # never a key (keys are bits of floats in [0, 2]: ≤ 0x40000000)
