"""What the ``bbbc036`` and ``bbbc037`` loaders share: the Broad ImageXpress channel-folder
layout of their image releases, per-well metadata tables and the MoA table.

Image layout (the Cell Image Library downloads of BBBC036 / BBBC037, one zip per plate and
channel, unzipped side by side; the same acquisition and file names as BBBC022)::

    <image_root>/[…/]<plate>-<ChannelFolder>/<prefix>_<well>_s<site>_w<k><UUID>.tif
    e.g. 24277-Hoechst/cdp2bioactives_a01_s1_w1F1E2C0A3-….tif

with ChannelFolder ∈ {Hoechst → DNA, ERSyto → ER, ERSytoBleed → RNA, Ph_golgi → AGP, Mito → Mito}
(:data:`IXM_CHANNELS`). Wells may be lower-case (``a01`` → ``A01``). The tree is walked with the
``pattern`` loader's machinery and :data:`IXM_PATTERN` (a regex over the path relative to
``image_root``; both are keys, so other packagings only need another ``pattern`` /
``channels``). Files not matching (ImageXpress ``_thumb`` images, strays) are counted and
reported; a site without all channels is incomplete (reported; ``strict: true`` → error).

Per-well metadata (``metadata:``, CSVs, globs ok): the published tables (BBBC036's
``profiles/mean_well_profiles.csv`` of each plate, BBBC037's well metadata) carry
``Metadata_Plate``, ``Metadata_Well`` and the perturbation columns; only columns that are not
CellProfiler features (``Cells_*``, ``Cytoplasm_*``, ``Nuclei_*``) are read. The plate map is built
from them with :func:`~morphobench.data.loaders.plate_map.build_plate_map` and the loader's default
``plate_map`` options (its keys override them one by one). ``moa_table:``
(:mod:`~morphobench.data.loaders.moa`) adds ``Metadata_MoA``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from morphobench.data.loaders.common import (
    COMMON_KEYS,
    LoadResult,
    _expand_paths,
    read_csv_table,
)
from morphobench.data.loaders.moa import add_moa
from morphobench.data.loaders.pattern import scan_pattern_tree
from morphobench.data.loaders.plate_map import build_plate_map
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.data")

#: Channel folder (``<plate>-<folder>``) → sheet channel. ERSyto is the ER (concanavalin A)
#: channel, ERSytoBleed the SYTO 14 (RNA) channel, Ph_golgi phalloidin + WGA (AGP).
IXM_CHANNELS: dict[str, str] = {"Hoechst": "DNA", "ERSyto": "ER", "ERSytoBleed": "RNA",
                                "Ph_golgi": "AGP", "Mito": "Mito"}
#: ``[…/]<plate>-<ChannelFolder>/<prefix>_<well>_s<site>_w<k><UUID>.tif`` (UUID hex digits and
#: dashes, possibly none; ``.tif``/``.tiff`` in any case). The plate is the folder name up to its
#: last ``-``; thumbnails (``…_w1_thumb….tif``) do not match.
IXM_PATTERN = (r"(?:.*/)?(?P<plate>[^/]+)-(?P<channel>[A-Za-z_]+)/"
               r"[^/]*_(?P<well>[A-Za-z]{1,2}\d{1,3})_s(?P<site>\d+)_w\d[0-9A-Fa-f-]*(?i:\.tiff?)")
IXM_EXTENSIONS: list[str] = [".tif", ".tiff"]

#: CellProfiler feature prefixes skipped when reading per-well metadata (profile tables).
_FEATURE_PREFIXES = ("Cells_", "Cytoplasm_", "Nuclei_")


def ixm_keys(metadata_meaning: str) -> dict[str, tuple[str, Any, str]]:
    """The keys of a loader on the channel-folder layout."""
    return {
        **COMMON_KEYS,
        "image_root": ("str", None, "required: folder holding the unzipped <plate>-<ChannelFolder>/ "
                       "folders (searched recursively)"),
        "pattern": ("str", IXM_PATTERN, "regex over the path relative to image_root, groups plate "
                    "well site channel [batch] (as the pattern loader)"),
        "channels": ("map str→str", dict(IXM_CHANNELS), "channel folder suffix → sheet channel; "
                     "files of other folders are skipped and reported"),
        "plate_format": ("str", "{plate}", "Metadata_Plate from the groups"),
        "extensions": ("list[str]", list(IXM_EXTENSIONS), "image file suffixes considered"),
        "metadata": ("str | list[str]", None, metadata_meaning),
        "moa_table": ("map", None, "MoA annotations → Metadata_MoA: {path, key, moa, sep: '|', "
                      "on: Metadata_Perturbation, match: exact|casefold|broad_core, column, "
                      "columns} (see MOA_TABLE_KEYS)"),
    }


def _not_a_feature(col: str) -> bool:
    return not col.startswith(_FEATURE_PREFIXES)


def read_well_metadata(spec: Any, loader: str, *, strict: bool, report: dict) -> pd.DataFrame:
    """Per-well metadata table(s) → one string table with a ``_file`` column (feature columns of
    profile tables are not read)."""
    files = _expand_paths(spec, f"{loader}: metadata")
    frames = []
    for f in files:
        t = read_csv_table(f, strict=strict, report=report, usecols=_not_a_feature)
        if t.empty:
            log.warning("%s: metadata table %s has no rows", loader, f)
        t["_file"] = str(f)
        frames.append(t)
    df = pd.concat(frames, ignore_index=True, sort=False).fillna("")
    log.info("%s: %d metadata row(s) from %d file(s)", loader, len(df), len(files))
    return df


def ixm_sheet(params: Mapping, *, dataset: str | None, loader: str, plate_map_defaults: Mapping,
              layout_hint: str) -> LoadResult:
    """Image sheet (+ plate map from ``metadata``, + ``Metadata_MoA`` from ``moa_table``)."""
    p = dict(params)
    strict = bool(p.get("strict", False))
    if not p.get("image_root"):
        raise MorphobenchError(f"{loader}: image_root is required ({layout_hint})")
    scan = {k: p[k] for k in ("image_root", "plates", "strict", "check_files") if k in p}
    scan["pattern"] = p.get("pattern") or IXM_PATTERN
    scan["channels"] = p.get("channels") or dict(IXM_CHANNELS)
    scan["plate_format"] = p.get("plate_format") or "{plate}"
    scan["extensions"] = p.get("extensions") or list(IXM_EXTENSIONS)
    scan["source"] = str(p.get("source") or dataset or loader.upper())
    scan["batch"] = str(p.get("batch") or loader.upper())
    res = scan_pattern_tree(scan, dataset=dataset, loader=loader)
    report = res.report

    pm_user = p.get("plate_map")
    if pm_user is not None and not isinstance(pm_user, Mapping):
        raise MorphobenchError(f"{loader}: plate_map must be a mapping (see PLATE_MAP_KEYS)")
    wells = None
    if p.get("metadata") or (pm_user and pm_user.get("path")):
        spec = {**plate_map_defaults, **(pm_user or {})}
        table = None
        if not spec.get("path"):
            table = read_well_metadata(p["metadata"], loader, strict=strict, report=report)
        elif p.get("metadata"):
            log.warning("%s: plate_map.path given; metadata %s not read", loader, p["metadata"])
        wells = build_plate_map(spec, res.sheet, table=table, strict=strict, report=report)
    elif pm_user:
        raise MorphobenchError(f"{loader}: plate_map options need the per-well metadata table(s) "
                               "(metadata: or plate_map.path)")
    if p.get("moa_table"):
        if wells is None:
            raise MorphobenchError(f"{loader}: moa_table needs a plate map (set metadata: to the "
                                   "per-well metadata table(s))")
        wells = add_moa(wells, p["moa_table"], strict=strict, report=report,
                        where=f"{loader} plate map")
    return LoadResult(res.sheet, wells, report)
