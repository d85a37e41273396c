"""The MAE family's figures (targets of workflow/rules/mae.smk):

- :func:`reconstructions`   MAE-W Fig. 1 / MAE-CVPR Fig. 2: masked input / reconstruction / original,
                            per channel, for validation tiles of a trained MAE (ViT, CA-MAE, MU-Net)
- :func:`loss_curves`       MAE-CVPR Fig. 3: reconstruction loss vs crops seen (log-log), with
                            (solid) and without (dashed) the Fourier loss
- :func:`recall_vs_flops`   MAE-W Figs. 2/4, MAE-CVPR Fig. 5 (left): known-relationship recall vs
                            training FLOPs of every trained method
- :func:`r2_mae_vs_wsl`     MAE-CVPR Fig. 6: median R² per CellProfiler category, MAE vs WSL models

    python -m morphobench.figures.mae reconstructions --model model.pt --crops INDEX --split S --out PNG
    python -m morphobench.figures.mae loss-curves --logs NAME=train_log.tsv … --out PNG
    python -m morphobench.figures.mae recall-vs-flops --known results/known_relationships.tsv \
        --cost results/training_cost.tsv --out PNG
    python -m morphobench.figures.mae r2-mae-vs-wsl --table results/cp_regression_summary.tsv \
        --methods A B … --out PNG
    python -m morphobench.figures.mae training-cost --logs DATASET:METHOD:FAMILY=train_log.tsv … --out TSV \
        [--config-hash H] [--methods JSON]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from morphobench.figures.plots import _check, _grouped_bars, _save, plt
from morphobench.io import MorphobenchError, cli_exit, load_json_arg, read_table, setup_logging, write_provenance

#: corrections preferred for the recall axis, in order (MAE-W §4: TVN then chromosome-arm correction)
CORRECTION_ORDER = ("tvn+arm", "tvn", "standardize_plate", "none")


def _pick_correction(df: pd.DataFrame) -> str:
    have = set(df["correction"])
    for c in CORRECTION_ORDER:
        if c in have:
            return c
    return sorted(have)[0]


def reconstructions(model_path: str | os.PathLike, crops_index: str | os.PathLike, out: str | os.PathLike, *,
                    split: str | os.PathLike | None = None, n_tiles: int = 2, seed: int = 0) -> None:
    """Masked input / reconstruction / original of ``n_tiles`` tiles (validation wells of the
    model's split when given), one row per tile × channel."""
    import torch

    from morphobench.embed.learned import crop_batches  # noqa: F401  (same normalization path)
    from morphobench.training.data import AugmentConfig, CropSet, augment, index_rows, load_batch
    from morphobench.training.splits import read_split
    from morphobench.training.stage import load_trained

    model, payload = load_trained(model_path)
    if not hasattr(model, "reconstruct"):
        raise MorphobenchError(f"{model_path}: model {payload['model']!r} does not reconstruct images")
    rows = index_rows(crops_index)
    if split is not None:
        val = read_split(split, payload.get("fold", 0), payload["spec"].get("split"))
        val = val.loc[val["split"] == "val", ["Metadata_Plate", "Metadata_Well"]]
        sel = rows.merge(val, on=["Metadata_Plate", "Metadata_Well"], how="inner")
        rows = sel if len(sel) else rows
    if rows.empty:
        raise MorphobenchError(f"{crops_index}: no tiles")
    pick = np.random.default_rng(seed).choice(len(rows), size=min(n_tiles, len(rows)), replace=False)
    ds = CropSet(rows.iloc[np.sort(pick)].reset_index(drop=True), payload["channels"])
    x = augment(load_batch(ds, range(len(ds)))["image"], AugmentConfig(**payload["augment"]), train=False)
    torch.manual_seed(seed)
    rec = model.reconstruct(x)
    chans = payload["channels"]
    nrow = len(ds) * len(chans)
    fig, axes = plt.subplots(nrow, 3, figsize=(5.4, 1.8 * nrow), squeeze=False)
    for t in range(len(ds)):
        for c, ch in enumerate(chans):
            r = t * len(chans) + c
            lo, hi = np.percentile(rec["original"][t, c].numpy(), [1, 99.5])
            for j, key in enumerate(("masked", "reconstruction", "original")):
                ax = axes[r][j]
                ax.imshow(rec[key][t, c].numpy(), cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(key, fontsize=8)
            axes[r][0].set_ylabel(f"tile {t + 1}\n{ch}", fontsize=7)
    fig.suptitle(f"{payload['spec']['name']} (mask {float(rec['mask_ratio']):.0%})", fontsize=9)
    _save(fig, out)


def loss_curves(logs: Mapping[str, str | os.PathLike], out: str | os.PathLike) -> None:
    """Validation reconstruction loss (MSE part; total loss when absent) vs crops seen, log-log;
    "+" methods (Fourier loss) solid, their plain twins dashed in the same colour."""
    if not logs:
        raise MorphobenchError("loss curves: no training logs")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    bases = sorted({n.rstrip("+") for n in logs})
    cmap = plt.get_cmap("tab10" if len(bases) <= 10 else "tab20")
    for name, path in sorted(logs.items()):
        log = read_table(path, what=f"training log of {name}")
        _check(log, ["epoch", "crops_seen"], f"training log {path}")
        colour = cmap(bases.index(name.rstrip("+")) % cmap.N)
        style = "-" if name.endswith("+") else "--"
        for ax, col in zip(axes, ("train_loss", "val_mse" if "val_mse" in log else "val_loss"), strict=True):
            if col in log:
                ax.plot(log["crops_seen"], log[col], style, marker=".", color=colour, label=name)
                ax.set_ylabel(col)
    for ax, title in zip(axes, ("training loss", "validation reconstruction (MSE on masked patches)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("crops seen")
        ax.set_title(title, fontsize=9)
    axes[1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, out)


def recall_vs_flops(known: pd.DataFrame, cost: pd.DataFrame, out: str | os.PathLike, *,
                    value: str = "recall_5_95") -> None:
    """Recall of each source (panels) vs training FLOPs (log x), one point per trained method."""
    _check(known, ["dataset", "method", "correction", "source", value], "known relationships")
    _check(cost, ["dataset", "method", "train_flops"], "training cost")
    corr = _pick_correction(known)
    df = known[known["correction"] == corr].merge(cost, on=["dataset", "method"], how="inner")
    df = df[np.isfinite(df[value].astype(float)) & (df["train_flops"].astype(float) > 0)]
    if df.empty:  # e.g. screens without gene perturbations: say so on the figure
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no known-relationship recall of a trained method\n(no gene perturbations?)",
                ha="center", va="center", fontsize=8)
        ax.set_axis_off()
        _save(fig, out)
        return
    sources = sorted(df["source"].unique())
    fig, axes = plt.subplots(1, len(sources), figsize=(3.2 * len(sources), 3.2), squeeze=False)
    methods = sorted(df["method"].unique())
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    for ax, src in zip(axes[0], sources, strict=True):
        sub = df[df["source"] == src]
        for i, m in enumerate(methods):
            g = sub[sub["method"] == m]
            ax.scatter(g["train_flops"], g[value], color=cmap(i % cmap.N), label=m, s=18)
        ax.set_xscale("log")
        ax.axhline(0.10, ls=":", c="grey")
        ax.set_title(src, fontsize=9)
        ax.set_xlabel("training FLOPs")
    axes[0][0].set_ylabel(f"{value} ({corr})")
    axes[0][-1].legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, out)


def r2_mae_vs_wsl(summary: pd.DataFrame, methods: Sequence[str], out: str | os.PathLike) -> None:
    """Median R² per CellProfiler category for ``methods`` (the MAE and WSL models), one correction."""
    _check(summary, ["method", "correction", "category", "median_r2"], "CellProfiler regression summary")
    sub = summary[summary["method"].isin(list(methods))]
    if sub.empty:
        raise MorphobenchError(f"CellProfiler regression summary has no rows of {list(methods)}")
    corr = _pick_correction(sub)
    sub = sub[sub["correction"] == corr]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * sub["category"].nunique() + 2), 3.2))
    _grouped_bars(ax, sub, "category", ["method"], "median_r2")
    ax.set_ylabel(f"median R² (held-out plates, {corr})")
    _save(fig, out)


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key or not val:
            raise MorphobenchError(f"{what}: expected NAME=PATH, got {it!r}")
        out[key] = val
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m morphobench.figures.mae", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reconstructions")
    r.add_argument("--model", required=True)
    r.add_argument("--crops", required=True)
    r.add_argument("--split")
    r.add_argument("--tiles", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    lc = sub.add_parser("loss-curves")
    lc.add_argument("--logs", nargs="+", required=True)
    rf = sub.add_parser("recall-vs-flops")
    rf.add_argument("--known", required=True)
    rf.add_argument("--cost", required=True)
    r2 = sub.add_parser("r2-mae-vs-wsl")
    r2.add_argument("--table", required=True)
    r2.add_argument("--methods", nargs="+", required=True)
    tc = sub.add_parser("training-cost")
    tc.add_argument("--logs", nargs="+", required=True)
    tc.add_argument("--config-hash")
    tc.add_argument("--methods", default="{}", help="methods provenance (JSON)")
    for p in (r, lc, rf, r2, tc):
        p.add_argument("--out", required=True)
        p.add_argument("--log")
    a = ap.parse_args(argv)
    setup_logging(a.log)

    def run():
        if a.cmd == "reconstructions":
            reconstructions(a.model, a.crops, a.out, split=a.split, n_tiles=a.tiles, seed=a.seed)
        elif a.cmd == "loss-curves":
            loss_curves(_pairs(a.logs, "--logs"), a.out)
        elif a.cmd == "recall-vs-flops":
            recall_vs_flops(read_table(a.known, what="known relationships"), read_table(a.cost, what="training cost"),
                            a.out)
        elif a.cmd == "r2-mae-vs-wsl":
            r2_mae_vs_wsl(read_table(a.table, what="results table"), a.methods, a.out)
        else:
            from morphobench.training.cost import training_cost

            logs = {}
            for k, v in _pairs(a.logs, "--logs").items():
                parts = k.split(":")
                if len(parts) != 3:
                    raise MorphobenchError(f"--logs: expected DATASET:METHOD:FAMILY=PATH, got {k!r}")
                logs[tuple(parts)] = v
            training_cost(logs, a.out)
            write_provenance(a.out, config_digest=a.config_hash, methods=load_json_arg(a.methods, "--methods"))

    return cli_exit(f"morphobench.figures.mae {a.cmd}", run)


if __name__ == "__main__":
    sys.exit(main())
