"""Embedding stages: a method's per-site/cell/tile rows → well-level profiles.

Every method writes ``results/{dataset}/profiles/{method}/well.parquet``: one row per well of the
plate map that has data, with the plate map's ``Metadata_*`` columns (+ ``Metadata_Batch``) and the
method's numeric features. Wells of the plate map without any row (e.g. a site with zero cells)
are listed in ``well_qc.tsv`` beside it with their status — never dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from morphobench.data.tables import WELL_KEYS, feature_columns, validate_plate_map
from morphobench.data.aggregate import aggregate_wells
from morphobench.embed.baselines import pixel_stats_site, random_profiles
from morphobench.io import MorphobenchError, progress, read_table, write_parquet, write_tsv

log = logging.getLogger("morphobench.embed")


def _plate_map(path: str | os.PathLike) -> pd.DataFrame:
    wells = read_table(path, what="plate map")
    validate_plate_map(wells, str(path))
    return wells


def _batches(sheet: pd.DataFrame) -> pd.DataFrame:
    """Metadata_Plate → Metadata_Batch (and Source) from the image sheet."""
    cols = [c for c in ("Metadata_Source", "Metadata_Batch") if c in sheet.columns]
    return sheet[["Metadata_Plate", *cols]].drop_duplicates("Metadata_Plate")


def attach_plate_map(well_feats: pd.DataFrame, wells: pd.DataFrame, sheet: pd.DataFrame | None,
                     source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join well-level features onto the plate map; return (profiles, qc table)."""
    feats = feature_columns(well_feats)
    meta = wells.copy()
    if sheet is not None and "Metadata_Batch" not in meta.columns:
        meta = meta.merge(_batches(sheet), on="Metadata_Plate", how="left")
    keys = list(WELL_KEYS)
    extra = sorted(set(map(tuple, well_feats[keys].to_numpy())) - set(map(tuple, meta[keys].to_numpy())))
    if extra:
        raise MorphobenchError(f"{source}: {len(extra)} well(s) with data are not in the plate map, e.g. {extra[:3]}")
    merged = meta.merge(well_feats[keys + feats], on=keys, how="left", indicator=True)
    has = merged["_merge"].eq("both").to_numpy()
    qc = merged[keys].assign(status=np.where(has, "ok", "no_data"))
    if (~has).any():
        log.warning("%s: %d well(s) of the plate map have no data (listed in well_qc.tsv): %s",
                    source, int((~has).sum()), qc.loc[~has, keys].head(5).to_dict("records"))
    prof = merged.loc[has].drop(columns="_merge").reset_index(drop=True)
    meta_cols = [c for c in prof.columns if c.startswith("Metadata_")]
    return prof[meta_cols + feats], qc


def write_well_profiles(prof: pd.DataFrame, qc: pd.DataFrame, out: str | os.PathLike) -> None:
    out = Path(out)
    prof = prof.sort_values(list(WELL_KEYS), kind="stable").reset_index(drop=True)
    write_tsv(qc, out.with_name("well_qc.tsv"))
    write_parquet(prof, out)
    log.info("wrote %s: %d wells × %d features", out, len(prof), len(feature_columns(prof)))


def random_method(wells_path: str | os.PathLike, sheet_path: str | os.PathLike | None,
                  out: str | os.PathLike, dim: int = 1024, seed: int = 0) -> None:
    """``random`` baseline → well profiles (one fixed-seed vector per plate-map well)."""
    wells = _plate_map(wells_path)
    sheet = read_table(sheet_path, what="image sheet") if sheet_path else None
    feats = random_profiles(wells[list(WELL_KEYS)], dim=dim, seed=seed)
    prof, qc = attach_plate_map(feats, wells, sheet, "random")
    write_well_profiles(prof, qc, out)


def pixel_stats_plate(sheet_path: str | os.PathLike, plate: str, out: str | os.PathLike,
                      illum_path: str | os.PathLike | None = None,
                      channels: Sequence[str] | None = None) -> None:
    """30 pixel statistics for every site of one plate → site-level parquet."""
    from morphobench.data.tables import CHANNELS, SITE_KEYS
    from morphobench.images.io import load_illum, load_sheet, read_site

    rows = load_sheet(sheet_path, plate=plate)
    illum = load_illum(illum_path) if illum_path else None
    chans = list(channels or CHANNELS)
    records = []
    for _, row in progress(rows.iterrows(), total=len(rows), desc=f"pixel_stats {plate}"):
        img = read_site(row, chans, illum=illum)
        rec = {k: row[k] for k in SITE_KEYS}
        rec.update(pixel_stats_site(img, chans))
        records.append(rec)
    write_parquet(pd.DataFrame(records), out)


def gather_wells(parts: Sequence[str | os.PathLike], wells_path: str | os.PathLike,
                 sheet_path: str | os.PathLike | None, out: str | os.PathLike,
                 method: str = "mean") -> None:
    """Per-plate site/cell/tile tables → well profiles (``mean`` or ``median`` per well)."""
    wells = _plate_map(wells_path)
    sheet = read_table(sheet_path, what="image sheet") if sheet_path else None
    frames = [read_table(p, what="per-plate profiles") for p in parts]
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        raise MorphobenchError(f"no profile rows in {list(map(str, parts))}")
    keep = [c for c in rows.columns if not c.startswith("Metadata_") or c in WELL_KEYS]
    agg = aggregate_wells(rows[keep], method, source=", ".join(map(str, parts))[:200])
    prof, qc = attach_plate_map(agg, wells, sheet, f"well profiles {out}")
    counts = rows.groupby(list(WELL_KEYS)).size().rename("n_rows").reset_index()
    qc = qc.merge(counts, on=list(WELL_KEYS), how="left").fillna({"n_rows": 0})
    qc["n_rows"] = qc["n_rows"].astype(int)
    write_well_profiles(prof, qc, out)
