"""Correction + evaluation stages on synthetic well profiles with planted structure."""

import numpy as np
import pandas as pd
import pytest

from morphobench.correct.stage import correct_profiles, parse_correction
from morphobench.evaluate.retrieval import run_task, sibling_profiles
from morphobench.evaluate.stages import batch_correction_table, gather, known_relationships, retrieval_stage
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
    # default: the spherical mean of the centred replicate wells (MAE-W §4, MAE-CVPR §5.1)
    ga = pert.set_index("Metadata_Perturbation").loc["gA1", feats].to_numpy(dtype=float)
    reps = centred[centred.Metadata_Perturbation == "gA1"][feats].to_numpy(dtype=float)
    sph = (reps / np.linalg.norm(reps, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(ga, sph / np.linalg.norm(sph), atol=1e-12)
    _, plain = correct_profiles(wells, "standardize_plate", aggregation="mean")
    np.testing.assert_allclose(plain.set_index("Metadata_Perturbation").loc["gA1", feats].to_numpy(dtype=float),
                               reps.mean(0), atol=1e-12)


def test_conditions_split_perturbation_profiles():
    """Perturbation profiles are per perturbation × condition (the condition columns present)."""
    wells = _wells()
    wells["Metadata_CellType"] = np.where(wells["Metadata_Plate"].isin(["P0", "P1"]), "U2OS", "A549")
    _, pert = correct_profiles(wells, "none")
    assert len(pert) == 2 * wells["Metadata_Perturbation"].nunique()
    assert set(pert["Metadata_CellType"]) == {"U2OS", "A549"}
    _, pooled = correct_profiles(wells, "none", condition=[])
    assert len(pooled) == wells["Metadata_Perturbation"].nunique()


def test_arm_correction_applies_to_gene_rows_only():
    wells = _wells()
    genes = [f"g{c}{i}" for c in "ABN" for i in range(4)]
    arm_table = pd.DataFrame({"gene": genes, "arm": ["1p"] * len(genes)})
    feats = [c for c in wells.columns if c.startswith("f")]
    # perturbation level: centre the gene-level profiles
    _, plain = correct_profiles(wells, "none", aggregation="mean")
    _, armed = correct_profiles(wells, "none+arm", aggregation="mean", arm_level="perturbation",
                                arm_table=arm_table, unexpressed=genes, min_arm_genes=3)
    p, a = plain.set_index("Metadata_Perturbation"), armed.set_index("Metadata_Perturbation")
    mean_g = p.loc[genes, feats].mean()
    assert np.allclose(a.loc[genes, feats], p.loc[genes, feats] - mean_g)
    assert np.allclose(a.loc[["cpdA", "DMSO"], feats], p.loc[["cpdA", "DMSO"], feats])
    # well level (MAE-W §4's order, the default): centre the CRISPR wells, then the spherical mean
    centred, _ = correct_profiles(wells, "none")
    w_armed, p_armed = correct_profiles(wells, "none+arm", arm_table=arm_table, unexpressed=genes, min_arm_genes=3)
    is_gene = centred["Metadata_Gene"].notna().to_numpy()
    x, y = centred[feats].to_numpy(dtype=float), w_armed[feats].to_numpy(dtype=float)
    np.testing.assert_allclose(y[is_gene], x[is_gene] - x[is_gene].mean(0), atol=1e-12)
    np.testing.assert_array_equal(y[~is_gene], x[~is_gene])                  # controls, compounds untouched
    reps = y[(w_armed["Metadata_Perturbation"] == "gA2").to_numpy()]
    sph = (reps / np.linalg.norm(reps, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(p_armed.set_index("Metadata_Perturbation").loc["gA2", feats].to_numpy(dtype=float),
                               sph / np.linalg.norm(sph), atol=1e-12)
    # ORF rows (Metadata_Modality) carry a gene but are not CRISPR: never arm-corrected
    orf = wells.assign(Metadata_Modality=np.where(wells["Metadata_Perturbation"].str.startswith("gN"), "orf", "crispr"))
    w_orf, _ = correct_profiles(orf, "none+arm", arm_table=arm_table, unexpressed=genes, min_arm_genes=3)
    is_orf = (orf["Metadata_Modality"] == "orf").to_numpy()
    np.testing.assert_array_equal(w_orf[feats].to_numpy()[is_orf], centred[feats].to_numpy()[is_orf])
    with pytest.raises(MorphobenchError, match="gene → arm"):
        correct_profiles(wells, "tvn+arm")
    with pytest.raises(MorphobenchError, match="arm_level"):
        correct_profiles(wells, "tvn+arm", arm_level="gene")


def run_retrieval(well, pert, task, **kw):
    return run_task(well, pert, task, negatives=kw.pop("negatives", "other_targets"), **kw)


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
    assert list(t.condition) == ["all", "mean ± sd"]
    assert t.loc[0, "n_groups"] == 15 and t.loc[0, "mAP"] > 0 and t.loc[1, "mAP"] == t.loc[0, "mAP"]


def test_known_relationships_stage_and_tables(tmp_path):
    _, pert = correct_profiles(_wells(), "none")
    pert.to_parquet(tmp_path / "p.parquet")
    pairs = pd.DataFrame({"entity1": ["gA0", "gA0", "gA1", "gB0", "gB2", "gA0", "gX"],
                          "entity2": ["gA1", "gA2", "gA3", "gB1", "gB3", "gA0", "gA1"]})
    pairs.to_csv(tmp_path / "CORUM.csv", index=False)
    pairs.to_csv(tmp_path / "StringDB.csv", index=False)
    ann = {"CORUM": str(tmp_path / "CORUM.csv"), "StringDB": str(tmp_path / "StringDB.csv")}
    outs = [tmp_path / f"{n}.tsv" for n in ("known", "curve", "sets")]
    (tmp_path / "setA.txt").write_text("\n".join(f"gA{i}" for i in range(4)))
    known_relationships(tmp_path / "p.parquet", ann, KEY, *outs,
                        gene_sets={"A": str(tmp_path / "setA.txt"), "every": "all"}, gene_set_null="all")
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
    bc = pd.read_csv(tmp_path / "bc.tsv", sep="\t")
    assert list(bc.correction) == ["none", "tvn"] and list(bc.row) == [1, 2]
    assert bc.loc[1, "recall_5_95_CORUM"] == row.recall_5_95
    with pytest.raises(MorphobenchError, match="not in"):
        batch_correction_table(tmp_path / "all.tsv", "other", tmp_path / "bc2.tsv")


def test_batch_correction_table_has_the_papers_rows_in_order(tmp_path):
    """MAE-CVPR Table 2: nine corrections in the paper's order, without then with +arm (18 rows);
    corrections not run are recorded rows, never silently missing."""
    paper = ["none", "pca", "center_plate", "center_experiment", "standardize_plate", "standardize_experiment",
             "pca_standardize_plate", "pca_standardize_experiment", "tvn"]
    wanted = paper + [c + "+arm" for c in paper]
    rng = np.random.default_rng(0)
    rows = [{"dataset": "syn", "method": "m", "correction": c, "source": s, "n_genes": 12,
             "recall_5_95": rng.random(), "recall_10_90": rng.random()}
            for c in reversed(wanted[:-1]) for s in ("CORUM", "HuMAP", "Reactome", "StringDB")]
    pd.DataFrame(rows).to_csv(tmp_path / "k.tsv", sep="\t", index=False)
    bc = batch_correction_table(tmp_path / "k.tsv", "m", tmp_path / "bc.tsv", corrections=wanted,
                                skipped={"syn": {"tvn+arm": "no expression table"}})
    assert list(bc.correction) == wanted and list(bc.row) == list(range(1, 19))
    assert bc.arm.tolist() == [False] * 9 + [True] * 9 and bc.base_correction.tolist() == paper * 2
    assert [c for c in bc.columns if c.startswith("recall")] == [
        "recall_5_95_CORUM", "recall_5_95_HuMAP", "recall_5_95_Reactome", "recall_5_95_StringDB"]
    last = bc.iloc[-1]
    assert last.skip_reason == "no expression table" and np.isnan(last.recall_5_95_CORUM)
    from morphobench.figures.plots import batch_correction_heatmap

    batch_correction_heatmap(bc, tmp_path / "bc.png")
    assert (tmp_path / "bc.png").stat().st_size > 5000


def test_guides_are_aggregated_to_genes_for_recall():
    """Several CRISPR guides per gene: one profile per gene (spherical mean of the guides) for the
    known-relationship map; ORF rows are not CRISPR; several conditions are an error."""
    from morphobench.evaluate.stages import gene_profiles

    rng = np.random.default_rng(0)
    rows = [{"Metadata_Perturbation": f"{g}_{k}", "Metadata_PertType": "trt", "Metadata_Gene": g}
            for g in ("A", "B", "C") for k in (1, 2)]
    rows.append({"Metadata_Perturbation": "A_orf", "Metadata_PertType": "trt", "Metadata_Gene": "A",
                 "Metadata_Modality": "orf"})
    pert = pd.concat([pd.DataFrame(rows), pd.DataFrame(rng.standard_normal((7, 5)), columns=list("vwxyz"))], axis=1)
    genes = gene_profiles(pert, "p")
    assert list(genes["Metadata_Gene"]) == ["A", "B", "C"] and (genes["Metadata_Count"] == 2).all()
    a = pert.loc[[0, 1], list("vwxyz")].to_numpy()
    sph = (a / np.linalg.norm(a, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(genes.loc[0, list("vwxyz")].to_numpy(float), sph / np.linalg.norm(sph), atol=1e-12)
    with pytest.raises(MorphobenchError, match="several conditions"):
        gene_profiles(pert.assign(Metadata_CellType=["U2OS", "A549"] * 3 + ["U2OS"]), "p")
