"""CLI for the training stages (called by workflow/rules/train.smk).

    python -m morphobench.training split --kind treatment_folds --wells W --out splits/K.tsv [--params JSON]
    python -m morphobench.training train --spec JSON --crops INDEX --split S --wells W \
        --out-model models/{method}/model.pt [--fold 0] [--threads N] [--no-resume]
"""

from __future__ import annotations

import argparse
import sys

from morphobench.io import cli_exit, load_json_arg, setup_logging


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphobench.training", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="write a split table")
    s.add_argument("--kind", required=True)
    s.add_argument("--wells", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--params", default="{}")
    t = sub.add_parser("train", help="train one method")
    t.add_argument("--spec", required=True)
    t.add_argument("--crops", required=True)
    t.add_argument("--split", required=True)
    t.add_argument("--wells", required=True)
    t.add_argument("--out-model", required=True)
    t.add_argument("--fold", type=int, default=0)
    t.add_argument("--threads", type=int)
    t.add_argument("--no-resume", action="store_true")
    for p in (s, t):
        p.add_argument("--log")
    args = ap.parse_args(argv)
    setup_logging(args.log)
    return cli_exit(f"morphobench.training {args.cmd}", _run, args)


def _run(args) -> None:
    if args.cmd == "split":
        from morphobench.training.splits import make_split

        make_split(args.kind, args.wells, args.out, **load_json_arg(args.params, "--params"))
        return
    import torch

    from morphobench.training.stage import train_method

    if args.threads:
        torch.set_num_threads(args.threads)
    train_method(load_json_arg(args.spec), args.crops, args.split, args.wells, args.out_model,
                 fold=args.fold, resume=not args.no_resume)


if __name__ == "__main__":
    sys.exit(main())
