"""Random token masking of masked autoencoders (He et al. 2022; MAE-W / MAE-CVPR).

:func:`random_masking` keeps ``round((1 − ratio) · N)`` tokens of every sequence, chosen by the
argsort of uniform noise (a random permutation per sequence); :func:`restore` puts the decoder's
tokens back in the original order, filling the masked positions with a mask token. Both work on
any number of leading dimensions, e.g. (B, N, D) for a ViT or (B, C, N, D) for the per-channel
masks of CA-MAE.
"""

from __future__ import annotations

import torch


def num_kept(n: int, ratio: float) -> int:
    """Tokens kept of ``n`` at mask ratio ``ratio``: ``round((1 − ratio) · n)``, at least 1."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return max(1, int(round((1.0 - ratio) * n)))


def random_masking(x: torch.Tensor, ratio: float, generator: torch.Generator | None = None):
    """Keep a random subset of the tokens of ``x`` (..., N, D).

    Returns ``(kept, mask, ids_restore, ids_keep)``: ``kept`` (..., K, D) the kept tokens in
    the order of their noise, ``mask`` (..., N) 1 for masked and 0 for kept tokens (in the
    original order), ``ids_restore`` (..., N) the permutation that undoes the shuffle and
    ``ids_keep`` (..., K) the original positions of the kept tokens."""
    *lead, n, d = x.shape
    k = num_kept(n, ratio)
    noise = torch.rand(*lead, n, device=x.device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=-1)
    ids_restore = torch.argsort(ids_shuffle, dim=-1)
    ids_keep = ids_shuffle[..., :k]
    kept = torch.gather(x, -2, ids_keep.unsqueeze(-1).expand(*lead, k, d))
    mask = torch.ones(*lead, n, device=x.device, dtype=x.dtype)
    mask[..., :k] = 0
    mask = torch.gather(mask, -1, ids_restore)
    return kept, mask, ids_restore, ids_keep


def restore(kept: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """Decoder side of :func:`random_masking`: ``kept`` (..., K, D) plus ``N − K`` copies of
    ``mask_token`` (D,), un-shuffled to the original token order → (..., N, D)."""
    *lead, k, d = kept.shape
    n = ids_restore.shape[-1]
    fill = mask_token.to(kept.dtype).reshape(*([1] * len(lead)), 1, d).expand(*lead, n - k, d)
    full = torch.cat([kept, fill], dim=-2)
    return torch.gather(full, -2, ids_restore.unsqueeze(-1).expand(*lead, n, d))
