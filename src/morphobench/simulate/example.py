"""``results/figures/example_sites_<dataset>.png``: what the simulated cells look like.

Rows are sites of the first plate (a negative control, both positive controls and the strongest
treatment); columns are the channels (read back from the TIFFs, contrast per channel shared by
all rows so differences are visible) and a colour composite (R = Mito, G = AGP, B = DNA).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from morphobench.data.tables import filename_col, pathname_col, sheet_channels
from morphobench.io import MorphobenchError, atomic_path


def _read(row: pd.Series, ch: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(Path(row[pathname_col(ch)]) / row[filename_col(ch)]).astype(np.float32)


def pick_sites(sheet: pd.DataFrame, wells: pd.DataFrame, perts: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    plate = sorted(sheet["Metadata_Plate"].unique())[0]
    w = wells[wells["Metadata_Plate"] == plate]
    s = sheet[(sheet["Metadata_Plate"] == plate) & (sheet["Metadata_Site"] == sheet["Metadata_Site"].min())]
    s = s.merge(w[["Metadata_Well", "Metadata_Perturbation", "Metadata_PertType"]], on="Metadata_Well")
    strength = perts.set_index("Metadata_Perturbation")["phenotype_strength"]
    trt = s[s["Metadata_PertType"].eq("trt")].copy()
    trt["strength"] = trt["Metadata_Perturbation"].map(strength)
    picks = []
    neg = s[s["Metadata_PertType"].eq("negcon")].sort_values("Metadata_Well")
    if neg.empty:
        raise MorphobenchError(f"example sites: plate {plate} has no negative-control sites")
    picks.append(neg.iloc[0])
    for _, pc in s[s["Metadata_PertType"].eq("poscon")].drop_duplicates("Metadata_Perturbation").iterrows():
        picks.append(pc)
    if not trt.empty:
        picks.append(trt.sort_values(["strength", "Metadata_Well"], ascending=[False, True]).iloc[0])
    return [(f"{r['Metadata_Perturbation']} ({r['Metadata_PertType']})\n{plate} {r['Metadata_Well']}", r)
            for r in picks]


def example_sites_figure(dataset_dir: str | Path, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(dataset_dir)
    sheet = pd.read_parquet(d / "images.parquet")
    wells = pd.read_parquet(d / "wells.parquet")
    perts = pd.read_parquet(d / "truth" / "perturbations.parquet")
    chans = [c for c in sheet_channels(sheet)]
    picks = pick_sites(sheet, wells, perts)
    imgs = [{ch: _read(r, ch) for ch in chans} for _, r in picks]
    lims = {}
    for ch in chans:
        ref = imgs[0][ch]
        lims[ch] = (np.percentile(ref, 0.5), max(np.percentile(ref, 99.8), np.percentile(ref, 0.5) + 1))

    def norm(x, ch):
        lo, hi = lims[ch]
        return np.clip((x - lo) / (hi - lo), 0, 1)

    ncol = len(chans) + 1
    size = imgs[0][chans[0]].shape[0]
    tile = max(2.0, size / 110)
    fig, axes = plt.subplots(len(picks), ncol, figsize=(tile * ncol, tile * len(picks) + 0.4), squeeze=False)
    for i, ((label, _), im) in enumerate(zip(picks, imgs, strict=True)):
        for j, ch in enumerate(chans):
            ax = axes[i, j]
            ax.imshow(norm(im[ch], ch), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(ch)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
        rgb = np.stack([norm(im.get("Mito", 0 * im["DNA"]), "Mito" if "Mito" in im else "DNA"),
                        norm(im.get("AGP", 0 * im["DNA"]), "AGP" if "AGP" in im else "DNA"),
                        norm(im["DNA"], "DNA")], -1)
        ax = axes[i, ncol - 1]
        ax.imshow(rgb, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_title("Mito / AGP / DNA")
    fig.suptitle(f"{d.name}: example sites (raw, contrast from the negative control)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return out
