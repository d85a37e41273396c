"""CellProfiler's object identification, in process (the ``jump`` segmentation preset).

The JUMP production pipelines (shared/JUMP_PIPELINE.md §2–4) segment with CellProfiler's
IdentifyPrimaryObjects / IdentifySecondaryObjects / FilterObjects. This module re-implements
those modules' definitions step by step (after CellProfiler 4.1.3 and cellprofiler-library
5.0.0.dev784), on the same building blocks CellProfiler uses — centrosome (CellProfiler's
morphology library, a cp-measure dependency), scikit-image and SciPy — so that the in-process
backend finds the objects CellProfiler finds (checked against the ``cellprofiler`` backend,
:mod:`morphobench.images.parity`). Intensities are on CellProfiler's [0, 1] scale.

1. **Background of the nuclei image** (CorrectIlluminationCalculate "Background", each image, then
   CorrectIlluminationApply "Subtract"): the minimum of each ``block``² block (centrosome's block
   layout), smoothed by a masked Gaussian of σ = ``filter_size`` / 2.35, subtracted, clipped to
   [0, 1].
2. **Threshold** (Threshold module, global): minimum cross-entropy = ``skimage.filters.threshold_li``
   with tolerance max(½ the smallest gap between grey values, 0.5/65536); Otsu; three-class Otsu
   (128 bins; the lower threshold when the middle class is foreground); optionally on
   log-transformed intensities (centrosome's ``log_transform``); × correction factor; clipped to
   the bounds. The binary image is ``image ≥ t`` after a masked Gaussian of
   σ = smoothing scale / 0.6744 / 2.
3. **Primary objects**: 8-connected components; declumping "Shape" (maxima of the Euclidean
   distance transform + U(0, 0.001) noise from seed 0, local maxima within a disk of radius
   max(1, suppression − 0.5), shrunk to points) with dividing lines "Intensity" (8-connected
   watershed of 1 − image) or "Shape"; then the size filter (area outside
   [π·min²/4, π·max²/4]), holes filled, relabelled.
4. **Secondary objects** "Watershed - Image": the seeds are the primary objects plus the
   size-filtered ones that touch the image edge; 8-connected watershed of 1 − image inside
   (threshold ∪ seeds); holes filled; each region takes the number of the primary object in it.
5. **FilterObjects** "Image or mask border": primary objects touching the image edge are dropped
   with their secondary objects, the rest renumbered 1..N.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

#: CellProfiler's "threshold smoothing scale" s is a Gaussian of σ = s / 0.6744 / 2
SCALE_TO_SIGMA = 1.0 / 0.6744 / 2.0


def _masked_smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """centrosome's smooth_with_function_and_mask with a Gaussian (constant edges), mask = all."""
    from centrosome.smooth import smooth_with_function_and_mask

    return smooth_with_function_and_mask(
        image, lambda x: ndi.gaussian_filter(x, sigma, mode="constant", cval=0), np.ones(image.shape, bool))


def subtract_background(image: np.ndarray, block: int = 30, filter_size: float = 50.0) -> np.ndarray:
    """CorrectIlluminationCalculate "Background" (block minima, Gaussian of size ``filter_size``)
    and CorrectIlluminationApply "Subtract", clipped to [0, 1]."""
    from centrosome.cpmorphology import block as blocks

    image = np.asarray(image, np.float64)
    labels, indexes = blocks(image.shape[:2], (block, block))
    minima = np.asarray(ndi.minimum(image, labels, indexes), np.float64)
    background = minima[labels]
    background = _masked_smooth(background, filter_size / 2.35)
    return np.clip(image - background, 0.0, 1.0)


def global_threshold(image: np.ndarray, method: str, *, classes: int = 2, log: bool = False,
                     correction: float = 1.0, bounds: tuple[float, float] = (0.0, 1.0)) -> float:
    """CellProfiler's global threshold of ``image`` (see the module doc). ``method``:
    ``"li"`` (minimum cross-entropy) or ``"otsu"`` (``classes`` 2 or 3; with 3 the lower
    threshold: the middle class is foreground)."""
    from skimage.filters import threshold_li, threshold_multiotsu, threshold_otsu

    x = np.asarray(image, np.float64)
    conv = None
    if log:
        from centrosome.threshold import log_transform

        x, conv = log_transform(x)
    flat = x.ravel()
    if flat.size == 0:
        t = 0.0
    elif np.all(flat == flat[0]):
        t = float(flat[0])
    elif method == "li":
        tol = max(float(np.min(np.diff(np.unique(flat)))) / 2, 0.5 / 65536)
        t = float(threshold_li(flat, tolerance=tol))
    elif method == "otsu" and classes == 2:
        t = float(threshold_otsu(flat))
    elif method == "otsu" and classes == 3:
        t = float(threshold_multiotsu(flat, nbins=128)[0])
    else:
        raise ValueError(f"threshold method {method!r} with {classes} classes is not CellProfiler's")
    if conv is not None:
        from centrosome.threshold import inverse_log_transform

        t = float(inverse_log_transform(t, conv))
    t *= correction
    return float(min(max(t, bounds[0]), bounds[1]))


def binarize(image: np.ndarray, threshold: float, smoothing_scale: float = 0.0) -> np.ndarray:
    """Threshold module's binary image: ``image ≥ t``, after its masked Gaussian when smoothing."""
    if smoothing_scale == 0:
        return np.asarray(image) >= threshold
    return _masked_smooth(np.asarray(image, np.float64), smoothing_scale * SCALE_TO_SIGMA) >= threshold


def _maxima(image: np.ndarray, labels: np.ndarray, radius: float) -> np.ndarray:
    from centrosome.cpmorphology import binary_shrink, is_local_maximum, strel_disk

    peaks = is_local_maximum(image, labels, strel_disk(max(1, radius - 0.5)))
    peaks[image <= 0] = 0
    return binary_shrink(peaks)


def declump(image: np.ndarray, labels: np.ndarray, *, unclump: str = "shape", lines: str = "intensity",
            suppression: float = 8.0) -> np.ndarray:
    """IdentifyPrimaryObjects' declumping ("Shape" maxima; "Intensity" or "Shape" dividing
    lines), fill-holes setting "after declumping only"; ``suppression`` = minimum allowed
    distance between maxima (manual)."""
    from skimage.segmentation import watershed

    if unclump == "none" or lines == "none":
        return labels
    if unclump != "shape":
        raise ValueError("only 'shape' declumping is implemented (the JUMP setting)")
    dist = ndi.distance_transform_edt(labels > 0)
    dist += np.random.RandomState(0).uniform(0, 0.001, dist.shape)   # CellProfiler's tie-breaking noise
    maxima = _maxima(dist, labels, suppression)
    if lines == "intensity":
        elevation = 1 - np.asarray(image, np.float64)
    elif lines == "shape":
        elevation = -dist
        elevation = elevation - elevation.min()
    else:
        raise ValueError(f"dividing lines {lines!r}: use 'intensity' or 'shape'")
    markers, _ = ndi.label(maxima, np.ones((3, 3), bool))
    return watershed(elevation, markers=markers, mask=labels != 0, connectivity=np.ones((3, 3), bool))


def size_filter(labels: np.ndarray, min_size: float, max_size: float) -> np.ndarray:
    """Objects with area outside [π·min²/4, π·max²/4] removed (IdentifyPrimaryObjects)."""
    labels = labels.copy()
    n = int(labels.max())
    if n == 0:
        return labels
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    area = areas[labels]
    labels[area < np.pi * min_size * min_size / 4] = 0
    labels[area > np.pi * max_size * max_size / 4] = 0
    return labels


def identify_primary(image: np.ndarray, *, threshold_method: str = "li", smoothing_scale: float = 1.0,
                     correction: float = 1.0, bounds: tuple[float, float] = (0.005, 1.0),
                     min_size: float = 15, max_size: float = 90, unclump: str = "shape",
                     lines: str = "intensity", suppression: float = 8.0
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """IdentifyPrimaryObjects with JUMP's settings by default. Returns ``(objects 1..N, the
    declumped objects before the size filter (CellProfiler's "unedited" labels), threshold)``."""
    from centrosome.cpmorphology import fill_labeled_holes, relabel

    t = global_threshold(image, threshold_method, correction=correction, bounds=bounds)
    binary = binarize(image, t, smoothing_scale)
    labels, _ = ndi.label(binary, np.ones((3, 3), bool))
    labels = declump(image, labels, unclump=unclump, lines=lines, suppression=suppression)
    unedited = labels.copy()
    labels = size_filter(labels, min_size, max_size)
    labels = fill_labeled_holes(labels)
    labels, _ = relabel(labels)
    return labels.astype(np.int32), unedited, t


def identify_secondary(image: np.ndarray, objects: np.ndarray, unedited: np.ndarray, *,
                       threshold_method: str = "otsu", classes: int = 3, log: bool = True,
                       correction: float = 0.7, bounds: tuple[float, float] = (0.005, 0.06),
                       smoothing_scale: float = 0.0) -> tuple[np.ndarray, float]:
    """IdentifySecondaryObjects "Watershed - Image" (JUMP's cell settings by default); returns
    ``(cells numbered as their primary object, threshold)``."""
    from centrosome.cpmorphology import fill_labeled_holes
    from skimage.segmentation import watershed

    image = np.asarray(image, np.float64)
    t = global_threshold(image, threshold_method, classes=classes, log=log, correction=correction,
                         bounds=bounds)
    binary = binarize(image, t, smoothing_scale)
    seeds = unedited.copy()
    edge = np.unique(np.concatenate([seeds[0], seeds[-1], seeds[:, 0], seeds[:, -1]]))
    touching = np.zeros(int(seeds.max()) + 1, bool)
    touching[edge] = True
    seeds[~touching[seeds] & (objects == 0)] = 0
    out = watershed(1 - image, markers=seeds, mask=binary | (seeds > 0), connectivity=np.ones((3, 3), bool))
    out = fill_labeled_holes(out, mask=out == 0)
    n = int(out.max())
    if n == 0:
        return np.zeros(objects.shape, np.int32), t
    lookup = np.zeros(n + 1, np.int64)
    np.maximum.at(lookup, out.ravel(), objects.ravel())
    lookup[0] = 0
    return lookup[out].astype(np.int32), t


def filter_border(nuclei: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FilterObjects "Image or mask border" on the nuclei, the cells following their nucleus:
    nuclei touching the image edge are dropped, the rest renumbered 1..N in order."""
    n = int(nuclei.max())
    if n == 0:
        return nuclei, np.zeros_like(cells)
    edge = np.unique(np.concatenate([nuclei[0], nuclei[-1], nuclei[:, 0], nuclei[:, -1]]))
    keep = np.ones(n + 1, bool)
    keep[edge] = False
    keep[0] = False
    present = np.zeros(n + 1, bool)
    present[np.unique(nuclei)] = True
    keep &= present
    lookup = np.zeros(n + 1, np.int64)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1)
    cells_lookup = np.zeros(max(n, int(cells.max())) + 1, np.int64)
    cells_lookup[: n + 1] = lookup
    return lookup[nuclei].astype(np.int32), cells_lookup[cells].astype(np.int32)
