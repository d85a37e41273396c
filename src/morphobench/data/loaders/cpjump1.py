"""The ``cpjump1`` loader: the CPJUMP1 image index of the resources
(``resources/cpjump1/images_index.parquet``, one row per image) pivoted to one row per site;
paths point into a local mirror of the Cell Painting Gallery bucket (``image_root``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from morphobench.data.tables import (
    CHANNELS,
    SITE_KEYS,
    filename_col,
    pathname_col,
)
from morphobench.data.loaders.common import (
    LoadResult,
    COMMON_KEYS,
    _N_EXAMPLES,
    _as_list,
    _finish_sheet,
    _normalize_wells,
    _sites,
)
from morphobench.data.loaders.plate_map import build_plate_map
from morphobench.io import MorphobenchError

#: CPJUMP1 index ``Metadata_ChannelName`` → sheet channel. The brightfield planes take JUMP's
#: ``load_data`` names (``OrigBrightfield``, ``OrigHighZBF``, ``OrigLowZBF``); in the index
#: ``-ch6`` is HZ_BF, ``-ch7`` LZ_BF and ``-ch8`` BF.
CPJUMP1_CHANNELS: dict[str, str] = {"DNA": "DNA", "ER": "ER", "RNA": "RNA", "AGP": "AGP",
                                    "Mito": "Mito", "BF": "Brightfield", "HZ_BF": "HighZBF",
                                    "LZ_BF": "LowZBF"}

#: Keys of the ``cpjump1`` loader.
KEYS: dict[str, tuple[str, Any, str]] = {
    **COMMON_KEYS,
    "image_root": ("str", None, "required: local mirror root; url_prefix is replaced by it"),
    "index": ("str", "<resources>/cpjump1/images_index.parquet", "CPJUMP1 image index"),
    "url_prefix": ("str", "s3://cellpainting-gallery/", "prefix of Metadata_FileUrl that "
                   "image_root replaces"),
    "channels": ("list[str]", list(CHANNELS), "sheet channels to keep (DNA ER RNA AGP Mito "
                 "Brightfield HighZBF LowZBF)"),
}
_CPJUMP1_NEED = ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ChannelName",
                 "Metadata_FileUrl", "Metadata_Filename")


def cpjump1_sheet(params: Mapping, *, dataset: str | None = None,
                  resources_dir: str | os.PathLike = "resources") -> LoadResult:
    """Image sheet of CPJUMP1 (``cpg0000-jump-pilot``, source_4) from the resources' image index.

    ``Metadata_FileUrl`` is ``s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/images/
    2020_11_04_CPJUMP1/images/<plate>__<date>-Measurement1/Images/rXXcXXfXXp01-chXsk1fk1fl1.tiff``;
    the sheet's PathName is that URL's folder with ``url_prefix`` replaced by ``image_root`` —
    e.g. after ``aws s3 sync --no-sign-request s3://cellpainting-gallery/cpg0000-jump-pilot/...
    /data/cpg/cpg0000-jump-pilot/...`` use ``image_root: /data/cpg``.
    """
    import pyarrow.parquet as pq

    report: dict[str, Any] = {}
    strict = bool(params.get("strict", False))
    image_root = params.get("image_root")
    if not image_root:
        raise MorphobenchError("cpjump1: image_root is required (the local folder that mirrors "
                               "the Cell Painting Gallery bucket, see url_prefix)")
    index = Path(params.get("index") or Path(resources_dir) / "cpjump1" / "images_index.parquet")
    if not index.is_file():
        raise MorphobenchError(f"cpjump1: image index not found: {index} (built by `python -m "
                               "morphobench.resources build cpjump1/images_index.parquet`)")
    try:
        names = pq.ParquetFile(index).schema_arrow.names
    except Exception as err:
        raise MorphobenchError(f"cpjump1: cannot read image index {index}: {err}") from err
    missing = [c for c in _CPJUMP1_NEED if c not in names]
    if missing:
        raise MorphobenchError(f"cpjump1: image index {index}: missing column(s) {missing}")
    plates = [str(p) for p in _as_list(params.get("plates"))]
    filters = [("Metadata_Plate", "in", plates)] if plates else None
    df = pq.read_table(index, columns=list(_CPJUMP1_NEED), filters=filters).to_pandas()
    where = f"cpjump1 index {index}"
    if df.empty:
        raise MorphobenchError(f"{where}: no images" + (f" for plates {plates}" if plates else ""))

    wanted = [str(c) for c in _as_list(params.get("channels")) or CHANNELS]
    known = set(CPJUMP1_CHANNELS.values())
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise MorphobenchError(f"cpjump1: unknown channel(s) {unknown} (available: "
                               f"{sorted(known)})")
    unknown_idx = sorted(set(df["Metadata_ChannelName"].astype(str)) - set(CPJUMP1_CHANNELS))
    if unknown_idx:
        raise MorphobenchError(f"{where}: column Metadata_ChannelName has unknown value(s) "
                               f"{unknown_idx}")
    df["channel"] = df["Metadata_ChannelName"].astype(str).map(CPJUMP1_CHANNELS)
    df = df[df["channel"].isin(wanted)]

    url = df["Metadata_FileUrl"].astype(str)
    prefix = str(params.get("url_prefix") or "s3://cellpainting-gallery/")
    bad = ~url.str.startswith(prefix)
    if bad.any():
        raise MorphobenchError(f"{where}: {int(bad.sum())} Metadata_FileUrl value(s) do not start "
                               f"with url_prefix {prefix!r}, e.g. {url[bad].head(3).tolist()}")
    rel_dir = url.str.slice(len(prefix)).str.rsplit("/", n=1).str[0]
    root = str(image_root)
    df["PathName"] = rel_dir.map({d: os.path.join(root, d) for d in pd.unique(rel_dir)})
    base = url.str.rsplit("/", n=1).str[-1]
    mism = base != df["Metadata_Filename"].astype(str)
    if mism.any():
        raise MorphobenchError(f"{where}: Metadata_Filename differs from the URL's file name, e.g. "
                               f"{df.loc[mism, 'Metadata_Filename'].head(3).tolist()}")
    src = re.search(r"/(source_[^/]+)/", url.iloc[0]) if len(url) else None
    bat = re.search(r"/images/([^/]+)/images/", url.iloc[0]) if len(url) else None
    df["Metadata_Source"] = str(params.get("source") or (src.group(1) if src else dataset)
                                or "source_4")
    df["Metadata_Batch"] = str(params.get("batch") or (bat.group(1) if bat else "batch1"))
    df["Metadata_Plate"] = df["Metadata_Plate"].astype(str)
    df["Metadata_Well"] = _normalize_wells(df["Metadata_Well"], where)
    df["Metadata_Site"] = _sites(df["Metadata_Site"], where)

    keys = list(SITE_KEYS)
    dup = df.duplicated(keys + ["channel"], keep=False)
    if dup.any():
        ex = df.loc[dup, keys[2:] + ["channel", "Metadata_Filename"]].head(_N_EXAMPLES)
        raise MorphobenchError(f"{where}: {int(dup.sum())} images share a site and channel "
                               f"(duplicated sites), e.g. {ex.to_dict('records')}")
    wide = df.pivot(index=keys, columns="channel", values=["Metadata_Filename", "PathName"])
    rows = pd.DataFrame(index=wide.index)
    for ch in wanted:
        if ("Metadata_Filename", ch) in wide.columns:
            rows[filename_col(ch)] = wide[("Metadata_Filename", ch)]
            rows[pathname_col(ch)] = wide[("PathName", ch)]
        else:
            rows[filename_col(ch)] = None
            rows[pathname_col(ch)] = None
    rows = rows.reset_index()
    sheet = _finish_sheet(rows, wanted, where, report, strict, plates or None,
                          bool(params.get("check_files", False)))
    wells = None
    if params.get("plate_map"):
        wells = build_plate_map(params["plate_map"], sheet, strict=strict, report=report)
    return LoadResult(sheet, wells, report)
