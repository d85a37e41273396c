"""Training parameters (torch-free: the method registry checks parameter names at DAG time).

A trained method's ``params`` mix :class:`TrainConfig` fields (optimization, sampling,
augmentation, devices), inference settings (:data:`EMBED_KEYS`) and model keyword arguments;
:func:`split_params` separates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from morphobench.io import MorphobenchError

SAMPLERS = ("random", "pairs", "plate")


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters (method ``params`` keys; the remaining keys go to the model)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    gamma: float = 0.9
    grad_accum: int = 1
    clip_grad: float | None = None
    sampler: str = "random"
    #: cap on optimizer-step batches per epoch (None: one pass over the training rows)
    steps_per_epoch: int | None = None
    #: cap on validation batches (None: every validation row)
    val_batches: int | None = None
    flips: bool = True
    rot90: bool = True
    crop_size: int | None = None
    normalize: str = "self"
    #: channels of the crop store the model sees (empty: all)
    channels: tuple[str, ...] = ()
    #: the variation group (TEAMs experts, adversarial baselines): a Metadata_ column
    group_col: str = "Metadata_Batch"
    #: split labels trained on (controls are never in "train")
    train_splits: tuple[str, ...] = ("train",)
    #: train (and validate) only on these values of ``group_col`` (empty: all; TEAMs Table 3)
    train_groups: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    #: MB of crop shards cached in memory per data split (bounded; see CropSet)
    cache_mb: float = 2048

    @property
    def augment(self):
        from morphobench.training.data import AugmentConfig

        return AugmentConfig(self.flips, self.rot90, self.crop_size, self.normalize)


TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))
#: Inference-time parameters of every trained method (read by morphobench.embed.learned, the embed
#: rule and the figures; neither training nor model arguments): the embedding batch size, a model
#: file trained elsewhere, and the map from the screen's channels to the model's.
EMBED_KEYS = frozenset({"embed_batch_size", "pretrained", "channel_map"})


def split_params(params: Mapping[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """Method params → (training config, model keyword arguments)."""
    tr = {k: v for k, v in params.items() if k in TRAIN_KEYS}
    for k in ("betas", "channels", "train_splits", "train_groups"):
        if k in tr and tr[k] is not None:
            tr[k] = tuple(tr[k])
    cfg = TrainConfig(**tr)
    check_config(cfg)
    return cfg, {k: v for k, v in params.items() if k not in TRAIN_KEYS and k not in EMBED_KEYS}


def check_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise MorphobenchError("training: epochs, batch_size and grad_accum must be ≥ 1")
    if cfg.schedule not in ("cosine", "exponential", "constant"):
        raise MorphobenchError(f"training: schedule must be cosine|exponential|constant, got {cfg.schedule!r}")
    if cfg.sampler not in SAMPLERS:
        raise MorphobenchError(f"training: sampler must be one of {list(SAMPLERS)}, got {cfg.sampler!r}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise MorphobenchError(f"training: device must be auto|cpu|cuda, got {cfg.device!r}")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise MorphobenchError(f"training: precision must be auto|bf16|fp32, got {cfg.precision!r}")


