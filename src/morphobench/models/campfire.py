"""Campfire: a channel-agnostic masked autoencoder with one decoder shared by all channels
(Hurry et al. 2025, §2.2, §3.1, App. A; REFERENCE §2 "Campfire").

Architecture (:class:`Campfire`):

* **Per-channel patchify**: one ``Conv3d(1, D, kernel=stride=(1, P, P))`` applied to every channel
  alike, so a (C, 112, 112) tile becomes C × 64 patch tokens (P = 14) whatever C is.
* **Position**: fixed 2-D sin-cos embeddings added to every token (the same for every channel) and
  rotary position embeddings (RoPE, axial, on the patch's row/column) inside every attention
  block of the encoder and the decoder (timm ``EvaBlock`` + ``RotaryEmbeddingCat``).
* **Masking by position**: one random set of patch positions per image (fraction ``mask_ratio``,
  0.8) is removed from **all** channels; the encoder sees the C × K visible tokens.
* **Decoder**: a linear projection to the decoder width, mask tokens at the removed positions,
  sin-cos position + RoPE again, and a **channel embedding**: one linear layer shared by all
  channels applied to that channel's mean patch embedding over the batch (computed without
  gradient, from the patchify output). One decoder (blocks + linear head to P² pixels) serves every
  channel: its parameters do not depend on C.
* **Channel subsampling** (training only): each batch keeps a subset of the training channels
  drawn uniformly from the 2^C − 1 non-empty subsets (:func:`sample_channel_subset`; Campfire §3.1
  S ~ U{X ⊆ {Nu, Ac, M}}, not C′ ~ U{1..C}).
* **Loss** on the whole reconstructed image of the channels in the batch (App. A, Eqs. 2–5):
  ``λs·MSE(ŷ, y) + λl·MSE(low(ŷ), low(y)) + λh·MSE(high(ŷ), high(y)) + λf·L1(|FFT ŷ|, |FFT y|)``
  where ``low``/``high`` zero a fraction of the Fourier coefficients (:func:`fourier_filter`).
* **Embedding**: no masking; the encoder's final-norm patch tokens of every channel given, averaged
  → (B, D). Any number and order of channels is accepted (``channel_agnostic = True``).

Not said by the paper (our choices, configurable): the decoder size (CPU defaults in the registry;
MAE's 512-d × 8 blocks in ``config/paper/``), no class token (the embedding is the mean of patch
tokens), the RoPE base (``rope_theta``), the loss weights' defaults (see :data:`LOSS_DEFAULTS`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from morphobench.io import MorphobenchError
from morphobench.models import EmbeddingModel, register_model

#: Loss defaults. The paper's Table 2.3 (loss ablation) lost its bold "best" row in the text we
#: have; its final refinement trials (24–27) vary one filter weight at 0.25 next to λs = 0.75, and
#: App. A's final objective (Eq. 1) has no Fourier-L1 term. We use λs 0.75 + λl 0.25 with a
#: low-pass that removes 25 % of the coefficients, λh = λf = 0 (every value is a model parameter).
LOSS_DEFAULTS = {"lambda_spatial": 0.75, "lambda_low": 0.25, "lambda_high": 0.0, "lambda_fourier": 0.0,
                 "low_pass_fraction": 0.25, "high_pass_fraction": 0.1}


# ------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------
def sample_channel_subset(n_channels: int, generator: torch.Generator | None = None) -> list[int]:
    """A subset of ``range(n_channels)`` drawn uniformly from the 2^n − 1 non-empty subsets
    (ascending indices). Uses the torch RNG (seeded per epoch by the training loop)."""
    if n_channels < 1:
        raise MorphobenchError("channel subsampling needs at least one channel")
    code = int(torch.randint(1, 2 ** n_channels, (1,), generator=generator))
    return [c for c in range(n_channels) if code >> c & 1]


def random_keep(batch: int, n: int, mask_ratio: float, device=None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Positions kept visible per image: (B, K) indices, K = max(1, ⌊n·(1 − mask_ratio)⌋), drawn by
    argsort of uniform noise (MAE), sorted ascending."""
    k = max(1, int(n * (1.0 - mask_ratio) + 1e-9))
    noise = torch.rand(batch, n, device=device, generator=generator)
    return torch.sort(torch.argsort(noise, dim=1)[:, :k], dim=1).values


def _radius(h: int, w: int, device=None) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.fftfreq(w, device=device)[None, :]
    return torch.sqrt(fy ** 2 + fx ** 2)


def fourier_mask(h: int, w: int, fraction: float, kind: str, device=None) -> torch.Tensor:
    """(H, W) 0/1 mask over the unshifted FFT coefficients that removes ``fraction`` of them by radial
    frequency: ``low`` pass removes the highest frequencies (the inner-most coefficients of the
    unshifted spectrum), ``high`` pass the lowest (the outer-most, incl. DC). Coefficients of equal
    radius are kept or removed together, so the filtered image stays real; the fraction removed
    is the closest achievable to ``fraction``."""
    if not 0.0 <= fraction < 1.0:
        raise MorphobenchError(f"Fourier filter fraction must be in [0, 1), got {fraction}")
    r = _radius(h, w, device).flatten()
    n = r.numel()
    n_zero = int(round(fraction * n))
    mask = torch.ones(n, device=device)
    if n_zero == 0:
        return mask.view(h, w)
    radii, counts = torch.unique(r, sorted=True, return_counts=True)
    order = radii.flip(0) if kind == "low" else radii
    cum = torch.cumsum(counts.flip(0) if kind == "low" else counts, 0)
    j = int(torch.argmin((cum - n_zero).abs()))  # the radius shell where the removed count is closest
    if kind == "low":
        mask[r >= order[j]] = 0
    elif kind == "high":
        mask[r <= order[j]] = 0
    else:
        raise MorphobenchError(f"Fourier filter kind must be low|high, got {kind!r}")
    return mask.view(h, w)


def fourier_filter(x: torch.Tensor, fraction: float, kind: str) -> torch.Tensor:
    """Low- or high-pass filter of images ``x`` (…, H, W): FFT, zero ``fraction`` of the coefficients
    (:func:`fourier_mask`), inverse FFT (real part)."""
    mask = fourier_mask(x.shape[-2], x.shape[-1], fraction, kind, x.device)
    return torch.fft.ifft2(torch.fft.fft2(x.float(), norm="ortho") * mask, norm="ortho").real


def campfire_loss(pred: torch.Tensor, target: torch.Tensor, *, lambda_spatial: float, lambda_low: float,
                  lambda_high: float, lambda_fourier: float, low_pass_fraction: float,
                  high_pass_fraction: float) -> dict[str, torch.Tensor]:
    """App. A / B objective on whole images (B, C, H, W) → dict(loss, mse, low, high, fourier)."""
    pred, target = pred.float(), target.float()
    out = {"mse": F.mse_loss(pred, target)}
    loss = lambda_spatial * out["mse"]
    if lambda_low:
        out["mse_low"] = F.mse_loss(fourier_filter(pred, low_pass_fraction, "low"),
                                    fourier_filter(target, low_pass_fraction, "low"))
        loss = loss + lambda_low * out["mse_low"]
    if lambda_high:
        out["mse_high"] = F.mse_loss(fourier_filter(pred, high_pass_fraction, "high"),
                                     fourier_filter(target, high_pass_fraction, "high"))
        loss = loss + lambda_high * out["mse_high"]
    if lambda_fourier:
        out["l1_fft"] = F.l1_loss(torch.fft.fft2(pred, norm="ortho").abs(), torch.fft.fft2(target, norm="ortho").abs())
        loss = loss + lambda_fourier * out["l1_fft"]
    out["loss"] = loss
    return out


class ChannelPatchEmbed(nn.Module):
    """Shared per-channel patch projection: (B, C, H, W) → (B, C, N, D) with a ``Conv3d`` of
    kernel = stride = (1, P, P)."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(1, embed_dim, kernel_size=(1, patch_size, patch_size),
                              stride=(1, patch_size, patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise MorphobenchError(f"Campfire: image {tuple(x.shape[-2:])} is not a multiple of the patch size {p}")
        y = self.proj(x.unsqueeze(1))  # (B, D, C, h, w)
        return y.flatten(3).permute(0, 2, 3, 1)  # (B, C, N, D)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float, drop_path: float) -> nn.ModuleList:
    from timm.models.eva import EvaBlock

    dpr = [float(v) for v in torch.linspace(0, drop_path, depth)]
    return nn.ModuleList([EvaBlock(dim, heads, qkv_bias=True, mlp_ratio=mlp_ratio, num_prefix_tokens=0,
                                   drop_path=dpr[i], norm_layer=nn.LayerNorm) for i in range(depth)])


def _rope_table(head_dim: int, grid: int, theta: float) -> torch.Tensor:
    """(N, 2·head_dim) concatenated sin/cos axial rotary embeddings of a grid × grid patch lattice."""
    from timm.layers import RotaryEmbeddingCat

    rope = RotaryEmbeddingCat(head_dim, in_pixels=False, temperature=theta, feat_shape=[grid, grid])
    return rope.get_embed().detach().clone()


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
class Campfire(EmbeddingModel):
    """Channel-agnostic MAE with one shared decoder (see the module docstring)."""

    #: ``embed(image)`` accepts any number and order of channels (channel-set studies use this)
    channel_agnostic = True

    def __init__(self, in_chans: int = 3, num_classes: int = 0, num_groups: int = 0, *, img_size: int = 112,
                 patch_size: int = 14, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, mask_ratio: float = 0.8,
                 channel_subsampling: bool = True, rope_theta: float = 100.0,
                 lambda_spatial: float = LOSS_DEFAULTS["lambda_spatial"],
                 lambda_low: float = LOSS_DEFAULTS["lambda_low"],
                 lambda_high: float = LOSS_DEFAULTS["lambda_high"],
                 lambda_fourier: float = LOSS_DEFAULTS["lambda_fourier"],
                 low_pass_fraction: float = LOSS_DEFAULTS["low_pass_fraction"],
                 high_pass_fraction: float = LOSS_DEFAULTS["high_pass_fraction"]):
        super().__init__()
        if img_size % patch_size:
            raise MorphobenchError(f"Campfire: img_size {img_size} is not a multiple of patch_size {patch_size}")
        if not 0.0 <= mask_ratio < 1.0:
            raise MorphobenchError(f"Campfire: mask_ratio must be in [0, 1), got {mask_ratio}")
        for what, dim, heads in (("embed_dim", embed_dim, num_heads), ("decoder_dim", decoder_dim, decoder_heads)):
            if dim % heads or (dim // heads) % 4:
                raise MorphobenchError(f"Campfire: {what} {dim} must split into {heads} heads of a multiple of 4 "
                                       "(2-D sin-cos and rotary embeddings)")
        for name, v in (("low_pass_fraction", low_pass_fraction), ("high_pass_fraction", high_pass_fraction)):
            if not 0.0 <= v < 1.0:
                raise MorphobenchError(f"Campfire: {name} must be in [0, 1), got {v}")
        self.in_chans = in_chans  # the training channels (subsets of them are drawn per batch)
        self.img_size, self.patch_size = img_size, patch_size
        self.grid = img_size // patch_size
        self.num_patches = self.grid ** 2
        self.mask_ratio = mask_ratio
        self.channel_subsampling = channel_subsampling
        self.loss_cfg = {"lambda_spatial": lambda_spatial, "lambda_low": lambda_low, "lambda_high": lambda_high,
                         "lambda_fourier": lambda_fourier, "low_pass_fraction": low_pass_fraction,
                         "high_pass_fraction": high_pass_fraction}
        from timm.layers import build_sincos2d_pos_embed

        # encoder
        self.patch_embed = ChannelPatchEmbed(patch_size, embed_dim)
        self.register_buffer("pos_embed", build_sincos2d_pos_embed([self.grid, self.grid], embed_dim), persistent=False)
        self.register_buffer("rope", _rope_table(embed_dim // num_heads, self.grid, rope_theta), persistent=False)
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.norm = nn.LayerNorm(embed_dim)
        # decoder: one parameter set for every channel
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.channel_embed = nn.Linear(embed_dim, decoder_dim)
        self.register_buffer("decoder_pos_embed", build_sincos2d_pos_embed([self.grid, self.grid], decoder_dim),
                             persistent=False)
        self.register_buffer("decoder_rope", _rope_table(decoder_dim // decoder_heads, self.grid, rope_theta),
                             persistent=False)
        self.decoder_blocks = _blocks(decoder_dim, decoder_depth, decoder_heads, mlp_ratio, 0.0)
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_head = nn.Linear(decoder_dim, patch_size * patch_size)
        self.embed_dim = embed_dim
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE initialisation: xavier for linear layers and the patch projection (as a linear map)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- encoder ----------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise MorphobenchError(f"Campfire: expected (B, C, {self.img_size}, {self.img_size}) images, "
                                   f"got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder on (B, C, H, W): returns (tokens (B, C·K, D) after the final norm, the detached
        per-channel batch-mean patch embedding (C, D)). ``keep``: (B, K) visible positions
        (all positions when None)."""
        self._check(x)
        b, c = x.shape[:2]
        tokens = self.patch_embed(x)  # (B, C, N, D)
        with torch.no_grad():
            channel_means = tokens.detach().mean(dim=(0, 2))  # (C, D): no gradient through the mean
        tokens = tokens + self.pos_embed.to(tokens.dtype)
        if keep is None:
            pos = torch.arange(self.num_patches, device=x.device).expand(b, -1)
        else:
            pos = keep
            tokens = torch.gather(tokens, 2, keep[:, None, :, None].expand(b, c, keep.shape[1], tokens.shape[-1]))
        k = pos.shape[1]
        tokens = tokens.reshape(b, c * k, -1)
        rope = self.rope[pos.repeat(1, c)].unsqueeze(1)  # (B, 1, C·K, 2·head_dim), same for every channel
        for blk in self.blocks:
            tokens = blk(tokens, rope=rope)
        return self.norm(tokens), channel_means

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Mean of the encoder's patch tokens over every position and channel given: (B, D)."""
        tokens, _ = self.encode(image)
        return tokens.mean(dim=1)

    # -- decoder ----------------------------------------------------------------------------------
    def decode(self, latent: torch.Tensor, keep: torch.Tensor, channel_means: torch.Tensor) -> torch.Tensor:
        """Visible latent tokens (B, C·K, D) → reconstructed images (B, C, H, W)."""
        b, c = latent.shape[0], channel_means.shape[0]
        k = keep.shape[1]
        y = self.decoder_embed(latent).reshape(b, c, k, -1)
        dd = y.shape[-1]
        full = self.mask_token.to(y.dtype).expand(b, c, self.num_patches, dd)
        full = torch.scatter(full, 2, keep[:, None, :, None].expand(b, c, k, dd), y)
        chan = self.channel_embed(channel_means.to(y.dtype))  # (C, Dd): one shared layer for every channel
        full = full + self.decoder_pos_embed.to(y.dtype) + chan[None, :, None, :]
        full = full.reshape(b, c * self.num_patches, dd)
        rope = self.decoder_rope.repeat(c, 1)  # (C·N, 2·head_dim)
        for blk in self.decoder_blocks:
            full = blk(full, rope=rope)
        patches = self.decoder_head(self.decoder_norm(full))  # (B, C·N, P²)
        p, g = self.patch_size, self.grid
        return patches.reshape(b, c, g, g, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, g * p, g * p)

    def reconstruct(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, kept positions) of images ``x`` under a fresh (or given) mask."""
        if keep is None:
            keep = random_keep(x.shape[0], self.num_patches, self.mask_ratio, x.device)
        latent, means = self.encode(x, keep)
        return self.decode(latent, keep, means), keep

    def forward(self, batch: dict) -> dict:
        x = batch["image"]
        if self.training and self.channel_subsampling and x.shape[1] > 1:
            x = x[:, sample_channel_subset(x.shape[1])]
        pred, _ = self.reconstruct(x)
        out = campfire_loss(pred, x, **self.loss_cfg)
        out["n_channels"] = float(x.shape[1])
        return out


# ------------------------------------------------------------------------------------------------
# Registered sizes: ViT-S/B/L encoders with patch 14 (the registry's defaults can shrink them)
# ------------------------------------------------------------------------------------------------
SIZES = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}


def _make(size: str, **kw) -> Campfire:
    dim, depth, heads = SIZES[size]
    kw.setdefault("embed_dim", dim)
    kw.setdefault("depth", depth)
    kw.setdefault("num_heads", heads)
    kw.setdefault("patch_size", 14)
    return Campfire(**kw)


@register_model
def campfire_s14(**kw) -> Campfire:
    return _make("s", **kw)


@register_model
def campfire_b14(**kw) -> Campfire:
    return _make("b", **kw)


@register_model
def campfire_l14(**kw) -> Campfire:
    return _make("l", **kw)

