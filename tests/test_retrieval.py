"""JUMP retrieval as MAE-CVPR Table 4: per condition (cell type × modality × time point) with a
mean ± sd row, sibling types (compound↔compound, compound→CRISPR, compound→ORF, guide↔guide),
multi-target compounds, negatives = control wells (the paper) or other targets (CPJUMP1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from morphobench.correct.stage import correct_profiles
from morphobench.evaluate.map import MapOptions, average_precision, replicate_retrieval
from morphobench.evaluate.retrieval import SUMMARY, retrieval_table, run_task, sibling_profiles
from morphobench.io import MorphobenchError

copairs_map = pytest.importorskip("copairs.map")

TARGETS = [f"G{i}" for i in range(5)]
COMPOUNDS = {"c0": "G0", "c1": "G0", "c2": "G1", "c3": "G1", "c4": "G2", "c5": "G2|G3", "c6": "G3", "c7": "G4"}


@pytest.fixture(autouse=True)
def _isolated_copairs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))


def cpjump_wells(seed=0, d=16, modalities=("compound", "crispr"), cells=("U2OS", "A549"), times=("T1", "T2"),
                 plates_per_condition=2, n_ctrl=6):
    """A CPJUMP1-shaped screen: each (cell type, modality, time point) condition has its own
    plates with every perturbation of its modality once per plate and negative-control wells.
    Compounds and the guides / ORFs of their targets share the target's phenotype."""
    rng = np.random.default_rng(seed)
    pheno = {t: 1.5 * rng.standard_normal(d) for t in TARGETS}
    perts = {"compound": [(c, t) for c, t in COMPOUNDS.items()],
             "crispr": [(f"{t}_g{k}", t) for t in TARGETS for k in (1, 2)],
             "orf": [(f"{t}_orf", t) for t in TARGETS]}
    rows, feats = [], []
    for cell in cells:
        cshift = rng.standard_normal(d)
        for mod in modalities:
            for tp in times:
                for p in range(plates_per_condition):
                    plate = f"{cell}_{mod}_{tp}_P{p}"
                    pshift = 0.3 * rng.standard_normal(d)
                    for name, tgt in perts[mod]:
                        vec = np.mean([pheno[t] for t in tgt.split("|")], axis=0)
                        rows.append({"Metadata_Batch": f"{cell}_{tp}", "Metadata_Plate": plate,
                                     "Metadata_Well": f"W_{name}", "Metadata_Perturbation": name,
                                     "Metadata_PertType": "trt", "Metadata_CellType": cell,
                                     "Metadata_Modality": mod, "Metadata_Timepoint": tp,
                                     "Metadata_Gene": None if mod == "compound" else tgt,
                                     "Metadata_Compound": name if mod == "compound" else None,
                                     "Metadata_Target": tgt if mod == "compound" else None})
                        feats.append(vec + cshift + pshift + 0.7 * rng.standard_normal(d))
                    for k in range(n_ctrl):
                        rows.append({"Metadata_Batch": f"{cell}_{tp}", "Metadata_Plate": plate,
                                     "Metadata_Well": f"N{k}", "Metadata_Perturbation": "EMPTY",
                                     "Metadata_PertType": "negcon", "Metadata_CellType": cell,
                                     "Metadata_Modality": mod, "Metadata_Timepoint": tp, "Metadata_Gene": None,
                                     "Metadata_Compound": None, "Metadata_Target": None})
                        feats.append(cshift + pshift + 0.7 * rng.standard_normal(d))
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(np.array(feats), columns=[f"f{i}" for i in range(d)])],
                     axis=1)


def _feats(df):
    return [c for c in df.columns if not c.startswith("Metadata_")]


def _brute_ap(x, q, pos, neg):
    """copairs' AP from scratch: cosine (float64 → float32), key 1 − s, ascending, ties: positives first."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = lambda js: (xn[js] @ xn[q]).astype(np.float32)  # noqa: E731
    keys = np.concatenate([np.float32(1) - sims(pos), np.float32(1) - sims(neg)])
    lab = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    order = np.lexsort((~lab, keys))
    hit = lab[order]
    ranks = np.flatnonzero(hit) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def test_per_condition_rows_and_mean_sd_row_table4():
    wells = cpjump_wells()
    centred, pert = correct_profiles(wells, "standardize_plate")
    assert len(pert) == 4 * 8 + 4 * 10 + 8                    # per perturbation × condition (+ negcon)
    tab, det = retrieval_table(centred, pert, ["perturbation", "sibling_compound", "sibling_compound_gene",
                                               "sibling_guide"], null_size=500)
    pt = tab[tab.task == "perturbation"]
    conds = pt[pt.condition != SUMMARY]
    assert len(conds) == 8 and conds.condition.is_unique      # 2 cell types × 2 modalities × 2 time points
    assert "CellType=A549, Modality=compound, Timepoint=T1" in set(conds.condition)
    summ = pt[pt.condition == SUMMARY].iloc[0]
    assert summ.n_conditions == 8
    assert summ.mAP == pytest.approx(conds.mAP.mean()) and summ.mAP_sd == pytest.approx(conds.mAP.std(ddof=1))
    assert summ.fraction_retrieved == pytest.approx(conds.fraction_retrieved.mean())
    assert summ.fraction_retrieved_sd == pytest.approx(conds.fraction_retrieved.std(ddof=1))
    # sibling tasks: within-modality ones per (cell, modality, time) of their modality; the
    # compound → CRISPR task per cell type (its positives cross modalities and time points)
    assert (tab[tab.task == "sibling_compound"].condition != SUMMARY).sum() == 4
    assert (tab[tab.task == "sibling_guide"].condition != SUMMARY).sum() == 4
    assert set(tab[tab.task == "sibling_compound_gene"].condition) == {"CellType=A549", "CellType=U2OS", SUMMARY}
    assert tab.loc[tab.task == "sibling_guide", "mAP"].notna().all()
    assert set(det["perturbation"].condition) == set(conds.condition)


def test_no_positive_pair_crosses_conditions():
    """Every perturbation name exists in 4 conditions; per condition its replicates are only the
    2 plates of that condition, and the result equals retrieval on that condition alone."""
    wells = cpjump_wells(seed=1)
    centred, pert = correct_profiles(wells, "none")
    tab, det = retrieval_table(centred, pert, ["perturbation"], null_size=300, seed=4)
    d = det["perturbation"]
    assert (d["n_profiles"] == 2).all()                       # never the 8 wells of all conditions
    for label, g in d.groupby("condition"):
        parts = dict(kv.split("=") for kv in label.split(", "))
        sub = centred[(centred.Metadata_CellType == parts["CellType"]) & (centred.Metadata_Modality == parts["Modality"])
                      & (centred.Metadata_Timepoint == parts["Timepoint"])]
        ref = replicate_retrieval(sub, null_size=300, seed=4)
        np.testing.assert_array_equal(g.sort_values("Metadata_Perturbation")["mean_average_precision"],
                                      ref.map.sort_values("Metadata_Perturbation")["mean_average_precision"])
        np.testing.assert_array_equal(g.sort_values("Metadata_Perturbation")["p_value"],
                                      ref.map.sort_values("Metadata_Perturbation")["p_value"])
    # pooled across conditions, the same perturbation would have 8 replicates
    pooled = replicate_retrieval(centred, null_size=300, seed=4)
    assert (pooled.map["n_profiles"] == 8).all()


def test_sibling_other_targets_equals_copairs():
    """negatives: other_targets (CPJUMP1) on single-target compounds = copairs on the same rows."""
    wells = cpjump_wells(seed=2, cells=("U2OS",), times=("T1",), modalities=("compound",))
    wells = wells[wells.Metadata_Perturbation != "c5"]         # single targets only
    centred, pert = correct_profiles(wells, "none")
    summ, mp = run_task(centred, pert, "sibling_compound", negatives="other_targets", null_size=400, seed=3)
    df = sibling_profiles(pert, "sibling_compound")
    x = df[_feats(df)].to_numpy()
    ref = copairs_map.average_precision(df, x, ["Metadata_TargetGene"], ["Metadata_Perturbation"], [],
                                        ["Metadata_TargetGene", "Metadata_Perturbation"], progress_bar=False)
    m_ref = copairs_map.mean_average_precision(ref, ["Metadata_TargetGene"], 400, 0.05, 3, progress_bar=False)
    ev = mp[mp.mean_average_precision.notna()].sort_values("Metadata_TargetGene").reset_index(drop=True)
    np.testing.assert_array_equal(ev.Metadata_TargetGene, m_ref.Metadata_TargetGene)
    np.testing.assert_allclose(ev.mean_average_precision, m_ref.mean_average_precision, atol=1e-12)
    assert summ["n_groups_evaluated"] == 2                    # G0 (c0, c1) and G1 (c2, c3)


def test_sibling_against_control_wells_brute_force():
    """negatives: controls (MAE-CVPR §5.3): each compound's AP = its siblings ranked among the
    negative-control wells of its condition, computed from scratch."""
    wells = cpjump_wells(seed=3, cells=("U2OS",), times=("T1",), modalities=("compound", "crispr", "orf"))
    centred, pert = correct_profiles(wells, "none", condition=[])
    for task, partner in (("sibling_compound", "compound"), ("sibling_compound_gene", "crispr"),
                          ("sibling_compound_orf", "orf"), ("sibling_guide", "crispr")):
        summ, mp = run_task(centred, pert, task, negatives="controls", null_size=200, seed=0)
        sib = sibling_profiles(pert, task)
        ctrl = centred[centred.Metadata_PertType == "negcon"]
        x = np.vstack([sib[_feats(sib)].to_numpy(float), ctrl[_feats(sib)].to_numpy(float)])
        neg = np.arange(len(sib), len(x))
        query_mod = "crispr" if task == "sibling_guide" else "compound"
        expect = {}
        for i in np.flatnonzero(sib.Metadata_Modality.eq(query_mod)):
            same = (sib.Metadata_TargetGene == sib.Metadata_TargetGene[i]) & sib.Metadata_Modality.eq(partner)
            same &= sib.Metadata_Perturbation != sib.Metadata_Perturbation[i]
            pos = np.flatnonzero(same)
            if len(pos):
                expect.setdefault(sib.Metadata_TargetGene[i], []).append(_brute_ap(x, i, pos, neg))
        got = mp.dropna(subset=["mean_average_precision"]).set_index("Metadata_TargetGene")["mean_average_precision"]
        assert set(got.index) == set(expect), task
        for t, aps in expect.items():
            assert got[t] == pytest.approx(np.mean(aps), abs=1e-12), (task, t)
        assert summ["n_groups_evaluated"] == len(expect)


def test_multi_target_compounds():
    """c5 targets G2 and G3: it is a sibling in both groups, and under other_targets a compound
    sharing any of its targets is never its negative."""
    wells = cpjump_wells(seed=4, cells=("U2OS",), times=("T1",), modalities=("compound",))
    centred, pert = correct_profiles(wells, "none", condition=[])
    sib = sibling_profiles(pert, "sibling_compound")
    assert sorted(sib.loc[sib.Metadata_Perturbation == "c5", "Metadata_TargetGene"]) == ["G2", "G3"]
    _, mp = run_task(centred, pert, "sibling_compound", negatives="other_targets", null_size=200, seed=0)
    x = sib[_feats(sib)].to_numpy(float)
    tsets = {p: set(v.split("|")) for p, v in zip(sib.Metadata_Perturbation, sib.Metadata_TargetSet, strict=True)}
    expect = {}
    for i in range(len(sib)):
        p, t = sib.Metadata_Perturbation[i], sib.Metadata_TargetGene[i]
        pos = np.flatnonzero((sib.Metadata_TargetGene == t) & (sib.Metadata_Perturbation != p))
        neg = np.flatnonzero([not (tsets[q] & tsets[p]) for q in sib.Metadata_Perturbation])
        if len(pos):
            expect.setdefault(t, []).append(_brute_ap(x, i, pos, neg))
    got = mp.dropna(subset=["mean_average_precision"]).set_index("Metadata_TargetGene")["mean_average_precision"]
    assert set(got.index) == set(expect) == {"G0", "G1", "G2", "G3"}
    for t, aps in expect.items():
        assert got[t] == pytest.approx(np.mean(aps), abs=1e-12), t


def test_exclude_negatives_in_the_engine():
    """exclude_negatives removes listed pairs from the negatives (counts and ranks), whatever path."""
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"Metadata_G": np.repeat(["a", "b", "c", "d"], 5)})
    x = rng.standard_normal((20, 6))
    excl = np.array([[0, 5], [7, 1], [12, 3], [0, 1]])          # (0, 1) is a positive pair: ignored
    for opts in (None, MapOptions(symmetric_min=1), MapOptions(neg_dense=False)):
        out = average_precision(meta, x, ["Metadata_G"], [], [], ["Metadata_G"], exclude_negatives=excl,
                                options=opts)
        for i in range(20):
            g = meta.Metadata_G[i]
            pos = np.flatnonzero((meta.Metadata_G == g) & (np.arange(20) != i))
            bad = {int(b) for a, b in excl if a == i} | {int(a) for a, b in excl if b == i}
            neg = np.array([j for j in np.flatnonzero(meta.Metadata_G != g) if j not in bad])
            assert out.n_total_pairs[i] == len(pos) + len(neg)
            assert out.average_precision[i] == pytest.approx(_brute_ap(x, i, pos, neg), abs=1e-12)
    with pytest.raises(MorphobenchError, match="outside"):
        average_precision(meta, x, ["Metadata_G"], [], [], ["Metadata_G"], exclude_negatives=np.array([[0, 99]]))


def test_bad_retrieval_input_is_clear():
    wells = cpjump_wells(seed=5, cells=("U2OS",), times=("T1",), modalities=("compound",))
    centred, pert = correct_profiles(wells, "none")
    with pytest.raises(MorphobenchError, match="negatives"):
        retrieval_table(centred, pert, ["sibling_compound"], negatives="dmso", null_size=50)
    with pytest.raises(MorphobenchError, match="unknown retrieval task"):
        retrieval_table(centred, pert, ["siblings"], null_size=50)
    no_ctrl = centred[centred.Metadata_PertType != "negcon"]
    with pytest.raises(MorphobenchError, match="negcon wells"):
        run_task(no_ctrl, pert, "sibling_compound", negatives="controls", null_size=50, seed=0)
    broken = centred.copy()
    broken.loc[3, "Metadata_CellType"] = None
    with pytest.raises(MorphobenchError, match="missing values"):
        retrieval_table(broken, pert, ["perturbation"], null_size=50)
    # a task that applies nowhere is a recorded row, not a missing one
    tab, _ = retrieval_table(centred, pert, ["sibling_guide"], null_size=50)
    assert len(tab) == 1 and tab.skip_reason[0].startswith("no crispr perturbation")
