# Real screens → the shared image sheet and plate map (src/morphobench/data/loaders/: one module per loader).
# A checkpoint: the plate list of a real dataset is read from its image sheet once it exists,
# so per-plate jobs are planned without listing plates in the config.
import re as _re

REAL_DATASETS = [ds for ds in DATASETS if dataset_cfg(ds)["loader"] != "simulated"]
REAL_DATASET_RE = "|".join(_re.escape(ds) for ds in REAL_DATASETS) if REAL_DATASETS else "(?!x)x"


checkpoint image_sheet:
    """Image sheet + plate map of a real screen (load_data CSV, CPJUMP1 index, pattern, BBBC022)."""
    input:
        lambda w: ([f"{RES}/cpjump1/images_index.parquet"]
                   if dataset_cfg(w.dataset)["loader"] == "cpjump1" else []),
    output:
        sheet="results/{dataset}/images.parquet",
        wells="results/{dataset}/wells.parquet",
    wildcard_constraints:
        dataset=REAL_DATASET_RE,
    params:
        cfg=lambda w: as_json(dataset_cfg(w.dataset)),
        loader=lambda w: dataset_cfg(w.dataset)["loader"],
        res=RES,
    log:
        "logs/ingest/{dataset}.log",
    benchmark:
        f"{BENCH}/ingest/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.data sheet --loader {params.loader} --params {params.cfg} --dataset {wildcards.dataset} "
        "--resources-dir {params.res:q} --out-sheet {output.sheet} --out-wells {output.wells} 2> {log:q}"
