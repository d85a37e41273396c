"""Text of ``<resources>/LICENSES.md``: where each fetched resource comes from and its terms."""

LICENSES_MD = """\
# Licences of the fetched resources

Everything under this directory was fetched by morphobench from pinned registry (PyPI) package
files, checked against pinned sha256 values (`morphobench.resources.PACKAGES`) and extracted.
Nothing here is part of morphobench itself, and none of it is committed to the repository. The
terms below are those stated by the packages and by the original data providers; check them
before any use beyond research benchmarking.

## annotations/ — known gene–gene relationships

Source: `efaar-benchmarking==1.0` (Recursion, EFAAR benchmarking; package code Apache-2.0),
`efaar_benchmarking/benchmark_annotations/` — its `LICENSE` file there states the terms per file:

| file | original source | licence |
|---|---|---|
| `CORUM.csv`, `corum_complexes.tsv` | CORUM (mammalian protein complexes) | **CC BY-NC 4.0 — \
non-commercial use only** |
| `HuMAP.csv` | hu.MAP 2.0 (human protein complex map) | CC BY 4.0 (attribution required) |
| `Reactome.csv` | Reactome pathway knowledgebase | CC0 1.0 (public domain) |
| `SIGNOR.csv` | SIGNOR (signalling network database) | **CC BY-NC 4.0 — non-commercial use only** |
| `StringDB.csv` | STRING protein–protein interaction database | CC BY 4.0 (attribution required) |

(The package's `LICENSE` names CORUM "CC-BY-NC 4.0" but links the CC BY 4.0 deed; CORUM's own
terms restrict use to non-commercial purposes, so treat it as non-commercial.)

## jump/ — JUMP cpg0016 plate, well and CRISPR metadata

Source: `efaar-benchmarking==0.1.0`, `notebooks/data/{plate,well,crispr}.csv.gz`, copies of the
JUMP Cell Painting consortium metadata (github.com/jump-cellpainting/datasets) for the Cell
Painting Gallery dataset cpg0016-jump. Licence: CC0 1.0 (public domain), as all Cell Painting
Gallery data.

## genes/ — gene → chromosome arm, U2OS expression

Source: `efaar-benchmarking==0.1.0`, `notebooks/data/`:
- `gene_arms.tsv` is derived from `ncbirefseq_hg38.tsv.gz` (UCSC Table Browser, track NCBI RefSeq,
  hg38; NCBI RefSeq is in the public domain) and `centromeres_hg38.tsv` (UCSC hg38 centromere
  models; UCSC annotation tables are freely usable).
- `u2os_zfpkm.tsv` is derived from `u2os.csv` (U2OS RNA-seq expression as zFPKM, shipped with the
  EFAAR benchmarking notebooks under the package's Apache-2.0 licence).

## cpjump1/ — CPJUMP1 image index

Source: `jump-image-datasets==0.3.0` (WayScience, package BSD-3-Clause),
`jump_image_datasets/jump_pilot/data/2020_11_04_CPJUMP1_all_plates.parquet`: the image index of the
JUMP pilot dataset cpg0000-jump-pilot (Chandrasekaran et al. 2024) in the Cell Painting Gallery.
Licence of the data: CC0 1.0 (public domain).

## stardist/ — nuclei image with ground-truth instance masks

Source: `stardist==0.9.2` (wheel
`stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl`),
`stardist/data/images/{img2d,mask2d}.tif`. Licence: BSD-3-Clause (Copyright (c) 2018-2025,
Uwe Schmidt, Martin Weigert).
"""
