"""CellProfiler features with cp_measure (0.3.0), renamed to CellProfiler's column names.

Compartments: ``Nuclei``, ``Cells`` and ``Cytoplasm`` (cells minus their nucleus, same object
number, as CellProfiler IdentifyTertiaryObjects). Feature groups (CellProfiler modules):
AreaShape (MeasureObjectSizeShape incl. Zernike and Feret), Intensity (MeasureObjectIntensity,
including its ``Location_*`` columns), Texture (MeasureTexture, one set per scale),
Granularity, RadialDistribution (MeasureObjectIntensityDistribution, optionally Zernikes),
Correlation (MeasureColocalization: Pearson/slope, Manders, RWC, overlap/K, Costes),
Neighbors (MeasureObjectNeighbors, nuclei among nuclei and cells among cells).

Pixel scale: as CellProfiler, intensities are on [0, 1] = file counts / ``intensity_scale``
(65535 for 16-bit images), after illumination correction. Costes uses ``scale_max`` = 65535.

Naming (:func:`cellprofiler_name`): cp_measure names carry no compartment and no module prefix
for shape and texture, and put channels after ``__`` (``Intensity_MeanIntensity__DNA``,
``AngularSecondMoment_3_00_256__DNA``, ``Granularity_1__DNA``,
``RadialDistribution_FracAtD_1of4__DNA``, ``Correlation_Pearson__DNA__ER``, ``Area``); CellProfiler
puts ``{Compartment}_{Module}_{Feature}_{Channel}[_{suffix}]``:
``Nuclei_Intensity_MeanIntensity_DNA``, ``Cells_Texture_AngularSecondMoment_DNA_3_00_256``,
``Cells_Granularity_1_DNA``, ``Cells_RadialDistribution_FracAtD_DNA_1of4``,
``Cells_Correlation_Correlation_DNA_ER`` (Pearson), ``Cells_Correlation_Manders_ER_DNA`` (the
``_2`` coefficient of the pair DNA/ER), ``Nuclei_AreaShape_Area``. Channel pairs follow
CellProfiler: each unordered pair once, in channel order; cp_measure's reversed-order duplicates
map to ``None`` (dropped).

Outputs per plate: an object-level parquet (``Metadata_*``, ``ImageNumber``, ``ObjectNumber``,
features) and a well-level profile (median per well — pycytominer ``aggregate`` with
``operation="median"`` — of the profile features, i.e. without positions/ids, see
:data:`NON_PROFILE_PATTERNS`).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from morphobench.data.aggregate import aggregate_wells
from morphobench.data.tables import SITE_KEYS, sheet_channels
from morphobench.images.io import IllumFunctions, read_site, site_label, site_meta
from morphobench.images.segment import open_labels
from morphobench.io import MorphobenchError, progress, read_table, write_parquet

log = logging.getLogger("morphobench.images.features")

COMPARTMENTS: tuple[str, ...] = ("Nuclei", "Cells", "Cytoplasm")
GROUPS: tuple[str, ...] = ("AreaShape", "Intensity", "Texture", "Granularity", "RadialDistribution",
                           "Correlation", "Neighbors")
CORRELATIONS: tuple[str, ...] = ("pearson", "manders", "rwc", "overlap", "costes")

#: feature-name patterns left out of well-level profiles (positions, ids, bounding boxes)
NON_PROFILE_PATTERNS: tuple[str, ...] = (r"_Location_", r"_AreaShape_Center_", r"_BoundingBox",
                                         r"ObjectNumber", r"_AreaShape_Orientation")


@dataclass(frozen=True)
class FeatureParams:
    """Feature parameters; defaults = the full CellProfiler-like set (see :data:`PRESETS`)."""

    #: compartments measured (Nuclei, Cells, Cytoplasm)
    compartments: tuple[str, ...] = COMPARTMENTS
    #: feature groups measured (AreaShape, Intensity, Texture, Granularity, RadialDistribution,
    #: Correlation, Neighbors)
    groups: tuple[str, ...] = GROUPS
    #: channels measured (empty: every channel of the sheet)
    channels: tuple[str, ...] = ()
    #: AreaShape extras
    zernike: bool = True
    feret: bool = True
    #: AreaShape: also the moments, inertia tensor, FilledArea, PerimeterCrofton (CellProfiler's
    #: "advanced features"; JUMP: no)
    advanced_shape: bool = True
    #: Texture: one Haralick set per scale (px) and gray levels
    texture_scales: tuple[int, ...] = (3, 5, 10)
    texture_gray_levels: int = 256
    #: Granularity: spectrum length and sub-sampling (CellProfiler defaults)
    granularity_spectrum: int = 16
    granularity_subsample: float = 0.25
    granularity_image_sample: float = 0.25
    granularity_element_size: int = 10
    #: RadialDistribution bins and Zernike moments
    radial_bins: int = 4
    radial_zernikes: bool = True
    #: Correlation measures: any of pearson, manders, rwc, overlap, costes
    correlations: tuple[str, ...] = CORRELATIONS
    #: Manders / RWC / Costes threshold, % of each object's maximum intensity (CellProfiler: 15)
    correlation_threshold: float = 15.0
    #: MeasureObjectNeighbors method: "Adjacent" | "Expand until adjacent" | "Within a specified distance"
    neighbors_method: str = "Expand until adjacent"
    neighbors_distance: int = 5
    #: explicit neighbour sets "Compartment:how", how = a distance in px, "Adjacent" or
    #: "Expanded" (JUMP: Nuclei:1, Cells:5, Cells:Adjacent); empty: ``neighbors_method`` /
    #: ``neighbors_distance`` for Nuclei and Cells
    neighbors: tuple[str, ...] = ()
    #: Cytoplasm = cells − nuclei shrunk by their 1-px outline first (CellProfiler
    #: IdentifyTertiaryObjects "shrink smaller object", JUMP: yes); false: cells − nuclei
    shrink_nuclei: bool = True
    #: intensities are divided by this (CellProfiler's [0, 1] scale for 16-bit files)
    intensity_scale: float = 65535.0
    #: measure at most this many objects per well (seeded random subset; 0 = all)
    max_objects_per_well: int = 0
    #: well aggregation: "median" (default) or "mean"
    aggregate: str = "median"
    seed: int = 0


#: "full": the dataclass defaults (~8 s per 256² site × 5 channels, 30 cells);
#: "fast": every group, cheap variants (one texture scale, 8 granularity scales, no Zernikes,
#: Pearson only; ~1.7 s per site); "minimal": AreaShape, Intensity, Texture, Correlation of the
#: fast variant (~0.5 s per site).
PRESETS: dict[str, dict] = {
    "full": {},
    "fast": {"texture_scales": (3,), "granularity_spectrum": 8, "radial_zernikes": False,
             "zernike": False, "correlations": ("pearson",)},
    "minimal": {"texture_scales": (3,), "zernike": False, "correlations": ("pearson",),
                "groups": ("AreaShape", "Intensity", "Texture", "Correlation")},
    # The JUMP production pipelines' measurement settings (shared/JUMP_PIPELINE.md §5):
    # MeasureObjectSizeShape Zernike yes / advanced no; MeasureTexture 256 levels at 3, 5, 10 px;
    # MeasureGranularity radius 10, spectrum 16, subsampling 0.5 and 0.5;
    # MeasureObjectIntensityDistribution 4 scaled bins, no Zernike; MeasureColocalization all
    # metrics at 15 % without Costes; MeasureObjectNeighbors nuclei within 1 px, cells within
    # 5 px and adjacent; Cytoplasm from shrunk nuclei.
    "jump": {"texture_scales": (3, 5, 10), "texture_gray_levels": 256, "zernike": True, "feret": True,
             "advanced_shape": False, "granularity_spectrum": 16, "granularity_subsample": 0.5,
             "granularity_image_sample": 0.5, "granularity_element_size": 10, "radial_bins": 4,
             "radial_zernikes": False, "correlations": ("pearson", "manders", "rwc", "overlap"),
             "correlation_threshold": 15.0, "neighbors": ("Nuclei:1", "Cells:5", "Cells:Adjacent"),
             "shrink_nuclei": True},
}


def feature_params(preset: str = "full", **overrides) -> FeatureParams:
    if preset not in PRESETS:
        raise MorphobenchError(f"unknown feature preset {preset!r}; choose {sorted(PRESETS)}")
    merged = {**PRESETS[preset], **overrides}
    return FeatureParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})


# --------------------------------------------------------------------------------------------
# Translation cp_measure → CellProfiler
# --------------------------------------------------------------------------------------------
_RADIAL = re.compile(r"^RadialDistribution_(FracAtD|MeanFrac|RadialCV|ZernikeMagnitude|ZernikePhase)_(.+)$")
_TEXTURE = re.compile(r"^([A-Za-z0-9]+)_(\d+_\d+_\d+)$")
_CORR_12 = re.compile(r"^Correlation_(Manders|RWC|Costes|K)_([12])$")


def cellprofiler_name(name: str, compartment: str, channels: Sequence[str] | None = None) -> str | None:
    """CellProfiler column name of a cp_measure (featurizer-style) feature name.

    ``channels`` (the measured channel order) decides which channel pair order is kept; a
    reversed pair (second channel earlier in ``channels``) returns ``None``. Raises
    ``KeyError`` for a name it does not know (so new cp_measure features are noticed).
    """
    base, *chans = name.split("__")
    if not chans:
        if base.startswith("Neighbors_"):
            feat = base
        else:
            feat = f"AreaShape_{base}"
    elif len(chans) == 1:
        (c,) = chans
        if base.startswith(("Intensity_", "Location_")):
            feat = f"{base}_{c}"
        elif base.startswith("Granularity_"):
            feat = f"{base}_{c}"
        elif m := _RADIAL.match(base):
            feat = f"RadialDistribution_{m[1]}_{c}_{m[2]}"
        elif m := _TEXTURE.match(base):
            feat = f"Texture_{m[1]}_{c}_{m[2]}"
        else:
            raise KeyError(f"no CellProfiler name for cp_measure feature {name!r}")
    elif len(chans) == 2:
        a, b = chans
        if channels is not None and list(channels).index(a) > list(channels).index(b):
            return None
        if base == "Correlation_Pearson":
            feat = f"Correlation_Correlation_{a}_{b}"
        elif base in ("Correlation_Slope", "Correlation_Overlap"):
            feat = f"{base}_{a}_{b}"
        elif m := _CORR_12.match(base):
            feat = f"Correlation_{m[1]}_{a}_{b}" if m[2] == "1" else f"Correlation_{m[1]}_{b}_{a}"
        else:
            raise KeyError(f"no CellProfiler name for cp_measure feature {name!r}")
    else:
        raise KeyError(f"no CellProfiler name for cp_measure feature {name!r}")
    return f"{compartment}_{feat}"


def cp_measure_names(channels: Sequence[str] = ("DNA", "ER"), **config) -> list[str]:
    """Feature names cp_measure's own featurizer produces (every feature group enabled, unless
    ``config`` turns some off), measured on a tiny synthetic image — the input the translation
    table is checked against."""
    from cp_measure.featurizer import featurize, make_featurizer_config

    rng = np.random.default_rng(0)
    img = rng.random((1, len(channels), 40, 40)).astype(np.float64)
    mask = np.zeros((1, 1, 40, 40), np.int32)
    mask[0, 0, 4:18, 4:18] = 1
    mask[0, 0, 22:36, 20:34] = 2
    cfg = make_featurizer_config(list(channels), correlation_costes_params={"scale_max": 65535}, **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, cols, _ = featurize(img, mask, cfg)
    return list(cols)


def translation_table(names: Sequence[str], compartments: Sequence[str] = COMPARTMENTS,
                      channels: Sequence[str] | None = None) -> pd.DataFrame:
    """Table ``cp_measure_name, compartment, cellprofiler_name`` (dropped pairs: None)."""
    rows = [{"cp_measure_name": n, "compartment": comp,
             "cellprofiler_name": cellprofiler_name(n, comp, channels)}
            for comp in compartments for n in names]
    return pd.DataFrame(rows)


def feature_group(cp_name: str) -> str:
    """Feature group (CellProfiler module category) of a CellProfiler column name."""
    parts = cp_name.split("_")
    cat = parts[1] if len(parts) > 1 else ""
    return "Intensity" if cat == "Location" else cat


# --------------------------------------------------------------------------------------------
# Measuring one site
# --------------------------------------------------------------------------------------------
def _funcs():
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    core = get_core_measurements(sanitize=False)
    corr = get_correlation_measurements(sanitize=False)
    from cp_measure.core.measurecolocalization import get_correlation_overlap

    corr = {"pearson": corr["pearson"], "manders": corr["manders_fold"], "rwc": corr["rwc"],
            "costes": corr["costes"], "overlap": get_correlation_overlap}
    return core, corr


def _intensity(labels: np.ndarray, px: np.ndarray, n: int, core) -> dict[str, np.ndarray]:
    """MeasureObjectIntensity as CellProfiler: quartiles and median interpolated at n·q in the
    sorted pixels (cp-measure's ``legacy``), MAD = the median (scipy's, mean of the two middle
    values) of |x − that median| (cellprofiler-library 5; CellProfiler 4.1.3 took the n·½
    interpolated value instead, see README "Parity")."""
    from scipy import ndimage

    out = core["intensity"](labels, px, legacy=True)
    med = np.zeros(n + 1)
    med[1:] = out["Intensity_MedianIntensity"]
    inside = labels > 0
    dev = np.abs(px[inside] - med[labels[inside]])
    mad = ndimage.median(dev, labels[inside], np.arange(1, n + 1))
    out["Intensity_MADIntensity"] = np.nan_to_num(np.asarray(mad, float), nan=0.0)
    return out


#: seconds spent per feature group by this process (benchmarks/images.py reads and resets it)
GROUP_SECONDS: dict[str, float] = {}


class _clock:
    """Adds the time spent in a ``with`` block to :data:`GROUP_SECONDS` [group]."""

    def __init__(self, group: str):
        self.group = group

    def __enter__(self):
        import time

        self.t = time.perf_counter()

    def __exit__(self, *exc):
        import time

        GROUP_SECONDS[self.group] = GROUP_SECONDS.get(self.group, 0.0) + time.perf_counter() - self.t
        return False


def _measure_compartment(labels: np.ndarray, pixels: np.ndarray, channels: Sequence[str],
                         params: FeatureParams) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """cp_measure features (featurizer-style names) of one label image; returns (ids, results)."""
    from cp_measure._sanitize import sanitize_masks

    clean, ids = sanitize_masks(labels)
    res: dict[str, np.ndarray] = {}
    if ids.size == 0:
        return ids, res
    core, corr = _funcs()
    g = set(params.groups)
    radial_cache = None  # the objects' centres and distances, shared by the channels
    if "AreaShape" in g:
        with _clock("AreaShape"):
            res.update(core["sizeshape"](clean, None, calculate_advanced=params.advanced_shape,
                                         new_features=params.advanced_shape))
            if params.zernike:
                res.update(core["zernike"](clean, None))
            if params.feret:
                res.update(core["feret"](clean, None))
    for ci, ch in enumerate(channels):
        px = pixels[ci]
        out: dict[str, np.ndarray] = {}
        if "Intensity" in g:
            with _clock("Intensity"):
                out.update(_intensity(clean, px, int(ids.size), core))
        if "Texture" in g:
            from morphobench.images.texture import texture_features

            with _clock("Texture"):
                for sc in params.texture_scales:
                    out.update(texture_features(clean, px, int(ids.size), scale=int(sc),
                                                gray_levels=params.texture_gray_levels))
        if "RadialDistribution" in g:
            from morphobench.images.radial import radial_distribution

            if radial_cache is None:
                radial_cache = {}
            with _clock("RadialDistribution"):
                out.update(radial_distribution(clean, px, int(ids.size), params.radial_bins, cache=radial_cache))
                if params.radial_zernikes:
                    out.update(core["radial_zernikes"](clean, px))
        res.update({f"{k}__{ch}": v for k, v in out.items()})
    if "Correlation" in g and len(channels) > 1:
        with _clock("Correlation"):
            unknown = set(params.correlations) - set(CORRELATIONS)
            if unknown:
                raise MorphobenchError(f"unknown correlation measure(s) {sorted(unknown)}; allowed {CORRELATIONS}")
            for i in range(len(channels)):
                for j in range(i + 1, len(channels)):
                    for cname in params.correlations:
                        kw = {"scale_max": 65535} if cname == "costes" else {}
                        if cname in ("manders", "rwc", "costes"):
                            kw["thr"] = params.correlation_threshold
                        p1, p2 = pixels[i], pixels[j]
                        if cname == "costes":
                            p1, p2 = np.clip(p1, 0, 1), np.clip(p2, 0, 1)
                        if cname == "rwc":  # CellProfiler's site-wide ranks (cp-measure ranks per object)
                            from morphobench.images.colocalization import rwc_objects

                            out = rwc_objects(p1, p2, clean, int(ids.size), params.correlation_threshold)
                        else:
                            out = corr[cname](pixels_1=p1, pixels_2=p2, masks=clean, **kw)
                        res.update({f"{k}__{channels[i]}__{channels[j]}": np.asarray(v, np.float64)
                                    for k, v in out.items()})
    return ids, res


_NEIGHBOR_HOW = {"adjacent": ("Adjacent", 0), "expanded": ("Expand until adjacent", 0)}


def neighbor_sets(params: FeatureParams) -> list[tuple[str, str, int]]:
    """``(compartment, MeasureObjectNeighbors method, distance)`` of every neighbour measurement."""
    if not params.neighbors:
        return [(c, params.neighbors_method, int(params.neighbors_distance)) for c in ("Nuclei", "Cells")]
    out = []
    for spec in params.neighbors:
        comp, _, how = str(spec).partition(":")
        if comp not in COMPARTMENTS or not how:
            raise MorphobenchError(f"neighbors entry {spec!r}: use 'Compartment:how' with a compartment of "
                                   f"{COMPARTMENTS} and how = a distance in px, 'Adjacent' or 'Expanded'")
        if how.lower() in _NEIGHBOR_HOW:
            out.append((comp, *_NEIGHBOR_HOW[how.lower()]))
        elif how.isdigit() and int(how) >= 1:
            out.append((comp, "Within a specified distance", int(how)))
        else:
            raise MorphobenchError(f"neighbors entry {spec!r}: {how!r} is not a distance (px ≥ 1), "
                                   "'Adjacent' or 'Expanded'")
    return out


def _neighbors(labels: np.ndarray, method: str, distance: int) -> dict[str, np.ndarray]:
    from cp_measure.bulk import get_multimask_measurements

    fn = get_multimask_measurements()["neighbors"]
    kw = {"distance_method": method, "distance": distance}
    n = int(labels.max()) if labels.size else 0
    if n <= 1:
        # cp_measure 0.3.0 raises UnboundLocalError for label images with fewer than 2 objects
        # (its no-neighbour branch uses `object_numbers` before assignment). CellProfiler's
        # MeasureObjectNeighbors leaves every measurement of such objects at its initial 0
        # (no neighbour, no closest object, zero distances/angle/touching): same keys, zeros.
        probe = np.zeros((16, 16), dtype=labels.dtype)
        probe[2:5, 2:5] = 1
        probe[10:13, 10:13] = 2
        keys = fn(probe, probe, **kw).keys()
        return {k: np.zeros(n, dtype=np.float64) for k in keys}
    return fn(labels, labels, **kw)


def label_outline(labels: np.ndarray) -> np.ndarray:
    """Outline pixels of a label image (CellProfiler's ``outline``): a labelled pixel with an
    8-neighbour of another value, and every labelled pixel on the image edge; returns a mask."""
    lab = np.asarray(labels)
    diff = np.zeros(lab.shape, bool)
    for a, b in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                 ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
                 ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None)))):
        d = lab[a] != lab[b]
        diff[a] |= d
        diff[b] |= d
    diff[0, :] = diff[-1, :] = True
    diff[:, 0] = diff[:, -1] = True
    return diff & (lab != 0)


def cytoplasm_labels(nuclei: np.ndarray, cells: np.ndarray, shrink: bool = True) -> np.ndarray:
    """Cytoplasm = cells − nuclei, as CellProfiler's IdentifyTertiaryObjects.

    ``shrink`` ("Shrink smaller object prior to subtraction", JUMP: yes): the nuclei lose their
    1-pixel outline first, so the outline stays in the cytoplasm. A cell left with no pixel keeps
    its first (row-major) pixel, as CellProfiler does, so every cell has a cytoplasm object.
    """
    nuclei = np.asarray(nuclei)
    cells = np.asarray(cells)
    keep = (nuclei == 0) | label_outline(nuclei) if shrink else nuclei == 0
    cyto = np.where(keep, cells, 0)
    ids, first = np.unique(cells.ravel(), return_index=True)
    have = np.zeros(int(ids.max(initial=0)) + 1, bool)
    have[np.unique(cyto)] = True
    for lab, pos in zip(ids, first, strict=True):
        if lab and not have[lab]:
            cyto.flat[pos] = lab
    return cyto


def measure_site(img: np.ndarray, nuclei: np.ndarray, cells: np.ndarray, channels: Sequence[str],
                 params: FeatureParams = FeatureParams(),
                 object_numbers: Sequence[int] | None = None) -> pd.DataFrame:
    """CellProfiler features of one site. ``img`` is ``(C,H,W)`` in file units (illumination-
    corrected); ``nuclei``/``cells`` share object numbers 1..N. Returns one row per object
    (``ObjectNumber`` + CellProfiler-named columns); objects absent from a compartment (e.g. an
    empty cytoplasm) get NaN there. ``object_numbers`` restricts the objects measured.
    """
    channels = list(channels)
    nuclei = np.asarray(nuclei).astype(np.int64)
    cells = np.asarray(cells).astype(np.int64)
    n = int(max(nuclei.max(initial=0), cells.max(initial=0)))
    wanted = np.arange(1, n + 1) if object_numbers is None else np.asarray(sorted(object_numbers), np.int64)
    if n == 0 or len(wanted) == 0:
        return pd.DataFrame({"ObjectNumber": np.zeros(0, np.int64)})
    unknown = set(params.compartments) - set(COMPARTMENTS)
    if unknown:
        raise MorphobenchError(f"unknown compartment(s) {sorted(unknown)}; allowed {COMPARTMENTS}")
    unknown = set(params.groups) - set(GROUPS)
    if unknown:
        raise MorphobenchError(f"unknown feature group(s) {sorted(unknown)}; allowed {GROUPS}")
    nsets = neighbor_sets(params) if "Neighbors" in params.groups else []
    sel = np.zeros(n + 1, bool)
    sel[wanted[wanted <= n]] = True
    pixels = np.asarray(img, np.float64) / float(params.intensity_scale)
    masks = {"Nuclei": nuclei, "Cells": cells,
             "Cytoplasm": cytoplasm_labels(nuclei, cells, params.shrink_nuclei)}
    cols: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        labs = {comp: np.where(sel[masks[comp]], masks[comp], 0) for comp in params.compartments}
        gran = {}
        if "Granularity" in params.groups:  # one spectrum per channel serves every compartment
            from morphobench.images.granularity import granularity

            ops: dict = {}
            comps = {c: (lab, int(lab.max())) for c, lab in labs.items()}
            with _clock("Granularity"):
                for ci, ch in enumerate(channels):
                    gran[ch] = granularity(pixels[ci], comps, subsample=params.granularity_subsample,
                                           image_sample=params.granularity_image_sample,
                                           element_size=params.granularity_element_size,
                                           spectrum=params.granularity_spectrum, operators=ops)
        for comp in params.compartments:
            lab = labs[comp]
            ids, res = _measure_compartment(lab, pixels, channels, params)
            for ch, by_comp in gran.items():
                if ids.size:
                    res.update({f"{k}__{ch}": v[ids - 1] for k, v in by_comp[comp].items()})
            if "Neighbors" in params.groups and masks[comp].max() > 0:
                full_ids = np.unique(masks[comp][masks[comp] > 0])
                if full_ids.size == masks[comp].max():  # neighbours need contiguous labels
                    for _, method, dist in (t for t in nsets if t[0] == comp):
                        with _clock("Neighbors"):
                            nb = _neighbors(masks[comp], method, dist)
                        pos = np.searchsorted(full_ids, ids)
                        res.update({k: np.asarray(v, np.float64)[pos] for k, v in nb.items()})
            for k, v in res.items():
                name = cellprofiler_name(k, comp, channels)
                if name is None:
                    continue
                col = np.full(len(wanted), np.nan)
                col[np.searchsorted(wanted, ids)] = np.asarray(v, np.float64)
                cols[name] = col
    df = pd.DataFrame(cols)
    df.insert(0, "ObjectNumber", wanted)
    return df


# --------------------------------------------------------------------------------------------
# Plate
# --------------------------------------------------------------------------------------------
def _select_objects(sites: pd.DataFrame, params: FeatureParams) -> dict[int, np.ndarray | None]:
    """Per ImageNumber, the object numbers to measure (None = all) under ``max_objects_per_well``."""
    if not params.max_objects_per_well:
        return {int(i): None for i in sites["ImageNumber"]}
    rng = np.random.default_rng(params.seed)
    out: dict[int, np.ndarray | None] = {}
    for _, g in sites.groupby(["Metadata_Plate", "Metadata_Well"], sort=True):
        pairs = [(int(r.ImageNumber), k) for r in g.itertuples() for k in range(1, int(r.Count_Nuclei) + 1)]
        if len(pairs) > params.max_objects_per_well:
            pick = np.sort(rng.choice(len(pairs), params.max_objects_per_well, replace=False))
            pairs = [pairs[i] for i in pick]
        for im in g["ImageNumber"]:
            out[int(im)] = np.array([k for i, k in pairs if i == int(im)], np.int64)
    return out


def _measure_task(task: tuple) -> pd.DataFrame | None:
    """One site of :func:`run_features` (a top-level function: runs in worker processes too)."""
    row, i, labels, channels, params, illum, root, pick = task
    larr, _ = open_labels(labels)
    nuc, cel = np.asarray(larr[i])
    img = read_site(row, channels, illum=illum, root=root)
    if img.shape[1:] != nuc.shape:
        raise MorphobenchError(f"site {site_label(row)}: image {img.shape[1:]} vs labels {nuc.shape}")
    df = measure_site(img, nuc, cel, channels, params, object_numbers=pick)
    meta = site_meta(row)
    front = pd.DataFrame({**{k: [v] * len(df) for k, v in meta.items()},
                          "ImageNumber": np.full(len(df), i + 1, np.int64)})
    return pd.concat([front, df], axis=1)


def run_features(rows: pd.DataFrame, labels: str | os.PathLike, objects_out: str | os.PathLike,
                 wells_out: str | os.PathLike | None = None, params: FeatureParams = FeatureParams(), *,
                 illum: IllumFunctions | None = None, plate_map: pd.DataFrame | None = None,
                 root=None, workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Measure every site of one plate; write object-level (and well-level) parquet.

    ``workers`` > 1 measures sites in that many processes (the rule's ``threads``); the output
    is the same (sites keep their order)."""
    channels = list(params.channels) or sheet_channels(rows)
    _, lsites = open_labels(labels)
    lkey = lsites[list(SITE_KEYS)].astype(str).agg("/".join, axis=1).tolist()
    lpos = {k: i for i, k in enumerate(lkey)}
    choose = _select_objects(lsites, params)
    tasks = []
    for _, row in rows.iterrows():
        key = "/".join(str(row[k]) for k in SITE_KEYS)
        if key not in lpos:
            raise MorphobenchError(f"label store {labels} has no site {site_label(row)}")
        i = lpos[key]
        if int(lsites["Count_Nuclei"].iloc[i]) == 0:
            continue
        pick = choose.get(i + 1)
        if pick is not None and len(pick) == 0:
            continue
        tasks.append((row, i, str(labels), channels, params, illum, root, pick))
    if workers > 1 and len(tasks) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context("fork")) as ex:
            parts = list(progress(ex.map(_measure_task, tasks), total=len(tasks), desc="features"))
    else:
        parts = [_measure_task(t) for t in progress(tasks, total=len(tasks), desc="features")]
    if parts:
        objects = pd.concat(parts, ignore_index=True)
    else:
        objects = pd.DataFrame({**{k: pd.Series([], dtype=rows[k].dtype) for k in SITE_KEYS},
                                "ImageNumber": pd.Series([], dtype=np.int64),
                                "ObjectNumber": pd.Series([], dtype=np.int64)})
    write_parquet(objects, objects_out)
    wells = None
    if wells_out is not None:
        wells = object_wells(objects, how=params.aggregate, plate_map=plate_map)
        write_parquet(wells, wells_out)
    return objects, wells


def profile_features(columns: Sequence[str]) -> list[str]:
    """Feature columns that enter well profiles (no Metadata_, ids, positions)."""
    pat = re.compile("|".join(NON_PROFILE_PATTERNS))
    return [c for c in columns if not c.startswith("Metadata_") and c not in ("ImageNumber", "ObjectNumber")
            and not pat.search(c)]


def object_wells(objects: pd.DataFrame, how: str = "median",
                 plate_map: pd.DataFrame | None = None) -> pd.DataFrame:
    """Well-level CellProfiler profiles: the profile features of the objects (no ids, positions)
    aggregated per well by :func:`morphobench.data.aggregate.aggregate_wells` (``how`` = median or
    mean, NaN ignored), site keys above the well kept, ``Metadata_Count_Cells`` added; with a
    plate map its ``Metadata_*`` columns are merged on plate and well."""
    keys = [k for k in ("Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well")
            if k in objects.columns]
    prof = aggregate_wells(objects[keys + profile_features(objects.columns)], how, keys=keys, nan="omit",
                           count_col="Metadata_Count_Cells", source="CellProfiler objects")
    if plate_map is not None:
        extra = [c for c in plate_map.columns if c.startswith("Metadata_") and c not in prof.columns]
        pm = plate_map[["Metadata_Plate", "Metadata_Well"] + extra]
        prof = prof.merge(pm, on=["Metadata_Plate", "Metadata_Well"], how="left", validate="one_to_one")
        meta = [c for c in prof.columns if c.startswith("Metadata_")]
        prof = prof[meta + [c for c in prof.columns if c not in meta]]
    return prof


def params_dict(params: FeatureParams) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()}


def read_plate_map(path: str | os.PathLike | None) -> pd.DataFrame | None:
    return None if path is None else read_table(path, what="plate map")


