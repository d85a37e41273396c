"""Plate maps of real screens (:func:`build_plate_map`): perturbation, type and annotations per
plate and well, from the loader's own table or separate tables (``plate_map:`` keys).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from morphobench.data.tables import (
    PLATE_MAP_REQUIRED,
    WELL_KEYS,
    validate_plate_map,
)
from morphobench.data.loaders.common import (
    _N_EXAMPLES,
    _as_list,
    _expand_paths,
    _format_rows,
    _normalize_wells,
    _report_skipped,
    read_csv_table,
)
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.data")

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
