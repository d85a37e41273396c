"""Masked autoencoders of the Recursion papers (MAE-W, MAE-CVPR): MAE-ViT and channel-agnostic CA-MAE.

Both follow He et al. (2022) with the papers' changes; the encoder is a timm ViT
(:func:`morphobench.models.layers.vit.vit_encoder`: LayerScale, QK-norm, no QKV bias, parallel
scaling blocks, stochastic depth — MAE-W A.1.3) with fixed 2-D sin-cos position embeddings.
The input is already self-standardized per image and channel by the data path
(``normalize: self``), so the reconstruction target is the standardized crop.

**MAE-ViT** (``mae_vit``): patches P×P×C → tokens; random masking by the argsort of uniform noise
keeps round((1 − ratio)·N) tokens (75 % masked; 25 % an option); a light decoder (timm blocks on
all N tokens, mask tokens filled in, its own sin-cos embeddings) predicts every patch; the loss is
the MSE on masked patches only, plus for the "+" models the Fourier loss (MAE-CVPR Eq. 3,
α = ``fourier_weight`` = 0.01). Embedding: the mean of the final layer's patch tokens (after the
final norm), without masking.

**CA-MAE** (``ca_mae``; MAE-CVPR §4.2.2, Fig. 4): ONE linear patch projection shared by all
channels (a 1-channel P×P convolution applied to each channel), the same sin-cos position
embeddings for every channel (C × N tokens), an independent random mask per channel
(``mask_mode: per_channel``: round((1 − ratio)·N) tokens kept in each channel; ``joint`` applies the
ratio to all C·N tokens at once), and one decoder per training channel (cross-attention from the
channel's N tokens to every encoded token, then its own transformer blocks; after MultiMAE,
Bachmann et al. 2022). Nothing in the encoder depends on the number or order of channels, so
:meth:`CAMAE.embed` takes any C′ channels: ``embed_mode`` ``mean`` (mean of all C′·N patch tokens,
D values), ``cls`` (class token, D) or ``channels`` (per-channel means concatenated in the input
order, C′·D). ``channel_agnostic = True`` tells other stages (channel-subset studies) so.

Both expose ``flops_per_image`` (the papers' training-FLOPs convention; the loop logs FLOPs × crops
seen), ``reference_timm`` (the plain timm ViT the encoder is built from, for the throughput
benchmark) and :meth:`reconstruct` (masked input / reconstruction / original, for the figure).
"""

from __future__ import annotations

import torch
from torch import nn

from morphobench.models import EmbeddingModel, register_model
from morphobench.models.layers.losses import (
    mae_loss,
    patchify,
    patchify_channels,
    unpatchify,
    unpatchify_channels,
)
from morphobench.models.layers.masking import random_masking, restore
from morphobench.models.layers.vit import VIT_SIZES, grid_of, paper_flops, sincos_pos_embed, vit_encoder

EMBED_MODES = ("mean", "cls", "channels")
_TIMM_NAMES = {384: "small", 768: "base", 1024: "large"}


def _arch(size: str, embed_dim: int | None, depth: int | None, num_heads: int | None) -> tuple[int, int, int]:
    if size not in VIT_SIZES:
        raise ValueError(f"size must be one of {sorted(VIT_SIZES)}, got {size!r}")
    d, n, h = VIT_SIZES[size]
    return embed_dim or d, depth or n, num_heads or h


def _decoder_blocks(dim: int, depth: int, heads: int) -> nn.Sequential:
    import morphobench.models  # noqa: F401
    from timm.models.vision_transformer import Block

    return nn.Sequential(*[Block(dim, heads, 4.0, qkv_bias=True, norm_layer=_ln) for _ in range(depth)])


def _ln(dim: int, **kw) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kw)


def _init_weights(module: nn.Module) -> None:
    """He et al.'s initialization: xavier-uniform linear layers, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class _MAEBase(EmbeddingModel):
    """What MAE-ViT and CA-MAE share: the timm encoder, the decoder stem and the FLOPs/reference info."""

    def _build_encoder(self, in_chans: int, size: str, patch_size: int, embed_dim, depth, num_heads,
                       mlp_ratio, img_size, drop_path, init_values, qk_norm, qkv_bias, parallel):
        d, n, h = _arch(size, embed_dim, depth, num_heads)
        self.size, self.patch_size, self.embed_dim, self.depth, self.num_heads = size, patch_size, d, n, h
        self.mlp_ratio = mlp_ratio
        self.encoder = vit_encoder(in_chans=in_chans, patch_size=patch_size, embed_dim=d, depth=n, num_heads=h,
                                   mlp_ratio=mlp_ratio, img_size=img_size, drop_path=drop_path,
                                   init_values=init_values, qk_norm=qk_norm, qkv_bias=qkv_bias, parallel=parallel)
        w = self.encoder.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        self.reference_timm = {"arch": f"vit_{_TIMM_NAMES.get(d, 'base')}_patch{patch_size}_224",
                               "kwargs": {"img_size": img_size, "embed_dim": d, "depth": n, "num_heads": h,
                                          "mlp_ratio": mlp_ratio, "qkv_bias": qkv_bias, "qk_norm": qk_norm,
                                          "init_values": init_values}}

    @property
    def flops_per_image(self) -> float:
        """Training FLOPs per crop, papers' convention (MAE-W A.3; :func:`paper_flops`)."""
        return paper_flops(self.embed_dim, self.depth, self.patch_size, self.mlp_ratio)

    def _encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) position-embedded patch tokens → encoder output with the class token first."""
        cls = self.encoder.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        x = self.encoder.norm_pre(torch.cat([cls, tokens], dim=1))
        return self.encoder.norm(self.encoder.blocks(x))


class MAEViT(_MAEBase):
    """MAE-ViT (see the module docstring)."""

    channel_agnostic = False

    def __init__(self, in_chans: int = 5, size: str = "s", patch_size: int = 16, embed_dim: int | None = None,
                 depth: int | None = None, num_heads: int | None = None, mlp_ratio: float = 4.0,
                 img_size: int = 256, decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 mask_ratio: float = 0.75, fourier_weight: float = 0.0, drop_path: float = 0.1,
                 init_values: float | None = 1e-4, qk_norm: bool = True, qkv_bias: bool = False,
                 parallel: bool = True, num_classes: int = 0, num_groups: int = 0):
        super().__init__()
        self._build_encoder(in_chans, size, patch_size, embed_dim, depth, num_heads, mlp_ratio, img_size,
                            drop_path, init_values, qk_norm, qkv_bias, parallel)
        self.in_chans, self.mask_ratio, self.fourier_weight = in_chans, mask_ratio, fourier_weight
        self.decoder_dim = decoder_dim
        self.decoder_embed = nn.Linear(self.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.decoder_blocks = _decoder_blocks(decoder_dim, decoder_depth, decoder_heads)
        self.decoder_norm = _ln(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * in_chans)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    # -- pieces ---------------------------------------------------------------------------------
    def patch_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) → position-embedded patch tokens (B, N, D) and the patch grid."""
        if x.shape[1] != self.in_chans:
            raise ValueError(f"MAE-ViT trained on {self.in_chans} channels got {x.shape[1]} "
                             "(map the screen's channels to the model's with the method's channel_map)")
        grid = grid_of(x.shape[-2], x.shape[-1], self.patch_size)
        t = self.encoder.patch_embed.proj(x).flatten(2).transpose(1, 2)
        return t + sincos_pos_embed(grid, self.embed_dim, t.device, t.dtype), grid

    def forward_masked(self, x: torch.Tensor, mask_ratio: float | None = None):
        """Encoder on the kept tokens + decoder on all tokens → (prediction (B, N, P·P·C), mask (B, N))."""
        tokens, grid = self.patch_tokens(x)
        kept, mask, ids_restore, _ = random_masking(tokens, self.mask_ratio if mask_ratio is None else mask_ratio)
        latent = self._encode(kept)
        y = self.decoder_embed(latent)
        full = restore(y[:, 1:], ids_restore, self.mask_token)
        full = full + sincos_pos_embed(grid, self.decoder_dim, full.device, full.dtype)
        y = self.decoder_norm(self.decoder_blocks(torch.cat([y[:, :1], full], dim=1)))
        return self.decoder_pred(y[:, 1:]), mask, grid

    # -- interface ------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        x = batch["image"]
        pred, mask, _ = self.forward_masked(x)
        return mae_loss(pred, patchify(x, self.patch_size), mask, self.patch_size, self.fourier_weight)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.patch_tokens(image)
        return self._encode(tokens)[:, 1:].mean(dim=1)

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Masked input (masked patches zeroed), reconstruction (all patches predicted; the visible
        ones pasted back, as He et al. show it) and the original, each (B, C, H, W)."""
        pred, mask, grid = self.forward_masked(image)
        target = patchify(image, self.patch_size)
        m = mask.unsqueeze(-1)
        masked = unpatchify(target * (1 - m), self.patch_size, self.in_chans, grid)
        recon = unpatchify(pred * m + target * (1 - m), self.patch_size, self.in_chans, grid)
        return {"masked": masked, "reconstruction": recon, "original": image, "mask_ratio": mask.mean()}


class _ChannelDecoder(nn.Module):
    """One channel's decoder: cross-attention from the channel's N tokens to every encoded token,
    an MLP, then ``depth`` timm transformer blocks, a norm and the P·P pixel prediction."""

    def __init__(self, dim: int, depth: int, heads: int, patch_pixels: int):
        super().__init__()
        import morphobench.models  # noqa: F401
        from timm.layers import Mlp

        self.q_norm, self.kv_norm, self.mlp_norm = _ln(dim), _ln(dim), _ln(dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = Mlp(dim, 4 * dim)
        self.blocks = _decoder_blocks(dim, depth, heads)
        self.norm = _ln(dim)
        self.pred = nn.Linear(dim, patch_pixels)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        kv = self.kv_norm(context)
        x = queries + self.cross(self.q_norm(queries), kv, kv, need_weights=False)[0]
        x = x + self.mlp(self.mlp_norm(x))
        return self.pred(self.norm(self.blocks(x)))


class CAMAE(_MAEBase):
    """Channel-agnostic MAE (see the module docstring)."""

    channel_agnostic = True

    def __init__(self, in_chans: int = 5, size: str = "s", patch_size: int = 16, embed_dim: int | None = None,
                 depth: int | None = None, num_heads: int | None = None, mlp_ratio: float = 4.0,
                 img_size: int = 256, decoder_dim: int = 256, decoder_depth: int = 2, decoder_heads: int = 16,
                 mask_ratio: float = 0.75, mask_mode: str = "per_channel", embed_mode: str = "mean",
                 fourier_weight: float = 0.0, drop_path: float = 0.1, init_values: float | None = 1e-4,
                 qk_norm: bool = True, qkv_bias: bool = False, parallel: bool = True, num_classes: int = 0,
                 num_groups: int = 0):
        super().__init__()
        if mask_mode not in ("per_channel", "joint"):
            raise ValueError(f"mask_mode must be per_channel|joint, got {mask_mode!r}")
        if embed_mode not in EMBED_MODES:
            raise ValueError(f"embed_mode must be one of {EMBED_MODES}, got {embed_mode!r}")
        self._build_encoder(1, size, patch_size, embed_dim, depth, num_heads, mlp_ratio, img_size,
                            drop_path, init_values, qk_norm, qkv_bias, parallel)
        self.in_chans, self.mask_ratio, self.mask_mode = in_chans, mask_ratio, mask_mode
        self.embed_mode, self.fourier_weight, self.decoder_dim = embed_mode, fourier_weight, decoder_dim
        self.decoder_embed = nn.Linear(self.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.decoders = nn.ModuleList(_ChannelDecoder(decoder_dim, decoder_depth, decoder_heads,
                                                      patch_size * patch_size) for _ in range(in_chans))
        for m in (self.decoder_embed, self.decoders):
            m.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def flops_per_image(self) -> float:
        """Papers' convention (ViT FLOPs × crops) × C: CA-MAE has C × N tokens per crop."""
        return paper_flops(self.embed_dim, self.depth, self.patch_size, self.mlp_ratio) * self.in_chans

    def patch_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) → (B, C, N, D): the shared projection applied to every channel, + the
        same sin-cos position embeddings for each channel."""
        b, c, h, w = x.shape
        grid = grid_of(h, w, self.patch_size)
        t = self.encoder.patch_embed.proj(x.reshape(b * c, 1, h, w)).flatten(2).transpose(1, 2)
        t = t + sincos_pos_embed(grid, self.embed_dim, t.device, t.dtype)
        return t.reshape(b, c, grid[0] * grid[1], self.embed_dim), grid

    def forward_masked(self, x: torch.Tensor, mask_ratio: float | None = None):
        """→ (prediction (B, C, N, P·P), mask (B, C, N), grid)."""
        b, c = x.shape[:2]
        if c != len(self.decoders):
            raise ValueError(f"CA-MAE trains with one decoder per channel ({len(self.decoders)}), got {c} "
                             "channels (any number of channels is fine for embed())")
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        tokens, grid = self.patch_tokens(x)
        n = tokens.shape[2]
        if self.mask_mode == "per_channel":
            kept, mask, ids_restore, _ = random_masking(tokens, ratio)  # (B, C, K, D), masks per channel
            latent = self._encode(kept.reshape(b, -1, self.embed_dim))
            y = self.decoder_embed(latent)
            full = restore(y[:, 1:].reshape(b, c, -1, self.decoder_dim), ids_restore, self.mask_token)
        else:
            kept, mask, ids_restore, _ = random_masking(tokens.reshape(b, c * n, -1), ratio)
            latent = self._encode(kept)
            y = self.decoder_embed(latent)
            full = restore(y[:, 1:], ids_restore, self.mask_token).reshape(b, c, n, self.decoder_dim)
            mask = mask.reshape(b, c, n)
        full = full + sincos_pos_embed(grid, self.decoder_dim, full.device, full.dtype)
        pred = torch.stack([dec(full[:, i], y) for i, dec in enumerate(self.decoders)], dim=1)
        return pred, mask, grid

    def forward(self, batch: dict) -> dict:
        x = batch["image"]
        pred, mask, _ = self.forward_masked(x)
        return mae_loss(pred, patchify_channels(x, self.patch_size), mask, self.patch_size, self.fourier_weight)

    def embed(self, image: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Any number and order of channels C′ → (B, D) (``mean``, ``cls``) or (B, C′·D) (``channels``)."""
        mode = mode or self.embed_mode
        if mode not in EMBED_MODES:
            raise ValueError(f"embed_mode must be one of {EMBED_MODES}, got {mode!r}")
        tokens, _ = self.patch_tokens(image)
        b, c, n, d = tokens.shape
        out = self._encode(tokens.reshape(b, c * n, d))
        if mode == "cls":
            return out[:, 0]
        if mode == "mean":
            return out[:, 1:].mean(dim=1)
        return out[:, 1:].reshape(b, c, n, d).mean(dim=2).reshape(b, c * d)

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        pred, mask, grid = self.forward_masked(image)
        target = patchify_channels(image, self.patch_size)
        m = mask.unsqueeze(-1)
        masked = unpatchify_channels(target * (1 - m), self.patch_size, grid)
        recon = unpatchify_channels(pred * m + target * (1 - m), self.patch_size, grid)
        return {"masked": masked, "reconstruction": recon, "original": image, "mask_ratio": mask.mean()}


@register_model
def mae_vit(**kw) -> MAEViT:
    return MAEViT(**kw)


@register_model
def ca_mae(**kw) -> CAMAE:
    return CAMAE(**kw)


__all__ = ["MAEViT", "CAMAE", "mae_vit", "ca_mae", "EMBED_MODES"]
