"""CLI for the figures (called by workflow/rules/figures.smk).

    python -m morphobench.figures recall-curves --table results/recall_curve.tsv --out PNG
    python -m morphobench.figures recall-by-method --table results/known_relationships.tsv --out PNG
    python -m morphobench.figures retrieval --table results/jump_retrieval.tsv --out PNG
    python -m morphobench.figures r2 --table results/cp_regression_summary.tsv --out PNG
    python -m morphobench.figures batch-correction --table results/batch_correction.tsv --out PNG
    python -m morphobench.figures campfire-probes|campfire-channel-sets --table results/campfire_probes.tsv --out PNG
    python -m morphobench.figures zprime --table results/zprime.tsv --out PNG
"""

from __future__ import annotations

import argparse
import sys

from morphobench.io import cli_exit, read_table, setup_logging

FIGURES = {
    "recall-curves": "recall_curves",
    "recall-by-method": "recall_by_method",
    "retrieval": "retrieval_bars",
    "r2": "r2_by_category",
    "batch-correction": "batch_correction_heatmap",
    # "module:function" for figures of a family's own module (morphobench.figures.<module>)
    "campfire-probes": "campfire_plots:probe_accuracy",
    "campfire-channel-sets": "campfire_plots:channel_set_accuracy",
    "zprime": "campfire_plots:zprime_bars",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphobench.figures", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("figure", choices=sorted(FIGURES))
    ap.add_argument("--table", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--log")
    args = ap.parse_args(argv)
    setup_logging(args.log)
    import importlib

    module, _, fn = FIGURES[args.figure].rpartition(":")
    plots = importlib.import_module(f"morphobench.figures.{module or 'plots'}")

    def draw():
        getattr(plots, fn)(read_table(args.table, what="results table"), args.out)

    return cli_exit(f"morphobench.figures {args.figure}", draw)


if __name__ == "__main__":
    sys.exit(main())
