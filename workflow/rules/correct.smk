# Batch correction + aggregation to perturbations:
#   results/{dataset}/profiles/{method}/{correction}/{well,perturbation}.parquet
# {correction}: none, pca, center_plate, center_experiment, standardize_plate, standardize_experiment,
# pca_standardize_plate, pca_standardize_experiment, tvn — each optionally with "+arm".


def arm_args(wildcards):
    """Inputs of the chromosome-arm correction: the real gene → arm and expression tables (the
    simulated screen uses real genes on real arms, so the same tables describe it)."""
    if not wildcards.correction.endswith("+arm"):
        return {}
    return {"gene_arms": f"{RES}/genes/gene_arms.tsv", "zfpkm": f"{RES}/genes/u2os_zfpkm.tsv"}


def arm_flags(wildcards, input):
    flags = []
    for name, flag in (("truth", "--truth"), ("gene_arms", "--gene-arms"), ("zfpkm", "--zfpkm")):
        if name in input.keys():
            flags.append(f"{flag} {input[name]}")
    return " ".join(flags)


rule correct:
    input:
        unpack(arm_args),
        well="results/{dataset}/profiles/{method}/well.parquet",
    output:
        well="results/{dataset}/profiles/{method}/{correction}/well.parquet",
        pert="results/{dataset}/profiles/{method}/{correction}/perturbation.parquet",
    params:
        cfg=lambda w: as_json({"aggregation": config["aggregate"]["perturbation"],
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
