"""Shared ViT pieces of the MAE family, built from timm.

* :data:`VIT_SIZES` — the paper sizes (ViT-S/B/L: width, depth, heads; MAE-W §3).
* :func:`vit_encoder` — a timm :class:`~timm.models.vision_transformer.VisionTransformer` with the
  papers' options (MAE-W A.1.3): LayerScale (``init_values``), QK-normalization, no QK(V) bias,
  parallel scaling blocks (timm ``ParallelScalingBlock``, Dehghani et al. 2023) or the standard
  ``Block``, stochastic depth (timm's linear drop-path rule), a class token and no learned
  position embedding (:func:`sincos_pos_embed` adds fixed ones for any grid, so one encoder takes
  any image size divisible by the patch size).
* :func:`paper_flops` — training FLOPs per crop in the papers' convention (MAE-W A.3).
"""

from __future__ import annotations

from functools import lru_cache

import torch

#: size → (embed_dim, depth, num_heads) of ViT-S, ViT-B, ViT-L (Dosovitskiy et al.; MAE-W §3)
VIT_SIZES: dict[str, tuple[int, int, int]] = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}

#: GFLOPs of ViT-S/B/L/16 on a 224² × 3 image (Touvron et al. 2022, Table 1) — the numbers the
#: papers' training-FLOPs axis starts from (MAE-W A.3).
TOUVRON_GFLOPS_224: dict[tuple[int, int], float] = {(384, 12): 4.6, (768, 12): 17.6, (1024, 24): 61.6}


def vit_encoder(*, in_chans: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                mlp_ratio: float = 4.0, img_size: int = 256, drop_path: float = 0.0,
                init_values: float | None = 1e-4, qk_norm: bool = True, qkv_bias: bool = False,
                parallel: bool = True, class_token: bool = True):
    """A timm ViT encoder with the papers' options (see the module docstring); no head, no
    learned position embedding (add :func:`sincos_pos_embed` yourself)."""
    import morphobench.models  # noqa: F401  (timm on CPU-only torch)
    from timm.models.vision_transformer import Block, ParallelScalingBlock, VisionTransformer

    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 (2-D sin-cos position embedding), got {embed_dim}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    return VisionTransformer(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0, global_pool="",
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
        qk_norm=qk_norm, init_values=init_values, class_token=class_token, pos_embed="none",
        drop_path_rate=drop_path, block_fn=ParallelScalingBlock if parallel else Block,
        dynamic_img_size=False)


@lru_cache(maxsize=32)
def _sincos(gh: int, gw: int, dim: int) -> torch.Tensor:
    from timm.layers import build_sincos2d_pos_embed

    return build_sincos2d_pos_embed([gh, gw], dim=dim).reshape(gh * gw, dim)


def sincos_pos_embed(grid: tuple[int, int], dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (N, dim) of a (H/P, W/P) patch grid (He et al. 2022;
    timm's ``build_sincos2d_pos_embed``)."""
    return _sincos(int(grid[0]), int(grid[1]), int(dim)).to(device=device, dtype=dtype)


def analytic_macs(embed_dim: int, depth: int, tokens: int, patch_pixels: int, mlp_ratio: float = 4.0) -> float:
    """Multiply-accumulates of a ViT encoder forward: patch projection + per block
    (qkv 3D², projection D², MLP 2·r·D² per token, attention 2·N·D per token)."""
    d = embed_dim
    per_token_block = (4 + 2 * mlp_ratio) * d * d + 2 * tokens * d
    return tokens * (depth * per_token_block + patch_pixels * d)


def paper_flops(embed_dim: int, depth: int, patch_size: int, mlp_ratio: float = 4.0) -> float:
    """Training FLOPs per 256² crop, the papers' convention (MAE-W A.3): the ViT-S/B/L/16 224²
    FLOPs of Touvron et al. (Table 1) × 1.69 for 256² crops, × 16 for patch 8. For other
    widths/depths (CPU-sized and test models) the ViT/16 224² count is the analytic
    multiply-accumulate count (:func:`analytic_macs`; it reproduces Touvron's 17.6 G for ViT-B/16
    within 3 %); patch P scales by (16/P)⁴ (= 16 for P = 8). Multiply by the crops seen for a
    run's training FLOPs."""
    base = TOUVRON_GFLOPS_224.get((embed_dim, depth))
    if base is not None and mlp_ratio == 4.0:
        g224 = base * 1e9
    else:
        g224 = analytic_macs(embed_dim, depth, 197, 16 * 16 * 3, mlp_ratio)
    # × 16 for patch 8 = (16 / P)^4: 4× the tokens, counted quadratically (the papers' rule)
    return float(g224 * 1.69 * (16 / patch_size) ** 4)


def grid_of(h: int, w: int, p: int) -> tuple[int, int]:
    if h % p or w % p:
        raise ValueError(f"image {h}×{w} is not divisible by the patch size {p}")
    return h // p, w // p


def check_size(name: str, size: str) -> tuple[int, int, int]:
    try:
        return VIT_SIZES[size]
    except KeyError:
        raise ValueError(f"{name}: size must be one of {sorted(VIT_SIZES)}, got {size!r}") from None


__all__ = ["VIT_SIZES", "vit_encoder", "sincos_pos_embed", "paper_flops", "analytic_macs", "grid_of"]
