"""``python -m morphobench.simulate {design,plate,gather,example-sites,run}`` (see the package doc)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from morphobench.io import cli_exit, setup_logging

log = logging.getLogger("morphobench.simulate")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m morphobench.simulate", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("design", "run"):
        s = sub.add_parser(name, help="design tables + plate map" if name == "design"
                           else "design + all plates + sheet in one process")
        s.add_argument("--params", default="{}", help="JSON of the dataset's `simulate` section")
        s.add_argument("--resources-dir", required=True)
        s.add_argument("--dataset-dir", required=True, help="e.g. results/simulated")
        s.add_argument("--log")
    s = sub.add_parser("plate", help="render one plate")
    s.add_argument("--dataset-dir", required=True)
    s.add_argument("--plate", required=True)
    s.add_argument("--images-dir", required=True)
    s.add_argument("--sheet", required=True)
    s.add_argument("--masks", required=True)
    s.add_argument("--illumination", required=True)
    s.add_argument("--cells", required=True)
    s.add_argument("--log")
    s = sub.add_parser("gather", help="concatenate plate sheets into the image sheet")
    s.add_argument("--out", required=True)
    s.add_argument("sheets", nargs="+")
    s.add_argument("--log")
    s = sub.add_parser("example-sites", help="montage PNG of a few sites per channel")
    s.add_argument("--dataset-dir", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--log")
    return ap


def _run(args: argparse.Namespace) -> None:
    if args.cmd in ("design", "run"):
        section = json.loads(args.params)
        if args.cmd == "run":
            from morphobench.simulate import simulate_screen

            simulate_screen(section, args.dataset_dir, resources_dir=args.resources_dir)
        else:
            from morphobench.simulate.design import load_resource_tables, make_design, write_design
            from morphobench.simulate.params import resolve_params

            params = resolve_params(section)
            design = make_design(params, *load_resource_tables(args.resources_dir))
            write_design(design, args.dataset_dir)
            log.info("design: %d perturbations, %d wells on %d plates, %d replicates per treatment",
                     len(design.perturbations), len(design.wells), params.n_plates, params.replicates)
    elif args.cmd == "plate":
        from morphobench.simulate.plate import simulate_plate

        simulate_plate(args.dataset_dir, args.plate, images_dir=args.images_dir,
                       sheet_path=args.sheet, masks_path=args.masks, illum_path=args.illumination,
                       cells_path=args.cells)
    elif args.cmd == "gather":
        from morphobench.simulate.plate import gather_sheets

        gather_sheets(args.sheets, args.out)
    elif args.cmd == "example-sites":
        from morphobench.simulate.example import example_sites_figure

        example_sites_figure(args.dataset_dir, args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log)
    return cli_exit(f"morphobench.simulate {args.cmd}", _run, args)


if __name__ == "__main__":
    sys.exit(main())
