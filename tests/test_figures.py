"""Figures render from the long-format tables and refuse malformed tables."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from morphobench.figures import plots
from morphobench.io import MorphobenchError


def _known():
    rows = []
    for m in ("random", "pixel_stats"):
        for c in ("none", "tvn"):
            for s in ("CORUM", "HuMAP", "StringDB"):
                rows.append({"dataset": "sim", "method": m, "correction": c, "source": s,
                             "recall_5_95": 0.1 + 0.1 * (m != "random") + 0.05 * (c == "tvn")})
    return pd.DataFrame(rows)


def _is_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 200 and im.size[1] > 150
        arr = np.asarray(im.convert("L"))
        assert arr.std() > 5  # not blank


def test_all_figures_render(tmp_path):
    known = _known()
    curve = pd.concat([known.assign(percentile=p, recall=0.02 * p) for p in (1, 5, 10, 20)])
    retr = pd.DataFrame({"dataset": "sim", "method": ["random", "pixel_stats"] * 2, "correction": "tvn",
                         "task": ["perturbation"] * 2 + ["sibling"] * 2, "mAP": [0.1, 0.5, 0.1, 0.3],
                         "mAP_sem": [0.01, 0.05, 0.02, 0.04], "fraction_retrieved": [0.0, 0.8, 0.0, 0.4]})
    summ = pd.DataFrame({"method": ["random", "pixel_stats"] * 2, "correction": "none",
                         "category": ["AreaShape"] * 2 + ["Intensity"] * 2, "median_r2": [0.0, 0.4, -0.1, 0.6]})
    retr_cond = pd.concat([retr.assign(condition=c, mAP_sd=0.05, fraction_retrieved_sd=0.1)
                           for c in ("CellType=U2OS", "CellType=A549", "mean ± sd")])
    outs = {
        "retrieval_cond.png": lambda p: plots.retrieval_bars(retr_cond, p),
        "curve.png": lambda p: plots.recall_curves(curve, p),
        "bymethod.png": lambda p: plots.recall_by_method(known, p),
        "retrieval.png": lambda p: plots.retrieval_bars(retr, p),
        "r2.png": lambda p: plots.r2_by_category(summ, p),
        "heat.png": lambda p: plots.batch_correction_heatmap(known[known.method == "pixel_stats"], p),
    }
    for name, fn in outs.items():
        fn(tmp_path / name)
        _is_png(tmp_path / name)


def test_bad_tables_give_clear_errors(tmp_path):
    with pytest.raises(MorphobenchError, match="lacks column"):
        plots.recall_by_method(_known().drop(columns="source"), tmp_path / "x.png")
    with pytest.raises(MorphobenchError, match="empty"):
        plots.recall_by_method(_known().iloc[:0], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
