"""Real layouts → image sheet + plate map (morphobench.data.loaders).

Every test writes a tiny fixture tree of its layout under tmp_path (4×4 images); the one test on
the real CPJUMP1 image index reads ``resources/cpjump1/images_index.parquet`` (no images needed).
"""

from __future__ import annotations

import json
import logging
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


def _tiff(path: Path, value: int = 1) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full((4, 4), value, np.uint16))


def _png(path: Path, value: int = 1) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.full((4, 4), value, np.uint8))


def _assert_files_exist(sheet: pd.DataFrame) -> None:
    for ch in sheet_channels(sheet):
        for d, f in zip(sheet[pathname_col(ch)], sheet[filename_col(ch)], strict=True):
            assert os.path.isfile(os.path.join(d, f)), (d, f)


# --------------------------------------------------------------------------------------------
# wells
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,expected", [("A1", "A01"), ("a01", "A01"), ("A001", "A01"),
                                          ("P24", "P24"), ("r01c01", "A01"), ("R16C24", "P24"),
                                          ("AF48", "AF48"), (" b3 ", "B03")])
def test_normalize_well(raw, expected):
    assert L.normalize_well(raw) == expected


@pytest.mark.parametrize("raw", ["", "12", "A", "A0", "r0c1", "A-1"])
def test_normalize_well_rejects(raw):
    with pytest.raises(MorphobenchError, match="malformed well"):
        L.normalize_well(raw)


# --------------------------------------------------------------------------------------------
# (a) load_data CSVs
# --------------------------------------------------------------------------------------------
def _load_data_tree(root: Path, plates=("P1", "P2"), wells=("A1", "b02"), sites=(1, 2),
                    prefix: str = "", chan_names=CP5, extra=None) -> list[Path]:
    """One load_data CSV per plate; PathName relative to ``root / 'images'``."""
    csvs = []
    for plate in plates:
        rows = []
        for w in wells:
            for s in sites:
                row = {f"{prefix}Metadata_Plate": plate, f"{prefix}Metadata_Well": w,
                       f"{prefix}Metadata_Site": s}
                for ch in chan_names:
                    fn = f"{plate}_{w}_s{s}_{ch}.tif"
                    _tiff(root / "images" / plate / fn)
                    row[f"{prefix}FileName_Orig{ch}"] = fn
                    row[f"{prefix}PathName_Orig{ch}"] = plate
                    row[f"{prefix}FileName_Illum{ch}"] = f"{plate}_Illum{ch}.npy"
                    row[f"{prefix}PathName_Illum{ch}"] = "illum"
                if extra:
                    row.update(extra(plate, w, s))
                rows.append(row)
        path = root / "load_data" / plate / "load_data.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(path, index=False)
        csvs.append(path)
    return csvs


def test_load_data_sheet_several_csvs(tmp_path):
    _load_data_tree(tmp_path)
    res = L.load_data_sheet({"csv": str(tmp_path / "load_data" / "*" / "load_data.csv"),
                             "image_root": str(tmp_path / "images"), "batch": "B1"},
                            dataset="mini")
    sheet = res.sheet
    assert validate_image_sheet(sheet) == CP5          # Illum columns are not channels
    assert len(sheet) == 2 * 2 * 2
    assert set(sheet["Metadata_Well"]) == {"A01", "B02"}
    assert set(sheet["Metadata_Source"]) == {"mini"} and set(sheet["Metadata_Batch"]) == {"B1"}
    assert sheet["Metadata_Site"].dtype == np.int64
    assert list(sheet.columns[:5]) == ["Metadata_Source", "Metadata_Batch", "Metadata_Plate",
                                       "Metadata_Well", "Metadata_Site"]
    _assert_files_exist(sheet)
    row = sheet.iloc[0]
    assert row["FileName_OrigDNA"] == "P1_A1_s1_DNA.tif"
    assert res.wells is None

    from morphobench.images.io import read_site

    img = read_site(row)
    assert img.shape == (5, 4, 4)


def test_load_data_image_prefix_channel_map_and_plate_map(tmp_path):
    names = ["Hoechst", "ER", "Syto", "Ph_golgi", "Mito"]

    def extra(plate, w, s):
        pert = "DMSO" if w == "A1" else "cpd1"
        return {"Image_Metadata_Source": "src9", "Image_Metadata_Batch": "b9",
                "Image_Metadata_pert": pert, "Image_Metadata_moa": "" if pert == "DMSO" else "X"}

    csvs = _load_data_tree(tmp_path, plates=("P1",), prefix="Image_", chan_names=names,
                           extra=extra)
    chmap = {"OrigHoechst": "DNA", "ER": "ER", "Syto": "RNA", "Ph_golgi": "AGP", "Mito": "Mito"}
    res = L.load_data_sheet({"csv": [str(c) for c in csvs], "channels": chmap,
                             "image_root": str(tmp_path / "images"),
                             "plate_map": {"perturbation": "Metadata_pert", "negcon": ["DMSO"],
                                           "columns": {"Metadata_MoA": "Image_Metadata_moa"}}})
    sheet, wells = res.sheet, res.wells
    assert sheet_channels(sheet) == CP5
    assert set(sheet["Metadata_Source"]) == {"src9"} and set(sheet["Metadata_Batch"]) == {"b9"}
    assert sheet.loc[0, "FileName_OrigDNA"].endswith("_Hoechst.tif")
    _assert_files_exist(sheet)
    validate_plate_map(wells)
    assert wells.to_dict("records") == [
        {"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Perturbation": "DMSO",
         "Metadata_PertType": "negcon", "Metadata_MoA": ""},
        {"Metadata_Plate": "P1", "Metadata_Well": "B02", "Metadata_Perturbation": "cpd1",
         "Metadata_PertType": "trt", "Metadata_MoA": "X"}]


def test_load_data_path_map_absolute_and_check_files(tmp_path):
    csvs = _load_data_tree(tmp_path, plates=("P1",))
    df = pd.read_csv(csvs[0])
    for ch in CP5:
        df[f"PathName_Orig{ch}"] = "/home/ubuntu/bucket/images/" + df[f"PathName_Orig{ch}"] + "/"
    df.to_csv(csvs[0], index=False)
    params = {"csv": str(csvs[0]), "check_files": True,
              "path_map": {"/home/ubuntu/bucket/images/": str(tmp_path / "images") + "/"}}
    sheet = L.load_data_sheet(params).sheet
    assert sheet.loc[0, "PathName_OrigDNA"] == str(tmp_path / "images" / "P1")
    _assert_files_exist(sheet)
    with pytest.raises(MorphobenchError, match="image file.*not found"):
        L.load_data_sheet({**params, "path_map": {"/home/ubuntu/": "/nonexistent/"}})


def test_load_data_errors(tmp_path):
    csv = _load_data_tree(tmp_path, plates=("P1",))[0]
    base = {"csv": str(csv), "image_root": str(tmp_path / "images")}
    df = pd.read_csv(csv)
    # missing required column: the message names the file and the column
    bad = tmp_path / "nosite.csv"
    df.drop(columns="Metadata_Site").to_csv(bad, index=False)
    with pytest.raises(MorphobenchError, match=r"nosite\.csv.*Metadata_Site"):
        L.load_data_sheet({**base, "csv": str(bad)})
    # unknown channel in the mapping
    with pytest.raises(MorphobenchError, match="unknown channel 'Hoechst'"):
        L.load_data_sheet({**base, "channels": {"Hoechst": "DNA"}})
    # two channels mapped to one name
    with pytest.raises(MorphobenchError, match="several channels"):
        L.load_data_sheet({**base, "channels": {"DNA": "DNA", "ER": "DNA"}})
    # duplicated sites (A1 and A01 are the same well)
    dup = tmp_path / "dup.csv"
    d2 = df.copy()
    d2.loc[d2["Metadata_Well"] == "b02", "Metadata_Well"] = "A01"
    d2.to_csv(dup, index=False)
    with pytest.raises(MorphobenchError, match="share a site"):
        L.load_data_sheet({**base, "csv": str(dup)})
    # empty result
    empty = tmp_path / "empty.csv"
    df.head(0).to_csv(empty, index=False)
    with pytest.raises(MorphobenchError, match="empty image sheet|no sites"):
        L.load_data_sheet({**base, "csv": str(empty)})
    # csv glob matching nothing / absent plate
    with pytest.raises(MorphobenchError, match="no file matches"):
        L.load_data_sheet({**base, "csv": str(tmp_path / "none" / "*.csv")})
    with pytest.raises(MorphobenchError, match=r"plate\(s\) \['P7'\] not found"):
        L.load_data_sheet({**base, "plates": ["P7"]})


def test_load_data_incomplete_sites_and_malformed_lines(tmp_path, caplog):
    csv = _load_data_tree(tmp_path, plates=("P1",))[0]
    df = pd.read_csv(csv)
    df.loc[0, "FileName_OrigMito"] = ""
    df.to_csv(csv, index=False)
    with open(csv, "a") as fh:  # one line with too many fields (as in BBBC022_v1_image.csv)
        fh.write(",".join(["x"] * (len(df.columns) + 2)) + "\n")
    params = {"csv": str(csv), "image_root": str(tmp_path / "images")}
    with caplog.at_level(logging.WARNING, logger="morphobench.data"):
        res = L.load_data_sheet(params)
    assert len(res.sheet) == 3
    assert res.report["incomplete_sites"]["count"] == 1
    assert "A01" in res.report["incomplete_sites"]["examples"][0]
    assert res.report["malformed_lines:load_data.csv"]["count"] == 1
    assert "without an image for every channel" in caplog.text
    with pytest.raises(MorphobenchError, match="strict"):
        L.load_data_sheet({**params, "strict": True})


# --------------------------------------------------------------------------------------------
# (b) CPJUMP1 image index
# --------------------------------------------------------------------------------------------
_CP_CH = {1: ("Mito", "URL_OrigMito"), 2: ("AGP", "URL_OrigAGP"), 3: ("RNA", "URL_OrigRNA"),
          4: ("ER", "URL_OrigER"), 5: ("DNA", "URL_OrigDNA"), 6: ("HZ_BF", "URL_OrigHighZBF"),
          7: ("LZ_BF", "URL_OrigLowZBF"), 8: ("BF", "URL_OrigBrightfield")}
_BUCKET = "s3://cellpainting-gallery/"
_KEY = "cpg0000-jump-pilot/source_4/images/2020_11_04_CPJUMP1/images/"


def _cpjump1_index(path: Path, plates=("BR001", "BR002"), rows=(1, 2), cols=(1, 3),
                   sites=(1, 2), image_root: Path | None = None, drop=()) -> pd.DataFrame:
    """Synthetic index with the real index's columns; optionally write the mirrored images."""
    recs = []
    for plate in plates:
        pdir = f"{_KEY}{plate}__2020-11-05T19_51_35-Measurement1/Images/"
        for r in rows:
            for c in cols:
                for s in sites:
                    for ch, (name, urlname) in _CP_CH.items():
                        fn = f"r{r:02d}c{c:02d}f{s:02d}p01-ch{ch}sk1fk1fl1.tiff"
                        if (plate, r, c, s, ch) in drop:
                            continue
                        recs.append({
                            "Metadata_Plate": plate, "Metadata_Well": f"{chr(64 + r)}{c:02d}",
                            "Metadata_Site": s, "Metadata_AbsPositionZ": 0.13,
                            "Metadata_AbsTime": "2020-11-05T19:55:20.94-05:00",
                            "Metadata_BinningX": 2, "Metadata_BinningY": 2,
                            "Metadata_ChannelID": ch, "Metadata_ChannelName": name,
                            "Metadata_Col": c, "Metadata_ExposureTime": 0.01,
                            "Metadata_FieldID": s, "Metadata_ImageResolutionX": 6e-7,
                            "Metadata_ImageResolutionY": 6e-7, "Metadata_ImageSizeX": 1080,
                            "Metadata_ImageSizeY": 1080, "Metadata_MainEmissionWavelength": 456,
                            "Metadata_MainExcitationWavelength": 405,
                            "Metadata_MaxIntensity": 65535, "Metadata_ObjectiveMagnification": 20,
                            "Metadata_ObjectiveNA": 1, "Metadata_PlaneID": 1,
                            "Metadata_PositionX": 0.0, "Metadata_PositionY": 0.0,
                            "Metadata_PositionZ": -2e-6, "Metadata_Row": r, "source_plate": plate,
                            "source_s3_path": f"{_BUCKET}cpg0000-jump-pilot/source_4/workspace/"
                                              f"load_data_csv/2020_11_04_CPJUMP1/{plate}/"
                                              "load_data.csv",
                            "Metadata_ChannelURLName": urlname,
                            "Metadata_FileUrl": f"{_BUCKET}{pdir}{fn}",
                            "Metadata_StainName": "NA", "Metadata_Filename": fn})
                        if image_root is not None:
                            _tiff(image_root / pdir / fn, ch)
    df = pd.DataFrame(recs)
    df.to_parquet(path, index=False)
    return df


def test_cpjump1_synthetic_index(tmp_path):
    root = tmp_path / "cpg"
    index = tmp_path / "index.parquet"
    _cpjump1_index(index, image_root=root)
    res = L.cpjump1_sheet({"index": str(index), "image_root": str(root), "check_files": True})
    sheet = res.sheet
    assert validate_image_sheet(sheet) == CP5
    assert len(sheet) == 2 * 2 * 2 * 2
    assert set(sheet["Metadata_Source"]) == {"source_4"}
    assert set(sheet["Metadata_Batch"]) == {"2020_11_04_CPJUMP1"}
    assert set(sheet["Metadata_Well"]) == {"A01", "A03", "B01", "B03"}
    _assert_files_exist(sheet)
    r0 = sheet.iloc[0]
    assert r0["FileName_OrigDNA"] == "r01c01f01p01-ch5sk1fk1fl1.tiff"
    assert r0["FileName_OrigMito"] == "r01c01f01p01-ch1sk1fk1fl1.tiff"
    assert r0["PathName_OrigDNA"] == str(root / _KEY / "BR001__2020-11-05T19_51_35-Measurement1"
                                         / "Images")
    from morphobench.images.io import read_site

    img = read_site(r0, ["DNA", "Mito"])
    assert img[0, 0, 0] == 5 and img[1, 0, 0] == 1   # ch5 is DNA, ch1 is Mito

    # plate and channel selection, brightfield planes under JUMP's names
    sub = L.cpjump1_sheet({"index": str(index), "image_root": str(root), "plates": ["BR002"],
                           "channels": ["DNA", "Brightfield", "HighZBF", "LowZBF"]}).sheet
    assert set(sub["Metadata_Plate"]) == {"BR002"} and len(sub) == 8
    assert sheet_channels(sub) == ["DNA", "Brightfield", "HighZBF", "LowZBF"]
    assert sub.iloc[0]["FileName_OrigBrightfield"].endswith("-ch8sk1fk1fl1.tiff")
    assert sub.iloc[0]["FileName_OrigHighZBF"].endswith("-ch6sk1fk1fl1.tiff")
    _assert_files_exist(sub)

    # image_root that mirrors only the dataset's image folder
    alt = L.cpjump1_sheet({"index": str(index), "image_root": "/mnt/cpjump1",
                           "url_prefix": _BUCKET + _KEY}).sheet
    assert alt.iloc[0]["PathName_OrigDNA"] == "/mnt/cpjump1/BR001__2020-11-05T19_51_35-Measurement1/Images"


def test_cpjump1_errors_and_incomplete(tmp_path):
    index = tmp_path / "index.parquet"
    _cpjump1_index(index, plates=("BR001",), drop={("BR001", 1, 1, 2, 3)})
    base = {"index": str(index), "image_root": "/x"}
    res = L.cpjump1_sheet(base)
    assert len(res.sheet) == 7 and res.report["incomplete_sites"]["count"] == 1
    with pytest.raises(MorphobenchError, match="strict"):
        L.cpjump1_sheet({**base, "strict": True})
    with pytest.raises(MorphobenchError, match="unknown channel"):
        L.cpjump1_sheet({**base, "channels": ["DNA", "Actin"]})
    with pytest.raises(MorphobenchError, match="image_root is required"):
        L.cpjump1_sheet({"index": str(index)})
    with pytest.raises(MorphobenchError, match="no images for plates"):
        L.cpjump1_sheet({**base, "plates": ["BR999"]})
    with pytest.raises(MorphobenchError, match="url_prefix"):
        L.cpjump1_sheet({**base, "url_prefix": "gs://other/"})
    df = pd.read_parquet(index)
    pd.concat([df, df.head(1)]).to_parquet(index, index=False)
    with pytest.raises(MorphobenchError, match="duplicated sites"):
        L.cpjump1_sheet(base)
    df.drop(columns="Metadata_FileUrl").to_parquet(index, index=False)
    with pytest.raises(MorphobenchError, match=r"index\.parquet.*Metadata_FileUrl"):
        L.cpjump1_sheet(base)


def test_cpjump1_plate_map_barcode_platemap(tmp_path):
    index = tmp_path / "index.parquet"
    _cpjump1_index(index)
    meta = tmp_path / "metadata"
    meta.mkdir()
    (meta / "barcode_platemap.csv").write_text(
        "Assay_Plate_Barcode,Plate_Map_Name\nBR001,MAP.A\nBR002,MAP.A\nBR777,MAP.B\n")
    pm = "plate_map_name\twell_position\tbroad_sample\n" + "".join(
        f"MAP.A\t{w}\t{s}\n" for w, s in [("A01", ""), ("A03", "BRD-1"), ("B01", "BRD-2"),
                                          ("B03", "BRD-3")])
    (meta / "MAP.A.txt").write_text(pm)
    (meta / "compounds.tsv").write_text("broad_sample\ttarget\tcontrol_type\n"
                                        "BRD-1\tTUBB\tposcon_diverse\nBRD-2\tPLK1\t\n")
    res = L.cpjump1_sheet({
        "index": str(index), "image_root": "/x",
        "plate_map": {"path": str(meta / "*.txt"), "plate": "plate_map_name",
                      "well": "well_position", "perturbation": "broad_sample",
                      "missing_perturbation": "DMSO", "negcon": ["DMSO"],
                      "pert_type": "control_type", "pert_type_values": {"poscon_diverse": "poscon"},
                      "barcode_platemap": {"path": str(meta / "barcode_platemap.csv")},
                      "annotations": [{"path": str(meta / "compounds.tsv"), "on": "broad_sample"}],
                      "columns": {"Metadata_Target": "target"}}})
    w = res.wells
    validate_plate_map(w)
    assert len(w) == 8 and set(w["Metadata_Plate"]) == {"BR001", "BR002"}
    one = w[w["Metadata_Plate"] == "BR001"].set_index("Metadata_Well")
    assert one.loc["A01", "Metadata_Perturbation"] == "DMSO"
    assert one.loc["A01", "Metadata_PertType"] == "negcon"
    assert one.loc["A03", "Metadata_PertType"] == "poscon"
    assert one.loc["A03", "Metadata_Target"] == "TUBB"
    assert one.loc["B01", "Metadata_PertType"] == "trt"
    assert one.loc["B03", "Metadata_Target"] == ""


def test_cpjump1_real_index(resources_dir):
    index = resources_dir / "cpjump1" / "images_index.parquet"
    res = L.cpjump1_sheet({"image_root": "/data/cpg", "plates": ["BR00116991"]},
                          resources_dir=resources_dir)
    sheet = res.sheet
    assert validate_image_sheet(sheet, str(index)) == CP5
    # BR00116991: 384 wells × 9 sites, every site complete (verified on the index)
    assert len(sheet) == 384 * 9 == 3456
    assert sheet["Metadata_Well"].nunique() == 384 and sheet["Metadata_Site"].nunique() == 9
    assert "incomplete_sites" not in res.report
    assert set(sheet["Metadata_Source"]) == {"source_4"}
    assert set(sheet["Metadata_Batch"]) == {"2020_11_04_CPJUMP1"}
    a01 = sheet[(sheet["Metadata_Well"] == "A01") & (sheet["Metadata_Site"] == 1)].iloc[0]
    assert a01["FileName_OrigDNA"] == "r01c01f01p01-ch5sk1fk1fl1.tiff"
    assert a01["FileName_OrigMito"] == "r01c01f01p01-ch1sk1fk1fl1.tiff"
    assert a01["PathName_OrigDNA"].startswith(
        "/data/cpg/cpg0000-jump-pilot/source_4/images/2020_11_04_CPJUMP1/images/BR00116991__")
    assert a01["PathName_OrigDNA"].endswith("/Images")


# --------------------------------------------------------------------------------------------
# (c) RxRx-style folders: filename pattern
# --------------------------------------------------------------------------------------------
RXRX_PATTERN = (r"(?P<batch>[^/]+)/Plate(?P<plate>\d+)/(?P<well>[A-Z]+\d+)_s(?P<site>\d+)"
                r"_w(?P<channel>\d)\.png")


def _rxrx_tree(root: Path, experiments=("gene-001", "gene-002"), wells=("B02", "AA03"),
               sites=(1, 2), channels=range(1, 7)) -> None:
    for e in experiments:
        for w in wells:
            for s in sites:
                for c in channels:
                    _png(root / e / "Plate1" / f"{w}_s{s}_w{c}.png", c)


def _rxrx_params(root: Path, **kw) -> dict:
    return {"image_root": str(root), "pattern": RXRX_PATTERN, "plate_format": "{batch}_P{plate}",
            "channels": {str(k): v for k, v in L.RXRX_CHANNELS.items()}, **kw}


def test_pattern_rxrx_layout(tmp_path, caplog):
    root = tmp_path / "rxrx3"
    _rxrx_tree(root)
    _png(root / "gene-001" / "Plate1" / "thumbnail.png")        # does not match: reported
    (root / "README.txt").write_text("not an image")              # not an image: ignored
    meta = tmp_path / "metadata_rxrx3.csv"
    pd.DataFrame({
        "experiment_name": ["gene-001"] * 2 + ["gene-002"] * 2, "plate": [1] * 4,
        "address": ["B02", "AA03"] * 2, "gene": ["EMPTY_control", "PLK1", "MTOR", ""],
        "treatment": ["EMPTY_control", "PLK1_guide_1", "MTOR_guide_2", "cpd-7"],
        "perturbation_type": ["CRISPR", "CRISPR", "CRISPR", "COMPOUND"],
        "cell_type": ["HUVEC"] * 4}).to_csv(meta, index=False)
    params = _rxrx_params(root, plate_map={
        "path": str(meta), "plate": "{experiment_name}_P{plate}", "well": "address",
        "perturbation": ["gene", "treatment"], "negcon": ["EMPTY_control"],
        "columns": {"Metadata_Gene": "gene", "Metadata_CellType": "cell_type"}})
    with caplog.at_level(logging.WARNING, logger="morphobench.data"):
        res = L.pattern_sheet(params, dataset="rxrx3")
    sheet = res.sheet
    assert validate_image_sheet(sheet) == CP5 + ["WGA"]
    assert len(sheet) == 2 * 2 * 2
    assert set(sheet["Metadata_Plate"]) == {"gene-001_P1", "gene-002_P1"}
    assert set(sheet["Metadata_Batch"]) == {"gene-001", "gene-002"}
    assert set(sheet["Metadata_Source"]) == {"rxrx3"}
    assert set(sheet["Metadata_Well"]) == {"B02", "AA03"}
    _assert_files_exist(sheet)
    r0 = sheet[(sheet["Metadata_Well"] == "B02") & (sheet["Metadata_Site"] == 2)].iloc[0]
    assert r0["FileName_OrigAGP"] == "B02_s2_w3.png" and r0["FileName_OrigWGA"] == "B02_s2_w6.png"
    assert r0["PathName_OrigDNA"] == str(root / r0["Metadata_Batch"] / "Plate1")
    from morphobench.images.io import read_site

    assert read_site(r0, ["DNA", "Mito"])[:, 0, 0].tolist() == [1.0, 5.0]
    assert res.report["unmatched_files"]["count"] == 1
    assert "thumbnail.png" in caplog.text
    w = res.wells.set_index(["Metadata_Plate", "Metadata_Well"])
    validate_plate_map(res.wells)
    assert w.loc[("gene-001_P1", "B02"), "Metadata_PertType"] == "negcon"
    assert w.loc[("gene-001_P1", "AA03"), "Metadata_Perturbation"] == "PLK1"
    assert w.loc[("gene-001_P1", "AA03"), "Metadata_Gene"] == "PLK1"
    assert w.loc[("gene-002_P1", "AA03"), "Metadata_Perturbation"] == "cpd-7"
    assert w.loc[("gene-002_P1", "AA03"), "Metadata_PertType"] == "trt"
    with pytest.raises(MorphobenchError, match="not matching the pattern.*strict"):
        L.pattern_sheet({**params, "strict": True})


def test_pattern_channels_wells_and_errors(tmp_path):
    root = tmp_path / "imgs"
    _rxrx_tree(root, experiments=("e1",), wells=("B02",), sites=(1,))
    # a subset of channels: the others are skipped and reported
    res = L.pattern_sheet(_rxrx_params(root, channels={"1": "DNA", "2": "ER"}))
    assert sheet_channels(res.sheet) == ["DNA", "ER"]
    assert res.report["unmapped_channel_files"]["count"] == 4
    with pytest.raises(MorphobenchError, match="strict"):
        L.pattern_sheet(_rxrx_params(root, channels={"1": "DNA"}, strict=True))
    # unknown channel in the mapping
    with pytest.raises(MorphobenchError, match="unknown channel '7'"):
        L.pattern_sheet(_rxrx_params(root, channels={**L.RXRX_CHANNELS, "7": "Extra"}))
    # regex without the required groups / invalid regex
    with pytest.raises(MorphobenchError, match=r"lacks named group\(s\) \['site'\]"):
        L.pattern_sheet(_rxrx_params(root, pattern=r"(?P<batch>[^/]+)/Plate(?P<plate>\d+)/"
                                                   r"(?P<well>\w+?)_s\d+_w(?P<channel>\d)\.png"))
    with pytest.raises(MorphobenchError, match="invalid regular expression"):
        L.pattern_sheet(_rxrx_params(root, pattern="(?P<plate"))
    # a missing channel file → incomplete site, reported
    (root / "e1" / "Plate1" / "B02_s1_w5.png").unlink()
    _rxrx_tree(root, experiments=("e1",), wells=("C03",), sites=(1,))
    res = L.pattern_sheet(_rxrx_params(root))
    assert len(res.sheet) == 1 and res.report["incomplete_sites"]["count"] == 1
    # the same site twice (B2 and B02 name the same well)
    _png(root / "e1" / "Plate1" / "C3_s1_w1.png")
    with pytest.raises(MorphobenchError, match=r"duplicated sites.*C0?3_s1_w1\.png"):
        L.pattern_sheet(_rxrx_params(root))
    # no image matches → error
    with pytest.raises(MorphobenchError, match="no image file matches"):
        L.pattern_sheet(_rxrx_params(root, pattern=r"(?P<plate>x)(?P<well>y)(?P<site>1)"
                                                   r"(?P<channel>z)"))
    with pytest.raises(MorphobenchError, match="not a directory"):
        L.pattern_sheet(_rxrx_params(tmp_path / "absent"))


def test_pattern_phenix_rc_wells(tmp_path):
    root = tmp_path / "phenix"
    for r, c in [(1, 1), (16, 24)]:
        for f in (1, 2):
            for ch in (1, 5):
                _tiff(root / "PLATE_A" / "Images" / f"r{r:02d}c{c:02d}f{f:02d}p01-ch{ch}sk1fk1fl1.tiff")
    res = L.pattern_sheet({
        "image_root": str(root), "channels": {"1": "Mito", "5": "DNA"},
        "pattern": r"(?P<plate>[^/]+)/Images/(?P<well>r\d+c\d+)f(?P<site>\d+)p01-ch(?P<channel>\d)"
                   r"sk1fk1fl1\.tiff"})
    assert sorted(set(res.sheet["Metadata_Well"])) == ["A01", "P24"]
    assert sheet_channels(res.sheet) == ["DNA", "Mito"]
    _assert_files_exist(res.sheet)


# --------------------------------------------------------------------------------------------
# (d) BBBC022 image CSV
# --------------------------------------------------------------------------------------------
_BB_ORDER = ["Hoechst", "ER", "Syto", "Ph_golgi", "Mito"]   # files _w1 … _w5


def _bbbc022_tree(root: Path, plates=("20585", "20586"), wells=("A01", "B02", "C03"),
                  sites=(1, 2)) -> Path:
    rows = []
    cpd = {"A01": ("DMSO", "DMSO", "mock", "0"), "B02": ("BRD-K1", "staurosporine", "treated", "5"),
           "C03": ("BRD-K2", "cytochalasin D", "treated", "5")}
    for plate in plates:
        for w in wells:
            for s in sites:
                row = {"ImageNumber": len(rows) + 1}
                for k, ch in enumerate(_BB_ORDER, start=1):
                    fn = f"IXMtest_{w}_s{s}_w{k}ABCDEF{k}.tif"
                    _tiff(root / f"BBBC022_v1_images_{plate}w{k}" / fn, k)
                    row[f"Image_FileName_Orig{ch}"] = fn
                    row[f"Image_PathName_Orig{ch}"] = f"/cbnt/cbimage/HCS/{plate}"
                broad, name, role, conc = cpd[w]
                row.update({"Image_Metadata_ASSAY_WELL_ROLE": role,
                            "Image_Metadata_BROAD_ID": broad,
                            "Image_Metadata_CPD_MMOL_CONC": conc,
                            "Image_Metadata_CPD_PLATE_MAP_NAME": "H-BIOA-007-3",
                            "Image_Metadata_CPD_WELL_POSITION": w.lower() if plate == "20586" else w,
                            "Image_Metadata_PlateID": plate, "Image_Metadata_Site": s,
                            "Image_Metadata_SOURCE_COMPOUND_NAME": name})
                rows.append(row)
    csv = root / "BBBC022_v1_image.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def test_bbbc022(tmp_path):
    root = tmp_path / "BBBC022"
    csv = _bbbc022_tree(root)
    with open(csv, "a") as fh:   # the real file has a few lines with too many fields
        fh.write(",".join(["1"] * 40) + "\n")
    res = L.bbbc022_sheet({"csv": str(csv), "image_root": str(root), "check_files": True},
                          dataset="bbbc022")
    sheet = res.sheet
    assert validate_image_sheet(sheet) == CP5
    assert len(sheet) == 2 * 3 * 2
    assert set(sheet["Metadata_Plate"]) == {"20585", "20586"}
    assert set(sheet["Metadata_Well"]) == {"A01", "B02", "C03"}
    assert set(sheet["Metadata_Source"]) == {"bbbc022"}
    _assert_files_exist(sheet)
    r0 = sheet.iloc[0]
    assert r0["PathName_OrigRNA"] == str(root / "BBBC022_v1_images_20585w3")
    from morphobench.images.io import read_site

    assert read_site(r0)[:, 0, 0].tolist() == [1, 2, 3, 4, 5]   # DNA ER RNA AGP Mito = w1..w5
    assert res.report["malformed_lines:BBBC022_v1_image.csv"]["count"] == 1
    w = res.wells
    validate_plate_map(w)
    assert len(w) == 6
    wi = w.set_index(["Metadata_Plate", "Metadata_Well"])
    assert wi.loc[("20585", "A01"), "Metadata_PertType"] == "negcon"
    assert wi.loc[("20585", "A01"), "Metadata_Perturbation"] == "DMSO"
    assert wi.loc[("20586", "B02"), "Metadata_Perturbation"] == "BRD-K1"
    assert wi.loc[("20586", "B02"), "Metadata_Compound"] == "staurosporine"
    assert wi.loc[("20586", "B02"), "Metadata_PertType"] == "trt"
    assert wi.loc[("20586", "C03"), "Metadata_Concentration"] == "5"
    with pytest.raises(MorphobenchError, match="strict"):
        L.bbbc022_sheet({"csv": str(csv), "image_root": str(root), "strict": True})
    # the CSV's own PathName on request
    own = L.bbbc022_sheet({"csv": str(csv), "dir_template": None, "plates": ["20585"]}).sheet
    assert set(own["PathName_OrigDNA"]) == {"/cbnt/cbimage/HCS/20585"}
    with pytest.raises(MorphobenchError, match="image_root is required"):
        L.bbbc022_sheet({"csv": str(csv)})


def test_bbbc022_moa_table(tmp_path):
    """User-supplied MoA table → Metadata_MoA (Drug Repurposing Hub ids: BRD cores match)."""
    root = tmp_path / "BBBC022"
    csv = _bbbc022_tree(root, plates=("20585",))
    moa = tmp_path / "repurposing_samples.txt"
    pd.DataFrame({"broad_id": ["BRD-K1", "BRD-K12345678-001-01-1"],
                  "moa": ["PKC inhibitor|CDK inhibitor", "x"]}).to_csv(moa, sep="\t", index=False)
    res = L.bbbc022_sheet({"csv": str(csv), "image_root": str(root),
                           "moa_table": {"path": str(moa), "key": "broad_id", "moa": "moa"}})
    wi = res.wells.set_index("Metadata_Well")
    assert wi.loc["B02", "Metadata_MoA"] == "CDK inhibitor|PKC inhibitor"
    assert pd.isna(wi.loc["C03", "Metadata_MoA"]) and pd.isna(wi.loc["A01", "Metadata_MoA"])
    assert res.report["moa_missing"]["examples"] == ["BRD-K2"]
    with pytest.raises(MorphobenchError, match=r"repurposing_samples\.txt: missing column\(s\) \['MOA'\]"):
        L.bbbc022_sheet({"csv": str(csv), "image_root": str(root),
                         "moa_table": {"path": str(moa), "key": "broad_id", "moa": "MOA"}})


def test_bbbc022_missing_column(tmp_path):
    root = tmp_path / "BBBC022"
    csv = _bbbc022_tree(root, plates=("20585",), wells=("A01",), sites=(1,))
    pd.read_csv(csv).drop(columns="Image_Metadata_CPD_WELL_POSITION").to_csv(csv, index=False)
    with pytest.raises(MorphobenchError,
                       match=r"BBBC022_v1_image\.csv.*Metadata_CPD_WELL_POSITION"):
        L.bbbc022_sheet({"csv": str(csv), "image_root": str(root)})


# --------------------------------------------------------------------------------------------
# build_sheet / CLI / example configs
# --------------------------------------------------------------------------------------------
def test_build_sheet_dispatch_and_atomic_outputs(tmp_path, caplog):
    root = tmp_path / "imgs"
    _rxrx_tree(root, experiments=("e1",), wells=("B02",), sites=(1, 2))
    out_s, out_w = tmp_path / "res" / "images.parquet", tmp_path / "res" / "wells.parquet"
    cfg = {"loader": "pattern", **_rxrx_params(root)}
    with caplog.at_level(logging.WARNING, logger="morphobench.data"):
        res = L.build_sheet(cfg, out_s, out_w, dataset="rx")
    assert "empty plate map" in caplog.text
    back = pd.read_parquet(out_s)
    pd.testing.assert_frame_equal(back, res.sheet, check_dtype=False)
    assert validate_image_sheet(back) == CP5 + ["WGA"]
    wells = pd.read_parquet(out_w)
    assert wells.empty and list(wells.columns) == ["Metadata_Plate", "Metadata_Well",
                                                   "Metadata_Perturbation", "Metadata_PertType"]
    assert [p.name for p in out_s.parent.iterdir()] and not list(out_s.parent.glob(".*.tmp"))
    # errors leave no output behind
    bad = tmp_path / "bad"
    for c, msg in [({"loader": "nope"}, "unknown loader"),
                   ({**cfg, "imgroot": "x"}, r"unknown key\(s\) \['imgroot'\]"),
                   ({**cfg, "plate_map": {"path": str(tmp_path / "none.csv"),
                                          "perturbation": "x"}}, "not found")]:
        with pytest.raises(MorphobenchError, match=msg):
            L.build_sheet(c, bad / "images.parquet", bad / "wells.parquet")
        assert not bad.exists() or not any(bad.iterdir())


def test_cli(tmp_path):
    from morphobench.data.__main__ import main

    root = tmp_path / "imgs"
    _rxrx_tree(root, experiments=("e1",), wells=("B02",), sites=(1,))
    params = {k: v for k, v in _rxrx_params(root).items()}
    out_s, out_w = tmp_path / "o" / "images.parquet", tmp_path / "o" / "wells.parquet"
    rc = main(["sheet", "--loader", "pattern", "--params", json.dumps(params),
               "--out-sheet", str(out_s), "--out-wells", str(out_w), "--dataset", "rx"])
    assert rc == 0 and len(pd.read_parquet(out_s)) == 1 and out_w.exists()
    pfile = tmp_path / "p.yaml"
    import yaml

    pfile.write_text(yaml.safe_dump({**params, "channels": {"1": "DNA"}, "strict": True}))
    assert main(["sheet", "--loader", "pattern", "--params", f"@{pfile}",
                 "--out-sheet", str(tmp_path / "x.parquet")]) == 1
    assert not (tmp_path / "x.parquet").exists()
    assert main(["sheet", "--loader", "pattern", "--params", "{not json",
                 "--out-sheet", str(tmp_path / "x.parquet")]) == 1


@pytest.mark.parametrize("name", ["jump_cpjump1", "jump_cpg0016_source3", "rxrx3", "bbbc022",
                                  "bbbc036", "bbbc037"])
def test_example_configs_use_known_keys(repo_root, name):
    import yaml

    cfg = yaml.safe_load((repo_root / "config" / f"{name}.yaml").read_text())
    assert cfg["datasets"]
    for ds in cfg["datasets"].values():
        keys = L.LOADER_KEYS[ds["loader"]]
        assert set(ds) <= set(keys), set(ds) - set(keys)
        if ds.get("plate_map"):
            assert set(ds["plate_map"]) <= set(L.PLATE_MAP_KEYS)
        if ds.get("moa_table"):
            assert set(ds["moa_table"]) <= set(L.MOA_TABLE_KEYS)
        if isinstance(ds.get("channels"), dict):
            assert all(isinstance(k, str) for k in ds["channels"])


def test_dispatch_table():
    """One module per loader, one {name: (function, keys)} table; every loader takes the common keys."""
    assert set(L.LOADERS) == {"load_data", "cpjump1", "pattern", "bbbc022", "bbbc036", "bbbc037"}
    for name, (fn, keys) in L.LOADERS.items():
        assert callable(fn) and fn.__module__ == f"morphobench.data.loaders.{name}"
        assert set(L.COMMON_KEYS) <= set(keys) and L.LOADER_KEYS[name] is keys
    with pytest.raises(MorphobenchError, match="unknown loader 'nope'"):
        L.load_dataset({"loader": "nope"})
    with pytest.raises(MorphobenchError, match=r"unknown key\(s\) \['csvs'\]"):
        L.load_dataset({"loader": "load_data", "csvs": "x.csv"})
