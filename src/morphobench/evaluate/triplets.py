"""MoA triplets (TEAMs Table 1; REFERENCE §4): how often cells (or treatments) that share a
mechanism of action are more similar than ones that share none.

Tasks (rows of ``results/moa_triplets.tsv``)
--------------------------------------------
``single_cell``
    For **every** anchor cell of the test split with an MoA annotation, one positive drawn
    uniformly from the test cells sharing ≥ 1 MoA class with it (any treatment, the anchor
    excluded: the paper's rule) and one negative drawn uniformly from the annotated test cells
    sharing none. Score: the fraction of triplets with cos(a, p) > cos(a, n) (a tie counts as a
    miss).
``single_cell_other_treatment``
    The same with the positive drawn from cells of **other** treatments only (stricter; our
    addition — the paper's positive may come from the anchor's own treatment).
``vs_control``
    The same as ``single_cell`` with the negative drawn uniformly from the negative-control cells
    (``Metadata_PertType == "negcon"``).
``treatment``
    ``n_treatment_triplets`` triplets of test treatments: an anchor treatment drawn uniformly among
    those with ≥ 1 positive and ≥ 1 negative treatment, a treatment sharing an MoA class and one
    sharing none (uniformly); treatment similarity = mean cosine over all cell pairs of the two
    treatments (= the dot product of their mean L2-normalized cell embeddings). TEAMs samples
    1,000 (BBBC037) or 50,000 (BBBC022/036) per split.

Multi-label MoAs: a ``Metadata_MoA`` value holds one or more classes separated by ``sep`` (``|``,
as in the Drug Repurposing Hub); "sharing" means a non-empty intersection. Cells without an
annotation take no part (neither anchor, positive nor negative); anchors without any positive or
negative candidate are skipped and counted (``n_skipped``).

Expert modes (TEAMs Table 6) for embeddings made of E L2-normalized expert blocks of equal width:
``mean`` (the plain cosine of the concatenation = the mean of the per-expert cosines: TEAMs'
inference), ``random`` (each pair of cells is compared in one expert drawn at random per pair) and
``oracle`` (each cell is represented by the block of its own variation group's expert).

Every draw comes from ``numpy.random.default_rng`` seeded by ``seed`` over rows sorted by their
keys, so every method of one dataset and fold is scored on the **same** triplets (a paired
comparison). 95 % confidence intervals: percentile bootstrap over the anchors' treatments
(cells of one treatment are not independent; ``n_boot`` resamples of whole treatments, seeded).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.evaluate.triplets")

TASKS: tuple[str, ...] = ("single_cell", "single_cell_other_treatment", "vs_control", "treatment")
CELL_TASKS: tuple[str, ...] = TASKS[:3]
EXPERT_MODES: tuple[str, ...] = ("mean", "random", "oracle")
RESULT_COLUMNS = ["task", "expert_mode", "test_group", "n_triplets", "n_skipped", "n_treatments",
                  "accuracy", "ci_low", "ci_high"]


# ------------------------------------------------------------------------------------------------
# MoA labels
# ------------------------------------------------------------------------------------------------
def parse_moas(values: Iterable, sep: str = "|") -> list[frozenset[str]]:
    """Each value → the set of its MoA classes (NaN/None/empty → empty set; classes stripped)."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            out.append(frozenset())
            continue
        out.append(frozenset(s.strip() for s in str(v).split(sep) if s.strip()))
    return out


def _membership(sets: Sequence[frozenset[str]]) -> tuple[np.ndarray, list[str]]:
    classes = sorted(set().union(*sets)) if sets else []
    col = {c: j for j, c in enumerate(classes)}
    m = np.zeros((len(sets), len(classes)), dtype=bool)
    for i, s in enumerate(sets):
        for c in s:
            m[i, col[c]] = True
    return m, classes


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------
@dataclass
class Triplets:
    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    n_skipped: int


def _draw_excluding(rng: np.random.Generator, cand: np.ndarray, exclude: np.ndarray | None, size: int) -> np.ndarray:
    """``size`` uniform draws from the sorted index array ``cand``; when ``exclude`` (one index
    per draw, each in ``cand``) is given, draw ``i`` never returns ``exclude[i]``."""
    if exclude is None:
        return cand[rng.integers(0, len(cand), size=size)]
    pos = np.searchsorted(cand, exclude)
    j = rng.integers(0, len(cand) - 1, size=size)
    j = j + (j >= pos)
    return cand[j]


def sample_cell_triplets(sets: Sequence[frozenset[str]], treatments: Sequence, rng: np.random.Generator, *,
                         other_treatment: bool = False, control_idx: np.ndarray | None = None) -> Triplets:
    """One triplet per annotated anchor row of ``sets`` (see the module docstring).

    ``control_idx`` given: negatives are drawn from those rows (``vs_control``) instead of the
    annotated rows sharing no class. Rows with an empty set are never anchors, positives or
    (MoA) negatives."""
    n = len(sets)
    treatments = np.asarray(treatments, dtype=object)
    member, _ = _membership(sets)
    annotated = member.any(axis=1)
    if control_idx is not None:
        control_idx = np.sort(np.asarray(control_idx, dtype=np.int64))
    # group anchors by (class set, treatment when positives must come from other treatments)
    keys = [(tuple(sorted(s)), str(t) if other_treatment else "") for s, t in zip(sets, treatments, strict=True)]
    groups: dict[tuple, list[int]] = {}
    for i in np.flatnonzero(annotated):
        groups.setdefault(keys[i], []).append(int(i))
    a_out, p_out, n_out, skipped = [], [], [], 0
    for key in sorted(groups):
        anchors = np.asarray(groups[key], dtype=np.int64)
        first = anchors[0]
        share = (member & member[first]).any(axis=1)
        pos_mask = share.copy()
        if other_treatment:
            pos_mask &= treatments != treatments[first]
        pos_cand = np.flatnonzero(pos_mask)
        neg_cand = control_idx if control_idx is not None else np.flatnonzero(annotated & ~share)
        n_pos = len(pos_cand) - (0 if other_treatment else 1)
        if n_pos < 1 or len(neg_cand) == 0:
            skipped += len(anchors)
            continue
        pos = _draw_excluding(rng, pos_cand, None if other_treatment else anchors, len(anchors))
        neg = _draw_excluding(rng, neg_cand, None, len(anchors))
        a_out.append(anchors)
        p_out.append(pos)
        n_out.append(neg)
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    return Triplets(cat(a_out), cat(p_out), cat(n_out), skipped)


def sample_treatment_triplets(sets: Sequence[frozenset[str]], rng: np.random.Generator, n_triplets: int) -> Triplets:
    """``n_triplets`` (anchor, positive, negative) treatment triplets over the treatments ``sets``
    (one set per treatment; see the module docstring)."""
    member, _ = _membership(sets)
    annotated = member.any(axis=1)
    share = (member.astype(np.int32) @ member.T.astype(np.int32)) > 0
    np.fill_diagonal(share, False)
    neg = ~share & annotated[None, :] & annotated[:, None]
    np.fill_diagonal(neg, False)
    eligible = np.flatnonzero(annotated & share.any(1) & neg.any(1))
    skipped = int(annotated.sum() - len(eligible))
    if len(eligible) == 0 or n_triplets <= 0:
        return Triplets(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), skipped)
    anchors = np.sort(eligible[rng.integers(0, len(eligible), size=n_triplets)])
    pos = np.empty(n_triplets, np.int64)
    negs = np.empty(n_triplets, np.int64)
    for a in np.unique(anchors):
        sel = np.flatnonzero(anchors == a)
        pos[sel] = _draw_excluding(rng, np.flatnonzero(share[a]), None, len(sel))
        negs[sel] = _draw_excluding(rng, np.flatnonzero(neg[a]), None, len(sel))
    return Triplets(anchors, pos, negs, skipped)


# ------------------------------------------------------------------------------------------------
# Similarities and accuracy
# ------------------------------------------------------------------------------------------------
def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def pair_cosines(emb: np.ndarray, a: np.ndarray, b: np.ndarray, *, mode: str = "mean", n_experts: int = 1,
                 groups: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """cos(emb[a_i], emb[b_i]) per pair, in one of the :data:`EXPERT_MODES` (``emb`` holds
    ``n_experts`` blocks of equal width; ``groups``: each row's expert index for ``oracle``;
    ``rng``: the per-pair expert draws of ``random``)."""
    if mode == "mean":
        z = l2_normalize(emb)
        return np.einsum("ij,ij->i", z[a], z[b])
    if mode not in EXPERT_MODES:
        raise MorphobenchError(f"expert mode must be one of {list(EXPERT_MODES)}, got {mode!r}")
    n, d = emb.shape
    if n_experts < 1 or d % n_experts:
        raise MorphobenchError(f"expert mode {mode!r}: {d} features are not {n_experts} equal expert blocks")
    blocks = l2_normalize(np.asarray(emb, dtype=np.float64).reshape(n, n_experts, d // n_experts))
    if mode == "random":
        if rng is None:
            raise MorphobenchError("expert mode 'random' needs an rng")
        e = rng.integers(0, n_experts, size=len(a))
        return np.einsum("ij,ij->i", blocks[a, e], blocks[b, e])
    if groups is None:
        raise MorphobenchError("expert mode 'oracle' needs each cell's variation group")
    groups = np.asarray(groups)
    if ((groups < 0) | (groups >= n_experts)).any():
        raise MorphobenchError("expert mode 'oracle': cells of a variation group without a trained expert")
    return np.einsum("ij,ij->i", blocks[a, groups[a]], blocks[b, groups[b]])


def bootstrap_ci(correct: np.ndarray, clusters: np.ndarray, rng: np.random.Generator, n_boot: int = 1000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the accuracy ``mean(correct)`` resampling whole ``clusters`` with replacement."""
    if len(correct) == 0:
        return float("nan"), float("nan")
    codes, inv = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    k = len(codes)
    s = np.bincount(inv, weights=np.asarray(correct, dtype=np.float64), minlength=k)
    c = np.bincount(inv, minlength=k).astype(np.float64)
    w = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    acc = (w @ s) / (w @ c)
    lo, hi = np.quantile(acc, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def cell_triplet_accuracy(emb: np.ndarray, sets: Sequence[frozenset[str]], treatments: Sequence,
                          seed: int = 0, *, other_treatment: bool = False) -> tuple[float, int]:
    """Accuracy and number of ``single_cell`` triplets on ``emb`` (used to pick the best epoch on
    the validation split)."""
    rng = np.random.default_rng(seed)
    t = sample_cell_triplets(sets, treatments, rng, other_treatment=other_treatment)
    if len(t.anchor) == 0:
        return float("nan"), 0
    ok = pair_cosines(emb, t.anchor, t.positive) > pair_cosines(emb, t.anchor, t.negative)
    return float(ok.mean()), int(len(ok))


# ------------------------------------------------------------------------------------------------
# One evaluation: every task on one set of cells
# ------------------------------------------------------------------------------------------------
def evaluate_cells(emb: np.ndarray, cells: pd.DataFrame, *, tasks: Sequence[str] = TASKS,
                   modes: Sequence[str] = ("mean",), n_experts: int = 1, group_codes: np.ndarray | None = None,
                   moa_col: str = "Metadata_MoA", sep: str = "|", n_treatment_triplets: int = 1000,
                   seed: int = 0, n_boot: int = 1000, test_group: str = "all") -> pd.DataFrame:
    """Every task × expert mode on ``cells`` (rows aligned with ``emb``): columns ``role``
    (``test`` | ``control``), ``Metadata_Perturbation`` and ``moa_col``. Returns rows with
    :data:`RESULT_COLUMNS`."""
    bad = sorted(set(tasks) - set(TASKS))
    if bad:
        raise MorphobenchError(f"MoA triplets: unknown task(s) {bad}; known: {list(TASKS)}")
    for col in ("role", "Metadata_Perturbation", moa_col):
        if col not in cells.columns:
            raise MorphobenchError(f"MoA triplets: cells lack column {col!r}")
    if len(cells) != len(emb):
        raise MorphobenchError(f"MoA triplets: {len(cells)} cells but {len(emb)} embeddings")
    emb = np.asarray(emb, dtype=np.float64)
    if not np.isfinite(emb).all():
        raise MorphobenchError("MoA triplets: non-finite embeddings")
    role = cells["role"].to_numpy()
    test_idx = np.flatnonzero(role == "test")
    ctrl_idx = np.flatnonzero(role == "control")
    sets_all = parse_moas(cells[moa_col].to_numpy(object), sep)
    test_sets = [sets_all[i] for i in test_idx]
    test_trt = cells["Metadata_Perturbation"].astype(str).to_numpy()[test_idx]
    rows = []
    for task in tasks:
        rng = np.random.default_rng([seed, TASKS.index(task)])
        if task == "treatment":
            names, first = np.unique(test_trt, return_index=True)
            tsets = [test_sets[i] for i in first]
            inv = np.unique(test_trt, return_inverse=True)[1]
            z = l2_normalize(emb[test_idx])
            means = np.zeros((len(names), z.shape[1]))
            np.add.at(means, inv, z)
            means /= np.bincount(inv, minlength=len(names))[:, None]
            t = sample_treatment_triplets(tsets, rng, n_treatment_triplets)
            sim = lambda a, b: np.einsum("ij,ij->i", means[a], means[b])  # noqa: E731
            ok = sim(t.anchor, t.positive) > sim(t.anchor, t.negative)
            lo, hi = bootstrap_ci(ok, t.anchor, np.random.default_rng([seed, 77, 3]), n_boot)
            rows.append(dict(task=task, expert_mode="mean", test_group=test_group, n_triplets=len(ok),
                             n_skipped=t.n_skipped, n_treatments=int(len(np.unique(t.anchor))),
                             accuracy=float(ok.mean()) if len(ok) else float("nan"), ci_low=lo, ci_high=hi))
            continue
        if task == "vs_control":
            # anchors/positives among the test cells, negatives among the controls: one index space
            idx = np.concatenate([test_idx, ctrl_idx])
            sets = test_sets + [frozenset()] * len(ctrl_idx)
            trt = np.concatenate([test_trt, np.full(len(ctrl_idx), "__control__", dtype=object)])
            t = sample_cell_triplets(sets, trt, rng, control_idx=np.arange(len(test_idx), len(idx)))
        else:
            idx = test_idx
            t = sample_cell_triplets(test_sets, test_trt, rng, other_treatment=task.endswith("other_treatment"))
        a, p, n = idx[t.anchor], idx[t.positive], idx[t.negative]
        for mode in modes:
            mrng = np.random.default_rng([seed, TASKS.index(task), 1 + EXPERT_MODES.index(mode)])
            kw = dict(mode=mode, n_experts=n_experts, groups=group_codes, rng=mrng)
            ok = pair_cosines(emb, a, p, **kw) > pair_cosines(emb, a, n, **kw)
            lo, hi = bootstrap_ci(ok, test_trt[t.anchor], np.random.default_rng([seed, 77, TASKS.index(task)]), n_boot)
            rows.append(dict(task=task, expert_mode=mode, test_group=test_group, n_triplets=len(ok),
                             n_skipped=t.n_skipped, n_treatments=int(len(np.unique(test_trt[t.anchor]))),
                             accuracy=float(ok.mean()) if len(ok) else float("nan"), ci_low=lo, ci_high=hi))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


# ------------------------------------------------------------------------------------------------
# Stage: embeddings file + plate map + split → partial table
# ------------------------------------------------------------------------------------------------
CELL_KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber")


def test_cells(emb_rows: pd.DataFrame, wells: pd.DataFrame, split: pd.DataFrame, source: str) -> pd.DataFrame:
    """Cell rows with their well's plate-map columns and ``role``: ``test`` (treatments of the
    fold's test split), ``control`` (negative controls) or ``other``. Cells of wells that are not
    in the plate map or the split are an error (never dropped silently)."""
    from morphobench.data.tables import WELL_KEYS

    keys = list(WELL_KEYS)
    for k in keys:
        if k not in emb_rows.columns:
            raise MorphobenchError(f"{source}: no {k} column")
    meta_cols = [c for c in wells.columns if c.startswith("Metadata_") and (c in keys or c not in emb_rows.columns)]
    left = emb_rows[[c for c in emb_rows.columns if c.startswith("Metadata_")]].astype({k: str for k in keys})
    w = wells[meta_cols].astype({k: str for k in keys})
    s = split[keys + ["split"]].astype({k: str for k in keys})
    cells = left.merge(w, on=keys, how="left", validate="many_to_one", indicator="_pm")
    if (cells["_pm"] != "both").any():
        miss = cells.loc[cells["_pm"] != "both", keys].drop_duplicates().head(3).to_dict("records")
        raise MorphobenchError(f"{source}: cells of wells that are not in the plate map, e.g. {miss}")
    cells = cells.drop(columns="_pm").merge(s, on=keys, how="left", validate="many_to_one")
    if cells["split"].isna().any():
        miss = cells.loc[cells["split"].isna(), keys].drop_duplicates().head(3).to_dict("records")
        raise MorphobenchError(f"{source}: cells of wells that are not in the split table, e.g. {miss}")
    negcon = cells["Metadata_PertType"].eq("negcon")
    cells["role"] = np.where(cells["split"].eq("test") & cells["Metadata_PertType"].eq("trt"), "test",
                             np.where(negcon, "control", "other"))
    return cells


def random_cells(crops_index: str | os.PathLike, dim: int = 1024, seed: int = 0) -> pd.DataFrame:
    """The cell-level form of the ``random`` baseline (the MoA-triplet floor): one N(0, 1)
    ``dim``-D vector per cell of a crop index, a function of (seed, plate, well, site, object)
    only."""
    from morphobench.embed.baselines import _key_seed
    from morphobench.embed.learned import crop_metadata
    from morphobench.training.data import index_rows

    rows = index_rows(crops_index)
    meta = crop_metadata(rows)
    out = np.empty((len(meta), dim), dtype=np.float32)
    keys = zip(meta["Metadata_Plate"], meta["Metadata_Well"], meta["Metadata_Site"], meta["Metadata_ObjectNumber"],
               strict=True)
    for i, (p, w, s, o) in enumerate(keys):
        out[i] = np.random.default_rng(_key_seed(seed, str(p), str(w), str(s), str(o))).standard_normal(dim, np.float32)
    return pd.concat([meta, pd.DataFrame(out, columns=[f"emb_{j:04d}" for j in range(dim)])], axis=1)


def triplet_stage(emb_path: str | os.PathLike | pd.DataFrame, wells_path: str | os.PathLike, split_path: str | os.PathLike,
                  key: Mapping[str, object], out: str | os.PathLike, *, fold: int = 0,
                  moa_col: str = "Metadata_MoA", sep: str = "|", n_treatment_triplets: int = 1000,
                  seed: int = 0, n_boot: int = 1000, tasks: Sequence[str] = TASKS,
                  modes: Sequence[str] = ("mean",), experts: Mapping | None = None,
                  by_group: str | None = None) -> pd.DataFrame:
    """``results/{dataset}/…/moa_triplets.tsv``: every task for one method's cell embeddings.

    ``experts``: ``{"groups": [...], "group_col": col}`` of a model with per-group experts (from
    its ``model.pt``) for the ``random``/``oracle`` modes. ``by_group``: also score the cells of
    each value of this ``Metadata_`` column on their own (``test_group``; TEAMs Table 3)."""
    from morphobench.data.tables import feature_columns
    from morphobench.io import read_table, write_tsv
    from morphobench.training.splits import read_split

    source = f"MoA triplets ({emb_path})"
    rows = emb_path if isinstance(emb_path, pd.DataFrame) else read_table(emb_path, what="cell embeddings")
    if isinstance(emb_path, pd.DataFrame):
        source = f"MoA triplets ({key.get('method', 'embeddings')})"
    feats = feature_columns(rows)
    if not feats:
        raise MorphobenchError(f"{source}: no feature columns")
    sort_keys = [k for k in CELL_KEYS if k in rows.columns] + [c for c in ("Metadata_Crop_X0", "Metadata_Crop_Y0")
                                                               if c in rows.columns]
    rows = rows.sort_values(sort_keys, kind="stable").reset_index(drop=True)
    wells = read_table(wells_path, what="plate map")
    if moa_col not in wells.columns:
        raise MorphobenchError(f"MoA triplets: the plate map {wells_path} has no {moa_col!r} column "
                               "(set teams.triplets.moa_col to the column holding the MoA annotations)")
    split = read_split(split_path, fold)
    cells = test_cells(rows, wells, split, source)
    emb = rows[feats].to_numpy(np.float64)
    n_experts, group_codes = 1, None
    if experts and set(modes) - {"mean"}:
        groups = list(experts["groups"])
        gcol = experts["group_col"]
        if gcol not in cells.columns:
            raise MorphobenchError(f"{source}: expert modes need the variation-group column {gcol!r}")
        n_experts = len(groups)
        code = {g: i for i, g in enumerate(groups)}
        group_codes = cells[gcol].astype(str).map(code).fillna(-1).astype(np.int64).to_numpy()
    elif set(modes) - {"mean"}:
        raise MorphobenchError(f"{source}: expert modes {sorted(set(modes) - {'mean'})} need the model's experts")
    kw = dict(tasks=tasks, modes=modes, n_experts=n_experts, group_codes=group_codes, moa_col=moa_col, sep=sep,
              n_treatment_triplets=n_treatment_triplets, seed=seed, n_boot=n_boot)
    n_test = int((cells["role"] == "test").sum())
    n_annot = int(sum(bool(s) for s, r in zip(parse_moas(cells[moa_col].to_numpy(object), sep), cells["role"],
                                               strict=True) if r == "test"))
    log.info("%s: %d test cells (%d with an MoA), %d control cells, %d features", source, n_test, n_annot,
             int((cells["role"] == "control").sum()), len(feats))
    if n_annot == 0:
        raise MorphobenchError(f"{source}: no test cell of fold {fold} has an MoA annotation in {moa_col!r}")
    parts = [evaluate_cells(emb, cells, **kw)]
    if by_group:
        if by_group not in cells.columns:
            raise MorphobenchError(f"{source}: no column {by_group!r} to score per group")
        for g in sorted(cells[by_group].astype(str).unique()):
            sel = (cells[by_group].astype(str) == g).to_numpy()
            kw_g = {**kw, "group_codes": None if group_codes is None else group_codes[sel]}
            parts.append(evaluate_cells(emb[sel], cells.loc[sel].reset_index(drop=True), test_group=g, **kw_g))
    tab = pd.concat(parts, ignore_index=True)
    tab.insert(0, "fold", fold)
    for i, (k, v) in enumerate(key.items()):
        tab.insert(i, k, v)
    write_tsv(tab, out)
    return tab


def summarize_folds(table: pd.DataFrame, by: Sequence[str] = ("dataset", "method", "task", "expert_mode",
                                                               "test_group")) -> pd.DataFrame:
    """Mean ± sd of the accuracy over folds (TEAMs: mean ± sd over 5 folds)."""
    by = [c for c in by if c in table.columns]
    g = table.groupby(by, sort=True, dropna=False)
    out = g["accuracy"].agg(accuracy_mean="mean", accuracy_sd="std", n_folds="count").reset_index()
    out["n_triplets"] = g["n_triplets"].sum().to_numpy()
    return out
