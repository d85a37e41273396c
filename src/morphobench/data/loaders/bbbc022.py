"""The ``bbbc022`` loader: BBBC022's ``BBBC022_v1_image.csv`` (a ``load_data``-style table with
BBBC column names and the compound annotations): image sheet and plate map in one file;
``moa_table`` adds ``Metadata_MoA`` from a user-supplied table (:mod:`~morphobench.data.loaders.moa`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


from morphobench.data.loaders.common import LoadResult, COMMON_KEYS
from morphobench.data.loaders.load_data import _load_table_sheet
from morphobench.data.loaders.moa import add_moa
from morphobench.io import MorphobenchError

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

#: Keys of the ``bbbc022`` loader.
KEYS: dict[str, tuple[str, Any, str]] = {
    **COMMON_KEYS,
    "csv": ("str | list[str]", None, "required: BBBC022_v1_image.csv"),
    "channels": ("map str→str", dict(BBBC022_CHANNELS), "as load_data"),
    "columns": ("map str→str", dict(BBBC022_COLUMNS), "as load_data"),
    "image_root": ("str", None, "folder holding the unzipped BBBC022_v1_images_<plate>w<k>/"),
    "path_map": ("map str→str", None, "as load_data"),
    "dir_template": ("str | null", "BBBC022_v1_images_{plate}w{w}", "as load_data; null: "
                     "the CSV's PathName"),
    "moa_table": ("map", None, "MoA annotations → Metadata_MoA: {path, key, moa, sep: '|', "
                  "on: Metadata_Perturbation, match: exact|casefold|broad_core, column, columns} "
                  "(see MOA_TABLE_KEYS), e.g. BRD ids with their Drug Repurposing Hub MoAs "
                  "{key: broad_id, moa: moa, match: broad_core}"),
}


def bbbc022_sheet(params: Mapping, *, dataset: str | None = None) -> LoadResult:
    """Image sheet + plate map from ``BBBC022_v1_image.csv`` (DMSO / mock wells → negcon)."""
    defaults = {"channels": dict(BBBC022_CHANNELS), "columns": dict(BBBC022_COLUMNS),
                "source": dataset or "BBBC022", "batch": "BBBC022",
                "dir_template": "BBBC022_v1_images_{plate}w{w}",
                "plate_map": dict(BBBC022_PLATE_MAP)}
    params = dict(params)
    moa_spec = params.pop("moa_table", None)
    if "plate_map" in params and params["plate_map"] is not None:
        params["plate_map"] = {**BBBC022_PLATE_MAP, **params["plate_map"]}
    if params.get("dir_template", "<unset>") is not None and not params.get("image_root"):
        raise MorphobenchError("bbbc022: image_root is required (the folder holding the unzipped "
                               "BBBC022_v1_images_<plate>w<k>/ folders), or set dir_template: "
                               "null to use the CSV's PathName")
    if "dir_template" in params and params["dir_template"] is None:
        defaults["dir_template"] = None
    res = _load_table_sheet(params, dataset=dataset, loader="bbbc022", defaults=defaults)
    if moa_spec:
        if res.wells is None:
            raise MorphobenchError("bbbc022: moa_table needs the plate map")
        res.wells = add_moa(res.wells, moa_spec, strict=bool(params.get("strict", False)),
                            report=res.report, where="bbbc022 plate map")
    return res
