"""TEAMs family (Wang et al. 2021, "Anchoring to Exemplars for Training Mixture-of-Expert Cell
Embeddings"): TEAMs, its ablations and the paper's baselines.

Models (:func:`create_model` names)
-----------------------------------
``teams``                 a timm backbone (ResNet-18; EfficientNet-B0 for Table 5) → one linear
                          **variation expert** per variation group → ``embed_dim`` (512), L2-normalized;
                          **treatment exemplars** (one learnable vector per training treatment) with the
                          ProxyNCA loss on cosine distances; **cross-batch memory** of the K most recent
                          (detached) embeddings scored against the exemplars too (loss = exemplar +
                          memory). ``experts: false`` → one shared projection; ``memory_size: 0`` → no
                          memory (Table 2c ablations). Inference: every expert's output, each
                          L2-normalized, concatenated (E × 512).
``online_negatives``      the same encoder trained on batches of same-treatment pairs with the margin
                          loss over all positive × negative pairs of the batch (m = 0.3); options:
                          ``adversarial`` (gradient-reversal scale of a linear variation-group
                          classifier on the backbone features; TEAMs: 1e-2), ``rsc_features`` /
                          ``rsc_rows`` (self-challenging: mute that fraction of the most important
                          features on that fraction of each batch; TEAMs: 0.5 and 1/3) and ``experts``.
``treatment_classification``  weakly supervised (Caicedo et al. 2018): EfficientNet-B0 + one linear
                          treatment classifier per variation group; embedding = the pooled backbone
                          features (1,280-D).
:func:`embed_transfer`    ``transfer_effnet``: ImageNet EfficientNet-B0 on each channel replicated to
                          RGB, pooled features concatenated (1,280 × C); weights from a local file.

Every trained model here picks its best epoch on the **validation split's single-cell MoA-triplet
accuracy** (TEAMs §4: "select the epoch that performs the best on the validation set"); when the
validation cells carry no usable MoA annotation, treatments stand in for the classes (positives
from the same treatment). ``downsample`` (average pooling of the input by that factor before the
backbone) is a CPU-sized setting of ours; the paper feeds 128² crops (``downsample: 1``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from morphobench.io import MorphobenchError
from morphobench.models import EmbeddingModel, register_model
from morphobench.models.layers import GradientReversal

log = logging.getLogger("morphobench.models.teams")


# ------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------
def make_backbone(arch: str, in_chans: int) -> nn.Module:
    """A timm network without its classifier (pooled features), randomly initialised."""
    import timm

    if not timm.is_model(arch):
        raise MorphobenchError(f"backbone {arch!r} is not a timm architecture")
    return timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans)


def exemplar_loss(z: torch.Tensor, exemplars: torch.Tensor, labels: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """ProxyNCA on cosine distances d = 1 − cos (Movshovitz-Attias et al. 2017; TEAMs Eq. 1):
    mean over rows of −log(exp(−d(z, C_t)) / Σ_{c ≠ t} exp(−d(z, C_c))) = −cos(z, C_t) +
    logsumexp_{c≠t} cos(z, C_c). ``z`` L2-normalized rows, ``exemplars`` (K, D) (normalized here),
    ``labels`` in [0, K). ``temperature`` 1 = none (the paper's choice)."""
    if exemplars.shape[0] < 2:
        raise MorphobenchError("the exemplar loss needs ≥ 2 training treatments")
    c = F.normalize(exemplars.float(), dim=1)
    sim = z.float() @ c.T / temperature
    pos = sim.gather(1, labels[:, None]).squeeze(1)
    others = sim.masked_fill(F.one_hot(labels, c.shape[0]).bool(), float("-inf"))
    return (torch.logsumexp(others, dim=1) - pos).mean()


class FeatureMemory(nn.Module):
    """Cross-batch memory (Wang et al. 2020): the ``size`` most recent embeddings (detached) with
    their labels, first in first out. Buffers, so a checkpoint resumes it exactly."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = int(size)
        self.register_buffer("feats", torch.zeros(self.size, dim))
        self.register_buffer("labels", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        if self.size == 0:
            return
        z, labels = z.detach()[-self.size:], labels.detach()[-self.size:]
        n = z.shape[0]
        idx = (self.ptr + torch.arange(n, device=self.feats.device)) % self.size
        self.feats[idx] = z.to(self.feats.dtype)
        self.labels[idx] = labels.to(self.labels.dtype)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, labels), oldest first."""
        n = int(self.count)
        if n < self.size:  # copies: the loss built on them must survive the next enqueue
            return self.feats[:n].clone(), self.labels[:n].clone()
        order = (self.ptr + torch.arange(self.size, device=self.feats.device)) % self.size
        return self.feats[order], self.labels[order]


def pair_margin_loss(z: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """TEAMs' online-negatives loss: over all positive pairs P (same label) and negative pairs N
    (different labels) among the unordered pairs of the batch, the mean over P × N of
    max(0, m + s(y, n) − s(x, p)) with s the cosine similarity of the L2-normalized rows (a pair
    may share a cell with the other: x = y allowed). Exact, in O((|P| + |N|) log |N|) memory-light
    form (sorted negatives + cumulative sums) instead of the |P| × |N| matrix."""
    b = z.shape[0]
    iu, ju = torch.triu_indices(b, b, 1, device=z.device)
    s = (z.float() @ z.float().T)[iu, ju]
    same = labels[iu] == labels[ju]
    sp, sn = s[same], s[~same]
    if sp.numel() == 0 or sn.numel() == 0:
        return z.sum() * 0.0
    sn_sorted, _ = torch.sort(sn)
    csum = torch.cat([sn_sorted.new_zeros(1), torch.cumsum(sn_sorted, 0)])
    thr = (sp - margin).detach()
    k = torch.searchsorted(sn_sorted.detach().contiguous(), thr.contiguous(), right=True)  # inactive negatives
    cnt = sn.numel() - k
    active_sum = csum[-1] - csum[k]
    per_pos = active_sum + cnt.to(sp.dtype) * (margin - sp)
    return per_pos.sum() / (sp.numel() * sn.numel())


def rsc_mask(importance: torch.Tensor, feature_frac: float, row_frac: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Representation self-challenging (Huang et al. 2020): a (B, F) 0/1 mask muting, on
    ``round(row_frac · B)`` rows drawn at random, the ``round(feature_frac · F)`` features of
    highest ``importance``; other rows are kept whole."""
    b, f = importance.shape
    mask = torch.ones_like(importance)
    n_rows, n_feat = int(round(row_frac * b)), int(round(feature_frac * f))
    if n_rows == 0 or n_feat == 0:
        return mask
    rows = torch.randperm(b, generator=generator, device="cpu")[:n_rows].to(importance.device)
    top = importance[rows].topk(n_feat, dim=1).indices
    mask[rows[:, None], top] = 0.0
    return mask


# ------------------------------------------------------------------------------------------------
# Shared: encoder with variation experts, validation by MoA triplets
# ------------------------------------------------------------------------------------------------
class _CellModel(EmbeddingModel):
    """Backbone (+ optional input downsampling) and the triplet-accuracy validation."""

    val_metric = "triplet_acc"
    val_mode = "max"

    def __init__(self, in_chans: int, backbone: str, downsample: int, moa_col: str, moa_sep: str, val_seed: int):
        super().__init__()
        if int(downsample) < 1:
            raise MorphobenchError(f"downsample must be ≥ 1, got {downsample}")
        self.backbone = make_backbone(backbone, in_chans)
        self.num_features = int(self.backbone.num_features)
        self.downsample = int(downsample)
        self.moa_col, self.moa_sep, self.val_seed = moa_col, moa_sep, int(val_seed)
        self._val: dict | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        return self.backbone(x)

    # --- validation: single-cell MoA triplets on the validation split
    def setup_validation(self, rows) -> None:
        from morphobench.evaluate.triplets import parse_moas

        trt = rows["Metadata_Perturbation"].astype(str).to_numpy()
        sets = parse_moas(rows[self.moa_col].to_numpy(object), self.moa_sep) if self.moa_col in rows else []
        self._val = {"treatments": trt, "moa": sets, "treatment_sets": [frozenset([t]) for t in trt]}

    def validation_step(self, batch: dict) -> dict:
        with torch.no_grad():
            z = self.embed(batch["image"])
        return {"embedding": z.float().cpu(), "index": batch["index"].cpu()}

    def validation_epoch_end(self, outputs) -> dict:
        from morphobench.evaluate.triplets import cell_triplet_accuracy

        if self._val is None:
            raise MorphobenchError("validation rows were not set up (setup_validation)")
        z = torch.cat([o["embedding"] for o in outputs]).numpy()
        idx = torch.cat([o["index"] for o in outputs]).numpy()
        trt = self._val["treatments"][idx]
        acc, n = float("nan"), 0
        if self._val["moa"]:
            acc, n = cell_triplet_accuracy(z, [self._val["moa"][i] for i in idx], trt, self.val_seed)
        by = "moa"
        if n == 0:  # no MoA classes to compare on the validation cells: treatments stand in
            acc, n = cell_triplet_accuracy(z, [self._val["treatment_sets"][i] for i in idx], trt, self.val_seed)
            by = "treatment"
        return {"triplet_acc": acc, "triplets": n, "triplets_by_moa": float(by == "moa")}


class _Experts(nn.Module):
    """One linear projection per variation group (``n`` = 1: a single shared projection)."""

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        self.n, self.out_dim = int(n), int(out_dim)
        self.proj = nn.Linear(in_dim, self.n * self.out_dim)  # the n experts' weights, stacked

    def all(self, f: torch.Tensor) -> torch.Tensor:
        """(B, n, D): every expert's output, each L2-normalized."""
        return F.normalize(self.proj(f).view(f.shape[0], self.n, self.out_dim).float(), dim=-1)

    def own(self, f: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """(B, D): each row through the expert of its group (normalized)."""
        if self.n == 1:
            return self.all(f)[:, 0]
        if (group < 0).any() or (group >= self.n).any():
            raise MorphobenchError(f"variation-group codes outside the {self.n} experts")
        w = self.proj.weight.view(self.n, self.out_dim, -1)[group]  # (B, D, F)
        bias = self.proj.bias.view(self.n, self.out_dim)[group]
        return F.normalize((torch.bmm(w, f[:, :, None]).squeeze(-1) + bias).float(), dim=-1)


# ------------------------------------------------------------------------------------------------
# TEAMs
# ------------------------------------------------------------------------------------------------
class TEAMs(_CellModel):
    def __init__(self, in_chans: int = 5, num_classes: int = 2, num_groups: int = 1, backbone: str = "resnet18",
                 embed_dim: int = 512, experts: bool = True, memory_size: int = 2816, temperature: float = 1.0,
                 downsample: int = 1, moa_col: str = "Metadata_MoA", moa_sep: str = "|", val_seed: int = 0):
        super().__init__(in_chans, backbone, downsample, moa_col, moa_sep, val_seed)
        if num_classes < 2:
            raise MorphobenchError(f"TEAMs needs ≥ 2 training treatments, got {num_classes}")
        self.n_experts = max(1, int(num_groups)) if experts else 1
        self.embed_dim = int(embed_dim)
        self.experts = _Experts(self.n_experts, self.num_features, self.embed_dim)
        g = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**31)
        self.exemplars = nn.Parameter(F.normalize(torch.randn(num_classes, self.embed_dim, generator=g), dim=1))
        self.memory = FeatureMemory(int(memory_size), self.embed_dim)
        self.temperature = float(temperature)

    def forward(self, batch: dict) -> dict:
        f = self.features(batch["image"])
        z = self.experts.own(f, batch["group"])
        labels = batch["label"]
        loss_ex = exemplar_loss(z, self.exemplars, labels, self.temperature)
        out = {"exemplar_loss": loss_ex.detach()}
        loss = loss_ex
        if self.memory.size:
            mz, ml = self.memory.entries()
            if mz.shape[0]:
                loss_mem = exemplar_loss(mz, self.exemplars, ml, self.temperature)
                loss = loss + loss_mem
                out["memory_loss"] = loss_mem.detach()
            if self.training:
                self.memory.enqueue(z, labels)
        out["loss"] = loss
        return out

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Every expert's output, each L2-normalized, concatenated: (B, n_experts × embed_dim)."""
        return self.experts.all(self.features(image)).flatten(1)


# ------------------------------------------------------------------------------------------------
# Online negatives (+ adversarial, + RSC, + MoE)
# ------------------------------------------------------------------------------------------------
class OnlineNegatives(_CellModel):
    def __init__(self, in_chans: int = 5, num_classes: int = 2, num_groups: int = 1, backbone: str = "resnet18",
                 embed_dim: int = 512, experts: bool = False, margin: float = 0.3, adversarial: float = 0.0,
                 rsc_features: float = 0.0, rsc_rows: float = 0.0, downsample: int = 1,
                 moa_col: str = "Metadata_MoA", moa_sep: str = "|", val_seed: int = 0):
        super().__init__(in_chans, backbone, downsample, moa_col, moa_sep, val_seed)
        self.n_experts = max(1, int(num_groups)) if experts else 1
        self.experts = _Experts(self.n_experts, self.num_features, int(embed_dim))
        self.margin = float(margin)
        for name, v in (("rsc_features", rsc_features), ("rsc_rows", rsc_rows)):
            if not 0.0 <= float(v) <= 1.0:
                raise MorphobenchError(f"{name} must be in [0, 1], got {v}")
        self.rsc_features, self.rsc_rows = float(rsc_features), float(rsc_rows)
        self.adversarial = float(adversarial)
        if self.adversarial > 0:
            self.grl = GradientReversal(self.adversarial)
            self.group_head = nn.Linear(self.num_features, max(1, int(num_groups)))

    def forward(self, batch: dict) -> dict:
        f = self.features(batch["image"])
        labels, group = batch["label"], batch["group"]
        out = {}
        if self.training and self.rsc_features > 0 and self.rsc_rows > 0:
            loss0 = pair_margin_loss(self.experts.own(f, group), labels, self.margin)
            if loss0.requires_grad:
                (g,) = torch.autograd.grad(loss0, f, retain_graph=True)
                # the features whose increase lowers the loss most are the dominant ones
                mask = rsc_mask(-g.detach().float(), self.rsc_features, self.rsc_rows)
                f = f * mask.to(f.dtype)
                out["rsc_muted"] = 1.0 - mask.mean().detach()
        loss = pair_margin_loss(self.experts.own(f, group), labels, self.margin)
        out["pair_loss"] = loss.detach()
        if self.adversarial > 0:
            logits = self.group_head(self.grl(f)).float()
            adv = F.cross_entropy(logits, group)
            out["adv_loss"] = adv.detach()
            out["adv_acc"] = (logits.argmax(1) == group).float().mean().detach()
            loss = loss + adv
        out["loss"] = loss
        return out

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return self.experts.all(self.features(image)).flatten(1)


# ------------------------------------------------------------------------------------------------
# Treatment classification (weakly supervised)
# ------------------------------------------------------------------------------------------------
class TreatmentClassifier(_CellModel):
    def __init__(self, in_chans: int = 5, num_classes: int = 2, num_groups: int = 1,
                 backbone: str = "efficientnet_b0", per_group_heads: bool = True, downsample: int = 1,
                 moa_col: str = "Metadata_MoA", moa_sep: str = "|", val_seed: int = 0):
        super().__init__(in_chans, backbone, downsample, moa_col, moa_sep, val_seed)
        self.n_heads = max(1, int(num_groups)) if per_group_heads else 1
        self.heads = nn.ModuleList(nn.Linear(self.num_features, num_classes) for _ in range(self.n_heads))

    def forward(self, batch: dict) -> dict:
        f = self.features(batch["image"])
        labels = batch["label"]
        group = batch["group"] if self.n_heads > 1 else torch.zeros_like(labels)
        logits = torch.stack([h(f) for h in self.heads], dim=1)[torch.arange(f.shape[0], device=f.device), group]
        logits = logits.float()
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean().detach()}

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image)


@register_model
def teams(**kw) -> TEAMs:
    return TEAMs(**kw)


@register_model
def online_negatives(**kw) -> OnlineNegatives:
    return OnlineNegatives(**kw)


@register_model
def treatment_classification(**kw) -> TreatmentClassifier:
    return TreatmentClassifier(**kw)


# ------------------------------------------------------------------------------------------------
# Transfer learning (not trained): ImageNet EfficientNet-B0 per channel
# ------------------------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_HELP = ("a timm state_dict of the ImageNet-trained network, e.g. written on a machine with internet by "
                "`python -c \"import timm, torch; torch.save(timm.create_model('efficientnet_b0', "
                "pretrained=True).state_dict(), 'efficientnet_b0_imagenet.pth')\"`")


class ChannelwiseTransfer(nn.Module):
    """Each channel replicated to RGB, ImageNet-normalized, through ``net``; pooled features of the
    channels concatenated: (B, C, H, W) in [0, 1] → (B, C × F)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rgb = x.reshape(b * c, 1, h, w).expand(-1, 3, -1, -1)
        feats = self.net((rgb - self.mean) / self.std)
        return feats.reshape(b, c * feats.shape[1])


def embed_transfer(spec: dict, plate: str, inputs):
    """``transfer_effnet``: the plate's crops through :class:`ChannelwiseTransfer` with the ImageNet
    weights of ``params.weights`` (a local file; without it: an error, never random weights)."""
    from morphobench.embed.learned import embed_crops
    from morphobench.embed.timm_embed import build_timm
    from morphobench.training.data import AugmentConfig, CropSet, index_rows
    from morphobench.training.loop import resolve_device

    name, params = spec["name"], spec["params"]
    weights = params.get("weights")
    if not weights:
        raise MorphobenchError(f"method {name}: needs ImageNet weights: set methods: [{{name: {name}, params: "
                               f"{{weights: path/to/file.pth}}}}] ({WEIGHTS_HELP}); it never runs with random weights")
    if not inputs.crops:
        raise MorphobenchError(f"method {name}: no crop index given for plate {plate}")
    rows = index_rows(inputs.crops)
    channels = list(params.get("channels") or []) or (CropSet(rows.head(1)).channels if len(rows) else [])
    device = resolve_device(inputs.device)
    model = ChannelwiseTransfer(build_timm(name, params.get("arch", "efficientnet_b0"), weights, 3)).to(device).eval()
    aug = AugmentConfig(flips=False, rot90=False, crop_size=params.get("crop_size"), normalize="unit")
    return embed_crops(model, inputs.crops, channels, aug, batch_size=int(params.get("batch_size", 32)),
                       device=device, desc=f"{name} {plate}")
