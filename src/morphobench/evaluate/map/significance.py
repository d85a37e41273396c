"""Significance: p-values of AP against its configuration's null, mAP per group with the group
null (element-wise mean of the members' nulls), Benjamini–Hochberg q-values, fraction retrieved.

``p(AP) = (1 + #{null ≥ AP})/(1 + null_size)``; ``p(mAP) = (1 + #{group null > mAP})/(1 +
null_size)``; fast mode counts exactly with tie tolerance ε (package docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from morphobench.evaluate.map.nulls import (
    DEFAULT_NULL_SIZE,
    NullSource,
    _conf_arrays,
    _conf_table,
    _valid_mask,
    null_distributions,
)
from morphobench.evaluate.map.options import _n_threads, _run_jobs, _scratch
from morphobench.evaluate.map.pairs import _as_list
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.evaluate.map")

_TIE_EPS = 2.0 ** -40      # fast mode: values closer than this are ties (scaled up for long lists)
_COUNT_CHUNK = 1 << 20     # fast mAP p-values: group-null values per chunk (uint16)

__all__ = ["ap_p_values", "mean_average_precision", "benjamini_hochberg", "fraction_retrieved",
           "summarize_map"]


def _tie_eps(n_terms) -> np.ndarray:
    """Tie tolerance of fast mode for quantities built from ``n_terms`` float64 roundings."""
    return np.maximum(_TIE_EPS, np.asarray(n_terms, dtype=np.float64) * 2.0 ** -50)


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
