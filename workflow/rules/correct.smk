# Batch correction + aggregation to perturbations:
#   results/{dataset}/profiles/{method}/{correction}/{well,perturbation}.parquet
# {correction}: none, pca, center_plate, center_experiment, standardize_plate, standardize_experiment,
# pca_standardize_plate, pca_standardize_experiment, tvn — each optionally with "+arm".
# Order (MAE-W §4): correction → centre on negcons → +arm on CRISPR wells (correct.arm_level: well)
# → spherical mean per perturbation × condition.


BUILTIN_EXPRESSION = {"u2os": f"{RES}/genes/u2os_zfpkm.tsv"}  # shipped zFPKM tables, by cell line


def expression_table(dataset):
    """The zFPKM table of a dataset's cell line (correct.expression.<dataset>: a shipped table's
    name or a path), or None when none is configured."""
    value = config["correct"]["expression"].get(dataset)
    if value is None:
        return None
    return BUILTIN_EXPRESSION.get(str(value).lower(), value)


def arm_skipped(dataset):
    """True when +arm corrections of this dataset are skipped (and recorded) for lack of an
    expression table of its cell line (correct.missing_expression: skip)."""
    return (dataset_cfg(dataset)["loader"] != "simulated" and expression_table(dataset) is None
            and config["correct"]["missing_expression"] == "skip")


def arm_args(wildcards):
    """Inputs of the chromosome-arm correction: the real gene → arm and expression tables (the
    simulated screen uses real genes on real arms, so the same tables describe it)."""
    if not wildcards.correction.endswith("+arm"):
        return {}
    expr = expression_table(wildcards.dataset)
    if expr is None and dataset_cfg(wildcards.dataset)["loader"] == "simulated":
        expr = BUILTIN_EXPRESSION["u2os"]  # the simulator takes its genes' expression from the U2OS table
    if expr is None:
        raise WorkflowError(
            f"correction {wildcards.correction!r} of dataset {wildcards.dataset!r} needs the expression "
            f"(zFPKM) table of its cell line: set correct.expression.{wildcards.dataset} to 'u2os' (U2OS "
            "screens: JUMP, BBBC022) or to a gene,zfpkm table of the screen's cell line (RxRx3: HUVEC), "
            "or correct.missing_expression: skip to record the +arm rows as skipped")
    return {"gene_arms": f"{RES}/genes/gene_arms.tsv", "zfpkm": expr}


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
