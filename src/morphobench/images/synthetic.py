"""Small synthetic Cell Painting sites with known masks and illumination (tests, benchmarks).

Not the simulated screen (``morphobench.simulate``): a minimal generator so the image stages can
be checked against ground truth on arrays built in memory.

A site has touching cells (a power diagram of the nuclei centres, capped at a maximal radius),
elliptic nuclei (some touching), channel intensities that fall off from the nucleus towards the
cell edge (so cell borders are darker, as in real cytoplasm stains), puncta in ER/Mito, camera
noise, and a smooth multiplicative illumination field per channel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import measure

from morphobench.data.tables import CHANNELS, filename_col, pathname_col


def illumination_field(shape: tuple[int, int], rng: np.random.Generator, strength: float = 0.5) -> np.ndarray:
    """Smooth field in (1 − strength, 1]: off-centre vignetting × a linear gradient."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = h * rng.uniform(0.3, 0.7), w * rng.uniform(0.3, 0.7)
    r2 = ((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2
    f = np.exp(-r2 / rng.uniform(0.25, 0.5))
    ang = rng.uniform(0, 2 * np.pi)
    f *= 1 + 0.3 * (np.cos(ang) * (xx / w - 0.5) + np.sin(ang) * (yy / h - 0.5))
    f = (f - f.min()) / (f.max() - f.min())
    return 1 - strength + strength * f


def _centres(rng: np.random.Generator, size: int, n: int, min_dist: float, margin: float) -> np.ndarray:
    """Centres over the field extended by ``margin`` (cells continue past the image edge, as in a
    monolayer, so the cell coverage is uniform up to the border); ``n`` is the count per field."""
    n = int(round(n * ((size + 2 * margin) / size) ** 2))
    pts: list[np.ndarray] = []
    tries = 0
    while len(pts) < n and tries < n * 200:
        tries += 1
        p = rng.uniform(-margin, size + margin, 2)
        if all(np.hypot(*(p - q)) >= min_dist for q in pts):
            pts.append(p)
    return np.array(pts)


def synthetic_site(rng: np.random.Generator, size: int = 256, n_cells: int = 30,
                   channels: Sequence[str] = CHANNELS, nucleus_radius: float = 8.0,
                   cell_radius: float = 24.0, touching_nuclei: float = 0.15,
                   background: float = 300.0, gain: float = 2500.0, noise: float = 40.0,
                   field: np.ndarray | None = None, phenotype: float = 1.0,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One site: ``(images (C,H,W) float64 before rounding, nuclei labels, cells labels)``.

    ``field`` (C,H,W) multiplies the signal+background (default: no field). ``phenotype`` scales
    nucleus size (a strong-phenotype perturbation uses e.g. 1.4).
    """
    nuc_r = nucleus_radius * phenotype
    pts = _centres(rng, size, n_cells, min_dist=1.6 * nuc_r, margin=cell_radius)
    # make some nuclei touch: move a fraction next to a neighbour
    for i in range(1, len(pts)):
        if rng.random() < touching_nuclei:
            j = rng.integers(0, i)
            ang = rng.uniform(0, 2 * np.pi)
            cand = pts[j] + 1.9 * nuc_r * np.array([np.cos(ang), np.sin(ang)])
            d = np.hypot(*(pts[:i] - cand).T) if i else np.array([np.inf])
            d[j] = np.inf
            if d.min() >= 1.8 * nuc_r:
                pts[i] = cand
    n = len(pts)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # nuclei: ellipses, rasterised one by one; overlaps go to the closer centre
    nuclei = np.zeros((size, size), np.int32)
    best = np.full((size, size), np.inf)
    axes = np.stack([nuc_r * rng.uniform(0.85, 1.2, n), nuc_r * rng.uniform(0.7, 1.0, n),
                     rng.uniform(0, np.pi, n)], 1)
    for k, ((cy, cx), (a, b, th)) in enumerate(zip(pts, axes, strict=True), start=1):
        rr = int(np.ceil(max(a, b))) + 1
        y0, y1 = max(0, int(cy) - rr), min(size, int(cy) + rr + 1)
        x0, x1 = max(0, int(cx) - rr), min(size, int(cx) + rr + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        r = u * u + v * v
        sub_best = best[y0:y1, x0:x1]
        sel = (r <= 1) & (r < sub_best)
        nuclei[y0:y1, x0:x1][sel] = k
        sub_best[sel] = r[sel]
    # cells: power diagram of the centres, capped at a per-cell radius, containing their nucleus
    radii = cell_radius * rng.uniform(0.8, 1.2, n)
    dmin = np.full((size, size), np.inf)
    owner = np.zeros((size, size), np.int64)
    for k, ((cy, cx), rad) in enumerate(zip(pts, radii, strict=True)):
        rr = int(np.ceil(rad)) + 1
        y0, y1 = max(0, int(cy) - rr), min(size, int(cy) + rr + 1)
        x0, x1 = max(0, int(cx) - rr), min(size, int(cx) + rr + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        dk = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx) / rad
        sub = dmin[y0:y1, x0:x1]
        closer = dk < sub
        sub[closer] = dk[closer]
        owner[y0:y1, x0:x1][closer] = k
    cells = np.where(dmin <= 1.0, owner + 1, 0).astype(np.int32)
    cells[nuclei > 0] = nuclei[nuclei > 0]
    # keep one connected piece per cell (the one with its nucleus)
    pieces = measure.label(cells, connectivity=1, background=0)
    keep = np.zeros(pieces.max() + 1, bool)
    keep[np.unique(pieces[nuclei > 0])] = True
    keep[0] = False
    cells[~keep[pieces]] = 0
    # distance from own centre relative to the cell radius → intensity fall-off
    rel = np.minimum(dmin, 1.5)
    # ground truth: objects whose nucleus is visible, numbered 1..N (cells share the number)
    visible = np.zeros(n + 1, bool)
    visible[np.unique(nuclei[nuclei > 0])] = True
    lut = np.zeros(n + 1, np.int32)
    lut[visible] = np.arange(1, visible.sum() + 1)
    truth_nuclei, truth_cells = lut[nuclei], lut[cells]
    imgs = np.zeros((len(channels), size, size))
    nuc_tex = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.5)
    brightness = rng.uniform(0.7, 1.3, n + 1)
    for ci, ch in enumerate(channels):
        sig = np.zeros((size, size))
        incell = cells > 0
        if ch == "DNA":
            sig = (nuclei > 0) * (1.0 + 0.15 * nuc_tex) * brightness[nuclei]
        elif ch in ("AGP", "RNA"):
            cyto = np.clip(1.05 - 0.75 * rel, 0.15, 1) * incell
            sig = 0.55 * cyto * brightness[cells] + (0.25 if ch == "RNA" else 0.1) * (nuclei > 0)
        else:  # ER, Mito, others: cytoplasm + puncta
            pun = (rng.random((size, size)) < 0.02).astype(float)
            pun = ndimage.gaussian_filter(pun, 1.0) * 6
            sig = (0.25 * np.clip(1 - 0.6 * rel, 0, 1) + 0.5 * pun) * incell * (nuclei == 0)
        img = background + gain * ndimage.gaussian_filter(sig, 0.8)
        if field is not None:
            img = img * field[ci]
        img = img + rng.normal(0, noise, img.shape)
        imgs[ci] = np.clip(img, 0, 65535)
    return imgs, truth_nuclei, truth_cells


def write_synthetic_plate(root: str | os.PathLike, *, plate: str = "P1", wells: Sequence[str] = ("A01", "A02"),
                          sites: int = 2, size: int = 256, n_cells: int = 30,
                          channels: Sequence[str] = CHANNELS, seed: int = 0, field_strength: float = 0.5,
                          phenotypes: dict[str, float] | None = None) -> tuple[pd.DataFrame, dict]:
    """Write a plate of 16-bit TIFFs + return its image sheet and the ground truth
    (``{"field": (C,H,W), "nuclei": {site_key: labels}, "cells": {...}}``)."""
    import tifffile

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    field = np.stack([illumination_field((size, size), rng, field_strength) for _ in channels])
    truth: dict = {"field": field, "nuclei": {}, "cells": {}, "channels": list(channels)}
    rows = []
    for well in wells:
        for s in range(1, sites + 1):
            ph = (phenotypes or {}).get(well, 1.0)
            imgs, nuc, cel = synthetic_site(rng, size, n_cells, channels, field=field, phenotype=ph)
            row = {"Metadata_Source": "synthetic", "Metadata_Batch": "B1", "Metadata_Plate": plate,
                   "Metadata_Well": well, "Metadata_Site": s}
            for ci, ch in enumerate(channels):
                fn = f"{plate}_{well}_s{s}_{ch}.tif"
                tifffile.imwrite(root / fn, np.round(imgs[ci]).astype(np.uint16))
                row[filename_col(ch)] = fn
                row[pathname_col(ch)] = str(root)
            rows.append(row)
            truth["nuclei"][(well, s)] = nuc
            truth["cells"][(well, s)] = cel
    return pd.DataFrame(rows), truth
