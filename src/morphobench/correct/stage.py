"""Correction stage: well profiles → corrected well profiles + perturbation (gene/compound) profiles.

``{correction}`` is one of :data:`~morphobench.correct.methods.CORRECTIONS` (``none``, ``pca``,
``center_plate`` … ``tvn``), optionally followed by ``+arm`` (chromosome-arm centering of the
CRISPR gene profiles, REFERENCE §3), e.g. ``tvn+arm``.

Order (MAE-W §4; MAE-CVPR §5.1): the correction (e.g. TVN) on the wells → every well centred on
the mean of all negative-control wells (origin at the negcon mean) → with ``+arm`` and
``arm_level="well"`` (the paper's order, default), chromosome-arm centering of the CRISPR gene
wells → perturbation profiles as the ``spherical_mean`` (default; or ``mean``/``median``) of
their wells, one per perturbation and condition (the ``condition`` columns present, e.g. cell
type and time point) → with ``arm_level="perturbation"``, the arm correction on the gene-level
profiles instead. What is written is exactly what the metrics take cosines of (REFERENCE §3).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import pandas as pd

from morphobench.correct.methods import CORRECTIONS, apply_correction
from morphobench.data.aggregate import aggregate, center_on_controls
from morphobench.data.tables import DEFAULT_CONTROL_QUERY, gene_rows
from morphobench.io import MorphobenchError, read_table, write_parquet

log = logging.getLogger("morphobench.correct")

ARM_SUFFIX = "+arm"
ARM_LEVELS: tuple[str, ...] = ("well", "perturbation")
#: columns that define an experimental condition (CPJUMP1: cell type × modality × time point)
DEFAULT_CONDITION: tuple[str, ...] = ("Metadata_CellType", "Metadata_Modality", "Metadata_Timepoint")
#: modalities (``Metadata_Modality``) that are not CRISPR knockouts: never arm-corrected
NON_CRISPR_MODALITIES = frozenset({"orf", "compound"})


def parse_correction(name: str) -> tuple[str, bool]:
    """``"tvn+arm"`` → ``("tvn", True)``; unknown names raise naming the choices."""
    base, arm = (name[: -len(ARM_SUFFIX)], True) if name.endswith(ARM_SUFFIX) else (name, False)
    if base not in CORRECTIONS or base == "arm":
        choices = [c for c in CORRECTIONS if c != "arm"]
        raise MorphobenchError(f"unknown correction {name!r}: use one of {choices}, optionally with '+arm'")
    return base, arm


def crispr_rows(df: pd.DataFrame) -> pd.Series:
    """CRISPR gene rows (treatments with a gene and no compound), excluding rows whose
    ``Metadata_Modality`` says ORF or compound: the arm artefact is a CRISPR–Cas9 one."""
    rows = gene_rows(df)
    if "Metadata_Modality" in df.columns:
        rows &= ~df["Metadata_Modality"].astype(str).str.lower().isin(NON_CRISPR_MODALITIES)
    return rows


def condition_columns(df: pd.DataFrame, condition: Sequence[str] | None) -> list[str]:
    """The configured condition columns present in ``df`` (absent ones are ignored)."""
    return [c for c in (condition or ()) if c in df.columns]


def _arm_correct(df: pd.DataFrame, arm_table, unexpressed, min_arm_genes: int, source: str,
                 correction: str) -> pd.DataFrame:
    """Arm-centre the CRISPR gene rows of ``df`` (wells or perturbations); other rows unchanged."""
    if arm_table is None or unexpressed is None:
        raise MorphobenchError(f"correction {correction!r} needs a gene → arm table and the unexpressed genes")
    genes = crispr_rows(df).to_numpy()
    if not genes.any():
        raise MorphobenchError(f"{source}: correction {correction!r} needs CRISPR gene profiles; none found")
    fixed = apply_correction(df.loc[genes].reset_index(drop=True), "arm", arm_table=arm_table,
                             unexpressed_genes=list(unexpressed), min_arm_genes=min_arm_genes, source=source)
    out = df.copy()
    feats = [c for c in fixed.columns if not c.startswith("Metadata_")]
    out.loc[genes, feats] = fixed[feats].to_numpy().astype(out[feats].dtypes.iloc[0], copy=False)
    out.attrs["arm_centering"] = fixed.attrs.get("arm_centering", {})
    return out


def correct_profiles(wells: pd.DataFrame, correction: str, *, aggregation: str = "spherical_mean",
                     arm_level: str = "well", control_query: str = DEFAULT_CONTROL_QUERY,
                     batch_col: str = "Metadata_Batch", plate_col: str = "Metadata_Plate",
                     pca_components: int | float | None = None, tvn_reg: float = 0.5, seed: int = 0,
                     arm_table: pd.DataFrame | None = None, unexpressed: Sequence[str] | None = None,
                     min_arm_genes: int = 20, condition: Sequence[str] | None = DEFAULT_CONDITION,
                     source: str = "well profiles") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (corrected, negcon-centred — and with ``+arm`` at well level, arm-centred — well
    profiles; perturbation profiles, one per perturbation × condition)."""
    base, arm = parse_correction(correction)
    if arm_level not in ARM_LEVELS:
        raise MorphobenchError(f"correct.arm_level must be one of {list(ARM_LEVELS)}, got {arm_level!r}")
    corrected = apply_correction(wells, base, control_query=control_query, batch_col=batch_col,
                                 plate_col=plate_col, pca_components=pca_components, tvn_reg=tvn_reg,
                                 seed=seed, source=source)
    centred = center_on_controls(corrected, control_query=control_query, source=source)
    if arm and arm_level == "well":
        centred = _arm_correct(centred, arm_table, unexpressed, min_arm_genes, f"{source} (CRISPR wells)",
                               correction)
    keys = ["Metadata_Perturbation"] + condition_columns(centred, condition)
    pert = aggregate(centred, keys, aggregation, source=source)
    if arm and arm_level == "perturbation":
        pert = _arm_correct(pert, arm_table, unexpressed, min_arm_genes, f"{source} (gene level)", correction)
    return centred, pert


def arm_inputs(perturbations_truth: str | os.PathLike | None, gene_arms: str | os.PathLike | None,
               zfpkm: str | os.PathLike | None) -> tuple[pd.DataFrame, list[str]]:
    """Gene → arm table and unexpressed genes: from a simulated screen's truth table
    (columns ``Metadata_Gene, Metadata_Arm, Metadata_Expressed``) or from the resources
    (``gene_arms.tsv``) and the expression table (``gene, zfpkm``) of the screen's cell line
    (``correct.expression.<dataset>``: the shipped U2OS table for U2OS screens; RxRx3 is HUVEC)."""
    if perturbations_truth:
        truth = read_table(perturbations_truth, what="simulated perturbation truth")
        cols = {"Metadata_Gene": "gene", "Metadata_Arm": "arm", "Metadata_Expressed": "expressed"}
        for c in cols:
            if c not in truth.columns:
                raise MorphobenchError(f"{perturbations_truth}: column {c!r} missing")
        g = truth[list(cols)].rename(columns=cols).dropna(subset=["gene", "arm"]).drop_duplicates("gene")
        return g[["gene", "arm"]], sorted(g.loc[~g["expressed"].astype(bool), "gene"])
    if not (gene_arms and zfpkm):
        raise MorphobenchError("arm correction needs the gene → arm table (resources genes/gene_arms.tsv) and "
                               "the expression table of the screen's cell line (correct.expression.<dataset>)")
    from morphobench.correct.arm import unexpressed_genes

    arms = read_table(gene_arms, what="gene arms")
    for c in ("gene", "arm"):
        if c not in arms.columns:
            raise MorphobenchError(f"{gene_arms}: column {c!r} missing (have {list(arms.columns)})")
    expr = read_table(zfpkm, what="expression (zFPKM) table")
    return arms[["gene", "arm"]], sorted(unexpressed_genes(expr, source=str(zfpkm)))


def run(well_path: str | os.PathLike, correction: str, out_well: str | os.PathLike,
        out_pert: str | os.PathLike, *, params: dict | None = None,
        perturbations_truth: str | os.PathLike | None = None, gene_arms: str | os.PathLike | None = None,
        zfpkm: str | os.PathLike | None = None) -> None:
    """Snakemake entry point: read, correct, write both tables atomically."""
    params = dict(params or {})
    wells = read_table(well_path, what="well profiles")
    arm_table = unexpressed = None
    if parse_correction(correction)[1]:
        arm_table, unexpressed = arm_inputs(perturbations_truth, gene_arms, zfpkm)
    centred, pert = correct_profiles(wells, correction, arm_table=arm_table, unexpressed=unexpressed,
                                     source=str(well_path), **params)
    write_parquet(centred, out_well)
    write_parquet(pert, out_pert)
    log.info("%s: %d wells, %d perturbations, %d features", correction, len(centred), len(pert),
             pert.shape[1] - sum(c.startswith("Metadata_") for c in pert.columns))
