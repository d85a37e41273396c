"""The ``load_data`` loader: CellProfiler / JUMP ``load_data`` CSVs (one or several,
concatenated): ``FileName_Orig<Ch>``, ``PathName_Orig<Ch>``, ``Metadata_Plate/Well/Site``
(``Source``/``Batch`` optional), also the ``Image_``-prefixed form written by ExportToDatabase.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from morphobench.data.tables import (
    SITE_KEYS,
    filename_col,
    pathname_col,
)
from morphobench.data.loaders.common import (
    LoadResult,
    COMMON_KEYS,
    _N_EXAMPLES,
    _channel_map,
    _expand_paths,
    _finish_sheet,
    _format_rows,
    _normalize_wells,
    _rewrite_paths,
    _sites,
    read_csv_table,
)
from morphobench.data.loaders.plate_map import build_plate_map
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.data")

#: Keys of the ``load_data`` loader: name → (type, default, meaning).
KEYS: dict[str, tuple[str, Any, str]] = {
    **COMMON_KEYS,
    "csv": ("str | list[str]", None, "required: load_data CSV path(s) or glob(s), concatenated"),
    "channels": ("map str→str", None, "CSV channel → sheet channel, e.g. {OrigDNA: DNA} or "
                 "{Hoechst: DNA}; only mapped channels are kept; default: every channel as is"),
    "columns": ("map str→str", None, "sheet column ← CSV column for Metadata_Plate/Well/Site/"
                "Source/Batch, e.g. {Metadata_Plate: Metadata_PlateID}"),
    "image_root": ("str", None, "directory relative PathNames (or dir_template) are joined to"),
    "path_map": ("map str→str", None, "PathName prefix → replacement, first match wins "
                 "(e.g. {'s3://cellpainting-gallery/': /data/cpg/})"),
    "dir_template": ("str", None, "build PathName as image_root/<template> with fields "
                 "{plate} {batch} {source} {channel} {orig} {w} {pathname}"),
}


def _available_channels(df: pd.DataFrame) -> tuple[list[str], str]:
    orig = [c[len("FileName_Orig"):] for c in df.columns
            if c.startswith("FileName_Orig") and f"PathName_Orig{c[len('FileName_Orig'):]}" in df]
    if orig:
        return orig, "Orig"
    plain = [c[len("FileName_"):] for c in df.columns
             if c.startswith("FileName_") and not c.startswith("FileName_Illum")
             and f"PathName_{c[len('FileName_'):]}" in df]
    return plain, ""


def _read_load_data(files: Sequence[Path], columns: Mapping | None, strict: bool,
                    report: dict) -> pd.DataFrame:
    frames = []
    rename = {}
    for target, src in (columns or {}).items():
        if target not in SITE_KEYS:
            raise MorphobenchError(f"columns: key {target!r} is not one of {list(SITE_KEYS)}")
        src = str(src)
        rename[src[len("Image_"):] if src.startswith("Image_") else src] = target
    for f in files:
        df = read_csv_table(f, strict=strict, report=report)
        strip = {c: c[len("Image_"):] for c in df.columns
                 if c.startswith("Image_") and c[len("Image_"):] not in df.columns}
        df = df.rename(columns=strip)
        missing_src = [s for s in rename if s not in df.columns]
        if missing_src:
            raise MorphobenchError(f"load_data CSV {f}: missing column(s) {missing_src} "
                                   f"(named in `columns`)")
        for src, target in rename.items():
            if src != target:  # copy: the source column stays readable for plate maps
                df[target] = df[src]
        need = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise MorphobenchError(f"load_data CSV {f}: missing column(s) {missing} "
                                   "(map other names with `columns:`)")
        chans, _ = _available_channels(df)
        if not chans:
            raise MorphobenchError(f"load_data CSV {f}: no FileName_Orig<Channel> / "
                                   "PathName_Orig<Channel> column pairs")
        df["_file"] = str(f)
        frames.append(df)
    if len(frames) > 1:
        sets = [set(_available_channels(d)[0]) for d in frames]
        if any(s != sets[0] for s in sets[1:]):
            log.warning("load_data CSVs list different channels %s; sites without a mapped "
                        "channel count as incomplete", [sorted(s) for s in sets])
    return pd.concat(frames, ignore_index=True, sort=False).fillna("")


def _load_table_sheet(params: Mapping, *, dataset: str | None, loader: str,
                      defaults: Mapping[str, Any]) -> LoadResult:
    p = {**defaults, **{k: v for k, v in params.items() if v is not None or k == "dir_template"}}
    strict = bool(p.get("strict", False))
    report: dict[str, Any] = {}
    files = _expand_paths(p.get("csv"), f"{loader}: csv")
    where = f"{loader} CSV {', '.join(map(str, files[:3]))}{' …' if len(files) > 3 else ''}"
    df = _read_load_data(files, p.get("columns"), strict, report)
    available, prefix = _available_channels(df)
    if len(files) > 1:
        available = [c for c in available
                     if df[f"FileName_{prefix}{c}"].astype(str).ne("").any()]
    chmap = _channel_map(p.get("channels"), available, where, strip_orig=True)

    for key, fallback in (("Metadata_Source", p.get("source") or dataset or loader),
                          ("Metadata_Batch", p.get("batch") or "batch1")):
        param = p.get(key.split("_")[1].lower())
        if param is not None:
            df[key] = str(param)
        elif key not in df.columns:
            df[key] = str(fallback)
        else:
            df[key] = df[key].astype(str).where(df[key].astype(str) != "", str(fallback))
    df["Metadata_Plate"] = df["Metadata_Plate"].astype(str).str.strip()
    df["Metadata_Well"] = _normalize_wells(df["Metadata_Well"], where)
    df["Metadata_Site"] = _sites(df["Metadata_Site"], where)

    template = p.get("dir_template")
    image_root = p.get("image_root")
    if template and not image_root:
        raise MorphobenchError(f"{where}: dir_template needs image_root")
    rows = df[list(SITE_KEYS)].copy()
    for src, ch in chmap.items():
        fname = df[f"FileName_{prefix}{src}"].astype(str)
        pname = df[f"PathName_{prefix}{src}"].astype(str)
        if template:
            fields = pd.DataFrame({
                "plate": df["Metadata_Plate"], "batch": df["Metadata_Batch"],
                "source": df["Metadata_Source"], "channel": ch, "orig": src,
                "pathname": pname, "w": fname.str.extract(r"_w(\d+)", expand=False).fillna(""),
            }, index=df.index)
            if "{w" in template and fields["w"].eq("").any():
                bad = fname[fields["w"].eq("") & fname.ne("")].head(_N_EXAMPLES).tolist()
                if bad:
                    raise MorphobenchError(f"{where}: dir_template uses {{w}} but file name(s) "
                                           f"{bad} carry no '_w<k>'")
            rel = _format_rows(fields, template, where)
            pname = rel.map(lambda r: os.path.join(str(image_root), r))
        else:
            pname = _rewrite_paths(pname, p.get("path_map"), image_root)
        pname = pname.where(fname != "", "")
        rows[filename_col(ch)] = fname.values
        rows[pathname_col(ch)] = pname.values
    rows["_file"] = df["_file"].values
    dup = rows.duplicated(list(SITE_KEYS), keep=False)
    if dup.any():
        ex = rows.loc[dup, list(SITE_KEYS) + ["_file"]].head(_N_EXAMPLES).to_dict("records")
        raise MorphobenchError(f"{where}: {int(dup.sum())} rows share a site (duplicated "
                               f"Source/Batch/Plate/Well/Site), e.g. {ex}")
    sheet = _finish_sheet(rows, list(chmap.values()), where, report, strict, p.get("plates"),
                          bool(p.get("check_files", False)))
    wells = None
    pm = p.get("plate_map")
    if pm:
        table = df if not pm.get("path") else None
        wells = build_plate_map(pm, sheet, table=table, strict=strict, report=report)
    return LoadResult(sheet, wells, report)


def load_data_sheet(params: Mapping, *, dataset: str | None = None) -> LoadResult:
    """Image sheet (and optional plate map) from CellProfiler/JUMP ``load_data`` CSVs."""
    return _load_table_sheet(params, dataset=dataset, loader="load_data", defaults={})
