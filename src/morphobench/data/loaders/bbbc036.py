"""The ``bbbc036`` loader: BBBC036 (Bray et al. 2017, GigaScience; gigadb 100351 / Cell Image
Library): U2OS Cell Painting of ~30,000 compounds (CDRP), the acquisition of BBBC022.

Layout (assumed as published; every name is a key, see :mod:`~morphobench.data.loaders.broad_ixm`):

* images: one zip per plate and channel from the Cell Image Library, unzipped under
  ``image_root`` into ``<plate>-<ChannelFolder>/`` folders (``24277-Hoechst/``,
  ``24277-ERSyto/``, ``24277-ERSytoBleed/``, ``24277-Ph_golgi/``, ``24277-Mito/``) holding
  ``<prefix>_<well>_s<site>_w<k><UUID>.tif`` (``cdp2bioactives_a01_s1_w1…tif``);
* ``metadata``: the per-well tables published with the profiles (gigadb: each plate's
  ``profiles/mean_well_profiles.csv``; only its ``Metadata_*``/non-feature columns are read):
  ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_broad_sample`` (the compound, BRD id; empty or
  ``DMSO`` in DMSO wells), ``Metadata_mmoles_per_liter``, ``Metadata_ASSAY_WELL_ROLE``
  (``treated`` / ``mock``) — the default ``plate_map`` (:data:`BBBC036_PLATE_MAP`): perturbation
  = broad_sample (empty → ``DMSO``), ``mock`` wells and DMSO → negcon, Metadata_Compound = the
  BRD id, Metadata_Concentration = mmoles_per_liter;
* ``moa_table`` (optional here, needed by TEAMs' MoA triplets): e.g.
  ``BBBC036_v1_DatasetGroundTruth.csv`` ``{key: Metadata_broad_sample, moa: Metadata_moa}`` or the
  BRD ids with their Drug Repurposing Hub MoAs ``{key: broad_id, moa: moa, match: broad_core}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from morphobench.data.loaders.broad_ixm import ixm_keys, ixm_sheet
from morphobench.data.loaders.common import LoadResult

#: Default ``plate_map`` options of BBBC036's per-well metadata (keys given override them).
BBBC036_PLATE_MAP: dict[str, Any] = {
    "plate": "Metadata_Plate",
    "well": "Metadata_Well",
    "perturbation": ["Metadata_broad_sample"],
    "missing_perturbation": "DMSO",
    "pert_type": "Metadata_ASSAY_WELL_ROLE",
    "pert_type_values": {"mock": "negcon", "Mock": "negcon", "DMSO": "negcon"},
    "negcon": ["DMSO"],
    "columns": {"Metadata_Compound": "Metadata_broad_sample",
                "Metadata_Concentration": "Metadata_mmoles_per_liter"},
}

#: Keys of the ``bbbc036`` loader.
KEYS: dict[str, tuple[str, Any, str]] = ixm_keys(
    "per-well metadata CSV(s), globs ok (each plate's profiles/mean_well_profiles.csv): "
    "Metadata_Plate, Metadata_Well, Metadata_broad_sample, Metadata_mmoles_per_liter, "
    "Metadata_ASSAY_WELL_ROLE → plate map (defaults BBBC036_PLATE_MAP); none: no plate map")


def bbbc036_sheet(params: Mapping, *, dataset: str | None = None) -> LoadResult:
    """Image sheet from BBBC036's channel folders; plate map from its per-well metadata."""
    return ixm_sheet(params, dataset=dataset, loader="bbbc036", plate_map_defaults=BBBC036_PLATE_MAP,
                     layout_hint="the folder holding the unzipped <plate>-<ChannelFolder>/ folders, "
                     "e.g. 24277-Hoechst/")
