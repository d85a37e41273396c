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

``holdout_batches`` (MAE-W §3: "a validation set of … images from full experiments unseen during
    training"; the MAE family's self-supervised models): every well of ``n_val`` held-out batches
    (experiments; drawn with the seed) is ``val``, every other well — controls included — is
    ``train``. With a single batch the held-out unit is a plate, with a single plate a quarter of
    each perturbation's wells (said so in the log). One fold.
``replicate_holdout`` (ours; the weakly supervised classifiers, which must see every class in
    training): per perturbation (controls included), ``round(val_fraction · n_wells)`` of its wells
    (never all; drawn with the seed) are ``val``, the rest ``train``. One fold.

The last two hold out *replicates* of a perturbation, not perturbations: they are registered with
``replicates=True`` and the "one treatment in one split" check does not apply to them.

Other kinds (Campfire's ID/OOD plate and compound split) register with :func:`register_split`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from collections.abc import Callable

import numpy as np
import pandas as pd

from morphobench.data.tables import WELL_KEYS, validate_plate_map
from morphobench.io import MorphobenchError, read_table, write_tsv

log = logging.getLogger("morphobench.training.splits")

SPLIT_COLUMNS = ["Metadata_Plate", "Metadata_Well", "Metadata_Perturbation", "Metadata_PertType", "fold", "split"]
SPLIT_LABELS = ("train", "val", "test", "control")

SPLITS: dict[str, Callable[..., pd.DataFrame]] = {}
#: split kinds that hold out replicate wells of a perturbation (not whole perturbations)
REPLICATE_SPLITS: set[str] = set()


def register_split(name: str, *, replicates: bool = False):
    """Register a split kind; ``replicates=True``: it may put one perturbation's wells in several
    splits of a fold (:func:`check_split` then skips the one-treatment-one-split check)."""
    def deco(fn):
        SPLITS[name] = fn
        if replicates:
            REPLICATE_SPLITS.add(name)
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


def _one_fold(wells: pd.DataFrame, is_val: np.ndarray) -> pd.DataFrame:
    t = wells[list(SPLIT_COLUMNS[:4])].reset_index(drop=True).copy()
    t["fold"] = 0
    t["split"] = np.where(is_val, "val", "train")
    return t


def _replicate_mask(wells: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    if not 0 < val_fraction < 1:
        raise MorphobenchError(f"replicate_holdout: val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(wells), bool)
    w = wells.reset_index(drop=True)
    for _, grp in w.sort_values(list(WELL_KEYS), kind="stable").groupby("Metadata_Perturbation", sort=True):
        n = len(grp)
        k = min(n - 1, int(round(val_fraction * n)))
        if k > 0:
            is_val[grp.index.to_numpy()[rng.permutation(n)[:k]]] = True
    return is_val


@register_split("replicate_holdout", replicates=True)
def replicate_holdout(wells: pd.DataFrame, val_fraction: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Hold out replicate wells of every perturbation (see the module docstring)."""
    validate_plate_map(wells, "plate map (split)")
    return _one_fold(wells, _replicate_mask(wells, val_fraction, seed))


@register_split("holdout_batches", replicates=True)
def holdout_batches(wells: pd.DataFrame, n_val: int = 1, seed: int = 0) -> pd.DataFrame:
    """Hold out whole batches (experiments), else plates, else replicate wells (module docstring)."""
    validate_plate_map(wells, "plate map (split)")
    if n_val < 1:
        raise MorphobenchError(f"holdout_batches: n_val must be ≥ 1, got {n_val}")
    w = wells.reset_index(drop=True)
    for col in ("Metadata_Batch", "Metadata_Plate"):
        units = sorted(w[col].dropna().astype(str).unique()) if col in w else []
        if len(units) > n_val:
            rng = np.random.default_rng(seed)
            held = {units[i] for i in rng.permutation(len(units))[:n_val]}
            log.info("holdout_batches: validation %s(s) %s of %d", col, sorted(held), len(units))
            return _one_fold(w, w[col].astype(str).isin(held).to_numpy())
    log.warning("holdout_batches: no %d batch(es) or plate(s) to spare; holding out a quarter of each "
                "perturbation's wells instead", n_val)
    return _one_fold(w, _replicate_mask(w, 0.25, seed))


def check_split(table: pd.DataFrame, source: str = "split table", kind: str | None = None) -> None:
    """A split table's invariants: columns, labels, one split per well and fold, and (unless
    ``kind`` holds out replicates) no treatment in two splits of the same fold."""
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
    if kind in REPLICATE_SPLITS:
        return
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
    check_split(table, f"split {kind}", kind)
    write_tsv(table, out)
    counts = table[table["fold"] == table["fold"].min()]["split"].value_counts().to_dict()
    log.info("split %s: %d folds; fold %d wells per split %s", kind, table["fold"].nunique(),
             table["fold"].min(), counts)
    return table


def read_split(path: str | os.PathLike, fold: int = 0, kind: str | None = None) -> pd.DataFrame:
    """The rows of one fold of a saved split table (``kind``: its split kind; by default the file
    name's stem, as in ``results/{dataset}/splits/{split}.tsv``)."""
    table = read_table(path, what="split table")
    check_split(table, str(path), kind if kind is not None else Path(path).stem)
    sub = table[table["fold"] == fold]
    if sub.empty:
        raise MorphobenchError(f"{path}: no fold {fold} (folds: {sorted(table['fold'].unique())})")
    return sub.reset_index(drop=True)
