"""TEAMs paper tables from the gathered MoA-triplet tables (each a Snakemake target).

Every table reports the mean ± sd of the accuracy over the evaluated folds (TEAMs: 5 folds) per
dataset × method (``n_folds`` says how many):

``teams_table2``  single-cell triplets by method: ``single_cell`` and ``vs_control`` (+ their average),
                  methods grouped as in the paper — (a) prior work (transfer learning, treatment
                  classification), (b) online negatives and its domain-generalization variants,
                  (c) TEAMs and its ablations; any other method (``random``, other families, your
                  own networks) in ``other``. Also our stricter ``single_cell_other_treatment``.
``teams_table3``  TEAMs trained on all but one variation group (``held_out``; ``none`` = all), scored
                  on the cells of each group (``test_group``; ``all`` = every group).
``teams_table4``  treatment-level triplets by method.
``teams_table5``  TEAMs with its two backbones (ResNet-18 ``teams``, EfficientNet-B0 ``teams_effnet``).
``teams_table6``  single-cell triplets of the models with experts in each expert mode (``mean`` =
                  TEAMs' concatenation, ``random``, ``oracle``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from morphobench.io import MorphobenchError, read_table, write_provenance, write_tsv

#: paper group of each TEAMs-family method (Table 2 a/b/c); others are "other"
PAPER_GROUPS: dict[str, str] = {
    "transfer_effnet": "a", "treatment_classification": "a",
    "online_negatives": "b", "online_negatives_adversarial": "b", "online_negatives_rsc": "b",
    "online_negatives_moe": "b",
    "teams_exemplars": "c", "teams_exemplars_moe": "c", "teams": "c", "teams_effnet": "c",
}
_ORDER = list(PAPER_GROUPS)


def _wide(tab: pd.DataFrame, tasks: list[str], index: list[str]) -> pd.DataFrame:
    sub = tab[tab["task"].isin(tasks)]
    if sub.empty:
        return pd.DataFrame(columns=index)
    g = sub.groupby(index + ["task"], sort=True, dropna=False)["accuracy"]
    agg = g.agg(mean="mean", sd="std", n_folds="count").reset_index()
    wide = agg.pivot_table(index=index, columns="task", values=["mean", "sd"], aggfunc="first", dropna=False)
    wide.columns = [f"{task}_{stat}" for stat, task in wide.columns]
    wide = wide.reset_index()
    nf = agg.groupby(index, dropna=False)["n_folds"].max().reset_index()
    wide = wide.merge(nf, on=index, how="left")
    cols = index + [f"{t}_{s}" for t in tasks for s in ("mean", "sd") if f"{t}_{s}" in wide.columns] + ["n_folds"]
    return wide[cols]


def _method_order(df: pd.DataFrame) -> pd.DataFrame:
    key = df["method"].map(lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m))
    return df.assign(_k=key).sort_values(["dataset", "group", "_k"] if "group" in df else ["dataset", "_k"],
                                         kind="stable").drop(columns="_k").reset_index(drop=True)


def table2(trip: pd.DataFrame) -> pd.DataFrame:
    t = trip[(trip["expert_mode"] == "mean") & (trip["test_group"].astype(str) == "all")]
    out = _wide(t, ["single_cell", "vs_control", "single_cell_other_treatment"], ["dataset", "method"])
    if out.empty:
        return out
    out.insert(1, "group", out["method"].map(lambda m: PAPER_GROUPS.get(m, "other")))
    if {"single_cell_mean", "vs_control_mean"} <= set(out.columns):
        out["average_mean"] = (out["single_cell_mean"] + out["vs_control_mean"]) / 2
    return _method_order(out)


def table4(trip: pd.DataFrame) -> pd.DataFrame:
    t = trip[(trip["expert_mode"] == "mean") & (trip["test_group"].astype(str) == "all")]
    out = _wide(t, ["treatment"], ["dataset", "method"])
    if out.empty:
        return out
    out.insert(1, "group", out["method"].map(lambda m: PAPER_GROUPS.get(m, "other")))
    return _method_order(out)


def table5(trip: pd.DataFrame) -> pd.DataFrame:
    t = trip[trip["method"].isin(["teams", "teams_effnet"]) & (trip["expert_mode"] == "mean")
             & (trip["test_group"].astype(str) == "all")]
    out = _wide(t, ["single_cell", "vs_control", "treatment"], ["dataset", "method"])
    if out.empty:
        return out
    out.insert(2, "backbone", out["method"].map({"teams": "resnet18", "teams_effnet": "efficientnet_b0"}))
    return out


def table6(modes: pd.DataFrame) -> pd.DataFrame:
    t = modes[modes["test_group"].astype(str) == "all"]
    out = _wide(t, ["single_cell", "vs_control"], ["dataset", "method", "expert_mode"])
    if out.empty:
        return out
    if {"single_cell_mean", "vs_control_mean"} <= set(out.columns):
        out["sum_mean"] = out["single_cell_mean"] + out["vs_control_mean"]  # TEAMs compares the sums
    order = {m: i for i, m in enumerate(("mean", "random", "oracle"))}
    return out.sort_values(["dataset", "method", "expert_mode"], key=lambda s: s.map(order) if s.name ==
                           "expert_mode" else s, kind="stable").reset_index(drop=True)


def table3(heldout: pd.DataFrame) -> pd.DataFrame:
    t = heldout[heldout["expert_mode"] == "mean"]
    return _wide(t, ["single_cell", "vs_control", "treatment"], ["dataset", "method", "held_out", "test_group"])


BUILDERS = {"teams_table2": table2, "teams_table3": table3, "teams_table4": table4, "teams_table5": table5,
            "teams_table6": table6}


def write_table(name: str, source: str | os.PathLike, out: str | os.PathLike, config_digest: str | None = None,
                methods: Mapping | None = None) -> pd.DataFrame:
    """Build paper table ``name`` from its gathered source table and write it (+ provenance)."""
    if name not in BUILDERS:
        raise MorphobenchError(f"unknown TEAMs table {name!r}; known: {sorted(BUILDERS)}")
    src = read_table(source, what="MoA triplets table")
    for col in ("dataset", "method", "task", "accuracy", "expert_mode", "test_group"):
        if col not in src.columns:
            raise MorphobenchError(f"{source}: no {col!r} column")
    tab = BUILDERS[name](src)
    if tab.empty:
        raise MorphobenchError(f"{name}: {source} has no rows for this table")
    tab = tab.replace([np.inf, -np.inf], np.nan)
    write_tsv(tab, out)
    write_provenance(out, config_digest=config_digest, methods=methods)
    return tab
