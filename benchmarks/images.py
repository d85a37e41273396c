"""Seconds per site of the image stages, in-process vs the CellProfiler backend, side by side.

Synthetic 16-bit TIFF plates (``morphobench.images.synthetic``; 5 channels; ~30 cells per 256²
field, the same cell density at 1080², i.e. ~530 cells per JUMP-sized site), read from disk as in
the workflow, ONE process on ONE core for both backends (the CellProfiler backend's worker is a
single process too; ``OMP/MKL/OPENBLAS_NUM_THREADS=1`` are set before numpy loads).

    python benchmarks/images.py                      # 1080², 2 sites, jump preset, both backends
    python benchmarks/images.py --sizes 256 1080 --sites 8 2 --preset jump fast
    python benchmarks/images.py --backends inprocess

For each image size and preset it prints, in seconds per site:

- illumination (averaging + function, amortised over the plate), segmentation and crops of the
  in-process backend, and illumination and segmentation of the CellProfiler backend, both with
  the preset's illum/segment settings when the preset has them (``jump``), else the defaults;
- features at EQUAL features (the same FeatureParams, the same label image): the total wall time
  of each backend (the CellProfiler one includes starting its worker), and the time spent in each
  feature group (AreaShape, Intensity, Texture, Granularity, RadialDistribution, Correlation,
  Neighbors) measured inside each backend, with the ratio in-process / CellProfiler.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("MORPHOBENCH_NO_PROGRESS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

GROUPS = ("AreaShape", "Intensity", "Texture", "Granularity", "RadialDistribution", "Correlation", "Neighbors")
#: illum/segment presets that go with a feature preset
STAGE_PRESETS = {"jump": "jump"}


def bench(size: int, n_sites: int, presets: list[str], workdir: Path, cp_python: str | None = None,
          crops: bool = True) -> list[dict]:
    from morphobench.images import features as F
    from morphobench.images.crops import preset_params, run_crops
    from morphobench.images.illum import illum_params, run_illum
    from morphobench.images.segment import run_segment, segment_params
    from morphobench.images.synthetic import write_synthetic_plate

    wells = [f"A{i:02d}" for i in range(1, n_sites + 1)]
    n_cells = int(round(30 * (size / 256) ** 2))
    sheet, _ = write_synthetic_plate(workdir / f"img{size}", wells=wells, sites=1, size=size, n_cells=n_cells,
                                     seed=size)
    rows = []
    for preset in presets:
        out = workdir / f"out{size}_{preset}"
        stage = {"preset": STAGE_PRESETS[preset]} if preset in STAGE_PRESETS else {}
        row: dict = {"size": size, "sites": n_sites, "cells/site": n_cells, "preset": preset}

        def timed(key, fn, row=row):
            t = time.perf_counter()
            res = fn()
            row[key] = (time.perf_counter() - t) / n_sites
            return res

        ip, sp = illum_params(stage), segment_params(stage)
        illum = timed("illum", lambda: run_illum(sheet, out / "illum.npz", ip))
        objects, _ = timed("segment", lambda: run_segment(sheet, out / "labels.zarr", out / "objects.parquet",
                                                          sp, illum=illum))
        row["objects/site"] = len(objects) / n_sites
        if crops:
            timed("crops_cell128", lambda: run_crops(sheet, out / "c128.zarr", out / "c128.parquet",
                                                     preset_params("cell128"), objects=objects,
                                                     labels=out / "labels.zarr", illum=illum))
            timed("crops_tile256", lambda: run_crops(sheet, out / "t256.zarr", out / "t256.parquet",
                                                     preset_params("tile256"), illum=illum))
        fp = F.feature_params(preset)
        F.GROUP_SECONDS.clear()
        feats, _ = timed("features", lambda: F.run_features(sheet, out / "labels.zarr", out / "cp_in.parquet",
                                                           None, fp, illum=illum))
        row["features/site"] = feats.shape[1]
        row["groups"] = {g: F.GROUP_SECONDS.get(g, 0.0) / n_sites for g in GROUPS if g in fp.groups}
        if cp_python is not None:
            from morphobench.images.cp_backend import run_features_cp, run_illum_cp, run_segment_cp

            cp = out / "cp_backend"
            timed("cp_illum", lambda: run_illum_cp(sheet, cp / "illum.npz", ip, python=cp_python))
            timed("cp_segment", lambda: run_segment_cp(sheet, cp / "labels.zarr", cp / "objects.parquet", sp,
                                                       illum=cp / "illum.npz", python=cp_python))
            # equal features: the same FeatureParams on the same (in-process) labels and illumination
            df = timed("cp_features", lambda: run_features_cp(sheet, out / "labels.zarr", cp / "features.parquet",
                                                              illum=out / "illum.npz", python=cp_python, params=fp))
            row["cp_features/site"] = df.shape[1]
            secs = df.attrs.get("seconds_by_group", {})
            row["cp_groups"] = {g: secs.get(g, 0.0) / n_sites for g in row["groups"]}
        rows.append(row)
    return rows


def report(rows: list[dict]) -> str:
    lines = ["seconds per site (synthetic 5-channel 16-bit TIFF plates, one core per backend)"]
    for r in rows:
        lines.append(f"\n{r['size']}² × 5 channels, {r['sites']} sites, {r['cells/site']} cells/site, "
                     f"{r['objects/site']:.0f} objects/site, preset {r['preset']}")
        for key in ("illum", "segment", "crops_cell128", "crops_tile256", "cp_illum", "cp_segment"):
            if key in r:
                lines.append(f"  {key:<16} {r[key]:>9.2f}")
        has_cp = "cp_features" in r
        lines.append(f"  features ({r['features/site']} columns"
                     + (f" in-process, {r['cp_features/site']} CellProfiler)" if has_cp else ")"))
        lines.append(f"    {'group':<20} {'in-process':>11}" + (f" {'cellprofiler':>13} {'ratio':>7}" if has_cp else ""))
        for g, s in r["groups"].items():
            if has_cp:
                c = r["cp_groups"].get(g, float("nan"))
                lines.append(f"    {g:<20} {s:>11.2f} {c:>13.2f} {s / c if c else float('nan'):>7.2f}")
            else:
                lines.append(f"    {g:<20} {s:>11.2f}")
        if has_cp:
            lines.append(f"    {'total (wall)':<20} {r['features']:>11.2f} {r['cp_features']:>13.2f} "
                         f"{r['features'] / r['cp_features']:>7.2f}")
        else:
            lines.append(f"    {'total (wall)':<20} {r['features']:>11.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1080])
    ap.add_argument("--sites", type=int, nargs="+", default=None,
                    help="sites per size (default: 8 for ≤512 px, else 2)")
    ap.add_argument("--preset", nargs="+", default=["jump"], help="feature presets (jump, fast, full, minimal)")
    ap.add_argument("--backends", nargs="+", default=["inprocess", "cellprofiler"],
                    choices=["inprocess", "cellprofiler"])
    ap.add_argument("--no-crops", action="store_true", help="skip the crop stages")
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
            rows += bench(size, n, args.preset, Path(d), cp_python, crops=not args.no_crops)
            print(f"done {size}² ({n} sites)", file=sys.stderr)
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
