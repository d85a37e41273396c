"""Saved split tables (``results/{dataset}/splits/{split}.tsv``) that every trained method reads.

A split table has one row per plate-map well and fold: ``Metadata_Plate``, ``Metadata_Well``,
``Metadata_Perturbation``, ``Metadata_PertType``, ``fold`` and ``split``. Training reads the
``train`` rows of its fold, picks the best epoch on ``val`` and never sees ``test``; evaluations
that need unseen treatments (MoA triplets) read ``test``.

Kinds (:data:`SPLITS`):

``treatment_folds`` (TEAMs §4: "5-fold cross-validation split by treatment"): treatments
    (``Metadata_PertType == "trt"``) are shuffled with the seed and dealt round-robin into
    ``n_folds`` folds, separately per modality (compound / gene / other) so every fold holds each
    modality; for fold ``f``: ``test`` = fold ``f``, ``val`` = fold ``f + 1 (mod n_folds)``,
    ``train`` = the others. Controls (negcon and poscon) are ``control`` in every fold: never in
    training (TEAMs: controls are excluded from training). A treatment is in exactly one
    fold's test set and never in two splits of the same fold.

Other kinds (Campfire's ID/OOD plate and compound split) register with :func:`register_split`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from morphobench.data.tables import WELL_KEYS, validate_plate_map
from morphobench.io import MorphobenchError, read_table, write_tsv

log = logging.getLogger("morphobench.training.splits")

SPLIT_COLUMNS = ["Metadata_Plate", "Metadata_Well", "Metadata_Perturbation", "Metadata_PertType", "fold", "split"]
SPLIT_LABELS = ("train", "val", "test", "control")

SPLITS: dict[str, Callable[..., pd.DataFrame]] = {}


def register_split(name: str):
    def deco(fn):
        SPLITS[name] = fn
        return fn

    return deco


def _modality(wells: pd.DataFrame) -> pd.Series:
    if "Metadata_Compound" in wells and wells["Metadata_Compound"].notna().any():
        cpd = wells["Metadata_Compound"].notna()
    else:
        cpd = pd.Series(False, index=wells.index)
    gene = wells["Metadata_Gene"].notna() if "Metadata_Gene" in wells else pd.Series(False, index=wells.index)
    return pd.Series(np.where(cpd, "compound", np.where(gene, "gene", "other")), index=wells.index)


@register_split("treatment_folds")
def treatment_folds(wells: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """k-fold split by treatment (see the module docstring)."""
    validate_plate_map(wells, "plate map (split)")
    if n_folds < 3:
        raise MorphobenchError(f"treatment_folds: n_folds must be ≥ 3 (test, val, train), got {n_folds}")
    trt = wells["Metadata_PertType"].eq("trt")
    perts = (wells.loc[trt].assign(_mod=_modality(wells.loc[trt]))
             .drop_duplicates("Metadata_Perturbation")[["Metadata_Perturbation", "_mod"]]
             .sort_values("Metadata_Perturbation", kind="stable"))
    if len(perts) < n_folds:
        raise MorphobenchError(f"treatment_folds: {len(perts)} treatments cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for _, grp in perts.groupby("_mod", sort=True):
        names = grp["Metadata_Perturbation"].to_numpy()[rng.permutation(len(grp))]
        for i, name in enumerate(names):
            fold_of[name] = (offset + i) % n_folds
        offset += len(names)
    base = wells[list(SPLIT_COLUMNS[:4])].reset_index(drop=True)
    parts = []
    for f in range(n_folds):
        t = base.copy()
        k = t["Metadata_Perturbation"].map(fold_of)
        lab = np.where(k == f, "test", np.where(k == (f + 1) % n_folds, "val", "train"))
        t["fold"] = f
        t["split"] = np.where(trt.to_numpy(), lab, "control")
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def check_split(table: pd.DataFrame, source: str = "split table") -> None:
    """A split table's invariants: columns, labels, one split per well and fold, and no treatment
    in two splits of the same fold."""
    missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing:
        raise MorphobenchError(f"{source}: missing column(s) {missing}")
    bad = sorted(set(table["split"]) - set(SPLIT_LABELS) - set(EXTRA_LABELS))
    if bad:
        raise MorphobenchError(f"{source}: unknown split label(s) {bad}")
    dup = table.duplicated(list(WELL_KEYS) + ["fold"])
    if dup.any():
        raise MorphobenchError(f"{source}: wells listed twice in one fold, e.g. "
                               f"{table.loc[dup, list(WELL_KEYS) + ['fold']].head(3).to_dict('records')}")
    trt = table[table["Metadata_PertType"].eq("trt")]
    n = trt.groupby(["fold", "Metadata_Perturbation"])["split"].nunique()
    if (n > 1).any():
        raise MorphobenchError(f"{source}: treatment(s) in two splits of one fold: "
                               f"{n[n > 1].index.tolist()[:3]}")


#: Extra labels split kinds may use (Campfire's OOD test sets).
EXTRA_LABELS: tuple[str, ...] = ("test_out_plate", "test_out_compound", "test_out_all")


def make_split(kind: str, wells_path: str | os.PathLike, out: str | os.PathLike, **params) -> pd.DataFrame:
    """Build split ``kind`` from a plate map and write it (atomically) to ``out``."""
    if kind not in SPLITS:
        raise MorphobenchError(f"unknown split {kind!r}; known: {sorted(SPLITS)}")
    wells = read_table(wells_path, what="plate map")
    table = SPLITS[kind](wells, **params)
    check_split(table, f"split {kind}")
    write_tsv(table, out)
    counts = table[table["fold"] == table["fold"].min()]["split"].value_counts().to_dict()
    log.info("split %s: %d folds; fold %d wells per split %s", kind, table["fold"].nunique(),
             table["fold"].min(), counts)
    return table


def read_split(path: str | os.PathLike, fold: int = 0) -> pd.DataFrame:
    """The rows of one fold of a saved split table."""
    table = read_table(path, what="split table")
    check_split(table, str(path))
    sub = table[table["fold"] == fold]
    if sub.empty:
        raise MorphobenchError(f"{path}: no fold {fold} (folds: {sorted(table['fold'].unique())})")
    return sub.reset_index(drop=True)
