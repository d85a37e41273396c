"""Retrospective illumination correction (Singh et al. 2014; DeepProfiler's implementation).

Per plate × channel:

1. average all (non-blank) images of the plate;
2. downsample the average by ``downsample`` (block mean; DeepProfiler: ×4);
3. median-filter it with a ``median_size`` window (DeepProfiler: 24 px after ×4 downsampling,
   i.e. ~96 full-resolution px, for its ~1000-2000 px fields). Small fields (narrower than
   ``median_reference_width``, 512 px) get a window scaled by ``width / median_reference_width``:
   a 256² simulated field gets 24·256/512 = 12 → 13 px (~52 full-resolution px, about one cell
   diameter, 20 % of the field). The window of a 96 px (full-resolution) filter would cover 40 %
   of a 256² field and flatten the illumination peak; on our synthetic 96-site plates the scaled
   window gives r ≥ 0.95 against the true field where the unscaled one leaves more bias and the
   1080-px-referenced one (7 px) more noise. Fields ≥ ``median_reference_width`` use
   ``median_size`` unchanged (DeepProfiler). The window is made odd and ≥ 3;
4. upsample back to full resolution (bilinear);
5. robust minimum: ``m = percentile(f, robust_min_percentile)`` (2 %), ``f = max(f, m) / m`` so
   every value is ≥ 1.

Images are corrected by division (:func:`morphobench.images.io.read_site` does it on the fly).

``method="cellprofiler"`` (the ``jump`` preset) follows the JUMP illumination pipeline instead
(shared/JUMP_PIPELINE.md §1; CellProfiler's Resize and CorrectIlluminationCalculate):

1. each image on CellProfiler's [0, 1] scale (counts / ``intensity_scale``) is shrunk by
   ``resize_factor`` (0.2; ``skimage.transform.resize``, bilinear, symmetric edges, the default
   anti-aliasing Gaussian) — resizing is linear, so the plate mean is shrunk once;
2. the shrunk plate mean ("All: across cycles", "Regular" intensities) is median-filtered as
   CellProfiler does: × 65535 → uint16 (truncating), a rank median over a disk of radius
   ``max(1, int(filter_size / 2.35 + 0.5))`` (9 px for JUMP's size 20), ÷ 65535;
3. rescaled by the robust minimum: the value at index ``int(0.02 · n)`` of the sorted positive
   pixels; smaller values are raised to it, then everything is divided by it (function ≥ 1);
4. enlarged back to the image's shape (bilinear, as JUMP's Resize × 5).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from morphobench.data.tables import sheet_channels
from morphobench.images.io import IllumFunctions, blank_channels, read_site, site_label
from morphobench.io import MorphobenchError, atomic_path, progress, write_parquet

log = logging.getLogger("morphobench.images.illum")


@dataclass(frozen=True)
class IllumParams:
    """Illumination-correction parameters (defaults follow DeepProfiler)."""

    #: downsampling factor of the plate average before median filtering
    downsample: int = 4
    #: median filter window (pixels of the downsampled image)
    median_size: int = 24
    #: fields narrower than this get ``median_size × width / median_reference_width`` (None: never scale)
    median_reference_width: int | None = 512
    #: robust minimum percentile the function is divided by (function ≥ 1 afterwards)
    robust_min_percentile: float = 2.0
    #: channels to compute (empty: every channel of the sheet)
    channels: tuple[str, ...] = ()
    #: "deepprofiler" (steps 1-5 above) or "cellprofiler" (the JUMP pipeline, see the module doc)
    method: str = "deepprofiler"
    #: cellprofiler: Resize factor before the calculation (JUMP: 0.2)
    resize_factor: float = 0.2
    #: cellprofiler: CorrectIlluminationCalculate "smoothing filter size" (JUMP: 20)
    filter_size: int = 20
    #: cellprofiler: file counts per CellProfiler intensity unit (65535 for 16-bit images)
    intensity_scale: float = 65535.0


#: named parameter sets (``images.illum: {preset: NAME}``); ``jump`` = the JUMP pipeline
PRESETS: dict[str, dict] = {
    "default": {},
    "jump": {"method": "cellprofiler", "resize_factor": 0.2, "filter_size": 20, "robust_min_percentile": 2.0},
}


def illum_params(params=None) -> IllumParams:
    """:class:`IllumParams` from a dict / JSON string whose optional ``preset`` key names a
    :data:`PRESETS` entry (applied first, other keys override it)."""
    from morphobench.images.io import params_from

    return params_from(IllumParams, params, presets=PRESETS)


def effective_median_size(width: int, params: IllumParams) -> int:
    """Median window actually used for an image of ``width`` pixels (odd, ≥ 3)."""
    size = float(params.median_size)
    if params.median_reference_width and width < params.median_reference_width:
        size *= width / float(params.median_reference_width)
    size = max(3, int(round(size)))
    return size if size % 2 == 1 else size + 1


def _downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by ``factor`` (edge blocks are averaged over the pixels they have)."""
    if factor <= 1:
        return img.astype(np.float64)
    h, w = img.shape
    hh, ww = -(-h // factor), -(-w // factor)
    padded = np.zeros((hh * factor, ww * factor), np.float64)
    count = np.zeros_like(padded)
    padded[:h, :w] = img
    count[:h, :w] = 1
    s = padded.reshape(hh, factor, ww, factor).sum(axis=(1, 3))
    c = count.reshape(hh, factor, ww, factor).sum(axis=(1, 3))
    return s / c


def _upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    if small.shape == tuple(shape):
        return small
    return resize(small, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)


def cp_median_radius(filter_size: float) -> int:
    """Disk radius of CellProfiler's illumination median filter of "smoothing filter size" s."""
    return max(1, int(filter_size / 2.35 + 0.5))


def cp_illum_function(mean_image: np.ndarray, params: IllumParams) -> np.ndarray:
    """The JUMP pipeline's illumination function (float32, ≥ 1) of a plate-average image in
    file counts (see the module doc, ``method="cellprofiler"``)."""
    from centrosome.cpmorphology import strel_disk
    from skimage.filters import median
    from skimage.transform import resize

    x = np.asarray(mean_image, np.float64) / float(params.intensity_scale)
    shape = x.shape
    small_shape = tuple(int(v) for v in np.round(np.array(shape, float) * params.resize_factor))
    if min(small_shape) < 1:
        raise MorphobenchError(f"illumination resize_factor {params.resize_factor} shrinks a {shape} "
                               "image to nothing")
    small = resize(x, small_shape, order=1, mode="symmetric") if small_shape != shape else x
    u16 = (small * 65535).astype(np.uint16)
    with warnings.catch_warnings():  # "bad rank filter performance" on 16-bit data: expected
        warnings.simplefilter("ignore", UserWarning)
        smooth = median(u16, strel_disk(cp_median_radius(params.filter_size)).astype(bool),
                        behavior="rank") / 65535.0
    pos = np.sort(smooth[smooth > 0])
    if pos.size == 0:
        return np.ones(shape, np.float32)
    robust_min = pos[int(pos.size * params.robust_min_percentile / 100.0)]
    f = np.maximum(smooth, robust_min) / robust_min
    if f.shape != shape:
        f = resize(f, shape, order=1, mode="symmetric")
    return np.maximum(f, 1.0).astype(np.float32)


def illum_function(mean_image: np.ndarray, params: IllumParams = IllumParams()) -> np.ndarray:
    """Illumination function (float32, ≥ 1) from a plate-average image of one channel."""
    if params.method == "cellprofiler":
        return cp_illum_function(mean_image, params)
    if params.method != "deepprofiler":
        raise MorphobenchError(f"illumination method {params.method!r}: use 'deepprofiler' or 'cellprofiler'")
    mean_image = np.asarray(mean_image, dtype=np.float64)
    small = _downsample(mean_image, params.downsample)
    size = effective_median_size(mean_image.shape[1], params)
    size = min(size, max(3, (min(small.shape) // 2) * 2 - 1))  # never larger than the image
    smooth = ndimage.median_filter(small, size=size, mode="reflect")
    full = _upsample(smooth, mean_image.shape)
    robust_min = float(np.percentile(full, params.robust_min_percentile))
    if not np.isfinite(robust_min) or robust_min <= 0:
        # blank / non-positive plate average: no correction (function 1 everywhere)
        return np.ones(mean_image.shape, np.float32)
    full = np.maximum(full, robust_min) / robust_min
    return full.astype(np.float32)


def plate_mean_images(rows: pd.DataFrame, channels: Sequence[str], *, root=None,
                      desc: str = "illum: averaging") -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Average the sites of one plate per channel, skipping blank planes.

    Returns ``(mean (C,H,W) float64, n_used per channel, qc records of skipped planes)``.
    """
    acc = None
    n = np.zeros(len(channels), np.int64)
    qc: list[dict] = []
    for _, row in progress(rows.iterrows(), total=len(rows), desc=desc):
        img = read_site(row, channels, root=root)
        if acc is None:
            acc = np.zeros(img.shape, np.float64)
        elif img.shape != acc.shape:
            raise MorphobenchError(
                f"site {site_label(row)}: shape {img.shape[1:]} differs from the plate's other "
                f"sites {acc.shape[1:]} (one illumination function per plate needs equal shapes)")
        blank = set(blank_channels(img, channels))
        for i, ch in enumerate(channels):
            if ch in blank:
                qc.append({"site": site_label(row), "channel": ch, "issue": "blank image"})
                continue
            acc[i] += img[i]
            n[i] += 1
    if acc is None:
        raise MorphobenchError("no sites to average")
    mean = acc / np.maximum(n, 1)[:, None, None]
    return mean, n, qc


def compute_plate_illum(rows: pd.DataFrame, params: IllumParams = IllumParams(), *,
                        root=None) -> IllumFunctions:
    """Illumination functions of one plate (rows = its image-sheet rows)."""
    channels = list(params.channels) or sheet_channels(rows)
    plate = str(rows["Metadata_Plate"].iloc[0]) if len(rows) else ""
    mean, n, qc = plate_mean_images(rows, channels, root=root)
    for rec in qc:
        log.warning("illum: plate %s site %s channel %s: %s (skipped)", plate, rec["site"],
                    rec["channel"], rec["issue"])
    funcs = {}
    for i, ch in enumerate(channels):
        if n[i] == 0:
            log.warning("illum: plate %s channel %s: every image blank; function = 1", plate, ch)
            funcs[ch] = np.ones(mean.shape[1:], np.float32)
        else:
            funcs[ch] = illum_function(mean[i], params)
    meta = {"params": asdict(params), "n_images": {ch: int(k) for ch, k in zip(channels, n, strict=True)},
            "median_size_used": (effective_median_size(mean.shape[2], params) if params.method != "cellprofiler"
                                 else 2 * cp_median_radius(params.filter_size) + 1), "qc": qc}
    return IllumFunctions(funcs, plate=plate, meta=meta)


def flatfield_cv(mean_image: np.ndarray, params: IllumParams = IllumParams()) -> float:
    """Coefficient of variation of a plate-average flat field (downsampled + median-smoothed,
    as in :func:`illum_function` but without the rescaling); ~0 for a flat illumination."""
    small = _downsample(np.asarray(mean_image, np.float64), params.downsample)
    size = effective_median_size(mean_image.shape[1], params)
    size = min(size, max(3, (min(small.shape) // 2) * 2 - 1))
    smooth = ndimage.median_filter(small, size=size, mode="reflect")
    return float(smooth.std() / smooth.mean())


def save_illum_png(funcs: IllumFunctions, path: str | os.PathLike) -> Path:
    """One panel per channel with its colour bar; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chans = funcs.channels
    fig, axes = plt.subplots(1, len(chans), figsize=(3.2 * len(chans), 3.0), squeeze=False)
    for ax, ch in zip(axes[0], chans, strict=True):
        im = ax.imshow(funcs[ch], cmap="viridis")
        ax.set_title(f"{ch} (max {funcs[ch].max():.2f})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Illumination functions, plate {funcs.plate}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def run_illum(rows: pd.DataFrame, out: str | os.PathLike, params: IllumParams = IllumParams(), *,
              png: str | os.PathLike | None = None, root=None) -> IllumFunctions:
    """Compute one plate's functions and write ``out`` (.npz) and optionally a PNG."""
    funcs = compute_plate_illum(rows, params, root=root)
    funcs.save(out)
    if png:
        save_illum_png(funcs, png)
    return funcs


def materialize_plate(rows: pd.DataFrame, illum: IllumFunctions, out_dir: str | os.PathLike,
                      out_sheet: str | os.PathLike, *, root=None) -> pd.DataFrame:
    """Write illumination-corrected copies of one plate's images (optional; downstream stages
    apply the functions on the fly and do not need them).

    Each image is divided by its channel's function (≥ 1, so values only shrink), rounded and
    written as 16-bit TIFF with its original file name under ``out_dir``; the returned (and
    written) image sheet points at the copies. Written atomically: a failure leaves neither the
    folder nor the sheet.
    """
    import tifffile

    from morphobench.data.tables import filename_col, pathname_col
    from morphobench.images.io import site_paths

    channels = [c for c in sheet_channels(rows) if c in illum]
    missing = [c for c in sheet_channels(rows) if c not in illum]
    if missing:
        raise MorphobenchError(f"illumination functions lack channel(s) {missing} of the image sheet")
    out_dir = Path(out_dir)
    sheet = rows.copy()
    with atomic_path(out_dir, is_dir=True) as tmp:
        for i, (_, row) in enumerate(progress(rows.iterrows(), total=len(rows), desc="apply illum")):
            img = read_site(row, channels, illum=illum, root=root)
            for c, (ch, src) in enumerate(zip(channels, site_paths(row, channels, root), strict=True)):
                name = Path(src).name
                if Path(src).suffix.lower() not in (".tif", ".tiff"):
                    name = Path(src).stem + ".tiff"
                if (tmp / name).exists():
                    raise MorphobenchError(f"materializing plate images: two images are named {name} "
                                           f"(second: {src}); corrected copies need unique file names")
                plane = np.clip(np.rint(img[c]), 0, 65535).astype(np.uint16)
                tifffile.imwrite(tmp / name, plane, compression=None, metadata=None)
                sheet.iloc[i, sheet.columns.get_loc(filename_col(ch))] = name
                sheet.iloc[i, sheet.columns.get_loc(pathname_col(ch))] = str(out_dir)
    write_parquet(sheet, out_sheet)
    return sheet
