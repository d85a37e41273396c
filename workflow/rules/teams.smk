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
TEAMS = config["teams"]
TRIP = TEAMS["triplets"]
TEAMS_SPLIT = "treatment_folds"
TEAMS_CROP = "cell128"  # the random floor's cells (one vector per cell of this crop index)


def teams_cell_methods():
    """Configured methods scored by MoA triplets: cell-level embeddings (+ `random`, per cell)."""
    ok = [n for n, c in METHODS.items() if c.method.level == "cell" or n == "random"]
    if TRIP["methods"] == "all":
        return ok
    for i, n in enumerate(TRIP["methods"]):
        if n not in ok:
            raise WorkflowError(f"config: teams.triplets.methods[{i}]: {n!r} is not a configured method with "
                                f"cell-level embeddings (those: {ok})")
    return list(TRIP["methods"])


def _teams_group_col(name):
    return method_spec(name)["params"].get("group_col", "Metadata_Batch")


def teams_expert_methods():
    return [n for n in teams_cell_methods()
            if configured(n).method.trains and method_spec(n)["params"].get("experts") is True]


def _fold_trained(name):
    m = configured(name).method
    return m.trains and m.split == TEAMS_SPLIT


def teams_variation_groups(dataset, col):
    """Values of a variation-group column: from the config for simulated screens (batches or
    plates), else from the image sheet (checkpoint; call inside input functions only)."""
    cfg = dataset_cfg(dataset)
    if cfg["loader"] == "simulated" and col in ("Metadata_Batch", "Metadata_Plate"):
        from morphobench.simulate.params import resolve_params

        p = resolve_params(cfg.get("simulate", {}))
        return sorted({b if col == "Metadata_Batch" else pl for b, pl in p.plates})
    import pandas as pd

    sheet = f"results/{dataset}/images.parquet" if cfg["loader"] == "simulated" else \
        checkpoints.image_sheet.get(dataset=dataset).output.sheet
    cols = pd.read_parquet(sheet, columns=None).columns
    if col not in cols:
        raise WorkflowError(f"teams: variation group column {col!r} is not in the image sheet of {dataset}")
    return sorted(pd.read_parquet(sheet, columns=[col])[col].astype(str).unique())


def teams_heldout_methods():
    return [n for n in TEAMS["heldout_groups"]["methods"] if n in METHODS and _fold_trained(n)]


def teams_heldout_datasets():
    """Datasets whose variation groups are known from the config and are ≥ min_groups (real screens
    are included; their groups are read once the image sheet exists)."""
    out = []
    for ds in DATASETS:
        if dataset_cfg(ds)["loader"] != "simulated":
            out.append(ds)
            continue
        cols = {_teams_group_col(m) for m in teams_heldout_methods()}
        if cols and all(len(teams_variation_groups(ds, c)) >= TEAMS["heldout_groups"]["min_groups"] for c in cols):
            out.append(ds)
    return out


# ---- extra trainings: fold{k} (k > 0) and without_{group} ----------------------------------------
def teams_variant_fold(variant):
    return int(variant[4:]) if variant.startswith("fold") else 0


def teams_variant_spec(w):
    """The method's spec; `without_{group}` trains on every other variation group (train_groups)."""
    spec = method_spec(w.method)
    if w.variant.startswith("without_"):
        held = w.variant[len("without_"):]
        groups = teams_variation_groups(w.dataset, _teams_group_col(w.method))
        if held not in groups:
            raise WorkflowError(f"teams: {held!r} is not a variation group of {w.dataset} ({groups})")
        spec = {**spec, "params": {**spec["params"], "train_groups": [g for g in groups if g != held]}}
    return as_json(spec)


def teams_variant_train_inputs(w):
    m = configured(w.method).method
    if not _fold_trained(w.method):
        raise WorkflowError(f"teams: {w.method!r} does not train on {TEAMS_SPLIT}")
    ds = f"results/{w.dataset}"
    return {"crops": f"{ds}/crops/{m.crop_kind}/index.parquet", "split": f"{ds}/splits/{TEAMS_SPLIT}.tsv",
            "wells": f"{ds}/wells.parquet"}


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
    threads: max(1, min(workflow.cores, 8))
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=lambda w: 1 if train_device(w).startswith("cuda") else 0,
    shell:
        "python -m morphobench.training train --spec {params.spec} --crops {input.crops} --split {input.split} "
        "--wells {input.wells} --out-model {output.model} --fold {params.fold} --threads {threads} 2> {log}"


def teams_variant_embed_inputs(w):
    m = configured(w.method).method
    ds = f"results/{w.dataset}"
    return {"model": f"{ds}/teams/{w.variant}/models/{w.method}/model.pt",
            "crops": f"{ds}/crops/{m.crop_kind}/plates/{w.plate}.parquet",
            "store": f"{ds}/crops/{m.crop_kind}/plates/{w.plate}.zarr",
            "wells": f"{ds}/wells.parquet", "sheet": f"{ds}/images.parquet"}


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
def teams_model_path(dataset, method, fold):
    if int(fold) > 0 and _fold_trained(method):
        return f"results/{dataset}/teams/fold{fold}/models/{method}/model.pt"
    return f"results/{dataset}/models/{method}/model.pt"


def teams_triplet_inputs(w):
    ds = f"results/{w.dataset}"
    d = {"wells": f"{ds}/wells.parquet", "split": f"{ds}/splits/{TEAMS_SPLIT}.tsv"}
    m = configured(w.method).method
    if m.level != "cell":  # random: one fixed-seed vector per cell
        d["crops"] = f"{ds}/crops/{TEAMS_CROP}/index.parquet"
    elif int(w.fold) > 0 and _fold_trained(w.method):
        d["emb"] = f"{ds}/teams/fold{w.fold}/embeddings/{w.method}/cell.parquet"
    else:
        d["emb"] = f"{ds}/embeddings/{w.method}/cell.parquet"
    return d


def teams_triplet_source(w, input):
    if "emb" in input.keys():
        return f"--emb {input.emb}"
    return f"--random-cells {input.crops} --random-dim {TRIP['random_dim']}"


def teams_key(w, **extra):
    m = configured(w.method).method
    return {"dataset": w.dataset, "method": w.method, **extra,
            "trained_on": (m.split if m.trains else "none")}


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


def teams_heldout_emb(w):
    ds = f"results/{w.dataset}"
    if w.held == "none":
        return f"{ds}/embeddings/{w.method}/cell.parquet"
    return f"{ds}/teams/without_{w.held}/embeddings/{w.method}/cell.parquet"


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


def teams_parts(table):
    if table == "moa_triplets":
        return [f"results/{d}/teams/{m}/fold{f}/moa_triplets.tsv"
                for d in DATASETS for m in teams_cell_methods() for f in TRIP["folds"]]
    if table == "teams_expert_modes":
        return [f"results/{d}/teams/{m}/fold{f}/expert_modes.tsv"
                for d in DATASETS for m in teams_expert_methods() for f in TRIP["folds"]]
    if table == "teams_heldout_groups":
        out = []
        for d in teams_heldout_datasets():
            for m in teams_heldout_methods():
                groups = teams_variation_groups(d, _teams_group_col(m))
                if len(groups) >= TEAMS["heldout_groups"]["min_groups"]:
                    out += [f"results/{d}/teams/{m}/heldout_{h}/moa_triplets.tsv" for h in ["none", *groups]]
        if not out:
            raise WorkflowError("teams: no dataset has enough variation groups for Table 3 "
                                f"(≥ {TEAMS['heldout_groups']['min_groups']})")
        return out
    raise WorkflowError(f"unknown TEAMs table {table!r}")


rule teams_gather:
    """Concatenate the per dataset × method × fold MoA-triplet tables."""
    input:
        lambda w: teams_parts(w.table),
    output:
        "results/{table}.tsv",
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
        "results/{table}.tsv",
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
        "results/figures/{table}.png",
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
        "results/figures/teams_umap/{dataset}/{method}.png",
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
