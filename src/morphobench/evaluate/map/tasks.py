"""Retrieval tasks on profile tables: AP, p-values and mAP in one call (:func:`retrieval`), and
the CPJUMP1 perturbation-retrieval design (replicates vs negative controls of the same plate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from morphobench.data.tables import feature_columns, metadata_columns
from morphobench.evaluate.map.average_precision import average_precision
from morphobench.evaluate.map.nulls import DEFAULT_NULL_SIZE, _conf_table, _valid_mask, null_table
from morphobench.evaluate.map.pairs import _as_list
from morphobench.evaluate.map.significance import ap_p_values, mean_average_precision, summarize_map
from morphobench.io import MorphobenchError

__all__ = ["RetrievalResult", "retrieval", "replicate_retrieval"]


@dataclass
class RetrievalResult:
    """AP per profile, mAP per group, and the summary (``summarize_map``)."""

    ap: pd.DataFrame
    map: pd.DataFrame
    summary: dict = field(default_factory=dict)


def retrieval(profiles: pd.DataFrame, *, pos_sameby: Sequence[str], pos_diffby: Sequence[str] = (),
              neg_sameby: Sequence[str] = (), neg_diffby: Sequence[str] = (),
              map_sameby: Sequence[str] | None = None, null_size: int = DEFAULT_NULL_SIZE,
              seed: int = 0, threshold: float = 0.05, null_method: str = "fast",
              query_mask: np.ndarray | None = None, source: str = "profiles",
              **ap_kwargs) -> RetrievalResult:
    """AP, p-values and mAP for a profile table (``Metadata_*`` + features).

    ``query_mask`` (bool per row) restricts which profiles' groups are reported in the mAP table
    (e.g. exclude negative controls); every row still takes part in pairs.
    """
    feats = feature_columns(profiles)
    if not feats:
        raise MorphobenchError(f"{source}: no feature columns")
    meta = profiles[metadata_columns(profiles)].reset_index(drop=True)
    ap = average_precision(meta, profiles[feats], pos_sameby, pos_diffby, neg_sameby, neg_diffby,
                           source=source, **ap_kwargs)
    shared = null_table(ap, null_size, seed, method=null_method)     # drawn once, used twice
    ap["p_value"] = ap_p_values(ap, null_size, seed, method=null_method, nulls=shared)
    sameby = _as_list(map_sameby) if map_sameby is not None else _as_list(pos_sameby)
    sel = ap if query_mask is None else ap.loc[np.asarray(query_mask, dtype=bool)]
    same_confs = np.array_equal(_conf_table(sel, _valid_mask(sel))[0], _conf_table(ap, _valid_mask(ap))[0])
    # copairs draws per configuration set: share only when the set is the same (always for "fast")
    mp = mean_average_precision(sel, sameby, null_size, seed, threshold=threshold, method=null_method,
                                nulls=shared if (same_confs or null_method == "fast") else None)
    return RetrievalResult(ap=ap, map=mp, summary=summarize_map(mp, threshold))


def replicate_retrieval(profiles: pd.DataFrame, *, pert_col: str = "Metadata_Perturbation",
                        control_col: str = "Metadata_PertType", control_value: str = "negcon",
                        plate_col: str | None = "Metadata_Plate", on_missing_negcon: str = "error",
                        null_size: int = DEFAULT_NULL_SIZE, seed: int = 0, threshold: float = 0.05,
                        null_method: str = "fast", source: str = "profiles", **ap_kwargs) -> RetrievalResult:
    """Perturbation retrieval (CPJUMP1): replicates of a perturbation vs negative controls.

    Positives: non-control profiles sharing ``pert_col``; negatives: (treatment, control) pairs on
    the same ``plate_col`` (any plate when ``plate_col`` is None). Equivalent to copairs with
    ``assign_reference_index`` on the controls, ``pos_sameby=[pert, ref]``,
    ``neg_sameby=[plate]``, ``neg_diffby=[control flag, ref]``. mAP per perturbation (controls are
    not reported). A plate with treatments but no controls: ``on_missing_negcon="error"`` raises
    naming the plates; ``"skip"`` records those profiles as ``no negative pairs``.
    """
    for c in [pert_col, control_col] + ([plate_col] if plate_col else []):
        if c not in profiles.columns:
            raise MorphobenchError(f"{source}: column {c!r} missing")
    if on_missing_negcon not in {"error", "skip"}:
        raise MorphobenchError(f"on_missing_negcon must be error | skip, got {on_missing_negcon!r}")
    df = profiles.reset_index(drop=True).copy()
    is_ctrl = (df[control_col] == control_value).to_numpy()
    if not is_ctrl.any():
        raise MorphobenchError(f"{source}: no negative controls ({control_col} == {control_value!r})")
    if plate_col:
        has_ctrl = df.loc[is_ctrl, plate_col].unique()
        lacking = sorted(set(df.loc[~is_ctrl, plate_col].unique()) - set(has_ctrl), key=str)
        if lacking and on_missing_negcon == "error":
            raise MorphobenchError(f"{source}: plate(s) without negative controls ({control_col} == "
                                   f"{control_value!r}): {lacking[:10]}; cannot rank their replicates "
                                   "against controls (on_missing_negcon='skip' records them instead)")
    df["Metadata__ref"] = np.where(is_ctrl, np.arange(len(df)), -1)
    df["Metadata__is_ctrl"] = is_ctrl
    res = retrieval(df, pos_sameby=[pert_col, "Metadata__ref"], pos_diffby=[],
                    neg_sameby=[plate_col] if plate_col else [], neg_diffby=["Metadata__is_ctrl", "Metadata__ref"],
                    map_sameby=[pert_col], null_size=null_size, seed=seed, threshold=threshold,
                    null_method=null_method, query_mask=~is_ctrl, source=source,
                    no_negatives=ap_kwargs.pop("no_negatives", "skip"), **ap_kwargs)
    res.ap = res.ap.drop(columns=["Metadata__ref", "Metadata__is_ctrl"])
    return res
