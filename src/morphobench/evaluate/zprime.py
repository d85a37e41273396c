"""Z′-factor of control groups from well embeddings (Campfire App. C; Zhang et al. 1999).

For a reference group R and a target group T of well profiles (rows = wells):

1. centre both on the reference mean: R ← R − mean(R), T ← T − mean(R);
2. project every well onto the unit direction of the (centred) target mean u = mean(T)/‖mean(T)‖:
   s = x · u (the normalised scalar projection), one score per well;
3. Z′ = 1 − 3 (σ_r + σ_t) / |μ_r − μ_t| with the mean and the sample standard deviation
   (ddof = 1) of the scores of each group (the paper's "mean and standard deviation");
   ``zprime_robust`` uses the median and 1.4826 × MAD instead (the public Campfire code's
   ``robust_zprime``; the factor makes the MAD a consistent estimate of σ for normal data).

Z′ ≤ 1; > 0.5 is an excellent separation, < 0 overlapping groups. Every ordered pair
(reference, target) of the configured groups is scored; groups are perturbations (by default the
negative controls as references and every control as a target).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from morphobench.data.tables import feature_columns
from morphobench.io import MorphobenchError, read_table, write_tsv

log = logging.getLogger("morphobench.evaluate.zprime")

MAD_SCALE = 1.4826
ZPRIME_COLUMNS = ["reference", "target", "n_reference", "n_target", "mean_reference", "mean_target",
                  "sd_reference", "sd_target", "zprime", "zprime_robust", "skip_reason"]


def projection_scores(ref: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the reference and target wells on the direction of the target mean, both centred
    on the reference mean (steps 1–2 of the module docstring)."""
    mu_r = ref.mean(0)
    r, t = ref - mu_r, target - mu_r
    mu_t = t.mean(0)
    norm = float(np.linalg.norm(mu_t))
    if not np.isfinite(norm) or norm == 0.0:
        raise MorphobenchError("Z′: the target mean equals the reference mean (no direction to project on)")
    u = mu_t / norm
    return r @ u, t @ u


def zprime_from_scores(s_ref: np.ndarray, s_t: np.ndarray, robust: bool = False) -> float:
    """Z′ = 1 − 3 (σ_r + σ_t) / |μ_r − μ_t| (plain: mean, sd ddof = 1; robust: median, 1.4826·MAD)."""
    if robust:
        def loc(v):
            return float(np.median(v))

        def scale(v):
            return float(MAD_SCALE * np.median(np.abs(v - np.median(v))))
    else:
        def loc(v):
            return float(np.mean(v))

        def scale(v):
            return float(np.std(v, ddof=1))
    gap = abs(loc(s_ref) - loc(s_t))
    if gap == 0.0:
        return float("-inf")
    return 1.0 - 3.0 * (scale(s_ref) + scale(s_t)) / gap


def zprime_pairs(profiles: pd.DataFrame, groups: Sequence[str], references: Sequence[str],
                 group_col: str = "Metadata_Perturbation") -> pd.DataFrame:
    """Z′ for every ordered pair (reference, target ≠ reference), reference in ``references`` and
    target in ``groups``; one row per pair (:data:`ZPRIME_COLUMNS`)."""
    feats = feature_columns(profiles)
    if not feats:
        raise MorphobenchError("Z′: the profiles have no feature columns")
    x = profiles[feats].to_numpy(np.float64)
    lab = profiles[group_col].astype(str).to_numpy()
    rows = []
    for r in references:
        for t in groups:
            if t == r:
                continue
            xr, xt = x[lab == r], x[lab == t]
            rec = {"reference": r, "target": t, "n_reference": len(xr), "n_target": len(xt), "skip_reason": ""}
            if len(xr) < 2 or len(xt) < 2:
                rec["skip_reason"] = "fewer than 2 wells in a group"
            else:
                try:
                    sr, st = projection_scores(xr, xt)
                except MorphobenchError as err:
                    rec["skip_reason"] = str(err)
                else:
                    rec.update({"mean_reference": float(sr.mean()), "mean_target": float(st.mean()),
                                "sd_reference": float(sr.std(ddof=1)), "sd_target": float(st.std(ddof=1)),
                                "zprime": zprime_from_scores(sr, st),
                                "zprime_robust": zprime_from_scores(sr, st, robust=True)})
            rows.append(rec)
    return pd.DataFrame(rows, columns=ZPRIME_COLUMNS)


def resolve_groups(profiles: pd.DataFrame, groups: Sequence[str] | None, reference: Sequence[str] | str | None,
                   where: str = "evaluate.zprime") -> tuple[list[str], list[str]]:
    """Groups (default: every negcon and poscon perturbation) and references (default: the negcon
    perturbations; ``all``: every group) of a dataset, checked against its profiles."""
    pt = profiles.drop_duplicates("Metadata_Perturbation").set_index("Metadata_Perturbation")["Metadata_PertType"]
    pt.index = pt.index.astype(str)
    if groups is None:
        grp = sorted(pt.index[pt.isin(["negcon", "poscon"])])
    else:
        grp = [str(g) for g in groups]
        absent = [g for g in grp if g not in pt.index]
        if absent:
            raise MorphobenchError(f"{where}.groups: {absent} have no well profiles (perturbations: "
                                   f"{sorted(pt.index)[:10]} …)")
    if reference is None:
        ref = [g for g in grp if pt.get(g) == "negcon"]
    elif reference == "all":
        ref = list(grp)
    else:
        ref = [str(g) for g in reference]
        bad = [g for g in ref if g not in grp]
        if bad:
            raise MorphobenchError(f"{where}.reference: {bad} are not among the groups {grp}")
    if len(grp) < 2 or not ref:
        raise MorphobenchError(f"{where}: need ≥ 2 groups and ≥ 1 reference (groups {grp}, references {ref}); "
                               "set evaluate.zprime.groups / reference")
    return grp, ref


def zprime_stage(well_path: str | os.PathLike, key: Mapping[str, str], out: str | os.PathLike, *,
                 groups: Sequence[str] | None = None, reference: Sequence[str] | str | None = None) -> pd.DataFrame:
    """One (dataset, method, correction): Z′ of every configured ordered control pair → partial table."""
    prof = read_table(well_path, what="well profiles")
    for c in ("Metadata_Perturbation", "Metadata_PertType"):
        if c not in prof.columns:
            raise MorphobenchError(f"{well_path}: no {c} column")
    grp, ref = resolve_groups(prof, groups, reference)
    tab = zprime_pairs(prof, grp, ref)
    for i, k in enumerate(("dataset", "method", "correction")):
        tab.insert(i, k, key[k])
    write_tsv(tab, out)
    log.info("%s: Z′ of %d pairs", well_path, len(tab))
    return tab
