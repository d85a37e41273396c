"""CellProfiler features via cp_measure: naming, values, aggregation, plate stage."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from morphobench.data.tables import validate_profiles
from morphobench.images.features import (
    cytoplasm_labels,
    FeatureParams,
    object_wells,
    cellprofiler_name,
    cp_measure_names,
    feature_group,
    feature_params,
    measure_site,
    profile_features,
    run_features,
    translation_table,
)
from morphobench.images.segment import run_segment
from morphobench.images.synthetic import write_synthetic_plate
from morphobench.io import MorphobenchError

# ------------------------------------------------------------------------------------------
# Translation table
# ------------------------------------------------------------------------------------------
EXAMPLES = {
    ("Area", "Nuclei"): "Nuclei_AreaShape_Area",
    ("Zernike_3_1", "Cells"): "Cells_AreaShape_Zernike_3_1",
    ("MaxFeretDiameter", "Cells"): "Cells_AreaShape_MaxFeretDiameter",
    ("Intensity_MeanIntensity__DNA", "Nuclei"): "Nuclei_Intensity_MeanIntensity_DNA",
    ("Location_CenterMassIntensity_X__ER", "Cells"): "Cells_Location_CenterMassIntensity_X_ER",
    ("AngularSecondMoment_3_00_256__DNA", "Cells"): "Cells_Texture_AngularSecondMoment_DNA_3_00_256",
    ("InfoMeas2_10_03_256__ER", "Cytoplasm"): "Cytoplasm_Texture_InfoMeas2_ER_10_03_256",
    ("Granularity_1__DNA", "Cells"): "Cells_Granularity_1_DNA",
    ("RadialDistribution_FracAtD_1of4__DNA", "Cells"): "Cells_RadialDistribution_FracAtD_DNA_1of4",
    ("RadialDistribution_ZernikePhase_9_9__ER", "Cells"): "Cells_RadialDistribution_ZernikePhase_ER_9_9",
    ("Correlation_Pearson__DNA__ER", "Cells"): "Cells_Correlation_Correlation_DNA_ER",
    ("Correlation_Slope__DNA__ER", "Cells"): "Cells_Correlation_Slope_DNA_ER",
    ("Correlation_Manders_1__DNA__ER", "Cells"): "Cells_Correlation_Manders_DNA_ER",
    ("Correlation_Manders_2__DNA__ER", "Cells"): "Cells_Correlation_Manders_ER_DNA",
    ("Correlation_RWC_2__DNA__ER", "Nuclei"): "Nuclei_Correlation_RWC_ER_DNA",
    ("Correlation_Costes_1__DNA__ER", "Nuclei"): "Nuclei_Correlation_Costes_DNA_ER",
    ("Correlation_K_2__DNA__ER", "Nuclei"): "Nuclei_Correlation_K_ER_DNA",
    ("Correlation_Overlap__DNA__ER", "Nuclei"): "Nuclei_Correlation_Overlap_DNA_ER",
    ("Neighbors_NumberOfNeighbors_Adjacent", "Cells"): "Cells_Neighbors_NumberOfNeighbors_Adjacent",
}


@pytest.mark.parametrize(("key", "expected"), list(EXAMPLES.items()))
def test_cellprofiler_name_examples(key, expected):
    assert cellprofiler_name(*key, channels=["DNA", "ER"]) == expected


def test_translation_of_every_cp_measure_name():
    chans = ["DNA", "ER", "RNA"]
    names = cp_measure_names(chans)  # the names cp_measure's own featurizer produces
    assert "Intensity_MeanIntensity__DNA" in names and "Area" in names
    tab = translation_table(names, channels=chans)
    kept = tab.dropna(subset=["cellprofiler_name"])
    assert not kept["cellprofiler_name"].duplicated().any()
    dropped = tab[tab["cellprofiler_name"].isna()]["cp_measure_name"].unique()
    for n in dropped:  # only cp_measure's reversed-order channel pairs are dropped
        _, a, b = n.split("__")
        assert chans.index(a) > chans.index(b), n
    assert set(kept["cellprofiler_name"].map(feature_group)) == {
        "AreaShape", "Intensity", "Texture", "Granularity", "RadialDistribution", "Correlation"}
    with pytest.raises(KeyError):
        cellprofiler_name("Mystery__DNA", "Cells")


# ------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_site():
    rng = np.random.default_rng(3)
    h, w = 64, 72
    nuc = np.zeros((h, w), np.int32)
    cel = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w]
    for k, (cy, cx) in enumerate([(16, 18), (20, 50), (46, 30)], start=1):
        cel[(yy - cy) ** 2 + (xx - cx) ** 2 <= 13 ** 2] = k
    for k, (cy, cx) in enumerate([(16, 18), (20, 50), (46, 30)], start=1):
        nuc[(yy - cy) ** 2 + ((xx - cx) / 1.3) ** 2 <= 6 ** 2] = k
    img = rng.integers(200, 4000, (2, h, w)).astype(np.float32)
    img[0][nuc > 0] += 5000
    return img, nuc, cel


def test_area_and_mean_intensity(small_site):
    img, nuc, cel = small_site
    df = measure_site(img, nuc, cel, ["DNA", "ER"], feature_params("minimal"))
    assert list(df["ObjectNumber"]) == [1, 2, 3]
    # IdentifyTertiaryObjects with "shrink": the nucleus's 1-px outline stays in the cytoplasm
    outline = np.zeros(nuc.shape, bool)
    for k in (1, 2, 3):
        inner = ndimage.binary_erosion(nuc == k, structure=np.ones((3, 3)), border_value=0)
        outline |= (nuc == k) & ~inner
    cyto = np.where((nuc > 0) & ~outline, 0, cel)
    np.testing.assert_array_equal(cytoplasm_labels(nuc, cel), cyto)
    np.testing.assert_array_equal(cytoplasm_labels(nuc, cel, shrink=False), np.where(nuc > 0, 0, cel))
    for k in (1, 2, 3):
        row = df.iloc[k - 1]
        assert row["Nuclei_AreaShape_Area"] == (nuc == k).sum()
        assert row["Cells_AreaShape_Area"] == (cel == k).sum()
        assert row["Cytoplasm_AreaShape_Area"] == (cyto == k).sum()
        for ci, ch in enumerate(["DNA", "ER"]):
            assert row[f"Nuclei_Intensity_MeanIntensity_{ch}"] == pytest.approx(
                img[ci][nuc == k].astype(np.float64).mean() / 65535, rel=1e-9)
            assert row[f"Cells_Intensity_IntegratedIntensity_{ch}"] == pytest.approx(
                img[ci][cel == k].astype(np.float64).sum() / 65535, rel=1e-9)


def test_equals_cp_measure_featurizer(small_site):
    """Our per-group calls give exactly what cp_measure's own featurizer gives, renamed."""
    from cp_measure.featurizer import featurize, make_featurizer_config

    img, nuc, cel = small_site
    chans = ["DNA", "ER"]
    params = FeatureParams(texture_scales=(3,), groups=("AreaShape", "Intensity", "Texture", "Granularity",
                                                        "RadialDistribution", "Correlation"))
    ours = measure_site(img, nuc, cel, chans, params)
    cfg = make_featurizer_config(chans, objects=["Nuclei", "Cells"],
                                 correlation_costes_params={"scale_max": 65535})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, cols, rows = featurize((img.astype(np.float64) / 65535.0)[None],
                                     np.stack([nuc, cel])[None], cfg)
    ref = pd.DataFrame(data, columns=cols)
    ref["object"] = [r[1] for r in rows]
    n_checked = 0
    for comp in ("Nuclei", "Cells"):
        sub = ref[ref["object"] == comp].reset_index(drop=True)
        for c in cols:
            name = cellprofiler_name(c, comp, chans)
            if name is None or "_RWC_" in name or any(
                    q in name for q in ("QuartileIntensity", "MedianIntensity", "MADIntensity")):
                # RWC: ours ranks the site's object pixels together, as CellProfiler does
                # (cp-measure ranks per object); quartiles, median and MAD interpolate as
                # CellProfiler does (cp-measure's default: numpy's); both are checked against
                # CellProfiler in test_images_parity
                continue
            np.testing.assert_allclose(ours[name].to_numpy(), sub[c].to_numpy(), rtol=1e-10,
                                       equal_nan=True, err_msg=name)
            n_checked += 1
    assert n_checked > 500


def test_subset_empty_cytoplasm_and_no_objects(small_site):
    img, nuc, cel = small_site
    cel2 = cel.copy()
    cel2[(cel == 2)] = 0
    cel2[nuc == 2] = 2  # object 2: cell == nucleus → empty cytoplasm
    df = measure_site(img, nuc, cel2, ["DNA", "ER"], feature_params("minimal", shrink_nuclei=False),
                      object_numbers=[2, 3])
    assert list(df["ObjectNumber"]) == [2, 3]
    # as CellProfiler, a cell left without cytoplasm keeps its first pixel (no object is lost)
    assert df.loc[0, "Cytoplasm_AreaShape_Area"] == 1 and df.loc[1, "Cytoplasm_AreaShape_Area"] > 0
    # with the shrunk nucleus (CellProfiler's default) the cytoplasm is the nucleus's outline
    df = measure_site(img, nuc, cel2, ["DNA", "ER"], feature_params("minimal"), object_numbers=[2, 3])
    inner = ndimage.binary_erosion(nuc == 2, structure=np.ones((3, 3)), border_value=0)
    assert df.loc[0, "Cytoplasm_AreaShape_Area"] == ((nuc == 2) & ~inner).sum()
    empty = measure_site(img, np.zeros_like(nuc), np.zeros_like(cel), ["DNA", "ER"])
    assert len(empty) == 0


def test_neighbors():
    lab = np.zeros((40, 60), np.int32)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2   # touches 1
    lab[25:35, 40:50] = 3  # alone
    img = np.ones((1, 40, 60), np.float32)
    df = measure_site(img, lab, lab, ["DNA"], FeatureParams(groups=("Neighbors",), compartments=("Cells",),
                                                            neighbors_method="Adjacent"))
    assert df["Cells_Neighbors_NumberOfNeighbors_Adjacent"].tolist() == [1, 1, 0]
    assert df["Cells_Neighbors_FirstClosestDistance_Adjacent"].iloc[0] == pytest.approx(10.0)


# ------------------------------------------------------------------------------------------
# Aggregation and plate stage
# ------------------------------------------------------------------------------------------
def test_aggregate_equals_pycytominer():
    from pycytominer import aggregate

    rng = np.random.default_rng(0)
    n = 60
    obj = pd.DataFrame({"Metadata_Plate": "P", "Metadata_Well": rng.choice(["A01", "A02", "B01"], n),
                        "ObjectNumber": np.arange(n), "Cells_AreaShape_Area": rng.normal(100, 10, n),
                        "Nuclei_Intensity_MeanIntensity_DNA": rng.random(n),
                        "Nuclei_Location_Center_X": rng.random(n)})
    ours = object_wells(obj)
    feats = profile_features(obj.columns)
    assert feats == ["Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_DNA"]
    ref = aggregate(obj, strata=["Metadata_Plate", "Metadata_Well"], features=feats, operation="median")
    pd.testing.assert_frame_equal(ours[["Metadata_Plate", "Metadata_Well"] + feats].reset_index(drop=True),
                                  ref[["Metadata_Plate", "Metadata_Well"] + feats].reset_index(drop=True),
                                  check_dtype=False)
    assert ours["Metadata_Count_Cells"].sum() == n


def test_run_features_strong_phenotype_separates(tmp_path):
    sheet, _ = write_synthetic_plate(tmp_path / "img", wells=("A01", "A02", "B01", "B02"), sites=1, size=192,
                                     n_cells=16, seed=4, phenotypes={"B01": 1.5, "B02": 1.5})
    run_segment(sheet, tmp_path / "l.zarr", tmp_path / "o.parquet")
    plate_map = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": ["A01", "A02", "B01", "B02"],
                              "Metadata_Perturbation": ["DMSO", "DMSO", "big", "big"],
                              "Metadata_PertType": ["negcon", "negcon", "trt", "trt"]})
    objects, wells = run_features(sheet, tmp_path / "l.zarr", tmp_path / "cp.parquet", tmp_path / "w.parquet",
                                  feature_params("minimal", max_objects_per_well=12), plate_map=plate_map)
    assert objects.groupby("Metadata_Well").size().max() <= 12
    back = pd.read_parquet(tmp_path / "w.parquet")
    assert list(back.columns[:7]) == ["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well",
                                      "Metadata_Count_Cells", "Metadata_Perturbation", "Metadata_PertType"]
    area = back.set_index("Metadata_Perturbation")["Nuclei_AreaShape_Area"]
    assert area["big"].min() > 1.5 * area["DMSO"].max()
    # the dataset-level CellProfiler profiles: the generic method_profiles stage (undefined features dropped)
    from morphobench import methods
    from morphobench.embed.stages import method_profiles

    plate_map.to_parquet(tmp_path / "pm.parquet")
    gathered = method_profiles(methods.Configured(methods.get("cellprofiler")).spec(), [tmp_path / "w.parquet"],
                               tmp_path / "pm.parquet", None, tmp_path / "all.parquet")
    validate_profiles(gathered, "gathered")
    # the rule's threads: sites measured in parallel processes, the same table
    par, _ = run_features(sheet, tmp_path / "l.zarr", tmp_path / "cp2.parquet", None,
                          feature_params("minimal", max_objects_per_well=12), plate_map=plate_map, workers=2)
    pd.testing.assert_frame_equal(par, objects)


def test_jump_preset():
    """The JUMP measurement settings (shared/JUMP_PIPELINE.md §5)."""
    from morphobench.images.features import neighbor_sets

    p = feature_params("jump")
    assert p.texture_scales == (3, 5, 10) and p.texture_gray_levels == 256
    assert (p.granularity_spectrum, p.granularity_subsample, p.granularity_image_sample,
            p.granularity_element_size) == (16, 0.5, 0.5, 10)
    assert p.radial_bins == 4 and not p.radial_zernikes and p.zernike and not p.advanced_shape
    assert "costes" not in p.correlations and p.correlation_threshold == 15 and p.shrink_nuclei
    assert neighbor_sets(p) == [("Nuclei", "Within a specified distance", 1),
                                ("Cells", "Within a specified distance", 5), ("Cells", "Adjacent", 0)]
    with pytest.raises(MorphobenchError, match="neighbors entry 'Cells:near'"):
        neighbor_sets(feature_params("jump", neighbors=("Cells:near",)))


def test_neighbors_of_a_site_with_one_or_no_object_are_zero_not_a_crash():
    """cp_measure 0.3.0 crashes on < 2 objects; CellProfiler reports zeros for a lone object."""
    from morphobench.images.features import _neighbors

    one = np.zeros((32, 32), dtype=np.int32)
    one[8:16, 8:16] = 1
    res = _neighbors(one, "Expand until adjacent", 5)
    assert res and all(v.shape == (1,) and (v == 0).all() for v in res.values())
    assert any(k.startswith("Neighbors_NumberOfNeighbors") for k in res)
    none = _neighbors(np.zeros((32, 32), dtype=np.int32), "Expand until adjacent", 5)
    assert set(none) == set(res) and all(v.shape == (0,) for v in none.values())
