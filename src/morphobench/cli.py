"""``morphobench`` console script: the stage CLIs under one name, and the method registry.

    morphobench methods [--family F] [--tsv]       registered methods (family, input, level, trains, defaults)
    morphobench models                             registered model constructors (imports torch)
    morphobench <stage> …                          same as ``python -m morphobench.<stage> …`` for
                                                   data, simulate, resources, images, embed, training,
                                                   correct, evaluate, figures
"""

from __future__ import annotations

import importlib
import sys

STAGES = ("data", "simulate", "resources", "images", "embed", "training", "correct", "evaluate", "figures")


def list_methods(argv: list[str]) -> int:
    import argparse

    from morphobench import methods

    ap = argparse.ArgumentParser(prog="morphobench methods")
    ap.add_argument("--family")
    ap.add_argument("--tsv", action="store_true", help="tab-separated, one method per line")
    args = ap.parse_args(argv)
    rows = [m for m in methods.REGISTRY.values() if args.family in (None, m.family)]
    sep = "\t" if args.tsv else "  "
    header = ["name", "family", "input", "level", "trains", "paper", "description"]
    print(sep.join(header))
    for m in rows:
        print(sep.join([m.name, m.family, m.input, m.level, "yes" if m.trains else "no", m.paper, m.description]))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "methods":
        return list_methods(rest)
    if cmd == "models":
        from morphobench.models import list_models

        print("\n".join(list_models()))
        return 0
    if cmd not in STAGES:
        print(f"morphobench: unknown command {cmd!r}; choose from methods, models, {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    mod = importlib.import_module(f"morphobench.{cmd}.__main__")
    return int(mod.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
