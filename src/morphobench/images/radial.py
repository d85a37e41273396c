"""Radial intensity distribution of every object (CellProfiler MeasureObjectIntensityDistribution,
each object its own centre, scaled bins).

CellProfiler's definition: the centre of an object is its pixel farthest from the edge
(centrosome's ``distance_to_edge``); the distance from the centre is propagated inside the
object (centrosome's ``propagate``, objects of one colour of a map colouring at a time, so
touching objects do not interact); a pixel's normalized distance is d_centre / (d_centre +
d_edge + 0.001), its bin ``int(normalized · bins)``. Per object and bin: FracAtD = the bin's
share of the object's intensity, MeanFrac = FracAtD / (the bin's share of the object's pixels +
eps), RadialCV = the coefficient of variation (population sd / mean) of the mean intensities of
the 8 wedges (octants around the centre) that have pixels in the bin (0 when none has).

The geometry depends only on the labels, so it is computed once per compartment and shared by
every channel (cp-measure recomputes it per channel; CellProfiler caches it as well).

Deviation from CellProfiler (documented in README, "Parity"): when several pixels are equally
far from the edge, CellProfiler takes the one ``scipy.ndimage.maximum_position`` returns, which
depends on numpy's unstable sort (it differs between numpy versions and CPUs); we take the first
in row-major order (cp-measure's rule). Objects with a unique farthest pixel get identical
values; ring-shaped objects (cytoplasm) often have ties.
"""

from __future__ import annotations

import numpy as np


def _centres(d_to_edge: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """First row-major position of each object's largest distance to its edge."""
    flat_l = labels.ravel()
    flat_d = d_to_edge.ravel()
    best = np.full(n + 1, -np.inf)
    np.maximum.at(best, flat_l, flat_d)
    is_max = (flat_l > 0) & (flat_d == best[flat_l])
    first = np.full(n + 1, labels.size, np.int64)
    np.minimum.at(first, flat_l[is_max], np.flatnonzero(is_max))
    i, j = np.unravel_index(np.minimum(first[1:], labels.size - 1), labels.shape)
    return i, j


def geometry(labels: np.ndarray, n: int, bin_count: int) -> dict:
    """Per-pixel bin, wedge and object of every object pixel reached from its centre."""
    import centrosome.cpmorphology as cpm
    import centrosome.propagate

    labels = np.asarray(labels)
    d_to_edge = cpm.distance_to_edge(labels)
    ci, cj = _centres(d_to_edge, labels, n)
    centre_labels = np.zeros(labels.shape, int)
    centre_labels[ci, cj] = labels[ci, cj]
    colors = cpm.color_labels(labels)
    d_from_centre = np.zeros(labels.shape)
    assigned = np.zeros(labels.shape, int)
    for color in range(1, int(np.max(colors)) + 1):
        mask = colors == color
        lab_c, dist = centrosome.propagate.propagate(np.zeros(centre_labels.shape), centre_labels, mask, 1)
        d_from_centre[mask] = dist[mask]
        assigned[mask] = lab_c[mask]
    good = assigned > 0
    obj = labels[good].astype(np.int64) - 1
    own = assigned[good] - 1
    norm = d_from_centre[good] / (d_from_centre[good] + d_to_edge[good] + 0.001)
    bins = np.minimum((norm * bin_count).astype(np.int64), bin_count)
    ii, jj = np.nonzero(good)
    wedge = ((ii > ci[own]).astype(np.int64) + (jj > cj[own]).astype(np.int64) * 2
             + (np.abs(ii - ci[own]) > np.abs(jj - cj[own])).astype(np.int64) * 4)
    npix = np.bincount(obj * (bin_count + 1) + bins, minlength=n * (bin_count + 1)).reshape(n, bin_count + 1)
    return {"good": good, "obj": obj, "bins": bins, "wedge": wedge, "npix": npix}


def radial_distribution(labels: np.ndarray, pixels: np.ndarray, n: int, bin_count: int = 4,
                        cache: dict | None = None) -> dict[str, np.ndarray]:
    """FracAtD, MeanFrac, RadialCV of objects ``1..n`` in ``bin_count`` scaled bins, keyed as
    cp-measure keys them (``RadialDistribution_FracAtD_1of4`` …). ``cache``: a dict kept across
    the channels of one label image."""
    if n == 0:
        return {}
    key = ("geometry", bin_count)
    if cache is not None and key in cache:
        g = cache[key]
    else:
        g = geometry(labels, n, bin_count)
        if cache is not None:
            cache[key] = g
    nb = bin_count + 1
    v = np.asarray(pixels, np.float64)[g["good"]]
    obj, bins, wedge = g["obj"], g["bins"], g["wedge"]
    hist = np.bincount(obj * nb + bins, weights=v, minlength=n * nb).reshape(n, nb)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac_at_d = hist / hist.sum(1, keepdims=True)
        frac_at_bin = g["npix"] / g["npix"].sum(1, keepdims=True)
        mean_frac = frac_at_d / (frac_at_bin + np.finfo(float).eps)
    out: dict[str, np.ndarray] = {}
    wsum = np.bincount((obj * nb + bins) * 8 + wedge, weights=v, minlength=n * nb * 8).reshape(n, nb, 8)
    wcnt = np.bincount((obj * nb + bins) * 8 + wedge, minlength=n * nb * 8).reshape(n, nb, 8)
    with np.errstate(divide="ignore", invalid="ignore"):
        wmean = wsum / wcnt
    for b in range(bin_count):
        m = np.ma.MaskedArray(wmean[:, b, :], wcnt[:, b, :] == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            cv = np.ma.getdata(np.ma.std(m, 1) / np.ma.mean(m, 1)).astype(float)
        cv = np.where((wcnt[:, b, :] > 0).sum(1) == 0, 0.0, cv)
        name = f"{b + 1}of{bin_count}"
        out[f"RadialDistribution_FracAtD_{name}"] = frac_at_d[:, b]
        out[f"RadialDistribution_MeanFrac_{name}"] = mean_frac[:, b]
        out[f"RadialDistribution_RadialCV_{name}"] = cv
    return out
