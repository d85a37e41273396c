"""Real screen layouts → the shared image sheet and plate map (DESIGN.md, "Data model").

One entry point, :func:`build_sheet`, dispatches on ``ds_cfg["loader"]``:

``load_data``
    CellProfiler / JUMP ``load_data`` CSVs (one or several, concatenated): ``FileName_Orig<Ch>``,
    ``PathName_Orig<Ch>``, ``Metadata_Plate/Well/Site`` (``Source``/``Batch`` optional), also the
    ``Image_``-prefixed form written by ExportToDatabase (``Image_FileName_OrigDNA`` …).
``cpjump1``
    The CPJUMP1 image index of the resources (``resources/cpjump1/images_index.parquet``, one row
    per image) pivoted to one row per site; paths point into a local mirror of the Cell Painting
    Gallery bucket (``image_root``).
``pattern``
    A folder of images whose relative paths match a regular expression with the named groups
    ``plate``, ``well``, ``site``, ``channel`` (optional ``batch``), e.g. RxRx
    ``{experiment}/Plate{n}/{well}_s{site}_w{channel}.png``.
``bbbc022``
    BBBC022's ``BBBC022_v1_image.csv`` (a ``load_data``-style table with BBBC column names and the
    compound annotations) — image sheet and plate map in one file.

Every loader returns a :class:`LoadResult`: the sheet (validated with
:func:`~morphobench.data.tables.validate_image_sheet`), the plate map when the layout or the
``plate_map`` option provides one (validated with
:func:`~morphobench.data.tables.validate_plate_map`), and a report of what was skipped.
Wells are normalised to ``A01`` (``A1``, ``a01``, ``r01c01`` accepted).

Nothing is dropped silently: files that do not match a pattern, images of channels that are not
mapped, incomplete sites (a channel missing) and malformed CSV lines are counted and logged with
examples, and ``strict: true`` turns each of these into an error. Missing columns, unknown
channels, duplicated sites and an empty result are always errors.

The keys each loader accepts, with their types, defaults and meaning, are in :data:`LOADER_KEYS`.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from morphobench.data.tables import (
    CHANNELS,
    PLATE_MAP_REQUIRED,
    SITE_KEYS,
    WELL_KEYS,
    filename_col,
    parse_well,
    pathname_col,
    validate_image_sheet,
    validate_plate_map,
    well_name,
)
from morphobench.io import MorphobenchError, write_parquet

log = logging.getLogger("morphobench.data")

#: CPJUMP1 index ``Metadata_ChannelName`` → sheet channel. The brightfield planes take JUMP's
#: ``load_data`` names (``OrigBrightfield``, ``OrigHighZBF``, ``OrigLowZBF``); in the index
#: ``-ch6`` is HZ_BF, ``-ch7`` LZ_BF and ``-ch8`` BF.
CPJUMP1_CHANNELS: dict[str, str] = {"DNA": "DNA", "ER": "ER", "RNA": "RNA", "AGP": "AGP",
                                    "Mito": "Mito", "BF": "Brightfield", "HZ_BF": "HighZBF",
                                    "LZ_BF": "LowZBF"}
#: RxRx1/RxRx2/RxRx3 file channel ``w1``…``w6`` → sheet channel. Stains: w1 Hoechst 33342,
#: w2 concanavalin A (ER), w3 phalloidin (actin), w4 SYTO 14 (RNA), w5 MitoTracker, w6 WGA
#: (Golgi / plasma membrane). Cell Painting stains actin and WGA in one channel (AGP); RxRx images
#: them separately, so w3 becomes ``AGP`` and w6 keeps its stain name ``WGA``.
RXRX_CHANNELS: dict[str, str] = {"1": "DNA", "2": "ER", "3": "AGP", "4": "RNA", "5": "Mito",
                                 "6": "WGA"}
#: BBBC022 ``Image_FileName_Orig<X>`` → sheet channel (files ``…_w1`` … ``_w5`` in that order).
BBBC022_CHANNELS: dict[str, str] = {"Hoechst": "DNA", "ER": "ER", "Syto": "RNA",
                                    "Ph_golgi": "AGP", "Mito": "Mito"}
BBBC022_COLUMNS: dict[str, str] = {"Metadata_Plate": "Metadata_PlateID",
                                   "Metadata_Well": "Metadata_CPD_WELL_POSITION",
                                   "Metadata_Site": "Metadata_Site"}
BBBC022_PLATE_MAP: dict[str, Any] = {
    "perturbation": ["Metadata_BROAD_ID", "Metadata_SOURCE_COMPOUND_NAME"],
    "missing_perturbation": "DMSO",
    "pert_type": "Metadata_ASSAY_WELL_ROLE",
    "pert_type_values": {"mock": "negcon"},
    "negcon": ["DMSO"],
    "columns": {"Metadata_Compound": "Metadata_SOURCE_COMPOUND_NAME",
                "Metadata_Concentration": "Metadata_CPD_MMOL_CONC",
                "Metadata_PlateMapName": "Metadata_CPD_PLATE_MAP_NAME"},
}
IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2")
_PLATE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHANNEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_N_EXAMPLES = 5

_COMMON = {
    "loader": ("str", None, "load_data | cpjump1 | pattern | bbbc022"),
    "source": ("str", "<dataset name>", "Metadata_Source for every site (overrides a column)"),
    "batch": ("str", "<see loader>", "Metadata_Batch for every site (overrides a column / group)"),
    "plates": ("list[str]", None, "keep only these plates (error if one is absent)"),
    "strict": ("bool", False, "fail on skipped files / incomplete sites / malformed lines"),
    "check_files": ("bool", False, "stat every image path; error listing missing files"),
    "plate_map": ("map", None, "plate map options (see PLATE_MAP_KEYS)"),
}
#: Keys of each loader: name → (type, default, meaning). ``build_sheet`` rejects other keys.
LOADER_KEYS: dict[str, dict[str, tuple[str, Any, str]]] = {
    "load_data": {
        **_COMMON,
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
    },
    "cpjump1": {
        **_COMMON,
        "image_root": ("str", None, "required: local mirror root; url_prefix is replaced by it"),
        "index": ("str", "<resources>/cpjump1/images_index.parquet", "CPJUMP1 image index"),
        "url_prefix": ("str", "s3://cellpainting-gallery/", "prefix of Metadata_FileUrl that "
                       "image_root replaces"),
        "channels": ("list[str]", list(CHANNELS), "sheet channels to keep (DNA ER RNA AGP Mito "
                     "Brightfield HighZBF LowZBF)"),
    },
    "pattern": {
        **_COMMON,
        "image_root": ("str", None, "required: folder scanned recursively"),
        "pattern": ("str", None, "required: regex fully matching the path relative to image_root "
                    "('/' separators), groups plate well site channel [batch]"),
        "channels": ("map str→str", None, "channel group value → sheet channel; default: values as "
                     "is; unmapped values are skipped and reported"),
        "plate_format": ("str", "{plate}", "Metadata_Plate from the groups, e.g. {batch}_P{plate}"),
        "extensions": ("list[str]", list(IMAGE_EXTENSIONS), "image file suffixes considered"),
    },
    "bbbc022": {
        **_COMMON,
        "csv": ("str | list[str]", None, "required: BBBC022_v1_image.csv"),
        "channels": ("map str→str", dict(BBBC022_CHANNELS), "as load_data"),
        "columns": ("map str→str", dict(BBBC022_COLUMNS), "as load_data"),
        "image_root": ("str", None, "folder holding the unzipped BBBC022_v1_images_<plate>w<k>/"),
        "path_map": ("map str→str", None, "as load_data"),
        "dir_template": ("str | null", "BBBC022_v1_images_{plate}w{w}", "as load_data; null: "
                         "the CSV's PathName"),
    },
}
#: Keys of ``plate_map``: name → (type, default, meaning).
PLATE_MAP_KEYS: dict[str, tuple[str, Any, str]] = {
    "path": ("str | list[str]", None, "table(s) (csv/tsv/txt/parquet, globs ok); default: the "
             "loader's own CSV (load_data, bbbc022); required for cpjump1 and pattern"),
    "plate": ("str", "Metadata_Plate", "plate column, or a format string over columns "
              "('{experiment_name}_P{plate}')"),
    "well": ("str", "Metadata_Well", "well column (A01, A1, r01c01 accepted)"),
    "perturbation": ("str | list[str]", None, "required: column(s); first non-empty wins"),
    "missing_perturbation": ("str", None, "value for wells with no perturbation (default: error)"),
    "pert_type": ("str", None, "column whose values give Metadata_PertType"),
    "pert_type_values": ("map str→str", None, "raw pert_type value → trt/negcon/poscon"),
    "default_pert_type": ("str", "trt", "PertType of values not mapped"),
    "negcon": ("list[str]", [], "perturbations that are negative controls (overrides)"),
    "poscon": ("list[str]", [], "perturbations that are positive controls (overrides)"),
    "columns": ("map str→str|list", {}, "Metadata_Gene/Target/MoA/Compound/CellType/… ← column(s)"),
    "barcode_platemap": ("map", None, "{path, barcode: Assay_Plate_Barcode, platemap: "
                         "Plate_Map_Name}: plate column of the table holds plate-map names"),
    "annotations": ("list[map]", [], "[{path, on, key}] tables left-joined on column `on` "
                    "(annotation column `key`, default = on) before the columns are read"),
}
_IGNORED_KEYS = frozenset({"description"})


@dataclass
class LoadResult:
    """What a loader produced: the image sheet, the plate map (``None``: the layout has none)."""

    sheet: pd.DataFrame
    wells: pd.DataFrame | None = None
    report: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
_RC_RE = re.compile(r"^[rR](\d+)[cC](\d+)$")
_WELL_RE = re.compile(r"^([A-Za-z]+)0*(\d+)$")


def normalize_well(well: Any) -> str:
    """``A1``, ``a01``, ``A001``, ``r01c01`` (1-based row/col) → ``A01``; error when malformed."""
    s = str(well).strip()
    m = _RC_RE.match(s)
    if m:
        r, c = int(m.group(1)), int(m.group(2))
        if r < 1 or c < 1:
            raise MorphobenchError(f"malformed well name {well!r} (rows/columns count from 1)")
        return well_name(r - 1, c - 1)
    m = _WELL_RE.match(s)
    if not m or int(m.group(2)) < 1:
        raise MorphobenchError(f"malformed well name {well!r} (expected e.g. 'A01', 'A1', 'r01c01')")
    r, c = parse_well(f"{m.group(1).upper()}{int(m.group(2)):02d}")
    return well_name(r, c)


def _normalize_wells(values: pd.Series, where: str) -> pd.Series:
    uniq = pd.unique(values.astype(str))
    mapping, bad = {}, []
    for u in uniq:
        try:
            mapping[u] = normalize_well(u)
        except MorphobenchError:
            bad.append(u)
    if bad:
        raise MorphobenchError(f"{where}: {len(bad)} malformed well name(s), e.g. {bad[:_N_EXAMPLES]} "
                               "(expected e.g. 'A01', 'A1', 'r01c01')")
    return values.astype(str).map(mapping)


def _sites(values: pd.Series, where: str) -> pd.Series:
    num = pd.to_numeric(values, errors="coerce")
    bad = num.isna() | (num != num.round())
    if bad.any():
        raise MorphobenchError(f"{where}: column Metadata_Site has non-integer values "
                               f"{sorted(set(values[bad].astype(str)))[:_N_EXAMPLES]}")
    return num.astype("int64")


def _check_plates(plates: pd.Series, where: str) -> None:
    bad = [p for p in pd.unique(plates) if not _PLATE_RE.match(str(p))]
    if bad:
        raise MorphobenchError(
            f"{where}: plate name(s) {bad[:_N_EXAMPLES]} are not usable as file names (allowed: "
            "letters, digits, '.', '_', '-'); set plate_format / columns to build other names")


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike)):
        return [x]
    return list(x)


def _expand_paths(spec: Any, what: str) -> list[Path]:
    """Paths and glob patterns → existing files, in the given order (globs sorted)."""
    out: list[Path] = []
    for item in _as_list(spec):
        s = str(item)
        if any(ch in s for ch in "*?["):
            hits = sorted(_glob.glob(s, recursive=True))
            if not hits:
                raise MorphobenchError(f"{what}: no file matches {s!r}")
            out.extend(Path(h) for h in hits)
        else:
            p = Path(s)
            if not p.is_file():
                raise MorphobenchError(f"{what} not found: {p}")
            out.append(p)
    if not out:
        raise MorphobenchError(f"{what}: no file given")
    return out


def _report_skipped(report: dict, key: str, count: int, examples: Sequence[Any], message: str,
                    strict: bool) -> None:
    """Record skipped items; log them with examples, or raise when ``strict``."""
    if not count:
        return
    report[key] = {"count": int(count), "examples": [str(e) for e in examples[:_N_EXAMPLES]]}
    text = f"{message}: {count} (e.g. {list(examples[:_N_EXAMPLES])})"
    if strict:
        raise MorphobenchError(f"{text}; strict: true forbids skipping")
    log.warning("%s — skipped (strict: true makes this an error)", text)


def read_csv_table(path: str | os.PathLike, *, strict: bool = False,
                   report: dict | None = None) -> pd.DataFrame:
    """Read a CSV/TSV/TXT/parquet table as strings (empty cells → ``""``).

    Malformed CSV lines (too many fields) are counted and logged with examples — an error when
    ``strict`` — instead of failing the whole file or being dropped silently.
    """
    path = Path(path)
    if not path.is_file():
        raise MorphobenchError(f"table not found: {path}")
    name = path.name.lower()
    if name.endswith(".parquet"):
        try:
            df = pd.read_parquet(path)
        except Exception as err:
            raise MorphobenchError(f"cannot read {path}: {err}") from err
        return df.astype(object).where(df.notna(), "").astype(str)
    sep = "\t" if name.endswith((".tsv", ".txt", ".tsv.gz", ".txt.gz")) else ","
    kw = dict(sep=sep, dtype=str, keep_default_na=False, na_values=[])
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.ParserError:
        pass
    except Exception as err:
        raise MorphobenchError(f"cannot read {path}: {err}") from err
    bad: list[str] = []

    def _bad(line: list[str]) -> None:
        bad.append(sep.join(line)[:120])
        return None

    try:
        df = pd.read_csv(path, engine="python", on_bad_lines=_bad, **kw)
    except Exception as err:
        raise MorphobenchError(f"cannot read {path}: {err}") from err
    _report_skipped(report if report is not None else {}, f"malformed_lines:{path.name}", len(bad),
                    bad, f"{path}: malformed line(s) with too many fields", strict)
    return df


def _format_rows(df: pd.DataFrame, template: str, where: str) -> pd.Series:
    """Vectorised ``template.format(**row)`` over the columns of ``df``."""
    out = pd.Series([""] * len(df), index=df.index, dtype=object)
    for literal, fld, spec, conv in string.Formatter().parse(template):
        if literal:
            out = out + literal
        if fld is None:
            continue
        if fld not in df.columns:
            raise MorphobenchError(f"{where}: template {template!r} uses {{{fld}}}, which is not "
                                   f"available (have {sorted(map(str, df.columns))})")
        col = df[fld]
        if spec or conv:
            piece = "{0" + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            vals = col.map(lambda v, p=piece: p.format(_maybe_int(v) if spec else v))
        else:
            vals = col.astype(str)
        out = out + vals.astype(str)
    return out.astype(str)


def _maybe_int(v: Any) -> Any:
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


def _finish_sheet(rows: pd.DataFrame, channels: Sequence[str], where: str,
                  report: dict, strict: bool, plates: Sequence[str] | None,
                  check_files: bool) -> pd.DataFrame:
    """Common tail: plate filter, incomplete sites, duplicates, order, validation."""
    if plates:
        wanted = [str(p) for p in plates]
        have = set(rows["Metadata_Plate"])
        missing = [p for p in wanted if p not in have]
        if missing:
            raise MorphobenchError(f"{where}: plate(s) {missing} not found (plates: "
                                   f"{sorted(have)[:10]}{' …' if len(have) > 10 else ''})")
        rows = rows[rows["Metadata_Plate"].isin(wanted)]
    fcols = [filename_col(c) for c in channels] + [pathname_col(c) for c in channels]
    empty = rows[fcols].isna() | (rows[fcols].astype(str) == "")
    incomplete = empty.any(axis=1)
    if incomplete.any():
        ex = []
        for i in rows.index[incomplete][:_N_EXAMPLES]:
            miss = sorted({c.split("_Orig", 1)[1] for c in fcols if empty.at[i, c]})
            ex.append("/".join(str(rows.at[i, k]) for k in SITE_KEYS[2:]) + f" lacks {miss}")
        _report_skipped(report, "incomplete_sites", int(incomplete.sum()), ex,
                        f"{where}: site(s) without an image for every channel", strict)
        rows = rows[~incomplete]
    if rows.empty:
        raise MorphobenchError(f"{where}: no sites left (empty image sheet)")
    _check_plates(rows["Metadata_Plate"], where)
    dup = rows.duplicated(list(SITE_KEYS), keep=False)
    if dup.any():
        ex = rows.loc[dup, list(SITE_KEYS)].head(_N_EXAMPLES).to_dict("records")
        raise MorphobenchError(f"{where}: {int(dup.sum())} rows share a site (duplicated "
                               f"Source/Batch/Plate/Well/Site), e.g. {ex}")
    cols = list(SITE_KEYS)
    for c in channels:
        cols += [filename_col(c), pathname_col(c)]
    sheet = rows[cols].copy()
    for k in SITE_KEYS:
        if k != "Metadata_Site":
            sheet[k] = sheet[k].astype(str)
    sheet["Metadata_Site"] = sheet["Metadata_Site"].astype("int64")
    for c in cols[len(SITE_KEYS):]:
        sheet[c] = sheet[c].astype(str)
    sheet = sheet.sort_values(list(SITE_KEYS), kind="stable").reset_index(drop=True)
    validate_image_sheet(sheet, where)
    if check_files:
        missing = []
        for c in channels:
            paths = sheet[pathname_col(c)] + "/" + sheet[filename_col(c)]
            missing += [p for p in paths if not os.path.exists(p)]
        if missing:
            raise MorphobenchError(f"{where}: {len(missing)} image file(s) not found, e.g. "
                                   f"{missing[:_N_EXAMPLES]} (check image_root / path_map)")
    report["sites"] = len(sheet)
    report["plates"] = int(sheet["Metadata_Plate"].nunique())
    report["channels"] = list(channels)
    return sheet


def _check_channel_name(name: str, where: str) -> str:
    name = str(name)
    if not _CHANNEL_RE.match(name):
        raise MorphobenchError(f"{where}: channel name {name!r} is not usable in a column name "
                               "(letters and digits, starting with a letter)")
    return name


def _channel_map(mapping: Mapping | None, available: Sequence[str], where: str,
                 strip_orig: bool) -> dict[str, str]:
    """Resolve a channel mapping against the available channels → {available: sheet name}."""
    if mapping is None:
        out = {c: c for c in available}
    else:
        if not isinstance(mapping, Mapping) or not mapping:
            raise MorphobenchError(f"{where}: channels must be a non-empty mapping "
                                   "source channel → sheet channel")
        out = {}
        for k, v in mapping.items():
            k = str(k)
            src = k
            if src not in available and strip_orig and src.startswith("Orig") and \
                    src[4:] in available:
                src = src[4:]
            if src not in available:
                raise MorphobenchError(f"{where}: unknown channel {k!r} in the channel mapping "
                                       f"(available: {sorted(available)})")
            out[src] = v
    for v in out.values():
        _check_channel_name(v, where)
    dup = sorted({v for v in out.values() if list(out.values()).count(v) > 1})
    if dup:
        raise MorphobenchError(f"{where}: channel mapping sends several channels to {dup}")
    return out


def _rewrite_paths(paths: pd.Series, path_map: Mapping | None, image_root: str | None) -> pd.Series:
    paths = paths.astype(str)
    if path_map:
        if not isinstance(path_map, Mapping):
            raise MorphobenchError("path_map must be a mapping old prefix → new prefix")
        items = [(str(k), str(v)) for k, v in path_map.items()]
        uniq = pd.unique(paths)
        table = {}
        for u in uniq:
            new = u
            for old, rep in items:
                if u.startswith(old):
                    new = rep + u[len(old):]
                    break
            table[u] = new
        paths = paths.map(table)
    if image_root:
        root = str(image_root)
        table = {u: (u if (os.path.isabs(u) or "://" in u or not u) else os.path.join(root, u))
                 for u in pd.unique(paths)}
        paths = paths.map(table)
    return paths.map(lambda p: p.rstrip("/") if len(p) > 1 else p)


# --------------------------------------------------------------------------------------------
# load_data CSVs (and BBBC022)
# --------------------------------------------------------------------------------------------
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


def bbbc022_sheet(params: Mapping, *, dataset: str | None = None) -> LoadResult:
    """Image sheet + plate map from ``BBBC022_v1_image.csv`` (DMSO / mock wells → negcon)."""
    defaults = {"channels": dict(BBBC022_CHANNELS), "columns": dict(BBBC022_COLUMNS),
                "source": dataset or "BBBC022", "batch": "BBBC022",
                "dir_template": "BBBC022_v1_images_{plate}w{w}",
                "plate_map": dict(BBBC022_PLATE_MAP)}
    params = dict(params)
    if "plate_map" in params and params["plate_map"] is not None:
        params["plate_map"] = {**BBBC022_PLATE_MAP, **params["plate_map"]}
    if params.get("dir_template", "<unset>") is not None and not params.get("image_root"):
        raise MorphobenchError("bbbc022: image_root is required (the folder holding the unzipped "
                               "BBBC022_v1_images_<plate>w<k>/ folders), or set dir_template: "
                               "null to use the CSV's PathName")
    if "dir_template" in params and params["dir_template"] is None:
        defaults["dir_template"] = None
    return _load_table_sheet(params, dataset=dataset, loader="bbbc022", defaults=defaults)


# --------------------------------------------------------------------------------------------
# CPJUMP1 image index
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Folder + filename pattern (RxRx and friends)
# --------------------------------------------------------------------------------------------
def pattern_sheet(params: Mapping, *, dataset: str | None = None) -> LoadResult:
    """Image sheet from a folder whose relative file paths match ``pattern`` (RxRx layout)."""
    report: dict[str, Any] = {}
    strict = bool(params.get("strict", False))
    root = params.get("image_root")
    if not root:
        raise MorphobenchError("pattern: image_root is required")
    if not Path(root).is_dir():
        raise MorphobenchError(f"pattern: image_root {root} is not a directory")
    pat = params.get("pattern")
    if not pat:
        raise MorphobenchError("pattern: `pattern` is required (a regex with named groups plate, "
                               "well, site, channel, optional batch)")
    try:
        rx = re.compile(str(pat))
    except re.error as err:
        raise MorphobenchError(f"pattern: invalid regular expression {pat!r}: {err}") from err
    need = {"plate", "well", "site", "channel"}
    if not need <= set(rx.groupindex):
        raise MorphobenchError(f"pattern: regex {pat!r} lacks named group(s) "
                               f"{sorted(need - set(rx.groupindex))}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower()
                 for e in _as_list(params.get("extensions")) or IMAGE_EXTENSIONS)
    where = f"pattern loader, image_root {root}"

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
    df["Metadata_Source"] = str(params.get("source") or dataset or "pattern")
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


# --------------------------------------------------------------------------------------------
# Plate maps
# --------------------------------------------------------------------------------------------
def _read_tables(spec: Any, what: str, strict: bool, report: dict) -> pd.DataFrame:
    files = _expand_paths(spec, what)
    frames = []
    for f in files:
        t = read_csv_table(f, strict=strict, report=report)
        t["_file"] = str(f)
        frames.append(t)
    return pd.concat(frames, ignore_index=True, sort=False).fillna("")


def _coalesce(df: pd.DataFrame, cols: Any, what: str, where: str) -> pd.Series:
    cols = [str(c) for c in _as_list(cols)]
    if not cols:
        raise MorphobenchError(f"{where}: {what} names no column")
    # the loader's own table has its ``Image_`` prefixes stripped
    cols = [c[len("Image_"):] if c not in df.columns and c.startswith("Image_")
            and c[len("Image_"):] in df.columns else c for c in cols]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        files = sorted(set(df["_file"])) if "_file" in df.columns else []
        raise MorphobenchError(f"plate map {', '.join(files) or where}: missing column(s) "
                               f"{missing} (for {what})")
    out = df[cols[0]].astype(str).str.strip()
    for c in cols[1:]:
        out = out.where(out != "", df[c].astype(str).str.strip())
    return out


def build_plate_map(spec: Mapping, sheet: pd.DataFrame, *, table: pd.DataFrame | None = None,
                    strict: bool = False, report: dict | None = None) -> pd.DataFrame:
    """Plate map (one row per plate × well of ``sheet``) from ``spec`` (see :data:`PLATE_MAP_KEYS`).

    ``table``: the loader's own table (used when ``spec`` has no ``path``).
    """
    report = report if report is not None else {}
    if not isinstance(spec, Mapping):
        raise MorphobenchError("plate_map must be a mapping (see PLATE_MAP_KEYS)")
    unknown = sorted(set(spec) - set(PLATE_MAP_KEYS))
    if unknown:
        raise MorphobenchError(f"plate_map: unknown key(s) {unknown} (known: "
                               f"{sorted(PLATE_MAP_KEYS)})")
    if spec.get("path"):
        df = _read_tables(spec["path"], "plate_map: path", strict, report)
    elif table is not None:
        df = table.copy()
    else:
        raise MorphobenchError("plate_map: `path` is required for this loader")
    where = ("plate map " + ", ".join(sorted(set(df["_file"].astype(str))))[:300]
             if "_file" in df.columns else "plate map")
    if spec.get("perturbation") is None:
        raise MorphobenchError("plate_map: `perturbation` (column name or list) is required")

    for ann in _as_list(spec.get("annotations")):
        if not isinstance(ann, Mapping) or "path" not in ann or "on" not in ann:
            raise MorphobenchError("plate_map.annotations: each entry needs `path` and `on`")
        on, key = str(ann["on"]), str(ann.get("key", ann["on"]))
        a = _read_tables(ann["path"], "plate_map.annotations: path", strict, report)
        if key not in a.columns:
            raise MorphobenchError(f"annotation {', '.join(sorted(set(a['_file'])))}: missing "
                                   f"column {key!r}")
        if on not in df.columns:
            raise MorphobenchError(f"{where}: missing column {on!r} (annotations `on`)")
        a = a.drop(columns="_file").drop_duplicates()
        a = a[a[key].astype(str) != ""]
        dupk = a[key].duplicated(keep=False)
        if dupk.any():
            raise MorphobenchError(f"annotations: key {key!r} has conflicting rows for "
                                   f"{sorted(set(a.loc[dupk, key]))[:_N_EXAMPLES]}")
        a = a.rename(columns={key: on}) if key != on else a
        clash = [c for c in a.columns if c != on and c in df.columns]
        a = a.drop(columns=clash)
        df = df.merge(a, on=on, how="left").fillna("")

    plate_spec = str(spec.get("plate") or "Metadata_Plate")
    bc = spec.get("barcode_platemap")
    if bc:
        if not isinstance(bc, Mapping) or "path" not in bc:
            raise MorphobenchError("plate_map.barcode_platemap needs `path`")
        b = _read_tables(bc["path"], "plate_map.barcode_platemap: path", strict, report)
        bcol = str(bc.get("barcode", "Assay_Plate_Barcode"))
        mcol = str(bc.get("platemap", "Plate_Map_Name"))
        for c in (bcol, mcol):
            if c not in b.columns:
                raise MorphobenchError(f"barcode_platemap {', '.join(sorted(set(b['_file'])))}: "
                                       f"missing column {c!r}")
        map_col = plate_spec if "{" not in plate_spec else None
        if map_col is None or map_col not in df.columns:
            raise MorphobenchError(f"{where}: missing column {plate_spec!r} (plate-map name, "
                                   "`plate` with barcode_platemap)")
        b = b[[bcol, mcol]].drop_duplicates()
        b = b[b[bcol].isin(set(sheet["Metadata_Plate"]))]
        absent = sorted(set(b[mcol]) - set(df[map_col].astype(str)))
        if absent:
            raise MorphobenchError(f"{where}: plate map name(s) {absent} (from barcode_platemap) "
                                   "have no rows")
        df = b.merge(df, left_on=mcol, right_on=map_col, how="inner",
                     suffixes=("", "_platemap"))
        plates = df[bcol].astype(str)
    elif "{" in plate_spec:
        plates = _format_rows(df, plate_spec, where)
    else:
        plates = _coalesce(df, plate_spec, "plate", where)
    well_col = str(spec.get("well") or "Metadata_Well")
    wells_raw = _coalesce(df, well_col, "well", where)

    out = pd.DataFrame({"Metadata_Plate": plates.astype(str).str.strip().values}, index=df.index)
    out["_well_raw"] = wells_raw.values
    pert = _coalesce(df, spec["perturbation"], "perturbation", where)
    if spec.get("missing_perturbation") is not None:
        pert = pert.where(pert != "", str(spec["missing_perturbation"]))
    out["Metadata_Perturbation"] = pert.values

    default_type = str(spec.get("default_pert_type") or "trt")
    if default_type not in {"trt", "negcon", "poscon"}:
        raise MorphobenchError(f"plate_map.default_pert_type {default_type!r} not in trt/negcon/poscon")
    ptype = pd.Series(default_type, index=df.index, dtype=object)
    if spec.get("pert_type"):
        raw = _coalesce(df, spec["pert_type"], "pert_type", where)
        values = {"trt": "trt", "negcon": "negcon", "poscon": "poscon",
                  **{str(k): str(v) for k, v in (spec.get("pert_type_values") or {}).items()}}
        bad = sorted({v for v in values.values() if v not in {"trt", "negcon", "poscon"}})
        if bad:
            raise MorphobenchError(f"plate_map.pert_type_values maps to {bad}; allowed trt, negcon, "
                                   "poscon")
        ptype = raw.map(values).fillna(default_type)
        seen = sorted(set(raw))
        log.info("%s: pert_type values %s → %s", where, seen[:20],
                 [values.get(v, default_type) for v in seen[:20]])
    negcon = {str(v) for v in _as_list(spec.get("negcon"))}
    poscon = {str(v) for v in _as_list(spec.get("poscon"))}
    both = negcon & poscon
    if both:
        raise MorphobenchError(f"plate_map: {sorted(both)} listed as both negcon and poscon")
    ptype = ptype.where(~pert.isin(negcon), "negcon").where(~pert.isin(poscon), "poscon")
    out["Metadata_PertType"] = ptype.values
    for target, src in (spec.get("columns") or {}).items():
        target = str(target)
        if not target.startswith("Metadata_") or target in PLATE_MAP_REQUIRED:
            raise MorphobenchError(f"plate_map.columns: {target!r} must be a Metadata_* column "
                                   f"other than {list(PLATE_MAP_REQUIRED)}")
        out[target] = _coalesce(df, src, target, where).values

    # restrict to the sheet's plates before judging well names (other plates may differ)
    sheet_plates = set(sheet["Metadata_Plate"].astype(str))
    out = out[out["Metadata_Plate"].isin(sheet_plates)]
    if out.empty:
        raise MorphobenchError(f"{where}: no row for the sheet's plates "
                               f"{sorted(sheet_plates)[:10]} (check `plate`)")
    out["Metadata_Well"] = _normalize_wells(out["_well_raw"], where)
    out = out.drop(columns="_well_raw")
    empty = out["Metadata_Perturbation"] == ""
    if empty.any():
        ex = out.loc[empty, list(WELL_KEYS)].head(_N_EXAMPLES).to_dict("records")
        raise MorphobenchError(f"{where}: {int(empty.sum())} row(s) without a perturbation, e.g. "
                               f"{ex} (set plate_map.missing_perturbation, e.g. DMSO)")
    out = out.drop_duplicates()
    conflict = out.duplicated(list(WELL_KEYS), keep=False)
    if conflict.any():
        ex = out.loc[conflict].sort_values(list(WELL_KEYS)).head(_N_EXAMPLES).to_dict("records")
        raise MorphobenchError(f"{where}: conflicting annotations for the same well, e.g. {ex}")

    sheet_wells = sheet[list(WELL_KEYS)].drop_duplicates()
    merged = sheet_wells.merge(out, on=list(WELL_KEYS), how="left", indicator=True)
    unannotated = merged[merged["_merge"] == "left_only"]
    _report_skipped(report, "wells_without_plate_map", len(unannotated),
                    (unannotated["Metadata_Plate"] + "/" + unannotated["Metadata_Well"]).tolist(),
                    f"{where}: imaged well(s) absent from the plate map (no Metadata_Perturbation)",
                    strict)
    extra = len(out) - (len(merged) - len(unannotated))
    if extra:
        log.info("%s: %d plate-map well(s) have no images in the sheet; left out", where, extra)
    wells = merged[merged["_merge"] == "both"].drop(columns="_merge")
    cols = list(PLATE_MAP_REQUIRED) + [c for c in out.columns if c not in PLATE_MAP_REQUIRED]
    wells = wells[cols].sort_values(list(WELL_KEYS), kind="stable").reset_index(drop=True)
    for c in wells.columns:
        wells[c] = wells[c].astype(str)
    validate_plate_map(wells, where)
    counts = wells["Metadata_PertType"].value_counts().to_dict()
    report["wells"] = len(wells)
    report["pert_types"] = {k: int(v) for k, v in sorted(counts.items())}
    return wells


def empty_plate_map() -> pd.DataFrame:
    """A plate map with the required columns and no rows (layouts without annotations)."""
    return pd.DataFrame({c: pd.Series([], dtype=str) for c in PLATE_MAP_REQUIRED})


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------
LOADERS = ("load_data", "cpjump1", "pattern", "bbbc022")


def load_dataset(ds_cfg: Mapping, *, dataset: str | None = None,
                 resources_dir: str | os.PathLike = "resources") -> LoadResult:
    """Run the loader named by ``ds_cfg["loader"]`` (no files written)."""
    if not isinstance(ds_cfg, Mapping) or "loader" not in ds_cfg:
        raise MorphobenchError("dataset config needs a `loader` key "
                               f"(one of {', '.join(LOADERS)})")
    loader = str(ds_cfg["loader"])
    if loader not in LOADER_KEYS:
        hint = " (the simulated loader is `python -m morphobench.simulate`)" \
            if loader == "simulated" else ""
        raise MorphobenchError(f"unknown loader {loader!r}; known: {', '.join(LOADERS)}{hint}")
    unknown = sorted(set(ds_cfg) - set(LOADER_KEYS[loader]) - _IGNORED_KEYS)
    if unknown:
        raise MorphobenchError(f"loader {loader}: unknown key(s) {unknown} (known: "
                               f"{sorted(LOADER_KEYS[loader])})")
    params = {k: v for k, v in ds_cfg.items() if k != "loader"}
    name = f" for dataset {dataset!r}" if dataset else ""
    log.info("building the image sheet%s with loader %s", name, loader)
    if loader == "load_data":
        res = load_data_sheet(params, dataset=dataset)
    elif loader == "bbbc022":
        res = bbbc022_sheet(params, dataset=dataset)
    elif loader == "cpjump1":
        res = cpjump1_sheet(params, dataset=dataset, resources_dir=resources_dir)
    else:
        res = pattern_sheet(params, dataset=dataset)
    log.info("image sheet: %d sites on %d plates, channels %s; plate map: %s", len(res.sheet),
             res.sheet["Metadata_Plate"].nunique(), res.report.get("channels"),
             f"{len(res.wells)} wells {res.report.get('pert_types')}" if res.wells is not None
             else "none")
    return res


def build_sheet(ds_cfg: Mapping, out_sheet: str | os.PathLike,
                out_wells: str | os.PathLike | None = None, *, dataset: str | None = None,
                resources_dir: str | os.PathLike = "resources") -> LoadResult:
    """Build and write ``out_sheet`` (image sheet) and ``out_wells`` (plate map) atomically.

    Parameters
    ----------
    ds_cfg : the dataset's config entry: ``loader`` plus that loader's keys (:data:`LOADER_KEYS`).
    out_sheet, out_wells : parquet outputs. When the layout has no plate map, ``out_wells`` gets
        one with the required columns and no rows (and a warning is logged).
    dataset : dataset name (default ``Metadata_Source`` of ``load_data`` / ``pattern``).
    resources_dir : where ``cpjump1`` finds ``cpjump1/images_index.parquet`` by default.

    Both tables are validated before either file is written.
    """
    res = load_dataset(ds_cfg, dataset=dataset, resources_dir=resources_dir)
    wells = res.wells
    if out_wells is not None and wells is None:
        log.warning("loader %s: no plate map configured (plate_map:); writing an empty plate map "
                    "to %s — evaluations need perturbation annotations", ds_cfg["loader"], out_wells)
        wells = empty_plate_map()
    write_parquet(res.sheet, out_sheet)
    if out_wells is not None:
        write_parquet(wells, out_wells)
    return res


def iter_loader_keys() -> Iterable[tuple[str, str, str, Any, str]]:
    """(loader, key, type, default, meaning) rows — for documentation and schema checks."""
    for loader, keys in LOADER_KEYS.items():
        for k, (t, d, m) in keys.items():
            yield loader, k, t, d, m
