"""Gradient reversal (Ganin & Lempitsky 2015): identity forward, −scale × gradient backward.

Used by TEAMs' adversarial baseline: a variation-group classifier on the backbone features whose
gradient, reversed and scaled (TEAMs: 1e-2), pushes the backbone towards features that cannot tell
the groups apart.
"""

from __future__ import annotations

import torch
from torch import nn


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return _Reverse.apply(x, float(scale))


class GradientReversal(nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
