# Batch correction + aggregation to perturbations:
#   results/{dataset}/profiles/{method}/{correction}/{well,perturbation}.parquet
# {correction}: none, pca, center_plate, center_experiment, standardize_plate, standardize_experiment,
# pca_standardize_plate, pca_standardize_experiment, tvn — each optionally with `+arm`.
# Order (MAE-W §4): correction → centre on negcons → +arm on CRISPR wells (correct.arm_level: well)
# → spherical mean per perturbation × condition.


rule correct:
    input:
        unpack(arm_args),
        well="results/{dataset}/profiles/{method}/well.parquet",
    output:
        well="results/{dataset}/profiles/{method}/{correction}/well.parquet",
        pert="results/{dataset}/profiles/{method}/{correction}/perturbation.parquet",
    params:
        cfg=lambda w: as_json({"aggregation": config["aggregate"]["perturbation"],
                               "condition": config["aggregate"]["condition"],
                               "arm_level": config["correct"]["arm_level"],
                               "min_arm_genes": config["correct"]["min_arm_genes"],
                               "pca_components": config["correct"]["pca_components"],
                               "tvn_reg": config["correct"]["tvn_reg"],
                               "seed": config["seed"]}),
        arm=arm_flags,
    log:
        "logs/{dataset}/correct/{method}/{correction}.log",
    benchmark:
        "benchmarks/out/{dataset}/correct/{method}/{correction}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m morphobench.correct --well {input.well} --correction '{wildcards.correction}' "
        "--out-well {output.well} --out-pert {output.pert} --params {params.cfg} {params.arm} "
        "2> {log}"
