"""MU-Net: a U-Net trained as a masked autoencoder (MAE-W §3, MAE-CVPR §4.2; after Xun et al. 2023).

The papers give the scales (MU-Net-M: 32/64/128/256/512, MU-Net-L: + 1,024; "the decoder mirrors
the encoder"), the mask ratio (25 %), the kernel size (5) and the optimizer (AdamW 0.9/0.95, wd
0.05, lr 1e-3, cosine); the rest is ours, stated here and in the README:

* **Blocks**: each scale has ``blocks`` residual blocks (two k×k convolutions with batch norm and
  ReLU, a 1×1 projection on the skip when the width changes; Cellpose/Microsnoop-style); scales are
  joined by 2× max-pooling; the decoder upsamples 2× (nearest), concatenates the encoder's skip
  features of that scale and applies the same blocks; a 1×1 convolution predicts the C channels.
  With ``blocks: 2`` MU-Net-M has 42 M parameters and MU-Net-L 168 M for 6 channels (the papers:
  52 M and 135 M; their block layout is not published).
* **Masking**: the crop is cut into ``mask_patch``² squares and round(ratio · N) of them, chosen by
  the argsort of uniform noise, are set to 0 (the self-standardized mean); the loss is the MSE on the
  masked pixels only.
* **Embedding**: the papers don't say how it is pooled: ours is the global average of the
  bottleneck (the deepest encoder scale): 512-D (M) or 1,024-D (L).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from morphobench.models import EmbeddingModel, register_model
from morphobench.models.layers.masking import num_kept


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        pad = k // 2
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, k, padding=pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, k, padding=pad, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                                                    nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


def _stage(cin: int, cout: int, k: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(ResBlock(cin, cout, k), *[ResBlock(cout, cout, k) for _ in range(blocks - 1)])


def patch_mask(b: int, h: int, w: int, patch: int, ratio: float, device=None) -> torch.Tensor:
    """(B, 1, H, W) pixel mask, 1 on the masked squares: exactly round(ratio · N) of the N
    ``patch``² squares of each image (argsort of uniform noise)."""
    if h % patch or w % patch:
        raise ValueError(f"crop {h}×{w} is not divisible by mask_patch {patch}")
    gh, gw = h // patch, w // patch
    n = gh * gw
    n_masked = n - num_kept(n, ratio)
    rank = torch.argsort(torch.argsort(torch.rand(b, n, device=device), dim=1), dim=1)
    m = (rank < n_masked).float().reshape(b, 1, gh, gw)
    return m.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


class MUNet(EmbeddingModel):
    """Masked U-Net (see the module docstring)."""

    def __init__(self, in_chans: int = 5, num_classes: int = 0, num_groups: int = 0,
                 widths: Sequence[int] = (32, 64, 128, 256, 512), kernel_size: int = 5, blocks: int = 2,
                 mask_ratio: float = 0.25, mask_patch: int = 16):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError("MU-Net needs at least two scales")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_chans, self.widths, self.mask_ratio, self.mask_patch = in_chans, widths, mask_ratio, mask_patch
        self.down = nn.ModuleList()
        cin = in_chans
        for w in widths:
            self.down.append(_stage(cin, w, kernel_size, blocks))
            cin = w
        self.up = nn.ModuleList()
        for w_skip, w_deep in zip(widths[-2::-1], widths[:0:-1], strict=True):
            self.up.append(nn.ModuleDict({"reduce": nn.Conv2d(w_deep, w_skip, 1, bias=False),
                                          "block": _stage(2 * w_skip, w_skip, kernel_size, blocks)}))
        self.out = nn.Conv2d(widths[0], in_chans, 1)
        self.embed_dim = widths[-1]
        self.factor = 2 ** (len(widths) - 1)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[1] != self.in_chans:
            raise ValueError(f"MU-Net trained on {self.in_chans} channels got {x.shape[1]}")
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"crop {tuple(x.shape[-2:])} is not divisible by {self.factor} "
                             f"({len(self.widths)} scales)")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check(x)
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for up, skip in zip(self.up, skips[-2::-1], strict=True):
            x = up["reduce"](F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = up["block"](torch.cat([x, skip], dim=1))
        return self.out(x)

    def forward(self, batch: dict) -> dict:
        x = batch["image"]
        b, _, h, w = x.shape
        m = patch_mask(b, h, w, self.mask_patch, self.mask_ratio, x.device).to(x.dtype)
        pred = self.decode(self.encode(x * (1 - m)))
        err = (pred.float() - x.float()).pow(2).mean(dim=1, keepdim=True)
        loss = (err * m).sum() / m.sum().clamp_min(1.0)
        return {"loss": loss, "mse": loss.detach(), "masked_fraction": m.mean().detach()}

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return self.encode(image)[-1].mean(dim=(-2, -1))

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, w = image.shape
        m = patch_mask(b, h, w, self.mask_patch, self.mask_ratio, image.device).to(image.dtype)
        masked = image * (1 - m)
        pred = self.decode(self.encode(masked))
        return {"masked": masked, "reconstruction": pred * m + image * (1 - m), "original": image,
                "mask_ratio": m.mean()}


@register_model
def mu_net(**kw) -> MUNet:
    return MUNet(**kw)
