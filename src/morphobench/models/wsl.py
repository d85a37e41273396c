"""Weakly supervised (WSL) classifiers of the MAE papers: DenseNet-161 with and without AdaBN, and ViTs.

Both are trained "as standard classifiers to predict the perturbation applied in the cellular
image, given a random crop as input" (MAE-W A.1.1, MAE-CVPR §4.1): cross-entropy over the training
perturbations (rows with label −1 — perturbations the split keeps out of training — are ignored).
Validation reports the loss and the top-1 accuracy; the best epoch has the lowest loss.

**DenseNet** (``wsl_densenet``): timm's ``densenet161`` (growth 48, blocks 6/12/36/24;
``growth_rate``/``block_config`` can shrink it for the CPU) with global average pooling, then a
two-layer MLP neck (Linear → BatchNorm → ReLU → Linear; MAE-CVPR: "128-dimensional embeddings from a
two-layer MLP neck before the classification logits"; the neck's hidden width, max(512, D), is our
choice) → the D-dimensional embedding (128, or 1,024) → linear logits. ``adabn: true`` adds adaptive
batch norm with ghost batches (:mod:`morphobench.models.layers.adabn`): one plate per training batch
(``sampler: plate``), per-plate statistics at validation and inference (``adapt``).

**ViT** (``wsl_vit``): a timm ViT (:func:`~morphobench.models.layers.vit.vit_encoder`, standard
blocks unless ``parallel``) with a class token and fixed sin-cos position embeddings; the
embedding is the final layer's class token (MAE-CVPR §4.1) and the logits a linear layer on it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from morphobench.models import EmbeddingModel, register_model
from morphobench.models.layers.adabn import adapt_to_plate, batch_stats_mode, ghost_forward
from morphobench.models.layers.vit import grid_of, paper_flops, sincos_pos_embed, vit_encoder
from morphobench.models.mae import _arch


class _Classifier(EmbeddingModel):
    """Cross-entropy over the training perturbations; ``features(x) → (B, D)``, ``head``."""

    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _loss(self, logits: torch.Tensor, label: torch.Tensor) -> dict:
        valid = label >= 0
        if not bool(valid.any()):
            zero = logits.sum() * 0.0
            return {"loss": zero, "accuracy": torch.tensor(float("nan"))}
        loss = F.cross_entropy(logits.float()[valid], label[valid])
        acc = (logits[valid].argmax(-1) == label[valid]).float().mean()
        return {"loss": loss, "accuracy": acc.detach()}

    def forward(self, batch: dict) -> dict:
        return self._loss(self.head(self.features(batch["image"])), batch["label"])

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image)


class WSLDenseNet(_Classifier):
    """DenseNet-161 + MLP neck classifier, optionally with AdaBN (see the module docstring)."""

    def __init__(self, in_chans: int = 5, num_classes: int = 2, num_groups: int = 0, embed_dim: int = 128,
                 growth_rate: int = 48, block_config: Iterable[int] = (6, 12, 36, 24), neck_hidden: int | None = None,
                 adabn: bool = False, ghost_batch: int = 256, adabn_inference: str = "plate", drop_rate: float = 0.0,
                 img_size: int = 256):
        super().__init__()
        import morphobench.models  # noqa: F401
        import timm

        if num_classes < 1:
            raise ValueError("a weakly supervised classifier needs at least one training perturbation")
        if adabn_inference not in ("plate", "batch"):
            raise ValueError(f"adabn_inference must be plate|batch, got {adabn_inference!r}")
        self.backbone = timm.create_model("densenet161", pretrained=False, num_classes=0, in_chans=in_chans,
                                          growth_rate=int(growth_rate), block_config=tuple(int(b) for b in block_config),
                                          drop_rate=drop_rate)
        hidden = neck_hidden or max(512, embed_dim)
        self.neck = nn.Sequential(nn.Linear(self.backbone.num_features, hidden), nn.BatchNorm1d(hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim))
        self.head = nn.Linear(embed_dim, num_classes)
        self.adabn, self.ghost_batch, self.adabn_inference = adabn, int(ghost_batch), adabn_inference
        self.embed_dim, self.img_size, self.in_chans = embed_dim, img_size, in_chans
        self.reference_timm = {"arch": "densenet161", "kwargs": {"growth_rate": int(growth_rate),
                                                                 "block_config": tuple(int(b) for b in block_config)}}

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.adabn and (self.training or self.adabn_inference == "batch"):
            if not self.training:
                with batch_stats_mode(self):
                    return ghost_forward(self._features, x, self.ghost_batch)
            return ghost_forward(self._features, x, self.ghost_batch)
        return self._features(x)

    def validation_step(self, batch: dict) -> dict:
        if not self.adabn:
            return super().validation_step(batch)
        # AdaBN: each plate's crops of the batch normalized with their own statistics
        x, label, plate = batch["image"], batch["label"], batch["plate"]
        feats = torch.empty(x.shape[0], self.embed_dim, device=x.device, dtype=torch.float32)
        with torch.no_grad(), batch_stats_mode(self):
            for p in torch.unique(plate):
                sel = plate == p
                feats[sel] = ghost_forward(self._features, x[sel], self.ghost_batch).float()
            return self._loss(self.head(feats), label)

    def adapt(self, batches: Iterable[torch.Tensor]) -> int:
        """Per-plate embedding hook: re-estimate the batch-norm statistics on the plate's crops
        (AdaBN with ``adabn_inference: plate``; nothing to do otherwise)."""
        if not self.adabn or self.adabn_inference != "plate":
            return 0
        return adapt_to_plate(self, self._features, batches, self.ghost_batch)


class WSLViT(_Classifier):
    """ViT classifier; embedding = the final layer's class token."""

    def __init__(self, in_chans: int = 5, num_classes: int = 2, num_groups: int = 0, size: str = "b",
                 patch_size: int = 16, embed_dim: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, mlp_ratio: float = 4.0, img_size: int = 256, drop_path: float = 0.1,
                 init_values: float | None = None, qk_norm: bool = False, qkv_bias: bool = True,
                 parallel: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError("a weakly supervised classifier needs at least one training perturbation")
        d, n, h = _arch(size, embed_dim, depth, num_heads)
        self.embed_dim, self.depth, self.patch_size, self.mlp_ratio = d, n, patch_size, mlp_ratio
        self.encoder = vit_encoder(in_chans=in_chans, patch_size=patch_size, embed_dim=d, depth=n, num_heads=h,
                                   mlp_ratio=mlp_ratio, img_size=img_size, drop_path=drop_path,
                                   init_values=init_values, qk_norm=qk_norm, qkv_bias=qkv_bias, parallel=parallel)
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        self.head = nn.Linear(d, num_classes)
        self.in_chans = in_chans
        self.reference_timm = {"arch": "vit_base_patch16_224",
                               "kwargs": {"img_size": img_size, "patch_size": patch_size, "embed_dim": d, "depth": n,
                                          "num_heads": h, "mlp_ratio": mlp_ratio}}

    @property
    def flops_per_image(self) -> float:
        return paper_flops(self.embed_dim, self.depth, self.patch_size, self.mlp_ratio)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_chans:
            raise ValueError(f"WSL ViT trained on {self.in_chans} channels got {x.shape[1]}")
        grid = grid_of(x.shape[-2], x.shape[-1], self.patch_size)
        t = self.encoder.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = t + sincos_pos_embed(grid, self.embed_dim, t.device, t.dtype)
        cls = self.encoder.cls_token.expand(t.shape[0], -1, -1).to(t.dtype)
        out = self.encoder.norm(self.encoder.blocks(torch.cat([cls, t], dim=1)))
        return out[:, 0]


@register_model
def wsl_densenet(**kw) -> WSLDenseNet:
    return WSLDenseNet(**kw)


@register_model
def wsl_vit(**kw) -> WSLViT:
    return WSLViT(**kw)
