"""Paper figures drawn from the results tables (each is a Snakemake target in figures.smk).

Every function takes the long-format table(s) written by the evaluation stages and writes one PNG
atomically. Layouts follow the papers:

- :func:`recall_curves`        MAE-CVPR Fig. 5 (right): recall vs percentile threshold, per source
- :func:`recall_by_method`     MAE-CVPR Table 3 layout: recall per source × method (grouped bars)
- :func:`retrieval_bars`       MAE-CVPR Table 4 layout: mAP / fraction retrieved per task × method, mean ± sd over conditions
- :func:`r2_by_category`       MAE-CVPR Fig. 6: median R² per CellProfiler category × method
- :func:`batch_correction_heatmap`  MAE-CVPR Table 2: recall per source × correction
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from morphobench.io import MorphobenchError, atomic_path  # noqa: E402


def _check(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise MorphobenchError(f"{what}: table lacks column(s) {missing}")
    if df.empty:
        raise MorphobenchError(f"{what}: table is empty")


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _label(row: pd.Series | dict, keys: list[str]) -> str:
    return " / ".join(str(row[k]) for k in keys)


def _grouped_bars(ax, table: pd.DataFrame, x: str, hue: list[str], y: str, err: str | None = None):
    xs = sorted(table[x].unique())
    hues = table[hue].drop_duplicates().sort_values(hue).to_dict("records")
    width = 0.8 / max(1, len(hues))
    # distinct colours for up to 20 series (the default cycle repeats after 10)
    cmap = plt.get_cmap("tab20" if len(hues) > 10 else "tab10")
    for i, h in enumerate(hues):
        sub = table
        for k, v in h.items():
            sub = sub[sub[k] == v]
        sub = sub.set_index(x).reindex(xs)
        pos = np.arange(len(xs)) + (i - (len(hues) - 1) / 2) * width
        yerr = sub[err].to_numpy() if err and err in sub else None
        ax.bar(pos, sub[y].to_numpy(), width, yerr=yerr, capsize=2, label=_label(h, hue),
               color=cmap(i % cmap.N))
    ax.set_xticks(np.arange(len(xs)), xs, rotation=30, ha="right")
    ax.set_ylabel(y)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def recall_curves(curve: pd.DataFrame, path: str | os.PathLike) -> None:
    """``curve``: dataset, method, correction, source, percentile, recall."""
    _check(curve, ["dataset", "method", "correction", "source", "percentile", "recall"], "recall curve")
    sources = sorted(curve["source"].unique())
    fig, axes = plt.subplots(1, len(sources), figsize=(3.2 * len(sources), 3.0), squeeze=False)
    for ax, src in zip(axes[0], sources, strict=True):
        sub = curve[curve["source"] == src]
        for key, g in sub.groupby(["dataset", "method", "correction"], sort=True):
            g = g.sort_values("percentile")
            ax.plot(g["percentile"], g["recall"], marker=".", label=" / ".join(key))
        ax.plot([1, 20], [0.02, 0.40], ls=":", c="grey", label="random")
        ax.set_title(src)
        ax.set_xlabel("percentile threshold (%)")
    axes[0][0].set_ylabel("recall")
    axes[0][-1].legend(fontsize=6, frameon=False)
    _save(fig, path)


def recall_by_method(known: pd.DataFrame, path: str | os.PathLike, value: str = "recall_5_95") -> None:
    """``known``: dataset, method, correction, source, recall_5_95 …"""
    _check(known, ["dataset", "method", "correction", "source", value], "known relationships")
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * known["source"].nunique() + 2), 3.2))
    _grouped_bars(ax, known, "source", ["dataset", "method", "correction"], value)
    ax.axhline(0.10, ls=":", c="grey")
    _save(fig, path)


def retrieval_bars(retrieval: pd.DataFrame, path: str | os.PathLike) -> None:
    """MAE-CVPR Table 4 layout. ``retrieval``: dataset, method, correction, task, mAP,
    fraction_retrieved; with a ``condition`` column, the ``mean ± sd`` rows (mean over conditions,
    error bars = sd over conditions)."""
    _check(retrieval, ["dataset", "method", "correction", "task", "mAP", "fraction_retrieved"], "retrieval")
    err_map, err_frac = "mAP_sem", None
    if "condition" in retrieval:
        from morphobench.evaluate.retrieval import SUMMARY

        retrieval = retrieval[retrieval["condition"] == SUMMARY]
        _check(retrieval, ["task"], "retrieval (mean ± sd rows)")
        err_map, err_frac = "mAP_sd", "fraction_retrieved_sd"
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"wspace": 0.9})
    _grouped_bars(axes[0], retrieval, "task", ["method", "correction"], "mAP", err=err_map)
    _grouped_bars(axes[1], retrieval, "task", ["method", "correction"], "fraction_retrieved", err=err_frac)
    axes[1].set_ylim(0, 1)
    _save(fig, path)


def r2_by_category(summary: pd.DataFrame, path: str | os.PathLike) -> None:
    """``summary``: dataset, method, correction, category, median_r2."""
    _check(summary, ["method", "correction", "category", "median_r2"], "CellProfiler regression summary")
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * summary["category"].nunique() + 2), 3.2))
    _grouped_bars(ax, summary, "category", ["method", "correction"], "median_r2")
    ax.set_ylabel("median R² (held-out plates)")
    _save(fig, path)


def batch_correction_heatmap(table: pd.DataFrame, path: str | os.PathLike, value: str = "recall_5_95") -> None:
    """MAE-CVPR Table 2 as a heat map, rows in the table's order (the paper's).

    ``table``: the batch-correction table (dataset, method, correction, ``recall_5_95_<source>``
    columns), or a long table (correction, source, recall_5_95)."""
    wide_cols = [c for c in table.columns if c.startswith(f"{value}_")]
    if wide_cols:
        _check(table, ["correction"] + wide_cols, "batch correction")
        keys = [k for k in ("dataset", "method") if k in table and table[k].nunique() > 1]
        labels = [" / ".join([*(str(r[k]) for k in keys), str(r["correction"])]) for _, r in table.iterrows()]
        piv = pd.DataFrame(table[wide_cols].to_numpy(dtype=float), index=labels,
                           columns=[c[len(value) + 1:] for c in wide_cols])
    else:
        _check(table, ["correction", "source", value], "batch correction")
        rows = list(dict.fromkeys(table["correction"]))
        piv = table.pivot_table(index="correction", columns="source", values=value, aggfunc="mean").reindex(rows)
    fig, ax = plt.subplots(figsize=(1.1 * piv.shape[1] + 3.5, 0.4 * piv.shape[0] + 1.5))
    im = ax.imshow(piv.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(piv.shape[1]), piv.columns, rotation=30, ha="right")
    ax.set_yticks(range(piv.shape[0]), piv.index)
    mean = np.nanmean(piv.to_numpy()) if np.isfinite(piv.to_numpy()).any() else 0.0
    for (i, j), v in np.ndenumerate(piv.to_numpy()):
        ax.text(j, i, "skipped" if np.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=7,
                color="white" if not np.isnan(v) and v < mean else "black")
    fig.colorbar(im, ax=ax, label=value)
    methods = sorted(table["method"].unique()) if "method" in table else []
    ax.set_title(f"recall by correction ({', '.join(methods)})", fontsize=9)
    _save(fig, path)
