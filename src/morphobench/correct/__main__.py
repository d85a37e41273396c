"""CLI for the correction stage (called by workflow/rules/correct.smk).

    python -m morphobench.correct --well IN --correction tvn+arm --out-well W --out-pert P \
        [--params JSON] [--truth perturbations.parquet | --gene-arms T --zfpkm EXPRESSION]
"""

from __future__ import annotations

import argparse
import json
import sys

from morphobench.io import cli_exit, setup_logging


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphobench.correct", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--well", required=True, help="uncorrected well profiles (parquet)")
    ap.add_argument("--correction", required=True)
    ap.add_argument("--out-well", required=True)
    ap.add_argument("--out-pert", required=True)
    ap.add_argument("--params", default="{}",
                    help="JSON: aggregation, arm_level, condition, pca_components, tvn_reg, seed …")
    ap.add_argument("--truth", help="simulated perturbation truth (gene, arm, expressed) for +arm")
    ap.add_argument("--gene-arms", help="resources genes/gene_arms.tsv for +arm")
    ap.add_argument("--zfpkm", help="expression table (gene, zfpkm) of the screen's cell line for +arm")
    ap.add_argument("--log")
    args = ap.parse_args(argv)
    setup_logging(args.log)
    from morphobench.correct.stage import run

    return cli_exit("morphobench.correct", run, args.well, args.correction, args.out_well, args.out_pert,
                    params=json.loads(args.params), perturbations_truth=args.truth,
                    gene_arms=args.gene_arms, zfpkm=args.zfpkm)


if __name__ == "__main__":
    sys.exit(main())
