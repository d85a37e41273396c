"""Training cost of trained methods: one row per dataset × method from its ``train_log.tsv``.

``results/training_cost.tsv`` (MAE-W Figs. 2/4, MAE-CVPR Fig. 5 left put recall against it):
``dataset, method, family, epochs, best_epoch, crops_seen, train_flops, flops_per_crop, seconds``.
``crops_seen``/``train_flops`` are the whole run's (the last logged epoch: the training FLOPs spent,
whichever epoch was kept), in the papers' convention (see :mod:`morphobench.training.loop`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from morphobench.io import MorphobenchError, read_table, write_tsv

COLUMNS = ["dataset", "method", "family", "epochs", "best_epoch", "crops_seen", "train_flops", "flops_per_crop",
           "seconds"]


def cost_row(log: pd.DataFrame, source: str) -> dict:
    need = ["epoch", "crops_seen", "train_flops", "seconds"]
    missing = [c for c in need if c not in log.columns]
    if missing or log.empty:
        raise MorphobenchError(f"{source}: training log lacks {missing or 'rows'} (retrain with this version)")
    last = log.iloc[-1]
    best = log.loc[log["best"].astype(str).str.lower() == "true", "epoch"] if "best" in log else pd.Series(dtype=int)
    seen = float(last["crops_seen"])
    return {"epochs": int(last["epoch"]), "best_epoch": int(best.iloc[-1]) if len(best) else int(last["epoch"]),
            "crops_seen": int(seen), "train_flops": float(last["train_flops"]),
            "flops_per_crop": float(last["train_flops"]) / seen if seen else np.nan,
            "seconds": float(log["seconds"].sum())}


def training_cost(logs: Mapping[tuple[str, str, str], str | os.PathLike], out: str | os.PathLike) -> pd.DataFrame:
    """``logs``: (dataset, method, family) → train_log.tsv; writes and returns the table."""
    rows = []
    for (dataset, method, family), path in sorted(logs.items()):
        log = read_table(path, what=f"training log of {method}")
        rows.append({"dataset": dataset, "method": method, "family": family, **cost_row(log, str(path))})
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_tsv(table, out)
    return table
