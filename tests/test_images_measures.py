"""The in-process implementations of CellProfiler's measurements and Identify modules against
their reference libraries in this environment (mahotas, cp-measure, scikit-image, centrosome) and
against hand computations. The CellProfiler library itself is the reference in
``test_images_parity.py``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from morphobench.images import identify
from morphobench.images.colocalization import rwc_objects
from morphobench.images.features import cytoplasm_labels
from morphobench.images.granularity import granularity
from morphobench.images.radial import radial_distribution
from morphobench.images.texture import HARALICK, haralick_objects, quantize


@pytest.fixture(scope="module")
def site():
    """A synthetic site: touching cells with textured, unevenly bright contents."""
    from morphobench.images.synthetic import synthetic_site

    img, nuc, cel = synthetic_site(np.random.default_rng(4), size=160, n_cells=14)
    px = np.clip(img / 65535.0, 0, 1)
    return px, nuc.astype(np.int64), cel.astype(np.int64)


def _contiguous(lab):
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(lab)[0]


@pytest.mark.parametrize("scale", [1, 3, 5])
def test_texture_equals_mahotas_per_object(site, scale):
    """Sparse all-object Haralick == mahotas.features.haralick(crop, distance, ignore_zeros)."""
    import mahotas
    import skimage.measure

    px, nuc, cel = site
    for lab in (_contiguous(nuc), _contiguous(cel), _contiguous(cytoplasm_labels(nuc, cel))):
        q = quantize(px[1])
        n = int(lab.max())
        ours = haralick_objects(lab, q, n, scale, undefined=np.nan)
        qq = q.copy()
        qq[lab == 0] = 0
        checked = 0
        for prop in skimage.measure.regionprops(lab, qq):
            try:
                ref = mahotas.features.haralick(prop.image_intensity, distance=scale, ignore_zeros=True)
            except ValueError:
                assert np.isnan(ours[prop.label - 1]).all()
                continue
            np.testing.assert_allclose(ours[prop.label - 1], ref, rtol=1e-9, atol=1e-12)
            checked += 1
        assert checked >= 10
    assert len(HARALICK) == 13


def test_texture_undefined_objects_are_zero_as_cellprofiler():
    """An object with no valid pixel pair gets 0 (CellProfiler), not NaN (cp-measure)."""
    lab = np.zeros((20, 20), int)
    lab[2:4, 2] = 1          # a vertical pair: no horizontal pairs at distance 1
    lab[8:16, 8:16] = 2
    px = np.random.default_rng(0).random((20, 20)) * 0.5 + 0.25
    f = haralick_objects(lab, quantize(px), 2, 1)
    assert (f[0] == 0).all() and np.isfinite(f[1]).all() and (f[1] != 0).any()


def test_granularity_equals_cp_measure(site):
    """One spectrum per channel for every compartment == cp-measure's per-compartment spectra."""
    from cp_measure.core.measuregranularity import get_granularity

    px, nuc, cel = site
    comps = {"Nuclei": _contiguous(nuc), "Cells": _contiguous(cel)}
    for sub in (0.25, 0.5):
        ops: dict = {}
        ours = granularity(px[2], {k: (v, int(v.max())) for k, v in comps.items()}, subsample=sub,
                           image_sample=sub, element_size=10, spectrum=8, operators=ops)
        assert set(ops) == set(comps)
        for comp, lab in comps.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = get_granularity(lab, px[2], subsample_size=sub, image_sample_size=sub, element_size=10,
                                      granular_spectrum_length=8)
            for k, v in ref.items():
                np.testing.assert_allclose(ours[comp][k], v, rtol=1e-9, atol=1e-9, err_msg=f"{comp} {k}")


def test_radial_equals_cp_measure_and_caches_geometry(site):
    from cp_measure.core.measureobjectintensitydistribution import get_radial_distribution

    px, nuc, cel = site
    lab = _contiguous(cytoplasm_labels(nuc, cel))
    cache: dict = {}
    for ch in range(3):
        ours = radial_distribution(lab, px[ch], int(lab.max()), 4, cache=cache)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = get_radial_distribution(lab, px[ch], bin_count=4)
        assert set(ours) == set(ref)
        for k in ref:
            np.testing.assert_allclose(ours[k], np.asarray(ref[k], float), rtol=1e-12, atol=1e-12,
                                       equal_nan=True, err_msg=k)
    assert len(cache) == 1


def test_rwc_ranks_the_sites_object_pixels_together():
    """RWC by hand: dense ranks over all object pixels of the site, thresholds at 15 % of each
    object's maximum, weights (R − |Δrank|) / R."""
    rng = np.random.default_rng(1)
    lab = np.zeros((12, 12), int)
    lab[1:6, 1:6] = 1
    lab[7:11, 6:11] = 2
    p1 = np.round(rng.random((12, 12)), 2)
    p2 = np.round(0.5 * p1 + 0.5 * rng.random((12, 12)), 2)
    res = rwc_objects(p1, p2, lab, 2, 15.0)
    inside = lab > 0
    a, b, obj = p1[inside], p2[inside], lab[inside]
    ra = np.searchsorted(np.unique(a), a)
    rb = np.searchsorted(np.unique(b), b)
    big_r = max(ra.max(), rb.max()) + 1
    w = (big_r - np.abs(ra - rb)) / big_r
    for k in (1, 2):
        m = obj == k
        t1, t2 = 0.15 * a[m].max(), 0.15 * b[m].max()
        both = (a[m] >= t1) & (b[m] >= t2)
        exp1 = (a[m] * w[m])[both].sum() / a[m][a[m] >= t1].sum()
        exp2 = (b[m] * w[m])[both].sum() / b[m][b[m] >= t2].sum()
        assert res["Correlation_RWC_1"][k - 1] == pytest.approx(exp1)
        assert res["Correlation_RWC_2"][k - 1] == pytest.approx(exp2)


def test_cytoplasm_keeps_every_cell():
    nuc = np.zeros((10, 10), int)
    cel = np.zeros((10, 10), int)
    cel[2:5, 2:5] = 1
    nuc[2:5, 2:5] = 1         # cell = nucleus: without shrink nothing would be left
    cyto = cytoplasm_labels(nuc, cel, shrink=False)
    assert (cyto == 1).sum() == 1 and cyto[2, 2] == 1      # CellProfiler's first-pixel rule


# --------------------------------------------------------------------------------------------
# identify.py (CellProfiler's Identify modules)
# --------------------------------------------------------------------------------------------
def test_thresholds_follow_cellprofiler():
    from skimage.filters import threshold_li, threshold_multiotsu

    rng = np.random.default_rng(2)
    img = np.clip(rng.gamma(2, 0.02, (64, 64)) + (rng.random((64, 64)) > 0.9) * 0.3, 0, 1)
    tol = max(np.min(np.diff(np.unique(img))) / 2, 0.5 / 65536)
    assert identify.global_threshold(img, "li") == pytest.approx(threshold_li(img.ravel(), tolerance=tol))
    assert identify.global_threshold(img, "li", bounds=(0.5, 1)) == 0.5
    lower = identify.global_threshold(img, "otsu", classes=3)
    assert lower == pytest.approx(threshold_multiotsu(img.ravel(), nbins=128)[0])
    logged = identify.global_threshold(img, "otsu", classes=3, log=True, correction=0.7, bounds=(0, 1))
    assert 0 < logged < img.max()


def test_size_and_border_filters():
    lab = np.zeros((40, 40), int)
    lab[0:6, 10:16] = 1          # touches the border
    lab[10:14, 10:14] = 2        # 16 px: below pi*5²/4 ≈ 19.6 with min 5
    lab[20:30, 20:30] = 3
    kept = identify.size_filter(lab, 5, 20)
    assert set(np.unique(kept)) == {0, 1, 3}
    cells = ndimage.grey_dilation(kept, size=3)
    nuc, cel = identify.filter_border(kept, cells)
    assert set(np.unique(nuc)) == {0, 1} and (nuc == 1).sum() == 100   # old 3 renumbered 1
    assert set(np.unique(cel)) == {0, 1} and (cel[nuc == 1] == 1).all()


def test_background_subtraction_removes_a_smooth_floor():
    y, x = np.mgrid[0:120, 0:120]
    floor = 0.1 + 0.05 * x / 120
    img = floor.copy()
    img[40:50, 40:50] += 0.3
    out = identify.subtract_background(img, block=30, filter_size=50)
    assert out.min() >= 0 and out[45, 45] == pytest.approx(0.3, abs=0.05)
    assert np.median(out) < 0.02
