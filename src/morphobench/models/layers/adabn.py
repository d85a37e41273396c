"""Adaptive batch normalization (AdaBN, Li et al. 2018) with ghost batches (Hoffer et al. 2017),
as the MAE papers' weakly supervised DenseNet-161 (MAE-W A.1.1, MAE-CVPR §4.1).

AdaBN uses the batch-norm statistics of one plate in training AND inference:

* **Training**: every batch is drawn from one plate (the ``plate`` sampler), and a large batch is
  normalized in *ghost batches* of ``ghost_batch`` crops, each with its own statistics.
  :func:`ghost_forward` runs the network on each ghost batch separately, which is exactly ghost
  batch norm for networks whose only cross-sample operation is batch norm (DenseNet + MLP neck).
* **Validation**: each plate's crops of a validation batch are normalized with their own batch
  statistics (:func:`batch_stats_mode`; running statistics untouched).
* **Inference**: the per-plate embedding calls :func:`adapt_to_plate` with all of the plate's
  crops before embedding them: the running statistics are reset and re-estimated on the plate
  (cumulative average over its batches, each normalized by its own statistics as in training),
  so every tile of a plate is embedded with that plate's statistics, whatever the batch it is in
  (``adabn_inference: plate``, deterministic). ``adabn_inference: batch`` normalizes each embedding
  batch (all from one plate) with its own ghost-batch statistics instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def bn_layers(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def ghost_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, ghost_batch: int) -> torch.Tensor:
    """``fn`` applied to each ghost batch of ``x`` separately (ghost batch norm)."""
    if ghost_batch <= 0 or x.shape[0] <= ghost_batch:
        return fn(x)
    return torch.cat([fn(c) for c in x.split(ghost_batch)], dim=0)


@contextmanager
def batch_stats_mode(module: nn.Module):
    """Inside: every batch-norm layer normalizes with the current batch's statistics and leaves
    its running statistics unchanged (other layers keep their mode)."""
    layers = bn_layers(module)
    saved = [(m.training, m.momentum) for m in layers]
    try:
        for m in layers:
            m.train()
            m.momentum = 0.0  # running ← (1 − 0)·running + 0·batch: unchanged
        yield
    finally:
        for m, (tr, mom) in zip(layers, saved, strict=True):
            m.train(tr)
            m.momentum = mom


@torch.no_grad()
def adapt_to_plate(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor],
                   batches: Iterable[torch.Tensor], ghost_batch: int = 0) -> int:
    """Re-estimate every batch-norm layer's running statistics on ``batches`` (one plate's crops):
    reset, then a cumulative average over the batches (each normalized by its own statistics, in
    ghost batches); the module is left in eval mode. Returns the number of crops seen."""
    layers = bn_layers(module)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    module.eval()
    n = 0
    try:
        for m in layers:
            m.train()
        for x in batches:
            ghost_forward(fn, x, ghost_batch)
            n += x.shape[0]
    finally:
        for m, mom in zip(layers, saved, strict=True):
            m.momentum = mom
        module.eval()
    return n
