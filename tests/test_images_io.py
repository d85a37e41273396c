"""Reading sites from the image sheet; bad input gives clear errors and no partial outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from morphobench.data.tables import filename_col, pathname_col
from morphobench.images.illum import IllumParams, run_illum
from morphobench.images.io import IllumFunctions, load_sheet, params_from, read_image, read_site
from morphobench.images.segment import SegmentParams, run_segment
from morphobench.io import MorphobenchError, write_parquet

CHS = ("DNA", "AGP")


def _site(tmp_path, name="s1", shapes=((32, 32), (32, 32)), values=None, plate="P1", well="A01", site=1):
    row = {"Metadata_Source": "t", "Metadata_Batch": "B", "Metadata_Plate": plate,
           "Metadata_Well": well, "Metadata_Site": site}
    rng = np.random.default_rng(0)
    for ch, shape in zip(CHS, shapes, strict=True):
        fn = f"{name}_{ch}.tif"
        arr = rng.integers(100, 1000, shape).astype(np.uint16) if values is None else values[ch]
        tifffile.imwrite(tmp_path / fn, arr)
        row[filename_col(ch)] = fn
        row[pathname_col(ch)] = str(tmp_path)
    return row


def test_read_site_applies_illumination(tmp_path):
    row = _site(tmp_path)
    raw = read_site(row, CHS)
    assert raw.shape == (2, 32, 32) and raw.dtype == np.float32
    f = {"DNA": np.full((32, 32), 2.0, np.float32), "AGP": np.full((32, 32), 4.0, np.float32)}
    corr = read_site(row, CHS, illum=f)
    np.testing.assert_allclose(corr[0], raw[0] / 2)
    np.testing.assert_allclose(corr[1], raw[1] / 4)
    assert list(read_site(row).shape) == [2, 32, 32]  # channels from the row


def test_illum_functions_roundtrip(tmp_path):
    f = IllumFunctions({"DNA": np.ones((4, 5), np.float32) * 1.5}, plate="P1", meta={"x": 1})
    f.save(tmp_path / "f.npz")
    g = IllumFunctions.load(tmp_path / "f.npz")
    assert g.plate == "P1" and g.channels == ["DNA"] and g.meta["x"] == 1
    np.testing.assert_array_equal(g["DNA"], f["DNA"])


def test_missing_file_names_it(tmp_path):
    row = _site(tmp_path)
    (tmp_path / row[filename_col("AGP")]).unlink()
    with pytest.raises(MorphobenchError, match="not found.*s1_AGP.tif"):
        read_site(row, CHS)


def test_truncated_tiff_names_it(tmp_path):
    row = _site(tmp_path)
    p = tmp_path / row[filename_col("DNA")]
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(MorphobenchError, match="s1_DNA.tif"):
        read_site(row, CHS)
    p.write_bytes(b"II*\x00garbage")
    with pytest.raises(MorphobenchError, match="cannot read image .*s1_DNA.tif"):
        read_image(p)


def test_mismatched_shapes_name_files(tmp_path):
    row = _site(tmp_path, shapes=((32, 32), (30, 32)))
    with pytest.raises(MorphobenchError, match=r"differ in shape.*s1_DNA.tif.*s1_AGP.tif"):
        read_site(row, CHS)


def test_illum_shape_mismatch(tmp_path):
    row = _site(tmp_path)
    with pytest.raises(MorphobenchError, match="illumination function for DNA has shape"):
        read_site(row, CHS, illum={"DNA": np.ones((8, 8), np.float32), "AGP": np.ones((8, 8), np.float32)})


def test_params_from():
    p = params_from(IllumParams, '{"downsample": 2, "channels": ["DNA"]}')
    assert p.downsample == 2 and p.channels == ("DNA",)
    with pytest.raises(MorphobenchError, match="unknown parameter"):
        params_from(IllumParams, {"downsampel": 2})
    with pytest.raises(MorphobenchError, match="not valid JSON"):
        params_from(IllumParams, "{bad")


def test_plate_stage_failure_leaves_no_outputs(tmp_path):
    rows = [_site(tmp_path, name=f"s{i}", site=i) for i in (1, 2, 3)]
    (tmp_path / rows[2][filename_col("AGP")]).write_bytes(b"II*\x00trunc")  # last site corrupt
    sheet = pd.DataFrame(rows)
    write_parquet(sheet, tmp_path / "images.parquet")
    plate = load_sheet(tmp_path / "images.parquet", "P1")
    out = tmp_path / "out"
    with pytest.raises(MorphobenchError, match="s3_AGP.tif"):
        run_illum(plate, out / "illum.npz", png=out / "illum.png")
    with pytest.raises(MorphobenchError, match="s3_AGP.tif"):
        run_segment(plate, out / "labels.zarr", out / "objects.parquet",
                    SegmentParams(cell_channel="AGP"), qc_out=out / "qc.parquet")
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert leftovers == [], leftovers


def test_blank_image_is_a_qc_flag_not_an_error(tmp_path):
    zeros = {"DNA": np.zeros((64, 64), np.uint16), "AGP": np.zeros((64, 64), np.uint16)}
    rows = [_site(tmp_path, name="blank", values=zeros, site=1), _site(tmp_path, name="ok", shapes=((64, 64),) * 2, site=2)]
    plate = pd.DataFrame(rows)
    funcs = run_illum(plate, tmp_path / "f.npz")
    assert funcs.meta["n_images"] == {"DNA": 1, "AGP": 1}
    objects, qc = run_segment(plate, tmp_path / "l.zarr", tmp_path / "o.parquet", qc_out=tmp_path / "qc.parquet")
    assert qc.loc[0, "QC_Blank"] and qc.loc[0, "QC_BlankChannels"] == "DNA,AGP"
    assert qc.loc[0, "Count_Nuclei"] == 0
    assert not (objects["Metadata_Site"] == 1).any()  # zero rows for the blank site
    assert pd.read_parquet(tmp_path / "qc.parquet")["QC_Blank"].tolist() == [True, False]
