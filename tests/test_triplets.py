"""MoA triplets (TEAMs Table 1): hand-made tables with hand-counted accuracies, multi-label MoAs,
expert modes, the stage's inputs and errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from morphobench.evaluate import triplets as T
from morphobench.io import MorphobenchError


def _circle(deg):
    r = np.deg2rad(np.asarray(deg, dtype=float))
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def _hand_cells():
    """Six test cells on the unit circle, classes of exactly two cells (so every anchor has one
    positive) placed so that each anchor's outcome does not depend on the negative drawn:
    c0, c1, c4, c5 always right, c2, c3 always wrong → 4/6. Plus one control cell at 210°."""
    cells = pd.DataFrame({
        "Metadata_Perturbation": ["T1", "T1", "T3", "T4", "T5", "T6", "DMSO"],
        "Metadata_MoA": ["A", "A", "B", "B", "C", "C", None],
        "role": ["test"] * 6 + ["control"],
    })
    emb = _circle([0, 20, 90, 240, 180, 160, 210])
    return cells, emb


def test_single_cell_hand_counted():
    cells, emb = _hand_cells()
    for seed in range(5):  # the outcome does not depend on the draws
        tab = T.evaluate_cells(emb, cells, tasks=["single_cell", "vs_control"], seed=seed, n_boot=200)
        sc = tab.set_index("task").loc["single_cell"]
        assert sc["n_triplets"] == 6 and sc["n_skipped"] == 0
        assert sc["accuracy"] == pytest.approx(4 / 6)
        # vs control (210°): c0 .94>-.87 ✓, c1 ✓, c2 -.87<-.5 ✗, c3 -.87<.87 ✗, c4 .94>.87 ✓, c5 ✓
        vc = tab.set_index("task").loc["vs_control"]
        assert vc["n_triplets"] == 6 and vc["accuracy"] == pytest.approx(4 / 6)
        assert vc["ci_low"] <= vc["accuracy"] <= vc["ci_high"]


def test_other_treatment_positive_is_stricter():
    cells, emb = _hand_cells()
    tab = T.evaluate_cells(emb, cells, tasks=["single_cell_other_treatment"], n_boot=100)
    row = tab.iloc[0]
    # c0 and c1 (both T1) have no positive in another treatment: skipped
    assert row["n_skipped"] == 2 and row["n_triplets"] == 4
    assert row["accuracy"] == pytest.approx(2 / 4)


def test_sampling_rules_multilabel():
    """Positives share ≥ 1 class (anchor excluded), negatives share none; unannotated rows never
    take part; a multi-label row is a positive of both its classes."""
    sets = T.parse_moas(["A", "A|B", "B", "C", None, "", " C | D "])
    assert sets[1] == {"A", "B"} and sets[4] == frozenset() and sets[6] == {"C", "D"}
    trt = np.array(["t0", "t1", "t2", "t3", "t4", "t5", "t6"])
    rng = np.random.default_rng(0)
    for _ in range(50):
        t = T.sample_cell_triplets(sets, trt, rng)
        assert set(t.anchor.tolist()) == {0, 1, 2, 3, 6}
        for a, p, n in zip(t.anchor, t.positive, t.negative, strict=True):
            assert p != a and sets[a] & sets[p]
            assert not sets[a] & sets[n] and sets[n]
    # positives drawn uniformly: anchor 1 ({A,B}) has positives {0, 2} equally often
    rng = np.random.default_rng(1)
    draws = [int(T.sample_cell_triplets(sets, trt, rng).positive[1]) for _ in range(2000)]
    assert abs(np.mean(np.array(draws) == 0) - 0.5) < 0.05
    # other_treatment: the positive comes from another treatment
    trt2 = np.array(["t0", "t0", "t2", "t3", "t4", "t5", "t6"])
    t = T.sample_cell_triplets(sets, trt2, np.random.default_rng(0), other_treatment=True)
    for a, p in zip(t.anchor, t.positive, strict=True):
        assert trt2[a] != trt2[p]


def test_treatment_triplets():
    """Treatment similarity = mean cosine over all cell pairs; anchors with a positive and a negative
    treatment; hand-made: perfect and inverted embeddings give 1 and 0."""
    rng = np.random.default_rng(0)
    names = ["T1", "T2", "T3", "T4", "T5"]
    moa = {"T1": "A", "T2": "A", "T3": "B", "T4": "B", "T5": "A|B"}
    direction = {"A": 0.0, "B": 90.0, "A|B": 45.0}
    rows, emb = [], []
    for t in names:
        for _ in range(4):
            rows.append({"Metadata_Perturbation": t, "Metadata_MoA": moa[t], "role": "test"})
            emb.append(_circle([direction[moa[t]] + rng.normal(0, 5)])[0])
    cells = pd.DataFrame(rows)
    emb = np.asarray(emb)
    tab = T.evaluate_cells(emb, cells, tasks=["treatment"], n_treatment_triplets=500, n_boot=100)
    r = tab.iloc[0]
    # T5 (A|B) shares with everyone: never an anchor (no negative), never a negative
    assert r["n_triplets"] == 500 and r["n_skipped"] == 1 and r["n_treatments"] == 4
    assert r["accuracy"] == 1.0
    t = T.sample_treatment_triplets(T.parse_moas([moa[n] for n in names]), np.random.default_rng(0), 200)
    assert 4 not in set(t.negative.tolist()) and 4 not in set(t.anchor.tolist())
    # invert: same-MoA treatments far apart → every triplet wrong
    flip = np.where(cells["Metadata_Perturbation"].isin(["T2", "T4"]).to_numpy()[:, None], -emb, emb)
    assert T.evaluate_cells(flip, cells, tasks=["treatment"], n_treatment_triplets=300, n_boot=50)["accuracy"].iloc[0] < 0.5
    # the similarity of two treatments is the mean cosine over all their cell pairs
    z = T.l2_normalize(emb)
    m1, m2 = z[:4].mean(0), z[4:8].mean(0)
    assert m1 @ m2 == pytest.approx(np.mean(z[:4] @ z[4:8].T))


def test_expert_modes():
    """mean = cosine of the concatenation; random compares each pair in one random expert; oracle
    in each cell's own group's expert."""
    rng = np.random.default_rng(0)
    blocks = T.l2_normalize(rng.normal(size=(6, 2, 4)))
    emb = blocks.reshape(6, 8)
    a, b = np.array([0, 1, 2]), np.array([3, 4, 5])
    mean = T.pair_cosines(emb, a, b)
    per = np.einsum("ikd,ikd->ik", blocks[a], blocks[b])
    assert mean == pytest.approx(per.mean(1))
    groups = np.array([0, 1, 0, 1, 1, 0])
    oracle = T.pair_cosines(emb, a, b, mode="oracle", n_experts=2, groups=groups)
    assert oracle == pytest.approx([blocks[i, groups[i]] @ blocks[j, groups[j]] for i, j in zip(a, b, strict=True)])
    rnd = T.pair_cosines(emb, a, b, mode="random", n_experts=2, rng=np.random.default_rng(3))
    e = np.random.default_rng(3).integers(0, 2, size=3)
    assert rnd == pytest.approx(per[np.arange(3), e])
    with pytest.raises(MorphobenchError, match="oracle"):
        T.pair_cosines(emb, a, b, mode="oracle", n_experts=2, groups=np.array([0, 2, 0, 1, 1, 0]))
    with pytest.raises(MorphobenchError, match="equal expert blocks"):
        T.pair_cosines(emb[:, :7], a, b, mode="random", n_experts=2, rng=rng)


def test_same_triplets_for_every_method():
    """The draws depend on the cells and the seed only: two embeddings are scored on the same
    triplets (a paired comparison), and the same inputs give the same table."""
    cells, emb = _hand_cells()
    a = T.evaluate_cells(emb, cells, seed=4, n_boot=50)
    b = T.evaluate_cells(emb, cells, seed=4, n_boot=50)
    pd.testing.assert_frame_equal(a, b)


def test_bootstrap_ci_clusters():
    rng = np.random.default_rng(0)
    correct = np.r_[np.ones(50), np.zeros(50)]
    lo, hi = T.bootstrap_ci(correct, np.repeat(np.arange(10), 10), rng, n_boot=500)
    assert lo < 0.5 < hi and hi - lo > 0.3  # 10 clusters of all-or-nothing: wide
    lo2, hi2 = T.bootstrap_ci(correct, np.arange(100), rng, n_boot=500)
    assert hi2 - lo2 < hi - lo


def _stage_files(tmp_path, cells, emb):
    wells = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": [f"A{i:02d}" for i in range(len(cells))],
                          "Metadata_Perturbation": cells["Metadata_Perturbation"],
                          "Metadata_PertType": np.where(cells["role"] == "control", "negcon", "trt"),
                          "Metadata_MoA": cells["Metadata_MoA"], "Metadata_Batch": ["B1", "B2"] * 3 + ["B1"]})
    split = wells[["Metadata_Plate", "Metadata_Well", "Metadata_Perturbation", "Metadata_PertType"]].assign(
        fold=0, split=np.where(wells["Metadata_PertType"] == "trt", "test", "control"))
    rows = wells[["Metadata_Plate", "Metadata_Well"]].assign(Metadata_Site=1, Metadata_ObjectNumber=1,
                                                             Metadata_Batch=wells["Metadata_Batch"])
    for j in range(emb.shape[1]):
        rows[f"emb_{j:04d}"] = emb[:, j]
    wells.to_parquet(tmp_path / "wells.parquet")
    split.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    rows.to_parquet(tmp_path / "cell.parquet")
    return wells, split, rows


def test_stage_writes_the_table(tmp_path):
    cells, emb = _hand_cells()
    _stage_files(tmp_path, cells, emb)
    tab = T.triplet_stage(tmp_path / "cell.parquet", tmp_path / "wells.parquet", tmp_path / "split.tsv",
                          {"dataset": "d", "method": "m"}, tmp_path / "out.tsv", n_boot=50, by_group="Metadata_Batch")
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert list(out.columns[:4]) == ["dataset", "method", "fold", "task"]
    allg = out[out["test_group"] == "all"].set_index("task")
    assert allg.loc["single_cell", "accuracy"] == pytest.approx(4 / 6)
    assert set(out["test_group"]) == {"all", "B1", "B2"}
    assert len(tab) == len(out)


def test_stage_errors(tmp_path):
    cells, emb = _hand_cells()
    wells, split, rows = _stage_files(tmp_path, cells, emb)
    wells.drop(columns="Metadata_MoA").to_parquet(tmp_path / "w2.parquet")
    with pytest.raises(MorphobenchError, match="Metadata_MoA"):
        T.triplet_stage(tmp_path / "cell.parquet", tmp_path / "w2.parquet", tmp_path / "split.tsv", {},
                        tmp_path / "o.tsv")
    split.iloc[1:].to_csv(tmp_path / "s2.tsv", sep="\t", index=False)
    with pytest.raises(MorphobenchError, match="not in the split table"):
        T.triplet_stage(tmp_path / "cell.parquet", tmp_path / "wells.parquet", tmp_path / "s2.tsv", {},
                        tmp_path / "o.tsv")
    bad = rows.copy()
    bad.loc[0, "emb_0000"] = np.nan
    bad.to_parquet(tmp_path / "c2.parquet")
    with pytest.raises(MorphobenchError, match="non-finite"):
        T.triplet_stage(tmp_path / "c2.parquet", tmp_path / "wells.parquet", tmp_path / "split.tsv", {},
                        tmp_path / "o.tsv")
    with pytest.raises(MorphobenchError, match="need the model's experts"):
        T.triplet_stage(tmp_path / "cell.parquet", tmp_path / "wells.parquet", tmp_path / "split.tsv", {},
                        tmp_path / "o.tsv", modes=["mean", "oracle"])
    assert not (tmp_path / "o.tsv").exists()


def test_summarize_folds():
    tab = pd.DataFrame({"dataset": "d", "method": "m", "task": "single_cell", "expert_mode": "mean",
                        "test_group": "all", "fold": [0, 1, 2], "accuracy": [0.6, 0.7, 0.8], "n_triplets": 10})
    s = T.summarize_folds(tab).iloc[0]
    assert s["accuracy_mean"] == pytest.approx(0.7) and s["accuracy_sd"] == pytest.approx(0.1)
    assert s["n_folds"] == 3 and s["n_triplets"] == 30


def test_paper_tables(tmp_path):
    """Tables 2/4/6/3 from a gathered table: mean ± sd over folds, paper groups a/b/c."""
    from morphobench.evaluate import teams_tables as TT

    rows = []
    for method, acc in (("teams", 0.7), ("online_negatives", 0.6), ("treatment_classification", 0.55), ("random", 0.5)):
        for fold, d in ((0, -0.05), (1, 0.05)):
            for task in T.TASKS:
                rows.append({"dataset": "d", "method": method, "fold": fold, "task": task, "expert_mode": "mean",
                             "test_group": "all", "n_triplets": 10, "accuracy": acc + d})
    trip = pd.DataFrame(rows)
    trip.to_csv(tmp_path / "moa_triplets.tsv", sep="\t", index=False)
    t2 = TT.write_table("teams_table2", tmp_path / "moa_triplets.tsv", tmp_path / "t2.tsv")
    assert list(t2["method"]) == ["treatment_classification", "online_negatives", "teams", "random"]
    assert list(t2["group"]) == ["a", "b", "c", "other"]
    r = t2.set_index("method").loc["teams"]
    assert r["single_cell_mean"] == pytest.approx(0.7) and r["single_cell_sd"] == pytest.approx(np.std([0.65, 0.75], ddof=1))
    assert r["average_mean"] == pytest.approx(0.7) and r["n_folds"] == 2
    assert (tmp_path / "t2.tsv.provenance.json").exists()
    t4 = TT.table4(trip)
    assert list(t4.columns) == ["dataset", "group", "method", "treatment_mean", "treatment_sd", "n_folds"]
    modes = pd.concat([trip[trip["method"] == "teams"].assign(expert_mode=m) for m in ("random", "mean", "oracle")])
    t6 = TT.table6(modes[modes["task"] != "treatment"])
    assert list(t6["expert_mode"]) == ["mean", "random", "oracle"] and "sum_mean" in t6
    held = pd.concat([trip[trip["method"] == "teams"].assign(held_out=h, test_group=g)
                      for h in ("none", "B1") for g in ("all", "B1", "B2")])
    t3 = TT.table3(held)
    assert len(t3) == 6 and {"held_out", "test_group", "single_cell_mean"} <= set(t3.columns)
    trip[trip["method"] != "teams"].to_csv(tmp_path / "no_teams.tsv", sep="\t", index=False)
    with pytest.raises(MorphobenchError, match="no rows"):
        TT.write_table("teams_table5", tmp_path / "no_teams.tsv", tmp_path / "t5.tsv")
    assert not (tmp_path / "t5.tsv").exists()
