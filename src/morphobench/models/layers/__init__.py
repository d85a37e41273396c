"""Shared model pieces (normalization, pooling, gradient reversal …); timm layers where they exist."""

from morphobench.models.layers.norm import self_standardize

__all__ = ["self_standardize"]
