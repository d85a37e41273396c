"""Shared pieces of the loaders: the result type, the keys every loader takes, and helpers
(well/site normalisation, CSV reading, channel maps, path rewriting, sheet validation).
"""

from __future__ import annotations

import logging
import glob as _glob
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from morphobench.data.tables import (
    SITE_KEYS,
    filename_col,
    parse_well,
    pathname_col,
    validate_image_sheet,
    well_name,
)
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.data")

IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2")
_PLATE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHANNEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_N_EXAMPLES = 5

COMMON_KEYS = {
    "loader": ("str", None, "load_data | cpjump1 | pattern | bbbc022 | bbbc036 | bbbc037"),
    "source": ("str", "<dataset name>", "Metadata_Source for every site (overrides a column)"),
    "batch": ("str", "<see loader>", "Metadata_Batch for every site (overrides a column / group)"),
    "plates": ("list[str]", None, "keep only these plates (error if one is absent)"),
    "strict": ("bool", False, "fail on skipped files / incomplete sites / malformed lines"),
    "check_files": ("bool", False, "stat every image path; error listing missing files"),
    "plate_map": ("map", None, "plate map options (see PLATE_MAP_KEYS)"),
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
                   report: dict | None = None,
                   usecols: Callable[[str], bool] | None = None) -> pd.DataFrame:
    """Read a CSV/TSV/TXT/parquet table as strings (empty cells → ``""``).

    Malformed CSV lines (too many fields) are counted and logged with examples — an error when
    ``strict`` — instead of failing the whole file or being dropped silently. ``usecols``: keep
    only the columns for which it is true (e.g. the metadata of a wide profile table).
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
        if usecols is not None:
            df = df[[c for c in df.columns if usecols(str(c))]]
        return df.astype(object).where(df.notna(), "").astype(str)
    sep = "\t" if name.endswith((".tsv", ".txt", ".tsv.gz", ".txt.gz")) else ","
    kw = dict(sep=sep, dtype=str, keep_default_na=False, na_values=[])
    if usecols is not None:
        kw["usecols"] = usecols
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
