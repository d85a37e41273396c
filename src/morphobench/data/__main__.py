"""``python -m morphobench.data sheet --loader L --params JSON --out-sheet S --out-wells W``.

Builds the image sheet and plate map of a real screen layout (see
:mod:`morphobench.data.loaders`). ``--params`` is a JSON object with the loader's keys, or
``@FILE`` naming a JSON/YAML file holding it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from morphobench.io import MorphobenchError, cli_exit, setup_logging

log = logging.getLogger("morphobench.data")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m morphobench.data",
                                description="Image sheet + plate map from real screen layouts.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheet", help="build results/<dataset>/{images,wells}.parquet")
    s.add_argument("--loader", required=True, help="load_data | cpjump1 | pattern | bbbc022")
    s.add_argument("--params", default="{}",
                   help="JSON object of the loader's keys, or @FILE (JSON or YAML)")
    s.add_argument("--out-sheet", required=True, type=Path, help="image sheet parquet")
    s.add_argument("--out-wells", default=None, type=Path, help="plate map parquet")
    s.add_argument("--dataset", default=None, help="dataset name (default Metadata_Source)")
    s.add_argument("--resources-dir", default="resources", type=Path,
                   help="resources directory (cpjump1 index; default: resources)")
    s.add_argument("--log", default=None, help="also log to this file")
    k = sub.add_parser("keys", help="list every loader's config keys (type, default, meaning)")
    k.add_argument("--log", default=None)
    return p


def _params(text: str) -> dict:
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise MorphobenchError(f"--params file not found: {path}")
        raw = path.read_text()
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            obj = yaml.safe_load(raw)
        else:
            obj = json.loads(raw)
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise MorphobenchError(f"--params is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise MorphobenchError("--params must be a JSON object (mapping of loader keys)")
    return obj


def _run(args: argparse.Namespace) -> None:
    from morphobench.data import loaders

    t0 = time.perf_counter()
    if args.cmd == "keys":
        for row in loaders.iter_loader_keys():
            print(*map(str, row), sep="\t")
        for k, (t, d, m) in loaders.PLATE_MAP_KEYS.items():
            print("plate_map", k, t, d, m, sep="\t")
        return
    params = _params(args.params)
    params.pop("loader", None)
    loaders.build_sheet({"loader": args.loader, **params}, args.out_sheet, args.out_wells,
                        dataset=args.dataset, resources_dir=args.resources_dir)
    log.info("%s done in %.1f s", args.cmd, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log)
    return cli_exit(f"morphobench.data {args.cmd}", _run, args)


if __name__ == "__main__":
    sys.exit(main())
