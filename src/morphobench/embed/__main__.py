"""CLI for the embedding stages (called by workflow/rules/embed.smk), the same for every method.

    python -m morphobench.embed plate --spec JSON --plate P --out OUT \
        [--wells W] [--sheet S] [--illum F] [--crops INDEX] [--model model.pt] [--profiles WELLS] [--device auto]
    python -m morphobench.embed gather --parts A B … --out embeddings/{method}/{level}.parquet
    python -m morphobench.embed export-timm-weights --arch vit_base_patch16_224.augreg_in21k \
        --out resources/weights/vit_base_patch16_224.augreg_in21k.pth     (needs internet; ImageNet baselines)
    python -m morphobench.embed profiles --spec JSON --parts A B … --wells W [--sheet S] \
        --out-well profiles/{method}/well.parquet [--out-embeddings embeddings/{method}/{level}.parquet] \
        [--aggregate mean]

``--spec`` is the method's JSON spec (``morphobench.methods.Method.to_spec``), or ``@file.json``.
"""

from __future__ import annotations

import argparse
import sys

from morphobench.io import cli_exit, load_json_arg, setup_logging


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphobench.embed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plate", help="embed one plate with a method")
    p.add_argument("--spec", required=True)
    p.add_argument("--plate", required=True)
    p.add_argument("--out", required=True)
    for opt in ("--wells", "--sheet", "--illum", "--crops", "--model", "--profiles"):
        p.add_argument(opt)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    g = sub.add_parser("profiles", help="per-plate parts → embeddings file + well profiles")
    g.add_argument("--spec", required=True)
    g.add_argument("--parts", nargs="+", required=True)
    g.add_argument("--wells", required=True)
    g.add_argument("--sheet")
    g.add_argument("--out-well", required=True)
    g.add_argument("--out-embeddings")
    g.add_argument("--aggregate", default="mean", choices=["mean", "median"])
    e = sub.add_parser("gather", help="per-plate rows → one dataset-level embeddings file")
    e.add_argument("--parts", nargs="+", required=True)
    e.add_argument("--out", required=True)
    x = sub.add_parser("export-timm-weights", help="save timm's pretrained weights of an architecture (internet)")
    x.add_argument("--arch", required=True)
    x.add_argument("--out", required=True)
    for s in (p, g, e, x):
        s.add_argument("--log", help="log file (also logged to stderr)")
    args = ap.parse_args(argv)
    setup_logging(args.log)
    return cli_exit(f"morphobench.embed {args.cmd}", _run, args)


def _run(args) -> None:
    from morphobench.embed import stages

    if args.cmd == "gather":
        stages.gather_embeddings(args.parts, args.out)
        return
    if args.cmd == "export-timm-weights":
        from morphobench.embed.pretrained import export_timm_weights

        export_timm_weights(args.arch, args.out)
        return
    spec = load_json_arg(args.spec)
    if args.cmd == "plate":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        inputs = stages.EmbedInputs(wells=args.wells, sheet=args.sheet, illum=args.illum, crops=args.crops,
                                    model=args.model, profiles=args.profiles, device=args.device)
        stages.embed_plate(spec, args.plate, args.out, inputs)
    else:
        stages.method_profiles(spec, args.parts, args.wells, args.sheet, args.out_well,
                               out_embeddings=args.out_embeddings, method=args.aggregate)


if __name__ == "__main__":
    sys.exit(main())
