"""Real resources: pinned package fetch (checksums, offline, LFS stubs) and the extracted tables.

Uses the session fixture ``resources_dir`` from conftest.py (builds missing tables once, < 1 min
from nothing). Synthetic unit tests use tmp_path and never touch the network.
"""

from __future__ import annotations

import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from morphobench.io import MorphobenchError
from morphobench.resources import (
    ANNOTATION_SOURCES,
    PACKAGES,
    RESOURCE_TABLES,
    build_table,
    ensure_all,
    fetch_package,
    gene_arms_from_tables,
    is_lfs_pointer,
    load_annotation,
    load_corum_complexes,
    load_gene_arms,
    load_zfpkm,
    normalize_pairs,
    package_spec,
    parse_corum_clusters,
    read_member,
    table_packages,
    zfpkm_per_gene,
)
from morphobench.resources import packages as P
from morphobench.resources import tables as T
from morphobench.resources.__main__ import main as cli

LFS_STUB = (b"version https://git-lfs.github.com/spec/v1\n"
            b"oid sha256:6adf1afc7d28881d44f13fd487da64fc5893458e70e2ac97a5cd7ee1dc128653\n"
            b"size 6599738\n")

# Measured on the pinned files (2026-11): exact counts, asserted within a small range.
EXPECTED_ROWS = {
    "annotations/CORUM.csv": 37_649,
    "annotations/HuMAP.csv": 58_538,
    "annotations/Reactome.csv": 18_565,
    "annotations/SIGNOR.csv": 11_617,
    "annotations/StringDB.csv": 58_059,
    "annotations/corum_complexes.tsv": 2_696,
    "jump/plate.parquet": 2_250,
    "jump/well.parquet": 1_046_926,
    "jump/crispr.parquet": 7_977,
    "genes/gene_arms.tsv": 28_089,
    "genes/u2os_zfpkm.tsv": 19_696,
    "cpjump1/images_index.parquet": 1_495_400,
}


def _n_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return len(_read(path))


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str,
                       keep_default_na=False)


# ------------------------------------------------------------------------------ tables (real)

def test_resource_tables_list():
    assert RESOURCE_TABLES[-1] == "LICENSES.md"
    assert len(RESOURCE_TABLES) == len(set(RESOURCE_TABLES)) == 15
    for rel in RESOURCE_TABLES:
        for spec in table_packages(rel):
            assert spec in PACKAGES


def test_all_tables_present(resources_dir):
    for rel in RESOURCE_TABLES:
        assert (resources_dir / rel).stat().st_size > 0, rel


@pytest.mark.parametrize("rel", sorted(EXPECTED_ROWS))
def test_row_counts(resources_dir, rel):
    n = _n_rows(resources_dir / rel)
    expected = EXPECTED_ROWS[rel]
    assert 0.95 * expected <= n <= 1.05 * expected, (rel, n)


@pytest.mark.parametrize("source", ANNOTATION_SOURCES)
def test_annotations_normalized(resources_dir, source):
    raw = _read(resources_dir / f"annotations/{source}.csv")
    assert list(raw.columns) == ["entity1", "entity2"]
    df = load_annotation(source, resources_dir)
    assert len(df) == len(raw)
    assert (df["entity1"] < df["entity2"]).all()
    assert not df.duplicated().any()
    assert (df["entity1"] != "").all() and (df["entity2"] != "").all()


def test_corum_complexes(resources_dir):
    df = _read(resources_dir / "annotations/corum_complexes.tsv")
    assert list(df.columns) == ["complex", "n_genes", "genes"]
    assert df["complex"].is_unique
    assert (df["n_genes"].astype(int) == df["genes"].str.split(";").str.len()).all()
    cx = load_corum_complexes(resources_dir)
    assert cx["(E.F.G) complex"] == ["SNRPE", "SNRPF", "SNRPG"]
    assert all(len(g) >= 1 for g in cx.values())
    # members of a complex are pairs in the CORUM pair table
    pairs = set(map(tuple, load_annotation("CORUM", resources_dir).to_numpy()))
    assert ("SNRPE", "SNRPF") in pairs


def test_jump_metadata(resources_dir):
    plate = pd.read_parquet(resources_dir / "jump/plate.parquet")
    well = pd.read_parquet(resources_dir / "jump/well.parquet")
    crispr = pd.read_parquet(resources_dir / "jump/crispr.parquet")
    assert list(plate.columns) == ["Metadata_Source", "Metadata_Batch", "Metadata_Plate",
                                   "Metadata_PlateType"]
    assert list(well.columns) == ["Metadata_Source", "Metadata_Plate", "Metadata_Well",
                                  "Metadata_JCP2022"]
    assert list(crispr.columns) == ["Metadata_JCP2022", "Metadata_NCBI_Gene_ID", "Metadata_Symbol"]
    assert str(crispr["Metadata_NCBI_Gene_ID"].dtype) == "Int64"
    assert crispr["Metadata_NCBI_Gene_ID"].isna().sum() == 2  # no-guide, non-targeting
    assert "CRISPR" in set(plate["Metadata_PlateType"])
    assert crispr["Metadata_JCP2022"].is_unique


def test_gene_arms(resources_dir):
    df = load_gene_arms(resources_dir)
    assert list(df.columns) == ["gene", "chromosome", "start", "end", "arm"]
    assert df["gene"].is_unique
    assert not df["gene"].str.startswith("LOC").any()
    assert (df["start"] < df["end"]).all()
    assert df["arm"].str.fullmatch(r"([1-9]|1[0-9]|2[0-2]|X|Y)[pq]").all()
    assert (df["arm"].str[:-1] == df["chromosome"]).all()
    arms = df.set_index("gene")["arm"]
    known = {"TP53": "17p", "MYC": "8q", "BRCA1": "17q", "BRCA2": "13q", "EGFR": "7p",
             "KRAS": "12p", "PTEN": "10q", "CDKN2A": "9p", "XIST": "Xq"}
    assert {g: arms[g] for g in known} == known
    assert 40 <= df["arm"].nunique() <= 48
    assert "LOX" in arms.index  # not swept up by the LOC filter


def test_u2os_zfpkm(resources_dir):
    df = load_zfpkm(resources_dir)
    assert list(df.columns) == ["gene", "zfpkm", "expressed", "n_values"]
    assert df["gene"].is_unique
    assert df["expressed"].dtype == bool
    assert (df["expressed"] == (df["zfpkm"] >= -3)).all()
    assert 0.15 < (~df["expressed"]).mean() < 0.35  # measured: 4,743 of 19,696 unexpressed
    assert df.set_index("gene").loc["GAPDH", "expressed"]
    # most expressed genes have an arm (same gene symbols)
    arms = load_gene_arms(resources_dir)
    assert len(set(df["gene"]) & set(arms["gene"])) > 0.9 * len(df)


def test_cpjump1_index(resources_dir):
    import pyarrow.parquet as pq

    path = resources_dir / "cpjump1/images_index.parquet"
    names = pq.ParquetFile(path).schema_arrow.names
    for col in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ChannelName",
                "Metadata_FileUrl", "Metadata_Filename"):
        assert col in names
    head = pq.read_table(path, columns=["Metadata_Plate", "Metadata_Filename"]).slice(0, 1000)
    assert head.column("Metadata_Filename")[0].as_py().endswith(".tiff")


def test_stardist_images(resources_dir):
    import tifffile

    img = tifffile.imread(resources_dir / "stardist/img2d.tif")
    mask = tifffile.imread(resources_dir / "stardist/mask2d.tif")
    assert img.shape == mask.shape and img.ndim == 2
    assert len(np.unique(mask[mask > 0])) > 10
    assert img[mask > 0].mean() > img[mask == 0].mean()  # nuclei are brighter than background


def test_licenses(resources_dir):
    text = (resources_dir / "LICENSES.md").read_text()
    for word in ("CORUM", "SIGNOR", "non-commercial", "HuMAP", "StringDB", "CC BY 4.0",
                 "Reactome", "CC0", "BSD-3-Clause", "stardist", "jump-image-datasets"):
        assert word in text


def test_ensure_all_idempotent_and_fast(resources_dir):
    before = {r: (resources_dir / r).stat().st_mtime_ns for r in RESOURCE_TABLES}
    t0 = time.perf_counter()
    out = ensure_all(resources_dir, offline=True)
    assert time.perf_counter() - t0 < 1.0
    assert set(out) == set(RESOURCE_TABLES)
    assert {r: p.stat().st_mtime_ns for r, p in out.items()} == before


def test_rebuild_offline_from_present_package(resources_dir, tmp_path):
    """A table rebuilds offline from a placed package file (sha256 verified), atomically."""
    spec = package_spec("efaar-benchmarking", "1.0")
    (tmp_path / "packages").mkdir()
    os.link(resources_dir / "packages" / spec.filename, tmp_path / "packages" / spec.filename)
    out = build_table("annotations/SIGNOR.csv", tmp_path, offline=True)
    assert out.read_bytes() == (resources_dir / "annotations/SIGNOR.csv").read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["SIGNOR.csv"]


# ------------------------------------------------------------------ fetch: pins, errors, stubs

def test_package_spec_lookup():
    by_name = package_spec("efaar-benchmarking", "0.1.0")
    assert package_spec("efaar_benchmarking==0.1.0") == by_name
    assert package_spec(by_name.filename) == by_name
    assert len({(s.name, s.version) for s in PACKAGES}) == len(PACKAGES) == 4
    assert all(re.fullmatch(r"[0-9a-f]{64}", s.sha256) for s in PACKAGES)
    with pytest.raises(MorphobenchError, match="not pinned"):
        package_spec("stardist", "0.9.1")


def test_offline_missing_names_file_and_dir(tmp_path):
    spec = package_spec("stardist", "0.9.2")
    with pytest.raises(MorphobenchError) as err:
        fetch_package("stardist", "0.9.2", tmp_path / "packages", offline=True)
    msg = str(err.value)
    assert spec.filename in msg and str(tmp_path / "packages") in msg
    assert "pip download" in msg and "--platform manylinux_2_28_x86_64" in msg


def test_wrong_checksum_download_refused(tmp_path, monkeypatch):
    spec = package_spec("efaar-benchmarking", "1.0")

    def fake_download(s, dest):
        (dest / s.filename).write_bytes(b"not the pinned wheel")

    monkeypatch.setattr(P, "_pip_download", fake_download)
    pkgs = tmp_path / "packages"
    with pytest.raises(MorphobenchError) as err:
        fetch_package(spec.name, spec.version, pkgs)
    msg = str(err.value)
    assert spec.filename in msg and spec.sha256 in msg and "not kept" in msg
    assert list(pkgs.iterdir()) == []  # nothing left behind, not even the temp dir


def test_existing_wrong_checksum_removed(tmp_path):
    spec = package_spec("efaar-benchmarking", "0.1.0")
    pkgs = tmp_path / "packages"
    pkgs.mkdir()
    (pkgs / spec.filename).write_bytes(b"corrupt")
    with pytest.raises(MorphobenchError, match=spec.sha256):
        fetch_package(spec.name, spec.version, pkgs, offline=True)
    assert not (pkgs / spec.filename).exists()


def test_existing_good_file_reused_without_pip(resources_dir, tmp_path, monkeypatch):
    spec = package_spec("efaar-benchmarking", "1.0")
    pkgs = tmp_path / "packages"
    pkgs.mkdir()
    os.link(resources_dir / "packages" / spec.filename, pkgs / spec.filename)

    def no_download(*a):
        raise AssertionError("must not download")

    monkeypatch.setattr(P, "_pip_download", no_download)
    assert fetch_package(spec.name, spec.version, pkgs) == pkgs / spec.filename


def _zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_lfs_stub_refused(tmp_path):
    assert is_lfs_pointer(LFS_STUB) and not is_lfs_pointer(b"entity1,entity2\nA,B\n")
    pkg = _zip_with(tmp_path / "fake.whl", {"data/u2os.csv": LFS_STUB})
    with pytest.raises(MorphobenchError, match="Git-LFS pointer stub") as err:
        read_member(pkg, "data/u2os.csv")
    assert "data/u2os.csv" in str(err.value) and "fake.whl" in str(err.value)
    with pytest.raises(MorphobenchError, match="no member"):
        read_member(pkg, "data/absent.csv")


def test_lfs_stub_table_leaves_no_output(tmp_path, monkeypatch):
    """A stub inside a package fails the build and leaves no (partial) table behind."""
    pkg = _zip_with(tmp_path / "fake.whl", {
        "efaar_benchmarking/benchmark_annotations/CORUM.txt": LFS_STUB,
        "stardist/data/images/img2d.tif": LFS_STUB})
    monkeypatch.setattr(T, "fetch_package", lambda *a, **k: pkg)
    res = tmp_path / "res"
    for rel in ("annotations/CORUM.csv", "stardist/img2d.tif"):
        with pytest.raises(MorphobenchError, match="Git-LFS"):
            build_table(rel, res)
        assert not (res / rel).exists()
        parent = (res / rel).parent
        assert not parent.exists() or list(parent.iterdir()) == []


def test_unknown_table():
    with pytest.raises(MorphobenchError, match="unknown resource table"):
        build_table("annotations/GO.csv", "resources")


def test_cli_offline_error_and_list(tmp_path, capsys):
    assert cli(["fetch", "jump-image-datasets==0.3.0", "--offline",
                "--resources-dir", str(tmp_path), "--log", str(tmp_path / "x.log")]) == 1
    assert "jump_image_datasets-0.3.0-py3-none-any.whl" in (tmp_path / "x.log").read_text()
    assert cli(["list"]) == 0
    assert "genes/gene_arms.tsv\tefaar_benchmarking-0.1.0-py2.py3-none-any.whl" in (
        capsys.readouterr().out)


# ------------------------------------------------------------------ transformations (synthetic)

def test_normalize_pairs():
    df = pd.DataFrame({"entity1": ["B", "A", " A", "C", "D", "", None, "E"],
                       "entity2": ["A", "B", "B ", "C", "E", "X", "Y", "D"],
                       "extra": range(8)})
    out = normalize_pairs(df)
    assert out.to_dict("list") == {"entity1": ["A", "D"], "entity2": ["B", "E"]}
    with pytest.raises(MorphobenchError, match="entity2"):
        normalize_pairs(pd.DataFrame({"entity1": ["A"]}))


def test_load_annotation_user_csv(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("entity1,entity2,score\nTP53,MDM2,1\nMDM2,TP53,2\nNA,TP53,3\nX,X,4\n")
    out = load_annotation(path)
    assert out.to_dict("list") == {"entity1": ["MDM2", "NA"], "entity2": ["TP53", "TP53"]}
    with pytest.raises(MorphobenchError, match="neither"):
        load_annotation("GO", tmp_path)


def test_parse_corum_clusters():
    text = "cx B\tG2 G1 G1\ncx A\tG3\ncx B\tG4\n"
    df = parse_corum_clusters(text)
    assert df.to_dict("list") == {"complex": ["cx A", "cx B"], "n_genes": [1, 3],
                                  "genes": ["G3", "G1;G2;G4"]}


def test_gene_arms_rules():
    refseq = pd.DataFrame([
        # name2, chrom, txStart, txEnd
        ("P1", "chr1", 100, 200),          # p: ends before the midpoint (500)
        ("Q1", "chr1", 450, 520),          # q: starts before, ends past the midpoint
        ("M1", "chr1", 100, 150),          # two transcripts: min start 100, max end 600 -> q
        ("M1", "chr1", 300, 600),
        ("M1", "chr1_KI270706v1_random", 1, 2),  # non-primary contigs ignored
        ("PAR", "chrX", 10, 20),           # on two primary chromosomes -> excluded
        ("PAR", "chrY", 10, 20),
        ("LOC123", "chr1", 10, 20),        # uncharacterised -> excluded
        ("LOX", "chr1", 10, 20),           # real gene starting LO -> kept
        ("ALT", "chr2_KI270894v1_alt", 1, 2),  # only on an alt contig -> absent
    ], columns=["name2", "chrom", "txStart", "txEnd"])
    cen = pd.DataFrame([("chr1", 400, 500), ("chr1", 500, 600), ("chrX", 0, 5), ("chrY", 0, 5)],
                       columns=["chrom", "chromStart", "chromEnd"])
    out = gene_arms_from_tables(refseq, cen).set_index("gene")
    assert out["arm"].to_dict() == {"LOX": "1p", "P1": "1p", "M1": "1q", "Q1": "1q"}
    assert tuple(out.loc["M1", ["chromosome", "start", "end"]]) == ("1", 100, 600)


def test_zfpkm_per_gene():
    expr = pd.DataFrame({"gene": ["A", "A", "A", "B", "B", "C"],
                         "zfpkm": [-1e6, 1.0, 2.0, -4.0, -3.0, -3.0]})
    out = zfpkm_per_gene(expr).set_index("gene")
    assert out["zfpkm"].to_dict() == {"A": 1.0, "B": -3.5, "C": -3.0}
    assert out["expressed"].to_dict() == {"A": True, "B": False, "C": True}
    assert out["n_values"].to_dict() == {"A": 3, "B": 2, "C": 1}


def test_cli_targets_as_paths():
    from morphobench.resources.__main__ import _fetch_target, _table_target

    assert _table_target("genes/gene_arms.tsv", Path("res")) == ("genes/gene_arms.tsv", Path("res"))
    assert _table_target("/x/y/annotations/CORUM.csv", Path("res")) == (
        "annotations/CORUM.csv", Path("/x/y"))
    with pytest.raises(MorphobenchError, match="not a resource table"):
        _table_target("/x/y/other.csv", Path("res"))
    spec = package_spec("stardist", "0.9.2")
    assert _fetch_target(f"/r/packages/{spec.filename}", Path("res")) == (spec, Path("/r/packages"))
    assert _fetch_target("stardist==0.9.2", Path("res")) == (spec, Path("res/packages"))
