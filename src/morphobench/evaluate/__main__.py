"""CLI for the evaluation stages (called by workflow/rules/evaluate.smk).

    python -m morphobench.evaluate known-relationships --pert P --annotations JSON --key JSON \
        --out-known K --out-curve C --out-sets S [--gene-sets JSON] [--seed 0]
    python -m morphobench.evaluate retrieval --well W --pert P --key JSON --tasks T … \
        --out OUT --detail-dir D [--null-size 10000 --seed 0 --threshold 0.05 \
        --negatives controls|other_targets --condition COL … --cross-condition COL …]
    python -m morphobench.evaluate cp-split --cp-well W --out OUT [--holdout experiment|plate \
        --heldout-fraction 0.25 --seed 0]
    python -m morphobench.evaluate cp-regression --emb-well E --cp-well C --split S --key JSON --out OUT \
        [--model ols|ridge] [--categories AreaShape Texture …]
    python -m morphobench.evaluate gather --parts A B … --out OUT [--config-hash H]
    python -m morphobench.evaluate cp-summary --table T --out OUT [--config-hash H]
    python -m morphobench.evaluate batch-correction --known K --method M --out OUT \
        [--corrections C …] [--skipped JSON] [--config-hash H]
    python -m morphobench.evaluate moa-triplets (--emb CELLS | --random-cells INDEX) --wells W --split S \
        --fold F --key JSON --out OUT [--modes mean random oracle --model model.pt] [--by-group COL] …
    python -m morphobench.evaluate teams-table --table teams_table2 --source results/moa_triplets.tsv --out OUT
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
    k.add_argument("--gene-sets", default="{}", help='JSON {"name": [genes] | "path/to/genes.txt" | "all"}')
    k.add_argument("--gene-set-null", default="unannotated", choices=["unannotated", "all"],
                   help="null of the recall at 5 %% FPR: the set's non-annotated pairs (default) or all its pairs")
    k.add_argument("--key", required=True)
    k.add_argument("--out-known", required=True)
    k.add_argument("--out-curve", required=True)
    k.add_argument("--out-sets", required=True)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--aggregation", default="spherical_mean", choices=["spherical_mean", "mean", "median"],
                   help="guides → gene when a gene has several CRISPR perturbations")
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
    r.add_argument("--negatives", default="controls", choices=["controls", "other_targets"],
                   help="sibling tasks: rank against negative-control wells (MAE-CVPR) or other targets (CPJUMP1)")
    r.add_argument("--condition", nargs="*", default=["Metadata_CellType", "Metadata_Modality", "Metadata_Timepoint"],
                   help="condition columns (those present are used); tasks run per condition")
    r.add_argument("--cross-condition", nargs="*", default=["Metadata_CellType"],
                   help="condition columns of the cross-modality sibling tasks")
    s = sub.add_parser("cp-split")
    s.add_argument("--cp-well", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--heldout-fraction", type=float, default=0.25)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--holdout", default="experiment", choices=["experiment", "plate"])
    c = sub.add_parser("cp-regression")
    c.add_argument("--emb-well", required=True)
    c.add_argument("--cp-well", required=True)
    c.add_argument("--split", required=True)
    c.add_argument("--key", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--model", default="ols", choices=["ols", "ridge"])
    c.add_argument("--categories", nargs="+", help="CellProfiler categories of the targets (default: the paper's five)")
    c.add_argument("--target-normalization", default="standardize_plate",
                   choices=["standardize_plate", "center_plate", "none"],
                   help="targets normalized per plate on their negative controls (default) or raw")
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
    b.add_argument("--corrections", nargs="+", help="rows to list (default: every correction in the table)")
    b.add_argument("--skipped", default="{}", help='JSON {dataset: {correction: reason}} recorded as skipped rows')
    b.add_argument("--out", required=True)
    b.add_argument("--config-hash")
    b.add_argument("--methods", default="{}")
    t = sub.add_parser("moa-triplets", help="TEAMs MoA triplets of one method's cell embeddings")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--emb", help="cell embeddings parquet")
    src.add_argument("--random-cells", help="crop index: score fixed-seed random vectors per cell (the floor)")
    t.add_argument("--random-dim", type=int, default=1024)
    t.add_argument("--wells", required=True)
    t.add_argument("--split", required=True)
    t.add_argument("--fold", type=int, default=0)
    t.add_argument("--key", required=True, help="JSON of the key columns (dataset, method, …)")
    t.add_argument("--out", required=True)
    t.add_argument("--moa-col", default="Metadata_MoA")
    t.add_argument("--moa-sep", default="|")
    t.add_argument("--tasks", nargs="+", default=None)
    t.add_argument("--modes", nargs="+", default=["mean"])
    t.add_argument("--model", help="model.pt of a method with experts (expert modes)")
    t.add_argument("--by-group", help="also score each value of this Metadata_ column on its own")
    t.add_argument("--n-treatment-triplets", type=int, default=1000)
    t.add_argument("--n-boot", type=int, default=1000)
    t.add_argument("--seed", type=int, default=0)
    tt = sub.add_parser("teams-table", help="a TEAMs paper table from a gathered MoA-triplet table")
    tt.add_argument("--table", required=True)
    tt.add_argument("--source", required=True)
    tt.add_argument("--out", required=True)
    tt.add_argument("--config-hash")
    tt.add_argument("--methods", default="{}")
    from morphobench.evaluate import campfire_cli

    for p in (k, r, s, c, g, m, b, t, tt, *campfire_cli.add_parsers(sub)):
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
                                   gene_sets=json.loads(args.gene_sets), gene_set_null=args.gene_set_null,
                                   seed=args.seed, aggregation=args.aggregation)
    elif args.cmd == "retrieval":
        stages.retrieval_stage(args.well, args.pert, json.loads(args.key), args.tasks, args.out,
                               args.detail_dir, null_size=args.null_size, seed=args.seed,
                               threshold=args.threshold, on_missing_negcon=args.on_missing_negcon,
                               negatives=args.negatives, condition=args.condition,
                               cross_condition=args.cross_condition)
    elif args.cmd == "cp-split":
        stages.cp_split_stage(args.cp_well, args.out, args.heldout_fraction, args.seed, args.holdout)
    elif args.cmd == "cp-regression":
        stages.cp_regression_stage(args.emb_well, args.cp_well, args.split, json.loads(args.key), args.out,
                                   model=args.model, categories=args.categories,
                                   target_normalization=args.target_normalization)
    elif args.cmd == "gather":
        stages.gather(args.parts, args.out, args.config_hash, methods=load_json_arg(args.methods, "--methods"))
    elif args.cmd == "cp-summary":
        stages.cp_regression_summary(args.table, args.out, args.config_hash,
                                     methods=load_json_arg(args.methods, "--methods"))
    elif args.cmd == "moa-triplets":
        _moa_triplets(args)
    elif args.cmd == "teams-table":
        from morphobench.evaluate.teams_tables import write_table

        write_table(args.table, args.source, args.out, args.config_hash,
                    methods=load_json_arg(args.methods, "--methods"))
    else:
        stages.batch_correction_table(args.known, args.method, args.out, corrections=args.corrections,
                                      skipped=json.loads(args.skipped), config_digest=args.config_hash,
                                      methods=load_json_arg(args.methods, "--methods"))


def _moa_triplets(args) -> None:
    from morphobench.evaluate import triplets

    experts = None
    if args.model:
        from morphobench.training.stage import read_payload

        vocab = read_payload(args.model)["vocab"]
        experts = {"groups": vocab["groups"], "group_col": vocab["group_col"]}
    emb = args.emb if args.emb else triplets.random_cells(args.random_cells, args.random_dim, args.seed)
    triplets.triplet_stage(emb, args.wells, args.split, load_json_arg(args.key, "--key"), args.out, fold=args.fold,
                           moa_col=args.moa_col, sep=args.moa_sep, n_treatment_triplets=args.n_treatment_triplets,
                           seed=args.seed, n_boot=args.n_boot, tasks=args.tasks or triplets.TASKS, modes=args.modes,
                           experts=experts, by_group=args.by_group)


if __name__ == "__main__":
    sys.exit(main())
