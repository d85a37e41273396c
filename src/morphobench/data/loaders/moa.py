"""User-supplied mechanism-of-action (MoA) tables → ``Metadata_MoA`` of a plate map
(``moa_table:`` of the ``bbbc022``, ``bbbc036`` and ``bbbc037`` loaders).

The MoA classes of real screens are not part of the image releases: TEAMs' MoA triplets need
them from elsewhere (the Drug Repurposing Hub for compounds, ``BBBC036_v1_DatasetGroundTruth.csv``,
a pathway table for the BBBC037 ORFs …). ``moa_table`` names such a table (CSV/TSV/TXT/parquet),
the column whose values match a plate-map column (``key`` ↔ ``on``, default
``Metadata_Perturbation``) and the MoA column (``moa``; several classes separated by ``sep``).

Rules:

* classes are split on ``sep``, stripped, de-duplicated and written sorted, joined by ``|`` (the
  separator ``teams.triplets.moa_sep`` reads by default), e.g. ``"HDAC inhibitor|tubulin inhibitor"``;
* several rows for one key: the union of their classes (logged);
* rows with an empty key or an empty MoA are ignored (counted in the log);
* plate-map perturbations without an MoA get NaN — never dropped — and are counted in the log
  (treatments as a warning with examples, controls as info) and in the report (``moa_missing``);
* a table column that does not exist, or no perturbation of the plate map matching any key of
  the table, is an error naming the file and the column.

``match`` chooses how keys compare: ``exact`` (default), ``casefold`` (gene symbols in another
case), ``broad_core`` (Broad compound ids compared by their first 13 characters, ``BRD-K12345678``,
so ``BRD-K12345678-001-01-1`` in a plate map matches ``BRD-K12345678`` in a table).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from morphobench.data.loaders.common import _N_EXAMPLES, _expand_paths, read_csv_table
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.data")

#: Separator of the MoA classes written to the plate map (TEAMs' default ``teams.triplets.moa_sep``).
MOA_OUT_SEP = "|"
MATCH_MODES = ("exact", "casefold", "broad_core")

#: Keys of ``moa_table``: name → (type, default, meaning).
MOA_TABLE_KEYS: dict[str, tuple[str, Any, str]] = {
    "path": ("str | list[str]", None, "required: MoA table(s) (csv/tsv/txt/parquet, globs ok)"),
    "key": ("str", None, "required: column of the table whose values match the plate-map column "
            "`on` (e.g. broad_id, Metadata_broad_sample, gene)"),
    "moa": ("str", None, "required: MoA column of the table (several classes separated by `sep`)"),
    "sep": ("str", "|", "separator of several classes in the moa column"),
    "on": ("str", "Metadata_Perturbation", "plate-map column the key is matched to "
           "(e.g. Metadata_Gene, Metadata_Compound)"),
    "match": ("str", "exact", "exact | casefold | broad_core (BRD ids compared by their first 13 "
              "characters, BRD-K12345678)"),
    "column": ("str", "Metadata_MoA", "plate-map column written (teams.triplets.moa_col)"),
    "columns": ("map str→str", {}, "more plate-map columns from the table, e.g. "
                "{Metadata_Target: target} (values of several rows joined by '|')"),
}

_BRD_CORE = re.compile(r"^(BRD)[-_]?([A-Z])(\d{8})", re.IGNORECASE)


def _normalizer(match: str):
    if match == "exact":
        return lambda v: v
    if match == "casefold":
        return lambda v: v.casefold()
    if match == "broad_core":
        def core(v: str) -> str:
            m = _BRD_CORE.match(v)
            return f"BRD-{m.group(2).upper()}{m.group(3)}" if m else v
        return core
    raise MorphobenchError(f"moa_table.match {match!r}: expected one of {list(MATCH_MODES)}")


def _classes(raw: str, sep: str) -> list[str]:
    return [c.strip() for c in raw.split(sep) if c.strip()]


def read_moa_table(spec: Mapping, *, strict: bool = False,
                   report: dict | None = None) -> tuple[dict[str, dict[str, set[str]]], list[str]]:
    """The table(s) of ``spec`` → ``{normalised key: {plate-map column: set of values}}`` and the
    files read. Errors name the file and the column."""
    report = report if report is not None else {}
    if not isinstance(spec, Mapping):
        raise MorphobenchError("moa_table must be a mapping {path, key, moa, …} (see MOA_TABLE_KEYS)")
    unknown = sorted(set(spec) - set(MOA_TABLE_KEYS))
    if unknown:
        raise MorphobenchError(f"moa_table: unknown key(s) {unknown} (known: {sorted(MOA_TABLE_KEYS)})")
    for k in ("path", "key", "moa"):
        if not spec.get(k):
            raise MorphobenchError(f"moa_table: `{k}` is required ({MOA_TABLE_KEYS[k][2]})")
    key_col, moa_col = str(spec["key"]), str(spec["moa"])
    sep = str(spec.get("sep") or "|")
    target = str(spec.get("column") or "Metadata_MoA")
    extra = {str(t): str(c) for t, c in (spec.get("columns") or {}).items()}
    for t in [target, *extra]:
        if not t.startswith("Metadata_"):
            raise MorphobenchError(f"moa_table: plate-map column {t!r} must start with 'Metadata_'")
    norm = _normalizer(str(spec.get("match") or "exact"))
    files = _expand_paths(spec["path"], "moa_table: path")
    out: dict[str, dict[str, set[str]]] = {}
    n_rows = n_nokey = n_nomoa = 0
    rows_per_key: dict[str, int] = {}
    for f in files:
        t = read_csv_table(f, strict=strict, report=report)
        need = [key_col, moa_col, *extra.values()]
        missing = [c for c in dict.fromkeys(need) if c not in t.columns]
        if missing:
            raise MorphobenchError(f"moa_table {f}: missing column(s) {missing} (columns: "
                                   f"{list(t.columns)[:20]}{' …' if t.shape[1] > 20 else ''})")
        for row in t[list(dict.fromkeys(need))].itertuples(index=False, name=None):
            n_rows += 1
            vals = dict(zip(dict.fromkeys(need), row, strict=True))
            k = str(vals[key_col]).strip()
            if not k:
                n_nokey += 1
                continue
            classes = _classes(str(vals[moa_col]), sep)
            if sep != MOA_OUT_SEP:
                bad = [c for c in classes if MOA_OUT_SEP in c]
                if bad:
                    raise MorphobenchError(f"moa_table {f}: MoA class {bad[0]!r} (key {k!r}) holds "
                                           f"'{MOA_OUT_SEP}', the separator of the plate map's "
                                           f"classes; with sep {sep!r} it would be read as several")
            if not classes:
                n_nomoa += 1
                continue
            nk = norm(k)
            rows_per_key[nk] = rows_per_key.get(nk, 0) + 1
            entry = out.setdefault(nk, {target: set()} | {c: set() for c in extra})
            entry[target].update(classes)
            for tcol, scol in extra.items():
                v = str(vals[scol]).strip()
                if v:
                    entry[tcol].update(_classes(v, sep))
    where = ", ".join(map(str, files))
    if n_nokey or n_nomoa:
        log.info("moa_table %s: %d of %d row(s) ignored (%d without a %r value, %d without an MoA "
                 "in %r)", where, n_nokey + n_nomoa, n_rows, n_nokey, key_col, n_nomoa, moa_col)
    multi = sorted(k for k, n in rows_per_key.items() if n > 1)
    if multi:
        log.info("moa_table %s: %d key(s) on several rows, their classes united (e.g. %s)", where,
                 len(multi), multi[:_N_EXAMPLES])
    if not out:
        raise MorphobenchError(f"moa_table {where}: no row with both a {key_col!r} and a {moa_col!r} "
                               "value")
    return out, [str(f) for f in files]


def add_moa(wells: pd.DataFrame, spec: Mapping, *, strict: bool = False,
            report: dict | None = None, where: str = "plate map") -> pd.DataFrame:
    """``wells`` with ``Metadata_MoA`` (or ``spec["column"]``) from the MoA table of ``spec``
    (:data:`MOA_TABLE_KEYS`); perturbations without an MoA get NaN and are counted."""
    report = report if report is not None else {}
    table, files = read_moa_table(spec, strict=strict, report=report)
    on = str(spec.get("on") or "Metadata_Perturbation")
    target = str(spec.get("column") or "Metadata_MoA")
    extra = [str(t) for t in (spec.get("columns") or {})]
    if on not in wells.columns:
        raise MorphobenchError(f"moa_table: the {where} has no column {on!r} (`on`; columns: "
                               f"{list(wells.columns)})")
    clash = [c for c in [target, *extra] if c in wells.columns]
    if clash:
        raise MorphobenchError(f"moa_table: the {where} already has column(s) {clash} (from "
                               "plate_map.columns?); write the table's values elsewhere with "
                               "moa_table.column / moa_table.columns, or drop the plate-map column")
    norm = _normalizer(str(spec.get("match") or "exact"))
    keys = wells[on].astype(str).str.strip().map(norm)
    out = wells.copy()
    for col in [target, *extra]:
        vals = {k: MOA_OUT_SEP.join(sorted(v[col])) for k, v in table.items() if v[col]}
        out[col] = keys.map(vals).astype(object).where(keys.isin(list(vals)), np.nan)
    has = out[target].notna()
    if not has.any():
        ex_table = sorted(table)[:_N_EXAMPLES]
        ex_wells = sorted(set(keys))[:_N_EXAMPLES]
        raise MorphobenchError(
            f"moa_table {', '.join(files)}: no value of the {where}'s column {on!r} matches the "
            f"table's column {spec['key']!r} (e.g. table {ex_table} vs plate map {ex_wells}); check "
            "key / on / match (broad_core compares BRD ids by their first 13 characters)")
    ptype = out["Metadata_PertType"].astype(str) if "Metadata_PertType" in out.columns else \
        pd.Series("trt", index=out.index)
    trt = ptype == "trt"
    miss_trt = sorted(set(out.loc[trt & ~has, on].astype(str)))
    miss_ctl = sorted(set(out.loc[~trt & ~has, on].astype(str)))
    n_trt = out.loc[trt, on].nunique()
    report["moa"] = {"column": target, "annotated_perturbations": int(out.loc[has, on].nunique()),
                     "annotated_wells": int(has.sum()), "classes": int(len(set().union(
                         *(v[target] for v in table.values() if v[target])))),
                     "table_keys": len(table)}
    if miss_trt:
        n_wells = int((trt & ~has).sum())
        report["moa_missing"] = {"count": len(miss_trt), "wells": n_wells,
                                 "examples": miss_trt[:_N_EXAMPLES]}
        log.warning("%s: %d of %d treatment(s) (%d well(s)) have no MoA in %s → %s is NaN for them "
                    "(kept; the MoA triplets skip them), e.g. %s", where, len(miss_trt), n_trt,
                    n_wells, ", ".join(files), target, miss_trt[:_N_EXAMPLES])
    if miss_ctl:
        log.info("%s: %d control perturbation(s) without an MoA (%s NaN), e.g. %s", where,
                 len(miss_ctl), target, miss_ctl[:_N_EXAMPLES])
    used = set(keys[has])
    unused = len(set(table) - used)
    if unused:
        log.info("moa_table %s: %d of %d key(s) match no perturbation of the %s", ", ".join(files),
                 unused, len(table), where)
    log.info("%s: %s for %d of %d perturbation(s) (%d wells)", where, target,
             report["moa"]["annotated_perturbations"], out[on].nunique(), int(has.sum()))
    return out
