# Image processing, one job per plate and stage (REFERENCE §1; src/morphobench/images):
#   illum_calc → segment → crops (cell128, cell112, tile256) and CellProfiler features → well profiles
# images.backend: "inprocess" (default; scikit-image + cp-measure) or "cellprofiler"
# (cellprofiler_library in its own numpy<2 environment, see workflow/scripts/setup_cellprofiler_env.sh).

IMG = config["images"]
DS = "results/{dataset}"


rule illum_calc:
    """Retrospective illumination functions of one plate (one float32 function per channel) + PNG."""
    input:
        sheet=f"{DS}/images.parquet",
    output:
        npz=f"{DS}/illum/{{plate}}.npz",
        png=f"{DS}/illum/{{plate}}.png",
    params:
        cmd=images_cmd("illum", IMG),
        cfg=as_json(IMG["illum"]),
    log:
        "logs/{dataset}/illum/{plate}.log",
    benchmark:
        "benchmarks/out/{dataset}/illum/{plate}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    priority: 50  # the chain to the trainings (the longest one) first
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{params.cmd} --sheet {input.sheet} --plate {wildcards.plate} --params {params.cfg} "
        "--out {output.npz} --png {output.png} 2> {log}"


rule segment:
    """Nuclei (DNA) then cells (seeded watershed) of one plate: label store + object table + QC."""
    input:
        sheet=f"{DS}/images.parquet",
        illum=f"{DS}/illum/{{plate}}.npz",
    output:
        labels=directory(f"{DS}/labels/{{plate}}.zarr"),
        objects=f"{DS}/objects/{{plate}}.parquet",
        qc=f"{DS}/qc/{{plate}}.parquet",
    params:
        cmd=images_cmd("segment", IMG),
        cfg=as_json(IMG["segment"]),
    log:
        "logs/{dataset}/segment/{plate}.log",
    benchmark:
        "benchmarks/out/{dataset}/segment/{plate}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    priority: 50  # the chain to the trainings (the longest one) first
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{params.cmd} --sheet {input.sheet} --plate {wildcards.plate} --illum {input.illum} "
        "--params {params.cfg} --labels {output.labels} --out {output.objects} "
        "--qc {output.qc} 2> {log}"


rule crops:
    """Single-cell crops (cell128 TEAMs, cell112 Campfire) or field tiles (tile256 MAE) of one plate."""
    input:
        sheet=f"{DS}/images.parquet",
        illum=f"{DS}/illum/{{plate}}.npz",
        objects=f"{DS}/objects/{{plate}}.parquet",
        labels=f"{DS}/labels/{{plate}}.zarr",
    output:
        store=directory(f"{DS}/crops/{{kind}}/plates/{{plate}}.zarr"),
        index=f"{DS}/crops/{{kind}}/plates/{{plate}}.parquet",
    wildcard_constraints:
        kind="cell128|cell112|tile256",
    params:
        cfg=lambda w: as_json(IMG["crops"].get(w.kind, {})),
    log:
        "logs/{dataset}/crops/{kind}/{plate}.log",
    benchmark:
        "benchmarks/out/{dataset}/crops/{kind}/{plate}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    priority: 50  # the chain to the trainings (the longest one) first
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m morphobench.images crops --sheet {input.sheet} --plate {wildcards.plate} "
        "--illum {input.illum} --kind {wildcards.kind} --objects {input.objects} --labels {input.labels} "
        "--params {params.cfg} --out {output.store} --index {output.index} 2> {log}"


rule crop_index:
    """Dataset-level crop index (store path + row of every crop) over the per-plate stores."""
    input:
        lambda w: expand(f"results/{w.dataset}/crops/{w.kind}/plates/{{plate}}.parquet", plate=plates(w.dataset)),
    output:
        f"{DS}/crops/{{kind}}/index.parquet",
    wildcard_constraints:
        kind="cell128|cell112|tile256",
    log:
        "logs/{dataset}/crops/{kind}/index.log",
    priority: 50  # the chain to the trainings (the longest one) first
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.images gather-crops --out {output} {input} 2> {log}"


rule cp_features:
    """CellProfiler measurements of one plate (object level) and their per-well medians."""
    input:
        sheet=f"{DS}/images.parquet",
        illum=f"{DS}/illum/{{plate}}.npz",
        labels=f"{DS}/labels/{{plate}}.zarr",
        wells=f"{DS}/wells.parquet",
    output:
        objects=f"{DS}/cellprofiler/{{plate}}.objects.parquet",
        wells=f"{DS}/cellprofiler/{{plate}}.wells.parquet",
    params:
        cmd=images_cmd("features", IMG),
        cfg=as_json(IMG["features"]),
    log:
        "logs/{dataset}/cp_features/{plate}.log",
    benchmark:
        "benchmarks/out/{dataset}/cp_features/{plate}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: IMG["feature_threads"]
    resources:
        mem_mb=6000,
        runtime=120,
    shell:
        "{params.cmd} --sheet {input.sheet} --plate {wildcards.plate} --illum {input.illum} "
        "--labels {input.labels} --params {params.cfg} --plate-map {input.wells} --out {output.objects} "
        "--wells-out {output.wells} --threads {threads} 2> {log}"


rule illum_apply:
    """Optional (images.materialize_illum): illumination-corrected 16-bit copies of one plate's
    images + their image sheet. Downstream stages do not need them (they correct on the fly)."""
    input:
        sheet=f"{DS}/images.parquet",
        illum=f"{DS}/illum/{{plate}}.npz",
    output:
        images=directory(f"{DS}/corrected/{{plate}}"),
        sheet=f"{DS}/corrected/{{plate}}.parquet",
    log:
        "logs/{dataset}/illum_apply/{plate}.log",
    benchmark:
        "benchmarks/out/{dataset}/illum_apply/{plate}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m morphobench.images apply-illum --sheet {input.sheet} --plate {wildcards.plate} "
        "--illum {input.illum} --out-dir {output.images} --out-sheet {output.sheet} 2> {log}"
