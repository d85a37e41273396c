"""The ``bbbc037`` loader: BBBC037 (Rohban et al. 2017, eLife): U2OS Cell Painting of gene
overexpression (TA-ORF, one ORF per well), the acquisition and image layout of BBBC022/BBBC036.

Layout (assumed as published; every name is a key, see :mod:`~morphobench.data.loaders.broad_ixm`):

* images: ``<plate>-<ChannelFolder>/<prefix>_<well>_s<site>_w<k><UUID>.tif`` under
  ``image_root`` (Hoechst → DNA, ERSyto → ER, ERSytoBleed → RNA, Ph_golgi → AGP, Mito → Mito);
* ``metadata``: per-well tables with ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_pert_name``
  (the gene / ORF name; empty in empty-vector wells) and ``Metadata_ASSAY_WELL_ROLE``
  (``Untreated`` / ``CTRL`` / ``EMPTY`` → negcon, anything else → trt) — the default ``plate_map``
  (:data:`BBBC037_PLATE_MAP`): perturbation = pert_name (empty → ``EMPTY``, a negcon),
  Metadata_Gene = pert_name. Control ORFs named otherwise (LacZ, Luciferase …) are negcon only
  through their well role or ``plate_map.negcon``;
* ``moa_table`` (optional here, needed by TEAMs' MoA triplets): the gene → pathway / MoA classes
  the user supplies, e.g. ``{key: gene, moa: pathway, on: Metadata_Gene}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from morphobench.data.loaders.broad_ixm import ixm_keys, ixm_sheet
from morphobench.data.loaders.common import LoadResult

#: Default ``plate_map`` options of BBBC037's per-well metadata (keys given override them).
BBBC037_PLATE_MAP: dict[str, Any] = {
    "plate": "Metadata_Plate",
    "well": "Metadata_Well",
    "perturbation": ["Metadata_pert_name"],
    "missing_perturbation": "EMPTY",
    "pert_type": "Metadata_ASSAY_WELL_ROLE",
    "pert_type_values": {"Untreated": "negcon", "untreated": "negcon", "CTRL": "negcon",
                         "EMPTY": "negcon", "Empty": "negcon", "mock": "negcon"},
    "negcon": ["EMPTY"],
    "columns": {"Metadata_Gene": "Metadata_pert_name"},
}

#: Keys of the ``bbbc037`` loader.
KEYS: dict[str, tuple[str, Any, str]] = ixm_keys(
    "per-well metadata CSV(s), globs ok: Metadata_Plate, Metadata_Well, "
    "Metadata_pert_name, Metadata_ASSAY_WELL_ROLE → plate map (defaults BBBC037_PLATE_MAP); "
    "none: no plate map")


def bbbc037_sheet(params: Mapping, *, dataset: str | None = None) -> LoadResult:
    """Image sheet from BBBC037's channel folders; plate map from its per-well metadata."""
    return ixm_sheet(params, dataset=dataset, loader="bbbc037", plate_map_defaults=BBBC037_PLATE_MAP,
                     layout_hint="the folder holding the unzipped <plate>-<ChannelFolder>/ folders, "
                     "e.g. <plate>-Hoechst/")
