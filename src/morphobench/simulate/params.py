"""Parameters of the simulated screen: presets, config merging and layout feasibility.

This module is imported while Snakemake builds the DAG (``workflow_helpers.dataset_plates``), so it
only imports the standard library and :mod:`morphobench.io`.

Presets
-------
``default``       2 batches × 2 plates, 96-well, 2 sites/well, 256 px, 64 genes (8 CORUM complexes
                  × 5, 4 singletons, 20 unexpressed), 16 compounds in 4 MoAs, 12 negcon wells/plate;
                  each treatment in one batch, 2 wells on each of its 2 plates (``layout: batch``).
``tiny``          2 batches × 1 plate, 96-well, 1 site/well, 128 px, 19 treatments (fast tests),
                  8 negcon wells/plate, replicates spread over both plates (``layout: spread``).
``plate384``      the default design on 384-well plates (more replicates, 24 negcon wells/plate).
``many_sites``    the default with 9 sites per well.
``large_images``  the default with 1,024 px sites (≈ 16× the cells per site).
``three_batches`` the default design on 3 batches × 2 plates with every treatment on every plate
                  (``layout: spread``): three variation groups that all hold every treatment, for
                  TEAMs Table 3 (train on two groups, test on all three).
``large``         4 batches × 3 plates of 384 wells, 200 genes (60 unexpressed genes on 3 arms,
                  so arm correction has > 20 unexpressed genes on at least one arm), 48 compounds.

Every explicit key of the config's ``simulate`` section overrides the preset. When ``image_size`` is
given but ``cells_per_site`` is not, the preset's cell counts scale with the image area (the pixel
size is physical: cells keep their size in pixels).

``cells_per_site`` is the range of the expected number of cells visible in a site, i.e. with ≥ 1
nucleus pixel in the field (the objects of the truth masks, including those cut by the border),
before the well's density and ``cell_count`` effects. A site is a crop of a larger monolayer: the
renderer places proportionally more cells over the field plus a margin of about one cell diameter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from morphobench.io import MorphobenchError

#: Config keys of the ``simulate`` section (workflow/schemas/config.schema.yaml).
CONFIG_KEYS: tuple[str, ...] = (
    "preset", "seed", "n_batches", "plates_per_batch", "plate_format", "sites_per_well",
    "image_size", "brightfield", "cells_per_site", "n_complexes", "n_singleton_genes",
    "n_unexpressed_genes", "n_compounds", "n_moas", "negcon_wells_per_plate",
    "phenotype_strength", "noise", "layout", "genes_per_complex", "unexpressed_per_arm",
)

#: Replicate layouts (``layout`` key): ``batch`` puts each treatment in one batch, its replicates
#: spread evenly over that batch's plates (treatments are confounded with batches, as in screens
#: that profile each gene or compound in one experiment, so batch correction matters);
#: ``spread`` spreads every treatment's replicates evenly over all plates (plate and batch effects
#: then average out of treatment-level profiles).
LAYOUTS: tuple[str, ...] = ("batch", "spread")

#: Minimum number of replicate wells of every treatment (and positive control) across plates.
MIN_REPLICATES = 4
#: Number of positive-control compounds.
N_POSCON = 2
#: Plate format → (rows, columns).
PLATE_SHAPES: dict[int, tuple[int, int]] = {96: (8, 12), 384: (16, 24)}


@dataclass(frozen=True)
class SimParams:
    """Resolved parameters of one simulated screen (see the module docstring for presets)."""

    preset: str = "default"
    seed: int = 0
    n_batches: int = 2
    plates_per_batch: int = 2
    plate_format: int = 96
    sites_per_well: int = 2
    image_size: int = 256
    brightfield: bool = False
    cells_per_site: tuple[int, int] = (20, 40)
    n_complexes: int = 8
    n_singleton_genes: int = 4
    n_unexpressed_genes: int = 20
    n_compounds: int = 16
    n_moas: int = 4
    negcon_wells_per_plate: int = 12
    phenotype_strength: float = 1.0
    noise: float = 1.0
    layout: str = "batch"
    genes_per_complex: int = 5
    unexpressed_per_arm: int = 5
    explicit: tuple[str, ...] = field(default=(), compare=False)

    # ----------------------------------------------------------------- derived quantities
    @property
    def channels(self) -> tuple[str, ...]:
        from morphobench.data.tables import CHANNELS

        return CHANNELS + (("Brightfield",) if self.brightfield else ())

    @property
    def plates(self) -> list[tuple[str, str]]:
        """(batch, plate) ids in order, e.g. ``[("SIMB1", "SIMB1P1"), ("SIMB1", "SIMB1P2"), …]``."""
        return [(f"SIMB{b + 1}", f"SIMB{b + 1}P{p + 1}")
                for b in range(self.n_batches) for p in range(self.plates_per_batch)]

    @property
    def n_plates(self) -> int:
        return self.n_batches * self.plates_per_batch

    @property
    def plate_shape(self) -> tuple[int, int]:
        return PLATE_SHAPES[self.plate_format]

    @property
    def n_genes(self) -> int:
        return self.n_complexes * self.genes_per_complex + self.n_singleton_genes + self.n_unexpressed_genes

    @property
    def n_treatments(self) -> int:
        return self.n_genes + self.n_compounds

    @property
    def poscon_wells_per_plate(self) -> int:
        """Wells per positive control per plate, so each has ≥ MIN_REPLICATES wells in all."""
        return max(1, math.ceil(MIN_REPLICATES / self.n_plates))

    @property
    def control_wells_per_plate(self) -> int:
        return self.negcon_wells_per_plate + N_POSCON * self.poscon_wells_per_plate

    @property
    def replicates(self) -> int:
        """Replicate wells per treatment: as many as the plates hold (≥ MIN_REPLICATES).

        With ``layout="batch"`` the fullest batch (``ceil(n_treatments / n_batches)`` treatments)
        must hold them on its ``plates_per_batch`` plates."""
        per_plate = self.plate_format - self.control_wells_per_plate
        if self.layout == "batch":
            return (self.plates_per_batch * per_plate) // max(math.ceil(self.n_treatments / self.n_batches), 1)
        return (self.n_plates * per_plate) // max(self.n_treatments, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cells_per_site"] = list(self.cells_per_site)
        d["explicit"] = list(self.explicit)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimParams:
        d = dict(d)
        d["cells_per_site"] = tuple(d["cells_per_site"])
        d["explicit"] = tuple(d.get("explicit", ()))
        return cls(**d)


PRESETS: dict[str, SimParams] = {
    "default": SimParams(preset="default"),
    "tiny": SimParams(preset="tiny", n_batches=2, plates_per_batch=1, sites_per_well=1,
                      image_size=128, cells_per_site=(7, 12), n_complexes=3, genes_per_complex=3,
                      n_singleton_genes=2, n_unexpressed_genes=4, n_compounds=4, n_moas=2,
                      unexpressed_per_arm=2, negcon_wells_per_plate=8, layout="spread"),
    "plate384": SimParams(preset="plate384", plate_format=384, negcon_wells_per_plate=24),
    "many_sites": SimParams(preset="many_sites", sites_per_well=9),
    "large_images": SimParams(preset="large_images", image_size=1024, cells_per_site=(320, 640)),
    "three_batches": SimParams(preset="three_batches", n_batches=3, layout="spread"),
    "large": SimParams(preset="large", n_batches=4, plates_per_batch=3, plate_format=384,
                       n_complexes=20, genes_per_complex=6, n_singleton_genes=20,
                       n_unexpressed_genes=60, unexpressed_per_arm=25, n_compounds=48, n_moas=8,
                       negcon_wells_per_plate=24),
}


def resolve_params(section: dict[str, Any] | None) -> SimParams:
    """Merge the config's ``simulate`` section onto its preset and check the layout.

    Parameters
    ----------
    section
        The ``simulate`` mapping of a dataset (keys as in the config schema; may be empty).

    Raises
    ------
    MorphobenchError
        Unknown key or preset, bad value, or a layout whose plates cannot hold every treatment in
        ≥ 4 replicate wells next to the controls.
    """
    section = dict(section or {})
    unknown = sorted(set(section) - set(CONFIG_KEYS))
    if unknown:
        raise MorphobenchError(f"simulate: unknown key(s) {unknown}; allowed: {list(CONFIG_KEYS)}")
    preset = section.pop("preset", "default")
    if preset not in PRESETS:
        raise MorphobenchError(f"simulate: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    kw: dict[str, Any] = {}
    for key, value in section.items():
        kw[key] = _coerce(key, value)
    if "image_size" in kw and "cells_per_site" not in kw:
        scale = (kw["image_size"] / base.image_size) ** 2
        lo, hi = base.cells_per_site
        kw["cells_per_site"] = (max(1, round(lo * scale)), max(1, round(hi * scale)))
    params = replace(base, **kw, explicit=tuple(sorted(section)))
    check_params(params)
    return params


def _coerce(key: str, value: Any) -> Any:
    if key == "cells_per_site":
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise MorphobenchError(f"simulate: cells_per_site must be [min, max] integers, got {value!r}")
        return (int(value[0]), int(value[1]))
    if key == "layout":
        if value not in LAYOUTS:
            raise MorphobenchError(f"simulate: layout must be one of {list(LAYOUTS)}, got {value!r}")
        return value
    if key == "brightfield":
        if not isinstance(value, bool):
            raise MorphobenchError(f"simulate: brightfield must be true/false, got {value!r}")
        return value
    if key in ("phenotype_strength", "noise"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MorphobenchError(f"simulate: {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MorphobenchError(f"simulate: {key} must be an integer, got {value!r}")
    return int(value)


def check_params(p: SimParams) -> None:
    """Raise :class:`MorphobenchError` when values are out of range or the layout is infeasible."""
    positive = ("n_batches", "plates_per_batch", "sites_per_well", "n_complexes", "n_moas",
                "negcon_wells_per_plate", "genes_per_complex")
    for key in positive:
        if getattr(p, key) < 1:
            raise MorphobenchError(f"simulate: {key} must be ≥ 1, got {getattr(p, key)}")
    for key in ("seed", "n_singleton_genes", "n_unexpressed_genes", "n_compounds"):
        if getattr(p, key) < 0:
            raise MorphobenchError(f"simulate: {key} must be ≥ 0, got {getattr(p, key)}")
    if p.genes_per_complex < 2:
        raise MorphobenchError("simulate: genes_per_complex must be ≥ 2 (a complex relates genes)")
    if p.plate_format not in PLATE_SHAPES:
        raise MorphobenchError(f"simulate: plate_format must be one of {sorted(PLATE_SHAPES)}, got {p.plate_format}")
    if p.image_size < 64:
        raise MorphobenchError(f"simulate: image_size must be ≥ 64 px, got {p.image_size}")
    lo, hi = p.cells_per_site
    if not 1 <= lo <= hi:
        raise MorphobenchError(f"simulate: cells_per_site must be [min, max] with 1 ≤ min ≤ max, got {[lo, hi]}")
    # a 21-px-radius cell covers ~1,400 px²; refuse counts that cannot fit (placement would stall)
    if hi > 1.6 * p.image_size ** 2 / 1400:
        raise MorphobenchError(
            f"simulate: cells_per_site max {hi} does not fit a {p.image_size} px site "
            f"(at most {int(1.6 * p.image_size ** 2 / 1400)})")
    if p.phenotype_strength < 0 or p.noise < 0:
        raise MorphobenchError("simulate: phenotype_strength and noise must be ≥ 0")
    if p.n_compounds and p.n_moas > p.n_compounds:
        raise MorphobenchError(
            f"simulate: n_moas ({p.n_moas}) must not exceed n_compounds ({p.n_compounds}): "
            "every MoA class needs a compound")
    if p.unexpressed_per_arm < 1:
        raise MorphobenchError("simulate: unexpressed_per_arm must be ≥ 1")
    controls = p.control_wells_per_plate
    if controls > p.plate_format:
        raise MorphobenchError(
            f"simulate: {p.negcon_wells_per_plate} negcon + {N_POSCON}×{p.poscon_wells_per_plate} poscon "
            f"wells per plate do not fit a {p.plate_format}-well plate")
    if p.replicates < MIN_REPLICATES:
        need = p.n_treatments * MIN_REPLICATES + p.n_plates * controls
        have = p.n_plates * p.plate_format
        if p.layout == "batch":
            per_batch = math.ceil(p.n_treatments / p.n_batches)
            raise MorphobenchError(
                f"simulate: infeasible layout: with layout 'batch', {per_batch} treatments per batch × "
                f"{MIN_REPLICATES} replicates need {per_batch * MIN_REPLICATES} wells, but "
                f"{p.plates_per_batch} plates × ({p.plate_format} − {controls} control) wells hold "
                f"{p.plates_per_batch * (p.plate_format - controls)}. Add plates (plates_per_batch), use "
                "plate_format 384, layout 'spread', or simulate fewer genes/compounds/negcon wells.")
        raise MorphobenchError(
            f"simulate: infeasible layout: {p.n_treatments} treatments ({p.n_genes} genes + "
            f"{p.n_compounds} compounds) × {MIN_REPLICATES} replicates + {p.n_plates} plates × "
            f"{controls} control wells need {need} wells, but {p.n_plates} plates × "
            f"{p.plate_format} wells hold {have}. Add plates (n_batches, plates_per_batch), use "
            "plate_format 384, or simulate fewer genes/compounds/negcon wells.")
