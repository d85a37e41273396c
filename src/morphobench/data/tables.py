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
#: Rows that are negative controls (a pandas query over a profile table).
DEFAULT_CONTROL_QUERY = 'Metadata_PertType == "negcon"'


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


def control_mask(df: pd.DataFrame, query: str | None = DEFAULT_CONTROL_QUERY,
                 mask: np.ndarray | pd.Series | None = None, *, source: str = "profiles") -> np.ndarray:
    """Boolean mask of control rows from an explicit ``mask`` or a pandas ``query`` string."""
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != (len(df),):
            raise MorphobenchError(f"{source}: control mask has shape {m.shape}, expected ({len(df)},)")
    else:
        if not query:
            raise MorphobenchError(f"{source}: no control definition (query or mask)")
        try:
            idx = df.query(query).index
        except Exception as err:
            raise MorphobenchError(f"{source}: bad control query {query!r}: {err}") from err
        m = df.index.isin(idx)
    if not m.any():
        raise MorphobenchError(f"{source}: no control rows (query {query!r})")
    return m


def gene_rows(df: pd.DataFrame) -> pd.Series:
    """CRISPR gene perturbations: treatments with a gene and no compound."""
    is_trt = df["Metadata_PertType"].eq("trt") if "Metadata_PertType" in df else True
    has_gene = df["Metadata_Gene"].notna() if "Metadata_Gene" in df else False
    no_cpd = df["Metadata_Compound"].isna() if "Metadata_Compound" in df else True
    return pd.Series(is_trt & has_gene & no_cpd, index=df.index)
