"""Correction + evaluation stages on synthetic well profiles with planted structure."""

import numpy as np
import pandas as pd
import pytest

from morphobench.correct.stage import correct_profiles, parse_correction
from morphobench.evaluate.stages import (
    batch_correction_table,
    gather,
    known_relationships,
    retrieval_stage,
    run_retrieval,
    sibling_profiles,
)
from morphobench.io import MorphobenchError

KEY = {"dataset": "syn", "method": "m", "correction": "none"}


def _wells(seed=0, n_plates=4, dim=24):
    """Genes in two 'complexes' (shared directions), compounds targeting genes, negcons."""
    rng = np.random.default_rng(seed)
    dirs = {"cA": rng.standard_normal(dim), "cB": rng.standard_normal(dim)}
    perts = []
    for i in range(4):
        perts.append(("gA%d" % i, "trt", "gA%d" % i, None, None, 2.0 * dirs["cA"] + 1.0 * rng.standard_normal(dim)))
        perts.append(("gB%d" % i, "trt", "gB%d" % i, None, None, 2.0 * dirs["cB"] + 1.0 * rng.standard_normal(dim)))
    for i in range(4):
        perts.append(("gN%d" % i, "trt", "gN%d" % i, None, None, np.zeros(dim)))  # null phenotype
    vec_of = {p[0]: p[5] for p in perts}
    # compounds share their target gene's phenotype (siblings)
    perts.append(("cpdA", "trt", None, "cpdA", "gA0", vec_of["gA0"]))
    perts.append(("cpdA2", "trt", None, "cpdA2", "gA0", vec_of["gA0"]))
    perts.append(("cpdB", "trt", None, "cpdB", "gB1", vec_of["gB1"]))
    rows, feats = [], []
    for p in range(n_plates):
        batch_shift = rng.standard_normal(dim) * 0.5 * (p // 2)
        for name, ptype, gene, cpd, tgt, vec in perts:
            rows.append({"Metadata_Batch": f"B{p // 2}", "Metadata_Plate": f"P{p}", "Metadata_Well": f"W_{name}",
                         "Metadata_Perturbation": name, "Metadata_PertType": ptype, "Metadata_Gene": gene,
                         "Metadata_Compound": cpd, "Metadata_Target": tgt})
            feats.append(vec + batch_shift + 0.3 * rng.standard_normal(dim))
        for k in range(8):
            rows.append({"Metadata_Batch": f"B{p // 2}", "Metadata_Plate": f"P{p}", "Metadata_Well": f"N{k}",
                         "Metadata_Perturbation": "DMSO", "Metadata_PertType": "negcon", "Metadata_Gene": None,
                         "Metadata_Compound": None, "Metadata_Target": None})
            feats.append(batch_shift + 0.3 * rng.standard_normal(dim))
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(np.array(feats), columns=[f"f{i}" for i in range(dim)])],
                     axis=1)


def test_parse_correction():
    assert parse_correction("tvn+arm") == ("tvn", True)
    assert parse_correction("none") == ("none", False)
    with pytest.raises(MorphobenchError, match="unknown correction"):
        parse_correction("tvm")
    with pytest.raises(MorphobenchError, match="unknown correction"):
        parse_correction("arm")


def test_correct_profiles_centres_on_negcon_and_aggregates():
    wells = _wells()
    centred, pert = correct_profiles(wells, "standardize_plate")
    feats = [c for c in centred.columns if c.startswith("f")]
    neg = centred[centred.Metadata_PertType == "negcon"][feats].to_numpy()
    assert np.abs(neg.mean(0)).max() < 1e-9
    assert set(pert.Metadata_Perturbation) == set(wells.Metadata_Perturbation)
    ga = pert.set_index("Metadata_Perturbation").loc["gA1", feats].to_numpy(dtype=float)
    assert np.allclose(ga, centred[centred.Metadata_Perturbation == "gA1"][feats].mean().to_numpy())


def test_arm_correction_applies_to_gene_rows_only():
    wells = _wells()
    genes = [f"g{c}{i}" for c in "ABN" for i in range(4)]
    arm_table = pd.DataFrame({"gene": genes, "arm": ["1p"] * len(genes)})
    _, plain = correct_profiles(wells, "none")
    _, armed = correct_profiles(wells, "none+arm", arm_table=arm_table, unexpressed=genes, min_arm_genes=3)
    feats = [c for c in plain.columns if c.startswith("f")]
    p, a = plain.set_index("Metadata_Perturbation"), armed.set_index("Metadata_Perturbation")
    mean_g = p.loc[genes, feats].mean()
    assert np.allclose(a.loc[genes, feats], p.loc[genes, feats] - mean_g)
    assert np.allclose(a.loc[["cpdA", "DMSO"], feats], p.loc[["cpdA", "DMSO"], feats])
    with pytest.raises(MorphobenchError, match="gene → arm"):
        correct_profiles(wells, "tvn+arm")


def test_retrieval_tasks_rank_structure():
    centred, pert = correct_profiles(_wells(), "none")
    summ, detail = run_retrieval(centred, pert, "perturbation", null_size=2000, seed=0)
    d = detail.set_index("Metadata_Perturbation")
    assert d.loc["gA0", "mean_average_precision"] > 0.9
    assert d.loc[[f"gA{i}" for i in range(4)], "corrected_p_value"].lt(0.05).all()
    assert d.loc[[f"gN{i}" for i in range(4)], "mean_average_precision"].mean() < 0.6
    assert summ["n_groups"] == 15 and 0 < summ["fraction_retrieved"] < 1
    sib = sibling_profiles(pert, "sibling_compound_gene")
    assert set(sib.Metadata_Modality) == {"compound", "crispr"}
    summ2, det2 = run_retrieval(centred, pert, "sibling_compound_gene", null_size=2000, seed=0)
    m = det2.set_index("Metadata_TargetGene")["mean_average_precision"]
    assert m.loc["gA0"] == pytest.approx(1.0) and m.loc["gB1"] == pytest.approx(1.0)
    summ3, _ = run_retrieval(centred, pert, "sibling_compound", null_size=2000, seed=0)
    assert summ3["n_groups_evaluated"] == 1  # only gA0 has two compounds
    with pytest.raises(MorphobenchError, match="unknown retrieval task"):
        run_retrieval(centred, pert, "siblings", null_size=10, seed=0)


def test_no_negcon_on_a_plate_is_a_clear_error(tmp_path):
    wells = _wells()
    wells = wells[~((wells.Metadata_Plate == "P3") & (wells.Metadata_PertType == "negcon"))]
    centred, pert = correct_profiles(wells, "none")
    centred.to_parquet(tmp_path / "w.parquet")
    pert.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(MorphobenchError, match="without negative controls"):
        retrieval_stage(tmp_path / "w.parquet", tmp_path / "p.parquet", KEY, ["perturbation"],
                        tmp_path / "t.tsv", tmp_path / "d", null_size=100)
    assert not (tmp_path / "t.tsv").exists()
    retrieval_stage(tmp_path / "w.parquet", tmp_path / "p.parquet", KEY, ["perturbation"],
                    tmp_path / "t.tsv", tmp_path / "d", null_size=100, on_missing_negcon="skip")
    t = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert t.loc[0, "n_groups"] == 15 and t.loc[0, "mAP"] > 0


def test_known_relationships_stage_and_tables(tmp_path):
    _, pert = correct_profiles(_wells(), "none")
    pert.to_parquet(tmp_path / "p.parquet")
    pairs = pd.DataFrame({"entity1": ["gA0", "gA0", "gA1", "gB0", "gB2", "gA0", "gX"],
                          "entity2": ["gA1", "gA2", "gA3", "gB1", "gB3", "gA0", "gA1"]})
    pairs.to_csv(tmp_path / "CORUM.csv", index=False)
    pairs.to_csv(tmp_path / "StringDB.csv", index=False)
    ann = {"CORUM": str(tmp_path / "CORUM.csv"), "StringDB": str(tmp_path / "StringDB.csv")}
    outs = [tmp_path / f"{n}.tsv" for n in ("known", "curve", "sets")]
    known_relationships(tmp_path / "p.parquet", ann, KEY, *outs, gene_sets={"A": [f"gA{i}" for i in range(4)], "every": "all"})
    k = pd.read_csv(outs[0], sep="\t")
    assert list(k.columns[:8]) == ["dataset", "method", "correction", "source", "n_genes", "n_pairs",
                                   "recall_5_95", "recall_10_90"]
    row = k.set_index("source").loc["CORUM"]
    assert row.n_genes == 12 and row.n_pairs == 5 and row.n_pairs_gene_missing == 1
    # brute-force EFAAR definition: null = all upper-triangle cosines of the gene map
    genes = pert[pert.Metadata_Gene.notna()].set_index("Metadata_Gene")
    x = genes[[c for c in genes.columns if c.startswith("f")]].to_numpy(dtype=float)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    null = np.sort(sim[np.triu_indices(len(x), 1)])
    pos = {g: i for i, g in enumerate(genes.index)}
    used = [("gA0", "gA1"), ("gA0", "gA2"), ("gA1", "gA3"), ("gB0", "gB1"), ("gB2", "gB3")]
    s_ = np.array([sim[pos[a], pos[b]] for a, b in used])
    n = len(null)
    hit = (np.searchsorted(null, s_, "right") / n <= 0.05) | (np.searchsorted(null, s_, "left") / n >= 0.95)
    assert row.recall_5_95 == pytest.approx(hit.mean())
    assert row.recall_5_95 > 0.10  # complex members share a direction: above random
    c = pd.read_csv(outs[1], sep="\t")
    assert sorted(c.percentile.unique()) == list(range(1, 21))
    s = pd.read_csv(outs[2], sep="\t")
    assert s.loc[0, "gene_set"] == "A" and s.loc[0, "n_pairs"] == 3
    # "all" = every gene of the map: same pairs as the whole-map StringDB row
    every = s.set_index("gene_set").loc["every"]
    assert every.n_pairs == k.set_index("source").loc["StringDB", "n_pairs"] and every.n_set_genes_missing == 0
    # gather + batch-correction layout
    k2 = k.assign(correction="tvn")
    k2.to_csv(tmp_path / "k2.tsv", sep="\t", index=False)
    tab = gather([tmp_path / "k2.tsv", outs[0]], tmp_path / "all.tsv", config_digest="abc123")
    assert list(tab.correction) == ["none", "none", "tvn", "tvn"]
    import json

    prov = json.loads((tmp_path / "all.tsv.provenance.json").read_text())
    assert prov["config_hash"] == "abc123" and prov["table"] == "all.tsv"
    batch_correction_table(tmp_path / "all.tsv", "m", tmp_path / "bc.tsv")
    assert len(pd.read_csv(tmp_path / "bc.tsv", sep="\t")) == 4
    with pytest.raises(MorphobenchError, match="not in"):
        batch_correction_table(tmp_path / "all.tsv", "other", tmp_path / "bc2.tsv")
