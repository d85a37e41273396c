"""Render one simulated plate: TIFFs, label masks, illumination truth, cell truth, sheet fragment.

Outputs of :func:`simulate_plate` (paths are arguments; the workflow uses these)
------------------------------------------------------------------------------
``results/{dataset}/images/{plate}/Images/r01c01f01p01-ch5sk1fk1fl1.tiff``
    one uncompressed 16-bit TIFF per site × channel; ``rRRcCCfFF`` = 1-based row, column, site,
    ``chN`` = JUMP channel number (:data:`~morphobench.data.tables.JUMP_CHANNEL_NUMBERS`:
    Mito 1, AGP 2, RNA 3, ER 4, DNA 5, Brightfield 6).
``results/{dataset}/images/{plate}/sheet.parquet``
    the plate's rows of the image sheet (PathName is the image folder as passed, i.e. relative to
    the workflow's working directory when the rule passes relative paths).
``results/{dataset}/truth/{plate}_masks.npz``
    ``nuclei``, ``cells``: S × H × W uint16 label images (0 = background, object i of a site has
    label i in both, ``ObjectNumber`` in the cell table); ``well`` (S, str), ``site`` (S, int16),
    rows in sheet order. Written with fixed zip timestamps (byte-deterministic); ``np.load`` reads it.
    The objects are the cells with ≥ 1 nucleus pixel in the field; cells cut by the field border
    are labelled with their visible part. The visible cytoplasm of a cell whose nucleus lies wholly
    outside the field is unlabelled (0), as nucleus-seeded segmentation leaves it.
``results/{dataset}/truth/{plate}_illumination.npz``
    ``illumination``: C × H × W float32 multiplicative field (max 1) per channel; ``channels`` (C, str).
``results/{dataset}/truth/{plate}_cells.parquet``
    one row per object: ``Metadata_Plate, Metadata_Well, Metadata_Site, ObjectNumber``,
    ``Nuclei_AreaShape_Area``, ``Cells_AreaShape_Area``, ``Nuclei_Location_Center_X/Y``,
    ``Cells_Location_Center_X/Y`` (pixels, x = column; areas and centres of the visible part, as
    in the masks), ``Truth_Mitotic``, ``Truth_NucleusRadius``, ``Truth_CellRadius`` (drawn
    parameters, of the whole cell also when it is cut by the border).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from morphobench.data.tables import (
    JUMP_CHANNEL_NUMBERS,
    filename_col,
    parse_well,
    pathname_col,
    validate_image_sheet,
)
from morphobench.io import MorphobenchError, atomic_path, progress, write_parquet
from morphobench.simulate.design import AXES, read_design_info
from morphobench.simulate.params import SimParams
from morphobench.simulate.render import NoiseBank, expose, illumination_fields, render_site

log = logging.getLogger("morphobench.simulate")

CHANNEL_NUMBER = {name: num for num, name in JUMP_CHANNEL_NUMBERS.items()}


def tiff_name(row: int, col: int, site: int, channel: str) -> str:
    """JUMP/Phenix-style file name; ``row``, ``col`` 0-based, ``site`` 1-based."""
    return f"r{row + 1:02d}c{col + 1:02d}f{site:02d}p01-ch{CHANNEL_NUMBER[channel]}sk1fk1fl1.tiff"


def write_tiff(path: Path, image: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, image, photometric="minisblack", metadata=None)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray], compress: bool = True) -> Path:
    """``np.savez`` with fixed zip timestamps/attributes so equal arrays give equal bytes."""
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return path


def max_cells(size: int) -> int:
    return int(1.6 * size ** 2 / 1400)


def simulate_plate(dataset_dir: str | Path, plate: str, *, images_dir: str | Path,
                   sheet_path: str | Path, masks_path: str | Path, illum_path: str | Path,
                   cells_path: str | Path) -> pd.DataFrame:
    """Render every site of ``plate`` from the design under ``dataset_dir``; return the sheet."""
    dataset_dir = Path(dataset_dir)
    info = read_design_info(dataset_dir)
    params = SimParams.from_dict(info["params"])
    plates = [pl for _, pl in params.plates]
    if plate not in plates:
        raise MorphobenchError(f"simulate: plate {plate!r} is not in the design (plates: {plates})")
    k = plates.index(plate)
    batch = params.plates[k][0]
    b_idx = sorted({b for b, _ in params.plates}).index(batch)
    channels = tuple(info["channels"])
    size = params.image_size

    wells = pd.read_parquet(dataset_dir / "wells.parquet")
    wells = wells[wells["Metadata_Plate"] == plate]
    eff = pd.read_parquet(dataset_dir / "truth" / "well_effects.parquet")
    eff = eff[eff["Metadata_Plate"] == plate].set_index("Metadata_Well")
    pe = pd.read_parquet(dataset_dir / "truth" / "plate_effects.parquet")
    pe = pe[pe["Metadata_Plate"] == plate].set_index("Channel").loc[list(channels)]
    plate_gain = pe["gain"].to_numpy(float)
    offset = pe["offset"].to_numpy(float)
    background = pe["background"].to_numpy(float)

    illum = illumination_fields(np.random.default_rng([params.seed, 11, b_idx]),
                                np.random.default_rng([params.seed, 12, k]), size, channels)
    bank = NoiseBank(size)
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    rc = [parse_well(w) for w in wells["Metadata_Well"]]
    order = np.lexsort(([c for _, c in rc], [r for r, _ in rc]))
    well_list = [(wells["Metadata_Well"].iloc[i], *rc[i]) for i in order]
    S = len(well_list) * params.sites_per_well
    nuclei = np.zeros((S, size, size), np.uint16)
    cells = np.zeros((S, size, size), np.uint16)
    site_well, site_num, sheet_rows, cell_rows = [], [], [], []
    lo, hi = params.cells_per_site
    axis_cols = [f"axis_{a}" for a in AXES]
    s = 0
    for well, row, col in progress(well_list, desc=f"simulate {plate}", unit="well"):
        we = eff.loc[well]
        axes = we[axis_cols].to_numpy(float)
        gain = plate_gain * we[[f"gain_{c}" for c in channels]].to_numpy(float)
        for site in range(1, params.sites_per_well + 1):
            rng = np.random.default_rng([params.seed, 13, k, row, col, site])
            target = rng.uniform(lo, hi) * we["density"] * np.exp(0.25 * axes[AXES.index("cell_count")])
            n = int(np.clip(round(target), 1, max_cells(size)))
            sig, lab, nuc, prow, centres, p = render_site(rng, axes, n, size, channels, bank)
            img = expose(rng, sig, channels, illum, gain, offset, background, params.noise)
            rec = {"Metadata_Source": info.get("source", "simulated"), "Metadata_Batch": batch,
                   "Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
            for c, ch in enumerate(channels):
                name = tiff_name(row, col, site, ch)
                write_tiff(images_dir / name, img[c])
                rec[filename_col(ch)] = name
                rec[pathname_col(ch)] = str(images_dir)
            sheet_rows.append(rec)
            nuclei[s], cells[s] = nuc, lab
            site_well.append(well)
            site_num.append(site)
            cell_rows.append(_cell_table(plate, well, site, lab, nuc, p, prow))
            s += 1
    sheet = pd.DataFrame(sheet_rows)
    sheet = sheet[["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]
                  + [filename_col(c) for c in channels] + [pathname_col(c) for c in channels]]
    validate_image_sheet(sheet, str(sheet_path))
    write_npz(masks_path, {"nuclei": nuclei, "cells": cells, "well": np.array(site_well, dtype="U8"),
                           "site": np.array(site_num, np.int16)})
    write_npz(illum_path, {"illumination": illum, "channels": np.array(channels, dtype="U16")})
    write_parquet(pd.concat(cell_rows, ignore_index=True), cells_path)
    write_parquet(sheet, sheet_path)
    log.info("plate %s: %d sites, %d cells", plate, S, sum(len(c) for c in cell_rows))
    return sheet


def _cell_table(plate, well, site, lab, nuc, p, prow) -> pd.DataFrame:
    n = len(prow)
    size = lab.shape[1]
    yy, xx = np.divmod(np.arange(lab.size), size)

    def stats(lbl):
        flat = lbl.ravel()
        area = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = np.bincount(flat, weights=xx, minlength=n + 1)[1:] / area
            cy = np.bincount(flat, weights=yy, minlength=n + 1)[1:] / area
        return area, cx, cy

    ca, ccx, ccy = stats(lab)
    na, ncx, ncy = stats(nuc)
    return pd.DataFrame({
        "Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": np.full(n, site, np.int64),
        "ObjectNumber": np.arange(1, n + 1, dtype=np.int64),
        "Nuclei_AreaShape_Area": na, "Cells_AreaShape_Area": ca,
        "Nuclei_Location_Center_X": ncx, "Nuclei_Location_Center_Y": ncy,
        "Cells_Location_Center_X": ccx, "Cells_Location_Center_Y": ccy,
        "Truth_Mitotic": p["mitotic"][prow], "Truth_NucleusRadius": p["rn"][prow],
        "Truth_CellRadius": p["rc"][prow],
    })


def gather_sheets(sheet_paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """Concatenate per-plate sheet fragments into ``results/{dataset}/images.parquet``."""
    if not sheet_paths:
        raise MorphobenchError("simulate: no plate sheets to gather")
    sheet = pd.concat([pd.read_parquet(p) for p in sheet_paths], ignore_index=True)
    sheet = sheet.sort_values(["Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_Site"],
                              kind="stable").reset_index(drop=True)
    validate_image_sheet(sheet, str(out))
    write_parquet(sheet, out)
    return sheet
