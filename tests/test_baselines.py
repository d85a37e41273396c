"""Simple baselines: random embeddings and 30 pixel statistics."""

import numpy as np
import pandas as pd
import pytest
from skimage.filters import threshold_otsu

from morphobench import methods
from morphobench.embed.baselines import PIXEL_STATS, pixel_stats_for, pixel_stats_site, random_profiles, shuffled_profiles
from morphobench.io import MorphobenchError


def test_random_profiles_fixed_seed_order_independent():
    wells = pd.DataFrame({"Metadata_Plate": ["P1"] * 3 + ["P2"] * 3,
                          "Metadata_Well": ["A01", "A02", "A03"] * 2,
                          "Metadata_PertType": ["trt"] * 6})
    a = random_profiles(wells, dim=1024, seed=7)
    assert a.shape == (6, 3 + 1024)
    b = random_profiles(wells.iloc[::-1].reset_index(drop=True), dim=1024, seed=7)
    pd.testing.assert_frame_equal(a, b.iloc[::-1].reset_index(drop=True))
    c = random_profiles(wells, dim=1024, seed=8)
    assert not np.allclose(a.filter(like="emb_").to_numpy(), c.filter(like="emb_").to_numpy())
    x = a.filter(like="emb_").to_numpy()
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05
    # distinct wells are (near) orthogonal in 1,024-D
    cos = (x[0] @ x[1]) / np.linalg.norm(x[0]) / np.linalg.norm(x[1])
    assert abs(cos) < 0.15


def test_pixel_stats_site_30_features_match_definitions():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 100.0, size=(5, 64, 64)).astype(np.float32)
    img[0, :20, :20] += 2000  # bright object in DNA
    f = pixel_stats_site(img)
    assert len(f) == 30 == 5 * len(PIXEL_STATS)
    v = img[0].astype(np.float64).ravel()
    assert f["PixelStats_mean_DNA"] == pytest.approx(v.mean())
    assert f["PixelStats_std_DNA"] == pytest.approx(v.std())
    assert f["PixelStats_median_DNA"] == pytest.approx(np.median(v))
    assert f["PixelStats_p05_DNA"] == pytest.approx(np.percentile(v, 5))
    assert f["PixelStats_p95_DNA"] == pytest.approx(np.percentile(v, 95))
    assert f["PixelStats_frac_above_otsu_DNA"] == pytest.approx((v > threshold_otsu(v)).mean())
    assert f["PixelStats_frac_above_otsu_DNA"] == pytest.approx(400 / 4096, abs=0.01)
    with pytest.raises(MorphobenchError, match="expected"):
        pixel_stats_site(img[:4])


def test_pixel_stats_uses_every_channel_and_stays_30_d():
    """Six channels (RxRx3) keep all six: five statistics each (30-D); eight channels (JUMP with
    brightfield) give three each; one channel every statistic."""
    rng = np.random.default_rng(1)
    six = ("DNA", "ER", "RNA", "AGP", "Mito", "WGA")
    img = rng.gamma(2.0, 100.0, size=(6, 32, 32)).astype(np.float32)
    f = pixel_stats_site(img, six)
    assert len(f) == 30 and {k.rsplit("_", 1)[1] for k in f} == set(six)
    assert "PixelStats_frac_above_otsu_DNA" not in f
    assert f["PixelStats_p95_WGA"] == pytest.approx(np.percentile(img[5].astype(np.float64), 95))
    assert pixel_stats_for(8) == PIXEL_STATS[:3] and pixel_stats_for(1) == PIXEL_STATS
    assert pixel_stats_for(5) == PIXEL_STATS and len(pixel_stats_for(30)) == 1


def test_shuffled_gives_every_well_another_wells_profile():
    rng = np.random.default_rng(2)
    wells = pd.DataFrame({"Metadata_Plate": np.repeat(["P1", "P2", "P3"], 7),
                          "Metadata_Well": [f"A{i:02d}" for i in range(7)] * 3,
                          "Metadata_PertType": "trt"})
    prof = wells.assign(f0=rng.normal(size=21), f1=rng.normal(size=21))
    a = shuffled_profiles(prof.sample(frac=1, random_state=0), seed=3)
    key = ["Metadata_Plate", "Metadata_Well"]
    merged = a.merge(prof, on=key, suffixes=("", "_own"))
    assert len(merged) == 21 and (merged["f0"] != merged["f0_own"]).all()  # no well keeps its own
    assert sorted(a["f0"]) == sorted(prof["f0"])  # a permutation of the same profiles
    b = shuffled_profiles(prof, seed=3)
    pd.testing.assert_frame_equal(a, b)  # depends on the seed only, not on row order
    assert not shuffled_profiles(prof, seed=4)["f0"].equals(a["f0"])
    with pytest.raises(MorphobenchError, match="at least 2"):
        shuffled_profiles(prof.iloc[:1])


def test_random_and_shuffled_baselines_are_methods():
    """MAE-W A.3: random embeddings of 128, 384, 512, 768 and 1,024 dimensions, and shuffled
    embeddings of another method; a shuffled method must name another method."""
    dims = {n: methods.get(n).params()["dim"] for n in ("random_128", "random_384", "random_512", "random_768", "random")}
    assert dims == {"random_128": 128, "random_384": 384, "random_512": 512, "random_768": 768, "random": 1024}
    c = methods.resolve([{"name": "shuffled", "params": {"source": "pixel_stats"}}])[0]
    assert c.method.input == "profiles" and c.method.crop_kind is None
    with pytest.raises(MorphobenchError, match="params.source"):
        methods.resolve([{"name": "shuffled", "params": {"source": "shuffled"}}])
    with pytest.raises(MorphobenchError, match="params.source"):
        methods.resolve([{"name": "shuffled", "params": {"source": "nope"}}])
