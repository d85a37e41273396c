"""Crops: geometry, eligibility, scaling, per-plate stores and the dataset-level index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from morphobench.images.crops import CropDataset, CropParams, cut, gather_crop_index, preset_params, run_crops
from morphobench.images.illum import run_illum
from morphobench.images.io import read_site
from morphobench.images.segment import open_labels, run_segment
from morphobench.images.synthetic import write_synthetic_plate
from morphobench.io import MorphobenchError

CH = ["DNA", "ER", "RNA", "AGP", "Mito"]


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    out = {}
    for plate, seed in (("P1", 1), ("P2", 2)):
        sheet, _ = write_synthetic_plate(root / "img", plate=plate, wells=("A01", "A02"), sites=1, seed=seed)
        illum = run_illum(sheet, root / f"{plate}.npz")
        objects, _ = run_segment(sheet, root / f"{plate}.zarr", root / f"{plate}.parquet", illum=illum)
        out[plate] = {"sheet": sheet, "illum": illum, "objects": objects, "labels": root / f"{plate}.zarr"}
    return root, out


def _expected_inside(objects, size, shape=(256, 256)):
    cx = np.rint(objects["Nuclei_Location_Center_X"]).astype(int)
    cy = np.rint(objects["Nuclei_Location_Center_Y"]).astype(int)
    h, w = shape
    return ((cy - size // 2 >= 0) & (cy + size - size // 2 <= h) & (cx - size // 2 >= 0)
            & (cx + size - size // 2 <= w)).to_numpy()


@pytest.mark.parametrize("kind", ["cell128", "cell112", "cell64"])
def test_cell_crops_centre_and_count(plates, tmp_path, kind):
    root, pl = plates
    p = pl["P1"]
    params = preset_params(kind) if kind != "cell64" else CropParams(kind="cell", size=64)
    idx = run_crops(p["sheet"], tmp_path / "c.zarr", tmp_path / "c.parquet", params,
                    objects=p["objects"], labels=p["labels"], illum=p["illum"])
    s = params.size
    assert len(idx) == int(_expected_inside(p["objects"], s).sum()) > 0
    arr = zarr.open_array(str(tmp_path / "c.zarr"), mode="r")
    assert arr.shape == (len(idx), 5, s, s) and arr.dtype == np.uint8
    assert arr.chunks == (1, 5, s, s)  # one chunk per crop: O(1) random reads
    labels, sites = open_labels(p["labels"])
    lims = np.array(arr.attrs["percentiles"])
    for rec in idx.itertuples():
        nuc = np.asarray(labels[rec.ImageNumber - 1, 0])
        lab_crop = cut(nuc[None], rec.Crop_Y0, rec.Crop_X0, s)[0]
        assert lab_crop[s // 2, s // 2] == rec.ObjectNumber  # centre pixel belongs to the object
        assert (rec.Crop_Y0 + s // 2, rec.Crop_X0 + s // 2) == (rec.Crop_CenterY, rec.Crop_CenterX)
    # pixels: the stored crop is the percentile-scaled, illumination-corrected field
    rec = idx.iloc[0]
    row = p["sheet"].set_index(["Metadata_Well", "Metadata_Site"]).loc[(rec.Metadata_Well, rec.Metadata_Site)]
    img = read_site(row, CH, illum=p["illum"])
    exp = np.clip(np.rint((img - lims[:, :1, None]) / (lims[:, 1:, None] - lims[:, :1, None]) * 255), 0, 255)
    np.testing.assert_array_equal(arr[0], cut(exp.astype(np.uint8), rec.Crop_Y0, rec.Crop_X0, s))


def test_pad_policy_keeps_every_object(plates, tmp_path):
    _, pl = plates
    p = pl["P1"]
    params = CropParams(kind="cell", size=128, border="pad", scaling="float16", shard_crops=0)
    idx = run_crops(p["sheet"], tmp_path / "c.zarr", tmp_path / "c.parquet", params,
                    objects=p["objects"], labels=p["labels"], illum=p["illum"])
    assert len(idx) == len(p["objects"])
    arr = zarr.open_array(str(tmp_path / "c.zarr"), mode="r")
    assert arr.dtype == np.float16
    edge = idx[(idx.Crop_Y0 < 0)].iloc[0]
    crop = arr[int(edge.Crop_Row)]
    assert np.all(crop[:, : -edge.Crop_Y0] == 0)  # zero padding above the field
    row = p["sheet"].set_index(["Metadata_Well", "Metadata_Site"]).loc[(edge.Metadata_Well, edge.Metadata_Site)]
    img = read_site(row, CH, illum=p["illum"]).astype(np.float16)
    np.testing.assert_array_equal(crop, cut(img, edge.Crop_Y0, edge.Crop_X0, 128))


def test_max_per_well_and_skip_border(plates, tmp_path):
    _, pl = plates
    p = pl["P1"]
    idx = run_crops(p["sheet"], tmp_path / "c.zarr", tmp_path / "c.parquet",
                    CropParams(size=32, max_per_well=3, skip_border_objects=True),
                    objects=p["objects"], labels=p["labels"])
    assert idx.groupby("Metadata_Well").size().max() <= 3
    merged = idx.merge(p["objects"], on=["Metadata_Well", "Metadata_Site", "ObjectNumber"])
    assert not merged["Cells_TouchesBorder"].any()


def test_tiles(plates, tmp_path):
    _, pl = plates
    p = pl["P1"]
    idx = run_crops(p["sheet"], tmp_path / "t.zarr", tmp_path / "t.parquet", preset_params("tile256"))
    assert len(idx) == len(p["sheet"])  # one 256² tile per 256² field
    idx = run_crops(p["sheet"], tmp_path / "t.zarr", tmp_path / "t.parquet", CropParams(kind="tile", size=100))
    assert len(idx) == 4 * len(p["sheet"])  # 2×2 tiles, partial edge tiles dropped
    assert sorted(set(zip(idx.Crop_Y0, idx.Crop_X0))) == [(0, 0), (0, 100), (100, 0), (100, 100)]
    with pytest.raises(MorphobenchError, match="larger than the field"):
        run_crops(p["sheet"], tmp_path / "x.zarr", tmp_path / "x.parquet", CropParams(kind="tile", size=512))
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "x.parquet").exists()


def test_no_eligible_objects_gives_empty_store(plates, tmp_path):
    _, pl = plates
    p = pl["P1"]
    idx = run_crops(p["sheet"], tmp_path / "c.zarr", tmp_path / "c.parquet", CropParams(size=300),
                    objects=p["objects"], labels=p["labels"])
    assert len(idx) == 0 and "Crop_Row" in pd.read_parquet(tmp_path / "c.parquet").columns
    assert zarr.open_array(str(tmp_path / "c.zarr"), mode="r").shape[0] == 0


def test_gather_and_dataset(plates, tmp_path):
    _, pl = plates
    paths = []
    for plate, p in pl.items():
        d = tmp_path / "crops" / "cell64"
        run_crops(p["sheet"], d / f"{plate}.zarr", d / f"{plate}.parquet", CropParams(size=64),
                  objects=p["objects"], labels=p["labels"], illum=p["illum"])
        paths.append(d / f"{plate}.parquet")
    gathered = gather_crop_index(paths, tmp_path / "index" / "cell64.parquet")
    assert set(gathered["Crop_Store"]) == {"../crops/cell64/P1.zarr", "../crops/cell64/P2.zarr"}
    ds = CropDataset(tmp_path / "index" / "cell64.parquet")
    assert len(ds) == len(gathered) and ds.channels == CH
    per_plate = CropDataset(paths[1])
    x, rec = ds[len(ds) - 1]
    y, rec2 = per_plate[len(per_plate) - 1]
    assert rec["Metadata_Plate"] == "P2" and rec["ObjectNumber"] == rec2["ObjectNumber"]
    np.testing.assert_array_equal(x, y)
