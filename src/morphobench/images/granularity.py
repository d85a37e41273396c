"""Granularity spectra of every compartment at once (CellProfiler MeasureGranularity).

CellProfiler's definition (4.x; cellprofiler-library 5 ``measure_granularity``), per channel:

1. the image (and its all-true mask) is resampled by ``subsample`` (bilinear
   ``map_coordinates`` on the grid ``mgrid[0:s·H, 0:s·W] / s``; the mask by a cubic spline of
   the mask, > 0.9);
2. background: that image resampled again by ``image_sample``, grey-eroded then dilated with a
   disk of radius ``element_size`` (masked), enlarged back (bilinear), subtracted, clipped at 0;
3. spectrum: ``ng`` times, erode by a radius-1 disk and reconstruct by dilation under the
   background-free image; the image-level value is the loss of mean intensity × 100 / the
   initial mean; per object, the reconstruction is enlarged to full resolution (bilinear) and
   ``(previous object mean − new object mean) × 100 / the object's mean in the ORIGINAL image``.

cp-measure implements the same spectrum but runs steps 1–3 once per compartment; the spectrum
does not depend on the objects, so here it runs once per channel and every compartment's means
are read from it, through one precomputed sparse "enlarge + per-object mean" operator per
compartment (the enlargement is bilinear, hence linear in the reconstruction) shared by all
channels.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse


def _grid(shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0: shape[0], 0: shape[1]].astype(float)


def _downsample(pixels: np.ndarray, mask: np.ndarray, factor: float):
    """CellProfiler's rescale of pixels (bilinear) and mask (cubic spline > 0.9)."""
    new_shape = np.array(pixels.shape, float)
    if factor >= 1:
        return pixels.copy(), mask.copy(), new_shape
    new_shape = new_shape * factor
    i, j = _grid(new_shape) / factor
    px = ndi.map_coordinates(pixels, (i, j), order=1)
    mk = ndi.map_coordinates(mask.astype(float), (i, j)).astype(float) > 0.9
    return px, mk, new_shape


def _restore(orig_shape, scaled_shape, scaled: np.ndarray) -> np.ndarray:
    i, j = _grid(np.asarray(orig_shape))
    i *= float(scaled_shape[0] - 1) / float(orig_shape[0] - 1)
    j *= float(scaled_shape[1] - 1) / float(orig_shape[1] - 1)
    return ndi.map_coordinates(scaled, (i, j), order=1).astype(float)


def _masked(op, im: np.ndarray, mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    x = np.zeros_like(im)
    x[mask] = im[mask]
    return op(x, footprint)


def restore_mean_operator(orig_shape, small_shape, labels: np.ndarray, n: int):
    """Sparse ``(n, small pixels)`` operator A with ``A @ small.ravel()`` = per-object mean of
    the bilinear enlargement (CellProfiler's ``restore_scale``) of ``small`` over ``labels``
    (objects without pixels: NaN). Exact up to rounding (map_coordinates order 1, constant 0
    outside the grid)."""
    orig_shape = np.asarray(orig_shape)
    ny, nx = int(np.ceil(small_shape[0])), int(np.ceil(small_shape[1]))
    lab = labels.ravel()
    fg = lab > 0
    i, j = _grid(orig_shape)
    r = (i.ravel()[fg]) * (float(small_shape[0] - 1) / float(orig_shape[0] - 1))
    c = (j.ravel()[fg]) * (float(small_shape[1] - 1) / float(orig_shape[1] - 1))
    obj = lab[fg].astype(np.int64) - 1
    counts = np.bincount(obj, minlength=n).astype(float)
    # map_coordinates (constant mode) gives 0 where rounding puts a source coordinate just past
    # the last row/column: such pixels add 0 to their object's sum but still count
    inside = (r >= 0) & (r <= ny - 1) & (c >= 0) & (c <= nx - 1)
    r, c, obj = r[inside], c[inside], obj[inside]
    r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    fr, fc = r - r0, c - c0
    rows, cols, vals = [], [], []
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < ny) & (cc >= 0) & (cc < nx) & (w != 0)
        rows.append(obj[ok])
        cols.append(rr[ok] * nx + cc[ok])
        vals.append(w[ok])
    with np.errstate(divide="ignore"):
        inv = np.where(counts > 0, 1.0 / np.where(counts > 0, counts, 1), np.nan)
    a = scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                shape=(n, ny * nx))
    return scipy.sparse.diags(np.nan_to_num(inv, nan=0.0)) @ a, counts > 0


def granularity(pixels: np.ndarray, compartments: dict[str, tuple[np.ndarray, int]], *,
                subsample: float = 0.25, image_sample: float = 0.25, element_size: int = 10,
                spectrum: int = 16, operators: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Granularity spectra of one channel (``pixels`` on CellProfiler's [0, 1] scale) for the
    objects ``1..n`` of each compartment (``{name: (labels, n)}``).

    Returns ``{compartment: {"Granularity_k": values (n,)}}`` (cp-measure's key names).
    ``operators`` caches the per-compartment restore operators between channels of one site
    (pass the same dict for every channel).
    """
    from skimage.morphology import dilation, disk, erosion, reconstruction

    pixels = np.asarray(pixels, np.float64)
    orig_shape = np.array(pixels.shape)
    full_mask = np.ones(pixels.shape, bool)
    small, mask, new_shape = _downsample(pixels, full_mask, subsample)
    back, back_mask, back_shape = _downsample(small, mask, image_sample)
    fp = disk(element_size, dtype=bool)
    back = _masked(erosion, back, back_mask, fp)
    back = _masked(dilation, back, back_mask, fp)
    if image_sample < 1:
        back = _restore(new_shape, back_shape, back)
    small = small - back
    small[small < 0] = 0
    ops = {} if operators is None else operators
    state = {}
    for comp, (labels, n) in compartments.items():
        if n == 0:
            state[comp] = None
            continue
        if comp not in ops:
            ops[comp] = restore_mean_operator(orig_shape, new_shape, labels, n)
        with np.errstate(invalid="ignore"):
            start = ndi.mean(pixels, labels, np.arange(1, n + 1))
        start = np.asarray(start, float)
        state[comp] = [start.copy(), np.maximum(start, np.finfo(float).eps)]
    out = {comp: {} for comp in compartments}
    fp1 = disk(1, dtype=bool)
    ero = small.copy()
    ero[~mask] = 0
    for k in range(1, spectrum + 1):
        ero = _masked(erosion, ero, mask, fp1)
        rec = reconstruction(ero, small, footprint=fp1)
        flat = rec.ravel()
        for comp, (labels, n) in compartments.items():
            if state[comp] is None:
                out[comp][f"Granularity_{k}"] = np.zeros(0)
                continue
            op, has = ops[comp]
            new_mean = np.where(has, op @ flat, np.nan)
            cur, start = state[comp]
            out[comp][f"Granularity_{k}"] = (cur - new_mean) * 100 / start
            state[comp][0] = new_mean
    return out
