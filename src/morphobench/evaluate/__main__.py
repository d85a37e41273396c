"""CLI for the evaluation stages (called by workflow/rules/evaluate.smk).

    python -m morphobench.evaluate known-relationships --pert P --annotations JSON --key JSON \
        --out-known K --out-curve C --out-sets S [--gene-sets JSON] [--seed 0]
    python -m morphobench.evaluate retrieval --well W --pert P --key JSON --tasks T … \
        --out OUT --detail-dir D [--null-size 10000 --seed 0 --threshold 0.05]
    python -m morphobench.evaluate cp-split --cp-well W --out OUT [--heldout-fraction 0.25 --seed 0]
    python -m morphobench.evaluate cp-regression --emb-well E --cp-well C --split S --key JSON --out OUT
    python -m morphobench.evaluate gather --parts A B … --out OUT [--config-hash H]
    python -m morphobench.evaluate cp-summary --table T --out OUT [--config-hash H]
    python -m morphobench.evaluate batch-correction --known K --method M --out OUT [--config-hash H]
    python -m morphobench.evaluate campfire-cells|channel-sets|probes|probes-summary|zprime …
        (Campfire probes, channel sets and Z′: morphobench.evaluate.campfire_cli)
"""

from __future__ import annotations

import argparse
import json
import sys

from morphobench.io import cli_exit, load_json_arg, setup_logging


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m morphobench.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("known-relationships")
    k.add_argument("--pert", required=True)
    k.add_argument("--annotations", required=True, help='JSON {"CORUM": "path.csv", …}')
    k.add_argument("--gene-sets", default="{}", help='JSON {"name": [genes] | "all"}')
    k.add_argument("--key", required=True)
    k.add_argument("--out-known", required=True)
    k.add_argument("--out-curve", required=True)
    k.add_argument("--out-sets", required=True)
    k.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("retrieval")
    r.add_argument("--well", required=True)
    r.add_argument("--pert", required=True)
    r.add_argument("--key", required=True)
    r.add_argument("--tasks", nargs="+", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--detail-dir", required=True)
    r.add_argument("--null-size", type=int, default=10000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threshold", type=float, default=0.05)
    r.add_argument("--on-missing-negcon", default="error", choices=["error", "skip"])
    s = sub.add_parser("cp-split")
    s.add_argument("--cp-well", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--heldout-fraction", type=float, default=0.25)
    s.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("cp-regression")
    c.add_argument("--emb-well", required=True)
    c.add_argument("--cp-well", required=True)
    c.add_argument("--split", required=True)
    c.add_argument("--key", required=True)
    c.add_argument("--out", required=True)
    g = sub.add_parser("gather")
    g.add_argument("--parts", nargs="+", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--config-hash", help="hash of the run's config (provenance sidecar)")
    g.add_argument("--methods", default="{}", help="JSON: what each method is (provenance sidecar)")
    m = sub.add_parser("cp-summary")
    m.add_argument("--table", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--config-hash")
    m.add_argument("--methods", default="{}")
    b = sub.add_parser("batch-correction")
    b.add_argument("--known", required=True)
    b.add_argument("--method", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--config-hash")
    b.add_argument("--methods", default="{}")
    from morphobench.evaluate import campfire_cli

    for p in (k, r, s, c, g, m, b, *campfire_cli.add_parsers(sub)):
        p.add_argument("--log")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log)
    from morphobench.evaluate import stages

    return cli_exit(f"morphobench.evaluate {args.cmd}", _dispatch, args, stages)


def _dispatch(args, stages) -> None:
    from morphobench.evaluate import campfire_cli

    if args.cmd in campfire_cli.COMMANDS:
        campfire_cli.dispatch(args)
    elif args.cmd == "known-relationships":
        stages.known_relationships(args.pert, json.loads(args.annotations), json.loads(args.key),
                                   args.out_known, args.out_curve, args.out_sets,
                                   gene_sets=json.loads(args.gene_sets), seed=args.seed)
    elif args.cmd == "retrieval":
        stages.retrieval_stage(args.well, args.pert, json.loads(args.key), args.tasks, args.out,
                               args.detail_dir, null_size=args.null_size, seed=args.seed,
                               threshold=args.threshold, on_missing_negcon=args.on_missing_negcon)
    elif args.cmd == "cp-split":
        stages.cp_split_stage(args.cp_well, args.out, args.heldout_fraction, args.seed)
    elif args.cmd == "cp-regression":
        stages.cp_regression_stage(args.emb_well, args.cp_well, args.split, json.loads(args.key), args.out)
    elif args.cmd == "gather":
        stages.gather(args.parts, args.out, args.config_hash, methods=load_json_arg(args.methods, "--methods"))
    elif args.cmd == "cp-summary":
        stages.cp_regression_summary(args.table, args.out, args.config_hash,
                                     methods=load_json_arg(args.methods, "--methods"))
    else:
        stages.batch_correction_table(args.known, args.method, args.out, args.config_hash,
                                      methods=load_json_arg(args.methods, "--methods"))


if __name__ == "__main__":
    sys.exit(main())
