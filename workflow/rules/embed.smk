# Methods → well-level profiles, one set of rules for every method (src/morphobench/methods.py):
#   embed_plate       results/{dataset}/embeddings/{method}/plates/{plate}.parquet   (per plate)
#   gather_embeddings results/{dataset}/embeddings/{method}/{level}.parquet           (cell/tile/site)
#   method_profiles   results/{dataset}/profiles/{method}/well.parquet              (the one aggregation)
# Trained methods read results/{dataset}/models/{method}/model.pt (workflow/rules/train.smk), or the
# model.pt their params name as `pretrained` (e.g. trained on another screen; `channel_map` maps channels);
# CellProfiler's per-plate well profiles come from the cp_features rule (images.smk).


rule embed_plate:
    """One plate embedded by one method (its registry `embed` function)."""
    input:
        unpack(embed_plate_inputs),
    output:
        "results/{dataset}/embeddings/{method}/plates/{plate}.parquet",
    params:
        spec=lambda w: as_json(method_spec(w.method)),
        flags=embed_plate_flags,
        device=config["train"]["device"],
    log:
        "logs/{dataset}/embed/{method}/{plate}.log",
    benchmark:
        "benchmarks/out/{dataset}/embed/{method}/{plate}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: embed_threads
    priority: 40  # a trained model's embeddings before the remaining CellProfiler features
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m morphobench.embed plate --spec {params.spec} --plate {wildcards.plate} "
        "--wells {input.wells} --sheet {input.sheet} {params.flags} --device {params.device} "
        "--threads {threads} --out {output} 2> {log}"


rule gather_embeddings:
    """A method's per-plate rows → one dataset-level file at its level (cell, tile or site)."""
    input:
        method_parts,
    output:
        "results/{dataset}/embeddings/{method}/{level}.parquet",
    wildcard_constraints:
        level="cell|tile|site",
    log:
        "logs/{dataset}/embed/{method}/gather_{level}.log",
    conda:
        "../../envs/morphobench.yaml"
    resources:
        mem_mb=8000,
    shell:
        "python -m morphobench.embed gather --parts {input} --out {output} 2> {log}"


rule method_profiles:
    """Well profiles of a method through the one well aggregation, joined onto the plate map."""
    input:
        parts=profile_parts,
        wells="results/{dataset}/wells.parquet",
        sheet="results/{dataset}/images.parquet",
    output:
        well="results/{dataset}/profiles/{method}/well.parquet",
        qc="results/{dataset}/profiles/{method}/well_qc.tsv",
    params:
        spec=lambda w: as_json(method_spec(w.method)),
        method=config["aggregate"]["well"],
    log:
        "logs/{dataset}/profiles/{method}.log",
    benchmark:
        "benchmarks/out/{dataset}/profiles/{method}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m morphobench.embed profiles --spec {params.spec} --parts {input.parts} "
        "--wells {input.wells} --sheet {input.sheet} --aggregate {params.method} "
        "--out-well {output.well} 2> {log}"
