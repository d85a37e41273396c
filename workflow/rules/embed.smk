# Methods → well-level profiles: results/{dataset}/profiles/{method}/well.parquet
# (simple baselines here; CellProfiler features in images.smk; trained models in train.smk)


rule random_profiles:
    """`random` baseline: one fixed-seed 1,024-D vector per well."""
    input:
        wells="results/{dataset}/wells.parquet",
        sheet="results/{dataset}/images.parquet",
    output:
        "results/{dataset}/profiles/random/well.parquet",
    params:
        dim=lambda w: config["embed"]["random"]["dim"],
        seed=lambda w: config["embed"]["random"]["seed"],
    log:
        "logs/{dataset}/profiles/random.log",
    benchmark:
        "benchmarks/out/{dataset}/profiles/random.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m morphobench.embed random --wells {input.wells} --sheet {input.sheet} "
        "--out {output} --dim {params.dim} --seed {params.seed} 2> {log}"


rule pixel_stats_plate:
    """`pixel_stats` baseline: 30 intensity statistics per site of one plate (illumination corrected)."""
    input:
        sheet="results/{dataset}/images.parquet",
        illum="results/{dataset}/illum/{plate}.npz",
    output:
        "results/{dataset}/profiles/pixel_stats/plates/{plate}.parquet",
    log:
        "logs/{dataset}/profiles/pixel_stats/{plate}.log",
    benchmark:
        "benchmarks/out/{dataset}/profiles/pixel_stats/{plate}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m morphobench.embed pixel-stats --sheet {input.sheet} --plate {wildcards.plate} "
        "--illum {input.illum} --out {output} 2> {log}"


rule pixel_stats_wells:
    input:
        parts=lambda w: expand("results/{{dataset}}/profiles/pixel_stats/plates/{plate}.parquet",
                               plate=plates(w.dataset)),
        wells="results/{dataset}/wells.parquet",
        sheet="results/{dataset}/images.parquet",
    output:
        "results/{dataset}/profiles/pixel_stats/well.parquet",
    params:
        method=config["aggregate"]["well"],
    log:
        "logs/{dataset}/profiles/pixel_stats.log",
    benchmark:
        "benchmarks/out/{dataset}/profiles/pixel_stats.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.embed gather --parts {input.parts} --wells {input.wells} "
        "--sheet {input.sheet} --method {params.method} --out {output} 2> {log}"
