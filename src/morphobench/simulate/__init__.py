"""The simulated Cell Painting screen (DESIGN.md, "The simulated screen").

A multi-plate screen whose ground truth is known: real gene symbols from real CORUM complexes,
compounds with MoA classes and target genes, controls, technical effects, 16-bit TIFFs in a
JUMP-like layout, plus label masks, illumination fields, phenotype vectors and relationships.

Modules
-------
:mod:`~morphobench.simulate.params`   presets and config merging (``resolve_params``), DAG-safe
:mod:`~morphobench.simulate.design`   perturbations, phenotypes, relationships, plate maps, effects
:mod:`~morphobench.simulate.render`   cells, compartments and the microscope (pixels)
:mod:`~morphobench.simulate.plate`    one plate's TIFFs, masks, illumination and cell truth
:mod:`~morphobench.simulate.example`  the example-sites montage

Command line (used by ``workflow/rules/simulate.smk``)::

    python -m morphobench.simulate design --params '{"preset": "tiny"}' --resources-dir resources \\
        --dataset-dir results/simulated
    python -m morphobench.simulate plate --dataset-dir results/simulated --plate SIMB1P1 ...
    python -m morphobench.simulate gather --out results/simulated/images.parquet SHEET ...
    python -m morphobench.simulate example-sites --dataset-dir results/simulated --out PNG
    python -m morphobench.simulate run --params '{}' --resources-dir resources --dataset-dir DIR

This ``__init__`` stays import-light: Snakemake imports ``params`` while building the DAG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plate_paths(dataset_dir: str | Path, plate: str) -> dict[str, Path]:
    """Where the per-plate outputs live (the paths the workflow rules use)."""
    d = Path(dataset_dir)
    return {
        "images_dir": d / "images" / plate / "Images",
        "sheet_path": d / "images" / plate / "sheet.parquet",
        "masks_path": d / "truth" / f"{plate}_masks.npz",
        "illum_path": d / "truth" / f"{plate}_illumination.npz",
        "cells_path": d / "truth" / f"{plate}_cells.parquet",
    }


def simulate_screen(section: dict[str, Any] | None, dataset_dir: str | Path, *,
                    resources_dir: str | Path | None = None, tables: tuple | None = None,
                    plates: list[str] | None = None):
    """Design + render (all or some plates) + gather, in one process (tests, notebooks).

    ``tables`` = (complexes, gene_arms, zfpkm) overrides ``resources_dir``. Returns the image sheet.
    """
    from morphobench.simulate.design import load_resource_tables, make_design, write_design
    from morphobench.simulate.params import resolve_params
    from morphobench.simulate.plate import gather_sheets, simulate_plate

    params = resolve_params(section)
    if tables is None:
        if resources_dir is None:
            raise ValueError("simulate_screen: give resources_dir or tables")
        tables = load_resource_tables(resources_dir)
    design = make_design(params, *tables)
    write_design(design, dataset_dir)
    todo = plates if plates is not None else [pl for _, pl in params.plates]
    sheets = []
    for plate in todo:
        paths = plate_paths(dataset_dir, plate)
        simulate_plate(dataset_dir, plate, **paths)
        sheets.append(paths["sheet_path"])
    return gather_sheets(sheets, Path(dataset_dir) / "images.parquet")
