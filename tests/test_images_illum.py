"""Illumination correction against a known multiplicative field."""

from __future__ import annotations

import numpy as np
import pytest

from morphobench.images.illum import (
    IllumParams,
    effective_median_size,
    flatfield_cv,
    illum_function,
    run_illum,
)
from morphobench.images.io import IllumFunctions, read_site
from morphobench.images.synthetic import illumination_field, synthetic_site, write_synthetic_plate


def test_effective_median_size():
    p = IllumParams()
    assert effective_median_size(1080, p) == 25  # DeepProfiler's 24, made odd
    assert effective_median_size(2048, p) == 25
    assert effective_median_size(256, p) == 13  # 24·256/512 = 12 → odd
    assert effective_median_size(256, IllumParams(median_reference_width=None)) == 25


def test_function_is_at_least_one_and_flat_input_gives_ones():
    f = illum_function(np.full((64, 64), 500.0))
    np.testing.assert_allclose(f, 1.0)
    g = illum_function(np.zeros((64, 64)))  # blank average: no correction
    np.testing.assert_allclose(g, 1.0)
    rng = np.random.default_rng(0)
    h = illum_function(100 + 50 * illumination_field((128, 128), rng))
    assert h.dtype == np.float32 and h.min() >= 1.0 and h.max() > 1.1
    assert np.isclose(np.percentile(h, 2), 1.0, atol=1e-3)


@pytest.fixture(scope="module")
def plate_in_memory():
    """96 synthetic 256² sites, 2 channels, under a known field (in memory: fast)."""
    rng = np.random.default_rng(5)
    chs = ("DNA", "AGP")
    field = np.stack([illumination_field((256, 256), rng) for _ in chs])
    imgs = np.stack([synthetic_site(rng, channels=chs, field=field)[0] for _ in range(96)])
    return chs, field, imgs


def test_estimate_matches_true_field_and_flattens(plate_in_memory):
    chs, field, imgs = plate_in_memory
    p = IllumParams()
    mean = imgs.mean(0)
    for i, ch in enumerate(chs):
        f = illum_function(mean[i], p)
        r = np.corrcoef(f.ravel(), field[i].ravel())[0, 1]
        assert r >= 0.95, (ch, r)
        after = (imgs[:, i] / f).mean(0)
        ratio = flatfield_cv(mean[i], p) / flatfield_cv(after, p)
        assert ratio >= 5, (ch, ratio)


def test_run_illum_writes_npz_and_png(tmp_path):
    sheet, truth = write_synthetic_plate(tmp_path / "img", wells=("A01", "A02"), sites=2, size=128,
                                         n_cells=8, channels=("DNA", "ER"), seed=1)
    run_illum(sheet, tmp_path / "out" / "P1.npz", png=tmp_path / "out" / "P1.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["P1.npz", "P1.png"]
    back = IllumFunctions.load(tmp_path / "out" / "P1.npz")
    assert back.channels == ["DNA", "ER"] and back.plate == "P1"
    assert back.meta["n_images"] == {"DNA": 4, "ER": 4}
    for ch in back:
        assert back[ch].shape == (128, 128) and back[ch].dtype == np.float32 and back[ch].min() >= 1
    corrected = read_site(sheet.iloc[0], ["DNA", "ER"], illum=back)
    assert corrected.shape == (2, 128, 128)
