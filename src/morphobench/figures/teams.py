"""TEAMs paper figures: the triplet tables as bar charts / heat map, and the UMAP of test-cell
embeddings coloured by MoA and by treatment (TEAMs Fig. 5)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from morphobench.figures.plots import _check, _save, plt
from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.figures.teams")


def _bars(table: pd.DataFrame, tasks: list[str], path, hue: str = "method", title: str = "") -> None:
    tasks = [t for t in tasks if f"{t}_mean" in table.columns]
    _check(table, ["dataset", hue, *[f"{t}_mean" for t in tasks]], title or "TEAMs table")
    datasets = sorted(table["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(4.5, 1.6 * len(tasks) + 0.45 * table[hue].nunique() + 2)
                                                        * len(datasets), 3.4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        sub = table[table["dataset"] == ds].reset_index(drop=True)
        hues = list(dict.fromkeys(sub[hue]))
        width = 0.8 / max(1, len(hues))
        cmap = plt.get_cmap("tab20" if len(hues) > 10 else "tab10")
        for i, h in enumerate(hues):
            row = sub[sub[hue] == h].iloc[0]
            pos = np.arange(len(tasks)) + (i - (len(hues) - 1) / 2) * width
            mean = [row[f"{t}_mean"] for t in tasks]
            sd = [row.get(f"{t}_sd", np.nan) for t in tasks]
            ax.bar(pos, mean, width, yerr=np.nan_to_num(sd), capsize=2, label=str(h), color=cmap(i % cmap.N))
        ax.axhline(0.5, ls=":", c="grey")
        ax.set_xticks(np.arange(len(tasks)), [t.replace("_", " ") for t in tasks], rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("triplet accuracy (mean ± sd over folds)")
        ax.set_title(f"{title} — {ds}", fontsize=9)
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def table2_bars(table: pd.DataFrame, path: str | os.PathLike) -> None:
    t = table.assign(method=table["group"].astype(str) + ": " + table["method"].astype(str))
    _bars(t, ["single_cell", "vs_control", "single_cell_other_treatment"], path, title="TEAMs Table 2 (single cells)")


def table4_bars(table: pd.DataFrame, path: str | os.PathLike) -> None:
    t = table.assign(method=table["group"].astype(str) + ": " + table["method"].astype(str))
    _bars(t, ["treatment"], path, title="TEAMs Table 4 (treatments)")


def table5_bars(table: pd.DataFrame, path: str | os.PathLike) -> None:
    _bars(table, ["single_cell", "vs_control", "treatment"], path, hue="backbone", title="TEAMs Table 5 (backbones)")


def table6_bars(table: pd.DataFrame, path: str | os.PathLike) -> None:
    t = table.assign(mode=table["method"].astype(str) + " / " + table["expert_mode"].astype(str))
    _bars(t, ["single_cell", "vs_control"], path, hue="mode", title="TEAMs Table 6 (expert modes)")


def table3_heatmap(table: pd.DataFrame, path: str | os.PathLike, value: str = "single_cell_mean") -> None:
    _check(table, ["dataset", "method", "held_out", "test_group", value], "TEAMs Table 3")
    keys = table[["dataset", "method"]].drop_duplicates().to_dict("records")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        sub = table[(table["dataset"] == k["dataset"]) & (table["method"] == k["method"])]
        piv = sub.pivot_table(index="held_out", columns="test_group", values=value, aggfunc="mean")
        im = ax.imshow(piv.to_numpy(), cmap="viridis", vmin=0.4, vmax=1.0, aspect="auto")
        ax.set_xticks(range(piv.shape[1]), piv.columns, rotation=30, ha="right")
        ax.set_yticks(range(piv.shape[0]), [f"without {h}" if h != "none" else "all groups" for h in piv.index])
        for (i, j), v in np.ndenumerate(piv.to_numpy()):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="white" if v < 0.7 else "black")
        ax.set_xlabel("test cells of group")
        ax.set_title(f"{k['method']} — {k['dataset']}: {value.replace('_mean', '')}", fontsize=9)
        fig.colorbar(im, ax=ax)
    _save(fig, path)


def umap_figure(cells: pd.DataFrame, emb: np.ndarray, path: str | os.PathLike, *, title: str = "",
                moa_col: str = "Metadata_MoA", seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """UMAP (cosine metric) of ``emb`` (test cells), two panels coloured by MoA and by treatment
    (TEAMs Fig. 5). Returns the 2-D coordinates."""
    import umap

    _check(cells, ["Metadata_Perturbation", moa_col], "UMAP cells")
    if len(cells) != len(emb) or len(cells) < 5:
        raise MorphobenchError(f"UMAP: {len(cells)} cells and {len(emb)} embeddings (need ≥ 5 of each)")
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(cells) - 1), metric="cosine", random_state=seed,
                        n_jobs=1)
    xy = reducer.fit_transform(np.asarray(emb, dtype=np.float32))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, col, name in ((axes[0], moa_col, "MoA"), (axes[1], "Metadata_Perturbation", "treatment")):
        labels = cells[col].astype(str).to_numpy()
        uniq = sorted(set(labels))
        cmap = plt.get_cmap("tab20")
        for i, lab in enumerate(uniq):
            sel = labels == lab
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=cmap(i % 20), label=lab if len(uniq) <= 20 else None,
                       alpha=0.8, linewidths=0)
        ax.set_title(f"{title}: coloured by {name} ({len(uniq)})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(uniq) <= 20:
            ax.legend(fontsize=5, frameon=False, markerscale=3, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)
    return xy


def umap_stage(emb_path: str | os.PathLike, wells_path: str | os.PathLike, split_path: str | os.PathLike,
               out: str | os.PathLike, *, method: str = "", fold: int = 0, max_cells: int = 3000, seed: int = 0,
               moa_col: str = "Metadata_MoA", sep: str = "|") -> None:
    """The test cells with an MoA of one method's cell embeddings (at most ``max_cells``, drawn with
    ``seed``) → UMAP figure."""
    from morphobench.data.tables import feature_columns
    from morphobench.evaluate.triplets import parse_moas, test_cells
    from morphobench.io import read_table
    from morphobench.training.splits import read_split

    rows = read_table(emb_path, what="cell embeddings")
    cells = test_cells(rows, read_table(wells_path, what="plate map"), read_split(split_path, fold),
                       f"UMAP ({emb_path})")
    if moa_col not in cells.columns:
        raise MorphobenchError(f"UMAP: the plate map {wells_path} has no {moa_col!r} column")
    keep = (cells["role"] == "test").to_numpy() & np.array([bool(s) for s in parse_moas(cells[moa_col], sep)])
    idx = np.flatnonzero(keep)
    if len(idx) > max_cells:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_cells, replace=False))
    log.info("UMAP of %s: %d test cells with an MoA", method, len(idx))
    feats = feature_columns(rows)
    umap_figure(cells.iloc[idx].reset_index(drop=True), rows[feats].to_numpy()[idx], out,
                title=f"{method} (fold {fold} test cells)", moa_col=moa_col, seed=seed)
