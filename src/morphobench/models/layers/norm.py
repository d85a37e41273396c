"""Input normalization shared by the models and the training/embedding data path."""

from __future__ import annotations

import torch


def self_standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per image and channel: subtract the mean and divide by the standard deviation over the
    pixels (MAE-W / MAE-CVPR "self-standardization"). ``x``: (B, C, H, W); a constant channel
    becomes 0."""
    x = x.float()
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)
