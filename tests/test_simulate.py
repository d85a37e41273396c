"""The simulated screen (morphobench.simulate): layout, truth consistency, determinism, images.

Rendering tests share one ``tiny`` screen simulated once per module (a few seconds); the default
preset's design/layout is checked without rendering.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from morphobench.data.tables import (
    CHANNELS,
    JUMP_CHANNEL_NUMBERS,
    filename_col,
    parse_well,
    pathname_col,
    validate_image_sheet,
    validate_plate_map,
)
from morphobench.io import MorphobenchError
from morphobench.simulate import plate_paths, simulate_screen
from morphobench.simulate.design import AXES, UNEXPRESSED_ZFPKM, load_resource_tables, make_design
from morphobench.simulate.params import MIN_REPLICATES, PRESETS, resolve_params

DS = Path("results") / "sim"


@contextlib.contextmanager
def _cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def tables(resources_dir):
    return load_resource_tables(resources_dir)


def _run_tiny(root: Path, tables) -> None:
    """Simulate the tiny preset under ``root`` with cwd-relative paths (as the workflow does)."""
    root.mkdir(parents=True, exist_ok=True)
    with _cwd(root):
        simulate_screen({"preset": "tiny", "seed": 3}, DS, tables=tables)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tables) -> Path:
    root = tmp_path_factory.mktemp("sim_a")
    _run_tiny(root, tables)
    return root


@pytest.fixture(scope="module")
def default_design(tables):
    return make_design(resolve_params({"preset": "default", "seed": 0}), *tables)


def _read(root: Path, row: pd.Series, ch: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(root / row[pathname_col(ch)] / row[filename_col(ch)])


# ------------------------------------------------------------------------------ params
def test_resolve_params_presets_and_plates():
    p = resolve_params({"preset": "default", "seed": 0})
    assert (p.n_batches, p.plates_per_batch, p.plate_format, p.sites_per_well, p.image_size) == (2, 2, 96, 2, 256)
    assert p.plates == [("SIMB1", "SIMB1P1"), ("SIMB1", "SIMB1P2"), ("SIMB2", "SIMB2P1"), ("SIMB2", "SIMB2P2")]
    assert p.channels == tuple(CHANNELS)
    assert resolve_params({"brightfield": True}).channels[-1] == "Brightfield"
    for name in PRESETS:
        assert resolve_params({"preset": name}).replicates >= MIN_REPLICATES
    # explicit keys override the preset; image_size alone rescales the cell counts
    q = resolve_params({"preset": "tiny", "image_size": 256, "noise": 0.5})
    assert q.image_size == 256 and q.noise == 0.5 and q.cells_per_site[1] > PRESETS["tiny"].cells_per_site[1]
    assert resolve_params({"cells_per_site": [5, 9]}).cells_per_site == (5, 9)


@pytest.mark.parametrize("section, match", [
    ({"n_plates": 3}, "n_plates"),
    ({"preset": "huge"}, "preset"),
    ({"plates_per_batch": 1, "n_batches": 1}, "infeasible layout"),
    ({"negcon_wells_per_plate": 95}, "do not fit|infeasible"),
    ({"cells_per_site": [10, 5]}, "cells_per_site"),
    ({"cells_per_site": [10]}, "cells_per_site"),
    ({"image_size": 128, "cells_per_site": [100, 200]}, "does not fit"),
    ({"n_compounds": 2, "n_moas": 4}, "n_moas"),
    ({"seed": "zero"}, "seed"),
    ({"plate_format": 1536}, "plate_format"),
])
def test_resolve_params_errors(section, match):
    with pytest.raises(MorphobenchError, match=match):
        resolve_params(section)


# ------------------------------------------------------------------------------ design / layout (default preset)
def test_default_design_perturbations(default_design):
    d = default_design
    pert = d.perturbations
    genes = pert[pert["Metadata_Modality"].eq("crispr")]
    in_cx = genes[genes["Metadata_Complex"].notna()]
    assert len(in_cx) >= 40 and in_cx["Metadata_Complex"].nunique() >= 8
    unexp = genes[genes["Metadata_Expressed"].eq(False)]
    assert len(unexp) >= 20 and (unexp["Metadata_zFPKM"] < UNEXPRESSED_ZFPKM).all()
    assert unexp["Metadata_Arm"].str.fullmatch(r"(\d{1,2}|X)[pq]").all() and unexp["Metadata_Arm"].nunique() >= 2
    assert (genes.loc[genes["Metadata_Expressed"].eq(True), "Metadata_zFPKM"] >= UNEXPRESSED_ZFPKM).all()
    assert genes["Metadata_Arm"].notna().all()
    cpd = pert[pert["Metadata_PertType"].eq("trt") & pert["Metadata_Modality"].eq("compound")]
    assert len(cpd) >= 16 and cpd["Metadata_MoA"].nunique() >= 4
    assert cpd["Metadata_Target"].isin(genes["Metadata_Gene"]).any()  # siblings exist
    assert pert["Metadata_PertType"].eq("poscon").sum() >= 1 and pert["Metadata_PertType"].eq("negcon").sum() == 1
    assert (pert.loc[pert["Metadata_PertType"].eq("trt"), "phenotype_strength"] == 0).any()  # nulls
    # every complex gene is a real member of its CORUM complex
    rel = d.relationships
    assert set(rel["relation"]) >= {"same_complex", "sibling", "same_moa"}


def test_default_design_phenotype_structure(default_design, tables):
    d = default_design
    ph = d.phenotypes
    bio = ph[ph["Metadata_Component"].eq("biological")].set_index("Metadata_Perturbation")[list(AXES)]
    pert = d.perturbations.set_index("Metadata_Perturbation")
    complexes = tables[0]
    for g, cx in pert.loc[pert["Metadata_Complex"].notna() & pert["Metadata_Modality"].eq("crispr"),
                          "Metadata_Complex"].items():
        assert g in complexes[cx]

    def cos(a, b):
        x, y = bio.loc[a].to_numpy(), bio.loc[b].to_numpy()
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    rel = d.relationships
    same = [cos(a, b) for a, b in rel.loc[rel["relation"].eq("same_complex"), ["entity1", "entity2"]].to_numpy()]
    active = [g for g in pert.index[pert["Metadata_Modality"].eq("crispr")] if pert.loc[g, "phenotype_strength"] > 0]
    rng = np.random.default_rng(0)
    rand = [cos(*rng.choice(active, 2, replace=False)) for _ in range(500)]
    assert np.mean(same) > np.mean(rand) + 0.4
    sib = [cos(a, b) for a, b in rel.loc[rel["relation"].eq("sibling"), ["entity1", "entity2"]].to_numpy()]
    moa = [cos(a, b) for a, b in rel.loc[rel["relation"].eq("same_moa"), ["entity1", "entity2"]].to_numpy()]
    assert np.mean(sib) > np.mean(rand) + 0.4 and np.mean(moa) > np.mean(rand) + 0.3
    # unexpressed genes: no biology, only their arm's artefact, shared along the arm
    tot = ph[ph["Metadata_Component"].eq("total")].set_index("Metadata_Perturbation")[list(AXES)]
    arms = d.arm_artefacts.set_index("Metadata_Arm")[list(AXES)]
    unexp = pert.index[pert["Metadata_Expressed"].eq(False)]
    assert (bio.loc[unexp].abs().to_numpy() == 0).all()
    np.testing.assert_allclose(tot.loc[unexp].to_numpy(), arms.loc[pert.loc[unexp, "Metadata_Arm"]].to_numpy())


def test_default_layout(default_design):
    d = default_design
    w = d.wells
    validate_plate_map(w, "default design")
    p = d.params
    assert w["Metadata_Plate"].nunique() == 4 and w.groupby("Metadata_Plate").size().max() <= 96
    trt = w[w["Metadata_PertType"].eq("trt")]
    reps = trt.groupby("Metadata_Perturbation").size()
    assert len(reps) == p.n_treatments and reps.min() >= 4
    assert trt.groupby("Metadata_Perturbation")["Metadata_Plate"].nunique().min() >= 2  # across plates
    # layout "batch": each treatment in one batch, 2 wells on each of that batch's 2 plates
    assert p.layout == "batch" and reps.eq(p.replicates).all()
    assert trt.groupby("Metadata_Perturbation")["Metadata_Batch"].nunique().eq(1).all()
    per_plate = trt.groupby(["Metadata_Perturbation", "Metadata_Plate"]).size()
    assert per_plate.eq(2).all() and len(per_plate) == 2 * p.n_treatments
    assert trt.groupby("Metadata_Batch")["Metadata_Perturbation"].nunique().eq(p.n_treatments // 2).all()
    pos = w[w["Metadata_PertType"].eq("poscon")].groupby("Metadata_Perturbation").size()
    assert pos.min() >= 4
    assert w[w["Metadata_PertType"].eq("negcon")].groupby("Metadata_Plate").size().eq(12).all()
    maps = [g.set_index("Metadata_Well")["Metadata_Perturbation"] for _, g in w.groupby("Metadata_Plate")]
    for a in range(len(maps)):
        for b in range(a + 1, len(maps)):
            common = maps[a].index.intersection(maps[b].index)
            assert (maps[a][common] != maps[b][common]).mean() > 0.5  # positions shuffled per plate
    eff = d.well_effects
    assert {"density", *(f"gain_{c}" for c in CHANNELS), *(f"axis_{a}" for a in AXES)} <= set(eff.columns)
    assert d.plate_effects.groupby("Metadata_Plate").size().eq(len(CHANNELS)).all()


@pytest.mark.parametrize("layout", ["spread", "batch"])
def test_layouts_balance_replicates(tables, layout):
    """Both layouts: every treatment in ``replicates`` wells, as even as possible over its plates
    (all plates, or the plates of its one batch); plates of 384 wells with 3 plates per batch."""
    p = resolve_params({"preset": "large", "layout": layout, "n_batches": 2})
    w = make_design(p, *tables).wells
    trt = w[w["Metadata_PertType"].eq("trt")]
    assert trt.groupby("Metadata_Perturbation").size().eq(p.replicates).all()
    per_plate = trt.groupby(["Metadata_Perturbation", "Metadata_Plate"]).size().unstack(fill_value=0)
    n_batch = trt.groupby("Metadata_Perturbation")["Metadata_Batch"].nunique()
    if layout == "batch":
        assert n_batch.eq(1).all()
        spread = per_plate.apply(lambda r: r[r > 0].max() - r[r > 0].min(), axis=1)
        assert (per_plate > 0).sum(axis=1).eq(min(p.plates_per_batch, p.replicates)).all()
    else:
        assert n_batch.eq(p.n_batches).all()
        spread = per_plate.max(axis=1) - per_plate.min(axis=1)
    assert spread.max() <= 1
    assert w.groupby("Metadata_Plate").size().max() <= p.plate_format


def test_batch_layout_infeasible_names_the_fix():
    with pytest.raises(MorphobenchError, match="layout 'batch'.*treatments per batch"):
        resolve_params({"preset": "default", "n_batches": 4, "plates_per_batch": 1, "n_compounds": 60})
    with pytest.raises(MorphobenchError, match="layout must be one of"):
        resolve_params({"layout": "checkerboard"})


def test_large_preset_arm_correction_possible(tables):
    d = make_design(resolve_params({"preset": "large"}), *tables)
    pert = d.perturbations
    per_arm = pert[pert["Metadata_Expressed"].eq(False)].groupby("Metadata_Arm").size()
    assert per_arm.max() > 20


def test_design_is_seeded(tables):
    a = make_design(resolve_params({"preset": "tiny", "seed": 1}), *tables)
    b = make_design(resolve_params({"preset": "tiny", "seed": 1}), *tables)
    c = make_design(resolve_params({"preset": "tiny", "seed": 2}), *tables)
    pd.testing.assert_frame_equal(a.wells, b.wells)
    pd.testing.assert_frame_equal(a.phenotypes, b.phenotypes)
    assert not a.wells["Metadata_Perturbation"].equals(c.wells["Metadata_Perturbation"])


# ------------------------------------------------------------------------------ rendered tiny screen
def test_outputs_valid(tiny):
    sheet = pd.read_parquet(tiny / DS / "images.parquet")
    chans = validate_image_sheet(sheet, "tiny")
    assert chans == list(CHANNELS)
    wells = pd.read_parquet(tiny / DS / "wells.parquet")
    validate_plate_map(wells, "tiny")
    assert set(map(tuple, sheet[["Metadata_Plate", "Metadata_Well"]].to_numpy())) == \
        set(map(tuple, wells[["Metadata_Plate", "Metadata_Well"]].to_numpy()))
    number = {v: k for k, v in JUMP_CHANNEL_NUMBERS.items()}
    row = sheet.iloc[0]
    r, c = parse_well(row["Metadata_Well"])
    for ch in chans:
        assert row[filename_col(ch)] == f"r{r + 1:02d}c{c + 1:02d}f01p01-ch{number[ch]}sk1fk1fl1.tiff"
        assert not Path(row[pathname_col(ch)]).is_absolute()
        img = _read(tiny, row, ch)
        assert img.dtype == np.uint16 and img.shape == (128, 128)


def test_every_channel_nonconstant(tiny):
    sheet = pd.read_parquet(tiny / DS / "images.parquet")
    for _, row in sheet.iloc[::15].iterrows():
        for ch in CHANNELS:
            img = _read(tiny, row, ch).astype(float)
            assert img.std() > 20, (row["Metadata_Well"], ch)
    # channels are different images
    row = sheet.iloc[0]
    imgs = [_read(tiny, row, ch).astype(float).ravel() for ch in CHANNELS]
    assert np.corrcoef(imgs).min() < 0.9


def test_masks_agree_with_cell_table(tiny):
    sheet = pd.read_parquet(tiny / DS / "images.parquet")
    for plate in sheet["Metadata_Plate"].unique():
        paths = plate_paths(tiny / DS, plate)
        m = np.load(paths["masks_path"])
        cells = pd.read_parquet(paths["cells_path"])
        ps = sheet[sheet["Metadata_Plate"] == plate]
        assert list(m["well"]) == list(ps["Metadata_Well"]) and list(m["site"]) == list(ps["Metadata_Site"])
        assert m["nuclei"].dtype == np.uint16 and m["nuclei"].shape == (len(ps), 128, 128)
        counts = cells.groupby(["Metadata_Well", "Metadata_Site"]).size()
        for i, (well, site) in enumerate(zip(m["well"], m["site"], strict=True)):
            nuc, cel = m["nuclei"][i], m["cells"][i]
            n = int(counts.get((well, site), 0))
            assert nuc.max() == cel.max() == n and n > 0
            assert len(np.unique(nuc)) == len(np.unique(cel)) == n + 1  # labels 0..n, every cell has a nucleus
            assert (cel[nuc > 0] == nuc[nuc > 0]).all()  # nucleus inside its own cell
            c = cells[(cells["Metadata_Well"] == well) & (cells["Metadata_Site"] == site)]
            np.testing.assert_array_equal(np.bincount(nuc.ravel(), minlength=n + 1)[1:], c["Nuclei_AreaShape_Area"])
            np.testing.assert_array_equal(np.bincount(cel.ravel(), minlength=n + 1)[1:], c["Cells_AreaShape_Area"])
        assert cells.groupby(["Metadata_Well", "Metadata_Site"]).size().median() >= 5
    # touching cells are common: many cell labels border another cell
    cel = np.load(plate_paths(tiny / DS, "SIMB1P1")["masks_path"])["cells"]
    touching = ((cel[:, :, 1:] != cel[:, :, :-1]) & (cel[:, :, 1:] > 0) & (cel[:, :, :-1] > 0)).any(axis=(1, 2))
    assert touching.mean() > 0.5


def test_cells_cut_by_field_border(tiny):
    """Sites are crops of a larger monolayer: nuclei are cut by the field border, some with most of
    them outside (the visible part's centre within 3 px of the border), and they are in the masks
    and the cell table with their visible part."""
    paths = plate_paths(tiny / DS, "SIMB1P1")
    cells = pd.read_parquet(paths["cells_path"])
    xy = cells[["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]].to_numpy()
    near = ((xy < 3) | (xy > 128 - 1 - 3)).any(1)
    assert near.sum() >= 10
    full = np.pi * cells["Truth_NucleusRadius"] ** 2
    assert (cells.loc[near, "Nuclei_AreaShape_Area"] < 0.5 * full[near]).all()


def test_cell_coverage_uniform_to_the_border():
    """Cells placed over the field plus a margin: as much of the border as of the centre is covered
    (expected over sites), and ``n`` is the expected number of cells with a visible nucleus."""
    from morphobench.simulate import render

    size, margin, n, sites = 128, render.field_margin(), 10, 200
    cov, counts = np.zeros((size, size)), []
    for i in range(sites):
        rng = np.random.default_rng([21, i])
        p = render.cell_parameters(rng, np.zeros(len(AXES)), render.placed_count(n, size, margin))
        lab, nuc, *_ = render.draw_cells(rng, p, size, margin)
        crop = (slice(margin, margin + size), slice(margin, margin + size))
        cov += lab[crop] > 0
        counts.append(len(np.unique(nuc[crop])) - 1)
    cov /= sites
    band, c = 8, size // 4
    edge = np.concatenate([cov[:band].ravel(), cov[-band:].ravel(), cov[:, :band].ravel(), cov[:, -band:].ravel()])
    assert 0.93 <= edge.mean() / cov[c:-c, c:-c].mean() <= 1.07
    assert np.mean(counts) == pytest.approx(n, rel=0.1)


def test_illumination_truth_recoverable(tiny):
    sheet = pd.read_parquet(tiny / DS / "images.parquet")
    for plate, g in sheet.groupby("Metadata_Plate"):
        il = np.load(plate_paths(tiny / DS, plate)["illum_path"])
        assert list(il["channels"]) == list(CHANNELS)
        for c, ch in enumerate(il["channels"]):
            field = il["illumination"][c]
            assert field.max() == pytest.approx(1.0) and field.min() < 0.8  # strong enough to matter
            mean = np.mean([_read(tiny, r, ch).astype(np.float64) for _, r in g.iterrows()], axis=0)
            smooth = ndi.gaussian_filter(mean, mean.shape[0] / 8)
            r = np.corrcoef(smooth.ravel(), field.ravel())[0, 1]
            assert r >= 0.9, (plate, ch, r)


def test_strong_perturbation_differs_from_negcon(tiny):
    """Well-level mean nucleus area (masks) and nuclear DNA intensity above the background (images
    + masks, divided by the true illumination), normalised by the plate's negcon wells (gains)."""
    sheet = pd.read_parquet(tiny / DS / "images.parquet")
    wells = pd.read_parquet(tiny / DS / "wells.parquet")
    rows = []
    for plate in wells["Metadata_Plate"].unique():
        m = np.load(plate_paths(tiny / DS, plate)["masks_path"])
        illum = np.load(plate_paths(tiny / DS, plate)["illum_path"])["illumination"][CHANNELS.index("DNA")]
        ps = sheet[sheet["Metadata_Plate"] == plate].reset_index(drop=True)
        for i, row in ps.iterrows():
            nuc, cel = m["nuclei"][i], m["cells"][i]
            dna = _read(tiny, row, "DNA").astype(float) / illum
            rows.append((plate, row["Metadata_Well"], np.bincount(nuc.ravel())[1:].mean(),
                         dna[nuc > 0].mean() - np.median(dna[cel == 0])))
    f = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "area", "dna"])
    f = f.groupby(["Metadata_Plate", "Metadata_Well"], as_index=False).mean().merge(wells)
    neg_plate = f[f["Metadata_PertType"].eq("negcon")].groupby("Metadata_Plate")["dna"].median()
    f["dna"] = f["dna"] / f["Metadata_Plate"].map(neg_plate)
    neg = f[f["Metadata_PertType"].eq("negcon")]
    pos = f[f["Metadata_Perturbation"].eq("SIMPOS01")]  # nucleus size / DNA phenotype
    assert len(neg) >= 8 and len(pos) >= 4
    for feat in ("area", "dna"):
        z = (pos[feat].mean() - neg[feat].mean()) / neg[feat].std()
        assert z > 5, (feat, z)


def test_same_seed_identical_bytes(tiny, tables, tmp_path):
    _run_tiny(tmp_path / "sim_b", tables)
    a_root, b_root = tiny / DS, tmp_path / "sim_b" / DS
    a_files = sorted(p.relative_to(a_root) for p in a_root.rglob("*") if p.is_file())
    b_files = sorted(p.relative_to(b_root) for p in b_root.rglob("*") if p.is_file())
    assert a_files == b_files
    kinds = {p.suffix for p in a_files}
    assert {".tiff", ".parquet", ".npz", ".json"} <= kinds
    for rel in a_files:
        assert (a_root / rel).read_bytes() == (b_root / rel).read_bytes(), rel


def test_example_sites_figure(tiny):
    from morphobench.simulate.example import example_sites_figure

    out = tiny / "results" / "figures" / "example_sites_sim.png"
    with _cwd(tiny):
        example_sites_figure(DS, out)
    assert out.stat().st_size > 10_000


def test_cli_errors_cleanly(tmp_path, capsys):
    from morphobench.simulate.__main__ import main

    assert main(["design", "--params", '{"bogus": 1}', "--resources-dir", str(tmp_path),
                 "--dataset-dir", str(tmp_path / "ds")]) == 1
    assert main(["plate", "--dataset-dir", str(tmp_path / "nope"), "--plate", "SIMB1P1", "--images-dir", "x",
                 "--sheet", "x", "--masks", "x", "--illumination", "x", "--cells", "x"]) == 1


def test_genes_per_complex_and_unexpressed_per_arm_from_config(tables):
    p = resolve_params({"genes_per_complex": 3, "unexpressed_per_arm": 4, "n_unexpressed_genes": 8})
    pert = make_design(p, *tables).perturbations
    genes = pert[pert["Metadata_Modality"].eq("crispr")]
    assert genes.groupby("Metadata_Complex").size().eq(3).all() and genes["Metadata_Complex"].nunique() == 8
    unexp = genes[genes["Metadata_Expressed"].eq(False)]
    assert len(unexp) == 8 and unexp.groupby("Metadata_Arm").size().eq(4).all()
    with pytest.raises(MorphobenchError, match="genes_per_complex must be ≥ 2"):
        resolve_params({"genes_per_complex": 1})


# ------------------------------------------------------------------------------ MoA classes (TEAMs triplets)
def _moa_sets(pert: pd.DataFrame) -> dict[str, set[str]]:
    from morphobench.simulate.design import MOA_SEP

    trt = pert[pert["Metadata_PertType"].eq("trt") & pert["Metadata_MoA"].notna()]
    return {p: set(m.split(MOA_SEP)) for p, m in zip(trt["Metadata_Perturbation"], trt["Metadata_MoA"], strict=True)}


def test_default_design_moa_classes(default_design):
    """≥ 40 MoA-annotated treatments, ≥ 3 per class; genes carry their complex, compounds their
    inhibitor class and the complex it acts on; controls and non-complex genes carry none."""
    pert = default_design.perturbations
    sets = _moa_sets(pert)
    assert len(sets) >= 40
    members: dict[str, int] = {}
    for s in sets.values():
        for m in s:
            members[m] = members.get(m, 0) + 1
    assert min(members.values()) >= 3, members
    p = pert.set_index("Metadata_Perturbation")
    for pid, s in sets.items():
        if p.loc[pid, "Metadata_Modality"] == "crispr":
            assert s == {p.loc[pid, "Metadata_Complex"]}
        else:
            assert len(s) == 2 and p.loc[pid, "Metadata_Complex"] in s
            assert any(m.endswith("inhibitor") for m in s)
    no_moa = pert[~pert["Metadata_Perturbation"].isin(list(sets))]
    assert (no_moa["Metadata_Complex"].isna() | no_moa["Metadata_PertType"].ne("trt")).all()
    assert no_moa["Metadata_PertType"].isin(["negcon", "poscon"]).sum() == 3
    # the plate map carries the same labels
    wells = default_design.wells
    w = wells.drop_duplicates("Metadata_Perturbation").set_index("Metadata_Perturbation")["Metadata_MoA"]
    assert all(w[pid] == p.loc[pid, "Metadata_MoA"] for pid in sets)
    # same-MoA compound pairs are still grouped by their inhibitor class
    rel = default_design.relationships
    moa_groups = set(rel.loc[rel["relation"].eq("same_moa"), "group"])
    assert moa_groups and all(g.endswith("inhibitor") or "(class" in g for g in moa_groups)


def test_moa_classes_share_phenotype_directions(default_design):
    """Treatments sharing an MoA have more similar biological phenotypes than those sharing none
    (what the MoA triplets can detect)."""
    ph = default_design.phenotypes
    bio = ph[ph["Metadata_Component"].eq("biological")].set_index("Metadata_Perturbation")[list(AXES)]
    sets = _moa_sets(default_design.perturbations)
    names = sorted(sets)
    x = bio.loc[names].to_numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = x @ x.T
    same = np.array([[bool(sets[a] & sets[b]) for b in names] for a in names])
    off = ~np.eye(len(names), dtype=bool)
    assert cos[same & off].mean() > 0.5 > cos[~same].mean() + 0.3


def test_three_batches_preset(tables):
    p = resolve_params({"preset": "three_batches"})
    assert p.n_batches == 3 and p.layout == "spread" and p.replicates >= MIN_REPLICATES
    d = make_design(p, *tables)
    wells = d.wells
    assert wells["Metadata_Batch"].nunique() == 3
    trt = wells[wells["Metadata_PertType"].eq("trt")]
    # every treatment is in every batch
    assert (trt.groupby("Metadata_Perturbation")["Metadata_Batch"].nunique() == 3).all()
