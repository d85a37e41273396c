"""Parity of the two image backends: the same measurement, the same objects.

Two questions, each answered on real images that pinned packages ship and on synthetic sites:

- **measurements** (:func:`feature_parity`): given the SAME label image, do the in-process
  features (:mod:`morphobench.images.features`) and CellProfiler's own measurement modules
  (:mod:`morphobench.images.cp_backend`) agree? Per feature group, the Pearson r across objects of
  every shared feature, summarised by the group's median (features constant in both tables —
  e.g. Euler numbers of convex objects — have no r and are compared for equality instead), and the
  count of features equal to 1e-6 relative;
- **segmentation** (:func:`segmentation_parity`): with the same settings, do both backends find
  the same objects? Object counts and the IoU of one-to-one matched objects (IoU > 0.5).

Real images (:func:`real_sites`): StarDist's ``img2d`` (real nuclei, with its real instance masks
``mask2d``; ``stardist==0.9.2``, fetched into ``resources/stardist/``), mahotas' ``nuclear.png``
(real DNA-stained nuclei, shipped with ``mahotas==1.4.19``, a cp-measure dependency) and
scikit-image's ``ihc.png`` (a real 3-channel immunohistochemistry image, ``scikit-image==0.26.0``).
They are written as 16-bit TIFF sites of one plate with an image sheet, as a screen would be.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from morphobench.data.tables import filename_col, pathname_col
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.images.parity")

ID_COLS = ("Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_Site",
           "ImageNumber", "ObjectNumber")
#: features that are positions or angles (not morphology): compared for equality only
POSITIONAL = ("_Center_", "_BoundingBox", "_Location_", "_Orientation", "AngleBetweenNeighbors",
              "ZernikePhase")


# --------------------------------------------------------------------------------------------
# Real images shipped by pinned packages
# --------------------------------------------------------------------------------------------
def _package_file(package: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MorphobenchError(f"package {package!r} is not installed (it ships the real test image "
                               f"{'/'.join(parts)})")
    p = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not p.exists():
        raise MorphobenchError(f"real test image not found: {p} (package {package} incomplete?)")
    return p


def stardist_image(resources: str | os.PathLike = "resources") -> tuple[np.ndarray, np.ndarray]:
    """StarDist's real nuclei image ``img2d`` (uint16) and its instance masks ``mask2d``."""
    import tifffile

    d = Path(resources) / "stardist"
    img, mask = d / "img2d.tif", d / "mask2d.tif"
    for p in (img, mask):
        if not p.exists():
            raise MorphobenchError(f"real test image not found: {p}; fetch the resources first "
                                   "(snakemake --cores 1 resources/stardist/img2d.tif)")
    return tifffile.imread(img), tifffile.imread(mask).astype(np.int32)


def mahotas_nuclei() -> np.ndarray:
    """mahotas' ``nuclear.png``: real DNA-stained nuclei (8-bit grey stored as RGB)."""
    import imageio.v3 as iio

    return np.asarray(iio.imread(_package_file("mahotas", "demos", "data", "nuclear.png")))[..., 0]


def ihc_image() -> np.ndarray:
    """scikit-image's ``ihc.png``: a real 3-channel (RGB) immunohistochemistry image, (3, H, W)."""
    import imageio.v3 as iio

    return np.moveaxis(np.asarray(iio.imread(_package_file("skimage", "data", "ihc.png")))[..., :3], -1, 0)


def _to16(x: np.ndarray) -> np.ndarray:
    """Stretch an image's own range onto 16 bits (integer factor: values stay the image's)."""
    x = np.asarray(x)
    k = max(1, 65535 // max(1, int(x.max())))
    return (x.astype(np.uint32) * k).astype(np.uint16)


def real_site_images(resources: str | os.PathLike = "resources", size: int = 512
                     ) -> dict[str, dict[str, np.ndarray]]:
    """Real multi-channel sites of ``size``² (channel → uint16 image), Cell Painting channel names.

    - ``stardist``: DNA = ``img2d`` (512²); RNA = ``img2d`` smoothed over 4 px (the stain's diffuse
      share around the nuclei, so the RNA channel has real structure where the cells are);
    - ``nuclear_1`` … ``nuclear_4``: the 2 × 2 tiles of the top-left 1024² of mahotas' nuclei,
      DNA = the image, RNA = the same smoothed over 4 px;
    - ``ihc``: DNA = inverted red (haematoxylin-stained nuclei absorb red), RNA = inverted green,
      AGP = inverted blue — the three real planes of scikit-image's IHC image (512²).

    Every site has DNA, RNA and AGP (AGP = RNA where the image has no third plane).
    """
    from scipy import ndimage

    def two(x):
        x = np.asarray(x)
        smooth = ndimage.gaussian_filter(x.astype(np.float64), 4)
        rna = _to16(smooth)
        return {"DNA": _to16(x), "RNA": rna, "AGP": rna}

    out: dict[str, dict[str, np.ndarray]] = {}
    img, _ = stardist_image(resources)
    out["stardist"] = two(img[:size, :size])
    nuc = mahotas_nuclei()
    for k, (y, x) in enumerate(((0, 0), (0, size), (size, 0), (size, size)), start=1):
        out[f"nuclear_{k}"] = two(nuc[y:y + size, x:x + size])
    rgb = ihc_image()[:, :size, :size]
    out["ihc"] = {"DNA": _to16(255 - rgb[0]), "RNA": _to16(255 - rgb[1]), "AGP": _to16(255 - rgb[2])}
    for name, planes in out.items():
        if any(p.shape != (size, size) for p in planes.values()):
            raise MorphobenchError(f"real site {name}: not {size}² ({[p.shape for p in planes.values()]})")
    return out


def write_sites(root: str | os.PathLike, sites: dict[str, dict[str, np.ndarray]], *,
                plate: str = "REAL", channels: Sequence[str] | None = None) -> pd.DataFrame:
    """Write sites (name → channel → 2-D array) as 16-bit TIFFs with an image sheet; one well per
    site (its name), site 1. ``channels``: the sheet's channels (default: the first site's)."""
    import tifffile

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    channels = list(channels or next(iter(sites.values())))
    rows = []
    for name, planes in sites.items():
        row = {"Metadata_Source": "real", "Metadata_Batch": "packages", "Metadata_Plate": plate,
               "Metadata_Well": name, "Metadata_Site": 1}
        for ch in channels:
            if ch not in planes:
                raise MorphobenchError(f"site {name} has no channel {ch} (has {sorted(planes)})")
            fn = f"{name}_{ch}.tif"
            tifffile.imwrite(root / fn, np.asarray(planes[ch]).astype(np.uint16), compression="zlib")
            row[filename_col(ch)] = fn
            row[pathname_col(ch)] = str(root)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Comparing feature tables
# --------------------------------------------------------------------------------------------
def _group(col: str) -> str:
    from morphobench.images.features import feature_group

    return feature_group(col)


def feature_parity(a: pd.DataFrame, b: pd.DataFrame, *, rtol: float = 1e-5, atol: float = 1e-6,
                   exclude: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-feature and per-group agreement of two object-level feature tables (same objects).

    Rows are matched on ``ImageNumber, ObjectNumber``. For each shared numeric feature (not an
    id, not matching ``exclude``): the Pearson r across objects with a finite value in both, and
    whether the values are equal (``|a − b| ≤ rtol·max(|a|, |b|) + atol``, NaN = NaN; the
    defaults absorb CellProfiler's float32 images). A feature
    constant in both tables has no r: it counts as r = 1 when equal, else r = 0.

    Returns ``(features, groups)``: ``features`` one row per feature (``feature, group, n, r,
    equal, max_abs_diff``); ``groups`` one row per group (``group, n_features, median_r, min_r,
    n_equal, frac_r_ge_0.95``).
    """
    import re

    key = ["ImageNumber", "ObjectNumber"]
    for name, t in (("first", a), ("second", b)):
        missing = [k for k in key if k not in t.columns]
        if missing:
            raise MorphobenchError(f"feature_parity: {name} table lacks {missing}")
    m = a.merge(b, on=key, suffixes=("__a", "__b"), how="inner", validate="one_to_one")
    if len(m) < len(a) or len(m) < len(b):
        log.warning("feature_parity: %d / %d / %d objects in common", len(m), len(a), len(b))
    shared = [c for c in a.columns if c in b.columns and c not in ID_COLS and not c.startswith("Metadata_")]
    pat = re.compile("|".join(map(re.escape, exclude))) if exclude else None
    rows = []
    for c in shared:
        if pat is not None and pat.search(c):
            continue
        x = pd.to_numeric(m[f"{c}__a"], errors="coerce").to_numpy(np.float64)
        y = pd.to_numeric(m[f"{c}__b"], errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        both_nan = np.isnan(x) & np.isnan(y)
        close = np.abs(x - y) <= rtol * np.maximum(np.abs(x), np.abs(y)) + atol
        equal = bool(np.all(close | both_nan))
        xs, ys = x[ok], y[ok]
        if ok.sum() >= 3 and xs.std() > 0 and ys.std() > 0:
            r = float(np.corrcoef(xs, ys)[0, 1])
        elif ok.sum() >= 1 and (xs.std() == 0 or ys.std() == 0):
            r = 1.0 if equal or (np.ptp(xs) == 0 and np.ptp(ys) == 0 and np.allclose(xs, ys, rtol=1e-4)) else 0.0
        else:
            r = float("nan")
        diff = float(np.nanmax(np.abs(x - y))) if ok.any() else float("nan")
        rows.append({"feature": c, "group": _group(c), "n": int(ok.sum()), "r": r, "equal": equal,
                     "max_abs_diff": diff})
    feats = pd.DataFrame(rows, columns=["feature", "group", "n", "r", "equal", "max_abs_diff"])
    groups = (feats.groupby("group", sort=True)
              .agg(n_features=("feature", "size"), median_r=("r", "median"), min_r=("r", "min"),
                   n_equal=("equal", "sum"), frac_r_ge_095=("r", lambda r: float((r >= 0.95).mean())))
              .reset_index())
    return feats, groups


# --------------------------------------------------------------------------------------------
# Comparing segmentations
# --------------------------------------------------------------------------------------------
def match_objects(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of objects of two label images with IoU > 0.5 (one-to-one by construction):
    ``(labels in a, labels in b, IoU)``."""
    a, b = np.asarray(a).astype(np.int64), np.asarray(b).astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a, area_b = np.bincount(a.ravel()), np.bincount(b.ravel())
    iou = inter / (area_a[pairs[0]] + area_b[pairs[1]] - inter)
    ok = iou > 0.5
    return pairs[0][ok], pairs[1][ok], iou[ok]


def segmentation_parity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Agreement of two label images of one site: counts, their relative difference (vs. ``b``),
    matched objects, median / mean IoU of the matches and the fraction of ``b`` matched."""
    na = int(len(np.unique(a[a > 0])))
    nb = int(len(np.unique(b[b > 0])))
    la, lb, iou = match_objects(a, b)
    return {"n_a": na, "n_b": nb, "count_diff": abs(na - nb) / max(nb, 1), "matched": int(len(iou)),
            "median_iou": float(np.median(iou)) if len(iou) else 0.0,
            "mean_iou": float(np.mean(iou)) if len(iou) else 0.0,
            "frac_matched": len(iou) / max(nb, 1)}


# --------------------------------------------------------------------------------------------
# The whole comparison
# --------------------------------------------------------------------------------------------
def simulated_sites(root: str | os.PathLike, n_sites: int = 2, size: int = 512, seed: int = 0,
                    channels: Sequence[str] = ("DNA", "ER", "RNA", "AGP", "Mito")) -> pd.DataFrame:
    """A synthetic plate (:mod:`morphobench.images.synthetic`; touching cells, illumination
    field, puncta) of ``n_sites`` sites, at the synthetic generator's cell density."""
    from morphobench.images.synthetic import write_synthetic_plate

    wells = [f"A{i:02d}" for i in range(1, n_sites + 1)]
    sheet, _ = write_synthetic_plate(root, plate="SIM", wells=wells, sites=1, size=size,
                                     n_cells=int(round(30 * (size / 256) ** 2)), channels=channels, seed=seed)
    return sheet


def run_parity(rows: pd.DataFrame, workdir: str | os.PathLike, *, illum: dict | None = None,
               segment: dict | None = None, features: dict | None = None, python=None) -> dict:
    """Both backends on one plate (``rows``: its image sheet), the same settings.

    1. illumination functions (``illum`` params, default the ``jump`` preset) of both backends:
       their largest relative difference;
    2. segmentation (``segment``, default ``jump`` without the QC guard) of both backends from the SAME (in-process)
       illumination functions: :func:`segmentation_parity` per site and object;
    3. features (``features``, default ``jump``) of both backends on the SAME label image (the
       in-process segmentation): :func:`feature_parity`.

    Returns ``{"illum": {channel: max rel diff}, "segmentation": DataFrame, "features":
    DataFrame, "groups": DataFrame, "seconds": {step: {backend: s}}}``.
    """
    import time

    from morphobench.images.cp_backend import (
        cp_measure_settings,
        run_features_cp,
        run_illum_cp,
        run_segment_cp,
    )
    from morphobench.images.features import feature_params, run_features
    from morphobench.images.illum import illum_params, run_illum
    from morphobench.images.segment import open_labels, run_segment, segment_params

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    ip = illum_params(illum if illum is not None else {"preset": "jump"})
    # min_contrast 0: no QC guard (CellProfiler has none), so every real site is segmented
    sp = segment_params(segment if segment is not None else {"preset": "jump", "min_contrast": 0})
    fraw = dict(features if features is not None else {"preset": "jump"})
    fp = feature_params(fraw.pop("preset", "full"), **fraw)
    secs: dict[str, dict[str, float]] = {}

    def timed(step, backend, fn):
        t = time.perf_counter()
        out = fn()
        secs.setdefault(step, {})[backend] = time.perf_counter() - t
        return out

    f_in = timed("illum", "inprocess", lambda: run_illum(rows, wd / "illum_in.npz", ip))
    f_cp = timed("illum", "cellprofiler", lambda: run_illum_cp(rows, wd / "illum_cp.npz", ip, python=python))
    illum_diff = {ch: float(np.abs(f_in[ch] - f_cp[ch]).max() / np.abs(f_cp[ch]).max()) for ch in f_in}
    timed("segment", "inprocess", lambda: run_segment(rows, wd / "labels_in.zarr", wd / "objects_in.parquet",
                                                      sp, illum=f_in))
    timed("segment", "cellprofiler", lambda: run_segment_cp(rows, wd / "labels_cp.zarr", wd / "objects_cp.parquet",
                                                            sp, illum=wd / "illum_in.npz", python=python))
    a, sites = open_labels(wd / "labels_in.zarr")
    b, _ = open_labels(wd / "labels_cp.zarr")
    seg = []
    for i in range(a.shape[0]):
        for k, obj in enumerate(("Nuclei", "Cells")):
            r = segmentation_parity(np.asarray(a[i][k]), np.asarray(b[i][k]))
            seg.append({"site": "/".join(str(sites.iloc[i][c]) for c in ("Metadata_Plate", "Metadata_Well",
                                                                          "Metadata_Site")),
                        "object": obj, **r})
    fa, _ = timed("features", "inprocess", lambda: run_features(rows, wd / "labels_in.zarr",
                                                                wd / "features_in.parquet", None, fp, illum=f_in))
    fb = timed("features", "cellprofiler", lambda: run_features_cp(rows, wd / "labels_in.zarr",
                                                                   wd / "features_cp.parquet", illum=wd / "illum_in.npz",
                                                                   python=python, settings=cp_measure_settings(fp)))
    feats, groups = feature_parity(fa, fb)
    return {"illum": illum_diff, "segmentation": pd.DataFrame(seg), "features": feats, "groups": groups,
            "seconds": secs, "n_objects": int(len(fa))}
