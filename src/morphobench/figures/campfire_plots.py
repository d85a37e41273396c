"""Campfire figures (figures.smk targets, drawn from the results tables):

- :func:`probe_accuracy`  Campfire Table 3.1 layout: probe accuracy (mean ± sd over subsets/folds) for
  ID/OOD compound × ID/OOD plate, one bar per method (each method's own embeddings)
- :func:`channel_set_accuracy`  Campfire Fig. 3.4 / Table 3.2: accuracy per channel set of the
  channel-agnostic methods (task A and task B on ID plates, and on OOD plates)
- :func:`zprime_bars`  Campfire Fig. 3.5 layout as bars: Z′ per (reference → target) pair and method
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from morphobench.figures.plots import _check, _grouped_bars, _save, plt
from morphobench.io import MorphobenchError

#: (task, test split) → Table 3.1 column
COLUMNS = {("A", "test"): "ID compound\nID plate", ("A", "test_out_plate"): "ID compound\nOOD plate",
           ("B", "test_out_compound"): "OOD compound\nID plate", ("B", "test_out_all"): "OOD compound\nOOD plate"}


def _summary(tab: pd.DataFrame, by: list[str], value: str = "accuracy") -> pd.DataFrame:
    g = tab.groupby(by, sort=True)[value]
    out = g.mean().rename("mean").to_frame().join(g.std(ddof=1).rename("sd")).reset_index()
    return out.fillna({"sd": 0.0})


def probe_accuracy(probes: pd.DataFrame, path: str | os.PathLike, value: str = "accuracy") -> None:
    """``probes``: results/campfire_probes.tsv (one row per probe × test split)."""
    _check(probes, ["dataset", "method", "channel_set", "task", "test_split", value, "n_classes"], "campfire probes")
    tab = probes[probes["channel_set"] == "default"].copy()
    if tab.empty:
        tab = probes.copy()
    tab["column"] = [COLUMNS.get((t, s), f"{t} {s}") for t, s in zip(tab["task"], tab["test_split"], strict=True)]
    summ = _summary(tab, ["dataset", "method", "column"], value)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * summ["column"].nunique() + 2), 3.4))
    _grouped_bars(ax, summ, "column", ["dataset", "method"], "mean", err="sd")
    chance = tab.groupby("column")["n_classes"].max().rdiv(1.0)
    xs = sorted(summ["column"].unique())
    for i, c in enumerate(xs):
        ax.hlines(chance.get(c, np.nan), i - 0.45, i + 0.45, colors="grey", linestyles=":")
    ax.set_ylabel(f"linear probe {value}")
    ax.set_ylim(0, 1)
    ax.set_title("single-cell linear probes (dotted: chance = 1 / classes)", fontsize=9)
    _save(fig, path)


def channel_set_accuracy(probes: pd.DataFrame, path: str | os.PathLike, value: str = "accuracy") -> None:
    """Probe accuracy per channel set (methods re-embedded with each set); ``default`` rows are left
    out unless no method has channel sets."""
    _check(probes, ["dataset", "method", "channel_set", "task", "test_split", value], "campfire probes")
    tab = probes[probes["channel_set"] != "default"]
    note = ""
    if tab.empty:
        tab, note = probes, " (no channel-agnostic method: own embeddings only)"
    panels = [k for k in COLUMNS if ((tab["task"] == k[0]) & (tab["test_split"] == k[1])).any()]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4), squeeze=False,
                             gridspec_kw={"wspace": 0.6})
    for ax, (task, split) in zip(axes[0], panels, strict=False):
        sub = tab[(tab["task"] == task) & (tab["test_split"] == split)]
        summ = _summary(sub, ["dataset", "method", "channel_set"], value)
        _grouped_bars(ax, summ, "channel_set", ["dataset", "method"], "mean", err="sd")
        if "n_classes" in sub:
            ax.axhline(1.0 / sub["n_classes"].max(), ls=":", c="grey")
        ax.set_title(COLUMNS[(task, split)].replace("\n", ", ") + note, fontsize=8)
        ax.set_ylabel(value)
    _save(fig, path)


def zprime_bars(z: pd.DataFrame, path: str | os.PathLike, value: str = "zprime") -> None:
    """``z``: results/zprime.tsv."""
    _check(z, ["dataset", "method", "correction", "reference", "target", value], "Z′ table")
    tab = z.dropna(subset=[value]).copy()
    if tab.empty:
        raise MorphobenchError("Z′ table: no finite Z′ values to plot")
    tab["pair"] = tab["reference"].astype(str) + " → " + tab["target"].astype(str)
    tab[value] = tab[value].clip(lower=-5.0)  # Z′ is unbounded below; the axis shows ≥ −5
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * tab["pair"].nunique() + 3), 3.4))
    _grouped_bars(ax, tab, "pair", ["method", "correction"], value)
    ax.axhline(0.0, c="black", lw=0.6)
    ax.axhline(0.5, ls=":", c="grey")
    ax.set_ylabel("Z′ (clipped at −5)")
    _save(fig, path)
