"""Parity of the in-process and CellProfiler backends (README "Parity with CellProfiler").

Runs :func:`morphobench.images.parity.run_parity` — illumination, segmentation and features of
both backends with the same settings (default: the ``jump`` presets), features on the SAME label
image — on

- ``real``: real images shipped by pinned packages (StarDist's ``img2d``, mahotas' nuclei,
  scikit-image's IHC image; 6 sites of 512², :func:`~morphobench.images.parity.real_site_images`);
- ``simulated``: synthetic 5-channel sites (touching cells, illumination field, puncta).

and prints the tables the README shows: per feature group the number of shared features, the
median and minimum Pearson r across objects and the number of equal features; per site and
object the counts and the median IoU of matched objects; the seconds of each step.

    python benchmarks/parity.py                       # real + simulated (≈ 10 min on 2 cores)
    python benchmarks/parity.py --data real --markdown
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MORPHOBENCH_NO_PROGRESS", "1")


def _groups_table(groups, title: str) -> str:
    lines = [f"{title}", "", "| group | shared features | median r | min r | equal (1e-5) |", "|---|---|---|---|---|"]
    for r in groups.itertuples():
        lines.append(f"| {r.group} | {r.n_features} | {r.median_r:.4f} | {r.min_r:.3f} | {int(r.n_equal)} |")
    return "\n".join(lines)


def _seg_table(seg, title: str) -> str:
    import numpy as np

    lines = [f"{title}", "", "| object | sites | objects in-process / CellProfiler | worst count difference | "
             "median matched IoU (worst site) |", "|---|---|---|---|---|"]
    for obj, g in seg.groupby("object", sort=False):
        iou = g.loc[g["n_b"] > 0, "median_iou"]
        lines.append(f"| {obj} | {len(g)} | {int(g['n_a'].sum())} / {int(g['n_b'].sum())} | "
                     f"{100 * g['count_diff'].max():.1f} % | {float(np.min(iou)) if len(iou) else float('nan'):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["real", "simulated"], choices=["real", "simulated"])
    ap.add_argument("--resources", default="resources", help="folder with stardist/img2d.tif")
    ap.add_argument("--sim-sites", type=int, default=2)
    ap.add_argument("--sim-size", type=int, default=512)
    ap.add_argument("--markdown", action="store_true", help="print the README tables only")
    args = ap.parse_args(argv)

    from morphobench.images import parity as P
    from morphobench.images.cp_backend import available, resolve_python

    ok, why = available()
    if not ok:
        print(f"the CellProfiler environment is needed: {why}", file=sys.stderr)
        return 2
    py = str(resolve_python())
    out = []
    with tempfile.TemporaryDirectory(prefix="mb_parity_") as d:
        for data in args.data:
            if data == "real":
                rows = P.write_sites(Path(d) / "real" / "img", P.real_site_images(args.resources))
            else:
                rows = P.simulated_sites(Path(d) / "sim" / "img", args.sim_sites, args.sim_size)
            res = P.run_parity(rows, Path(d) / data / "work", python=py)
            out.append((data, res))
            print(f"done: {data} ({len(rows)} sites, {res['n_objects']} objects)", file=sys.stderr)
    for data, res in out:
        print()
        print(_groups_table(res["groups"], f"**Features on the same labels, {data} images** "
                                           f"({res['n_objects']} objects, jump preset)"))
        if not args.markdown:
            f = res["features"].copy()
            f["compartment"] = f["feature"].str.split("_").str[0]
            by = f.groupby(["group", "compartment"])["r"].agg(["median", "min", "size"])
            print("\nper compartment:\n" + by.round(4).to_string())
        print()
        print(_seg_table(res["segmentation"], f"**Segmentation, {data} images** (jump preset)"))
        print()
        illum = ", ".join(f"{ch} {v:.1e}" for ch, v in res["illum"].items())
        print(f"Illumination functions (jump preset), largest relative difference: {illum}")
        if not args.markdown:
            print("\nseconds (whole plate):")
            for step, by in res["seconds"].items():
                ratio = by["inprocess"] / by["cellprofiler"]
                print(f"  {step:<9} in-process {by['inprocess']:7.2f}  cellprofiler {by['cellprofiler']:7.2f}"
                      f"  ratio {ratio:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
