"""Correction stage: well profiles → corrected well profiles + perturbation (gene/compound) profiles.

``{correction}`` is one of :data:`~morphobench.correct.methods.CORRECTIONS` (``none``, ``pca``,
``center_plate`` … ``tvn``), optionally followed by ``+arm`` (chromosome-arm centering of the
gene-level profiles, REFERENCE §3), e.g. ``tvn+arm``.

What is written is exactly what the metrics take cosines of (REFERENCE §3): after the correction,
every well profile is centred on the mean of all negative-control wells (origin at the negcon
mean); perturbation profiles are the ``mean`` (or ``spherical_mean``) of their centred wells; the
arm correction is then applied to the CRISPR gene rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import pandas as pd

from morphobench.correct.methods import CORRECTIONS, apply_correction
from morphobench.data.tables import DEFAULT_CONTROL_QUERY, gene_rows
from morphobench.data.aggregate import aggregate_perturbations, center_on_controls
from morphobench.io import MorphobenchError, read_table, write_parquet

log = logging.getLogger("morphobench.correct")

ARM_SUFFIX = "+arm"


def parse_correction(name: str) -> tuple[str, bool]:
    """``"tvn+arm"`` → ``("tvn", True)``; unknown names raise naming the choices."""
    base, arm = (name[: -len(ARM_SUFFIX)], True) if name.endswith(ARM_SUFFIX) else (name, False)
    if base not in CORRECTIONS or base == "arm":
        choices = [c for c in CORRECTIONS if c != "arm"]
        raise MorphobenchError(f"unknown correction {name!r}: use one of {choices}, optionally with '+arm'")
    return base, arm


def correct_profiles(wells: pd.DataFrame, correction: str, *, aggregation: str = "mean",
                     control_query: str = DEFAULT_CONTROL_QUERY, batch_col: str = "Metadata_Batch",
                     plate_col: str = "Metadata_Plate", pca_components: int | float | None = None,
                     tvn_reg: float = 0.5, seed: int = 0, arm_table: pd.DataFrame | None = None,
                     unexpressed: Sequence[str] | None = None, min_arm_genes: int = 20,
                     source: str = "well profiles") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (corrected, negcon-centred well profiles; perturbation profiles)."""
    base, arm = parse_correction(correction)
    corrected = apply_correction(wells, base, control_query=control_query, batch_col=batch_col,
                                 plate_col=plate_col, pca_components=pca_components, tvn_reg=tvn_reg,
                                 seed=seed, source=source)
    centred = center_on_controls(corrected, control_query=control_query, source=source)
    pert = aggregate_perturbations(centred, aggregation, source=source)
    if arm:
        if arm_table is None or unexpressed is None:
            raise MorphobenchError(f"correction {correction!r} needs a gene → arm table and the unexpressed genes")
        genes = gene_rows(pert)
        if not genes.any():
            raise MorphobenchError(f"{source}: correction {correction!r} needs CRISPR gene profiles; none found")
        fixed = apply_correction(pert.loc[genes].reset_index(drop=True), "arm", arm_table=arm_table,
                                 unexpressed_genes=list(unexpressed), min_arm_genes=min_arm_genes,
                                 source=f"{source} (gene level)")
        others = pert.loc[~genes].reset_index(drop=True)
        pert = pd.concat([fixed, others.astype({c: fixed[c].dtype for c in fixed.columns
                                                if c in others.columns and not c.startswith("Metadata_")})],
                         ignore_index=True)
        pert = pert.sort_values("Metadata_Perturbation", kind="stable").reset_index(drop=True)
    return centred, pert


def arm_inputs(perturbations_truth: str | os.PathLike | None, gene_arms: str | os.PathLike | None,
               zfpkm: str | os.PathLike | None) -> tuple[pd.DataFrame, list[str]]:
    """Gene → arm table and unexpressed genes: from a simulated screen's truth table
    (columns ``Metadata_Gene, Metadata_Arm, Metadata_Expressed``) or from the resources
    (``gene_arms.tsv`` + ``u2os_zfpkm.tsv``)."""
    if perturbations_truth:
        truth = read_table(perturbations_truth, what="simulated perturbation truth")
        cols = {"Metadata_Gene": "gene", "Metadata_Arm": "arm", "Metadata_Expressed": "expressed"}
        for c in cols:
            if c not in truth.columns:
                raise MorphobenchError(f"{perturbations_truth}: column {c!r} missing")
        g = truth[list(cols)].rename(columns=cols).dropna(subset=["gene", "arm"]).drop_duplicates("gene")
        return g[["gene", "arm"]], sorted(g.loc[~g["expressed"].astype(bool), "gene"])
    if not (gene_arms and zfpkm):
        raise MorphobenchError("arm correction needs resources genes/gene_arms.tsv and genes/u2os_zfpkm.tsv")
    from morphobench.correct.arm import unexpressed_genes

    arms = read_table(gene_arms, what="gene arms")
    expr = read_table(zfpkm, what="zFPKM table")
    return arms[["gene", "arm"]], sorted(unexpressed_genes(expr))


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
