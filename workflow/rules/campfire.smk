# Campfire family: its splits, linear probes, channel studies and Z′ (tables and figures).
# Models train and embed through train.smk / embed.smk like every method; this file adds what only
# this family has. Append the tables/figures `rule all` builds to RESULT_TABLES / FIGURE_NAMES.
#
#   results/{dataset}/splits/campfire.tsv                 the ID/OOD plate × compound split (train.smk `split`)
#   results/{dataset}/campfire/cells.parquet              probe cells (100 per control well, 30 per held-out well)
#   results/{dataset}/campfire/channel_sets/{method}.parquet   probe cells re-embedded per channel set
#                                                         (trained channel-agnostic models; empty otherwise)
#   results/{dataset}/eval/{method}/campfire_probes.tsv   → results/campfire_probes.tsv (+ _summary)
#   results/{dataset}/eval/{method}/{correction}/zprime.tsv → results/zprime.tsv (evaluate.zprime.corrections)
#   results/figures/campfire_probes.png, campfire_channel_sets.png, zprime.png
# Every configured method (registered or your own, EVAL_LISTS["all"]) gets probe and Z′ rows.

CFP = config["evaluate"]["campfire_probes"]
ZPC = config["evaluate"]["zprime"]
CF_SPLIT = config["splits"]["campfire"]


CF_PROBE_DATASETS = _cf_datasets(CFP)
ZP_DATASETS = _cf_datasets(ZPC)
if CFP["crops"] not in config["images"]["crops"]["kinds"] and CF_PROBE_DATASETS:
    raise WorkflowError(f"config: evaluate.campfire_probes.crops {CFP['crops']!r} is not one of "
                        f"images.crops.kinds {config['images']['crops']['kinds']}")


rule campfire_cells:
    """The probe cells of a dataset, sampled per well from its Campfire split (Campfire §3.2)."""
    input:
        crops=f"results/{{dataset}}/crops/{CFP['crops']}/index.parquet",
        split="results/{dataset}/splits/campfire.tsv",
    output:
        "results/{dataset}/campfire/cells.parquet",
    params:
        controls=as_json(CF_SPLIT.get("controls")),
        control_cells=CFP["control_cells"],
        heldout_cells=CFP["heldout_cells"],
        seed=CFP["seed"],
    log:
        "logs/{dataset}/campfire/cells.log",
    priority: 20  # as soon as the models exist, not in a one-core tail at the end
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.evaluate campfire-cells --crops {input.crops} --split {input.split} "
        "--controls {params.controls} --control-cells {params.control_cells} "
        "--heldout-cells {params.heldout_cells} --seed {params.seed} --out {output} 2> {log}"


rule campfire_channel_sets:
    """The probe cells' crops embedded once per channel set by a channel-agnostic trained model
    (the model's `channel_agnostic` attribute decides at run time; others get an empty table)."""
    input:
        unpack(_cf_channel_set_inputs),
    output:
        "results/{dataset}/campfire/channel_sets/{method}.parquet",
    params:
        sets=as_json(CFP["channel_sets"]),
        level=lambda w: configured(w.method).method.level,
        device=config["train"]["device"],
    log:
        "logs/{dataset}/campfire/channel_sets/{method}.log",
    benchmark:
        "benchmarks/out/{dataset}/campfire/channel_sets/{method}.tsv"
    priority: 20  # as soon as the models exist, not in a one-core tail at the end
    conda:
        "../../envs/morphobench.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=lambda w: 1 if train_device(w).startswith("cuda") else 0,
    shell:
        "python -m morphobench.evaluate channel-sets --model {input.model} --cells {input.cells} "
        "--crops {input.crops} --sets {params.sets} --level {params.level} --device {params.device} "
        "--threads {threads} --name {wildcards.method} --out {output} 2> {log}"


rule campfire_probes_part:
    """Tasks A and B of one method (its own embeddings + its channel sets)."""
    input:
        unpack(_cf_probe_inputs),
    output:
        "results/{dataset}/eval/{method}/campfire_probes.tsv",
    params:
        key=lambda w: as_json({"dataset": w.dataset, "method": w.method}),
        level=lambda w: configured(w.method).method.level,
        flags=_cf_probe_flags,
        probe=as_json({k: CFP[k] for k in ("n_subsets", "n_folds", "max_epochs", "patience", "lr",
                                           "weight_decay", "batch_size", "seed")}),
    log:
        "logs/{dataset}/eval/{method}/campfire_probes.log",
    benchmark:
        "benchmarks/out/{dataset}/eval/{method}/campfire_probes.tsv"
    priority: 20  # as soon as the models exist, not in a one-core tail at the end
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m morphobench.evaluate probes --cells {input.cells} --rows {input.rows} --level {params.level} "
        "{params.flags} --key {params.key} --params {params.probe} --threads {threads} --out {output} 2> {log}"


rule zprime_part:
    """Z′ of the configured control pairs from one method's (corrected) well profiles (Campfire App. C)."""
    input:
        "results/{dataset}/profiles/{method}/{correction}/well.parquet",
    output:
        f"{EVAL}/zprime.tsv",
    params:
        key=eval_key,
        groups=as_json(ZPC["groups"]),
        reference=as_json(ZPC["reference"]),
    log:
        "logs/{dataset}/eval/{method}/{correction}/zprime.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.evaluate zprime --well {input} --key {params.key} --groups {params.groups} "
        "--reference {params.reference} --out {output} 2> {log}"


CF_GATHER = {
    "campfire_probes": [f"results/{d}/eval/{m}/campfire_probes.tsv" for d in CF_PROBE_DATASETS
                        for m in EVAL_LISTS["all"]],
    "zprime": eval_parts("zprime", eval_combos(datasets=ZP_DATASETS, corrections=ZPC["corrections"])),
}
CF_GATHER = {k: v for k, v in CF_GATHER.items() if v}


rule campfire_gather:
    """results/campfire_probes.tsv and results/zprime.tsv from their per-method parts."""
    input:
        lambda w: CF_GATHER[w.cftable],
    output:
        report(
            "results/{cftable}.tsv",
            caption="../report/campfire_gather.rst",
            category=lambda w: report_category(w.cftable),
            subcategory="Tables",
            labels=lambda w: report_labels("table", w.cftable),
        ),
    wildcard_constraints:
        cftable="|".join(CF_GATHER) or "(?!)",
    params:
        cfg=CONFIG_HASH,
        methods=METHODS_PROVENANCE,
    log:
        "logs/gather/{cftable}.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.evaluate gather --parts {input} --out {output} --config-hash {params.cfg} "
        "--methods {params.methods} 2> {log}"


rule campfire_probes_summary:
    """Mean, sd and 95 % CI of the probe accuracies per method × channel set × task × test split."""
    input:
        "results/campfire_probes.tsv",
    output:
        report(
            "results/campfire_probes_summary.tsv",
            caption="../report/campfire_probes_summary.rst",
            category=report_category("campfire_probes_summary"),
            subcategory="Tables",
            labels=report_labels("table", "campfire_probes_summary"),
        ),
    params:
        cfg=CONFIG_HASH,
        methods=METHODS_PROVENANCE,
    log:
        "logs/gather/campfire_probes_summary.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.evaluate probes-summary --table {input} --out {output} --config-hash {params.cfg} "
        "--methods {params.methods} 2> {log}"


# figures.smk's `figure` rule fixes its wildcard regex when it is defined (before this file), so
# the family's figures have their own rule.
CF_FIGURES = {
    "campfire_probes": ("campfire-probes", "results/campfire_probes.tsv"),  # Table 3.1 layout
    "campfire_channel_sets": ("campfire-channel-sets", "results/campfire_probes.tsv"),  # Fig. 3.4, Table 3.2
    "zprime": ("zprime", "results/zprime.tsv"),  # Fig. 3.5
}
CF_FIGURES = {k: v for k, v in CF_FIGURES.items() if v[1][len("results/"):-len(".tsv")] in CF_GATHER}


rule campfire_figure:
    input:
        lambda w: CF_FIGURES[w.cffigure][1],
    output:
        report(
            "results/figures/{cffigure}.png",
            caption="../report/campfire_figure.rst",
            category=lambda w: report_category(w.cffigure),
            subcategory="Figures",
            labels=lambda w: report_labels("figure", w.cffigure),
        ),
    wildcard_constraints:
        cffigure="|".join(CF_FIGURES) or "(?!)",
    params:
        kind=lambda w: CF_FIGURES[w.cffigure][0],
    log:
        "logs/figures/{cffigure}.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.figures {params.kind} --table {input} --out {output} 2> {log}"


RESULT_TABLES += list(CF_GATHER) + (["campfire_probes_summary"] if "campfire_probes" in CF_GATHER else [])
FIGURE_NAMES += list(CF_FIGURES)
