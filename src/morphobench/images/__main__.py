"""Per-plate image stages: ``python -m morphobench.images <stage> ...``.

Stages (one plate per call; every output is written atomically):

``illum``     --sheet S --plate P --out illum/P.npz [--png illum/P.png]
``segment``   --sheet S --plate P [--illum illum/P.npz] --out objects/P.parquet
              --labels labels/P.zarr [--qc qc/P.parquet]
``crops``     --sheet S --plate P [--illum ...] --kind cell128|cell112|tile256
              [--objects objects/P.parquet --labels labels/P.zarr] --out crops/KIND/P.zarr
              --index crops/KIND/P.parquet
``features``  --sheet S --plate P [--illum ...] --labels labels/P.zarr --out cp/P.objects.parquet
              [--wells-out cp/P.wells.parquet] [--plate-map wells.parquet]
``gather-crops``     --out crops/KIND/index.parquet INDEX [INDEX ...]
``translation-table`` --channels DNA ER ... --out table.tsv   (cp_measure → CellProfiler names)

Common options: ``--params JSON`` (a JSON object, or ``@file.json``) overriding the stage's
parameter dataclass (``IllumParams``, ``SegmentParams``, ``CropParams``, ``FeatureParams``; a
``"preset"`` key picks a named set first: ``default|jump`` for illum and segment,
``fast|full|minimal|jump`` for features), ``--log FILE``, ``--root DIR`` (base of relative
``PathName`` entries).

``illum``, ``segment`` and ``features`` take ``--backend inprocess|cellprofiler`` (and
``--python`` for the CellProfiler environment's interpreter): the same flags, the same
parameters and the same output formats for both backends.
"""

from __future__ import annotations

import argparse
import logging
import sys

from morphobench.io import MorphobenchError, cli_exit, load_json_arg, setup_logging, write_tsv

log = logging.getLogger("morphobench.images")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m morphobench.images", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)

    def common(p, plate=True):
        if plate:
            p.add_argument("--sheet", required=True, help="image sheet parquet")
            p.add_argument("--plate", required=True)
            p.add_argument("--root", default=None, help="base directory of relative PathName entries")
        p.add_argument("--params", default="{}", help="JSON object or @file.json")
        p.add_argument("--log", default=None)

    def backend(p):
        p.add_argument("--backend", default="inprocess", choices=["inprocess", "cellprofiler"],
                       help="inprocess (default) or cellprofiler (CellProfiler's library, own env)")
        p.add_argument("--python", default=None, help="cellprofiler: interpreter of its environment")

    p = sub.add_parser("illum", help="illumination functions of one plate")
    common(p)
    backend(p)
    p.add_argument("--out", required=True, help=".npz (one float32 function per channel)")
    p.add_argument("--png", default=None)

    p = sub.add_parser("segment", help="nuclei + cells of one plate")
    common(p)
    backend(p)
    p.add_argument("--illum", default=None)
    p.add_argument("--out", required=True, help="object table parquet")
    p.add_argument("--labels", required=True, help="label store (zarr v3 directory)")
    p.add_argument("--qc", default=None, help="per-site QC parquet")

    p = sub.add_parser("crops", help="cell crops or field tiles of one plate")
    common(p)
    p.add_argument("--illum", default=None)
    p.add_argument("--kind", required=True, help="cell128 | cell112 | tile256 (presets)")
    p.add_argument("--objects", default=None)
    p.add_argument("--labels", default=None)
    p.add_argument("--out", required=True, help="crop store (zarr v3 directory)")
    p.add_argument("--index", required=True, help="crop index parquet")

    p = sub.add_parser("features", help="CellProfiler features of one plate")
    common(p)
    backend(p)
    p.add_argument("--illum", default=None)
    p.add_argument("--labels", required=True)
    p.add_argument("--out", required=True, help="object-level parquet")
    p.add_argument("--wells-out", default=None, help="well-level parquet")
    p.add_argument("--plate-map", default=None, help="plate map parquet (merged into well profiles)")
    p.add_argument("--threads", type=int, default=1, help="sites measured in parallel (processes)")

    p = sub.add_parser("apply-illum", help="write illumination-corrected copies of one plate's images")
    common(p)
    p.add_argument("--illum", required=True)
    p.add_argument("--out-dir", required=True, help="folder of corrected 16-bit TIFFs")
    p.add_argument("--out-sheet", required=True, help="image sheet of the corrected copies")

    p = sub.add_parser("wells", help="object-level features of one plate → well-level profiles")
    common(p, plate=False)
    p.add_argument("--objects", required=True, help="object-level parquet")
    p.add_argument("--plate-map", default=None)
    p.add_argument("--how", default="median", choices=["median", "mean"])
    p.add_argument("--out", required=True)

    p = sub.add_parser("gather-crops", help="dataset-level crop index")
    common(p, plate=False)
    p.add_argument("--out", required=True)
    p.add_argument("inputs", nargs="+")

    p = sub.add_parser("translation-table", help="cp_measure → CellProfiler name table")
    common(p, plate=False)
    p.add_argument("--channels", nargs="+", default=["DNA", "ER", "RNA", "AGP", "Mito"])
    p.add_argument("--out", required=True)
    return ap


def run(args: argparse.Namespace) -> None:
    from morphobench.images.io import load_illum, load_sheet, params_from

    raw = load_json_arg(args.params, "--params")
    if args.stage == "illum":
        from morphobench.images.illum import illum_params, run_illum

        rows = load_sheet(args.sheet, args.plate)
        if args.backend == "cellprofiler":
            from morphobench.images.cp_backend import run_illum_cp

            funcs = run_illum_cp(rows, args.out, illum_params(raw), png=args.png, root=args.root,
                                 python=args.python)
        else:
            funcs = run_illum(rows, args.out, illum_params(raw), png=args.png, root=args.root)
        log.info("illum (%s): plate %s: %d sites, channels %s, median window %d px (downsampled), max %s",
                 args.backend, args.plate, len(rows), funcs.channels, funcs.meta["median_size_used"],
                 {ch: round(float(funcs[ch].max()), 3) for ch in funcs})
    elif args.stage == "segment":
        from morphobench.images.segment import run_segment, segment_params

        rows = load_sheet(args.sheet, args.plate)
        if args.backend == "cellprofiler":
            from morphobench.images.cp_backend import run_segment_cp

            objects, qc = run_segment_cp(rows, args.labels, args.out, segment_params(raw), illum=args.illum,
                                         qc_out=args.qc, root=args.root, python=args.python)
        else:
            objects, qc = run_segment(rows, args.labels, args.out, segment_params(raw),
                                      illum=load_illum(args.illum), qc_out=args.qc, root=args.root)
        log.info("segment: plate %s: %d sites, %d objects, %d blank sites, %d low-contrast sites",
                 args.plate, len(qc), len(objects), int(qc["QC_Blank"].sum()), int(qc["QC_LowContrast"].sum()))
    elif args.stage == "crops":
        from dataclasses import asdict

        from morphobench.images.crops import CropParams, preset_params, run_crops
        from morphobench.io import read_table

        rows = load_sheet(args.sheet, args.plate)
        params = params_from(CropParams, {**asdict(preset_params(args.kind)), **raw})
        objects = read_table(args.objects, what="object table") if args.objects else None
        if objects is not None:
            objects = objects[objects["Metadata_Plate"].astype(str) == str(args.plate)]
        idx = run_crops(rows, args.out, args.index, params, objects=objects, labels=args.labels,
                        illum=load_illum(args.illum), root=args.root)
        log.info("crops %s: plate %s: %d crops", args.kind, args.plate, len(idx))
    elif args.stage == "features":
        from morphobench.images.features import FeatureParams, feature_params, read_plate_map, run_features

        preset = raw.pop("preset", "full")
        names = set(FeatureParams.__dataclass_fields__)
        unknown = sorted(set(raw) - names)
        if unknown:
            raise MorphobenchError(f"FeatureParams: unknown parameter(s) {unknown}; allowed {sorted(names)}")
        params = feature_params(preset, **raw)
        rows = load_sheet(args.sheet, args.plate)
        if args.backend == "cellprofiler":
            from morphobench.images.cp_backend import run_features_cp
            from morphobench.images.features import object_wells
            from morphobench.io import write_parquet

            objects = run_features_cp(rows, args.labels, args.out, illum=args.illum, root=args.root,
                                      python=args.python, params=params, workers=args.threads)
            if args.wells_out:
                write_parquet(object_wells(objects, params.aggregate,
                                           plate_map=read_plate_map(args.plate_map)), args.wells_out)
        else:
            objects, wells = run_features(rows, args.labels, args.out, args.wells_out, params,
                                          illum=load_illum(args.illum), plate_map=read_plate_map(args.plate_map),
                                          root=args.root, workers=args.threads)
        log.info("features: plate %s: %d objects × %d columns", args.plate, len(objects), objects.shape[1])
    elif args.stage == "apply-illum":
        from morphobench.images.illum import materialize_plate

        rows = load_sheet(args.sheet, args.plate)
        sheet = materialize_plate(rows, load_illum(args.illum), args.out_dir, args.out_sheet, root=args.root)
        log.info("apply-illum: plate %s: %d sites written to %s", args.plate, len(sheet), args.out_dir)
    elif args.stage == "wells":
        from morphobench.images.features import object_wells, read_plate_map
        from morphobench.io import read_table, write_parquet

        objects = read_table(args.objects, what="object-level features")
        wells = object_wells(objects, args.how, plate_map=read_plate_map(args.plate_map))
        write_parquet(wells, args.out)
        log.info("wells: %d wells from %d objects", len(wells), len(objects))
    elif args.stage == "gather-crops":
        from morphobench.images.crops import gather_crop_index

        idx = gather_crop_index(args.inputs, args.out)
        log.info("gather-crops: %d crops from %d plates", len(idx), len(args.inputs))
    elif args.stage == "translation-table":
        from morphobench.images.features import cp_measure_names, translation_table

        tab = translation_table(cp_measure_names(args.channels), channels=args.channels)
        write_tsv(tab, args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log)
    return cli_exit(f"morphobench.images {args.stage}", run, args, error_code=2)


if __name__ == "__main__":
    sys.exit(main())
