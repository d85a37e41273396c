"""Compiled (numba) kernels of the mAP engine's hot loops:

* :func:`floyd_bitmap_ap` — the fast null's Floyd draws on a one-bit-per-position bitmap per
  list (cache resident), APs summed in rank order from the bitmap (no sort).

Importing this module imports numba (a dependency of umap-learn) and compiles or loads the
cached kernels on first use; without numba the engine uses its NumPy paths, whose results are
the same (tested).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["floyd_bitmap_ap"]


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
