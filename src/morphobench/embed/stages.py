"""Embedding stages, the same two for every method (registered or brought by the user):

1. :func:`embed_plate` — one plate → ``results/{dataset}/embeddings/{method}/plates/{plate}.parquet``:
   the method's ``embed`` function (``"module:function"`` of its spec) is called as
   ``fn(spec, plate, inputs)`` with an :class:`EmbedInputs` and returns rows at the method's level
   (``cell``/``tile``: ``Metadata_*`` site keys + ``Metadata_ObjectNumber``, ``Metadata_Crop_X0/Y0``;
   ``site``; ``well``) with numeric feature columns.
2. :func:`method_profiles` — the per-plate parts → ``embeddings/{method}/{level}.parquet`` (levels
   below the well) and ``profiles/{method}/well.parquet`` through the one well aggregation
   (:func:`morphobench.data.aggregate.aggregate_wells`), joined onto the plate map. Wells of the
   plate map without any row (e.g. a site with zero cells) are listed in ``well_qc.tsv`` beside it
   with their status — never dropped silently; rows of wells that are not in the plate map, or
   NaN/inf values, are errors naming the method and the file (CellProfiler's ``drop_features``
   policy drops, and logs, features that are undefined in some well).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from morphobench.data.aggregate import aggregate_wells
from morphobench.data.tables import WELL_KEYS, feature_columns, validate_plate_map
from morphobench.io import MorphobenchError, read_table, write_parquet, write_tsv

log = logging.getLogger("morphobench.embed")


@dataclass(frozen=True)
class EmbedInputs:
    """What a per-plate embed function may read (``None`` where the method's input needs none)."""

    wells: str | None = None
    sheet: str | None = None
    illum: str | None = None
    crops: str | None = None
    model: str | None = None
    profiles: str | None = None  #: another method's well profiles (input "profiles")
    device: str = "auto"


def _function(dotted: str):
    mod, _, attr = dotted.partition(":")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as err:
        raise MorphobenchError(f"embed function {dotted!r} cannot be imported: {err}") from err


def embed_plate(spec: dict, plate: str, out: str | os.PathLike, inputs: EmbedInputs) -> pd.DataFrame:
    """Run the method's embed function on one plate and write its rows (atomically)."""
    if not spec.get("embed"):
        raise MorphobenchError(f"method {spec['name']!r} has no embed function (its parts come from another rule)")
    rows = _function(spec["embed"])(spec, plate, inputs)
    missing = [k for k in WELL_KEYS if k not in rows.columns]
    if missing:
        raise MorphobenchError(f"method {spec['name']}: embed function returned no {missing} columns")
    if not rows.empty and set(rows["Metadata_Plate"].astype(str)) != {str(plate)}:
        raise MorphobenchError(f"method {spec['name']}: rows of other plates than {plate!r}")
    write_parquet(rows, out)
    log.info("%s %s: %d %s rows × %d features", spec["name"], plate, len(rows), spec["level"],
             len(feature_columns(rows)))
    return rows


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
    """Join well-level features (and their ``Metadata_Count*`` columns) onto the plate map;
    return (profiles, qc table)."""
    feats = feature_columns(well_feats)
    meta = wells.copy()
    if sheet is not None and "Metadata_Batch" not in meta.columns:
        meta = meta.merge(_batches(sheet), on="Metadata_Plate", how="left")
    keys = list(WELL_KEYS)
    extra = sorted(set(map(tuple, well_feats[keys].astype(str).to_numpy()))
                   - set(map(tuple, meta[keys].astype(str).to_numpy())))
    if extra:
        raise MorphobenchError(f"{source}: {len(extra)} well(s) with data are not in the plate map, e.g. {extra[:3]}")
    well_feats = well_feats.astype({k: meta[k].dtype for k in keys})
    counts = [c for c in well_feats.columns if c.startswith("Metadata_Count") and c not in meta.columns]
    merged = meta.merge(well_feats[keys + counts + feats], on=keys, how="left", indicator=True)
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


def _read_part(path: str | os.PathLike, name: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise MorphobenchError(f"method {name}: file not found: {p}")
    df = read_table(p, what=f"method {name} rows")
    missing = [k for k in WELL_KEYS if k not in df.columns]
    if missing:
        raise MorphobenchError(f"method {name}: {p} has no {' / '.join(missing)} column(s) "
                               "(profiles need Metadata_Plate and Metadata_Well + numeric features)")
    return df


def drop_nonfinite_features(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Drop (and log) feature columns with NaN/inf in any row (CellProfiler's undefined values)."""
    feats = feature_columns(df)
    x = df[feats].to_numpy(np.float64)
    bad = [c for c, ok in zip(feats, np.isfinite(x).all(0), strict=True) if not ok]
    if bad:
        log.info("%s: dropping %d feature(s) with NaN/inf, e.g. %s", source, len(bad), bad[:5])
    return df.drop(columns=bad)


def method_profiles(spec: dict, parts: Sequence[str | os.PathLike], wells_path: str | os.PathLike,
                    sheet_path: str | os.PathLike | None, out_well: str | os.PathLike, *,
                    out_embeddings: str | os.PathLike | None = None, method: str = "mean") -> pd.DataFrame:
    """Per-plate parts (or a user's file) → embeddings file + well profiles (see module docstring)."""
    name = spec["name"]
    wells = _plate_map(wells_path)
    sheet = read_table(sheet_path, what="image sheet") if sheet_path else None
    frames = [_read_part(p, name) for p in parts]
    if not frames:
        raise MorphobenchError(f"method {name}: no per-plate parts given")
    rows = pd.concat(frames, ignore_index=True)
    source = f"method {name} ({', '.join(map(str, parts))[:200]})"
    if rows.empty:
        raise MorphobenchError(f"{source}: no rows")
    if out_embeddings is not None:
        write_parquet(rows, out_embeddings)
    keep = [c for c in rows.columns
            if not c.startswith("Metadata_") or c in WELL_KEYS or c.startswith("Metadata_Count_")]
    rows = rows[keep]
    if spec.get("nonfinite") == "drop_features":
        rows = drop_nonfinite_features(rows, source)
    agg = aggregate_wells(rows, method, source=source)
    prof, qc = attach_plate_map(agg, wells, sheet, source)
    counts = rows.groupby(list(WELL_KEYS)).size().rename("n_rows").reset_index()
    counts = counts.astype({k: qc[k].dtype for k in WELL_KEYS})
    qc = qc.merge(counts, on=list(WELL_KEYS), how="left").fillna({"n_rows": 0})
    qc["n_rows"] = qc["n_rows"].astype(int)
    write_well_profiles(prof, qc, out_well)
    return prof


def gather_embeddings(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> pd.DataFrame:
    """Concatenate a method's per-plate rows into one dataset-level file (same columns required)."""
    frames = [read_table(p, what="per-plate embeddings") for p in parts]
    if not frames:
        raise MorphobenchError(f"gather_embeddings {out}: no parts")
    cols = list(frames[0].columns)
    for p, f in zip(parts, frames, strict=True):
        if list(f.columns) != cols:
            raise MorphobenchError(f"{p}: columns differ from {parts[0]} ({len(f.columns)} vs {len(cols)})")
    rows = pd.concat(frames, ignore_index=True)
    write_parquet(rows, out)
    log.info("wrote %s: %d rows × %d features", out, len(rows), len(feature_columns(rows)))
    return rows
