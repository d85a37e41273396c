"""BBBC036 / BBBC037 loaders (morphobench.data.loaders.bbbc036 / bbbc037 / broad_ixm / moa).

Fixture trees in tmp_path: the Cell Image Library layout ``<plate>-<ChannelFolder>/<prefix>_<well>
_s<site>_w<k><UUID>.tif`` (real 16-bit TIFFs, 4×4, value k in channel k), 2 plates × 3 wells × 2
sites × 5 channel folders, plus a stray thumbnail and one incomplete site; per-well metadata CSVs
in the published column names, and MoA tables.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from morphobench.data import loaders as L
from morphobench.data.tables import (
    CHANNELS,
    filename_col,
    pathname_col,
    sheet_channels,
    validate_image_sheet,
    validate_plate_map,
)
from morphobench.io import MorphobenchError

CP5 = list(CHANNELS)
#: channel folders in the order of their ``_w<k>`` file index (w1 Hoechst … w5 Mito)
FOLDERS = ["Hoechst", "ERSyto", "ERSytoBleed", "Ph_golgi", "Mito"]
PLATES = ("24277", "24278")
WELLS = ("a01", "b02", "c03")


def _tiff(path: Path, value: int) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full((4, 4), value, np.uint16))


def _ixm_tree(root: Path, prefix: str = "cdp2bioactives", plates=PLATES, wells=WELLS,
              sites=(1, 2), nest: str = "") -> Path:
    """``root/[nest/]<plate>-<folder>/<prefix>_<well>_s<site>_w<k><UUID>.tif``, value k."""
    for plate in plates:
        for k, folder in enumerate(FOLDERS, start=1):
            d = root / nest / f"{plate}-{folder}" if nest else root / f"{plate}-{folder}"
            for w in wells:
                for s in sites:
                    uuid = f"{k}{s}{int(plate):X}-9E4B-4C1D-8A7F-0123456789AB"
                    _tiff(d / f"{prefix}_{w}_s{s}_w{k}{uuid}.tif", k)
    return root


def _bbbc036_metadata(path: Path) -> list[Path]:
    """One mean_well_profiles.csv per plate (published columns + feature columns)."""
    rows = {
        "24277": [("a01", "", "mock", "0"), ("b02", "BRD-K11111111-001-01-1", "treated", "10"),
                  ("c03", "BRD-K22222222-003-02-5", "treated", "5")],
        "24278": [("a01", "DMSO", "mock", "0"), ("b02", "BRD-K11111111-001-01-1", "treated", "10"),
                  ("c03", "BRD-K33333333-001-01-9", "treated", "10")],
    }
    out = []
    for plate, recs in rows.items():
        df = pd.DataFrame(recs, columns=["Metadata_Well", "Metadata_broad_sample",
                                         "Metadata_ASSAY_WELL_ROLE", "Metadata_mmoles_per_liter"])
        df.insert(0, "Metadata_Plate", plate)
        df["Metadata_Plate_Map_Name"] = "C-7161-01-LM6-001"
        df["Cells_AreaShape_Area"] = [100.5, 200.25, 300.0]
        df["Nuclei_Intensity_MeanIntensity_DNA"] = [0.1, 0.2, 0.3]
        f = path / f"Plate_{plate}" / "profiles" / "mean_well_profiles.csv"
        f.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(f, index=False)
        out.append(f)
    return out


def _compound_moa(path: Path) -> Path:
    """A Repurposing-Hub-like table: BRD ids with another batch suffix, a duplicate key, a row
    without MoA, a compound absent from the screen."""
    pd.DataFrame({
        "broad_id": ["BRD-K11111111-001-05-3", "BRD-K22222222-003-02-5", "BRD-K22222222-003-02-5",
                     "BRD-K44444444-001-01-1", "BRD-K99999999-001-01-1"],
        "pert_iname": ["vorinostat-ish", "cdk-ish", "cdk-ish", "nothing", "elsewhere"],
        "moa": ["tubulin polymerization inhibitor|HDAC inhibitor", "CDK inhibitor",
                "glycogen synthase kinase inhibitor|CDK inhibitor", "", "EGFR inhibitor"],
        "target": ["HDAC1", "CDK2", "GSK3B", "", "EGFR"],
    }).to_csv(path, sep="\t", index=False)
    return path


def _params036(tmp_path: Path, **kw) -> dict:
    root = tmp_path / "BBBC036" / "images"
    if not root.exists():
        _ixm_tree(root)
        # a stray ImageXpress thumbnail (does not match: reported) and a non-image (ignored)
        _tiff(root / "24277-Hoechst" / "cdp2bioactives_a01_s1_w1_thumbABCDEF.tif", 9)
        (root / "24277-Hoechst" / "Thumbs.db").write_bytes(b"x")
        # one incomplete site: 24278 c03 s2 lacks its Mito image
        for f in (root / "24278-Mito").glob("cdp2bioactives_c03_s2_w5*.tif"):
            f.unlink()
        _bbbc036_metadata(tmp_path / "BBBC036" / "gigascience_upload")
        _compound_moa(tmp_path / "BBBC036" / "repurposing.tsv")
    return {"image_root": str(root),
            "metadata": str(tmp_path / "BBBC036" / "gigascience_upload" / "Plate_*" / "profiles"
                            / "mean_well_profiles.csv"),
            "moa_table": {"path": str(tmp_path / "BBBC036" / "repurposing.tsv"), "key": "broad_id",
                          "moa": "moa", "match": "broad_core",
                          "columns": {"Metadata_Target": "target"}},
            **kw}


def _assert_files_exist(sheet: pd.DataFrame) -> None:
    for ch in sheet_channels(sheet):
        for d, f in zip(sheet[pathname_col(ch)], sheet[filename_col(ch)], strict=True):
            assert os.path.isfile(os.path.join(d, f)), (d, f)


# --------------------------------------------------------------------------------------------
# BBBC036
# --------------------------------------------------------------------------------------------
def test_bbbc036_sheet_plate_map_and_moa(tmp_path, caplog):
    params = _params036(tmp_path)
    with caplog.at_level(logging.INFO, logger="morphobench.data"):
        res = L.bbbc036_sheet(params, dataset="bbbc036")
    sheet = res.sheet
    assert validate_image_sheet(sheet) == CP5
    assert len(sheet) == 2 * 3 * 2 - 1                      # one incomplete site left out
    assert res.report["incomplete_sites"]["count"] == 1
    assert "24278/C03/2 lacks ['Mito']" in res.report["incomplete_sites"]["examples"][0]
    assert res.report["unmatched_files"]["count"] == 1     # the thumbnail
    assert "thumb" in res.report["unmatched_files"]["examples"][0] and "thumb" in caplog.text
    assert set(sheet["Metadata_Plate"]) == set(PLATES)
    assert set(sheet["Metadata_Well"]) == {"A01", "B02", "C03"}   # lower-case names normalised
    assert set(sheet["Metadata_Source"]) == {"bbbc036"} and set(sheet["Metadata_Batch"]) == {"BBBC036"}
    _assert_files_exist(sheet)
    r0 = sheet[(sheet["Metadata_Plate"] == "24277") & (sheet["Metadata_Well"] == "B02")
               & (sheet["Metadata_Site"] == 2)].iloc[0]
    root = Path(params["image_root"])
    assert r0["PathName_OrigRNA"] == str(root / "24277-ERSytoBleed")
    assert r0["PathName_OrigAGP"] == str(root / "24277-Ph_golgi")
    assert r0["FileName_OrigDNA"].startswith("cdp2bioactives_b02_s2_w1")
    from morphobench.images.io import read_site

    img = read_site(r0)
    assert img.dtype != np.uint8 and img[:, 0, 0].tolist() == [1, 2, 3, 4, 5]  # DNA ER RNA AGP Mito

    w = res.wells
    validate_plate_map(w)
    assert len(w) == 6
    wi = w.set_index(["Metadata_Plate", "Metadata_Well"])
    assert wi.loc[("24277", "A01"), "Metadata_Perturbation"] == "DMSO"        # empty broad_sample
    assert wi.loc[("24277", "A01"), "Metadata_PertType"] == "negcon"
    assert wi.loc[("24278", "A01"), "Metadata_PertType"] == "negcon"
    assert wi.loc[("24277", "B02"), "Metadata_Perturbation"] == "BRD-K11111111-001-01-1"
    assert wi.loc[("24277", "B02"), "Metadata_Compound"] == "BRD-K11111111-001-01-1"
    assert wi.loc[("24277", "B02"), "Metadata_PertType"] == "trt"
    assert wi.loc[("24277", "C03"), "Metadata_Concentration"] == "5"
    assert not [c for c in w.columns if c.startswith(("Cells_", "Nuclei_"))]
    # MoA: multi-label, BRD ids matched by their core, duplicate rows united, sorted, '|'-joined
    assert wi.loc[("24277", "B02"), "Metadata_MoA"] == "HDAC inhibitor|tubulin polymerization inhibitor"
    assert wi.loc[("24278", "B02"), "Metadata_MoA"] == "HDAC inhibitor|tubulin polymerization inhibitor"
    assert wi.loc[("24277", "C03"), "Metadata_MoA"] == "CDK inhibitor|glycogen synthase kinase inhibitor"
    assert wi.loc[("24277", "C03"), "Metadata_Target"] == "CDK2|GSK3B"
    # no MoA → NaN, kept, counted (treatments warned, controls logged)
    assert pd.isna(wi.loc[("24278", "C03"), "Metadata_MoA"])
    assert pd.isna(wi.loc[("24277", "A01"), "Metadata_MoA"])
    assert res.report["moa_missing"] == {"count": 1, "wells": 1, "examples": ["BRD-K33333333-001-01-9"]}
    assert res.report["moa"]["annotated_perturbations"] == 2
    assert "1 of 3 treatment(s)" in caplog.text and "BRD-K33333333-001-01-9" in caplog.text
    assert "1 control perturbation(s) without an MoA" in caplog.text

    # strict: the stray thumbnail and the incomplete site become errors
    with pytest.raises(MorphobenchError, match="not matching the pattern.*strict"):
        L.bbbc036_sheet({**params, "strict": True})
    # exact matching misses the compound listed under another batch suffix
    exact = L.bbbc036_sheet({**params, "moa_table": {**params["moa_table"], "match": "exact"}}).wells
    assert exact["Metadata_MoA"].notna().sum() == 1
    # plates: only the listed plates, plate map restricted to them
    one = L.bbbc036_sheet({**params, "plates": ["24277"]})
    assert set(one.sheet["Metadata_Plate"]) == {"24277"} and set(one.wells["Metadata_Plate"]) == {"24277"}
    # no metadata: image sheet only
    bare = L.bbbc036_sheet({"image_root": params["image_root"]})
    assert bare.wells is None and len(bare.sheet) == 11


def test_bbbc036_build_sheet_and_teams_triplets_read_moa(tmp_path):
    from morphobench.evaluate.triplets import parse_moas, sample_cell_triplets
    from morphobench.io import read_table

    params = _params036(tmp_path)
    out_s, out_w = tmp_path / "res" / "images.parquet", tmp_path / "res" / "wells.parquet"
    res = L.build_sheet({"loader": "bbbc036", **params}, out_s, out_w, dataset="bbbc036")
    wells = read_table(out_w, what="plate map")
    assert len(wells) == len(res.wells) == 6
    sets = parse_moas(wells["Metadata_MoA"].to_numpy(object), "|")
    by_well = dict(zip(wells["Metadata_Plate"] + "/" + wells["Metadata_Well"], sets, strict=True))
    assert by_well["24277/B02"] == {"HDAC inhibitor", "tubulin polymerization inhibitor"}
    assert by_well["24278/C03"] == frozenset() and by_well["24277/A01"] == frozenset()
    # TEAMs' cell-triplet sampler accepts these labels: positives share a class with the anchor
    trip = sample_cell_triplets(sets, wells["Metadata_Perturbation"].to_numpy(object),
                                np.random.default_rng(0))
    assert len(trip.anchor) >= 2
    for a, p, n in zip(trip.anchor, trip.positive, trip.negative, strict=True):
        assert sets[a] & sets[p] and sets[n] and not sets[a] & sets[n]


def test_bbbc036_errors(tmp_path):
    params = _params036(tmp_path)
    with pytest.raises(MorphobenchError, match="bbbc036: image_root is required.*Hoechst"):
        L.bbbc036_sheet({k: v for k, v in params.items() if k != "image_root"})
    with pytest.raises(MorphobenchError, match="bbbc036: image_root .* is not a directory"):
        L.bbbc036_sheet({**params, "image_root": str(tmp_path / "absent")})
    # MoA table: unknown column → the file and the column named
    moa = params["moa_table"]
    with pytest.raises(MorphobenchError, match=r"moa_table .*repurposing\.tsv: missing column\(s\) "
                                               r"\['mechanism'\]"):
        L.bbbc036_sheet({**params, "moa_table": {**moa, "moa": "mechanism"}})
    with pytest.raises(MorphobenchError, match=r"missing column\(s\) \['gene_target'\]"):
        L.bbbc036_sheet({**params, "moa_table": {**moa, "columns": {"Metadata_Target": "gene_target"}}})
    with pytest.raises(MorphobenchError, match=r"moa_table: unknown key\(s\) \['moas'\]"):
        L.bbbc036_sheet({**params, "moa_table": {**moa, "moas": "moa"}})
    with pytest.raises(MorphobenchError, match="moa_table: `key` is required"):
        L.bbbc036_sheet({**params, "moa_table": {"path": moa["path"], "moa": "moa"}})
    with pytest.raises(MorphobenchError, match="moa_table: path not found"):
        L.bbbc036_sheet({**params, "moa_table": {**moa, "path": str(tmp_path / "none.csv")}})
    with pytest.raises(MorphobenchError, match="has no column 'Metadata_Gene'"):
        L.bbbc036_sheet({**params, "moa_table": {**moa, "on": "Metadata_Gene"}})
    with pytest.raises(MorphobenchError, match="match 'fuzzy'"):
        L.bbbc036_sheet({**params, "moa_table": {**moa, "match": "fuzzy"}})
    # a table whose keys match nothing (wrong key column) is an error, not an all-NaN column
    with pytest.raises(MorphobenchError, match=r"no value of the .*'Metadata_Perturbation' matches "
                                               r"the table's column 'pert_iname'"):
        L.bbbc036_sheet({**params, "moa_table": {**moa, "key": "pert_iname"}})
    # another separator: classes re-joined with '|'; a class holding '|' would be split later
    semi = tmp_path / "semi.csv"
    pd.DataFrame({"broad_id": ["BRD-K11111111"], "moa": ["b; a"]}).to_csv(semi, index=False)
    w = L.bbbc036_sheet({**params, "moa_table": {"path": str(semi), "key": "broad_id", "moa": "moa",
                                                 "sep": ";", "match": "broad_core"}}).wells
    assert set(w["Metadata_MoA"].dropna()) == {"a|b"}
    pd.DataFrame({"broad_id": ["BRD-K11111111"], "moa": ["a|b; c"]}).to_csv(semi, index=False)
    with pytest.raises(MorphobenchError, match=r"semi\.csv: MoA class 'a\|b'"):
        L.bbbc036_sheet({**params, "moa_table": {"path": str(semi), "key": "broad_id", "moa": "moa",
                                                 "sep": ";"}})
    # the plate map already has the column (from plate_map.columns)
    with pytest.raises(MorphobenchError, match=r"already has column\(s\) \['Metadata_MoA'\]"):
        L.bbbc036_sheet({**params, "plate_map": {"columns": {"Metadata_MoA": "Metadata_broad_sample"}}})
    # moa_table without per-well metadata
    with pytest.raises(MorphobenchError, match="moa_table needs a plate map"):
        L.bbbc036_sheet({k: v for k, v in params.items() if k != "metadata"})
    # metadata: a missing column names the file; a missing file / glob is named too
    meta = sorted(Path(tmp_path / "BBBC036" / "gigascience_upload").glob("Plate_*/profiles/*.csv"))
    bad = tmp_path / "bad_meta.csv"
    pd.read_csv(meta[0]).drop(columns="Metadata_ASSAY_WELL_ROLE").to_csv(bad, index=False)
    with pytest.raises(MorphobenchError, match=r"bad_meta\.csv: missing column\(s\) "
                                               r"\['Metadata_ASSAY_WELL_ROLE'\]"):
        L.bbbc036_sheet({**params, "metadata": str(bad), "plates": ["24277"]})
    with pytest.raises(MorphobenchError, match="bbbc036: metadata: no file matches"):
        L.bbbc036_sheet({**params, "metadata": str(tmp_path / "nope" / "*.csv")})
    # imaged wells absent from the metadata: reported, strict → error
    pd.read_csv(meta[0]).iloc[:2].to_csv(bad, index=False)
    res = L.bbbc036_sheet({**params, "metadata": str(bad), "plates": ["24277"]})
    assert res.report["wells_without_plate_map"]["count"] == 1 and len(res.wells) == 2
    # a channel mapping naming a folder that does not exist
    with pytest.raises(MorphobenchError, match="unknown channel 'Brightfield'"):
        L.bbbc036_sheet({**params, "channels": {**L.IXM_CHANNELS, "Brightfield": "BF"}})
    # dispatch rejects keys the loader does not know
    with pytest.raises(MorphobenchError, match=r"unknown key\(s\) \['csv'\]"):
        L.load_dataset({"loader": "bbbc036", **params, "csv": "x.csv"})


def test_bbbc036_nested_tree_and_other_prefix(tmp_path):
    """Plate folders one level down (e.g. one folder per plate) and another file prefix."""
    root = _ixm_tree(tmp_path / "imgs", prefix="taoe005-u2os-72h-cp-a-au00044859",
                     plates=("41744",), wells=("p24",), sites=(1, 9), nest="41744")
    res = L.bbbc037_sheet({"image_root": str(root)})
    assert list(res.sheet["Metadata_Site"]) == [1, 9] and set(res.sheet["Metadata_Well"]) == {"P24"}
    assert set(res.sheet["Metadata_Batch"]) == {"BBBC037"}
    _assert_files_exist(res.sheet)


# --------------------------------------------------------------------------------------------
# BBBC037
# --------------------------------------------------------------------------------------------
def _bbbc037_metadata(path: Path) -> Path:
    recs = []
    for plate in PLATES:
        recs += [(plate, "a01", "", "EMPTY", "EMPTY"),
                 (plate, "b02", "TP53", "ccsbBroad304_00001", "Treated"),
                 (plate, "c03", "KRAS" if plate == "24277" else "LacZ",
                  "ccsbBroad304_00002" if plate == "24277" else "ccsbBroad304_09999",
                  "Treated" if plate == "24277" else "CTRL")]
    df = pd.DataFrame(recs, columns=["Metadata_Plate", "Metadata_Well", "Metadata_pert_name",
                                     "Metadata_broad_sample", "Metadata_ASSAY_WELL_ROLE"])
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def test_bbbc037_orf_plate_map_and_gene_moa(tmp_path, caplog):
    root = _ixm_tree(tmp_path / "BBBC037" / "images", prefix="taoe005-u2os-72h-cp-a-au00044859")
    meta = _bbbc037_metadata(tmp_path / "BBBC037" / "metadata.csv")
    moa = tmp_path / "BBBC037" / "pathways.csv"
    pd.DataFrame({"gene": ["tp53", "KRAS", "BRAF"],
                  "pathway": ["p53 signalling", "RAS; MAPK signalling", "MAPK signalling"]}
                 ).to_csv(moa, index=False)
    params = {"image_root": str(root), "metadata": str(meta),
              "moa_table": {"path": str(moa), "key": "gene", "moa": "pathway", "sep": ";",
                            "on": "Metadata_Gene", "match": "casefold"}}
    with caplog.at_level(logging.INFO, logger="morphobench.data"):
        res = L.load_dataset({"loader": "bbbc037", **params}, dataset="bbbc037")
    assert validate_image_sheet(res.sheet) == CP5 and len(res.sheet) == 12
    assert "incomplete_sites" not in res.report and "unmatched_files" not in res.report
    w = res.wells
    validate_plate_map(w)
    wi = w.set_index(["Metadata_Plate", "Metadata_Well"])
    assert wi.loc[("24277", "A01"), "Metadata_Perturbation"] == "EMPTY"
    assert wi.loc[("24277", "A01"), "Metadata_PertType"] == "negcon"
    assert wi.loc[("24277", "A01"), "Metadata_Gene"] == ""
    assert wi.loc[("24278", "B02"), "Metadata_Perturbation"] == "TP53"
    assert wi.loc[("24278", "B02"), "Metadata_Gene"] == "TP53"
    assert wi.loc[("24278", "B02"), "Metadata_PertType"] == "trt"
    assert wi.loc[("24278", "C03"), "Metadata_PertType"] == "negcon"     # CTRL well role
    assert wi.loc[("24278", "B02"), "Metadata_MoA"] == "p53 signalling"  # casefold match
    assert wi.loc[("24277", "C03"), "Metadata_MoA"] == "MAPK signalling|RAS"
    assert pd.isna(wi.loc[("24278", "C03"), "Metadata_MoA"])             # LacZ control
    assert "moa_missing" not in res.report                              # every treatment annotated
    assert "control perturbation(s) without an MoA" in caplog.text
    assert "1 of 3 key(s) match no perturbation" in caplog.text          # BRAF
    # defaults are overridden key by key (here: another perturbation column)
    by_clone = L.bbbc037_sheet({**params, "moa_table": None,
                                "plate_map": {"perturbation": ["Metadata_broad_sample"]}}).wells
    assert set(by_clone["Metadata_Perturbation"]) == {"EMPTY", "ccsbBroad304_00001",
                                                      "ccsbBroad304_00002", "ccsbBroad304_09999"}
    assert "Metadata_MoA" not in by_clone.columns
    # unknown metadata column named in plate_map → error naming the file and the column
    with pytest.raises(MorphobenchError, match=r"metadata\.csv: missing column\(s\) \['Metadata_gene'\]"):
        L.bbbc037_sheet({**params, "plate_map": {"perturbation": "Metadata_gene"}})
    with pytest.raises(MorphobenchError, match="plate_map options need the per-well metadata"):
        L.bbbc037_sheet({"image_root": str(root), "plate_map": {"negcon": ["LacZ"]}})


def test_moa_read_table_rules(tmp_path):
    """Rows without key / MoA are ignored, duplicate keys united; parquet tables work too."""
    t = tmp_path / "moa.parquet"
    pd.DataFrame({"k": ["x", "x", "", "y", "z"], "m": ["b|a", "c", "d", "", " e |  "]}).to_parquet(t)
    table, files = L.read_moa_table({"path": str(t), "key": "k", "moa": "m"})
    assert files == [str(t)]
    assert table == {"x": {"Metadata_MoA": {"a", "b", "c"}}, "z": {"Metadata_MoA": {"e"}}}
    wells = pd.DataFrame({"Metadata_Plate": ["P"] * 3, "Metadata_Well": ["A01", "A02", "A03"],
                          "Metadata_Perturbation": ["x", "y", "DMSO"],
                          "Metadata_PertType": ["trt", "trt", "negcon"]})
    report: dict = {}
    out = L.add_moa(wells, {"path": str(t), "key": "k", "moa": "m", "column": "Metadata_Pathway"},
                    report=report)
    assert out["Metadata_Pathway"].tolist()[0] == "a|b|c"
    assert all(isinstance(v, float) and math.isnan(v) for v in out["Metadata_Pathway"].tolist()[1:])
    assert report["moa_missing"]["examples"] == ["y"] and "Metadata_MoA" not in out.columns


def test_example_configs(repo_root):
    import yaml

    for name, loader in (("bbbc036", "bbbc036"), ("bbbc037", "bbbc037")):
        cfg = yaml.safe_load((repo_root / "config" / f"{name}.yaml").read_text())
        for ds in cfg["datasets"].values():
            assert ds["loader"] == loader
            assert set(ds) <= set(L.LOADER_KEYS[loader]), set(ds) - set(L.LOADER_KEYS[loader])
            assert set(ds.get("plate_map") or {}) <= set(L.PLATE_MAP_KEYS)
            assert set(ds["moa_table"]) <= set(L.MOA_TABLE_KEYS)
