"""Shared model pieces (normalization, pooling, gradient reversal …); timm layers where they exist."""

from morphobench.models.layers.grl import GradientReversal, grad_reverse
from morphobench.models.layers.norm import self_standardize

__all__ = ["GradientReversal", "grad_reverse", "self_standardize"]
