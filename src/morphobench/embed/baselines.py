"""Simple baseline "methods" (MAE-CVPR Table 3): random embeddings and pixel-intensity statistics.

They make every evaluation runnable before any network is trained, and anchor the tables: a method
that does not beat ``pixel_stats`` has learned little.

- ``random`` (and ``random_128`` … ``random_768``, MAE-W A.3): one fixed-seed Gaussian vector per
  well (1,024-D; 128, 384, 512, 768). The vector depends only on (seed, plate, well), not on row
  order, so reruns and subsets give identical values.
- ``shuffled`` (MAE-W A.3): another method's well profiles (``source``), each well given another
  well's profile (a seeded derangement over all wells of the screen): the profiles' distribution
  is kept, their link to the perturbation is destroyed.
- ``pixel_stats``: 30 statistics per site (REFERENCE §2) over **every channel of the screen**: per
  channel the first ``30 // C`` of mean, standard deviation, median, 5th and 95th percentile of
  the illumination-corrected pixel intensities and the fraction of pixels above the channel's
  Otsu threshold (C = 5: all six, 30-D; C = 6 as RxRx3: the first five, 30-D; C = 8: three,
  24-D). The statistics are taken on the illumination-corrected intensities, not on
  self-standardized images as the models see them: self-standardization sets every image's mean
  to 0 and sd to 1, which would make two of the statistics constant. Site vectors are averaged
  into wells by the aggregation stage like any other method's tile/cell embeddings.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from morphobench.data.tables import CHANNELS, SITE_KEYS, WELL_KEYS, sheet_channels
from morphobench.io import MorphobenchError, progress, read_table

PIXEL_STATS = ("mean", "std", "median", "p05", "p95", "frac_above_otsu")
#: the pixel_stats vector's length by definition (MAE-CVPR: "30 pixel intensity statistics")
PIXEL_STATS_DIM = 30


def pixel_stats_for(n_channels: int) -> tuple[str, ...]:
    """The statistics taken per channel so that C channels give at most 30 features (at least one)."""
    return PIXEL_STATS[:max(1, min(len(PIXEL_STATS), PIXEL_STATS_DIM // max(1, n_channels)))]


def _key_seed(seed: int, *parts: str) -> int:
    blob = "\x1f".join([str(seed), *parts]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def random_profiles(wells: pd.DataFrame, dim: int = 1024, seed: int = 0) -> pd.DataFrame:
    """One N(0, 1) ``dim``-D vector per (plate, well) row of a plate map.

    Returns the plate map's ``Metadata_*`` columns + ``emb_0000 …`` float32 features.
    """
    for col in ("Metadata_Plate", "Metadata_Well"):
        if col not in wells.columns:
            raise MorphobenchError(f"random_profiles: plate map lacks column {col}")
    rows = np.empty((len(wells), dim), dtype=np.float32)
    for i, (plate, well) in enumerate(zip(wells["Metadata_Plate"], wells["Metadata_Well"], strict=True)):
        rng = np.random.default_rng(_key_seed(seed, str(plate), str(well)))
        rows[i] = rng.standard_normal(dim, dtype=np.float32)
    meta = wells[[c for c in wells.columns if c.startswith("Metadata_")]].reset_index(drop=True)
    feats = pd.DataFrame(rows, columns=[f"emb_{j:04d}" for j in range(dim)])
    return pd.concat([meta, feats], axis=1)


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of a 1-D array (same definition as skimage.filters.threshold_otsu)."""
    from skimage.filters import threshold_otsu

    if values.min() == values.max():
        return float(values.min())
    return float(threshold_otsu(values, nbins=nbins))


def pixel_stats_site(image: np.ndarray, channels: tuple[str, ...] | list[str] = CHANNELS) -> dict[str, float]:
    """Intensity statistics of one site ``image`` (C × H × W) → ``{feature: value}``: the
    :func:`pixel_stats_for` statistics of every channel (30 for 5 or 6 channels).

    Feature names are ``PixelStats_<stat>_<channel>``.
    """
    if image.ndim != 3 or image.shape[0] != len(channels):
        raise MorphobenchError(f"pixel_stats_site: expected ({len(channels)}, H, W) image, got {image.shape}")
    stats = pixel_stats_for(len(channels))
    out: dict[str, float] = {}
    for c, ch in enumerate(channels):
        v = image[c].astype(np.float64, copy=False).ravel()
        p05, med, p95 = np.percentile(v, [5, 50, 95])
        thr = otsu_threshold(v)
        vals = {
            "mean": v.mean(),
            "std": v.std(),
            "median": med,
            "p05": p05,
            "p95": p95,
            "frac_above_otsu": float((v > thr).mean()),
        }
        for stat in stats:
            out[f"PixelStats_{stat}_{ch}"] = float(vals[stat])
    return out


# ------------------------------------------------------------------------------------------------
# Per-plate embed functions (registry ``embed`` entries; see morphobench.embed.stages)
# ------------------------------------------------------------------------------------------------
def embed_random(spec: dict, plate: str, inputs) -> pd.DataFrame:
    """``random``: the plate-map wells of ``plate``, one vector each (``dim``, ``seed`` params)."""
    wells = read_table(inputs.wells, what="plate map")
    sub = wells.loc[wells["Metadata_Plate"].astype(str) == str(plate), list(WELL_KEYS)]
    if sub.empty:
        raise MorphobenchError(f"random: plate {plate!r} has no wells in {inputs.wells}")
    p = spec["params"]
    return random_profiles(sub.reset_index(drop=True), dim=int(p["dim"]), seed=int(p["seed"]))


def embed_pixel_stats(spec: dict, plate: str, inputs) -> pd.DataFrame:
    """``pixel_stats``: the statistics of every site of ``plate`` over every channel of the screen
    (illumination corrected)."""
    from morphobench.images.io import load_illum, load_sheet, read_site

    rows = load_sheet(inputs.sheet, plate=plate)
    illum = load_illum(inputs.illum) if inputs.illum else None
    chans = sheet_channels(rows)
    records = []
    for _, row in progress(rows.iterrows(), total=len(rows), desc=f"pixel_stats {plate}"):
        img = read_site(row, chans, illum=illum)
        rec = {k: row[k] for k in SITE_KEYS}
        rec.update(pixel_stats_site(img, chans))
        records.append(rec)
    return pd.DataFrame(records)


def shuffled_profiles(profiles: pd.DataFrame, seed: int = 0, source: str = "profiles") -> pd.DataFrame:
    """Each well of ``profiles`` (one row per ``Metadata_Plate``, ``Metadata_Well``) gets the
    features of another well: a seeded derangement over the wells sorted by plate and well (a
    random order, each well taking the next one's profile, so no well keeps its own)."""
    for col in WELL_KEYS:
        if col not in profiles.columns:
            raise MorphobenchError(f"shuffled: {source} lacks column {col}")
    p = profiles.sort_values(list(WELL_KEYS), kind="stable").reset_index(drop=True)
    if p.duplicated(list(WELL_KEYS)).any():
        raise MorphobenchError(f"shuffled: {source} has several rows for one well")
    if len(p) < 2:
        raise MorphobenchError(f"shuffled: {source} has {len(p)} well(s); shuffling needs at least 2")
    feats = [c for c in p.columns if not c.startswith("Metadata_")]
    order = np.random.default_rng(_key_seed(seed, "shuffled")).permutation(len(p))
    donor = np.empty(len(p), dtype=np.int64)
    donor[order] = np.roll(order, -1)
    out = p[list(WELL_KEYS)].copy()
    return pd.concat([out, p.loc[donor, feats].reset_index(drop=True)], axis=1)


def embed_shuffled(spec: dict, plate: str, inputs) -> pd.DataFrame:
    """``shuffled``: the wells of ``plate`` with the profiles the screen-wide derangement of the
    ``source`` method's well profiles gives them."""
    if not inputs.profiles:
        raise MorphobenchError("shuffled: no source profiles given (--profiles)")
    src = read_table(inputs.profiles, what=f"{spec['params']['source']} well profiles")
    out = shuffled_profiles(src, seed=int(spec["params"]["seed"]), source=str(inputs.profiles))
    return out[out["Metadata_Plate"].astype(str) == str(plate)].reset_index(drop=True)
