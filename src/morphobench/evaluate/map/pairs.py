"""Pair definitions (copairs ``sameby`` / ``diffby``): which profiles form positive and negative
pairs, counted exactly and enumerated per block of queries without an n × n matrix.

A pair ``(i, j)``, ``i ≠ j``, belongs to a definition when the two profiles share every ``sameby``
value and differ in every ``diffby`` value (copairs ≥ 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations, pairwise

import numpy as np
import pandas as pd

from morphobench.io import MorphobenchError

__all__ = ["PairDefinition", "encode_columns"]


def _as_list(cols: str | Sequence[str] | None) -> list[str]:
    if cols is None:
        return []
    if isinstance(cols, str):
        return [cols]
    return list(cols)


def encode_columns(meta: pd.DataFrame, cols: Sequence[str], source: str) -> dict[str, np.ndarray]:
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


class PairDefinition:
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

    def dense_plan(self, q: np.ndarray, min_entries: int = 256, max_parts: int = 4096):
        """Dense blocks covering every pair of the queries ``q`` (sorted by :meth:`query_order`):
        a list of ``(r0, r1, cols, merged)`` — rows ``q[r0:r1]`` × candidate profiles ``cols``
        (their group minus their own sub-group; with ``merged`` the whole group, same-sub-group
        and self pairs to be masked) — or None when the pairs are too scattered for dense blocks
        (many tiny groups), the entry lists then being cheaper."""
        if not len(q):
            return []
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

    def is_pair(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether each ``(a[k], b[k])`` is a pair of this definition."""
        ok = (a != b) & (self.gid[a] == self.gid[b])
        if self.has_diff:
            ok &= self.sub[a] != self.sub[b]
        for code in self.rest:
            ok &= code[a] != code[b]
        return ok

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
