# TEAMs family: its evaluations and paper tables (MoA triplets, Tables 2–6, Fig. 5).
# Models train and embed through train.smk / embed.smk like every method; this file adds what only
# this family has:
#   results/{dataset}/teams/{method}/fold{fold}/moa_triplets.tsv     MoA triplets of one method/fold
#   results/{dataset}/teams/{method}/fold{fold}/expert_modes.tsv     Table 6 (methods with experts)
#   results/{dataset}/teams/{method}/heldout_{group}/moa_triplets.tsv  Table 3 (one group left out)
#   results/{dataset}/teams/{variant}/models|embeddings/{method}/…   extra trainings: fold{k} (k > 0)
#                                                                     and without_{group} (Table 3)
#   results/moa_triplets.tsv, teams_expert_modes.tsv, teams_heldout_groups.tsv   gathered
#   results/teams_table{2,3,4,5,6}.tsv + results/figures/teams_table*.png, teams_umap/{dataset}/{method}.png
# TEAMS, TRIP, TEAMS_SPLIT and the input functions: common.smk § teams.smk.


# ---- extra trainings: fold{k} (k > 0) and without_{group} ----------------------------------------
rule teams_train_variant:
    """A TEAMs-family method trained on fold k > 0, or without one variation group (Table 3)."""
    input:
        unpack(teams_variant_train_inputs),
    output:
        model="results/{dataset}/teams/{variant}/models/{method}/model.pt",
        log="results/{dataset}/teams/{variant}/models/{method}/train_log.tsv",
    wildcard_constraints:
        variant="fold[1-9][0-9]*|without_[^/]+",
    params:
        spec=teams_variant_spec,
        fold=lambda w: teams_variant_fold(w.variant),
    log:
        "logs/{dataset}/teams/{variant}/train_{method}.log",
    benchmark:
        "benchmarks/out/{dataset}/teams/{variant}/train_{method}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: cores_upto(8)
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=lambda w: 1 if train_device(w).startswith("cuda") else 0,
    shell:
        "python -m morphobench.training train --spec {params.spec} --crops {input.crops} --split {input.split} "
        "--wells {input.wells} --out-model {output.model} --fold {params.fold} --threads {threads} 2> {log}"


rule teams_variant_embed_plate:
    input:
        unpack(teams_variant_embed_inputs),
    output:
        "results/{dataset}/teams/{variant}/embeddings/{method}/plates/{plate}.parquet",
    wildcard_constraints:
        variant="fold[1-9][0-9]*|without_[^/]+",
    params:
        spec=lambda w: as_json(method_spec(w.method)),
        device=config["train"]["device"],
    log:
        "logs/{dataset}/teams/{variant}/embed_{method}_{plate}.log",
    conda:
        "../../envs/morphobench.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m morphobench.embed plate --spec {params.spec} --plate {wildcards.plate} --wells {input.wells} "
        "--sheet {input.sheet} --crops {input.crops} --model {input.model} --device {params.device} "
        "--threads {threads} --out {output} 2> {log}"


rule teams_variant_gather:
    input:
        lambda w: [f"results/{w.dataset}/teams/{w.variant}/embeddings/{w.method}/plates/{p}.parquet"
                   for p in plates(w.dataset)],
    output:
        "results/{dataset}/teams/{variant}/embeddings/{method}/cell.parquet",
    wildcard_constraints:
        variant="fold[1-9][0-9]*|without_[^/]+",
    log:
        "logs/{dataset}/teams/{variant}/gather_{method}.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.embed gather --parts {input} --out {output} 2> {log}"


# ---- MoA triplets --------------------------------------------------------------------------------
TRIP_FLAGS = (f"--moa-col {TRIP['moa_col']} --moa-sep {shlex.quote(TRIP['moa_sep'])} --seed {TRIP['seed']} "
              f"--n-boot {TRIP['n_boot']} --n-treatment-triplets {TRIP['n_treatment_triplets']}")


rule moa_triplets_part:
    """MoA triplets (TEAMs Table 1 tasks) of one method's cell embeddings on one fold's test split."""
    input:
        unpack(teams_triplet_inputs),
    output:
        "results/{dataset}/teams/{method}/fold{fold}/moa_triplets.tsv",
    params:
        src=teams_triplet_source,
        key=lambda w: as_json(teams_key(w)),
        tasks=" ".join(TRIP["tasks"]),
        flags=TRIP_FLAGS,
    log:
        "logs/{dataset}/teams/{method}/fold{fold}/moa_triplets.log",
    benchmark:
        "benchmarks/out/{dataset}/teams/{method}/fold{fold}/moa_triplets.tsv"
    conda:
        "../../envs/morphobench.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m morphobench.evaluate moa-triplets {params.src} --wells {input.wells} --split {input.split} "
        "--fold {wildcards.fold} --key {params.key} --tasks {params.tasks} {params.flags} --out {output} 2> {log}"


rule expert_modes_part:
    """TEAMs Table 6: single-cell triplets of a model with experts in each expert mode."""
    input:
        unpack(teams_triplet_inputs),
        model=lambda w: teams_model_path(w.dataset, w.method, w.fold),
    output:
        "results/{dataset}/teams/{method}/fold{fold}/expert_modes.tsv",
    params:
        src=teams_triplet_source,
        key=lambda w: as_json(teams_key(w)),
        tasks=" ".join(t for t in TRIP["tasks"] if t != "treatment") or "single_cell",
        modes=" ".join(TEAMS["expert_modes"]),
        flags=TRIP_FLAGS,
    log:
        "logs/{dataset}/teams/{method}/fold{fold}/expert_modes.log",
    conda:
        "../../envs/morphobench.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m morphobench.evaluate moa-triplets {params.src} --wells {input.wells} --split {input.split} "
        "--fold {wildcards.fold} --key {params.key} --tasks {params.tasks} --modes {params.modes} "
        "--model {input.model} {params.flags} --out {output} 2> {log}"


rule heldout_triplets_part:
    """TEAMs Table 3: a model trained without variation group {held} (none: with all), scored on
    the fold-0 test cells of every group."""
    input:
        emb=teams_heldout_emb,
        wells="results/{dataset}/wells.parquet",
        split=f"results/{{dataset}}/splits/{TEAMS_SPLIT}.tsv",
    output:
        "results/{dataset}/teams/{method}/heldout_{held}/moa_triplets.tsv",
    params:
        key=lambda w: as_json(teams_key(w, held_out=w.held)),
        by=lambda w: _teams_group_col(w.method),
        tasks=" ".join(TRIP["tasks"]),
        flags=TRIP_FLAGS,
    log:
        "logs/{dataset}/teams/{method}/heldout_{held}/moa_triplets.log",
    conda:
        "../../envs/morphobench.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m morphobench.evaluate moa-triplets --emb {input.emb} --wells {input.wells} --split {input.split} "
        "--fold 0 --key {params.key} --tasks {params.tasks} --by-group {params.by} {params.flags} --out {output} "
        "2> {log}"


rule teams_gather:
    """Concatenate the per dataset × method × fold MoA-triplet tables."""
    input:
        lambda w: teams_parts(w.table),
    output:
        report(
            "results/{table}.tsv",
            caption="../report/teams_gather.rst",
            category=lambda w: report_category(w.table),
            subcategory="Tables",
            labels=lambda w: report_labels("table", w.table),
        ),
    wildcard_constraints:
        table="moa_triplets|teams_expert_modes|teams_heldout_groups",
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


TEAMS_TABLE_SOURCE = {"teams_table2": "moa_triplets", "teams_table4": "moa_triplets", "teams_table5": "moa_triplets",
                      "teams_table6": "teams_expert_modes", "teams_table3": "teams_heldout_groups"}


rule teams_table:
    """A TEAMs paper table (mean ± sd over folds) from its gathered triplet table."""
    input:
        lambda w: f"results/{TEAMS_TABLE_SOURCE[w.table]}.tsv",
    output:
        report(
            "results/{table}.tsv",
            caption="../report/teams_table.rst",
            category=lambda w: report_category(w.table),
            subcategory="Tables",
            labels=lambda w: report_labels("table", w.table),
        ),
    wildcard_constraints:
        table="|".join(TEAMS_TABLE_SOURCE),
    params:
        cfg=CONFIG_HASH,
        methods=METHODS_PROVENANCE,
    log:
        "logs/gather/{table}.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.evaluate teams-table --table {wildcards.table} --source {input} --out {output} "
        "--config-hash {params.cfg} --methods {params.methods} 2> {log}"


# The figure rule of figures.smk fixes its wildcard constraint before this file is included, so the
# TEAMs figures have their own rule (same CLI).
rule teams_figure:
    input:
        "results/{table}.tsv",
    output:
        report(
            "results/figures/{table}.png",
            caption="../report/teams_figure.rst",
            category=lambda w: report_category(w.table),
            subcategory="Figures",
            labels=lambda w: report_labels("figure", w.table),
        ),
    wildcard_constraints:
        table="|".join(TEAMS_TABLE_SOURCE),
    params:
        kind=lambda w: w.table.replace("_", "-"),
    log:
        "logs/figures/{table}.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.figures {params.kind} --table {input} --out {output} 2> {log}"


rule teams_umap:
    """TEAMs Fig. 5: UMAP of a method's fold-0 test cells, coloured by MoA and by treatment."""
    input:
        emb="results/{dataset}/embeddings/{method}/cell.parquet",
        wells="results/{dataset}/wells.parquet",
        split=f"results/{{dataset}}/splits/{TEAMS_SPLIT}.tsv",
    output:
        report(
            "results/figures/teams_umap/{dataset}/{method}.png",
            caption="../report/teams_umap.rst",
            category=report_category("teams_umap"),
            subcategory="Figures",
            labels=lambda w: report_labels("figure", f"teams_umap/{w.dataset}/{w.method}", "teams_umap"),
        ),
    params:
        n=TEAMS["umap"]["max_cells"],
        seed=TEAMS["umap"]["seed"],
        moa=f"--moa-col {TRIP['moa_col']} --moa-sep {shlex.quote(TRIP['moa_sep'])}",
    log:
        "logs/figures/teams_umap/{dataset}/{method}.log",
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "NUMBA_NUM_THREADS={threads} python -m morphobench.figures teams-umap --emb {input.emb} --wells {input.wells} "
        "--split {input.split} --method {wildcards.method} --max-cells {params.n} --seed {params.seed} {params.moa} "
        "--out {output} 2> {log}"


# ---- what `rule all` builds -----------------------------------------------------------------------
if teams_cell_methods():
    RESULT_TABLES += ["moa_triplets", "teams_table2", "teams_table4"]
    FIGURE_NAMES += ["teams_table2", "teams_table4"]
    if teams_expert_methods():
        RESULT_TABLES += ["teams_expert_modes", "teams_table6"]
        FIGURE_NAMES += ["teams_table6"]
    if {"teams", "teams_effnet"} <= set(teams_cell_methods()):
        RESULT_TABLES += ["teams_table5"]
        FIGURE_NAMES += ["teams_table5"]
    FIGURE_NAMES += [f"teams_umap/{d}/{m}" for d in DATASETS for m in TEAMS["umap"]["methods"]
                     if m in teams_cell_methods() and configured(m).method.level == "cell"]
if teams_heldout_methods() and teams_heldout_datasets():
    RESULT_TABLES += ["teams_heldout_groups", "teams_table3"]
    FIGURE_NAMES += ["teams_table3"]
