"""Haralick texture features of every object at once (CellProfiler MeasureTexture).

CellProfiler (and cp-measure) quantize the [0, 1] image to 8 bits (``skimage.util.img_as_ubyte``;
rescaled to ``gray_levels`` when not 256), crop each object (other pixels 0), and call
``mahotas.features.haralick(crop, distance=scale, ignore_zeros=True)`` per object: a symmetric
co-occurrence matrix per direction (0°, 45°, 90°, 135° at ``scale`` px; pairs with a zero pixel
dropped) and 13 features of it. That loop builds a dense (max + 1)² matrix per object and
direction, ~50 ms each for bright objects.

This module computes the same 13 features from the *sparse* co-occurrence counts of all objects
together (one sort of the pixel pairs per direction), with mahotas' exact formulas:

=====  =========================  ==================================================
index  CellProfiler name          definition (p = normalized co-occurrence matrix)
=====  =========================  ==================================================
0      AngularSecondMoment        Σ p²
1      Contrast                   Σ k² p₋(k)
2      Correlation                (Σ ij p − μx μy) / (σx σy); 1 when σ = 0
3      Variance                   Σ k² px(k) − μx²
4      InverseDifferenceMoment    Σ p / (1 + (i − j)²)
5      SumAverage                 Σ k p₊(k)
6      SumVariance                Σ k² p₊(k) − SumAverage²
7      SumEntropy                 −Σ p₊ log₂ p₊
8      Entropy                    −Σ p log₂ p
9      DifferenceVariance         variance of the vector p₋(0 … max) (mahotas' default)
10     DifferenceEntropy          −Σ p₋ log₂ p₋
11     InfoMeas1                  (H − HXY1) / max(HX, HY)   (H − HXY1 when both are 0)
12     InfoMeas2                  √max(0, 1 − exp(−2 (HXY2 − H)))
=====  =========================  ==================================================

with p₊(k) = Σ_{i+j=k} p, p₋(k) = Σ_{|i−j|=k} p, HX/HY the entropies of the marginals,
HXY1 = −Σ p log₂(px(i) py(j)), HXY2 = −Σ px(i)py(j) log₂(px(i)py(j)) = HX + HY (the marginals sum to
1), "max" the object's largest quantized value (mahotas' matrix size − 1).

An object with no valid pair in some direction gets no features from mahotas (ValueError); as
CellProfiler then records 0 for every texture feature of it, so do we (``undefined=0.0``;
cp-measure leaves NaN).
"""

from __future__ import annotations

import numpy as np

#: CellProfiler's feature names, in mahotas' order
HARALICK: tuple[str, ...] = ("AngularSecondMoment", "Contrast", "Correlation", "Variance",
                             "InverseDifferenceMoment", "SumAverage", "SumVariance", "SumEntropy",
                             "Entropy", "DifferenceVariance", "DifferenceEntropy", "InfoMeas1",
                             "InfoMeas2")
#: mahotas' 2-D directions (row, column steps): 0°, 45° (down-right), 90°, 135°
DIRECTIONS: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (1, 0), (1, -1))


def quantize(pixels: np.ndarray, gray_levels: int = 256) -> np.ndarray:
    """The image as CellProfiler's MeasureTexture sees it: ``img_as_ubyte`` of the [0, 1] image,
    rescaled from 0–255 to 0–(gray_levels − 1) when ``gray_levels`` is not 256."""
    import skimage.exposure
    import skimage.util

    q = skimage.util.img_as_ubyte(np.asarray(pixels))
    if gray_levels != 256:
        q = skimage.exposure.rescale_intensity(q, in_range=(0, 255),
                                               out_range=(0, gray_levels - 1)).astype(np.uint8)
    return q


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    """−Σ p log₂ p along the last axis (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lg = np.where(p > 0, np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return -(p * lg).sum(-1)


def haralick_objects(labels: np.ndarray, q: np.ndarray, n: int, scale: int,
                     undefined: float = 0.0) -> np.ndarray:
    """Haralick features of objects ``1..n`` of ``labels`` on the quantized image ``q``.

    Returns ``(n, 4, 13)`` (object, direction, feature). Objects with no valid pixel pair in
    some direction (or absent) get ``undefined`` everywhere.
    """
    labels = np.asarray(labels)
    q = np.asarray(q)
    h, w = labels.shape
    out = np.full((n, len(DIRECTIONS), len(HARALICK)), np.nan)
    if n == 0:
        return out
    lab = labels.astype(np.int64, copy=False)
    # mahotas' matrix size: the object's largest quantized value + 1 (only DifferenceVariance,
    # a variance over that many entries, depends on it)
    maxq = np.zeros(n + 1, np.int64)
    np.maximum.at(maxq, lab.ravel(), q.ravel().astype(np.int64))
    maxv = (maxq[1:] + 1).astype(np.float64)
    valid = np.ones(n, bool)
    qi = q.astype(np.int64, copy=False)
    for d, (dy, dx) in enumerate(DIRECTIONS):
        dy, dx = dy * scale, dx * scale
        ys0, ys1 = slice(0, h - dy), slice(dy, h)
        if dx >= 0:
            xs0, xs1 = slice(0, w - dx), slice(dx, w)
        else:
            xs0, xs1 = slice(-dx, w), slice(0, w + dx)
        la, lb = lab[ys0, xs0], lab[ys1, xs1]
        a, b = qi[ys0, xs0], qi[ys1, xs1]
        keep = (la == lb) & (la > 0) & (a > 0) & (b > 0)
        obj = la[keep] - 1
        a, b = a[keep], b[keep]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        key = (obj * 256 + lo) * 256 + hi
        uk, cnt = np.unique(key, return_counts=True)
        o = uk // 65536
        i = (uk // 256) % 256
        j = uk % 256
        total = 2.0 * np.bincount(o, weights=cnt, minlength=n)   # symmetric matrix: both orders
        has = total > 0
        valid &= has
        tot = np.where(has, total, 1.0)
        diag = i == j
        # every unordered entry stands for (i, j) and (j, i): weight 2 off the diagonal too
        pv = 2.0 * cnt / tot[o]          # p(i, j) + p(j, i)  (= 2 p(i, i) on the diagonal)
        pe = np.where(diag, pv, pv / 2)  # value of one matrix entry p(i, j)
        asm = np.bincount(o, weights=np.where(diag, pe * pe, 2 * pe * pe), minlength=n)
        ent = np.bincount(o, weights=np.where(diag, 1.0, 2.0) * -pe * np.log2(pe), minlength=n)
        ij = np.bincount(o, weights=pv * i * j, minlength=n)
        idm = np.bincount(o, weights=pv / (1.0 + (i - j) ** 2), minlength=n)
        # marginals (equal: the matrix is symmetric)
        px = np.zeros((n, 256))
        np.add.at(px, (o, i), pe)
        np.add.at(px, (o[~diag], j[~diag]), pe[~diag])
        k = np.arange(256, dtype=np.float64)
        ux = px @ k
        vx = px @ (k * k) - ux ** 2
        with np.errstate(invalid="ignore"):
            sx = np.sqrt(vx)  # as mahotas (a rounding-negative variance gives NaN there too)
        pplus = np.zeros((n, 512))
        np.add.at(pplus, (o, i + j), pv)
        pminus = np.zeros((n, 256))
        np.add.at(pminus, (o, j - i), pv)
        tk = np.arange(512, dtype=np.float64)
        f = out[:, d, :]
        f[:, 0] = asm
        f[:, 1] = pminus @ (k * k)
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = (ij - ux * ux) / sx / sx
        f[:, 2] = np.where(sx == 0, 1.0, corr)
        f[:, 3] = vx
        f[:, 4] = idm
        f[:, 5] = pplus @ tk
        f[:, 7] = _entropy_rows(pplus)
        f[:, 6] = pplus @ (tk * tk) - f[:, 5] ** 2
        f[:, 8] = ent
        # numpy var over the maxv entries of p₋ (entries past the object's max are 0)
        s1 = pminus.sum(1)
        mean = s1 / maxv
        f[:, 9] = ((pminus - mean[:, None]) ** 2 * (k[None, :] < maxv[:, None])).sum(1) / maxv
        f[:, 10] = _entropy_rows(pminus)
        hx = _entropy_rows(px)
        with np.errstate(divide="ignore", invalid="ignore"):
            lpx = np.where(px > 0, np.log2(np.where(px > 0, px, 1.0)), 0.0)
        hxy1 = -np.bincount(o, weights=pv * np.where(diag, 2 * lpx[o, i], lpx[o, i] + lpx[o, j]),
                            minlength=n)
        spx = px.sum(1)
        hxy2 = hx * spx + hx * spx
        f[:, 11] = np.where(hx == 0, ent - hxy1, (ent - hxy1) / np.where(hx == 0, 1.0, hx))
        f[:, 12] = np.sqrt(np.maximum(0.0, 1 - np.exp(-2.0 * (hxy2 - ent))))
    out[~valid] = undefined
    return out


def texture_features(labels: np.ndarray, pixels: np.ndarray, n: int, scale: int = 3,
                     gray_levels: int = 256, undefined: float = 0.0) -> dict[str, np.ndarray]:
    """CellProfiler MeasureTexture features of objects ``1..n``: ``{Feature_scale_dd_levels:
    values}`` (cp-measure's key format, e.g. ``Contrast_3_00_256``) for the 4 directions."""
    feats = haralick_objects(labels, quantize(pixels, gray_levels), n, scale, undefined)
    return {f"{name}_{scale:d}_{d:02d}_{gray_levels:d}": feats[:, d, fi]
            for d in range(len(DIRECTIONS)) for fi, name in enumerate(HARALICK)}
