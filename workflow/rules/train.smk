# Trained methods (src/morphobench/training): saved splits, then one training job per dataset × method.
#   results/{dataset}/splits/{split}.tsv                   every trained method reads its split
#   results/{dataset}/models/{method}/model.pt, train_log.tsv
# A killed or failed training resumes from results/{dataset}/models/{method}/checkpoint.pt.
from morphobench.training.splits import SPLITS as _SPLITS  # noqa: E402  (no torch)

SPLIT_KINDS = sorted(_SPLITS)


rule split:
    """A saved split table (k-fold by treatment, …) of a dataset's plate map."""
    input:
        wells="results/{dataset}/wells.parquet",
    output:
        "results/{dataset}/splits/{split}.tsv",
    wildcard_constraints:
        split="|".join(SPLIT_KINDS),
    params:
        cfg=lambda w: as_json(config["splits"].get(w.split, {})),
    log:
        "logs/{dataset}/splits/{split}.log",
    priority: 50  # part of the chain to the trainings
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.training split --kind {wildcards.split} --wells {input.wells} "
        "--params {params.cfg} --out {output} 2> {log}"


rule train:
    """Train one method on the `train` rows of its split (best epoch on `val`)."""
    input:
        unpack(train_inputs),
    output:
        model="results/{dataset}/models/{method}/model.pt",
        log="results/{dataset}/models/{method}/train_log.tsv",
    params:
        spec=lambda w: as_json(method_spec(w.method)),
    log:
        "logs/{dataset}/train/{method}.log",
    benchmark:
        "benchmarks/out/{dataset}/train/{method}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: half_cores(8)
    priority: 50  # trainings start as soon as their crops exist (the longest chain)
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=lambda w: 1 if train_device(w).startswith("cuda") else 0,
    shell:
        "python -m morphobench.training train --spec {params.spec} --crops {input.crops} "
        "--split {input.split} --wells {input.wells} --out-model {output.model} --threads {threads} "
        "2> {log}"
