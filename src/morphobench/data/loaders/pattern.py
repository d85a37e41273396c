"""The ``pattern`` loader: a folder of images whose relative paths match a regular expression
with the named groups ``plate``, ``well``, ``site``, ``channel`` (optional ``batch``), e.g. RxRx
``{experiment}/Plate{n}/{well}_s{site}_w{channel}.png``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from morphobench.data.tables import (
    SITE_KEYS,
    filename_col,
    pathname_col,
)
from morphobench.data.loaders.common import (
    IMAGE_EXTENSIONS,
    LoadResult,
    COMMON_KEYS,
    _N_EXAMPLES,
    _as_list,
    _channel_map,
    _finish_sheet,
    _format_rows,
    _normalize_wells,
    _report_skipped,
    _sites,
)
from morphobench.data.loaders.plate_map import build_plate_map
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.data")

#: RxRx1/RxRx2/RxRx3 file channel ``w1``…``w6`` → sheet channel. Stains: w1 Hoechst 33342,
#: w2 concanavalin A (ER), w3 phalloidin (actin), w4 SYTO 14 (RNA), w5 MitoTracker, w6 WGA
#: (Golgi / plasma membrane). Cell Painting stains actin and WGA in one channel (AGP); RxRx images
#: them separately, so w3 becomes ``AGP`` and w6 keeps its stain name ``WGA``.
RXRX_CHANNELS: dict[str, str] = {"1": "DNA", "2": "ER", "3": "AGP", "4": "RNA", "5": "Mito",
                                 "6": "WGA"}

#: Keys of the ``pattern`` loader.
KEYS: dict[str, tuple[str, Any, str]] = {
    **COMMON_KEYS,
    "image_root": ("str", None, "required: folder scanned recursively"),
    "pattern": ("str", None, "required: regex fully matching the path relative to image_root "
                "('/' separators), groups plate well site channel [batch]"),
    "channels": ("map str→str", None, "channel group value → sheet channel; default: values as "
                 "is; unmapped values are skipped and reported"),
    "plate_format": ("str", "{plate}", "Metadata_Plate from the groups, e.g. {batch}_P{plate}"),
    "extensions": ("list[str]", list(IMAGE_EXTENSIONS), "image file suffixes considered"),
}


def pattern_sheet(params: Mapping, *, dataset: str | None = None) -> LoadResult:
    """Image sheet from a folder whose relative file paths match ``pattern`` (RxRx layout)."""
    return scan_pattern_tree(params, dataset=dataset, loader="pattern")


def scan_pattern_tree(params: Mapping, *, dataset: str | None = None,
                      loader: str = "pattern") -> LoadResult:
    """:func:`pattern_sheet` for any loader built on a regex over an image tree (``loader`` names
    it in messages; the ``bbbc036`` / ``bbbc037`` loaders use it with their own defaults)."""
    report: dict[str, Any] = {}
    strict = bool(params.get("strict", False))
    root = params.get("image_root")
    if not root:
        raise MorphobenchError(f"{loader}: image_root is required")
    if not Path(root).is_dir():
        raise MorphobenchError(f"{loader}: image_root {root} is not a directory")
    pat = params.get("pattern")
    if not pat:
        raise MorphobenchError(f"{loader}: `pattern` is required (a regex with named groups plate, "
                               "well, site, channel, optional batch)")
    try:
        rx = re.compile(str(pat))
    except re.error as err:
        raise MorphobenchError(f"{loader}: invalid regular expression {pat!r}: {err}") from err
    need = {"plate", "well", "site", "channel"}
    if not need <= set(rx.groupindex):
        raise MorphobenchError(f"{loader}: regex {pat!r} lacks named group(s) "
                               f"{sorted(need - set(rx.groupindex))}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower()
                 for e in _as_list(params.get("extensions")) or IMAGE_EXTENSIONS)
    where = f"{loader} loader, image_root {root}"

    records, unmatched, other = [], [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        reldir = os.path.relpath(dirpath, root)
        reldir = "" if reldir == "." else reldir.replace(os.sep, "/")
        for fn in sorted(filenames):
            if not fn.lower().endswith(exts):
                other += 1
                continue
            rel = f"{reldir}/{fn}" if reldir else fn
            m = rx.fullmatch(rel)
            if m is None:
                unmatched.append(rel)
                continue
            rec = {k: (v if v is not None else "") for k, v in m.groupdict().items()}
            rec["_dir"] = os.path.join(str(root), reldir) if reldir else str(root)
            rec["_file"] = fn
            rec["_rel"] = rel
            records.append(rec)
    if other:
        log.info("%s: %d file(s) without an image suffix %s ignored", where, other, list(exts))
    _report_skipped(report, "unmatched_files", len(unmatched), unmatched,
                    f"{where}: image file(s) not matching the pattern {pat!r}", strict)
    if not records:
        raise MorphobenchError(f"{where}: no image file matches the pattern {pat!r} "
                               f"({len(unmatched)} image file(s) did not match)")
    df = pd.DataFrame.from_records(records)
    df["channel"] = df["channel"].astype(str)
    seen = sorted(df["channel"].unique())
    chmap = _channel_map(params.get("channels"), seen, where, strip_orig=False)
    unmapped = ~df["channel"].isin(list(chmap))
    _report_skipped(report, "unmapped_channel_files", int(unmapped.sum()),
                    df.loc[unmapped, "_rel"].tolist(),
                    f"{where}: image file(s) of channels not in the channel mapping "
                    f"{sorted(set(df.loc[unmapped, 'channel']))}", strict)
    df = df[~unmapped].copy()
    df["channel"] = df["channel"].map(chmap)

    df["Metadata_Site"] = _sites(df["site"], where)
    df["Metadata_Well"] = _normalize_wells(df["well"], where)
    df["Metadata_Plate"] = _format_rows(df, str(params.get("plate_format") or "{plate}"), where)
    if params.get("batch") is not None:
        df["Metadata_Batch"] = str(params["batch"])
    elif "batch" in df.columns:
        df["Metadata_Batch"] = df["batch"].astype(str)
    else:
        df["Metadata_Batch"] = "batch1"
    df["Metadata_Source"] = str(params.get("source") or dataset or loader)
    keys = list(SITE_KEYS)
    dup = df.duplicated(keys + ["channel"], keep=False)
    if dup.any():
        ex = df.loc[dup].sort_values(keys + ["channel"])["_rel"].head(_N_EXAMPLES).tolist()
        raise MorphobenchError(f"{where}: {int(dup.sum())} files map to the same site and channel "
                               f"(duplicated sites), e.g. {ex}")
    wide = df.pivot(index=keys, columns="channel", values=["_file", "_dir"])
    channels = [c for c in dict.fromkeys(chmap.values())]
    rows = pd.DataFrame(index=wide.index)
    for ch in channels:
        if ("_file", ch) in wide.columns:
            rows[filename_col(ch)] = wide[("_file", ch)]
            rows[pathname_col(ch)] = wide[("_dir", ch)]
        else:
            rows[filename_col(ch)] = None
            rows[pathname_col(ch)] = None
    rows = rows.reset_index()
    sheet = _finish_sheet(rows, channels, where, report, strict, params.get("plates"),
                          bool(params.get("check_files", False)))
    wells = None
    if params.get("plate_map"):
        wells = build_plate_map(params["plate_map"], sheet, strict=strict, report=report)
    return LoadResult(sheet, wells, report)
