"""The in-process backend measures what CellProfiler measures and finds the objects CellProfiler
finds (issue #10, items 3 and 4), with the ``jump`` presets, on real images shipped by pinned
packages and on synthetic sites:

- features on the SAME label image: per feature group, median Pearson r across objects ≥ 0.95
  over the group's shared features; equal values where the definitions are identical;
- segmentation with the same settings: object counts within 3 %, median IoU of matched objects
  ≥ 0.9, per site;
- illumination functions: equal up to float32 rounding.

The README's parity table comes from ``benchmarks/parity.py`` (the same functions, more sites).
Tests that run CellProfiler skip ONLY when its environment is absent (and fail instead if
``MORPHOBENCH_REQUIRE_CP=1``).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from morphobench.images import parity as P
from morphobench.images.cp_backend import resolve_python, worker_versions
from morphobench.io import MorphobenchError

GROUPS = {"AreaShape", "Intensity", "Texture", "Granularity", "RadialDistribution", "Correlation", "Neighbors"}
#: groups whose in-process definition is CellProfiler's, line by line: every feature equal
#: (up to CellProfiler's float32 images)
IDENTICAL = ("AreaShape", "Intensity", "Texture", "Neighbors")
FEATURES = {"preset": "jump", "channels": ["DNA", "RNA"]}


@pytest.fixture(scope="module")
def cp_python():
    try:
        py = resolve_python()
    except MorphobenchError as err:
        if os.environ.get("MORPHOBENCH_REQUIRE_CP") == "1":
            pytest.fail(f"MORPHOBENCH_REQUIRE_CP=1 but {err}")
        pytest.skip(f"CellProfiler environment absent: {err}")
    worker_versions(py)
    return str(py)


@pytest.fixture(scope="module")
def real(tmp_path_factory, cp_python, resources_dir):
    """The real sites (StarDist nuclei, mahotas nuclei, IHC), 256² crops, through both backends."""
    d = tmp_path_factory.mktemp("parity_real")
    rows = P.write_sites(d / "img", P.real_site_images(resources_dir, size=256))
    return P.run_parity(rows, d / "work", features=FEATURES, python=cp_python)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, cp_python):
    d = tmp_path_factory.mktemp("parity_sim")
    rows = P.simulated_sites(d / "img", n_sites=1, size=320, channels=("DNA", "RNA", "AGP"))
    return P.run_parity(rows, d / "work", features=FEATURES, python=cp_python)


@pytest.mark.parametrize("which", ["real", "simulated"])
def test_feature_groups_agree(which, request):
    res = request.getfixturevalue(which)
    groups = res["groups"].set_index("group")
    assert set(groups.index) == GROUPS, set(groups.index) ^ GROUPS
    assert res["n_objects"] >= 20
    low = groups[groups["median_r"] < 0.95]
    assert low.empty, low
    feats = res["features"]
    for g in IDENTICAL:
        sub = feats[feats["group"] == g]
        assert sub["equal"].all(), sub.loc[~sub["equal"], ["feature", "max_abs_diff"]].head()
    # granularity and colocalization follow CellProfiler's definitions too (float32 rounding)
    for g in ("Granularity", "Correlation"):
        sub = feats[feats["group"] == g]
        assert sub["r"].min() > 0.999, sub.nsmallest(3, "r")


@pytest.mark.parametrize("which", ["real", "simulated"])
def test_same_objects(which, request):
    seg: pd.DataFrame = request.getfixturevalue(which)["segmentation"]
    assert seg["n_b"].sum() >= 20
    for r in seg.itertuples():
        assert r.count_diff <= 0.03, r
        if r.n_b:
            assert r.median_iou >= 0.9, r


@pytest.mark.parametrize("which", ["real", "simulated"])
def test_same_illumination(which, request):
    diffs = request.getfixturevalue(which)["illum"]
    assert diffs and max(diffs.values()) < 1e-3, diffs


def test_feature_parity_statistics():
    """feature_parity's own arithmetic on a hand-made pair of tables."""
    rng = np.random.default_rng(0)
    x = rng.random(50)
    a = pd.DataFrame({"ImageNumber": 1, "ObjectNumber": np.arange(1, 51), "Nuclei_AreaShape_Area": x,
                      "Nuclei_Intensity_MeanIntensity_DNA": x, "Cells_Texture_Contrast_DNA_3_00_256": x,
                      "Cells_AreaShape_EulerNumber": np.ones(50)})
    b = a.copy()
    b["Nuclei_Intensity_MeanIntensity_DNA"] = x + 1e-9          # equal within tolerance
    b["Cells_Texture_Contrast_DNA_3_00_256"] = -x               # anti-correlated
    feats, groups = P.feature_parity(a, b.sample(frac=1, random_state=1))  # row order irrelevant
    f = feats.set_index("feature")
    assert f.loc["Nuclei_AreaShape_Area", "r"] == pytest.approx(1) and f.loc["Nuclei_AreaShape_Area", "equal"]
    assert f.loc["Nuclei_Intensity_MeanIntensity_DNA", "equal"]
    assert f.loc["Cells_Texture_Contrast_DNA_3_00_256", "r"] == pytest.approx(-1)
    assert f.loc["Cells_AreaShape_EulerNumber", "r"] == 1.0      # constant and equal in both
    g = groups.set_index("group")
    assert g.loc["Texture", "median_r"] == pytest.approx(-1) and g.loc["AreaShape", "n_features"] == 2


def test_segmentation_parity_statistics():
    a = np.zeros((20, 20), int)
    a[2:8, 2:8] = 1
    a[10:18, 10:18] = 2
    b = np.zeros_like(a)
    b[2:8, 2:9] = 5          # IoU 36/42
    b[0:2, 15:20] = 7        # unmatched
    r = P.segmentation_parity(a, b)
    assert (r["n_a"], r["n_b"], r["matched"]) == (2, 2, 1)
    assert r["median_iou"] == pytest.approx(36 / 42) and r["count_diff"] == 0
