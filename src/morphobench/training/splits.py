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
    training): per perturbation (controls included), ``val_fraction · n_wells`` (rounded half up) of its wells
    (never all; drawn with the seed) are ``val``, the rest ``train``. One fold.

``campfire`` (Campfire §2.1, Fig. 2.1): a plate-and-compound design with one fold. From the
    design plates, ``n_heldout_plates`` are out-of-distribution (OOD) plates and
    ``n_heldout_compounds`` treatments (compounds by default; never a control) are held out of
    training. On in-distribution (ID) plates every other perturbation (controls included) has its
    wells dealt to ``train`` / ``val`` / ``test`` (paper: 14 / 2 / 4, one well per plate; see
    :func:`campfire`); held-out compounds are ``test_out_compound`` on ID plates and
    ``test_out_all`` on OOD plates; every other well of an OOD plate is ``test_out_plate``. Wells
    not drawn are ``unused``. This kind splits by *well*: a treatment has wells in several splits.


The last three split by *well* (a perturbation's wells are in several splits of a fold): they are
registered with ``by="well"`` and the "one treatment in one split" check does not apply to them.
Their tables carry a ``split_kind`` column. Other kinds register with :func:`register_split`.
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
#: kinds that split by well (a treatment's wells may be in several splits of one fold)
BY_WELL: set[str] = set()


def register_split(name: str, *, by: str = "treatment"):
    """Register split kind ``name``; ``by="treatment"`` (a treatment is in one split per fold, checked)
    or ``"well"`` (tables carry ``split_kind``; :func:`check_split` then skips that check)."""
    if by not in ("treatment", "well"):
        raise MorphobenchError(f"split {name}: by must be treatment|well, got {by!r}")

    def deco(fn):
        SPLITS[name] = fn
        if by == "well":
            BY_WELL.add(name)
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


def _one_fold(wells: pd.DataFrame, is_val: np.ndarray, kind: str) -> pd.DataFrame:
    t = wells[list(SPLIT_COLUMNS[:4])].reset_index(drop=True).copy()
    t["fold"] = 0
    t["split"] = np.where(is_val, "val", "train")
    t["split_kind"] = kind
    return t


def _replicate_mask(wells: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    if not 0 < val_fraction < 1:
        raise MorphobenchError(f"replicate_holdout: val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(wells), bool)
    w = wells.reset_index(drop=True)
    for _, grp in w.sort_values(list(WELL_KEYS), kind="stable").groupby("Metadata_Perturbation", sort=True):
        n = len(grp)
        k = min(n - 1, int(np.floor(val_fraction * n + 0.5)))  # rounded half up: 2 wells → 1
        if k > 0:
            is_val[grp.index.to_numpy()[rng.permutation(n)[:k]]] = True
    return is_val


@register_split("replicate_holdout", by="well")
def replicate_holdout(wells: pd.DataFrame, val_fraction: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Hold out replicate wells of every perturbation (see the module docstring)."""
    validate_plate_map(wells, "plate map (split)")
    return _one_fold(wells, _replicate_mask(wells, val_fraction, seed), "replicate_holdout")


@register_split("holdout_batches", by="well")
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
            return _one_fold(w, w[col].astype(str).isin(held).to_numpy(), "holdout_batches")
    log.warning("holdout_batches: no %d batch(es) or plate(s) to spare; holding out a quarter of each "
                "perturbation's wells instead", n_val)
    return _one_fold(w, _replicate_mask(w, 0.25, seed), "holdout_batches")


#: the wells-per-split quotas are dealt in this order, one well at a time (see :func:`campfire`)
CAMPFIRE_DEAL_ORDER = ("train", "test", "val")
#: labels a Campfire split table may hold
CAMPFIRE_LABELS = ("train", "val", "test", "test_out_plate", "test_out_compound", "test_out_all", "unused")


@register_split("campfire", by="well")
def campfire(wells: pd.DataFrame, *, seed: int = 0, n_heldout_plates: int = 5, n_heldout_compounds: int = 60,
             n_train: int | None = 14, n_val: int = 2, n_test: int = 4, one_well_per_plate: bool = True,
             controls: list[str] | None = None, heldout_from: str = "compound", plates: list[str] | None = None,
             other_plates_train_fraction: float = 0.5) -> pd.DataFrame:
    """Campfire's ID/OOD split (§2.1, Fig. 2.1); defaults are the paper's (JUMP source_3 TARGET2).

    * **Design plates**: ``plates`` (default: every plate of the plate map). ``n_heldout_plates`` of
      them, drawn with the seed, are OOD plates: all their wells are test wells.
    * **Controls**: ``controls`` (default: the plate map's negcon + poscon perturbations); never held out.
    * **Held-out compounds**: ``n_heldout_compounds`` perturbations drawn among the treatments
      (``PertType == trt``) on the design plates, restricted to compounds (``Metadata_Compound``
      set) when ``heldout_from: compound``: ``test_out_compound`` on ID plates,
      ``test_out_all`` on OOD plates.
    * **ID perturbations** (every other one, controls included) on ID plates: the plates holding the
      perturbation are shuffled, its wells within a plate too, and the wells are taken one per plate
      in turn (first well of each plate, then the second …; with ``one_well_per_plate`` only the
      first); they are dealt one at a time to ``train``, ``test``, ``val`` (:data:`CAMPFIRE_DEAL_ORDER`,
      skipping full quotas) until ``n_train`` / ``n_test`` / ``n_val`` wells are reached
      (``n_train: null``: every remaining well). With enough plates this is the paper's rule
      (14 / 2 / 4 distinct plates chosen at random per compound); with fewer wells than quotas,
      every perturbation still gets a training well first, then a test well. Wells left over are
      ``unused`` (e.g. the paper's extra DMSO wells); on OOD plates every non-held-out well is
      ``test_out_plate``.
    * **Other plates** (not in ``plates``; the paper's COMPOUND plates): each well of an ID
      perturbation is ``train`` with probability ``other_plates_train_fraction`` (paper 0.5), else
      ``unused``; held-out compounds there are ``unused``.

    Returns one fold (0) with columns :data:`SPLIT_COLUMNS` + ``split_kind``. Counts that cannot be
    met (more held-out plates or compounds than exist, no ID plate left) are errors naming the
    parameter (``splits.campfire.<key>``).
    """
    where = "splits.campfire"
    validate_plate_map(wells, "plate map (split campfire)")
    for key, val in (("n_heldout_plates", n_heldout_plates), ("n_heldout_compounds", n_heldout_compounds),
                     ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(val, (int, np.integer)) or val < 0:
            raise MorphobenchError(f"{where}.{key} must be an integer ≥ 0, got {val!r}")
    if n_train is not None and (not isinstance(n_train, (int, np.integer)) or n_train < 1):
        raise MorphobenchError(f"{where}.n_train must be an integer ≥ 1 or null (every remaining well), "
                               f"got {n_train!r}")
    if heldout_from not in ("compound", "treatment"):
        raise MorphobenchError(f"{where}.heldout_from must be compound|treatment, got {heldout_from!r}")
    if not 0.0 <= other_plates_train_fraction <= 1.0:
        raise MorphobenchError(f"{where}.other_plates_train_fraction must be in [0, 1], "
                               f"got {other_plates_train_fraction}")
    w = wells.reset_index(drop=True).copy()
    w["Metadata_Plate"] = w["Metadata_Plate"].astype(str)
    w["Metadata_Perturbation"] = w["Metadata_Perturbation"].astype(str)
    all_plates = sorted(w["Metadata_Plate"].unique())
    design = sorted(map(str, plates)) if plates is not None else all_plates
    missing = sorted(set(design) - set(all_plates))
    if missing:
        raise MorphobenchError(f"{where}.plates: {len(missing)} plate(s) not in the plate map, e.g. {missing[:3]}")
    if n_heldout_plates >= len(design):
        raise MorphobenchError(f"{where}.n_heldout_plates = {n_heldout_plates} leaves no in-distribution plate "
                               f"({len(design)} design plates)")
    ctrl = campfire_controls(w, controls)
    rng = np.random.default_rng(seed)
    ood = set(np.asarray(design)[rng.permutation(len(design))[:n_heldout_plates]].tolist())
    on_design = w["Metadata_Plate"].isin(design)
    cand = on_design & w["Metadata_PertType"].eq("trt") & ~w["Metadata_Perturbation"].isin(ctrl)
    if heldout_from == "compound":
        if "Metadata_Compound" not in w.columns or not w.loc[cand, "Metadata_Compound"].notna().any():
            raise MorphobenchError(f"{where}: no compound treatments (Metadata_Compound) on the design plates; "
                                   "set heldout_from: treatment to hold out any treatment")
        cand &= w["Metadata_Compound"].notna()
    pool = sorted(w.loc[cand, "Metadata_Perturbation"].unique())
    if n_heldout_compounds > len(pool):
        raise MorphobenchError(f"{where}.n_heldout_compounds = {n_heldout_compounds} but only {len(pool)} "
                               f"{heldout_from} treatments on the design plates")
    heldout = set(np.asarray(pool, dtype=object)[rng.permutation(len(pool))[:n_heldout_compounds]].tolist())
    label = np.full(len(w), "unused", dtype=object)
    is_ood = w["Metadata_Plate"].isin(ood).to_numpy()
    is_held = w["Metadata_Perturbation"].isin(heldout).to_numpy()
    des = on_design.to_numpy()
    label[des & is_ood & is_held] = "test_out_all"
    label[des & is_ood & ~is_held] = "test_out_plate"
    label[des & ~is_ood & is_held] = "test_out_compound"
    quota = {"train": n_train, "val": n_val, "test": n_test}
    short = 0
    idp = w[des & ~is_ood & ~is_held]
    for pert in sorted(idp["Metadata_Perturbation"].unique()):
        sub = idp[idp["Metadata_Perturbation"] == pert]
        prng = np.random.default_rng([seed, _stable_int(pert)])
        by_plate = [grp.index.to_numpy()[prng.permutation(len(grp))]
                    for _, grp in sorted(sub.groupby("Metadata_Plate"), key=lambda kv: kv[0])]
        by_plate = [by_plate[i] for i in prng.permutation(len(by_plate))]
        rounds = 1 if one_well_per_plate else max(len(b) for b in by_plate)
        order = [b[r] for r in range(rounds) for b in by_plate if r < len(b)]
        got = {k: 0 for k in quota}
        for row in order:
            free = [k for k in CAMPFIRE_DEAL_ORDER if quota[k] is None or got[k] < quota[k]]
            if not free:
                break
            # the split that is furthest behind in the deal order's rotation
            k = min(free, key=lambda s: (got[s], CAMPFIRE_DEAL_ORDER.index(s)))
            label[row] = k
            got[k] += 1
        if any(q is not None and got[k] < q for k, q in quota.items()):
            short += 1
    if short:
        log.info("split campfire: %d in-distribution perturbation(s) have fewer ID wells than "
                 "n_train + n_val + n_test; their quotas were filled in the order %s", short,
                 "/".join(CAMPFIRE_DEAL_ORDER))
    other = ~des
    if other.any():
        held_anywhere = w["Metadata_Perturbation"].isin(heldout).to_numpy()
        draw = np.random.default_rng([seed, 7]).random(len(w)) < other_plates_train_fraction
        label[other & ~held_anywhere & draw] = "train"
    out = w[list(SPLIT_COLUMNS[:4])].copy()
    out["fold"] = 0
    out["split"] = label
    out["split_kind"] = "campfire"
    check_campfire_split(out, heldout=heldout, ood_plates=ood)
    log.info("split campfire: OOD plates %s; %d held-out %ss; controls %s", sorted(ood), len(heldout),
             heldout_from, ctrl)
    return out


def campfire_controls(table: pd.DataFrame, controls: list[str] | None = None) -> list[str]:
    """The control compounds of a Campfire design: ``controls`` (checked against the table), or
    the negcon + poscon perturbations of the plate map / split table."""
    perts = set(table["Metadata_Perturbation"].astype(str))
    if controls is None:
        ctrl = sorted(table.loc[table["Metadata_PertType"].isin(["negcon", "poscon"]),
                                "Metadata_Perturbation"].astype(str).unique())
        if not ctrl:
            raise MorphobenchError("splits.campfire: no negcon/poscon wells in the plate map; list the control "
                                   "compounds in splits.campfire.controls")
        return ctrl
    ctrl = sorted(map(str, controls))
    absent = sorted(set(ctrl) - perts)
    if absent:
        raise MorphobenchError(f"splits.campfire.controls: {absent} not in the plate map's Metadata_Perturbation")
    return ctrl


def _stable_int(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def check_campfire_split(table: pd.DataFrame, heldout: set[str] | None = None,
                         ood_plates: set[str] | None = None, source: str = "split campfire") -> None:
    """Campfire invariants: one label per well; known labels; a held-out compound (one with a
    ``test_out_compound``/``test_out_all`` well, or ``heldout``) is never in train/val/test;
    OOD plates (any ``test_out_plate``/``test_out_all`` well, or ``ood_plates``) hold test_out_* or
    unused wells only."""
    dup = table.duplicated(list(WELL_KEYS) + ["fold"])
    if dup.any():
        raise MorphobenchError(f"{source}: a well has two labels")
    bad = sorted(set(table["split"]) - set(CAMPFIRE_LABELS))
    if bad:
        raise MorphobenchError(f"{source}: unknown label(s) {bad}")
    held = set(heldout or ()) | set(table.loc[table["split"].isin(["test_out_compound", "test_out_all"]),
                                              "Metadata_Perturbation"].astype(str))
    leak = table[table["Metadata_Perturbation"].astype(str).isin(held) & table["split"].isin(["train", "val", "test"])]
    if len(leak):
        raise MorphobenchError(f"{source}: held-out compound(s) in train/val/test wells: "
                               f"{sorted(leak['Metadata_Perturbation'].astype(str).unique())[:5]}")
    ood = set(ood_plates or ()) | set(table.loc[table["split"].isin(["test_out_plate", "test_out_all"]),
                                                "Metadata_Plate"].astype(str))
    on_ood = table[table["Metadata_Plate"].astype(str).isin(ood) & table["split"].isin(["train", "val", "test"])]
    if len(on_ood):
        raise MorphobenchError(f"{source}: train/val/test wells on held-out plates "
                               f"{sorted(on_ood['Metadata_Plate'].astype(str).unique())[:5]}")


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
    kinds = set(table["split_kind"].astype(str)) if "split_kind" in table.columns else set()
    unknown = sorted(kinds - set(SPLITS))
    if unknown:
        raise MorphobenchError(f"{source}: unknown split_kind {unknown}; known: {sorted(SPLITS)}")
    if not kinds and kind in SPLITS:  # a table without split_kind: the kind the caller reads it as
        kinds = {kind}
    if kinds and kinds <= BY_WELL:
        return  # split by well: a treatment's wells are in several splits by design
    trt = table[table["Metadata_PertType"].eq("trt")]
    n = trt.groupby(["fold", "Metadata_Perturbation"])["split"].nunique()
    if (n > 1).any():
        raise MorphobenchError(f"{source}: treatment(s) in two splits of one fold: "
                               f"{n[n > 1].index.tolist()[:3]}")


#: Extra labels split kinds may use (Campfire's OOD test sets; wells a design leaves out).
EXTRA_LABELS: tuple[str, ...] = ("test_out_plate", "test_out_compound", "test_out_all", "unused")


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
