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
  positions drawn uniformly without replacement among ``n_total``), AP computed in float32 exactly
  as copairs. ``p(AP) = (1 + #{null ≥ AP})/(1 + null_size)``.
* ``mAP`` per group (``sameby``) = mean AP of members with a valid AP; group null = element-wise
  float32 mean of the members' nulls (in member row order); ``p(mAP) = (1 + #{null > mAP})/
  (1 + null_size)`` (strict ``>``, copairs ``get_map_pvalue``; as there the comparison happens in
  float32, i.e. against ``float32(mAP)``); ``q`` = Benjamini–Hochberg
  (statsmodels ``fdr_bh``) over the evaluated groups; **fraction retrieved** = fraction of
  evaluated groups with ``q < threshold`` (0.05).

Null generation (``null_method``)
---------------------------------
* ``"fast"`` (default): each configuration gets its own generator seeded by
  ``SeedSequence([seed, n_pos, n_total])`` (independent of which other configurations exist) and
  draws only the ``n_pos`` positions per list (O(null_size · n_pos), rejection sampling of sorted
  distinct positions, or a random-key partial sort when positives are dense). Same distribution
  as copairs, different random numbers: p-values agree within Monte-Carlo error.
* ``"copairs"``: reproduces copairs 0.5.5 draw for draw: configurations sorted as
  ``np.unique(confs, axis=0)``, per-configuration seeds ``default_rng(seed).integers(8096,
  size=n_confs)``, and each rank list from ``Generator.permuted`` of ``arange(n_total)`` — so
  p-values equal copairs' exactly. Caveat (a copairs property, not ours): copairs caches nulls on
  disk under ``~/.copairs/seed{seed}/ns{null_size}/n{total}_k{pos}.npy`` keyed without the
  per-configuration seed, so copairs' numbers depend on what earlier runs left in that cache; ours
  equal copairs run with an empty cache.
* ``nulls=``: inject null AP samples yourself — a mapping ``{(n_pos, n_total): array}`` or a
  callable ``(n_pos, n_total) -> array`` (e.g. copairs' own ``null_dists``).

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

Memory: queries are processed in blocks whose candidate-pair count is bounded (``max_entries``);
only each query's positive and negative pairs are materialized, never an n × n matrix (unless a
definition has no ``sameby``, in which case every profile is a candidate and a block holds
``block × n`` similarities, still bounded by ``max_entries``).
Not implemented: copairs' ``multilabel`` variants and query-string column filters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from morphobench.data.model import feature_columns, metadata_columns
from morphobench.io import MorphobenchError, progress

log = logging.getLogger("morphobench.evaluate.map")

DEFAULT_NULL_SIZE = 10_000
_GEMM_MIN_ENTRIES = 4096       # a same-group segment at least this large uses one GEMM
_AP_METHOD = "auto"            # "compare" | "sort" force one AP algorithm (tests)
_GATHER_VALUES = 1 << 22       # gathered values per row-wise dot-product chunk (×2 operands)

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
def _as_list(cols: str | Sequence[str] | None) -> list[str]:
    if cols is None:
        return []
    if isinstance(cols, str):
        return [cols]
    return list(cols)


def _features_matrix(feats, source: str) -> np.ndarray:
    """Features as a float64 matrix; NaN/inf → error naming the column."""
    if isinstance(feats, pd.DataFrame):
        names = [str(c) for c in feats.columns]
        nonnum = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
        if nonnum:
            raise MorphobenchError(f"{source}: non-numeric feature column(s) {nonnum[:5]}")
        x = feats.to_numpy(dtype=np.float64)
    else:
        x = np.asarray(feats, dtype=np.float64)
        names = [f"feature[{j}]" for j in range(x.shape[1])] if x.ndim == 2 else []
    if x.ndim != 2:
        raise MorphobenchError(f"{source}: features must be a 2-D matrix, got shape {x.shape}")
    finite = np.isfinite(x)
    if not finite.all():
        bad_cols = np.flatnonzero(~finite.all(axis=0))
        rows = np.flatnonzero(~finite[:, bad_cols[0]])
        raise MorphobenchError(
            f"{source}: {int((~finite).sum())} NaN/inf feature value(s) in column(s) "
            f"{[names[j] for j in bad_cols[:5]]} (first at row {int(rows[0])})")
    return x


def _normalize_rows(x: np.ndarray, source: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise MorphobenchError(
            f"{source}: {len(zero)} profile(s) with an all-zero feature vector (rows {zero[:5].tolist()}); "
            "cosine similarity is undefined for them")
    return x / norms[:, None]


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
        if sub_id is not None:
            self.sub = sub_id
            _, first = np.unique(sub_id[self.order], return_index=True)
            self.scount = np.bincount(sub_id)
            self.sstart = first.astype(np.int64)

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
class _Similarity:
    """Cosine of normalized rows, numpy (default) or torch (``device='cuda'`` …)."""

    def __init__(self, xn: np.ndarray, backend: str = "numpy", device: str = "cpu"):
        self.xn = xn
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

    def gemm(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.backend == "torch":
            t = self.torch
            r = t.from_numpy(rows).to(self.device)
            c = t.from_numpy(cols).to(self.device)
            return (self.xt[r] @ self.xt[c].T).cpu().numpy()
        return self.xn[rows] @ self.xn[cols].T

    def rowwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty(len(a), dtype=np.float64)
        chunk = max(256, _GATHER_VALUES // max(1, self.xn.shape[1]))
        for s in range(0, len(a), chunk):
            ia, ib = a[s:s + chunk], b[s:s + chunk]
            if self.backend == "torch":
                t = self.torch
                ta = t.from_numpy(ia).to(self.device)
                tb = t.from_numpy(ib).to(self.device)
                out[s:s + len(ia)] = (self.xt[ta] * self.xt[tb]).sum(dim=1).cpu().numpy()
            else:
                out[s:s + len(ia)] = np.einsum("ij,ij->i", self.xn[ia], self.xn[ib])
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

    def entries(self, qglob: np.ndarray, partner: np.ndarray, gid: np.ndarray) -> np.ndarray:
        """Similarity of each (query, partner) entry; entries are contiguous per ``gid``."""
        sims = np.empty(len(qglob), dtype=np.float64)
        if len(qglob) == 0:
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
            slot = np.full(len(self.xn), -1, dtype=np.int64)
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
    (equal floats ↔ equal keys, so ties stay ties)."""
    key = (np.float32(1) - sims.astype(np.float32)) + np.float32(0)  # + 0 turns -0.0 into +0.0
    bits = key.view(np.uint32)
    return np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))


def _ap_compare(nq, pos_qi, pk, neg_qi, nk, n_pos, n_neg) -> np.ndarray:
    """AP by counting, for each positive, its query's negatives with a smaller key."""
    nmax = int(n_neg.max()) if len(nk) else 0
    comp = np.sort((pos_qi.astype(np.uint64) << np.uint64(32)) | pk.astype(np.uint64))
    qp = (comp >> np.uint64(32)).astype(np.int64)
    kp = (comp & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    r = np.arange(len(kp)) - (np.cumsum(n_pos) - n_pos)[qp] + 1      # rank among the positives
    if len(nk) and (np.diff(neg_qi) < 0).any():
        o = np.argsort(neg_qi, kind="stable")
        neg_qi, nk = neg_qi[o], nk[o]
    table = np.full((nq, max(nmax, 1)), np.uint32(0xFFFFFFFF), dtype=np.uint32)  # padded: never smaller
    table[neg_qi, np.arange(len(nk)) - (np.cumsum(n_neg) - n_neg)[neg_qi]] = nk
    c = np.empty(len(kp), dtype=np.int64)
    step = max(1, (1 << 24) // max(nmax, 1))
    for s in range(0, len(kp), step):
        c[s:s + step] = np.count_nonzero(table[qp[s:s + step]] < kp[s:s + step, None], axis=1)
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


def _block_ap(nq: int, pos_qi: np.ndarray, pos_s: np.ndarray, neg_qi: np.ndarray,
              neg_s: np.ndarray) -> np.ndarray:
    """AP of ``nq`` queries from their positive/negative (query, similarity) entries.

    With positives sorted by key within a query (rank r = 1, 2, …) and c = #negatives with a
    strictly smaller key (ties: positives first), the positive sits at rank r + c with r true
    positives above it: AP = mean_r r / (r + c). Per query, ``c`` is either counted by comparing
    each positive with the query's negatives (cheap when positives are few, e.g. replicates) or
    read off one sort of all its entries — whichever costs less.
    """
    pk, nk = _rank_keys(pos_s), _rank_keys(neg_s)
    n_pos = np.bincount(pos_qi, minlength=nq)
    n_neg = np.bincount(neg_qi, minlength=nq)
    tot = n_pos + n_neg
    use_cmp = n_pos * n_neg <= tot * np.log2(tot + 2)
    if _AP_METHOD != "auto":
        use_cmp[:] = _AP_METHOD == "compare"
    ap = np.full(nq, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for flag, fn in ((True, _ap_compare), (False, _ap_sort)):
            sel = use_cmp == flag
            if not sel.any():
                continue
            if sel.all():
                ap[:] = fn(nq, pos_qi, pk, neg_qi, nk, n_pos, n_neg)
                continue
            remap = np.cumsum(sel) - 1
            pm, nm = sel[pos_qi], sel[neg_qi]
            ap[sel] = fn(int(sel.sum()), remap[pos_qi[pm]], pk[pm], remap[neg_qi[nm]], nk[nm],
                         n_pos[sel], n_neg[sel])
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
    x = _features_matrix(feats, source)
    n = len(meta)
    if x.shape[0] != n:
        raise MorphobenchError(f"{source}: {n} metadata rows but {x.shape[0]} feature rows")
    codes = _encode_columns(meta, sorted(set(pos_sameby + pos_diffby + neg_sameby + neg_diffby)), source)
    pos_def = _PairDefinition(codes, pos_sameby, pos_diffby, n)
    neg_def = _PairDefinition(codes, neg_sameby, neg_diffby, n)
    sim = _Similarity(_normalize_rows(x, source), backend=backend, device=device)

    n_pos, n_neg = pos_def.count, neg_def.count
    ap = np.full(n, np.nan)
    # queries with positives, ordered by their negative-pair group so that a block's negatives
    # fall in few groups (one GEMM each); blocks bounded by their exact number of pairs
    queries = np.flatnonzero(n_pos > 0)
    queries = queries[np.argsort(neg_def.gid[queries], kind="stable")]
    acc = np.cumsum(n_pos[queries] + n_neg[queries])
    cuts = [0]
    while cuts[-1] < len(queries):
        base = acc[cuts[-1] - 1] if cuts[-1] else 0
        nxt = int(np.searchsorted(acc, base + max_entries, side="right"))
        cuts.append(min(len(queries), max(nxt, cuts[-1] + 1)))
    blocks = list(zip(cuts[:-1], cuts[1:], strict=True))
    for a, b in progress(blocks, desc="mAP: queries", disable=not show_progress or None):
        q = queries[a:b]
        pqi, pp = pos_def.entries(q)
        nqi, npart = neg_def.entries(q)
        ps = sim.entries(q[pqi], pp, pos_def.gid[q[pqi]])
        ns = sim.entries(q[nqi], npart, neg_def.gid[q[nqi]])
        ap[q] = _block_ap(len(q), pqi, ps, nqi, ns)

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
def null_ap_from_ranks(rel_k: np.ndarray) -> np.ndarray:
    """AP (float32, copairs' exact arithmetic) of rank lists given as sorted 0-based positive
    positions, shape ``(lists, n_pos)``; ``rel_k`` dtype uint16 when ``n_total < 2**16``."""
    num_pos = rel_k.shape[1]
    pr_k = np.arange(1, num_pos + 1, dtype=np.float32) / (rel_k + 1)
    return (pr_k.sum(axis=1) / num_pos).astype(np.float32)


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


def _fast_null(null_size: int, n_pos: int, total: int, seed: int, chunk: int = 1 << 24) -> np.ndarray:
    """Same distribution as copairs, O(null_size · n_pos) when positives are sparse."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(n_pos), int(total)]))
    dtype = _rank_dtype(total)
    if n_pos * (n_pos - 1) <= total:           # ≲ 40 % of lists need a redraw
        ranks = np.sort(rng.integers(0, total, size=(null_size, n_pos)), axis=1)
        while True:
            dup = (np.diff(ranks, axis=1) == 0).any(axis=1) if n_pos > 1 else np.zeros(null_size, bool)
            k = int(dup.sum())
            if not k:
                break
            ranks[dup] = np.sort(rng.integers(0, total, size=(k, n_pos)), axis=1)
        return null_ap_from_ranks(np.ascontiguousarray(ranks.astype(dtype)))
    out = np.empty(null_size, dtype=np.float32)
    rows = max(1, chunk // max(total, 1))
    for s in range(0, null_size, rows):
        m = min(rows, null_size - s)
        keys = rng.random((m, total), dtype=np.float32)
        part = np.argpartition(keys, n_pos - 1, axis=1)[:, :n_pos] if n_pos < total else \
            np.tile(np.arange(total), (m, 1))
        out[s:s + m] = null_ap_from_ranks(np.sort(part, axis=1).astype(dtype))
    return out


def null_distributions(confs: np.ndarray, null_size: int = DEFAULT_NULL_SIZE, seed: int = 0, *,
                       method: str = "fast", nulls: NullSource | None = None,
                       show_progress: bool = False) -> np.ndarray:
    """Null AP samples, shape ``(len(confs), null_size)`` float32, one row per ``(n_pos, n_total)``.

    ``method="copairs"`` expects ``confs`` as copairs orders them (``np.unique(..., axis=0)``) and
    reproduces its draws; ``"fast"`` seeds each configuration from ``(seed, n_pos, n_total)``.
    ``nulls`` (mapping or callable) overrides both.
    """
    confs = np.asarray(confs, dtype=np.int64).reshape(-1, 2)
    if method not in {"fast", "copairs"}:
        raise MorphobenchError(f"null method must be 'fast' or 'copairs', got {method!r}")
    if (confs[:, 0] < 1).any() or (confs[:, 0] > confs[:, 1]).any():
        raise MorphobenchError("null configurations need 1 ≤ n_pos ≤ n_total")
    out = np.empty((len(confs), null_size), dtype=np.float32)
    seeds = np.random.default_rng(seed).integers(8096, size=len(confs)) if method == "copairs" else None
    for i in progress(range(len(confs)), desc="mAP: nulls", disable=not show_progress or None):
        k, m = int(confs[i, 0]), int(confs[i, 1])
        if nulls is not None:
            arr = nulls(k, m) if callable(nulls) else nulls[(k, m)]
            arr = np.asarray(arr, dtype=np.float32).reshape(-1)
            if len(arr) != null_size:
                raise MorphobenchError(f"injected null for {(k, m)} has {len(arr)} samples, expected {null_size}")
            out[i] = arr
        elif method == "copairs":
            out[i] = _copairs_null(null_size, k, m, seeds[i])
        else:
            out[i] = _fast_null(null_size, k, m, seed)
    return out


def _valid_mask(ap_df: pd.DataFrame) -> np.ndarray:
    return (ap_df["n_pos_pairs"].to_numpy() > 0) & ~np.isnan(ap_df["average_precision"].to_numpy(dtype=float))


def _conf_table(ap_df: pd.DataFrame, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    confs_all = ap_df.loc[valid, ["n_pos_pairs", "n_total_pairs"]].to_numpy(dtype=np.int64)
    confs, rev = np.unique(confs_all, axis=0, return_inverse=True)
    return confs, rev.reshape(-1)


def null_table(ap_df: pd.DataFrame, null_size: int = DEFAULT_NULL_SIZE, seed: int = 0, *,
               method: str = "fast", nulls: NullSource | None = None) -> dict[tuple[int, int], np.ndarray]:
    """Null AP samples for every configuration of the valid rows of ``ap_df`` (as
    :func:`ap_p_values` / :func:`mean_average_precision` would draw them), as a mapping
    ``{(n_pos, n_total): float32 array}`` that can be passed back as ``nulls=`` to share the draws."""
    confs, _ = _conf_table(ap_df, _valid_mask(ap_df))
    arr = null_distributions(confs, null_size, seed, method=method, nulls=nulls)
    return {(int(k), int(m)): arr[i] for i, (k, m) in enumerate(confs)}


def ap_p_values(ap_df: pd.DataFrame, null_size: int = DEFAULT_NULL_SIZE, seed: int = 0, *,
                method: str = "fast", nulls: NullSource | None = None,
                show_progress: bool = False) -> np.ndarray:
    """``p(AP) = (1 + #{null ≥ AP})/(1 + null_size)`` per profile; NaN where AP is not valid."""
    valid = _valid_mask(ap_df)
    p = np.full(len(ap_df), np.nan)
    if not valid.any():
        return p
    confs, rev = _conf_table(ap_df, valid)
    null = null_distributions(confs, null_size, seed, method=method, nulls=nulls, show_progress=show_progress)
    null.sort(axis=1)
    scores = ap_df["average_precision"].to_numpy(dtype=np.float64)[valid]
    pv = np.empty(len(scores))
    order = np.argsort(rev, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(rev, minlength=len(confs)))])
    for c in range(len(confs)):
        idx = order[bounds[c]:bounds[c + 1]]
        num = null_size - np.searchsorted(null[c], scores[idx], side="left")
        pv[idx] = (num + 1) / (null_size + 1)
    p[valid] = pv
    return p


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
    grouped, as in pandas/copairs).
    """
    sameby = _as_list(sameby)
    missing = [c for c in sameby if c not in ap_df.columns]
    if missing:
        raise MorphobenchError(f"mAP: grouping column(s) {missing} not in the AP table")
    df = ap_df.reset_index(drop=True)
    valid = _valid_mask(df)
    ev = df.loc[valid].reset_index(drop=True)

    all_groups = df.groupby(sameby, observed=True, sort=True).size().rename("n_profiles").reset_index()
    if len(ev):
        grp = ev.groupby(sameby, observed=True, sort=True)
        res = grp["average_precision"].mean().rename("mean_average_precision").reset_index()
        res["mean_normalized_average_precision"] = grp["normalized_average_precision"].mean().to_numpy()
        res["n_evaluated"] = grp.size().to_numpy()
        gid = grp.ngroup().to_numpy()
        confs, rev = _conf_table(ev, np.ones(len(ev), dtype=bool))
        null = null_distributions(confs, null_size, seed, method=method, nulls=nulls,
                                  show_progress=show_progress)
        # copairs compares the float32 null mean with the mAP as a Python float, which NumPy ≥ 2
        # (NEP 50) casts to float32: so the comparison is made in float32, as here.
        maps32 = res["mean_average_precision"].to_numpy(dtype=np.float64).astype(np.float32)
        num = np.zeros(len(res), dtype=np.int64)
        # members in row order per group, bucketed by group size for a vectorized float32 mean
        order = np.argsort(gid, kind="stable")
        sizes = np.bincount(gid, minlength=len(res))
        starts = np.cumsum(sizes) - sizes
        for m in np.unique(sizes):
            gs = np.flatnonzero(sizes == m)
            members = rev[order[starts[gs][:, None] + np.arange(m)[None, :]]]   # (G, m) conf ids
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
        res["p_value"] = (num + 1) / (null_size + 1)
        out = all_groups.merge(res, on=sameby, how="left")
    else:
        out = all_groups.assign(mean_average_precision=np.nan, mean_normalized_average_precision=np.nan,
                                n_evaluated=0, p_value=np.nan)
    out["n_evaluated"] = out["n_evaluated"].fillna(0).astype(np.int64)
    out["corrected_p_value"] = benjamini_hochberg(out["p_value"].to_numpy(dtype=float))
    ok = out["p_value"].notna()
    out["below_p"] = ok & (out["p_value"] < threshold)
    out["below_corrected_p"] = ok & (out["corrected_p_value"] < threshold)
    reason = np.full(len(out), "", dtype=object)
    if (~ok).any():
        # why: the most common member skip reason of the group
        reasons = df.loc[~valid].groupby(sameby, observed=True)["skip_reason"].agg(
            lambda r: r.value_counts().index[0] if len(r) else "")
        lookup = out.loc[~ok, sameby].merge(reasons.rename("r").reset_index(), on=sameby, how="left")["r"]
        reason[(~ok).to_numpy()] = lookup.fillna("no valid AP").replace("", "no valid AP").to_numpy()
    out["skip_reason"] = reason
    cols = sameby + ["n_profiles", "n_evaluated", "mean_average_precision", "mean_normalized_average_precision",
                     "p_value", "corrected_p_value", "below_p", "below_corrected_p", "skip_reason"]
    return out[cols]


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
    ap["p_value"] = ap_p_values(ap, null_size, seed, nulls=shared)
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
