"""Design of the simulated screen: perturbations, phenotypes, relationships, plate maps, effects.

Everything here is global to the screen and cheap (no pixels). :func:`make_design` takes the real
resource tables (CORUM complexes, gene → chromosome arm, U2OS zFPKM) as inputs, so it is testable
without files; :func:`write_design` writes the tables that the per-plate renderer and every later
stage read.

Morphology space
----------------
Phenotypes are vectors over :data:`AXES` (unit = a typical strong single-axis effect; a negcon cell's
cell-to-cell spread is ≈ 1–2 units on most axes). :mod:`morphobench.simulate.render` maps each axis to
the cell parameters it drives (nucleus radius, channel intensity, ER spread, mitochondrial puncta …).

Mechanism-of-action classes (``Metadata_MoA``; TEAMs' MoA triplets)
-------------------------------------------------------------------
A gene of a CORUM complex takes its complex as its mechanism (``Metadata_MoA`` = complex name),
as the genes of the overexpression screen BBBC037 carry gene-level MoAs; its phenotype is the
complex's direction plus a gene-specific part. A compound of MoA class m acts on complex
``m mod n_complexes``: it carries two classes, its inhibitor class and the complex it acts on
(``"<complex> inhibitor|<complex>"``, ``|``-separated as in the Drug Repurposing Hub), since its
phenotype is built from that complex's (or its target gene's) direction plus its class direction.
Singleton and unexpressed genes, controls and positive controls have no MoA. The default screen
has 40 genes in 8 complex classes (5 each; 4 of them also hold 4 compounds) and 16 compounds in
4 inhibitor classes: 56 MoA-annotated treatments, every class with ≥ 4 members.

The applied effect of a well is ``biological phenotype + arm artefact (CRISPR genes only) +
batch shift + replicate noise``; illumination, gains, offsets and well-position gains act on pixels.

Files written by :func:`write_design` (``<dataset_dir>`` = ``results/{dataset}``)
-------------------------------------------------------------------------------------
``wells.parquet``                    the plate map (DESIGN.md data model) + ``Metadata_Batch``
``truth/design.json``                resolved :class:`SimParams`, axes, channels, plates
``truth/perturbations.parquet``      one row per perturbation (type, gene, complex, compound, MoA,
                                     target, expressed, chromosome arm, phenotype strength …)
``truth/phenotypes.parquet``         per perturbation × ``Metadata_Component`` (``biological``,
                                     ``arm_artefact``, ``total``): one column per axis
``truth/relationships.parquet``      pairs ``entity1, entity2, relation, group`` with relation in
                                     ``same_complex`` (gene–gene), ``sibling`` (compound → target
                                     gene), ``same_moa`` (compound–compound), ``same_target``
``truth/arm_artefacts.parquet``      chromosome arm × axes (the artefact every gene on it carries)
``truth/batch_effects.parquet``      batch × axes (biological batch shift)
``truth/plate_effects.parquet``      plate × channel: gain, offset (counts), background
``truth/well_effects.parquet``       plate × well: density factor, per-channel position gain, and
                                     the applied morphology vector (``axis_<name>`` columns)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from morphobench.data.tables import validate_plate_map, well_name
from morphobench.io import MorphobenchError, atomic_path, write_parquet
from morphobench.simulate.params import N_POSCON, SimParams

#: Morphology axes of the phenotype space (ground-truth feature names).
AXES: tuple[str, ...] = (
    "nucleus_size", "cell_size", "nucleus_elongation", "cell_elongation", "cell_irregularity",
    "cell_count",
    "DNA_intensity", "ER_intensity", "RNA_intensity", "AGP_intensity", "Mito_intensity",
    "DNA_texture", "ER_spread", "nucleoli_size", "AGP_edge", "Mito_puncta", "Mito_spread",
)
AXIS_INDEX = {a: i for i, a in enumerate(AXES)}

#: zFPKM below which a gene is "not expressed" (proxbias convention).
UNEXPRESSED_ZFPKM = -3.0
NEGCON = "DMSO"
#: Separator of several MoA classes in one ``Metadata_MoA`` value (as in the Drug Repurposing Hub's
#: annotations of BBBC036, e.g. "EGFR inhibitor|tyrosine kinase inhibitor").
MOA_SEP = "|"
CELL_TYPE = "U2OS"
SOURCE = "simulated"

#: Arm artefact magnitudes (axis units): arms carrying the unexpressed genes / all other arms.
ARM_STRENGTH_MAJOR = 0.8
ARM_STRENGTH_MINOR = 0.25
#: Replicate (well-to-well) noise per axis, and the biological batch shift per axis (sd).
WELL_NOISE_SD = 0.08
BATCH_SHIFT_SD = 0.1

_SYMBOL = re.compile(r"^[A-Z][A-Z0-9]{1,9}$")
_ARM = re.compile(r"^(\d{1,2}|X|Y)[pq]$")


@dataclass
class Design:
    params: SimParams
    perturbations: pd.DataFrame
    phenotypes: pd.DataFrame
    relationships: pd.DataFrame
    arm_artefacts: pd.DataFrame
    batch_effects: pd.DataFrame
    plate_effects: pd.DataFrame
    well_effects: pd.DataFrame
    wells: pd.DataFrame


# ------------------------------------------------------------------------------ resources
def load_resource_tables(resources_dir: str | Path) -> tuple[dict[str, list[str]], pd.DataFrame, pd.DataFrame]:
    """(CORUM complexes, gene arms, zFPKM) through :mod:`morphobench.resources`' loaders."""
    from morphobench import resources

    complexes = resources.load_corum_complexes(resources_dir)
    arms = resources.load_gene_arms(resources_dir)
    zfpkm = resources.load_zfpkm(resources_dir)
    return complexes, arms, zfpkm


def _gene_tables(gene_arms: pd.DataFrame,
                 zfpkm: pd.DataFrame) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
    for col in ("gene", "arm"):
        if col not in gene_arms.columns:
            raise MorphobenchError(f"simulate: gene arm table lacks column {col!r} (has {list(gene_arms.columns)})")
    for col in ("gene", "zfpkm"):
        if col not in zfpkm.columns:
            raise MorphobenchError(f"simulate: zFPKM table lacks column {col!r} (has {list(zfpkm.columns)})")
    ga = gene_arms.dropna(subset=["gene", "arm"]).drop_duplicates("gene")
    ga = ga[ga["arm"].astype(str).str.fullmatch(_ARM.pattern)]
    ga = ga[~ga["arm"].astype(str).str.startswith("Y")]  # U2OS is female: no chrY genes
    arm = dict(zip(ga["gene"].astype(str), ga["arm"].astype(str), strict=True))
    if "chromosome" in ga.columns:
        chrom = dict(zip(ga["gene"].astype(str), ga["chromosome"].astype(str), strict=True))
    else:
        chrom = {g: "chr" + a[:-1] for g, a in arm.items()}
    z = zfpkm.dropna(subset=["gene", "zfpkm"]).groupby("gene")["zfpkm"].median()
    return arm, chrom, {str(k): float(v) for k, v in z.items()}


# ------------------------------------------------------------------------------ helpers
def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _rand_dir(rng: np.random.Generator) -> np.ndarray:
    """A random, somewhat sparse direction (real phenotypes move a subset of features)."""
    v = rng.standard_normal(len(AXES)) * np.where(rng.random(len(AXES)) < 0.45, 1.0, 0.25)
    return _unit(v)


def _axis_vec(weights: dict[str, float]) -> np.ndarray:
    v = np.zeros(len(AXES))
    for k, w in weights.items():
        v[AXIS_INDEX[k]] = w
    return _unit(v)


# ------------------------------------------------------------------------------ design
def make_design(params: SimParams, complexes: dict[str, list[str]], gene_arms: pd.DataFrame,
                zfpkm: pd.DataFrame) -> Design:
    """Draw the screen's perturbations, phenotypes, layout and technical effects.

    Parameters
    ----------
    params
        Resolved parameters (:func:`~morphobench.simulate.params.resolve_params`).
    complexes
        CORUM complex name → member gene symbols.
    gene_arms
        Columns ``gene, arm`` (``chromosome`` optional), e.g. ``17p``.
    zfpkm
        Columns ``gene, zfpkm`` (U2OS expression; unexpressed = zFPKM < −3).
    """
    p = params
    ss = np.random.SeedSequence([p.seed, 7301])
    r_genes, r_pheno, r_layout, r_tech = (np.random.default_rng(s) for s in ss.spawn(4))
    arm_of, chrom_of, z_of = _gene_tables(gene_arms, zfpkm)
    ps = p.phenotype_strength

    # ---- complexes: disjoint CORUM complexes with enough expressed, mapped members
    def expressed(g: str) -> bool:
        return g in arm_of and z_of.get(g, -np.inf) >= UNEXPRESSED_ZFPKM and bool(_SYMBOL.match(g))

    all_corum = set()
    for members in complexes.values():
        all_corum.update(members)
    names = sorted(n for n, m in complexes.items()
                   if len(set(m)) <= 40 and sum(expressed(g) for g in set(m)) >= p.genes_per_complex)
    chosen: list[tuple[str, list[str], list[str]]] = []  # name, screened genes, other members
    used: set[str] = set()
    for idx in r_genes.permutation(len(names)):
        name = names[idx]
        members = sorted(set(complexes[name]))
        if used & set(members):
            continue
        cand = [g for g in members if expressed(g)]
        genes = sorted(r_genes.choice(cand, size=p.genes_per_complex, replace=False).tolist())
        chosen.append((name, genes, [g for g in members if g not in genes]))
        used.update(members)
        if len(chosen) == p.n_complexes:
            break
    if len(chosen) < p.n_complexes:
        raise MorphobenchError(
            f"simulate: only {len(chosen)} disjoint CORUM complexes with ≥ {p.genes_per_complex} "
            f"expressed genes (asked n_complexes={p.n_complexes})")

    # ---- singletons: expressed, mapped, in no CORUM complex
    pool = sorted(g for g in arm_of if expressed(g) and g not in all_corum)
    if len(pool) < p.n_singleton_genes:
        raise MorphobenchError(f"simulate: only {len(pool)} candidate singleton genes")
    singletons = sorted(r_genes.choice(pool, size=p.n_singleton_genes, replace=False).tolist())

    # ---- unexpressed genes, concentrated on a few real chromosome arms
    unexp_pool = pd.DataFrame({"gene": sorted(g for g in arm_of if g in z_of and z_of[g] < UNEXPRESSED_ZFPKM
                                              and g not in all_corum and _SYMBOL.match(g))})
    unexp_pool["arm"] = unexp_pool["gene"].map(arm_of)
    unexpressed: list[str] = []
    if p.n_unexpressed_genes:
        n_arms = math.ceil(p.n_unexpressed_genes / p.unexpressed_per_arm)
        counts = unexp_pool.groupby("arm").size()
        ok_arms = sorted(counts.index[counts >= p.unexpressed_per_arm])
        if len(ok_arms) < n_arms:
            raise MorphobenchError(f"simulate: only {len(ok_arms)} arms with ≥ {p.unexpressed_per_arm} "
                                   "unexpressed genes")
        arms = [ok_arms[i] for i in r_genes.choice(len(ok_arms), size=n_arms, replace=False)]
        left = p.n_unexpressed_genes
        for arm in arms:
            k = min(left, p.unexpressed_per_arm)
            cand = unexp_pool.loc[unexp_pool["arm"] == arm, "gene"].tolist()
            unexpressed += sorted(r_genes.choice(cand, size=k, replace=False).tolist())
            left -= k
    major_arms = sorted({arm_of[g] for g in unexpressed})

    # ---- phenotype directions
    K = len(AXES)
    rows: list[dict] = []
    bio: dict[str, np.ndarray] = {}
    complex_dir = {name: _rand_dir(r_pheno) for name, _, _ in chosen}
    gene_dir: dict[str, np.ndarray] = {}
    for name, genes, _ in chosen:
        s_c = r_pheno.uniform(0.6, 1.4)
        for g in genes:
            gene_dir[g] = _unit(complex_dir[name] + 0.4 * _rand_dir(r_pheno))
            bio[g] = ps * s_c * r_pheno.uniform(0.75, 1.25) * gene_dir[g]
            rows.append(dict(Metadata_Perturbation=g, Metadata_PertType="trt", Metadata_Modality="crispr",
                             Metadata_Gene=g, Metadata_Complex=name, Metadata_Target=g, Metadata_MoA=name))
    for i, g in enumerate(singletons):
        active = i % 2 == 0  # half of the singletons have no phenotype
        bio[g] = ps * r_pheno.uniform(0.6, 1.4) * _rand_dir(r_pheno) if active else np.zeros(K)
        rows.append(dict(Metadata_Perturbation=g, Metadata_PertType="trt", Metadata_Modality="crispr",
                         Metadata_Gene=g, Metadata_Target=g))
    for g in unexpressed:
        bio[g] = np.zeros(K)
        rows.append(dict(Metadata_Perturbation=g, Metadata_PertType="trt", Metadata_Modality="crispr",
                         Metadata_Gene=g, Metadata_Target=g))
    # compounds: MoA m acts on complex m (mod n); compounds alternate screened / unscreened targets
    moa_names, moa_dir = [], []
    for m in range(p.n_moas if p.n_compounds else 0):
        name, _, _ = chosen[m % len(chosen)]
        label = f"{name} inhibitor" + (f" (class {m // len(chosen) + 1})" if m >= len(chosen) else "")
        moa_names.append(label)
        moa_dir.append(_unit(complex_dir[name] + 1.0 * _rand_dir(r_pheno)))
    for k in range(p.n_compounds):
        m, j = k % p.n_moas, k // p.n_moas
        cname, genes, others = chosen[m % len(chosen)]
        if j % 2 == 1 and others:
            target = others[int(r_pheno.integers(len(others)))]
            gpart = complex_dir[cname]
        else:
            target = genes[(j // 2) % len(genes)]
            gpart = gene_dir[target]
        cid = f"SIMCPD{k + 1:03d}"
        d = _unit(gpart + moa_dir[m] + 0.3 * _rand_dir(r_pheno))
        bio[cid] = ps * r_pheno.uniform(0.9, 1.6) * d
        rows.append(dict(Metadata_Perturbation=cid, Metadata_PertType="trt", Metadata_Modality="compound",
                         Metadata_Compound=cid, Metadata_MoA=f"{moa_names[m]}{MOA_SEP}{cname}",
                         Metadata_Target=target, Metadata_Complex=cname))
    poscon_dirs = [
        _axis_vec({"nucleus_size": 0.8, "DNA_intensity": 0.45, "DNA_texture": 0.45, "cell_size": 0.3,
                   "cell_count": -0.3}),
        _axis_vec({"Mito_puncta": 0.6, "Mito_intensity": 0.4, "Mito_spread": -0.4, "cell_size": -0.4,
                   "AGP_edge": 0.5, "ER_spread": -0.3}),
    ]
    for i in range(N_POSCON):
        cid = f"SIMPOS{i + 1:02d}"
        bio[cid] = 3.0 * ps * poscon_dirs[i % len(poscon_dirs)]
        rows.append(dict(Metadata_Perturbation=cid, Metadata_PertType="poscon", Metadata_Modality="compound",
                         Metadata_Compound=cid))
    bio[NEGCON] = np.zeros(K)
    rows.append(dict(Metadata_Perturbation=NEGCON, Metadata_PertType="negcon", Metadata_Modality="control",
                     Metadata_Compound=NEGCON))

    pert = pd.DataFrame(rows)
    for col in ("Metadata_Gene", "Metadata_Complex", "Metadata_Compound", "Metadata_MoA", "Metadata_Target"):
        if col not in pert.columns:
            pert[col] = None
        pert[col] = pert[col].astype("string")
    is_gene = pert["Metadata_Modality"].eq("crispr")
    pert["Metadata_Chromosome"] = pert["Metadata_Gene"].map(chrom_of).where(is_gene).astype("string")
    pert["Metadata_Arm"] = pert["Metadata_Gene"].map(arm_of).where(is_gene).astype("string")
    pert["Metadata_zFPKM"] = pert["Metadata_Gene"].map(z_of).where(is_gene).astype("float64")
    pert["Metadata_Expressed"] = pert["Metadata_zFPKM"].ge(UNEXPRESSED_ZFPKM).where(is_gene).astype("boolean")
    pert["Metadata_CellType"] = CELL_TYPE

    # ---- chromosome-arm artefact (CRISPR genes only)
    arm_list = sorted(set(pert.loc[is_gene, "Metadata_Arm"].dropna()))
    arm_vec = {}
    for arm in arm_list:
        strength = ARM_STRENGTH_MAJOR if arm in major_arms else ARM_STRENGTH_MINOR
        d = _unit(-0.8 * np.eye(K)[AXIS_INDEX["cell_count"]] + _rand_dir(r_pheno))
        arm_vec[arm] = strength * r_pheno.uniform(0.8, 1.2) * d
    artefact = {pid: (arm_vec[a] if isinstance(a, str) and a in arm_vec else np.zeros(K))
                for pid, a in zip(pert["Metadata_Perturbation"], pert["Metadata_Arm"].astype(object), strict=True)}
    pert["phenotype_strength"] = [float(np.linalg.norm(bio[x])) for x in pert["Metadata_Perturbation"]]
    pert["arm_artefact_strength"] = [float(np.linalg.norm(artefact[x])) for x in pert["Metadata_Perturbation"]]
    pert["Metadata_Null"] = pert["phenotype_strength"].eq(0.0)

    comp_rows = []
    for comp, src in (("biological", bio), ("arm_artefact", artefact)):
        for pid in pert["Metadata_Perturbation"]:
            comp_rows.append([pid, comp, *src[pid]])
    for pid in pert["Metadata_Perturbation"]:
        comp_rows.append([pid, "total", *(bio[pid] + artefact[pid])])
    phenotypes = pd.DataFrame(comp_rows, columns=["Metadata_Perturbation", "Metadata_Component", *AXES])
    total = {pid: bio[pid] + artefact[pid] for pid in pert["Metadata_Perturbation"]}

    relationships = _relationships(pert)
    arm_df = pd.DataFrame([[a, a in major_arms, *v] for a, v in arm_vec.items()],
                          columns=["Metadata_Arm", "major", *AXES])

    # ---- layout
    wells = _layout(p, pert, r_layout)
    pert = pert.merge(wells.groupby("Metadata_Perturbation").size().rename("n_wells").reset_index(),
                      on="Metadata_Perturbation", how="left")

    # ---- technical effects
    batches = sorted({b for b, _ in p.plates})
    batch_df = pd.DataFrame([[b, *(BATCH_SHIFT_SD * r_tech.standard_normal(K))] for b in batches],
                            columns=["Metadata_Batch", *AXES])
    batch_shift = {r[0]: np.asarray(r[1:], dtype=float) for r in batch_df.itertuples(index=False)}
    chans = p.channels
    batch_gain = {(b, c): float(np.exp(0.2 * r_tech.standard_normal())) for b in batches for c in chans}
    prow = []
    for b, plate in p.plates:
        for c in chans:
            prow.append(dict(Metadata_Batch=b, Metadata_Plate=plate, Channel=c,
                             gain=batch_gain[b, c] * float(np.exp(0.07 * r_tech.standard_normal())),
                             offset=float(100 + r_tech.integers(0, 40)),
                             background=float(r_tech.uniform(0.06, 0.12))))
    plate_effects = pd.DataFrame(prow)
    nr, nc = p.plate_shape
    wrows = []
    for b, plate in p.plates:
        grad = r_tech.normal(0, 0.04, size=2)
        pw = wells[wells["Metadata_Plate"] == plate]
        for w, pid, r, c in zip(pw["Metadata_Well"], pw["Metadata_Perturbation"], pw["_row"], pw["_col"], strict=True):
            edge = r in (0, nr - 1) or c in (0, nc - 1)
            pos = 1.0 + 0.06 * edge + grad[0] * (r / (nr - 1) - 0.5) + grad[1] * (c / (nc - 1) - 0.5)
            rec = dict(Metadata_Batch=b, Metadata_Plate=plate, Metadata_Well=w, Metadata_Perturbation=pid,
                       density=float(np.exp(-0.15 * edge + 0.05 * r_tech.standard_normal())))
            for ch in chans:
                rec[f"gain_{ch}"] = float(pos * (1 + 0.02 * r_tech.standard_normal()))
            applied = total[pid] + batch_shift[b] + WELL_NOISE_SD * r_tech.standard_normal(K)
            for a, v in zip(AXES, applied, strict=True):
                rec[f"axis_{a}"] = float(v)
            wrows.append(rec)
    well_effects = pd.DataFrame(wrows)
    wells = wells.drop(columns=["_row", "_col"])
    return Design(p, pert, phenotypes, relationships, arm_df, batch_df, plate_effects, well_effects, wells)


def _relationships(pert: pd.DataFrame) -> pd.DataFrame:
    rows = []
    genes = pert[pert["Metadata_Modality"].eq("crispr") & pert["Metadata_Complex"].notna()]
    for cname, grp in genes.groupby("Metadata_Complex", sort=True):
        g = sorted(grp["Metadata_Perturbation"])
        rows += [(a, b, "same_complex", cname) for i, a in enumerate(g) for b in g[i + 1:]]
    cpd = pert[pert["Metadata_PertType"].eq("trt") & pert["Metadata_Modality"].eq("compound")]
    screened = set(pert.loc[pert["Metadata_Modality"].eq("crispr"), "Metadata_Gene"])
    for cid, tgt in zip(cpd["Metadata_Perturbation"], cpd["Metadata_Target"], strict=True):
        if tgt in screened:
            rows.append((cid, tgt, "sibling", tgt))
    cpd = cpd.assign(Metadata_MoA=cpd["Metadata_MoA"].str.split(MOA_SEP, regex=False).str[0])
    for col, rel in (("Metadata_MoA", "same_moa"), ("Metadata_Target", "same_target")):
        for key, grp in cpd.groupby(col, sort=True):
            c = sorted(grp["Metadata_Perturbation"])
            rows += [(a, b, rel, key) for i, a in enumerate(c) for b in c[i + 1:]]
    return pd.DataFrame(rows, columns=["entity1", "entity2", "relation", "group"])


def _layout(p: SimParams, pert: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Plate maps: each treatment in ``p.replicates`` wells spread evenly over its plates (all plates
    with ``layout="spread"``; the plates of one batch, batches filled in turn, with
    ``layout="batch"``), positions shuffled independently per plate; negcon and poscon wells on
    every plate."""
    plates = [pl for _, pl in p.plates]
    batch_of = {pl: b for b, pl in p.plates}
    trt = pert.loc[pert["Metadata_PertType"].eq("trt"), "Metadata_Perturbation"].tolist()
    poscons = pert.loc[pert["Metadata_PertType"].eq("poscon"), "Metadata_Perturbation"].tolist()
    R = p.replicates
    if p.layout == "batch":
        groups = [[k for k, (b, _) in enumerate(p.plates) if b == batch]
                  for batch in dict.fromkeys(b for b, _ in p.plates)]
    else:
        groups = [list(range(len(plates)))]
    load = np.zeros(len(plates), dtype=int)
    content: list[list[str]] = [[] for _ in plates]
    for i, t in enumerate(trt[j] for j in rng.permutation(len(trt))):
        ks = np.asarray(groups[i % len(groups)])
        base, extra = divmod(R, len(ks))
        for k in ks:
            content[k] += [t] * base
        load[ks] += base
        if extra:
            order = ks[np.lexsort((rng.random(len(ks)), load[ks]))[:extra]]
            for k in order:
                content[k].append(t)
                load[k] += 1
    nr, nc = p.plate_shape
    rows = []
    for k, plate in enumerate(plates):
        items = content[k] + [NEGCON] * p.negcon_wells_per_plate
        for pc in poscons:
            items += [pc] * p.poscon_wells_per_plate
        if len(items) > p.plate_format:  # guarded by check_params; keep a clear message anyway
            raise MorphobenchError(f"simulate: plate {plate} needs {len(items)} wells > {p.plate_format}")
        positions = rng.permutation(p.plate_format)[:len(items)]
        for item, pos in zip(items, positions, strict=True):
            r, c = divmod(int(pos), nc)
            rows.append((batch_of[plate], plate, well_name(r, c), item, r, c))
    wells = pd.DataFrame(rows, columns=["Metadata_Batch", "Metadata_Plate", "Metadata_Well",
                                        "Metadata_Perturbation", "_row", "_col"])
    wells = wells.sort_values(["Metadata_Plate", "_row", "_col"], kind="stable").reset_index(drop=True)
    meta = pert.set_index("Metadata_Perturbation")
    for col in ("Metadata_PertType", "Metadata_Gene", "Metadata_Target", "Metadata_MoA",
                "Metadata_Compound", "Metadata_CellType"):
        wells[col] = wells["Metadata_Perturbation"].map(meta[col])
    wells = wells[["Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_Perturbation",
                   "Metadata_PertType", "Metadata_Gene", "Metadata_Target", "Metadata_MoA",
                   "Metadata_Compound", "Metadata_CellType", "_row", "_col"]]
    validate_plate_map(wells, "simulated design")
    return wells


# ------------------------------------------------------------------------------ I/O
def write_design(design: Design, dataset_dir: str | Path) -> None:
    """Write the plate map and the ground-truth design tables under ``dataset_dir``."""
    d = Path(dataset_dir)
    t = d / "truth"
    t.mkdir(parents=True, exist_ok=True)
    info = {"params": design.params.to_dict(), "axes": list(AXES), "channels": list(design.params.channels),
            "plates": [list(x) for x in design.params.plates], "replicates": design.params.replicates,
            "source": SOURCE}
    with atomic_path(t / "design.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    write_parquet(design.perturbations, t / "perturbations.parquet")
    write_parquet(design.phenotypes, t / "phenotypes.parquet")
    write_parquet(design.relationships, t / "relationships.parquet")
    write_parquet(design.arm_artefacts, t / "arm_artefacts.parquet")
    write_parquet(design.batch_effects, t / "batch_effects.parquet")
    write_parquet(design.plate_effects, t / "plate_effects.parquet")
    write_parquet(design.well_effects, t / "well_effects.parquet")
    write_parquet(design.wells, d / "wells.parquet")


def read_design_info(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / "truth" / "design.json"
    if not path.exists():
        raise MorphobenchError(f"simulate: design not found: {path} (run the simulate_design rule first)")
    return json.loads(path.read_text())
