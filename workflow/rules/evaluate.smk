# Evaluations per dataset × method × correction, gathered into results/{table}.tsv.

EVAL = "results/{dataset}/eval/{method}/{correction}"


KR = config["evaluate"]["known_relationships"]
RT = config["evaluate"]["retrieval"]
CPR = config["evaluate"]["cp_regression"]
BC = config["evaluate"]["batch_correction"]


GENE_SET_FILES = sorted({v for v in KR["gene_sets"].values() if isinstance(v, str) and v != "all"})


rule known_relationships_part:
    input:
        pert="results/{dataset}/profiles/{method}/{correction}/perturbation.parquet",
        annotations=expand(f"{RES}/annotations/{{source}}.csv", source=KR["sources"]),
        gene_sets=GENE_SET_FILES,
    output:
        known=f"{EVAL}/known_relationships.tsv",
        curve=f"{EVAL}/recall_curve.tsv",
        sets=f"{EVAL}/stringdb_gene_sets.tsv",
    params:
        key=eval_key,
        annotations=as_json({s: f"{RES}/annotations/{s}.csv" for s in KR["sources"]}),
        gene_sets=as_json(KR["gene_sets"]),
        gene_set_null=KR["gene_set_null"],
        aggregation=config["aggregate"]["perturbation"],
        seed=config["seed"],
    log:
        "logs/{dataset}/eval/{method}/{correction}/known_relationships.log",
    benchmark:
        "benchmarks/out/{dataset}/eval/{method}/{correction}/known_relationships.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m morphobench.evaluate known-relationships --pert {input.pert} "
        "--annotations {params.annotations} --gene-sets {params.gene_sets} --gene-set-null {params.gene_set_null} "
        "--key {params.key} "
        "--out-known {output.known} --out-curve {output.curve} --out-sets {output.sets} "
        "--aggregation {params.aggregation} --seed {params.seed} 2> {log}"


rule retrieval_part:
    input:
        well="results/{dataset}/profiles/{method}/{correction}/well.parquet",
        pert="results/{dataset}/profiles/{method}/{correction}/perturbation.parquet",
    output:
        table=f"{EVAL}/jump_retrieval.tsv",
        detail=expand("results/retrieval/{{dataset}}/{{method}}/{{correction}}/{task}.parquet",
                      task=RT["tasks"]),
    params:
        key=eval_key,
        tasks=" ".join(RT["tasks"]),
        detail_dir="results/retrieval/{dataset}/{method}/{correction}",
        null_size=RT["null_size"],
        seed=RT["seed"],
        threshold=RT["threshold"],
        on_missing=RT["on_missing_negcon"],
        negatives=RT["negatives"],
        condition=" ".join(config["aggregate"]["condition"]),
        cross=" ".join(RT["cross_modality_condition"]),
    log:
        "logs/{dataset}/eval/{method}/{correction}/retrieval.log",
    benchmark:
        "benchmarks/out/{dataset}/eval/{method}/{correction}/retrieval.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "MORPHOBENCH_MAP_THREADS={threads} python -m morphobench.evaluate retrieval --well {input.well} --pert {input.pert} "
        "--key {params.key} --tasks {params.tasks} --out {output.table} --detail-dir {params.detail_dir} "
        "--null-size {params.null_size} --seed {params.seed} --threshold {params.threshold} "
        "--on-missing-negcon {params.on_missing} --negatives {params.negatives} "
        "--condition {params.condition} --cross-condition {params.cross} 2> {log}"


rule cp_split:
    """Training / held-out experiments (or plates) for the CellProfiler-feature regression (a saved table)."""
    input:
        "results/{dataset}/profiles/cellprofiler/well.parquet",
    output:
        "results/{dataset}/splits/cp_regression_plates.tsv",
    params:
        frac=CPR["heldout_fraction"],
        seed=CPR["seed"],
        holdout=CPR["holdout"],
    log:
        "logs/{dataset}/eval/cp_split.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.evaluate cp-split --cp-well {input} --out {output} --holdout {params.holdout} "
        "--heldout-fraction {params.frac} --seed {params.seed} 2> {log}"


rule cp_regression_part:
    input:
        emb="results/{dataset}/profiles/{method}/{correction}/well.parquet",
        cp="results/{dataset}/profiles/cellprofiler/well.parquet",
        split="results/{dataset}/splits/cp_regression_plates.tsv",
    output:
        f"{EVAL}/cp_regression.tsv",
    params:
        key=eval_key,
        model=CPR["model"],
        categories=" ".join(CPR["categories"]),
        tnorm=CPR["target_normalization"],
    log:
        "logs/{dataset}/eval/{method}/{correction}/cp_regression.log",
    benchmark:
        "benchmarks/out/{dataset}/eval/{method}/{correction}/cp_regression.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m morphobench.evaluate cp-regression --emb-well {input.emb} --cp-well {input.cp} "
        "--split {input.split} --key {params.key} --model {params.model} --categories {params.categories} "
        "--target-normalization {params.tnorm} --out {output} 2> {log}"


GATHER = {
    "known_relationships": eval_parts("known_relationships", eval_combos()),
    "recall_curve": eval_parts("recall_curve", eval_combos()),
    "stringdb_gene_sets": eval_parts("stringdb_gene_sets", eval_combos()),
    "jump_retrieval": eval_parts("jump_retrieval", eval_combos()),
    "cp_regression": eval_parts("cp_regression", eval_combos(methods=EVAL_LISTS["cp_regression"])),
    "batch_correction_recall": eval_parts(
        "known_relationships",
        eval_combos(methods=[BC["method"]], corrections=BC["corrections"])),
}


rule gather_table:
    """Concatenate the per dataset × method × correction tables into results/{table}.tsv."""
    input:
        lambda w: GATHER[w.table],
    output:
        report(
            "results/{table}.tsv",
            caption="../report/gather_table.rst",
            category=lambda w: report_category(w.table),
            subcategory="Tables",
            labels=lambda w: report_labels("table", w.table),
        ),
    wildcard_constraints:
        table="|".join(GATHER),
    params:
        cfg=CONFIG_HASH,
        methods=METHODS_PROVENANCE,
    log:
        "logs/gather/{table}.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.evaluate gather --parts {input} --out {output} --config-hash {params.cfg} "
        "--methods {params.methods} 2> {log}"


rule cp_regression_summary:
    input:
        "results/cp_regression.tsv",
    output:
        report(
            "results/cp_regression_summary.tsv",
            caption="../report/cp_regression_summary.rst",
            category=report_category("cp_regression_summary"),
            subcategory="Tables",
            labels=report_labels("table", "cp_regression_summary"),
        ),
    params:
        cfg=CONFIG_HASH,
        methods=METHODS_PROVENANCE,
    log:
        "logs/gather/cp_regression_summary.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.evaluate cp-summary --table {input} --out {output} --config-hash {params.cfg} "
        "--methods {params.methods} 2> {log}"


rule batch_correction_table:
    """MAE-CVPR Table 2 layout: one row per correction (paper's order, without then with +arm) of
    one method, recall per source as columns."""
    input:
        "results/batch_correction_recall.tsv",
    output:
        report(
            "results/batch_correction.tsv",
            caption="../report/batch_correction.rst",
            category=report_category("batch_correction"),
            subcategory="Tables",
            labels=report_labels("table", "batch_correction"),
        ),
    params:
        method=BC["method"],
        corrections=" ".join(f"'{c}'" for c in BC["corrections"]),
        skipped=as_json(arm_skips(BC["corrections"])),
        cfg=CONFIG_HASH,
        methods=METHODS_PROVENANCE,
    log:
        "logs/gather/batch_correction.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.evaluate batch-correction --known {input} --method {params.method} "
        "--corrections {params.corrections} --skipped {params.skipped} "
        "--out {output} --config-hash {params.cfg} --methods {params.methods} 2> {log}"
