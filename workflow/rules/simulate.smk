# The simulated Cell Painting screen (DESIGN.md "The simulated screen"; src/morphobench/simulate).
#   simulate_design   global: perturbations, phenotypes, relationships, plate maps, effects
#   simulate_plate    one job per plate: 16-bit TIFFs, label masks, illumination + cell truth
#   simulate_sheet    gathers the plates' sheet fragments into results/{dataset}/images.parquet
#   example_sites     results/figures/example_sites_{dataset}.png
# Ground truth lives in results/{dataset}/truth/ (formats: morphobench.simulate.design / .plate).
import re

SIM_DATASETS = [ds for ds in DATASETS if dataset_cfg(ds)["loader"] == "simulated"]
# A pattern that matches nothing when no dataset is simulated.
SIM_DATASET_RE = "|".join(re.escape(ds) for ds in SIM_DATASETS) if SIM_DATASETS else "(?!x)x"
SIM_TRUTH = ["perturbations", "phenotypes", "relationships", "arm_artefacts", "batch_effects",
             "plate_effects", "well_effects"]


rule simulate_design:
    """Perturbations from real CORUM complexes / zFPKM / chromosome arms, layouts and effects."""
    input:
        corum=f"{RES}/annotations/corum_complexes.tsv",
        arms=f"{RES}/genes/gene_arms.tsv",
        zfpkm=f"{RES}/genes/u2os_zfpkm.tsv",
    output:
        wells="results/{dataset}/wells.parquet",
        info="results/{dataset}/truth/design.json",
        truth=expand("results/{{dataset}}/truth/{table}.parquet", table=SIM_TRUTH),
    wildcard_constraints:
        dataset=SIM_DATASET_RE,
    params:
        sim=lambda w: as_json(sim_section(w.dataset)),
        res=lambda w, input: Path(input.corum).parent.parent,  # the resources dir
    log:
        "logs/simulate/{dataset}/design.log",
    benchmark:
        f"{BENCH}/simulate/{{dataset}}/design.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.simulate design --params {params.sim} --resources-dir {params.res:q}"
        " --dataset-dir results/{wildcards.dataset} 2> {log:q}"


rule simulate_plate:
    """Render one plate: TIFFs in results/{dataset}/images/{plate}/Images + truth files."""
    input:
        info="results/{dataset}/truth/design.json",
        wells="results/{dataset}/wells.parquet",
        effects="results/{dataset}/truth/well_effects.parquet",
        plate_effects="results/{dataset}/truth/plate_effects.parquet",
    output:
        images=directory("results/{dataset}/images/{plate}/Images"),
        sheet="results/{dataset}/images/{plate}/sheet.parquet",
        masks="results/{dataset}/truth/{plate}_masks.npz",
        illum="results/{dataset}/truth/{plate}_illumination.npz",
        cells="results/{dataset}/truth/{plate}_cells.parquet",
    wildcard_constraints:
        dataset=SIM_DATASET_RE,
    log:
        "logs/simulate/{dataset}/plate_{plate}.log",
    benchmark:
        f"{BENCH}/simulate/{{dataset}}/plate_{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda w: simulated_plate_mem_mb(sim_section(w.dataset)),
        runtime=60,
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.simulate plate --dataset-dir results/{wildcards.dataset}"
        " --plate {wildcards.plate:q} --images-dir {output.images:q} --sheet {output.sheet:q}"
        " --masks {output.masks:q} --illumination {output.illum:q} --cells {output.cells:q}"
        " 2> {log:q}"


rule simulate_sheet:
    """The image sheet of a simulated dataset (one row per site, JUMP load_data style)."""
    input:
        lambda w: expand("results/{dataset}/images/{plate}/sheet.parquet", dataset=w.dataset,
                         plate=plates(w.dataset)),
    output:
        "results/{dataset}/images.parquet",
    wildcard_constraints:
        dataset=SIM_DATASET_RE,
    log:
        "logs/simulate/{dataset}/sheet.log",
    benchmark:
        f"{BENCH}/simulate/{{dataset}}/sheet.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.simulate gather --out {output:q} {input:q} 2> {log:q}"


rule example_sites:
    """Montage of a few simulated sites per channel (negcon vs strong perturbations)."""
    input:
        sheet="results/{dataset}/images.parquet",
        wells="results/{dataset}/wells.parquet",
        perts="results/{dataset}/truth/perturbations.parquet",
    output:
        report(
            "results/figures/example_sites_{dataset}.png",
            caption="../report/example_sites.rst",
            category=report_category("example_sites"),
            subcategory="Figures",
            labels=lambda w: report_labels("figure", f"example_sites_{w.dataset}", "example_sites"),
        ),
    wildcard_constraints:
        dataset=SIM_DATASET_RE,
    log:
        "logs/simulate/{dataset}/example_sites.log",
    benchmark:
        f"{BENCH}/simulate/{{dataset}}/example_sites.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/morphobench.yaml"
    shell:
        "python -m morphobench.simulate example-sites --dataset-dir results/{wildcards.dataset}"
        " --out {output:q} 2> {log:q}"
