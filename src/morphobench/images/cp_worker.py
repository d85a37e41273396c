#!/usr/bin/env python
"""CellProfiler worker of morphobench's ``cellprofiler`` image backend.

Runs in the SEPARATE CellProfiler environment (``envs/cellprofiler.yaml`` /
``.venv-cellprofiler``, numpy < 2), never in morphobench's own: it is started as a script,

    <cp python> cp_worker.py REQUEST.json      # do one task
    <cp python> cp_worker.py --version         # print the environment's versions as JSON

and imports nothing from morphobench (stdlib + numpy + scipy + scikit-image + tifffile +
cellprofiler_library / cellprofiler_core of that environment). The driver
(:mod:`morphobench.images.cp_backend`) writes the request and converts the outputs.

Request (JSON)::

    {"protocol": 1, "task": "illum" | "segment" | "measure",
     "channels": ["DNA", "ER", ...],
     "sites": [{"paths": {"DNA": "/abs/a.tif", ...}}, ...],   # site i = position i
     "illum": "/abs/illum.npz" | null,     # one float array per channel (>= 1), images are divided
     "labels": "/abs/labels.npz" | null,   # task measure: s{i}_nuclei, s{i}_cells (int32)
     "params": {...},                      # per task, see ILLUM/SEGMENT/MEASURE_DEFAULTS
     "out_dir": "/abs/dir"}

Outputs in ``out_dir`` (written only by this process; the driver moves them atomically):

- illum:   ``illum.npz`` (channel -> float32 function) + ``illum.json`` (images used per channel)
- segment: ``labels.npz`` (``s{i}_nuclei``, ``s{i}_cells``; int32, same object numbers) +
  ``objects.csv`` (site, ObjectNumber, Nuclei/Cells Location_Center_X/Y and AreaShape_Area)
- measure: ``features.csv`` (site, ObjectNumber, CellProfiler-named columns such as
  ``Nuclei_AreaShape_Area``, ``Cells_Intensity_MeanIntensity_AGP``)
- always:  ``result.json`` on success, or ``error.json`` ({"error", "message", "file",
  "traceback"}) and exit status 2 on failure; the driver raises with the file it names.

Pixel scale is CellProfiler's: integer images are divided by their type's maximum (16-bit counts /
65535), so intensities lie in [0, 1] as in a CellProfiler pipeline.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
import traceback
import warnings

PROTOCOL = 1

# --------------------------------------------------------------------------------------------
# Defaults of every task (the driver fills them from the morphobench config; names follow the
# CellProfiler module settings they set).
# --------------------------------------------------------------------------------------------
ILLUM_DEFAULTS = {
    # CorrectIlluminationCalculate, "All" images of the plate, "Regular" intensities. As in the
    # JUMP illumination pipelines, images are shrunk first (Resize ×1/downsample), the function is
    # computed at low resolution and enlarged back (bilinear).
    "downsample": 4,
    # JUMP: CellProfiler's Resize module (bilinear, by this factor) instead of the block mean;
    # the function is enlarged back to the image's shape (bilinear) — None: block mean
    "resize_factor": None,
    "smoothing_method": "Median Filter",
    "filter_size": 20,            # "Smoothing filter size" (manual), in downsampled pixels
    "rescale": "Yes",             # divide by the robust minimum (2nd percentile): function >= 1
    "skip_blank": True,           # constant images (e.g. an empty channel) are not averaged
}
#: CellProfiler's "threshold smoothing scale" s gives a Gaussian of σ = s / 0.6744 / 2
SCALE_PER_SIGMA = 2 * 0.6744
SEGMENT_DEFAULTS = {
    # GaussianFilter (σ, pixels) applied before IdentifyPrimaryObjects (nuclei image) and to each
    # cell-foreground channel before the composite is built (0: none; the threshold modules' own
    # "threshold smoothing scale" is the other way to smooth)
    "pre_smooth_sigma": 0.0,
    "cells_pre_smooth_sigma": 0.0,
    # IdentifyPrimaryObjects (nuclei)
    "nuclei_channel": "DNA",
    # QC guard (not a CellProfiler setting): a site whose nuclei image has an Otsu contrast
    # (otsu_contrast, σ = pre_smooth_sigma or threshold_smoothing_scale / SCALE_PER_SIGMA) below this gets
    # no objects and low_contrast = true; 0 disables (CellProfiler would segment noise)
    "min_contrast": 0.0,
    "min_diameter": 8,            # "Typical diameter of objects" (pixels)
    "max_diameter": 40,
    "threshold_method": "Otsu",   # global two-class Otsu
    "threshold_smoothing_scale": 1.3488,
    "threshold_correction_factor": 1.0,
    "threshold_min": 0.0,
    "threshold_max": 1.0,
    "unclump_method": "Intensity",
    "watershed_method": "Intensity",
    "declump_smoothing_filter_size": None,   # None: automatic (2.35 · min_diameter / 3.5)
    "maxima_suppression_size": None,         # None: automatic
    "low_res_maxima": True,
    "exclude_border_objects": True,
    "exclude_size": True,
    "fill_holes": "After both thresholding and declumping",
    # Cell foreground: Threshold module on a composite = ImageMath "Add" of the foreground channels,
    # each (after GaussianFilter σ cells_pre_smooth_sigma) RescaleIntensity'd so that its
    # cells_foreground_percentiles map to 0 and 1 (None: raw sum); the nuclei are added to the
    # mask, holes filled. None: every request channel except the nuclei channel.
    "cells_foreground_channels": None,
    "cells_foreground_percentiles": [1.0, 99.5],
    "cells_threshold_method": "Otsu",
    "cells_threshold_smoothing_scale": 0.0,
    "cells_threshold_correction_factor": 1.0,
    # IdentifySecondaryObjects (cells) on cells_channel (GaussianFilter σ cells_watershed_sigma),
    # masked by the foreground above (manual threshold at the image minimum: the mask is the
    # foreground). cells_enhance_edges: EnhanceEdges (Sobel, all directions) first;
    # cells_invert: then ImageMath "Invert" ("Watershed - Image" floods 1 − image, so inverted it
    # floods the image itself: borders on bright membranes, or on strong edges).
    "cells_channel": "AGP",
    "cells_method": "Propagation",
    "cells_watershed_sigma": 0.0,
    "cells_enhance_edges": False,
    "cells_invert": False,
    "regularization_factor": 0.05,
    "distance_to_dilate": 10,
    "cells_max_distance": None,   # mask the foreground to this distance (px) from a nucleus
    "cells_fill_holes": True,
    "discard_edge_cells": False,
    # --- the JUMP pipeline's variant (shared/JUMP_PIPELINE.md §2-4) ---
    # CorrectIlluminationCalculate "Background" (each image, block minima, Gaussian of this
    # filter size, no rescale) + CorrectIlluminationApply "Subtract" on the nuclei image first;
    # None: no background step
    "nuclei_background": None,    # e.g. {"block_size": 30, "filter_size": 50}
    # "composite": the cell foreground above (Threshold of a channel composite, given to
    # IdentifySecondaryObjects as its mask); "module": IdentifySecondaryObjects thresholds
    # cells_channel itself with these settings (JUMP: Multi-Otsu, log, × 0.7, 0.005-0.06)
    "cells_threshold_mode": "composite",
    "cells_threshold_log": False,
    "cells_threshold_min": 0.0,
    "cells_threshold_max": 1.0,
    # FilterObjects "Image or mask border" after the cells: nuclei touching the image edge are
    # dropped with their cells, the rest renumbered (JUMP's Nuclei / Cells)
    "filter_border_after_cells": False,
}
MEASURE_DEFAULTS = {
    "compartments": ["Nuclei", "Cells", "Cytoplasm"],
    "categories": ["AreaShape", "Intensity", "Texture"],
    "channels": None,             # None: every channel of the request
    "zernike": True,              # MeasureObjectSizeShape: Zernike features
    "advanced_shape": False,      # MeasureObjectSizeShape: advanced (moments, inertia) features
    "texture_scales": [3],
    "texture_gray_levels": 256,
    "granularity_spectrum_length": 16,
    "granularity_subsample_size": 0.25,
    "granularity_image_sample_size": 0.25,
    "granularity_element_size": 10,
    "radial_bins": 4,
    "radial_maximum_radius": 100,
    "neighbors_distance": 5,      # MeasureObjectNeighbors "Within a specified distance"
    # explicit neighbour sets [compartment, method, distance] (method: "Adjacent", "Expand until
    # adjacent", "Within a specified distance"); None: every compartment within neighbors_distance
    "neighbors": None,
    # MeasureColocalization: measurement types (Correlation, Manders, RWC, Overlap, Costes) and
    # the threshold (% of each image's maximum in the object) of Manders / RWC / Costes
    "correlation_types": ["Correlation"],
    "correlation_threshold": 15.0,
    "shrink_primary": True,       # IdentifyTertiaryObjects "Shrink smaller object prior to subtraction?"
    "keep_location": False,       # keep Location_* columns (positions, not morphology) in the table
}


class WorkerError(Exception):
    """An error with the file it concerns (reported to the driver in error.json)."""

    def __init__(self, message: str, file: str | None = None):
        super().__init__(message)
        self.file = file


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _np():
    import numpy

    return numpy


def otsu_contrast(img, sigma: float = 1.0) -> float:
    """Separation of the two Otsu classes of the Gaussian-smoothed (σ ``sigma``) image, in
    background standard deviations: ``(mean above − mean at or below the threshold) / sd below``.

    A segmentation QC statistic shared by both backends (``SegmentParams.min_contrast``): pure
    noise gives ≈ 2.7 whatever its level, a linear ramp 3.5; nuclei images are well above 4 (the
    StarDist ``img2d`` real nuclei 6.5, simulated sites ≥ 12). NaN for a constant image.
    """
    np = _np()
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    x = np.asarray(img, np.float64)
    if sigma > 0:
        x = ndimage.gaussian_filter(x, sigma)
    if float(x.max() - x.min()) <= 0:
        return float("nan")
    t = threshold_otsu(x)
    fg, bg = x[x > t], x[x <= t]
    if fg.size == 0 or bg.size == 0:
        return float("nan")
    sd = float(bg.std())
    return float("inf") if sd == 0 else float((fg.mean() - bg.mean()) / sd)


def versions() -> dict:
    import importlib.metadata as md

    out = {"protocol": PROTOCOL, "python": sys.version.split()[0]}
    for name in ("numpy", "scipy", "scikit-image", "tifffile", "imagecodecs",
                 "cellprofiler-library-nightly", "cellprofiler-core-nightly", "centriole-nightly"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def image_scale(img) -> float:
    """The divisor CellProfiler applies to a file's values (integer type maximum, else 1)."""
    np = _np()
    return float(np.iinfo(img.dtype).max) if np.issubdtype(img.dtype, np.integer) else 1.0


class TiffCodecError(Exception):
    """A TIFF whose compression has no decoder in this environment (message names the codec)."""


def tiff_codec_problem(tif) -> str | None:
    """Why the pixels of an open ``tifffile.TiffFile`` cannot be decoded here, or None.

    Checks the compression (and predictor) of its first page against the decoders tifffile has:
    LZW, Deflate, ZSTD, JPEG … need the ``imagecodecs`` package; an unknown compression code has
    no decoder at all. Shared by both backends (the in-process reader imports it from here), so a
    missing codec is reported by name, never as a "truncated or corrupt" file.
    """
    from tifffile import COMPRESSION, PREDICTOR, TIFF

    page = tif.pages[0]
    comp = int(page.compression)
    try:
        name = COMPRESSION(comp).name
    except ValueError:
        name = None
    try:
        TIFF.DECOMPRESSORS[comp]
    except KeyError as err:
        if name is None:
            return f"unknown TIFF compression code {comp} (no decoder exists for it)"
        reason = str(err).strip("'\"")
        hint = ("; install the pinned 'imagecodecs' package (pyproject.toml / envs/*.yaml)"
                if "imagecodecs" in reason else "")
        return f"TIFF compression {name} (code {comp}) cannot be decoded: {reason}{hint}"
    pred = int(getattr(page, "predictor", 1) or 1)
    if pred != 1:
        try:
            TIFF.PREDICTORS[pred]
        except KeyError as err:
            try:
                pname = PREDICTOR(pred).name
            except ValueError:
                pname = f"code {pred}"
            return f"TIFF predictor {pname} (compression {name}) cannot be decoded: {str(err).strip(chr(39))}"
    return None


def read_tiff(path: str):
    """Pixels of a TIFF (tifffile), with a codec that cannot be decoded reported by name.

    Raises :class:`TiffCodecError` (message names the codec) or tifffile's own errors.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        problem = tiff_codec_problem(tif)
        if problem:
            raise TiffCodecError(problem)
        return tif.asarray()


def read_image(path: str, with_scale: bool = False):
    """One 2-D plane as float32 in CellProfiler's [0, 1] scale; errors name the file."""
    np = _np()
    if not os.path.exists(path):
        raise WorkerError("image file not found", path)
    try:
        if path.lower().endswith((".tif", ".tiff")):
            img = read_tiff(path)
        else:
            import skimage.io

            img = skimage.io.imread(path)
    except TiffCodecError as err:
        raise WorkerError(f"cannot read image: {err}", path) from err
    except Exception as err:
        raise WorkerError(f"cannot read image: {type(err).__name__}: {err} (truncated or corrupt file?)",
                          path) from err
    img = np.asarray(img)
    if img.ndim == 3 and 1 in (img.shape[0], img.shape[-1]):
        img = img.reshape(img.shape[:-1] if img.shape[-1] == 1 else img.shape[1:])
    if img.ndim != 2 or img.size == 0:
        raise WorkerError(f"expected a single 2-D plane, got shape {img.shape}", path)
    scale = image_scale(img)
    out = img.astype(np.float32)
    if scale != 1.0:
        out /= np.float32(scale)
    if not np.all(np.isfinite(out)):
        raise WorkerError("image contains NaN or infinite values", path)
    return (out, scale) if with_scale else out


def load_illum(path: str | None, channels):
    if not path:
        return None
    np = _np()
    if not os.path.exists(path):
        raise WorkerError("illumination functions not found", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            funcs = {ch: z[ch].astype(np.float32) for ch in channels if ch in z.files}
    except Exception as err:
        raise WorkerError(f"cannot read illumination functions: {err}", path) from err
    missing = [ch for ch in channels if ch not in funcs]
    if missing:
        raise WorkerError(f"illumination functions have no channel(s) {missing}", path)
    return funcs


def read_channel(site: dict, ch: str, illum, with_scale: bool = False):
    """One channel of a site, illumination-corrected (CorrectIlluminationApply, Divide).

    ``with_scale``: return ``(image, divisor applied to the file's values, blank?)``. Blank = the
    RAW image is constant (an empty channel): judged before the correction, which would turn a
    constant image into the inverse of the illumination function. The in-process backend's
    test (constant after correction) is the special case of an all-zero image.
    """
    try:
        path = site["paths"][ch]
    except KeyError:
        raise WorkerError(f"request names no file for channel {ch!r} of a site (has "
                          f"{sorted(site.get('paths', {}))})") from None
    img, scale = read_image(path, with_scale=True)
    blank = float(img.max() - img.min()) <= 0.0
    if illum is not None:
        f = illum[ch]
        if f.shape != img.shape:
            raise WorkerError(f"image shape {img.shape} differs from the illumination function's "
                              f"{f.shape} for channel {ch}", path)
        from cellprofiler_library.modules._correctilluminationapply import correct_illumination_apply

        img = correct_illumination_apply(img, f, "Divide", truncate_low=False, truncate_high=False)
        img = img.astype(_np().float32, copy=False)
    return (img, scale, blank) if with_scale else img


class Progress:
    """``progress: <task> <done>/<total>`` lines on stderr, at most every ``every`` seconds (the
    driver relays them to the rule's log)."""

    def __init__(self, task: str, total: int, every: float = 5.0):
        self.task, self.total, self.every, self.last = task, total, every, time.time()

    def __call__(self, done: int) -> None:
        now = time.time()
        if done == self.total or now - self.last >= self.every:
            self.last = now
            print(f"progress: {self.task} {done}/{self.total}", file=sys.stderr, flush=True)


def _merge(defaults: dict, given: dict | None, task: str) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise WorkerError(f"{task}: unknown parameter(s) {unknown}; allowed {sorted(defaults)}")
    out = dict(defaults)
    out.update(given)
    return out


def _write_csv(path: str, header: list, rows) -> None:
    # repr() of a Python float round-trips exactly (pandas reads it back bit-identical)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([repr(float(v)) if isinstance(v, float) else v for v in r])


# --------------------------------------------------------------------------------------------
# Task: illumination functions (one plate)
# --------------------------------------------------------------------------------------------
def task_illum(req: dict) -> dict:
    np = _np()
    from cellprofiler_library.modules._correctilluminationcalculate import correctilluminationcalculate
    from skimage.transform import downscale_local_mean, resize

    p = _merge(ILLUM_DEFAULTS, req.get("params"), "illum")
    channels, sites = req["channels"], req["sites"]
    if not sites:
        raise WorkerError("illum: the request has no sites")
    ds = int(p["downsample"])
    funcs, used, skipped, shape = {}, {}, [], None
    prog = Progress("illum", len(channels) * len(sites))
    for ci, ch in enumerate(channels):
        acc = None
        n = 0
        for i, site in enumerate(sites):
            prog(ci * len(sites) + i)
            img = read_channel(site, ch, None)
            if shape is None:
                shape = img.shape
            elif img.shape != shape:
                raise WorkerError(f"shape {img.shape} differs from the plate's other images {shape} "
                                  "(one illumination function per plate needs equal shapes)",
                                  site["paths"][ch])
            if p["skip_blank"] and float(img.max() - img.min()) <= 0.0:
                skipped.append({"site": i, "channel": ch, "file": site["paths"][ch]})
                continue
            if p["resize_factor"] is not None:  # CellProfiler's Resize module (JUMP: ×0.2)
                from cellprofiler_library.modules._resize import resize_image

                small, _m, _c = resize_image(
                    img, np.ones(img.shape, bool), 2, None,
                    "Resize by a fraction or multiple of the original size", float(p["resize_factor"]),
                    float(p["resize_factor"]), None, "Manual", None, None, None, None, "Bilinear")
                small = np.asarray(small, np.float32)
            elif ds > 1:  # block mean (Resize ×1/ds); partial edge blocks average their own pixels
                small = downscale_local_mean(img, (ds, ds))
                if img.shape[0] % ds or img.shape[1] % ds:
                    small = small / downscale_local_mean(np.ones(img.shape), (ds, ds))
                small = small.astype(np.float32)
            else:
                small = img
            n += 1
            if acc is None:
                acc = correctilluminationcalculate(
                    small, None, intensity_choice="Regular", smoothing_method=p["smoothing_method"],
                    block_size=60, dilate_objects=False, object_dilation_radius=1,
                    automatic_object_width="Manually", size_of_smoothing_filter=int(p["filter_size"]),
                    object_width=10, automatic_splines=True, spline_bg_mode="auto", spline_points=5,
                    spline_threshold=2.0, spline_convergence=0.001, spline_maximum_iterations=40,
                    spline_rescale=2.0, rescale_option=p["rescale"])
            else:
                acc = acc.accumulate(small, None)
        used[ch] = n
        if acc is None:  # every image blank: no correction
            funcs[ch] = np.ones(shape, np.float32)
            continue
        out, _dilated, _avg, _mask = acc.finalize()
        out = np.asarray(out, np.float64)
        if p["resize_factor"] is not None and out.shape != shape:  # Resize back (bilinear)
            out = resize(out, shape, order=1, mode="symmetric")
        elif p["resize_factor"] is None and ds > 1:
            out = resize(out, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)
        if not np.all(np.isfinite(out)) or out.min() <= 0:
            funcs[ch] = np.ones(shape, np.float32)  # blank / non-positive average: no correction
        else:
            funcs[ch] = out.astype(np.float32)
    prog(prog.total)
    np.savez_compressed(os.path.join(req["out_dir"], "illum.npz"), **funcs)
    with open(os.path.join(req["out_dir"], "illum.json"), "w") as fh:
        json.dump({"n_images": used, "skipped": skipped, "params": p}, fh, indent=1)
    return {"channels": channels, "n_images": used, "n_skipped": len(skipped)}


# --------------------------------------------------------------------------------------------
# Task: segmentation (nuclei = IdentifyPrimaryObjects, cells = IdentifySecondaryObjects)
# --------------------------------------------------------------------------------------------
def cell_foreground(images: dict, p: dict, blank=()):
    """The cell foreground (binary image) and its threshold; ``(None, nan)`` if there is nothing
    to threshold.

    Each of ``cells_foreground_channels`` (blank ones contribute nothing) → GaussianFilter (σ
    ``cells_pre_smooth_sigma``) → RescaleIntensity (``cells_foreground_percentiles`` → 0, 1) →
    ImageMath Add; then Threshold (global ``cells_threshold_method`` × correction factor,
    unbounded: the composite is not on [0, 1]).
    """
    np = _np()
    from cellprofiler_library.modules import gaussianfilter, threshold

    sigma = float(p["cells_pre_smooth_sigma"])
    pct = p["cells_foreground_percentiles"]
    comb = None
    for ch in p["cells_foreground_channels"]:
        if ch in blank:
            continue
        x = np.asarray(images[ch], np.float64)
        if sigma > 0:
            x = np.asarray(gaussianfilter(x, sigma), np.float64)
        if pct:
            lo, hi = (float(v) for v in np.percentile(x, [float(pct[0]), float(pct[1])]))
            if hi <= lo:
                continue
            x = (x - lo) / (hi - lo)
        comb = x if comb is None else comb + x
    if comb is None or float(comb.max() - comb.min()) <= 0:
        return None, float("nan")
    res = threshold(comb, mask=None, threshold_scope="Global", threshold_method=p["cells_threshold_method"],
                    assign_middle_to_foreground="Foreground",
                    threshold_correction_factor=float(p["cells_threshold_correction_factor"]),
                    threshold_min=float("-inf"), threshold_max=float("inf"),
                    smoothing=float(p["cells_threshold_smoothing_scale"]))
    return np.asarray(res[3], bool), float(res[0])


def segment_site(images: dict, p: dict, blank=()):
    """Segment one site; ``images``: channel -> illumination-corrected float image (nuclei, cell
    and foreground channels); ``blank``: channels whose raw image is constant; ``p``: the
    settings, ``cells_foreground_channels`` resolved (a list).

    Return ``(nuclei, cells, info)``; int32 labels, cells numbered as their nucleus. A blank
    nuclei image, or one whose Otsu contrast is below ``min_contrast``, gives no objects; a blank
    (constant) foreground composite gives cells = nuclei; a blank cell channel propagates on a
    constant image (distance alone).
    """
    np = _np()
    from scipy import ndimage

    dna = images[p["nuclei_channel"]]
    dna_blank = p["nuclei_channel"] in blank
    sigma = float(p["pre_smooth_sigma"]) or float(p["threshold_smoothing_scale"]) / SCALE_PER_SIGMA
    contrast = float("nan") if dna_blank else otsu_contrast(dna, sigma)
    low = not dna_blank and float(p["min_contrast"]) > 0 and not contrast >= float(p["min_contrast"])
    qc = {"contrast": contrast, "low_contrast": low}
    if dna_blank or low:
        z = np.zeros(dna.shape, np.int32)
        return z, z.copy(), {"n": 0, "threshold_nuclei": float("nan"), "threshold_cells": float("nan"), **qc}
    from cellprofiler_library.modules import gaussianfilter, identifyprimaryobjects, identifysecondaryobjects

    if p["nuclei_background"]:
        dna = subtract_background(dna, int(p["nuclei_background"]["block_size"]),
                                  int(p["nuclei_background"]["filter_size"]))
    if float(p["pre_smooth_sigma"]) > 0:
        dna = gaussianfilter(dna, float(p["pre_smooth_sigma"])).astype(np.float32)
    kw = {}
    if p["declump_smoothing_filter_size"] is not None:
        kw["smoothing_filter_size"] = int(p["declump_smoothing_filter_size"])
    if p["maxima_suppression_size"] is not None:
        kw["automatic_suppression"] = False
        kw["maxima_suppression_size"] = float(p["maxima_suppression_size"])
    res = identifyprimaryobjects(
        dna, mask=None, threshold_method=p["threshold_method"], threshold_scope="Global",
        assign_middle_to_foreground="Foreground",
        threshold_smoothing=float(p["threshold_smoothing_scale"]),
        threshold_correction_factor=float(p["threshold_correction_factor"]),
        threshold_min=float(p["threshold_min"]), threshold_max=float(p["threshold_max"]),
        exclude_size=bool(p["exclude_size"]), min_size=int(p["min_diameter"]),
        max_size=int(p["max_diameter"]), exclude_border_objects=bool(p["exclude_border_objects"]),
        unclump_method=p["unclump_method"], watershed_method=p["watershed_method"],
        fill_holes_method=p["fill_holes"], low_res_maxima=bool(p["low_res_maxima"]),
        return_cp_output=True, **kw)
    nuclei, unedited = res[0].astype(np.int32), res[1].astype(np.int32)
    nuc_threshold = float(res[12])
    if nuclei.max() == 0:
        return nuclei, np.zeros_like(nuclei), {"n": 0, "threshold_nuclei": nuc_threshold,
                                               "threshold_cells": float("nan"), **qc}
    if p["cells_threshold_mode"] == "module":
        return _cells_by_module(images, nuclei, unedited, p, blank, nuc_threshold, qc)
    binary, cell_threshold = cell_foreground(images, p, blank)
    if binary is None:  # nothing to threshold: cells = nuclei (as the in-process backend)
        return nuclei, nuclei.copy(), {"n": int(nuclei.max()), "threshold_nuclei": nuc_threshold,
                                       "threshold_cells": cell_threshold, **qc}
    fg = ndimage.binary_fill_holes(binary | (nuclei > 0))
    if p["cells_max_distance"] is not None:
        fg &= ndimage.distance_transform_edt(nuclei == 0) <= float(p["cells_max_distance"])
    cyto = np.asarray(images[p["cells_channel"]], np.float64)
    if p["cells_channel"] in blank:
        cyto = np.zeros(cyto.shape)
    elif float(p["cells_watershed_sigma"]) > 0:
        cyto = np.asarray(gaussianfilter(cyto, float(p["cells_watershed_sigma"])), np.float64)
    if p["cells_enhance_edges"]:  # EnhanceEdges, Sobel
        from cellprofiler_library.modules import enhanceedges

        cyto = np.asarray(enhanceedges(cyto, method="Sobel", direction="All"), np.float64)
    if p["cells_invert"]:  # ImageMath "Invert"
        cyto = 1.0 - cyto
    # the foreground is the mask; a manual threshold at the image minimum keeps all of it
    lo = float(cyto.min())
    sres = identifysecondaryobjects(
        cyto, nuclei, unedited_objects=unedited, mask=fg,
        secondary_object_method=p["cells_method"], threshold_method="Manual",
        threshold_scope="Global", assign_middle_to_foreground="Foreground",
        predefined_threshold=lo, threshold_min=lo, threshold_max=max(lo, float(cyto.max())),
        threshold_smoothing=0.0, threshold_correction_factor=1.0,
        distance_to_dilate=int(p["distance_to_dilate"]), fill_holes=bool(p["cells_fill_holes"]),
        discard_edge=bool(p["discard_edge_cells"]),
        regularization_factor=float(p["regularization_factor"]), return_cp_output=True)
    nuclei_out = np.asarray(sres[5]).astype(np.int32)   # = nuclei unless edge cells were discarded
    cells = np.asarray(sres[6]).astype(np.int32)
    return nuclei_out, cells, {"n": int(nuclei_out.max()), "threshold_nuclei": nuc_threshold,
                               "threshold_cells": cell_threshold, **qc}


def subtract_background(img, block_size: int, filter_size: int):
    """CorrectIlluminationCalculate "Background" (this image only: block minima, Gaussian filter
    of the given size, no rescaling) then CorrectIlluminationApply "Subtract", clipped to [0, 1]."""
    np = _np()
    from cellprofiler_library.modules._correctilluminationapply import correct_illumination_apply
    from cellprofiler_library.modules._correctilluminationcalculate import correctilluminationcalculate

    x = np.asarray(img, np.float64)
    acc = correctilluminationcalculate(
        x.copy(), None, intensity_choice="Background", smoothing_method="Gaussian Filter",
        block_size=int(block_size), dilate_objects=False, object_dilation_radius=1,
        automatic_object_width="Manually", size_of_smoothing_filter=int(filter_size), object_width=10,
        automatic_splines=True, spline_bg_mode="auto", spline_points=5, spline_threshold=2.0,
        spline_convergence=0.001, spline_maximum_iterations=40, spline_rescale=2.0, rescale_option="No")
    background = np.asarray(acc.finalize()[0], np.float64)
    out = correct_illumination_apply(x, background, "Subtract", truncate_low=True, truncate_high=True)
    return np.asarray(out, np.float32)


def filter_border_objects(nuclei, cells):
    """FilterObjects "Image or mask border" on the nuclei, cells following their nucleus:
    edge-touching nuclei dropped, the others renumbered 1..N in their order."""
    np = _np()
    n = int(nuclei.max())
    if n == 0:
        return nuclei, np.zeros_like(cells)
    edge = np.unique(np.concatenate([nuclei[0], nuclei[-1], nuclei[:, 0], nuclei[:, -1]]))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(nuclei)] = True
    keep[edge] = False
    keep[0] = False
    lookup = np.zeros(max(n, int(cells.max())) + 1, np.int64)
    lookup[np.flatnonzero(keep)] = np.arange(1, int(keep.sum()) + 1)
    return lookup[nuclei].astype(np.int32), lookup[cells].astype(np.int32)


def _cells_by_module(images, nuclei, unedited, p, blank, nuc_threshold, qc):
    """IdentifySecondaryObjects with its own threshold on cells_channel (the JUMP set-up), then
    (optionally) FilterObjects on the border."""
    np = _np()
    from cellprofiler_library.modules import identifysecondaryobjects

    cyto = np.asarray(images[p["cells_channel"]], np.float64)
    if p["cells_channel"] in blank:
        cyto = np.zeros(cyto.shape)
    sres = identifysecondaryobjects(
        cyto, nuclei, unedited_objects=unedited, mask=np.ones(cyto.shape, bool),  # the image mask: all
        secondary_object_method=p["cells_method"],
        threshold_method=p["cells_threshold_method"], threshold_scope="Global",
        assign_middle_to_foreground="Foreground", log_transform=bool(p["cells_threshold_log"]),
        threshold_correction_factor=float(p["cells_threshold_correction_factor"]),
        threshold_min=float(p["cells_threshold_min"]), threshold_max=float(p["cells_threshold_max"]),
        threshold_smoothing=float(p["cells_threshold_smoothing_scale"]),
        distance_to_dilate=int(p["distance_to_dilate"]), fill_holes=bool(p["cells_fill_holes"]),
        discard_edge=bool(p["discard_edge_cells"]),
        regularization_factor=float(p["regularization_factor"]), return_cp_output=True)
    cell_threshold = float(np.mean(np.atleast_1d(sres[0])))
    nuclei_out = np.asarray(sres[5]).astype(np.int32)
    cells = np.asarray(sres[6]).astype(np.int32)
    if p["filter_border_after_cells"]:
        nuclei_out, cells = filter_border_objects(nuclei_out, cells)
    return nuclei_out, cells, {"n": int(nuclei_out.max()), "threshold_nuclei": nuc_threshold,
                               "threshold_cells": cell_threshold, **qc}


def _centres_areas(labels, n: int):
    np = _np()
    from scipy import ndimage

    idx = np.arange(1, n + 1)
    if n == 0:
        z = np.zeros(0)
        return z, z, z
    area = ndimage.sum_labels(np.ones(labels.shape), labels, idx)
    yy, xx = np.mgrid[0:labels.shape[0], 0:labels.shape[1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = ndimage.sum_labels(yy, labels, idx) / area
        cx = ndimage.sum_labels(xx, labels, idx) / area
    return cx, cy, area


def task_segment(req: dict) -> dict:
    np = _np()
    p = _merge(SEGMENT_DEFAULTS, req.get("params"), "segment")
    fgc = list(p["cells_foreground_channels"] or
               [c for c in req["channels"] if c != p["nuclei_channel"]] or [p["cells_channel"]])
    p["cells_foreground_channels"] = fgc
    use = list(dict.fromkeys([p["nuclei_channel"], p["cells_channel"], *fgc]))
    illum = load_illum(req.get("illum"), use)
    arrays, rows, info = {}, [], []
    prog = Progress("segment", len(req["sites"]))
    for i, site in enumerate(req["sites"]):
        prog(i)
        images, blank, scale = {}, [], None
        for ch in use:
            img, sc, is_blank = read_channel(site, ch, illum, with_scale=True)
            if scale is None:
                scale = sc
            if images and img.shape != next(iter(images.values())).shape:
                raise WorkerError(f"{ch} image {img.shape} differs in shape from the site's "
                                  f"{use[0]} image {next(iter(images.values())).shape}", site["paths"][ch])
            images[ch] = img
            if is_blank:
                blank.append(ch)
        try:
            nuclei, cells, inf = segment_site(images, p, set(blank))
        except WorkerError:
            raise
        except Exception as err:
            raise WorkerError(f"segmentation failed: {type(err).__name__}: {err}",
                              site["paths"][p["nuclei_channel"]]) from err
        arrays[f"s{i}_nuclei"] = nuclei
        arrays[f"s{i}_cells"] = cells
        n = inf["n"]
        ncx, ncy, nar = _centres_areas(nuclei, n)
        ccx, ccy, car = _centres_areas(cells, n)
        for k in range(n):
            rows.append([i, k + 1, float(ncx[k]), float(ncy[k]), float(nar[k]),
                         float(ccx[k]), float(ccy[k]), float(car[k])])
        info.append({"site": i, **inf, "scale": scale, "blank": blank})
    prog(prog.total)
    np.savez_compressed(os.path.join(req["out_dir"], "labels.npz"), **arrays)
    _write_csv(os.path.join(req["out_dir"], "objects.csv"),
               ["site", "ObjectNumber", "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y",
                "Nuclei_AreaShape_Area", "Cells_Location_Center_X", "Cells_Location_Center_Y",
                "Cells_AreaShape_Area"], rows)
    return {"sites": info, "n_objects": len(rows), "params": p}


# --------------------------------------------------------------------------------------------
# Task: measurement (CellProfiler Measure* modules)
# --------------------------------------------------------------------------------------------
def _object_measurements(lm, object_name: str) -> dict:
    """Per-object arrays of a LibraryMeasurements for one object set."""
    return dict(lm.objects.get(object_name, {}))


def measure_site(images: dict, labels: dict, p: dict) -> dict:
    """Measure one site. ``images``: channel -> float32 [0,1]; ``labels``: compartment -> int32.

    Returns ``{column: array(n)}`` with CellProfiler names ``{Compartment}_{Category}_...``.
    All compartments share object numbers 1..n (n = number of nuclei).
    """
    np = _np()
    from cellprofiler_library.modules import measureobjectsizeshape

    cats = set(p["categories"])
    n = int(labels["Nuclei"].max()) if labels["Nuclei"].size else 0
    out: dict = {}

    def put(comp, name, values):
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape[0] != n:  # objects absent from a compartment's label image → NaN
            full = np.full(n, np.nan)
            full[: min(n, v.shape[0])] = v[:n]
            v = full
        out[f"{comp}_{name}"] = v

    chans = p["channels"] or list(images)
    clock = p.setdefault("_seconds", {})

    def tick(cat: str, t0: float) -> None:
        clock[cat] = clock.get(cat, 0.0) + time.perf_counter() - t0

    for comp in p["compartments"]:
        lab = labels[comp]
        present = np.zeros(n + 1, bool)
        present[np.unique(lab)] = True
        if n and not present[1:].all():
            raise WorkerError(f"{comp} labels lack object number(s) "
                              f"{(np.flatnonzero(~present[1:]) + 1)[:10].tolist()} that the nuclei have "
                              "(every compartment must hold objects 1..N)")
        if "AreaShape" in cats:
            t0 = time.perf_counter()
            lm = measureobjectsizeshape(lab[None, None, None, None], comp,
                                        calculate_advanced=bool(p["advanced_shape"]),
                                        calculate_zernikes=bool(p["zernike"]))
            for name, v in _object_measurements(lm, comp).items():
                put(comp, name, v)
            tick("AreaShape", t0)
        if "Intensity" in cats:
            t0 = time.perf_counter()
            from cellprofiler_library.modules._measureobjectintensity import measure_object_intensity

            for ch in chans:
                lm = measure_object_intensity(images[ch], ch, comp, None,
                                              [(lab, np.arange(1, n + 1, dtype=np.int32))], n, 2)
                for name, v in _object_measurements(lm, comp).items():
                    if name.startswith("Location_") and not p["keep_location"]:
                        continue
                    put(comp, name, v)
            tick("Intensity", t0)
        if "Texture" in cats:
            t0 = time.perf_counter()
            from cellprofiler_library.modules._measuretexture import measure_object_texture

            for ch in chans:
                for scale in p["texture_scales"]:
                    lm = measure_object_texture(comp, lab, ch, images[ch], None,
                                                int(p["texture_gray_levels"]),
                                                np.arange(1, n + 1, dtype=np.int32), int(scale), False)
                    for name, v in _object_measurements(lm, comp).items():
                        put(comp, name, v)
            tick("Texture", t0)
        if "RadialDistribution" in cats:
            t0 = time.perf_counter()
            from cellprofiler_library.modules._measureobjectintensitydistribution import (
                measureobjectintensitydistribution,
            )

            cache = None
            for ch in chans:
                lm, cache = measureobjectintensitydistribution(
                    images[ch], ch, lab, comp, np.arange(1, n + 1, dtype=np.int32), "These objects",
                    int(p["radial_bins"]), True, int(p["radial_maximum_radius"]),
                    cached_center_distances=cache)
                for name, v in _object_measurements(lm, comp).items():
                    if "_BinNumber_" in name:  # the bin index itself (constant per bin): no feature
                        continue
                    put(comp, name, v)
            tick("RadialDistribution", t0)
        if "Correlation" in cats:
            t0 = time.perf_counter()
            from cellprofiler_library.modules._measurecolocalization import run_image_pair_objects

            types = list(p["correlation_types"])
            thr = float(p["correlation_threshold"])
            # as CellProfiler's MeasureColocalization module: the pixels inside objects, 1-D
            inside = lab > 0
            flat = lab[inside]
            for a in range(len(chans)):
                for b in range(a + 1, len(chans)):
                    p1, p2 = images[chans[a]][inside], images[chans[b]][inside]
                    kw = {}
                    if "Costes" in types:
                        kw = {"im1_costes_pixels": p1, "im2_costes_pixels": p2,
                              "im1_scale": 65535, "im2_scale": 65535}
                    lm = run_image_pair_objects(p1, p2, flat, n, chans[a], chans[b], comp,
                                                im1_thr_percentage=thr, im2_thr_percentage=thr,
                                                measurement_types=types, **kw)
                    for name, v in _object_measurements(lm, comp).items():
                        put(comp, name, v)
            tick("Correlation", t0)
        if "Neighbors" in cats:
            t0 = time.perf_counter()
            from cellprofiler_library.modules._measureobjectneighbors import measure_object_neighbors

            has = np.zeros(n, bool)
            has[np.unique(lab[lab > 0]) - 1] = True
            sets = (p["neighbors"] if p["neighbors"] is not None
                    else [[c, "Within a specified distance", p["neighbors_distance"]] for c in p["compartments"]])
            for ncomp, method, dist in sets:
                if ncomp != comp:
                    continue
                lm = measure_object_neighbors(lab, lab, lab, lab, comp, comp, True, 2, int(dist), method,
                                              has, n)
                for name, v in _object_measurements(lm, comp).items():
                    if "ObjectNumber" in name:
                        continue
                    put(comp, name, v)
            tick("Neighbors", t0)
    if "Granularity" in cats:
        t0 = time.perf_counter()
        from cellprofiler_library.functions.measurement import ObjectRecord
        from cellprofiler_library.modules._measuregranularity import measure_granularity

        for ch in chans:
            mask = np.ones(images[ch].shape, bool)
            recs = [ObjectRecord(c, labels[c], mask, images[ch]) for c in p["compartments"]]
            lm = measure_granularity(ch, images[ch], mask, float(p["granularity_subsample_size"]),
                                     float(p["granularity_image_sample_size"]),
                                     int(p["granularity_element_size"]), recs,
                                     int(p["granularity_spectrum_length"]))
            for comp in p["compartments"]:
                for name, v in _object_measurements(lm, comp).items():
                    put(comp, name, v)
        tick("Granularity", t0)
    return out


def task_measure(req: dict) -> dict:
    np = _np()
    from cellprofiler_library.modules import identifytertiaryobjects

    p = _merge(MEASURE_DEFAULTS, req.get("params"), "measure")
    chans = p["channels"] or req["channels"]
    bad = [c for c in p["compartments"] if c not in ("Nuclei", "Cells", "Cytoplasm")]
    if bad:
        raise WorkerError(f"measure: unknown compartment(s) {bad} (Nuclei, Cells, Cytoplasm)")
    known = {"AreaShape", "Intensity", "Texture", "Granularity", "RadialDistribution",
             "Correlation", "Neighbors"}
    bad = sorted(set(p["categories"]) - known)
    if bad:
        raise WorkerError(f"measure: unknown categor(y/ies) {bad}; known {sorted(known)}")
    p["channels"] = list(chans)
    illum = load_illum(req.get("illum"), chans)
    lpath = req.get("labels")
    if not lpath or not os.path.exists(lpath):
        raise WorkerError("label arrays not found", lpath)
    header, rows = None, []
    prog = Progress("measure", len(req["sites"]))
    with np.load(lpath, allow_pickle=False) as z:
        for i, site in enumerate(req["sites"]):
            prog(i)
            try:
                nuc, cel = z[f"s{i}_nuclei"].astype(np.int32), z[f"s{i}_cells"].astype(np.int32)
            except KeyError:
                raise WorkerError(f"no labels for site {i} (s{i}_nuclei / s{i}_cells)", lpath) from None
            images = {ch: read_channel(site, ch, illum) for ch in chans}
            shp = next(iter(images.values())).shape
            if nuc.shape != shp or cel.shape != nuc.shape:
                raise WorkerError(f"site {i}: label shape {nuc.shape}/{cel.shape} differs from the image "
                                  f"shape {shp}", lpath)
            labels = {"Nuclei": nuc, "Cells": cel}
            if "Cytoplasm" in p["compartments"]:
                labels["Cytoplasm"] = (identifytertiaryobjects(nuc, cel, bool(p["shrink_primary"]))
                                       .astype(np.int32) if nuc.max() > 0 else np.zeros_like(nuc))
            try:
                feats = measure_site(images, labels, p)
            except WorkerError as err:
                err.file = err.file or lpath
                raise
            except Exception as err:
                raise WorkerError(f"measurement failed on site {i}: {type(err).__name__}: {err}",
                                  site["paths"][chans[0]]) from err
            n = int(nuc.max())
            if n == 0:
                continue
            names = sorted(feats)
            if header is None:
                header = names
            elif names != header:
                raise WorkerError(f"site {i}: feature set differs from the first site's "
                                  f"({sorted(set(names) ^ set(header))[:5]})")
            mat = np.column_stack([feats[c] for c in header])
            for k in range(n):
                rows.append([i, k + 1, *[float(x) for x in mat[k]]])
    if header is None:  # no object anywhere: header from an empty measurement
        z0 = {c: np.zeros((8, 8), np.int32) for c in ("Nuclei", "Cells", "Cytoplasm")}
        z0["Nuclei"][2:5, 2:5] = 1
        z0["Cells"][1:6, 1:6] = 1
        z0["Cytoplasm"] = np.where(z0["Nuclei"] > 0, 0, z0["Cells"]).astype(np.int32)
        header = sorted(measure_site({ch: np.full((8, 8), 0.5, np.float32) for ch in chans}, z0, p))
    prog(prog.total)
    _write_csv(os.path.join(req["out_dir"], "features.csv"), ["site", "ObjectNumber", *header], rows)
    secs = p.pop("_seconds", {})
    return {"n_objects": len(rows), "n_features": len(header), "params": p,
            "seconds_by_category": {k: round(v, 4) for k, v in secs.items()}}


TASKS = {"illum": task_illum, "segment": task_segment, "measure": task_measure}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[1] == "--version":
        print(json.dumps(versions()))
        return 0
    if len(argv) != 2:
        print("usage: cp_worker.py REQUEST.json | --version", file=sys.stderr)
        return 64
    req_path = argv[1]
    out_dir = None
    t0 = time.time()
    try:
        try:
            with open(req_path) as fh:
                req = json.load(fh)
        except Exception as err:
            raise WorkerError(f"cannot read request: {err}", req_path) from err
        out_dir = req.get("out_dir") or os.path.dirname(os.path.abspath(req_path))
        req["out_dir"] = out_dir
        os.makedirs(out_dir, exist_ok=True)
        if req.get("protocol") != PROTOCOL:
            raise WorkerError(f"request protocol {req.get('protocol')!r}, worker speaks {PROTOCOL}",
                              req_path)
        task = TASKS.get(req.get("task"))
        if task is None:
            raise WorkerError(f"unknown task {req.get('task')!r}; known {sorted(TASKS)}", req_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = task(req)
        summary.update({"task": req["task"], "seconds": round(time.time() - t0, 3),
                        "versions": versions()})
        with open(os.path.join(out_dir, "result.json"), "w") as fh:
            json.dump(summary, fh, indent=1, default=str)
        return 0
    except BaseException as err:  # report everything, including KeyboardInterrupt, then fail
        info = {"error": type(err).__name__, "message": str(err),
                "file": getattr(err, "file", None), "traceback": traceback.format_exc()}
        print(f"cp_worker: {info['error']}: {info['message']}"
              + (f" [file: {info['file']}]" if info["file"] else ""), file=sys.stderr)
        print(info["traceback"], file=sys.stderr)
        target = out_dir or os.path.dirname(os.path.abspath(req_path))
        try:
            with open(os.path.join(target, "error.json"), "w") as fh:
                json.dump(info, fh, indent=1, default=str)
        except OSError:
            pass
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
