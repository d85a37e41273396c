"""Nuclei and cell segmentation (CellProfiler IdentifyPrimaryObjects / IdentifySecondaryObjects).

Nuclei (primary objects, DNA channel):

1. Gaussian smoothing (``smooth_sigma``; CellProfiler's threshold smoothing scale 1.3488 ≈ σ 1);
2. global threshold (``threshold_method``: Otsu by default, optionally on log intensities, times
   ``threshold_correction``); holes filled;
3. declumping: markers = local maxima of the distance transform (``declump="shape"``) or of the
   smoothed image (``"intensity"``), smoothed with σ = ``min_diameter / 3.5`` and suppressed
   within ``min_diameter / 1.5`` px (CellProfiler's automatic values), then a marker-controlled
   watershed on the same image inside the foreground;
4. size filter: objects with equivalent diameter outside ``[min_diameter, max_diameter]`` are
   discarded; optionally objects touching the border are discarded (``exclude_border``).

Cells (secondary objects): foreground = Otsu threshold (times ``cell_threshold_correction``) of a
cytoplasm composite — the Gaussian-smoothed ``cell_foreground_channels`` (default: every non-DNA
channel), each scaled to its 1st–99.5th percentile, summed — ∪ nuclei, holes filled. Then a
watershed seeded by the nuclei on the ``cell_channel`` (AGP by default, or RNA), elevation per
``cell_method``:

- ``"propagation"`` (default; after CellProfiler's Propagation): Sobel gradient of the smoothed
  channel (scaled to its 99th percentile in the foreground) + ``propagation_lambda`` × distance
  to the nearest nucleus (px). The distance term keeps cells compact when the stain does not
  mark borders; the gradient term moves borders onto membrane edges where it does;
- ``"intensity"``: the inverted smoothed image (borders where the stain is dim, e.g. RNA);
- ``"membrane"``: the smoothed image (borders on bright membranes, e.g. AGP actin);
- ``"gradient"``: the Sobel gradient alone;
- ``"distance"``: distance from the nuclei alone (CellProfiler "Distance - N" without limit);

optionally bounded to ``cell_max_distance`` px from the nucleus. Every cell carries its
nucleus's number (1..N per site, as in CellProfiler); only the connected piece holding the
nucleus is kept.

Measured (ground truth F1 at IoU 0.5): our synthetic sites (dim borders) nuclei ≈ 0.95, cells
≈ 0.92; the simulated screen (AGP membranes) cells ≈ 0.97 with ``propagation``; the StarDist
``img2d`` real nuclei 0.72 with defaults (0.76 with ``threshold_correction`` 0.9).

Outputs per plate: a zarr v3 label store (``labels``: sites × 2 (nuclei, cells) × H × W, uint32,
one chunk per site; the site index and QC in the array attributes) and an object table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import filters, measure, morphology, segmentation
from skimage.feature import peak_local_max

from morphobench.data.tables import SITE_KEYS, sheet_channels
from morphobench.images.cp_worker import otsu_contrast
from morphobench.images.io import (
    IllumFunctions,
    apply_illum,
    blank_channels,
    read_site,
    site_label,
    site_meta,
    site_paths,
)
from morphobench.io import MorphobenchError, atomic_path, progress, write_parquet

log = logging.getLogger("morphobench.images.segment")

OBJECTS = ("Nuclei", "Cells")


@dataclass(frozen=True)
class SegmentParams:
    """Segmentation parameters (pixel units; defaults suit ~20x Cell Painting fields)."""

    #: channel the nuclei are segmented on
    nuclei_channel: str = "DNA"
    #: channel the cells are segmented on (AGP or RNA)
    cell_channel: str = "AGP"
    #: Gaussian σ before thresholding the nuclei channel
    smooth_sigma: float = 1.0
    #: "otsu" | "li" (minimum cross-entropy) | "triangle"
    threshold_method: str = "otsu"
    #: compute the nuclei threshold on log intensities (helps very uneven nucleus brightness)
    threshold_log: bool = False
    #: multiply the nuclei threshold by this
    threshold_correction: float = 1.0
    #: QC guard: a site whose nuclei channel has an Otsu contrast (``cp_worker.otsu_contrast`` at
    #: σ ``smooth_sigma``: Otsu class separation in background sds) below this gets no objects and
    #: ``QC_LowContrast``; pure noise ≈ 2.7, real nuclei ≫ 4. 0 disables.
    min_contrast: float = 4.0
    #: nuclei equivalent-diameter range kept (px)
    min_diameter: float = 8.0
    max_diameter: float = 80.0
    #: "shape" (distance transform) | "intensity" | "none"
    declump: str = "shape"
    #: image the declumping watershed runs on: "shape" | "intensity" | None (same as ``declump``)
    dividing_lines: str | None = None
    #: local-maxima suppression distance (px); None: min_diameter / 1.5
    maxima_suppression: float | None = None
    #: σ of the declumping image smoothing; None: min_diameter / 3.5
    declump_sigma: float | None = None
    #: discard nuclei (and their cells) touching the image border
    exclude_border: bool = False
    #: channels whose normalised sum is thresholded for the cell foreground (empty: all but DNA)
    cell_foreground_channels: tuple[str, ...] = ()
    #: Gaussian σ before thresholding the cytoplasm composite
    cell_smooth_sigma: float = 2.0
    #: Gaussian σ of the cell channel before the watershed
    cell_watershed_sigma: float = 1.0
    #: "otsu" | "li" | "triangle" for the cell foreground
    cell_threshold_method: str = "otsu"
    cell_threshold_correction: float = 1.0
    #: "propagation" | "intensity" | "membrane" | "gradient" | "distance"
    cell_method: str = "propagation"
    #: propagation: weight of the distance to the nucleus (per px) against the scaled gradient
    propagation_lambda: float = 0.25
    #: watershed compactness (0: classic watershed; >0 regularises towards Voronoi)
    compactness: float = 0.0
    #: cells extend at most this far from their nucleus (px); None: unlimited
    cell_max_distance: float | None = None
    #: "morphobench" (the steps above) or "cellprofiler": CellProfiler's Identify modules
    #: re-implemented (:mod:`morphobench.images.identify`; the ``jump`` preset). With
    #: "cellprofiler": thresholds on CellProfiler's [0, 1] scale (counts / intensity_scale),
    #: ``smooth_sigma`` = threshold smoothing scale / 1.3488, ``declump`` shape only,
    #: ``dividing_lines`` the watershed image, ``cell_method`` "intensity" (Watershed - Image) only,
    #: and ``exclude_border`` = FilterObjects after the cells (cells follow their nucleus)
    method: str = "morphobench"
    #: nuclei threshold bounds ("cellprofiler"; CellProfiler's lower/upper threshold bounds)
    threshold_bounds: tuple[float, float] = (0.0, 1.0)
    #: CorrectIlluminationCalculate "Background" block size on the nuclei image before
    #: thresholding, subtracted (0: none; JUMP: 30) and its Gaussian filter size (JUMP: 50)
    nuclei_background_block: int = 0
    nuclei_background_filter: float = 50.0
    #: cell threshold: 2 (Otsu) or 3 (three-class Otsu, middle class foreground) classes,
    #: on log intensities, bounded ("cellprofiler"; JUMP: 3, true, 0.005-0.06)
    cell_threshold_classes: int = 2
    cell_threshold_log: bool = False
    cell_threshold_bounds: tuple[float, float] = (0.0, 1.0)
    #: file counts per CellProfiler intensity unit ("cellprofiler"; 65535 for 16-bit images)
    intensity_scale: float = 65535.0


#: named parameter sets (``images.segment: {preset: NAME}``): ``jump`` = the JUMP production
#: pipelines' IdentifyPrimaryObjects / IdentifySecondaryObjects / FilterObjects settings
#: (shared/JUMP_PIPELINE.md §2-4)
PRESETS: dict[str, dict] = {
    "default": {},
    "jump": {"method": "cellprofiler", "nuclei_channel": "DNA", "nuclei_background_block": 30,
             "nuclei_background_filter": 50.0, "threshold_method": "li", "smooth_sigma": 1 / 1.3488,
             "threshold_correction": 1.0, "threshold_bounds": (0.005, 1.0), "min_diameter": 15.0,
             "max_diameter": 90.0, "declump": "shape", "dividing_lines": "intensity",
             "maxima_suppression": 8.0, "exclude_border": True, "cell_channel": "RNA",
             "cell_foreground_channels": ("RNA",), "cell_method": "intensity",
             "cell_threshold_method": "otsu", "cell_threshold_classes": 3, "cell_threshold_log": True,
             "cell_threshold_correction": 0.7, "cell_threshold_bounds": (0.005, 0.06),
             "cell_smooth_sigma": 0.0, "cell_watershed_sigma": 0.0},
}


def segment_params(params=None) -> SegmentParams:
    """:class:`SegmentParams` from a dict / JSON string whose optional ``preset`` key names a
    :data:`PRESETS` entry (applied first; other keys override it)."""
    from morphobench.images.io import params_from

    return params_from(SegmentParams, params, presets=PRESETS)


def segment_site_cellprofiler(img: np.ndarray, channels: Sequence[str], params: SegmentParams
                              ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Nuclei and cells of one site by CellProfiler's Identify modules (``method="cellprofiler"``);
    returns ``(nuclei, cells, nuclei threshold, cell threshold)`` (thresholds in file counts)."""
    from morphobench.images import identify as cp

    if params.declump not in ("shape", "none"):
        raise MorphobenchError(f"segment method cellprofiler: declump {params.declump!r} is not implemented "
                               "(use 'shape', the JUMP setting, or 'none')")
    if params.cell_method != "intensity":
        raise MorphobenchError(f"segment method cellprofiler: cell_method {params.cell_method!r} is not "
                               "implemented (use 'intensity' = Watershed - Image, the JUMP setting)")
    scale = float(params.intensity_scale)
    dna = np.asarray(img[channels.index(params.nuclei_channel)], np.float64) / scale
    if params.nuclei_background_block:
        dna = cp.subtract_background(dna, int(params.nuclei_background_block), params.nuclei_background_filter)
    lines = params.dividing_lines or params.declump
    nuclei, unedited, tn = cp.identify_primary(
        dna, threshold_method=params.threshold_method, smoothing_scale=params.smooth_sigma * 2 * 0.6744,
        correction=params.threshold_correction, bounds=tuple(params.threshold_bounds),
        min_size=params.min_diameter, max_size=params.max_diameter, unclump=params.declump,
        lines=lines, suppression=(params.maxima_suppression if params.maxima_suppression is not None
                                  else params.min_diameter / 1.5))
    if nuclei.max() == 0:
        return nuclei.astype(np.uint32), np.zeros(nuclei.shape, np.uint32), tn * scale, float("nan")
    rna = np.asarray(img[channels.index(params.cell_channel)], np.float64) / scale
    cells, tc = cp.identify_secondary(
        rna, nuclei, unedited, threshold_method=params.cell_threshold_method,
        classes=params.cell_threshold_classes, log=params.cell_threshold_log,
        correction=params.cell_threshold_correction, bounds=tuple(params.cell_threshold_bounds),
        smoothing_scale=params.cell_smooth_sigma * 2 * 0.6744)
    if params.exclude_border:
        nuclei, cells = cp.filter_border(nuclei, cells)
    return nuclei.astype(np.uint32), cells.astype(np.uint32), tn * scale, tc * scale


_THRESHOLDS = {"otsu": filters.threshold_otsu, "li": filters.threshold_li,
               "triangle": filters.threshold_triangle}


def _threshold(img: np.ndarray, method: str, log_scale: bool = False) -> float:
    if method not in _THRESHOLDS:
        raise MorphobenchError(f"unknown threshold method {method!r}; choose {sorted(_THRESHOLDS)}")
    x = img
    if log_scale:
        x = np.log1p(np.maximum(img - img.min(), 0))
    t = float(_THRESHOLDS[method](x))
    if log_scale:
        t = float(np.expm1(t) + img.min())
    return t


def _declump_image(kind: str, fg: np.ndarray, sm: np.ndarray, t: float, sigma: float) -> np.ndarray:
    if kind == "shape":
        img = ndimage.distance_transform_edt(fg)
    elif kind == "intensity":
        img = np.where(fg, sm - t, 0).astype(np.float64)
    else:
        raise MorphobenchError(f"unknown declump/dividing-lines method {kind!r}; use shape|intensity|none")
    return ndimage.gaussian_filter(img, sigma) if sigma > 0 else img


def segment_nuclei(dna: np.ndarray, params: SegmentParams = SegmentParams()) -> tuple[np.ndarray, float]:
    """Label image of nuclei (uint32, 1..N) and the threshold used.

    A constant image gives no objects (threshold NaN).
    """
    dna = np.asarray(dna, np.float32)
    if float(dna.max() - dna.min()) <= 0:
        return np.zeros(dna.shape, np.uint32), float("nan")
    sm = ndimage.gaussian_filter(dna, params.smooth_sigma) if params.smooth_sigma > 0 else dna
    t = _threshold(sm, params.threshold_method, params.threshold_log) * params.threshold_correction
    fg = ndimage.binary_fill_holes(sm > t)
    min_area = np.pi * (params.min_diameter / 2) ** 2
    fg = morphology.remove_small_objects(fg, max_size=max(1, int(min_area / 4)))
    comps, ncomp = ndimage.label(fg)
    if ncomp == 0:
        return np.zeros(dna.shape, np.uint32), t
    if params.declump == "none":
        labels = comps
    else:
        supp = params.maxima_suppression or params.min_diameter / 1.5
        sig = params.declump_sigma if params.declump_sigma is not None else params.min_diameter / 3.5
        dimg = _declump_image(params.declump, fg, sm, t, sig)
        peaks = peak_local_max(dimg, min_distance=max(1, int(round(supp))), labels=comps,
                               exclude_border=False)
        markers = np.zeros(dna.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # components without a peak (flat plateaus) get one marker at their maximum
        has = np.zeros(ncomp + 1, bool)
        has[comps[tuple(peaks.T)]] = True
        missing = np.flatnonzero(~has[1:]) + 1
        if len(missing):
            pos = ndimage.maximum_position(dimg, comps, missing)
            for k, p in enumerate(pos):
                markers[p] = len(peaks) + k + 1
        lines = params.dividing_lines or params.declump
        wimg = dimg if lines == params.declump else _declump_image(lines, fg, sm, t, sig)
        labels = segmentation.watershed(-wimg, markers, mask=fg)
    # size filter on equivalent diameter
    areas = np.bincount(labels.ravel())
    diam = np.sqrt(4 * areas / np.pi)
    bad = (diam < params.min_diameter) | (diam > params.max_diameter)
    bad[0] = False
    if params.exclude_border:
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        bad[edge] = True
        bad[0] = False
    labels = np.where(bad[labels], 0, labels)
    labels, _, _ = segmentation.relabel_sequential(labels)
    return labels.astype(np.uint32), t


def cell_foreground_channels(channels: Sequence[str], params: SegmentParams) -> list[str]:
    """Channels of the cytoplasm composite (``cell_foreground_channels`` or all but the nuclei's)."""
    fgc = list(params.cell_foreground_channels) or [c for c in channels if c != params.nuclei_channel]
    return fgc or [params.cell_channel]


def _composite(planes: Sequence[np.ndarray], sigma: float) -> np.ndarray:
    comb = np.zeros(planes[0].shape, np.float64)
    for pl in planes:
        x = ndimage.gaussian_filter(np.asarray(pl, np.float64), sigma) if sigma > 0 else np.asarray(pl, np.float64)
        lo, hi = np.percentile(x, [1.0, 99.5])
        if hi > lo:
            comb += (x - lo) / (hi - lo)
    return comb


def segment_cells(img: np.ndarray, nuclei: np.ndarray, params: SegmentParams = SegmentParams(),
                  foreground: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, float]:
    """Cells grown from the nuclei (same numbers) on the cell channel ``img``; the foreground is
    thresholded from ``foreground`` planes (default: ``img`` alone). Returns (labels, threshold)."""
    nuclei = np.asarray(nuclei)
    if nuclei.max() == 0:
        return np.zeros(nuclei.shape, np.uint32), float("nan")
    img = np.asarray(img, np.float64)
    comb = _composite(list(foreground) if foreground is not None else [img], params.cell_smooth_sigma)
    if float(comb.max() - comb.min()) <= 0:
        return nuclei.astype(np.uint32), float("nan")
    t = _threshold(comb, params.cell_threshold_method) * params.cell_threshold_correction
    fg = ndimage.binary_fill_holes((comb > t) | (nuclei > 0))
    dist = None
    if params.cell_max_distance is not None or params.cell_method in ("propagation", "distance"):
        dist = ndimage.distance_transform_edt(nuclei == 0)
    if params.cell_max_distance is not None:
        fg &= dist <= params.cell_max_distance
    sm = ndimage.gaussian_filter(img, params.cell_watershed_sigma) if params.cell_watershed_sigma > 0 else img
    if params.cell_method == "propagation":
        g = filters.sobel(sm)
        scale = float(np.percentile(g[fg], 99)) if fg.any() else 0.0
        elev = (g / scale if scale > 0 else g) + params.propagation_lambda * dist
    elif params.cell_method == "intensity":
        elev = -sm
    elif params.cell_method == "membrane":
        elev = sm
    elif params.cell_method == "gradient":
        elev = filters.sobel(sm)
    elif params.cell_method == "distance":
        elev = dist
    else:
        raise MorphobenchError(f"unknown cell_method {params.cell_method!r}; use "
                               "propagation|intensity|membrane|gradient|distance")
    cells = segmentation.watershed(elev, markers=nuclei.astype(np.int32), mask=fg,
                                   compactness=params.compactness)
    cells[nuclei > 0] = nuclei[nuclei > 0]
    # keep only the connected piece of each cell that holds its nucleus
    regions = measure.label(cells, connectivity=1, background=0)
    keep = np.zeros(int(regions.max()) + 1, bool)
    keep[np.unique(regions[nuclei > 0])] = True
    keep[0] = False
    cells[~keep[regions]] = 0
    return cells.astype(np.uint32), t


def segment_site(img: np.ndarray, channels: Sequence[str], params: SegmentParams = SegmentParams(),
                 blank: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Segment one site ``(C,H,W)``; returns ``(nuclei, cells, qc)``.

    A nuclei channel whose Otsu contrast is below ``params.min_contrast`` (noise only, e.g. an
    empty well or a failed stain) also gives zero objects, flagged ``QC_LowContrast``.
    ``blank``: channels whose *raw* image is constant (QC flag). Pass it when ``img`` is already
    illumination corrected (a constant raw plane is no longer constant after the division);
    default: detected on ``img``. A blank nuclei channel gives zero objects; blank channels are
    left out of the cell foreground (as the CellProfiler backend does).
    """
    channels = list(channels)
    for ch in (params.nuclei_channel, params.cell_channel):
        if ch not in channels:
            raise MorphobenchError(f"segmentation channel {ch!r} not among the site's channels {channels}")
    blank = list(blank) if blank is not None else blank_channels(img, channels)
    dna = img[channels.index(params.nuclei_channel)]
    dna_blank = params.nuclei_channel in blank
    contrast = float("nan") if dna_blank else otsu_contrast(dna, params.smooth_sigma)
    low = not dna_blank and params.min_contrast > 0 and not contrast >= params.min_contrast
    if dna_blank or low:
        empty = np.zeros(img.shape[1:], dtype=np.uint32)
        qc = {"Count_Nuclei": 0, "Count_Cells": 0, "Threshold_Nuclei": float("nan"),
              "Threshold_Cells": float("nan"), "QC_Blank": bool(blank), "QC_BlankChannels": ",".join(blank),
              "Contrast_Nuclei": contrast, "QC_LowContrast": low}
        return empty, empty.copy(), qc
    if params.method == "cellprofiler":
        nuclei, cells, tn, tc = segment_site_cellprofiler(img, channels, params)
    elif params.method == "morphobench":
        nuclei, tn = segment_nuclei(dna, params)
        fgc = [c for c in cell_foreground_channels(channels, params) if c in channels and c not in blank]
        fgc = fgc or [params.cell_channel]
        cells, tc = segment_cells(img[channels.index(params.cell_channel)], nuclei, params,
                                  foreground=[img[channels.index(c)] for c in fgc])
    else:
        raise MorphobenchError(f"unknown segment method {params.method!r}; use 'morphobench' or 'cellprofiler'")
    qc = {"Count_Nuclei": int(nuclei.max()), "Count_Cells": int(len(np.unique(cells)) - 1),
          "Threshold_Nuclei": tn, "Threshold_Cells": tc,
          "QC_Blank": bool(blank), "QC_BlankChannels": ",".join(blank),
          "Contrast_Nuclei": contrast, "QC_LowContrast": False}
    return nuclei, cells, qc


# --------------------------------------------------------------------------------------------
# Object table
# --------------------------------------------------------------------------------------------
def object_table(nuclei: np.ndarray, cells: np.ndarray, meta: dict | None = None,
                 image_number: int | None = None) -> pd.DataFrame:
    """One row per nucleus: ``Metadata_*``, ``ImageNumber``, ``ObjectNumber``, centroids
    (``Nuclei_/Cells_Location_Center_X/Y``), areas and border flags. No objects → zero rows."""
    n = int(nuclei.max())
    idx = np.arange(1, n + 1)
    cols: dict[str, np.ndarray] = {"ObjectNumber": idx.astype(np.int64)}
    h, w = nuclei.shape
    edge = np.zeros((h, w), bool)
    edge[0] = edge[-1] = True
    edge[:, 0] = edge[:, -1] = True
    for name, lab in (("Nuclei", nuclei), ("Cells", cells)):
        area = ndimage.sum_labels(np.ones_like(lab, np.float64), lab, idx) if n else np.zeros(0)
        if n:
            cy, cx = np.array(ndimage.center_of_mass(np.ones_like(lab, np.float64), lab, idx)).reshape(-1, 2).T
        else:
            cy = cx = np.zeros(0)
        border = np.zeros(n + 1, bool)
        border[np.unique(lab[edge])] = True
        cols[f"{name}_Location_Center_X"] = np.where(area > 0, cx, np.nan)
        cols[f"{name}_Location_Center_Y"] = np.where(area > 0, cy, np.nan)
        cols[f"{name}_AreaShape_Area"] = area.astype(np.int64)
        cols[f"{name}_TouchesBorder"] = border[idx]
    df = pd.DataFrame(cols)
    front = {}
    if meta:
        front.update({k: [v] * n for k, v in meta.items()})
    if image_number is not None:
        front["ImageNumber"] = np.full(n, image_number, np.int64)
    return pd.concat([pd.DataFrame(front, index=df.index), df], axis=1)


# --------------------------------------------------------------------------------------------
# Label store
# --------------------------------------------------------------------------------------------
def open_labels(path: str | os.PathLike):
    """Open a plate's label store; returns ``(array, sites DataFrame)`` (array[i] = (2,H,W))."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise MorphobenchError(f"label store not found: {path}")
    try:
        arr = zarr.open_array(str(path), mode="r")
    except Exception as err:
        raise MorphobenchError(f"cannot open label store {path}: {err}") from err
    sites = pd.DataFrame(arr.attrs["sites"])
    return arr, sites


class LabelStoreWriter:
    """Fills a plate's label store site by site: zarr v3 array of sites × 2 (nuclei, cells) × H × W,
    uint32, one chunk per site (created at the first site; every site must have its shape).
    Used by both backends so their stores are identical in layout."""

    def __init__(self, path: str | os.PathLike, n_sites: int):
        self.path, self.n_sites, self.array = Path(path), n_sites, None

    def put(self, i: int, nuclei: np.ndarray, cells: np.ndarray, row) -> None:
        import zarr

        if self.array is None:
            h, w = nuclei.shape
            self.array = zarr.create_array(str(self.path), shape=(self.n_sites, 2, h, w), chunks=(1, 2, h, w),
                                           dtype="uint32", fill_value=0, overwrite=True,
                                           dimension_names=("site", "object", "y", "x"))
        elif nuclei.shape != tuple(self.array.shape[2:]):
            raise MorphobenchError(f"site {site_label(row)}: shape {nuclei.shape} differs from the "
                                   f"plate's first site {tuple(self.array.shape[2:])}")
        self.array[i] = np.stack([nuclei, cells]).astype(np.uint32, copy=False)

    def finish(self, attrs: dict) -> None:
        if self.array is None:
            raise MorphobenchError("no sites to segment")
        self.array.attrs.update(attrs)


def run_segment(rows: pd.DataFrame, labels_out: str | os.PathLike, objects_out: str | os.PathLike,
                params: SegmentParams = SegmentParams(), *, illum: IllumFunctions | None = None,
                qc_out: str | os.PathLike | None = None, root=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segment every site of one plate; write the label store, object table (and QC table).

    Nothing is left behind on failure (store built in a temp dir, then renamed).
    """

    channels = sheet_channels(rows)
    use = list(dict.fromkeys([params.nuclei_channel, params.cell_channel]
                             + cell_foreground_channels(channels, params)))
    for ch in use:
        if ch not in channels:
            raise MorphobenchError(f"segmentation channel {ch!r} not in the image sheet (has {channels})")
    tables, qcs = [], []
    labels_out = Path(labels_out)
    with atomic_path(labels_out, is_dir=True) as tmp:
        store = LabelStoreWriter(tmp, len(rows))
        for i, (_, row) in enumerate(progress(rows.iterrows(), total=len(rows), desc="segment")):
            img = read_site(row, use, root=root)
            blank = blank_channels(img, use)          # on the raw planes
            if illum is not None:
                apply_illum(img, use, illum, where=lambda: f"site {site_label(row)}",
                            files=site_paths(row, use, root))
            nuc, cel, qc = segment_site(img, use, params, blank=blank)
            store.put(i, nuc, cel, row)
            meta = site_meta(row)
            if qc["QC_Blank"]:
                log.warning("segment: site %s has blank channel(s) %s", site_label(row), qc["QC_BlankChannels"])
            if qc["QC_LowContrast"]:
                log.warning("segment: site %s: %s contrast %.2f < min_contrast %.2f (noise only?): no objects",
                            site_label(row), params.nuclei_channel, qc["Contrast_Nuclei"], params.min_contrast)
            qcs.append({**meta, "ImageNumber": i + 1, **qc})
            tables.append(object_table(nuc, cel, meta, image_number=i + 1))
        qc_df = pd.DataFrame(qcs)
        store.finish({"objects": list(OBJECTS), "channels_used": use, "params": asdict(params),
                      "sites": _jsonable(qc_df)})
    return write_segmentation_tables(tables, qc_df, rows, objects_out, qc_out)


def write_segmentation_tables(tables: list[pd.DataFrame], qc_df: pd.DataFrame, rows: pd.DataFrame,
                              objects_out: str | os.PathLike, qc_out: str | os.PathLike | None
                              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate the per-site object tables (keeping the sheet's key dtypes even when some sites
    have no objects) and write them (+ the QC table) atomically; shared by both backends."""
    objects = pd.concat(tables, ignore_index=True)
    for k in SITE_KEYS:
        objects[k] = objects[k].astype(rows[k].dtype)
    write_parquet(objects, objects_out)
    if qc_out:
        write_parquet(qc_df, qc_out)
    return objects, qc_df


def _jsonable(df: pd.DataFrame) -> list[dict]:
    out = []
    for rec in df.to_dict("records"):
        out.append({k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()})
    for rec in out:
        for k, v in rec.items():
            if isinstance(v, float) and not np.isfinite(v):
                rec[k] = None
    return out


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def match_instances(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> dict[str, float]:
    """Match predicted to ground-truth instances (optimal one-to-one assignment on IoU).

    A pair counts as a true positive when its IoU ≥ ``iou`` (for ``iou`` > 0.5 the matching is
    unique; below, the assignment maximising total IoU is used, as StarDist's ``matching``).

    Returns ``{"tp", "fp", "fn", "precision", "recall", "f1", "mean_matched_iou", "n_pred", "n_true"}``.
    """
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs truth {truth.shape}")
    p, _, _ = segmentation.relabel_sequential(pred.astype(np.int64))
    t, _, _ = segmentation.relabel_sequential(truth.astype(np.int64))
    n_p, n_t = int(p.max()), int(t.max())
    if n_p == 0 or n_t == 0:
        tp = 0
        mean_iou = 0.0
    else:
        both = (p > 0) & (t > 0)
        pairs = p[both] * (n_t + 1) + t[both]
        key, inter = np.unique(pairs, return_counts=True)
        pi, ti = key // (n_t + 1), key % (n_t + 1)
        ap = np.bincount(p.ravel(), minlength=n_p + 1)
        at = np.bincount(t.ravel(), minlength=n_t + 1)
        ious = inter / (ap[pi] + at[ti] - inter)
        ok = ious >= iou
        pi, ti, ious = pi[ok], ti[ok], ious[ok]
        if len(ious) == 0:
            tp, mean_iou = 0, 0.0
        else:
            up, ip = np.unique(pi, return_inverse=True)
            ut, it = np.unique(ti, return_inverse=True)
            cost = np.zeros((len(up), len(ut)))
            cost[ip, it] = ious
            r, c = linear_sum_assignment(-cost)
            matched = cost[r, c] >= iou
            tp = int(matched.sum())
            mean_iou = float(cost[r, c][matched].mean()) if tp else 0.0
    fp, fn = n_p - tp, n_t - tp
    prec = tp / n_p if n_p else 0.0
    rec = tp / n_t if n_t else 0.0
    f1 = 2 * tp / (n_p + n_t) if (n_p + n_t) else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": prec, "recall": rec, "f1": f1,
            "mean_matched_iou": mean_iou, "n_pred": n_p, "n_true": n_t}
