"""morphobench.correct: batch corrections of profile tables (REFERENCE.md §3)."""

from morphobench.correct.arm import arm_centering, arm_means, unexpressed_genes
from morphobench.correct.methods import (
    CORRECTIONS,
    DEFAULT_CONTROL_QUERY,
    apply_correction,
    center_by,
    control_mask,
    inverse_sqrt_psd,
    pca_transform,
    standardize_by,
    tvn_on_controls,
)

__all__ = [
    "CORRECTIONS", "DEFAULT_CONTROL_QUERY", "apply_correction", "arm_centering", "arm_means",
    "center_by", "control_mask", "inverse_sqrt_psd", "pca_transform", "standardize_by",
    "tvn_on_controls", "unexpressed_genes",
]
