"""Segmentation: instance matching, synthetic ground truth, real StarDist nuclei, stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from morphobench.data.tables import CHANNELS
from morphobench.images.cp_worker import otsu_contrast
from morphobench.images.segment import (
    SegmentParams,
    match_instances,
    object_table,
    open_labels,
    run_segment,
    segment_cells,
    segment_nuclei,
    segment_site,
)
from morphobench.images.synthetic import synthetic_site, write_synthetic_plate

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# match_instances
# ------------------------------------------------------------------------------------------
def test_match_instances_counts():
    truth = np.zeros((20, 20), int)
    truth[2:6, 2:6] = 1      # 16 px
    truth[10:14, 10:14] = 2  # 16 px
    truth[15:19, 2:6] = 3    # 16 px, missed
    pred = np.zeros_like(truth)
    pred[2:6, 2:6] = 7        # perfect (arbitrary ids)
    pred[10:14, 11:15] = 9    # IoU 12/20 = 0.6
    pred[0:2, 15:19] = 4      # false positive
    r = match_instances(pred, truth, iou=0.5)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["f1"] == pytest.approx(2 * 2 / (3 + 3))
    assert r["mean_matched_iou"] == pytest.approx((1 + 0.6) / 2)
    r7 = match_instances(pred, truth, iou=0.7)
    assert r7["tp"] == 1
    assert match_instances(truth, truth)["f1"] == 1.0
    empty = match_instances(np.zeros_like(truth), truth)
    assert (empty["tp"], empty["fn"], empty["f1"]) == (0, 3, 0.0)


def test_match_instances_one_to_one():
    """A prediction covering two truths matches at most one of them (low IoU threshold)."""
    truth = np.zeros((10, 20), int)
    truth[:, :10] = 1
    truth[:, 10:] = 2
    pred = np.ones_like(truth)
    r = match_instances(pred, truth, iou=0.3)
    assert r["tp"] == 1 and r["fn"] == 1 and r["fp"] == 0


# ------------------------------------------------------------------------------------------
# Synthetic ground truth
# ------------------------------------------------------------------------------------------
def _pooled_f1(results):
    return 2 * sum(r["tp"] for r in results) / sum(r["n_pred"] + r["n_true"] for r in results)


def test_synthetic_sites_f1():
    rng = np.random.default_rng(11)
    nres, cres = [], []
    for _ in range(4):
        imgs, nuc, cel = synthetic_site(rng)
        n, c, qc = segment_site(imgs.astype(np.float32), CHANNELS)
        assert qc["Count_Nuclei"] == n.max() and not qc["QC_Blank"]
        assert set(np.unique(c)) - {0} <= set(np.unique(n)) - {0}  # cells carry nucleus numbers
        assert np.all(c[n > 0] == n[n > 0])  # every nucleus inside its cell
        nres.append(match_instances(n, nuc))
        cres.append(match_instances(c, cel))
    assert _pooled_f1(nres) >= 0.85, nres
    assert _pooled_f1(cres) >= 0.75, cres


def test_declumps_touching_nuclei():
    yy, xx = np.mgrid[0:60, 0:80]
    img = np.zeros((60, 80))
    truth = np.zeros((60, 80), int)
    for k, cx in enumerate((28, 46), start=1):  # two discs of radius 10 overlapping by 2 px
        disc = (yy - 30) ** 2 + (xx - cx) ** 2 <= 100
        truth[disc & (truth == 0)] = k
        img[disc] = 1000
    img += 100
    lab, _ = segment_nuclei(img, SegmentParams(min_diameter=8))
    assert lab.max() == 2
    assert match_instances(lab, truth)["tp"] == 2


def test_border_exclusion_and_size_filter():
    img = np.full((50, 50), 100.0)
    img[0:10, 20:30] = 1000      # touches the border
    img[20:32, 20:32] = 1000     # 12 px square, kept
    img[40:42, 40:42] = 1000     # too small
    lab, _ = segment_nuclei(img, SegmentParams(min_diameter=6, exclude_border=False))
    assert lab.max() == 2
    lab, _ = segment_nuclei(img, SegmentParams(min_diameter=6, exclude_border=True))
    assert lab.max() == 1 and lab[25, 25] == 1


def test_zero_objects_and_blank():
    flat = np.full((40, 40), 123.0)
    lab, t = segment_nuclei(flat)
    assert lab.max() == 0 and np.isnan(t)
    cells, _ = segment_cells(flat, lab)
    assert cells.max() == 0
    tab = object_table(lab, cells, {"Metadata_Plate": "P"}, image_number=1)
    assert len(tab) == 0 and "Nuclei_Location_Center_X" in tab.columns
    n, c, qc = segment_site(np.zeros((5, 40, 40), np.float32), CHANNELS)
    assert qc["QC_Blank"] and qc["Count_Nuclei"] == 0


def test_noise_only_site_gets_no_objects():
    """A noise-only nuclei channel (empty well, failed stain) is not segmented: Otsu would split the
    noise into hundreds of 'nuclei'; the contrast guard gives zero objects and a QC flag."""
    rng = np.random.default_rng(0)
    img = rng.poisson(300, size=(5, 128, 128)).astype(np.float32)
    img[0] += np.linspace(0, 30, 128)[None, :]  # plus a residual illumination ramp
    assert otsu_contrast(img[0]) < 4.0
    n, c, qc = segment_site(img, CHANNELS)
    assert qc["QC_LowContrast"] and not qc["QC_Blank"] and qc["Count_Nuclei"] == 0 and n.max() == 0
    assert 2.0 < qc["Contrast_Nuclei"] < 4.0
    # the guard is what stops it: without it the noise is "segmented"
    n0, _, qc0 = segment_site(img, CHANNELS, SegmentParams(min_contrast=0))
    assert qc0["Count_Nuclei"] > 0 and not qc0["QC_LowContrast"]
    # level- and scale-free: pure noise ≈ 2.7 at any gain/offset
    assert abs(otsu_contrast(rng.normal(5, 0.1, (256, 256))) - otsu_contrast(rng.normal(900, 40, (256, 256)))) < 0.1
    assert np.isnan(otsu_contrast(np.full((20, 20), 3.0)))


def test_object_table_values():
    nuc = np.zeros((20, 30), np.uint32)
    nuc[2:6, 3:9] = 1
    cel = nuc.copy()
    cel[0:8, 0:12] = 1
    cel[cel == 0] = 0
    tab = object_table(nuc, cel, {"Metadata_Well": "A01"}, image_number=3)
    row = tab.iloc[0]
    assert row["Nuclei_AreaShape_Area"] == 24 and row["Cells_AreaShape_Area"] == 96
    assert row["Nuclei_Location_Center_X"] == pytest.approx(5.5)
    assert row["Nuclei_Location_Center_Y"] == pytest.approx(3.5)
    assert bool(row["Cells_TouchesBorder"]) and not bool(row["Nuclei_TouchesBorder"])
    assert row["ImageNumber"] == 3 and row["ObjectNumber"] == 1 and row["Metadata_Well"] == "A01"


# ------------------------------------------------------------------------------------------
# Real nuclei (StarDist's img2d / mask2d)
# ------------------------------------------------------------------------------------------
def _stardist_files():
    bases = [Path(os.environ["MORPHOBENCH_RESOURCES"])] if os.environ.get("MORPHOBENCH_RESOURCES") else []
    bases.append(REPO / "resources")
    for b in bases:
        img, mask = b / "stardist" / "img2d.tif", b / "stardist" / "mask2d.tif"
        if img.exists() and mask.exists():
            return img, mask
    try:  # build from an already-downloaded wheel, never from the network here
        from morphobench.resources import build_table

        return tuple(build_table(f"stardist/{f}", REPO / "resources", offline=True)
                     for f in ("img2d.tif", "mask2d.tif"))
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"StarDist img2d/mask2d not available ({err}); run "
                    "`python -m morphobench.resources ensure --resources-dir resources`")


def test_real_and_synthetic_nuclei_pass_the_contrast_guard():
    import tifffile

    guard = SegmentParams().min_contrast
    img_p, _ = _stardist_files()
    assert otsu_contrast(tifffile.imread(img_p), SegmentParams().smooth_sigma) > guard  # ≈ 6.5
    rng = np.random.default_rng(11)
    for _ in range(3):
        imgs, _, _ = synthetic_site(rng)
        assert otsu_contrast(imgs[0]) > 2 * guard


def test_stardist_real_nuclei_f1():
    import tifffile

    img_p, mask_p = _stardist_files()
    img, mask = tifffile.imread(img_p), tifffile.imread(mask_p)
    lab, _ = segment_nuclei(img.astype(np.float32), SegmentParams())
    r = match_instances(lab, mask, iou=0.5)
    assert r["f1"] >= 0.70, r


# ------------------------------------------------------------------------------------------
# Plate stage
# ------------------------------------------------------------------------------------------
def test_run_segment_store_and_table(tmp_path):
    sheet, truth = write_synthetic_plate(tmp_path / "img", wells=("A01", "B02"), sites=1, seed=3)
    objects, qc = run_segment(sheet, tmp_path / "labels.zarr", tmp_path / "objects.parquet",
                              qc_out=tmp_path / "qc.parquet")
    arr, sites = open_labels(tmp_path / "labels.zarr")
    assert arr.shape == (2, 2, 256, 256) and arr.chunks == (1, 2, 256, 256)
    assert list(sites["Metadata_Well"]) == ["A01", "B02"]
    assert list(sites["ImageNumber"]) == [1, 2]
    back = pd.read_parquet(tmp_path / "objects.parquet")
    for col in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "ImageNumber", "ObjectNumber",
                "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y", "Cells_Location_Center_X",
                "Cells_Location_Center_Y", "Nuclei_AreaShape_Area", "Cells_AreaShape_Area",
                "Nuclei_TouchesBorder", "Cells_TouchesBorder"):
        assert col in back.columns, col
    # the stored labels are what the table describes
    for im, g in back.groupby("ImageNumber"):
        nuc = np.asarray(arr[im - 1, 0])
        assert nuc.max() == len(g)
        np.testing.assert_array_equal(np.bincount(nuc.ravel())[1:], g["Nuclei_AreaShape_Area"].to_numpy())
        key = (sites.loc[im - 1, "Metadata_Well"], int(sites.loc[im - 1, "Metadata_Site"]))
        assert match_instances(nuc, truth["nuclei"][key])["f1"] >= 0.85


def test_constant_raw_dna_is_blank_even_after_illumination_correction(tmp_path):
    """A constant (non-zero) raw DNA image is a blank site: QC flag and zero objects, although
    dividing by the illumination function makes it non-constant."""
    import tifffile

    from morphobench.data.tables import CHANNELS, filename_col, pathname_col
    from morphobench.images.io import IllumFunctions
    from morphobench.images.segment import SegmentParams, run_segment

    rng = np.random.default_rng(0)
    row = {"Metadata_Source": "s", "Metadata_Batch": "b", "Metadata_Plate": "P", "Metadata_Well": "A01",
           "Metadata_Site": 1}
    for ch in CHANNELS:
        img = np.full((64, 64), 500, np.uint16) if ch == "DNA" else rng.integers(100, 3000, (64, 64), dtype=np.uint16)
        tifffile.imwrite(tmp_path / f"{ch}.tif", img)
        row[filename_col(ch)] = f"{ch}.tif"
        row[pathname_col(ch)] = str(tmp_path)
    yy, xx = np.mgrid[:64, :64]
    field = (1 + 0.5 * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 400)).astype(np.float32)
    illum = IllumFunctions({ch: field for ch in CHANNELS}, plate="P")
    objects, qc = run_segment(pd.DataFrame([row]), tmp_path / "l.zarr", tmp_path / "o.parquet",
                              SegmentParams(), illum=illum)
    assert len(objects) == 0
    assert bool(qc["QC_Blank"].iloc[0]) and qc["QC_BlankChannels"].iloc[0] == "DNA"


def test_jump_presets_and_unknown_preset():
    """The JUMP pipeline settings (shared/JUMP_PIPELINE.md §1-4); other keys override a preset."""
    from morphobench.images.illum import illum_params
    from morphobench.images.segment import segment_params
    from morphobench.io import MorphobenchError

    s = segment_params({"preset": "jump"})
    assert (s.method, s.threshold_method, s.min_diameter, s.max_diameter, s.declump, s.dividing_lines,
            s.maxima_suppression) == ("cellprofiler", "li", 15.0, 90.0, "shape", "intensity", 8.0)
    assert s.threshold_bounds == (0.005, 1.0) and s.smooth_sigma * 2 * 0.6744 == pytest.approx(1.0)
    assert (s.nuclei_background_block, s.nuclei_background_filter) == (30, 50.0)
    assert (s.cell_channel, s.cell_method, s.cell_threshold_classes, s.cell_threshold_log,
            s.cell_threshold_correction, s.cell_threshold_bounds) == ("RNA", "intensity", 3, True, 0.7, (0.005, 0.06))
    assert s.exclude_border and segment_params({"preset": "jump", "min_diameter": 10}).min_diameter == 10
    i = illum_params({"preset": "jump"})
    assert (i.method, i.resize_factor, i.filter_size, i.robust_min_percentile) == ("cellprofiler", 0.2, 20, 2.0)
    with pytest.raises(MorphobenchError, match="unknown preset 'jumpp'"):
        segment_params({"preset": "jumpp"})
