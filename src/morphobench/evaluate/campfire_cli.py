"""Subcommands of ``python -m morphobench.evaluate`` for the Campfire evaluations
(workflow/rules/campfire.smk):

    campfire-cells  --crops INDEX --split splits/campfire.tsv --out campfire/cells.parquet \
        [--controls JSON] [--control-cells 100] [--heldout-cells 30] [--seed 0]
    channel-sets    --model model.pt --cells cells.parquet --crops INDEX --sets JSON --level cell \
        --out campfire/channel_sets/{method}.parquet [--device auto] [--threads N] [--name M]
    probes          --cells cells.parquet --rows ROWS --level cell|tile|site|well --key JSON --out OUT \
        [--channel-sets PARQUET] [--crops INDEX] [--params JSON]
    probes-summary  --table results/campfire_probes.tsv --out results/campfire_probes_summary.tsv
    zprime          --well profiles/{method}/{correction}/well.parquet --key JSON --out OUT \
        [--groups JSON] [--reference JSON]
"""

from __future__ import annotations

import json

from morphobench.io import load_json_arg

COMMANDS = ("campfire-cells", "channel-sets", "probes", "probes-summary", "zprime")


def add_parsers(sub) -> list:
    c = sub.add_parser("campfire-cells", help="sample the probe cells of a dataset from its Campfire split")
    c.add_argument("--crops", required=True)
    c.add_argument("--split", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--controls", default="null", help="JSON list of control compounds (null: negcon + poscon)")
    c.add_argument("--control-cells", type=int, default=100)
    c.add_argument("--heldout-cells", type=int, default=30)
    c.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("channel-sets", help="embed the probe cells with every channel set (channel-agnostic models)")
    s.add_argument("--model", required=True)
    s.add_argument("--cells", required=True)
    s.add_argument("--crops", required=True)
    s.add_argument("--sets", required=True, help='JSON list of channel lists, e.g. [["DNA"], ["DNA", "ER", "RNA"]]')
    s.add_argument("--level", required=True, choices=["cell", "tile"])
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--name", default="method")
    p = sub.add_parser("probes", help="Campfire linear probes (tasks A and B) of one method")
    p.add_argument("--cells", required=True)
    p.add_argument("--rows", required=True, help="the method's embeddings at its level (well profiles for well level)")
    p.add_argument("--level", required=True, choices=["cell", "tile", "site", "well"])
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--channel-sets")
    p.add_argument("--crops", help="the method's crop index (tile size of tile-level methods)")
    p.add_argument("--params", default="{}", help="JSON: n_subsets, n_folds, max_epochs, patience, lr, …")
    p.add_argument("--threads", type=int)
    m = sub.add_parser("probes-summary", help="mean, sd and 95 %% CI of the probe accuracies")
    m.add_argument("--table", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--config-hash")
    m.add_argument("--methods", default="{}")
    z = sub.add_parser("zprime", help="Z′ of control pairs from one method's well profiles")
    z.add_argument("--well", required=True)
    z.add_argument("--key", required=True)
    z.add_argument("--out", required=True)
    z.add_argument("--groups", default="null")
    z.add_argument("--reference", default="null")
    return [c, s, p, m, z]


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def dispatch(args) -> None:
    if args.cmd == "campfire-cells":
        from morphobench.evaluate.probes import probe_cells_stage

        probe_cells_stage(args.crops, args.split, args.out, controls=json.loads(args.controls),
                          control_cells=args.control_cells, heldout_cells=args.heldout_cells, seed=args.seed)
    elif args.cmd == "channel-sets":
        from morphobench.evaluate.channel_sets import channel_set_embeddings

        _threads(args.threads)
        channel_set_embeddings(args.model, args.cells, args.crops, json.loads(args.sets), args.out, level=args.level,
                               device=args.device, batch_size=args.batch_size, name=args.name)
    elif args.cmd == "probes":
        from morphobench.evaluate.probes import config_from, probes_stage

        _threads(args.threads)
        params = load_json_arg(args.params, "--params")
        probes_stage(args.cells, args.rows, args.level, json.loads(args.key), args.out,
                     channel_sets_path=args.channel_sets, crops_index=args.crops,
                     n_subsets=int(params.get("n_subsets", 10)), n_folds=int(params.get("n_folds", 5)),
                     cfg=config_from(params))
    elif args.cmd == "probes-summary":
        from morphobench.evaluate.probes import summary_stage

        summary_stage(args.table, args.out, args.config_hash, methods=load_json_arg(args.methods, "--methods"))
    elif args.cmd == "zprime":
        from morphobench.evaluate.zprime import zprime_stage

        zprime_stage(args.well, json.loads(args.key), args.out, groups=json.loads(args.groups),
                     reference=json.loads(args.reference))
    else:  # pragma: no cover
        raise ValueError(args.cmd)
