"""CLI for the figures (called by workflow/rules/figures.smk).

    python -m morphobench.figures recall-curves --table results/recall_curve.tsv --out PNG
    python -m morphobench.figures recall-by-method --table results/known_relationships.tsv --out PNG
    python -m morphobench.figures retrieval --table results/jump_retrieval.tsv --out PNG
    python -m morphobench.figures r2 --table results/cp_regression_summary.tsv --out PNG
    python -m morphobench.figures batch-correction --table results/batch_correction.tsv --out PNG
    python -m morphobench.figures teams-table2 --table results/teams_table2.tsv --out PNG   (also 3, 4, 5, 6)
    python -m morphobench.figures teams-umap --emb cell.parquet --wells W --split S --method M --out PNG
    python -m morphobench.figures campfire-probes|campfire-channel-sets --table results/campfire_probes.tsv --out PNG
    python -m morphobench.figures zprime --table results/zprime.tsv --out PNG
"""

from __future__ import annotations

import argparse
import sys

from morphobench.io import MorphobenchError, cli_exit, read_table, setup_logging

FIGURES = {
    "recall-curves": "recall_curves",
    "recall-by-method": "recall_by_method",
    "retrieval": "retrieval_bars",
    "r2": "r2_by_category",
    "batch-correction": "batch_correction_heatmap",
    # TEAMs (morphobench.figures.teams)
    "teams-table2": "morphobench.figures.teams:table2_bars",
    "teams-table3": "morphobench.figures.teams:table3_heatmap",
    "teams-table4": "morphobench.figures.teams:table4_bars",
    "teams-table5": "morphobench.figures.teams:table5_bars",
    "teams-table6": "morphobench.figures.teams:table6_bars",
    # Campfire (morphobench.figures.campfire_plots)
    "campfire-probes": "morphobench.figures.campfire_plots:probe_accuracy",
    "campfire-channel-sets": "morphobench.figures.campfire_plots:channel_set_accuracy",
    "zprime": "morphobench.figures.campfire_plots:zprime_bars",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphobench.figures", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("figure", choices=sorted([*FIGURES, "teams-umap"]))
    ap.add_argument("--table", help="results table (every figure but teams-umap)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--log")
    u = ap.add_argument_group("teams-umap (TEAMs Fig. 5)")
    u.add_argument("--emb", help="cell embeddings parquet")
    u.add_argument("--wells")
    u.add_argument("--split")
    u.add_argument("--method", default="")
    u.add_argument("--fold", type=int, default=0)
    u.add_argument("--max-cells", type=int, default=3000)
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--moa-col", default="Metadata_MoA")
    u.add_argument("--moa-sep", default="|")
    args = ap.parse_args(argv)
    setup_logging(args.log)

    def draw():
        if args.figure == "teams-umap":
            from morphobench.figures.teams import umap_stage

            if not (args.emb and args.wells and args.split):
                raise MorphobenchError("teams-umap needs --emb, --wells and --split")
            umap_stage(args.emb, args.wells, args.split, args.out, method=args.method, fold=args.fold,
                       max_cells=args.max_cells, seed=args.seed, moa_col=args.moa_col, sep=args.moa_sep)
            return
        if not args.table:
            raise MorphobenchError(f"{args.figure} needs --table")
        target = FIGURES[args.figure]
        if ":" in target:
            import importlib

            mod, _, fn = target.partition(":")
            func = getattr(importlib.import_module(mod), fn)
        else:
            from morphobench.figures import plots

            func = getattr(plots, target)
        func(read_table(args.table, what="results table"), args.out)

    return cli_exit(f"morphobench.figures {args.figure}", draw)


if __name__ == "__main__":
    sys.exit(main())
