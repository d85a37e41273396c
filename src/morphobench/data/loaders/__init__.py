"""Real screen layouts → the shared image sheet and plate map (DESIGN.md, "Data model").

One entry point, :func:`build_sheet`, looks the loader named by ``ds_cfg["loader"]`` up in
:data:`LOADERS` (``{name: (function, keys)}``); one module per loader:

:mod:`~morphobench.data.loaders.load_data`  CellProfiler / JUMP ``load_data`` CSVs (``Image_``
                                            prefixed ExportToDatabase columns too)
:mod:`~morphobench.data.loaders.cpjump1`    the CPJUMP1 image index of the resources, pivoted to
                                            one row per site, paths into a local bucket mirror
:mod:`~morphobench.data.loaders.pattern`    a folder whose relative paths match a regex with the
                                            groups plate, well, site, channel [batch] (RxRx)
:mod:`~morphobench.data.loaders.bbbc022`    ``BBBC022_v1_image.csv``: image sheet and plate map
:mod:`~morphobench.data.loaders.bbbc036`    BBBC036 (compounds): ``<plate>-<ChannelFolder>/`` image
                                            folders + per-well metadata CSVs
:mod:`~morphobench.data.loaders.bbbc037`    BBBC037 (ORF overexpression): the same layout
:mod:`~morphobench.data.loaders.broad_ixm`  what bbbc036 / bbbc037 share (channel folders, metadata)
:mod:`~morphobench.data.loaders.moa`        user-supplied MoA tables → ``Metadata_MoA``
                                            (``moa_table:`` of bbbc022 / bbbc036 / bbbc037)
:mod:`~morphobench.data.loaders.plate_map`  the plate-map builder shared by all (``plate_map:``)
:mod:`~morphobench.data.loaders.common`     the result type, common keys and helpers

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

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from morphobench.data.loaders import bbbc022, bbbc036, bbbc037, cpjump1, load_data, pattern
from morphobench.data.loaders.bbbc022 import (
    BBBC022_CHANNELS,
    BBBC022_COLUMNS,
    BBBC022_PLATE_MAP,
    bbbc022_sheet,
)
from morphobench.data.loaders.bbbc036 import BBBC036_PLATE_MAP, bbbc036_sheet
from morphobench.data.loaders.bbbc037 import BBBC037_PLATE_MAP, bbbc037_sheet
from morphobench.data.loaders.broad_ixm import IXM_CHANNELS, IXM_PATTERN
from morphobench.data.loaders.common import (
    COMMON_KEYS,
    IMAGE_EXTENSIONS,
    LoadResult,
    _IGNORED_KEYS,
    log,
    normalize_well,
    read_csv_table,
)
from morphobench.data.loaders.cpjump1 import CPJUMP1_CHANNELS, cpjump1_sheet
from morphobench.data.loaders.load_data import load_data_sheet
from morphobench.data.loaders.moa import MOA_TABLE_KEYS, add_moa, read_moa_table
from morphobench.data.loaders.pattern import RXRX_CHANNELS, pattern_sheet
from morphobench.data.loaders.plate_map import PLATE_MAP_KEYS, build_plate_map, empty_plate_map
from morphobench.io import MorphobenchError, write_parquet

#: loader name → (function building a :class:`LoadResult` from the dataset's keys, its keys:
#: name → (type, default, meaning)). ``build_sheet`` rejects keys a loader does not list.
LOADERS: dict[str, tuple[Callable[..., LoadResult], dict[str, tuple[str, Any, str]]]] = {
    "load_data": (load_data_sheet, load_data.KEYS),
    "cpjump1": (cpjump1_sheet, cpjump1.KEYS),
    "pattern": (pattern_sheet, pattern.KEYS),
    "bbbc022": (bbbc022_sheet, bbbc022.KEYS),
    "bbbc036": (bbbc036_sheet, bbbc036.KEYS),
    "bbbc037": (bbbc037_sheet, bbbc037.KEYS),
}
#: Keys of each loader: name → (type, default, meaning).
LOADER_KEYS: dict[str, dict[str, tuple[str, Any, str]]] = {name: keys for name, (_, keys) in LOADERS.items()}

__all__ = ["BBBC022_CHANNELS", "BBBC022_COLUMNS", "BBBC022_PLATE_MAP", "BBBC036_PLATE_MAP",
           "BBBC037_PLATE_MAP", "COMMON_KEYS", "CPJUMP1_CHANNELS", "IMAGE_EXTENSIONS", "IXM_CHANNELS",
           "IXM_PATTERN", "LOADERS", "LOADER_KEYS", "LoadResult", "MOA_TABLE_KEYS", "PLATE_MAP_KEYS",
           "RXRX_CHANNELS", "add_moa", "bbbc022_sheet", "bbbc036_sheet", "bbbc037_sheet",
           "build_plate_map", "build_sheet", "cpjump1_sheet", "empty_plate_map", "iter_loader_keys",
           "load_data_sheet", "load_dataset", "normalize_well", "pattern_sheet", "read_csv_table",
           "read_moa_table"]


def load_dataset(ds_cfg: Mapping, *, dataset: str | None = None,
                 resources_dir: str | os.PathLike = "resources") -> LoadResult:
    """Run the loader named by ``ds_cfg["loader"]`` (no files written)."""
    if not isinstance(ds_cfg, Mapping) or "loader" not in ds_cfg:
        raise MorphobenchError("dataset config needs a `loader` key "
                               f"(one of {', '.join(LOADERS)})")
    loader = str(ds_cfg["loader"])
    if loader not in LOADERS:
        hint = " (the simulated loader is `python -m morphobench.simulate`)" \
            if loader == "simulated" else ""
        raise MorphobenchError(f"unknown loader {loader!r}; known: {', '.join(LOADERS)}{hint}")
    fn, keys = LOADERS[loader]
    unknown = sorted(set(ds_cfg) - set(keys) - _IGNORED_KEYS)
    if unknown:
        raise MorphobenchError(f"loader {loader}: unknown key(s) {unknown} (known: {sorted(keys)})")
    params = {k: v for k, v in ds_cfg.items() if k != "loader"}
    name = f" for dataset {dataset!r}" if dataset else ""
    log.info("building the image sheet%s with loader %s", name, loader)
    kw = {"resources_dir": resources_dir} if "resources_dir" in inspect.signature(fn).parameters else {}
    res = fn(params, dataset=dataset, **kw)
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
