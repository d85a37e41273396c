"""Patch layout and reconstruction losses of the masked autoencoders (MAE-W, MAE-CVPR).

Layout: :func:`patchify` turns images (B, C, H, W) into patch vectors (B, N, P·P·C) ordered
(row p, column q, channel c) within a patch, rows of patches first (He et al. 2022);
:func:`unpatchify` is its inverse. CA-MAE uses one channel per token: (B, C, N, P·P)
(:func:`patchify_channels`).

Losses (per patch, reduced over masked patches only by :func:`masked_mean`):

* :func:`patch_mse` — mean squared error over a patch's pixels (MAE-CVPR Eq. 1).
* :func:`patch_fourier_l1` — MAE-CVPR Eq. 2: mean absolute difference of the 2-D FFT magnitudes
  |FFT2(y_p)| and |FFT2(ŷ_p)| of each patch, the FFT taken over the patch's two spatial axes for
  each channel separately (torch's default unnormalized forward transform, as the authors' code).
  It reshapes the flat patch vector to (P, P, C) itself, so it is correct for any number of leading
  dimensions — (B, N, P·P·C) of MAE-ViT, (B, C, N, P·P) of CA-MAE — unlike the public
  implementation, which views a (B, N, P·P·C) tensor as (B, C, √N, √N) images.
* The "+" models combine them: L = (1 − α)·L_MAE + α·L_FT (MAE-CVPR Eq. 3, α = 0.01).
"""

from __future__ import annotations

import torch


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, P·P·C), N = (H/P)·(W/P), patch vector ordered (p, q, c)."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"image {h}×{w} is not divisible by the patch size {p}")
    gh, gw = h // p, w // p
    x = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)  # b gh gw p q c
    return x.reshape(b, gh * gw, p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, P·P·C) → (B, C, H, W) for a ``grid`` of (H/P, W/P)."""
    b = x.shape[0]
    gh, gw = grid
    x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, gh * p, gw * p)


def patchify_channels(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) → (B, C, N, P·P): every channel patchified on its own (CA-MAE tokens)."""
    b, c, h, w = x.shape
    return patchify(x.reshape(b * c, 1, h, w), p).reshape(b, c, -1, p * p)


def unpatchify_channels(x: torch.Tensor, p: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify_channels`: (B, C, N, P·P) → (B, C, H, W)."""
    b, c, n, _ = x.shape
    return unpatchify(x.reshape(b * c, n, p * p), p, 1, grid).reshape(b, c, grid[0] * p, grid[1] * p)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (masked patches only)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def patch_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-patch mean squared error over the last (patch vector) axis."""
    return (pred.float() - target.float()).pow(2).mean(dim=-1)


def patch_fourier_l1(pred: torch.Tensor, target: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-patch L1 distance of the 2-D FFT magnitudes (MAE-CVPR Eq. 2 before the mean over patches).

    ``pred``/``target``: (..., P·P·C) patch vectors in :func:`patchify` order; returns (...)."""
    p = patch_size
    d = pred.shape[-1]
    if d % (p * p) or target.shape != pred.shape:
        raise ValueError(f"patch vectors of length {d} (target {tuple(target.shape)}) do not hold "
                         f"{p}×{p} patches")
    c = d // (p * p)
    shape = (*pred.shape[:-1], p, p, c)
    fp = torch.fft.fft2(pred.float().reshape(shape), dim=(-3, -2)).abs()
    ft = torch.fft.fft2(target.float().reshape(shape), dim=(-3, -2)).abs()
    return (fp - ft).abs().mean(dim=(-3, -2, -1))


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, patch_size: int,
             fourier_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """MAE loss on masked patches: ``{"loss", "mse"[, "fourier"]}`` with
    loss = (1 − α)·mse + α·fourier when ``fourier_weight`` α > 0, else mse."""
    mse = masked_mean(patch_mse(pred, target), mask)
    if fourier_weight <= 0:
        return {"loss": mse, "mse": mse.detach()}
    if fourier_weight >= 1:
        raise ValueError(f"fourier_weight must be in [0, 1), got {fourier_weight}")
    ft = masked_mean(patch_fourier_l1(pred, target, patch_size), mask)
    return {"loss": (1 - fourier_weight) * mse + fourier_weight * ft, "mse": mse.detach(),
            "fourier": ft.detach()}
