"""CLI for the embedding stages (called by workflow/rules/embed.smk).

    python -m morphobench.embed random --wells W --sheet S --out OUT [--dim 1024 --seed 0]
    python -m morphobench.embed pixel-stats --sheet S --plate P --out OUT [--illum F]
    python -m morphobench.embed gather --parts A B … --wells W --sheet S --out OUT [--method mean]
"""

from __future__ import annotations

import argparse
import sys

from morphobench.io import cli_exit, setup_logging


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphobench.embed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", help="log file (also logged to stderr)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("random", help="fixed-seed random well embeddings")
    r.add_argument("--wells", required=True)
    r.add_argument("--sheet")
    r.add_argument("--out", required=True)
    r.add_argument("--dim", type=int, default=1024)
    r.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("pixel-stats", help="30 pixel statistics per site of one plate")
    p.add_argument("--sheet", required=True)
    p.add_argument("--plate", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--illum")
    g = sub.add_parser("gather", help="per-plate rows → well profiles")
    g.add_argument("--parts", nargs="+", required=True)
    g.add_argument("--wells", required=True)
    g.add_argument("--sheet")
    g.add_argument("--out", required=True)
    g.add_argument("--method", default="mean", choices=["mean", "median"])
    for s in (r, p, g):
        s.add_argument("--log", help="log file (also logged to stderr)")
    args = ap.parse_args(argv)
    setup_logging(args.log)
    from morphobench.embed import stages

    prog = f"morphobench.embed {args.cmd}"
    if args.cmd == "random":
        return cli_exit(prog, stages.random_method, args.wells, args.sheet, args.out, dim=args.dim, seed=args.seed)
    if args.cmd == "pixel-stats":
        return cli_exit(prog, stages.pixel_stats_plate, args.sheet, args.plate, args.out, illum_path=args.illum)
    return cli_exit(prog, stages.gather_wells, args.parts, args.wells, args.sheet, args.out, method=args.method)


if __name__ == "__main__":
    sys.exit(main())
