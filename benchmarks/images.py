"""Seconds per site of the image stages (illumination, segmentation, crops, CellProfiler features).

Synthetic 16-bit TIFF plates (``morphobench.images.synthetic``; 5 channels; ~30 cells per 256²
field, the same cell density at 1080²), read from disk as in the workflow, one process, one core.

    python benchmarks/images.py                 # 256² (8 sites) and 1080² (2 sites), both backends
    python benchmarks/images.py --sizes 256 --sites 16 --features fast full --backends inprocess

The ``cellprofiler`` backend (CellProfiler's own library in .venv-cellprofiler, see
workflow/scripts/setup_cellprofiler_env.sh) is timed on the same plates when that environment
exists; its times include starting the worker process once per stage and plate, as in the workflow.

Prints one row per image size with the seconds per site of every stage (illumination = averaging
+ function, amortised over the plate; crops = cell128 + tile256; features per preset).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MORPHOBENCH_NO_PROGRESS", "1")


def bench(size: int, n_sites: int, presets: list[str], workdir: Path,
          cp_python: str | None = None) -> dict[str, float]:
    from morphobench.images.crops import preset_params, run_crops
    from morphobench.images.features import feature_params, run_features
    from morphobench.images.illum import run_illum
    from morphobench.images.segment import run_segment
    from morphobench.images.synthetic import write_synthetic_plate

    wells = [f"A{i:02d}" for i in range(1, n_sites + 1)]
    n_cells = int(round(30 * (size / 256) ** 2))
    sheet, _ = write_synthetic_plate(workdir / f"img{size}", wells=wells, sites=1, size=size, n_cells=n_cells,
                                     seed=size)
    out = workdir / f"out{size}"
    row: dict[str, float] = {"size": size, "sites": n_sites, "cells/site": n_cells}

    def timed(key, fn):
        t = time.perf_counter()
        res = fn()
        row[key] = (time.perf_counter() - t) / n_sites
        return res

    illum = timed("illum", lambda: run_illum(sheet, out / "illum.npz"))
    objects, _ = timed("segment", lambda: run_segment(sheet, out / "labels.zarr", out / "objects.parquet",
                                                      illum=illum))
    timed("crops_cell128", lambda: run_crops(sheet, out / "c128.zarr", out / "c128.parquet",
                                             preset_params("cell128"), objects=objects,
                                             labels=out / "labels.zarr", illum=illum))
    timed("crops_tile256", lambda: run_crops(sheet, out / "t256.zarr", out / "t256.parquet",
                                             preset_params("tile256"), illum=illum))
    for p in presets:
        timed(f"features_{p}", lambda p=p: run_features(sheet, out / "labels.zarr", out / f"cp_{p}.parquet",
                                                        None, feature_params(p), illum=illum))
    row["objects/site"] = len(objects) / n_sites
    if cp_python is not None:
        from morphobench.images.cp_backend import run_features_cp, run_illum_cp, run_segment_cp

        cp = out / "cp_backend"
        timed("cp_illum", lambda: run_illum_cp(sheet, cp / "illum.npz", python=cp_python))
        timed("cp_segment", lambda: run_segment_cp(sheet, cp / "labels.zarr", cp / "objects.parquet",
                                                   illum=cp / "illum.npz", python=cp_python))
        timed("cp_features", lambda: run_features_cp(sheet, cp / "labels.zarr", cp / "features.parquet",
                                                     illum=cp / "illum.npz", python=cp_python))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1080])
    ap.add_argument("--sites", type=int, nargs="+", default=None,
                    help="sites per size (default: 8 for ≤512 px, else 2)")
    ap.add_argument("--features", nargs="+", default=["fast"], help="feature presets to time")
    ap.add_argument("--backends", nargs="+", default=["inprocess", "cellprofiler"],
                    choices=["inprocess", "cellprofiler"])
    args = ap.parse_args(argv)
    cp_python = None
    if "cellprofiler" in args.backends:
        from morphobench.images.cp_backend import available, resolve_python

        ok, why = available()
        if ok:
            cp_python = str(resolve_python())
        else:
            print(f"cellprofiler backend not timed: {why}", file=sys.stderr)
    sites = args.sites or [8 if s <= 512 else 2 for s in args.sizes]
    if len(sites) == 1:
        sites = sites * len(args.sizes)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mb_bench_images_") as d:
        for size, n in zip(args.sizes, sites, strict=True):
            rows.append(bench(size, n, args.features, Path(d), cp_python))
            print(f"done {size}² ({n} sites)", file=sys.stderr)
    cols = list(rows[0])
    print("seconds per site (synthetic 5-channel 16-bit TIFF plates, 1 core); cp_* = cellprofiler backend")
    for r in rows:
        print(f"\n{r['size']}² × 5 channels, {r['sites']} sites, {r['cells/site']} cells/site")
        for c in cols[3:]:
            print(f"  {c:<16} {r[c]:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
