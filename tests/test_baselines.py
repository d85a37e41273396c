"""Simple baselines: random embeddings and 30 pixel statistics."""

import numpy as np
import pandas as pd
import pytest
from skimage.filters import threshold_otsu

from morphobench.embed.baselines import PIXEL_STATS, pixel_stats_site, random_profiles
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
