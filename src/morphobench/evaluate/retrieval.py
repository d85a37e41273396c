"""JUMP retrieval tasks (CPJUMP1, Chandrasekaran et al.; MAE-CVPR §5.3, Table 4) on corrected profiles.

Tasks
-----
* ``perturbation`` — perturbation detection: the replicate wells of a perturbation against the
  negative-control wells of their plate (positives: same perturbation; negatives: same-plate
  negcons); mAP per perturbation.
* sibling retrieval on consensus (perturbation-level) profiles, mAP per target gene:

  ========================  =======================  ==================================
  task                      queries                  positives
  ========================  =======================  ==================================
  ``sibling_compound``      compounds                compounds sharing a target
  ``sibling_compound_gene`` compounds                CRISPR profiles of a target
  ``sibling_compound_orf``  compounds                ORF profiles of a target
  ``sibling_guide``         CRISPR guides            other guides of the same gene
  ========================  =======================  ==================================

  A perturbation's modality is ``Metadata_Modality`` (``compound`` / ``crispr`` / ``orf``, any
  case) when the plate map has it, else ``compound`` for rows with ``Metadata_Compound`` and
  ``crispr`` for the other gene rows. Targets: ``Metadata_Gene`` (CRISPR, ORF) or
  ``Metadata_Target`` (compounds; several targets separated by ``|``, ``;`` or ``,``: the
  compound is a sibling of each, one row per target, and a pair of perturbations sharing any
  target is never a negative).

Negatives of the sibling tasks (``negatives``):
  ``controls`` (MAE-CVPR §5.3, the default): "AP is measured against a null of negative control
  samples" — the negative-control *wells* of the condition (our choice where the paper is
  silent: consensus treatment profiles ranked against single control wells, as the perturbation
  task ranks replicates against them); ``other_targets`` (CPJUMP1): profiles of the task's
  partner modality with other targets.

Conditions (MAE-CVPR Table 4: "averaged (± standard deviation) over cell types, modalities, and
time-points"): the ``condition`` columns present (default ``Metadata_CellType``,
``Metadata_Modality``, ``Metadata_Timepoint``) split the profiles; every task runs per condition,
so no positive (or negative) pair crosses conditions, and BH q-values are per condition. Tasks
whose positives cross modalities (compound ↔ CRISPR / ORF) use ``cross_condition`` instead
(default ``Metadata_CellType``: CPJUMP1 images compounds and genes at different time points).
The table has one row per task × condition with results, and one ``mean ± sd`` row per task
(mean and sample sd over its evaluated conditions).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.evaluate.retrieval")

#: task → (query modality, partner modality; None = the query's own)
SIBLING_TASKS: dict[str, tuple[str, str | None]] = {
    "sibling_compound": ("compound", None),
    "sibling_compound_gene": ("compound", "crispr"),
    "sibling_compound_orf": ("compound", "orf"),
    "sibling_guide": ("crispr", None),
}
RETRIEVAL_TASKS: tuple[str, ...] = ("perturbation", *SIBLING_TASKS)
NEGATIVES: tuple[str, ...] = ("controls", "other_targets")
SUMMARY = "mean ± sd"
ALL = "all"
_TARGET_SPLIT = re.compile(r"\s*[|;,]\s*")
_NEGCON_TARGET = "__negcon__"

__all__ = ["RETRIEVAL_TASKS", "SIBLING_TASKS", "NEGATIVES", "SUMMARY", "modality", "sibling_profiles",
           "run_task", "retrieval_table"]


def modality(df: pd.DataFrame) -> pd.Series:
    """Perturbation modality per row: ``Metadata_Modality`` (lower-cased) where present, else
    ``compound`` (a ``Metadata_Compound``), ``crispr`` (a ``Metadata_Gene``) or missing."""
    idx = df.index
    is_cpd = df["Metadata_Compound"].notna() if "Metadata_Compound" in df else pd.Series(False, index=idx)
    has_gene = df["Metadata_Gene"].notna() if "Metadata_Gene" in df else pd.Series(False, index=idx)
    inferred = pd.Series(np.where(is_cpd, "compound", np.where(has_gene, "crispr", None)), index=idx, dtype=object)
    if "Metadata_Modality" in df:
        given = df["Metadata_Modality"].astype("string").str.strip().str.lower()
        return given.astype(object).where(given.notna(), inferred)
    return inferred


def _targets(row_modality: str, gene, target) -> list[str]:
    value = target if row_modality == "compound" else gene
    if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value):
        return []
    return sorted({t for t in _TARGET_SPLIT.split(str(value)) if t})


def sibling_profiles(pert: pd.DataFrame, task: str) -> pd.DataFrame:
    """The treatment profiles of a sibling task, one row per (perturbation, target), with
    ``Metadata_TargetGene``, ``Metadata_Modality`` and ``Metadata_TargetSet`` (all targets)."""
    if task not in SIBLING_TASKS:
        raise MorphobenchError(f"unknown sibling task {task!r}; choose from {list(SIBLING_TASKS)}")
    query_mod, partner_mod = SIBLING_TASKS[task]
    df = pert[pert["Metadata_PertType"].eq("trt")] if "Metadata_PertType" in pert else pert
    df = df.copy()
    df["Metadata_Modality"] = modality(df)
    df = df[df["Metadata_Modality"].isin({query_mod, partner_mod or query_mod})]
    gene = df["Metadata_Gene"] if "Metadata_Gene" in df else pd.Series(None, index=df.index, dtype=object)
    tgt = df["Metadata_Target"] if "Metadata_Target" in df else pd.Series(None, index=df.index, dtype=object)
    sets = [_targets(m, g, t) for m, g, t in zip(df["Metadata_Modality"], gene, tgt, strict=True)]
    df["Metadata_TargetSet"] = ["|".join(s) for s in sets]
    df["Metadata_TargetGene"] = [s or None for s in sets]
    df = df.explode("Metadata_TargetGene")
    return df[df["Metadata_TargetGene"].notna()].reset_index(drop=True)


def _shared_target_pairs(df: pd.DataFrame) -> np.ndarray:
    """Row pairs of different perturbations whose target sets overlap, for perturbations with
    several targets (single-target perturbations sharing their target are positives): never
    negatives (copairs' multilabel rule)."""
    sets = df.groupby("Metadata_Perturbation", sort=True)["Metadata_TargetSet"].first()
    tsets = {p: set(v.split("|")) for p, v in sets.items()}
    multi = [p for p, t in tsets.items() if len(t) > 1]
    if not multi:
        return np.zeros((0, 2), dtype=np.int64)
    by_target: dict[str, list] = {}
    for p, ts in tsets.items():
        for t in ts:
            by_target.setdefault(t, []).append(p)
    rows_of = df.groupby("Metadata_Perturbation", sort=True).indices
    pairs = []
    for p in multi:
        partners = {q for t in tsets[p] for q in by_target[t] if q != p}
        for q in partners:
            a, b = rows_of[p], rows_of[q]
            pairs.append(np.stack(np.meshgrid(a, b, indexing="ij"), axis=-1).reshape(-1, 2))
    return np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0).astype(np.int64)


def _empty(reason: str, key: str) -> tuple[dict, pd.DataFrame]:
    summ = {"mAP": np.nan, "mAP_sem": np.nan, "fraction_retrieved": np.nan, "n_groups": 0,
            "n_groups_evaluated": 0, "n_groups_skipped": 0, "skip_reason": reason}
    return summ, pd.DataFrame(columns=[key, "mean_average_precision", "p_value", "corrected_p_value",
                                       "skip_reason"])


def run_task(well: pd.DataFrame, pert: pd.DataFrame, task: str, *, negatives: str = "controls",
             null_size: int, seed: int, threshold: float = 0.05, on_missing_negcon: str = "error",
             control_query_col: str = "Metadata_PertType", source: str = "profiles", **ap_kwargs):
    """One task on the profiles of one condition → (summary dict, per-group mAP table)."""
    from morphobench.evaluate.map import replicate_retrieval, retrieval, summarize_map

    if negatives not in NEGATIVES:
        raise MorphobenchError(f"retrieval negatives must be one of {list(NEGATIVES)}, got {negatives!r}")
    if task == "perturbation":
        res = replicate_retrieval(well, null_size=null_size, seed=seed, threshold=threshold,
                                  on_missing_negcon=on_missing_negcon, source=source, **ap_kwargs)
        summ = summarize_map(res.map, threshold)
        summ["skip_reason"] = ""
        return summ, res.map
    if task not in SIBLING_TASKS:
        raise MorphobenchError(f"unknown retrieval task {task!r}; choose from {list(RETRIEVAL_TASKS)}")
    query_mod, partner_mod = SIBLING_TASKS[task]
    df = sibling_profiles(pert, task)
    key = "Metadata_TargetGene"
    is_query = df["Metadata_Modality"].eq(query_mod).to_numpy()
    # a target with a query and a positive partner (another perturbation, of the partner modality)
    ok_targets = set()
    for t, g in df.groupby(key, sort=False):
        q = g["Metadata_Modality"].eq(query_mod)
        p = g["Metadata_Modality"].eq(partner_mod or query_mod)
        if q.any() and p.any() and g.loc[q | p, "Metadata_Perturbation"].nunique() > 1:
            ok_targets.add(t)
    if not ok_targets:
        what = f"{query_mod}s" if partner_mod is None else f"a {query_mod} and a {partner_mod} perturbation"
        return _empty(f"no target shared by {what}" if partner_mod else f"no target shared by two {what}", key)
    pos_diffby = ["Metadata_Perturbation"] if partner_mod is None else ["Metadata_Modality"]
    if negatives == "other_targets":
        neg_diffby = ["Metadata_TargetGene", "Metadata_Perturbation"]
        if partner_mod is not None:
            neg_diffby.append("Metadata_Modality")
        res = retrieval(df, pos_sameby=[key], pos_diffby=pos_diffby, neg_sameby=[], neg_diffby=neg_diffby,
                        map_sameby=[key], null_size=null_size, seed=seed, threshold=threshold,
                        query_mask=is_query, exclude_negatives=_shared_target_pairs(df), source=source,
                        **ap_kwargs)
    else:
        ctrl = well[well[control_query_col].eq("negcon")] if control_query_col in well else well.iloc[:0]
        if ctrl.empty:
            raise MorphobenchError(f"{source}: sibling retrieval against negative controls needs negcon wells "
                                   f"({control_query_col} == 'negcon'); none in this condition "
                                   "(evaluate.retrieval.negatives: other_targets ranks against other targets)")
        feats = [c for c in df.columns if not c.startswith("Metadata_")]
        missing = [c for c in feats if c not in ctrl.columns]
        if missing:
            raise MorphobenchError(f"{source}: control wells lack feature column(s) {missing[:5]}")
        trt = df[[c for c in df.columns if c.startswith("Metadata_")] + feats].copy()
        trt["Metadata__ref"] = -1
        trt["Metadata__is_ctrl"] = False
        c = pd.DataFrame({"Metadata_Perturbation": ctrl["Metadata_Perturbation"].astype(str).to_numpy(),
                          key: _NEGCON_TARGET, "Metadata_Modality": "negcon",
                          "Metadata__ref": np.arange(len(ctrl)), "Metadata__is_ctrl": True})
        c = pd.concat([c, ctrl[feats].reset_index(drop=True)], axis=1)
        prof = pd.concat([trt, c], ignore_index=True)
        meta_cols = [k for k in prof.columns if k.startswith("Metadata_")]
        prof[meta_cols] = prof[meta_cols].astype(object).where(prof[meta_cols].notna(), "")
        res = retrieval(prof, pos_sameby=[key, "Metadata__ref"], pos_diffby=pos_diffby, neg_sameby=[],
                        neg_diffby=["Metadata__is_ctrl", "Metadata__ref"], map_sameby=[key],
                        null_size=null_size, seed=seed, threshold=threshold,
                        query_mask=np.concatenate([is_query, np.zeros(len(c), dtype=bool)]),
                        source=source, **ap_kwargs)
    # targets whose queries have no sibling (e.g. a compound alone on its target) stay listed as
    # skipped groups ("no positive pairs"), never silently dropped
    summ = summarize_map(res.map, threshold)
    summ["skip_reason"] = ""
    return summ, res.map


def condition_label(values: Sequence, cols: Sequence[str]) -> str:
    """``"CellType=U2OS, Timepoint=48"``; no condition columns → ``"all"``."""
    if not cols:
        return ALL
    return ", ".join(f"{c.removeprefix('Metadata_')}={v}" for c, v in zip(cols, values, strict=True))


def _groups(df: pd.DataFrame, cols: list[str]):
    if not cols:
        yield (), df
        return
    missing = [c for c in cols if df[c].isna().any()]
    if missing:
        raise MorphobenchError(f"condition column(s) {missing} have missing values; fill them in the plate map")
    for vals, g in df.groupby(cols, sort=True):
        yield (vals if isinstance(vals, tuple) else (vals,)), g


def retrieval_table(well: pd.DataFrame, pert: pd.DataFrame, tasks: Sequence[str], *,
                    condition: Sequence[str] = ("Metadata_CellType", "Metadata_Modality", "Metadata_Timepoint"),
                    cross_condition: Sequence[str] = ("Metadata_CellType",), negatives: str = "controls",
                    null_size: int = 10000, seed: int = 0, threshold: float = 0.05,
                    on_missing_negcon: str = "error", source: str = "profiles", **ap_kwargs):
    """Every task per condition → (summary table, {task: per-group detail with ``condition``}).

    Summary columns: ``task, condition, negatives, n_conditions, n_groups, n_groups_evaluated,
    n_groups_skipped, mAP, mAP_sd, mAP_sem, fraction_retrieved, fraction_retrieved_sd,
    skip_reason`` — ``*_sd`` and ``n_conditions`` on the ``mean ± sd`` rows."""
    unknown = [t for t in tasks if t not in RETRIEVAL_TASKS]
    if unknown:
        raise MorphobenchError(f"unknown retrieval task(s) {unknown}; choose from {list(RETRIEVAL_TASKS)}")
    if negatives not in NEGATIVES:
        raise MorphobenchError(f"retrieval negatives must be one of {list(NEGATIVES)}, got {negatives!r}")
    rows, details = [], {}
    for task in tasks:
        cross = task in SIBLING_TASKS and SIBLING_TASKS[task][1] is not None
        wanted = list(cross_condition if cross else condition)
        cols = [c for c in wanted if c in well.columns and (task == "perturbation" or c in pert.columns)]
        absent = [c for c in wanted if c not in cols]
        if absent:
            log.info("%s: condition column(s) %s not in the profiles; not used", task, absent)
        per_task, det = [], []
        pert_groups = dict(_groups(pert, cols)) if task != "perturbation" else {}
        for vals, w in _groups(well, cols):
            label = condition_label(vals, cols)
            if task != "perturbation":
                p = pert_groups.get(vals)
                if p is None:
                    continue
                q_mod = SIBLING_TASKS[task][0]
                if not (modality(p[p["Metadata_PertType"].eq("trt")] if "Metadata_PertType" in p else p)
                        .eq(q_mod).any()):
                    continue                                # no query of this task in the condition
            else:
                p = None
            summ, mp = run_task(w, p, task, negatives=negatives, null_size=null_size, seed=seed,
                                threshold=threshold, on_missing_negcon=on_missing_negcon,
                                source=f"{source} [{task}, {label}]", **ap_kwargs)
            per_task.append({"task": task, "condition": label, **summ})
            det.append(mp.assign(condition=label))
            log.info("%s [%s]: mAP %.4f, fraction retrieved %.3f over %d groups", task, label, summ["mAP"],
                     summ["fraction_retrieved"], summ["n_groups"])
        if not per_task:                           # the task applies to no condition: recorded
            what = SIBLING_TASKS[task][0] if task in SIBLING_TASKS else "treatment"
            summ, mp = _empty(f"no {what} perturbation in any condition", "Metadata_TargetGene")
            rows.append({"task": task, "condition": ALL, **summ})
            details[task] = mp.assign(condition=ALL)
            continue
        rows += per_task
        ev = pd.DataFrame(per_task)
        ev = ev[ev["mAP"].notna()]
        n_ev = len(ev)
        rows.append({
            "task": task, "condition": SUMMARY, "n_conditions": n_ev,
            "n_groups": int(ev["n_groups"].sum()), "n_groups_evaluated": int(ev["n_groups_evaluated"].sum()),
            "n_groups_skipped": int(ev["n_groups_skipped"].sum()),
            "mAP": float(ev["mAP"].mean()) if n_ev else np.nan,
            "mAP_sd": float(ev["mAP"].std(ddof=1)) if n_ev > 1 else np.nan,
            "mAP_sem": np.nan,
            "fraction_retrieved": float(ev["fraction_retrieved"].mean()) if n_ev else np.nan,
            "fraction_retrieved_sd": float(ev["fraction_retrieved"].std(ddof=1)) if n_ev > 1 else np.nan,
            "skip_reason": "" if n_ev else "no condition evaluated",
        })
        details[task] = pd.concat(det, ignore_index=True)
    cols_out = ["task", "condition", "negatives", "n_conditions", "n_groups", "n_groups_evaluated",
                "n_groups_skipped", "mAP", "mAP_sd", "mAP_sem", "fraction_retrieved", "fraction_retrieved_sd",
                "skip_reason"]
    tab = pd.DataFrame(rows)
    tab["negatives"] = [("controls (same plate)" if t == "perturbation" else negatives) for t in tab["task"]]
    for c in cols_out:
        if c not in tab:
            tab[c] = np.nan
    return tab[cols_out], details
