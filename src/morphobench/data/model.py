"""The one data model shared by every stage (see DESIGN.md, "Data model").

- Image sheet  ``results/{dataset}/images.parquet``: one row per site, JUMP ``load_data`` style.
- Plate map    ``results/{dataset}/wells.parquet``: one row per plate × well.
- Profiles     parquet with ``Metadata_*`` columns + numeric feature columns.

Validators raise :class:`~morphobench.io.MorphobenchError` naming the file and column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from morphobench.io import MorphobenchError

#: Cell Painting channels in canonical order (optional extra channels such as Brightfield follow).
CHANNELS: tuple[str, ...] = ("DNA", "ER", "RNA", "AGP", "Mito")
OPTIONAL_CHANNELS: tuple[str, ...] = ("Brightfield", "HighZBF", "LowZBF")

#: CPJUMP1 / JUMP file channel numbers (``-chN``) → channel names. In the CPJUMP1 index ch6 is
#: HZ_BF (high-z brightfield), ch7 LZ_BF (low-z) and ch8 BF (in-focus brightfield); names as in
#: JUMP's load_data files.
JUMP_CHANNEL_NUMBERS: dict[int, str] = {1: "Mito", 2: "AGP", 3: "RNA", 4: "ER", 5: "DNA",
                                         6: "HighZBF", 7: "LowZBF", 8: "Brightfield"}

SITE_KEYS: tuple[str, ...] = ("Metadata_Source", "Metadata_Batch", "Metadata_Plate",
                              "Metadata_Well", "Metadata_Site")
WELL_KEYS: tuple[str, ...] = ("Metadata_Plate", "Metadata_Well")
PLATE_MAP_REQUIRED: tuple[str, ...] = ("Metadata_Plate", "Metadata_Well", "Metadata_Perturbation",
                                       "Metadata_PertType")
PLATE_MAP_OPTIONAL: tuple[str, ...] = ("Metadata_Gene", "Metadata_Target", "Metadata_MoA",
                                       "Metadata_Compound", "Metadata_CellType")
PERT_TYPES: frozenset[str] = frozenset({"trt", "negcon", "poscon"})


def filename_col(channel: str) -> str:
    return f"FileName_Orig{channel}"


def pathname_col(channel: str) -> str:
    return f"PathName_Orig{channel}"


def sheet_channels(sheet: pd.DataFrame) -> list[str]:
    """Channels present in an image sheet, canonical Cell Painting order first."""
    chans = [c[len("FileName_Orig"):] for c in sheet.columns if c.startswith("FileName_Orig")]
    order = {c: i for i, c in enumerate(CHANNELS + OPTIONAL_CHANNELS)}
    return sorted(chans, key=lambda c: (order.get(c, len(order)), c))


def metadata_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("Metadata_")]


def feature_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if not c.startswith("Metadata_")]


def well_name(row: int, col: int) -> str:
    """0-based row/col → ``A01`` style well name (rows beyond Z continue AA, AB, … as in 1536)."""
    letters = ""
    r = row
    while True:
        letters = chr(ord("A") + r % 26) + letters
        r = r // 26 - 1
        if r < 0:
            break
    return f"{letters}{col + 1:02d}"


def parse_well(well: str) -> tuple[int, int]:
    """``A01`` → (0, 0). Raises MorphobenchError on malformed names."""
    letters = "".join(ch for ch in well if ch.isalpha())
    digits = well[len(letters):]
    if not letters or not digits.isdigit() or well != letters + digits:
        raise MorphobenchError(f"malformed well name {well!r} (expected e.g. 'A01')")
    r = 0
    for ch in letters.upper():
        r = r * 26 + (ord(ch) - ord("A") + 1)
    return r - 1, int(digits) - 1


def _require(df: pd.DataFrame, cols: Iterable[str], what: str, source: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise MorphobenchError(f"{what} {source}: missing column(s) {missing}")


def validate_image_sheet(sheet: pd.DataFrame, source: str = "<image sheet>") -> list[str]:
    """Check an image sheet; return its channels."""
    _require(sheet, SITE_KEYS, "image sheet", source)
    chans = sheet_channels(sheet)
    if not chans:
        raise MorphobenchError(f"image sheet {source}: no FileName_Orig<Channel> columns")
    for ch in chans:
        _require(sheet, [pathname_col(ch)], "image sheet", source)
        for col in (filename_col(ch), pathname_col(ch)):
            if sheet[col].isna().any():
                bad = sheet.loc[sheet[col].isna(), list(SITE_KEYS)].head(3).to_dict("records")
                raise MorphobenchError(f"image sheet {source}: column {col} is empty for {bad}")
    dup = sheet.duplicated(list(SITE_KEYS))
    if dup.any():
        raise MorphobenchError(
            f"image sheet {source}: duplicated sites {sheet.loc[dup, list(SITE_KEYS)].head(3).to_dict('records')}")
    return chans


def validate_plate_map(wells: pd.DataFrame, source: str = "<plate map>") -> None:
    _require(wells, PLATE_MAP_REQUIRED, "plate map", source)
    bad = ~wells["Metadata_PertType"].isin(PERT_TYPES)
    if bad.any():
        raise MorphobenchError(
            f"plate map {source}: column Metadata_PertType has values "
            f"{sorted(set(wells.loc[bad, 'Metadata_PertType'].astype(str)))}; allowed {sorted(PERT_TYPES)}")
    dup = wells.duplicated(list(WELL_KEYS))
    if dup.any():
        raise MorphobenchError(
            f"plate map {source}: duplicated wells {wells.loc[dup, list(WELL_KEYS)].head(3).to_dict('records')}")


def validate_profiles(df: pd.DataFrame, source: str = "<profiles>",
                      required_meta: Sequence[str] = ()) -> list[str]:
    """Check a profile table: metadata present, ≥1 numeric feature, no NaN/inf. Returns features."""
    _require(df, required_meta, "profiles", source)
    feats = feature_columns(df)
    if not feats:
        raise MorphobenchError(f"profiles {source}: no feature columns (all columns start with Metadata_)")
    nonnum = [c for c in feats if not pd.api.types.is_numeric_dtype(df[c])]
    if nonnum:
        raise MorphobenchError(f"profiles {source}: non-numeric feature column(s) {nonnum[:5]} "
                               "(metadata columns must start with 'Metadata_')")
    x = df[feats].to_numpy(dtype=np.float64, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        rows, cols = np.where(~finite)
        examples = [(feats[c], df.index[r]) for r, c in zip(rows[:3], cols[:3], strict=False)]
        raise MorphobenchError(
            f"profiles {source}: {int((~finite).sum())} NaN/inf value(s), e.g. (column, row) {examples}")
    return feats
