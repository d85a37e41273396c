"""The one training loop of every trained method.

:func:`fit` trains an :class:`~morphobench.models.EmbeddingModel` on a :class:`CropSet`:

* **Determinism**: the model is built after ``torch.manual_seed(seed)``; every epoch re-seeds torch
  and draws its batches and augmentations from generators seeded with ``(seed, epoch)``, so a run
  resumed from the checkpoint of epoch k ends with the same weights as an uninterrupted run.
* **Optimizer** from timm (``timm.optim.create_optimizer_v2``: adam, adamw, lion, sgd …; no weight
  decay on biases and norm weights), gradient accumulation (``grad_accum`` batches per step),
  optional gradient-norm clipping.
* **Schedule** per optimizer step: linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then
  ``cosine`` (to ``min_lr``), ``exponential`` (× ``gamma`` per epoch) or ``constant``.
* **Validation** every epoch on the ``val`` rows; the best epoch (``model.val_metric``,
  ``model.val_mode``) is what ``model.pt`` holds.
* **Checkpoint + resume**: ``checkpoint.pt`` (model, optimizer, epoch, log, best) after every
  epoch and ``best.pt`` when the validation metric improves; a rerun with the same spec resumes.
* **Log**: ``train_log.tsv`` (epoch, train/val values, lr, seconds, images/s, best) rewritten after
  every epoch; tqdm progress per epoch.
* **Training cost**: ``crops_seen`` (cumulative) and ``train_flops`` = FLOPs per crop × crops seen
  (cumulative, also across a resume), the MAE papers' convention (MAE-W A.3). FLOPs per crop are the
  model's ``flops_per_image`` when it has one (the MAE ViTs: Touvron et al.'s ViT/16 224² numbers
  × 1.69 for 256², × 16 for patch 8); otherwise the multiply-accumulates of one ``model.embed``
  forward on one training-size crop, counted once with ``torch.utils.flop_counter`` (Touvron's and
  fvcore's numbers count a multiply-accumulate as one FLOP; so does this).
* **Devices**: ``device: auto|cpu|cuda``; on CUDA ``precision: auto|bf16`` runs under bf16
  autocast and ``compile: true`` wraps the model's forward in ``torch.compile``. Everything also
  runs on the CPU (fp32).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from morphobench.io import MorphobenchError, atomic_path, config_hash, progress, write_tsv
from morphobench.training.config import TrainConfig
from morphobench.training.data import CropSet, augment, load_batch, make_sampler

log = logging.getLogger("morphobench.training")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MorphobenchError(f"device {name!r} requested but CUDA is not available (use device: auto|cpu)")
    return torch.device(name)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.precision == "bf16" and device.type != "cuda":
        log.warning("precision bf16 is used on CUDA only; training in fp32 on %s", device)
    return device.type == "cuda" and cfg.precision in ("auto", "bf16")


# ------------------------------------------------------------------------------------------------
# Learning-rate schedule
# ------------------------------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based)."""
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "exponential":
        return cfg.lr * cfg.gamma ** ((step - warm) // max(steps_per_epoch, 1))
    t = (step - warm) / max(total - warm, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    kw: dict[str, Any] = {}
    if cfg.optimizer in ("adam", "adamw", "lion", "nadam", "lamb"):
        kw["betas"] = tuple(cfg.betas)
    try:
        return create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, **kw)
    except (AssertionError, ValueError) as err:
        raise MorphobenchError(f"training: optimizer {cfg.optimizer!r}: {err}") from err


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    best_epoch: int
    best_value: float
    log: pd.DataFrame
    state_dict: dict = field(repr=False, default_factory=dict)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _scalars(out: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v)
            for k, v in out.items() if (torch.is_tensor(v) and v.numel() == 1) or isinstance(v, (int, float))}


def _seed_epoch(seed: int, epoch: int) -> torch.Generator:
    torch.manual_seed(int(np.random.default_rng([seed, epoch, 99]).integers(2**62)))
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, epoch, 98]).integers(2**62)))


def _better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def validate(model, val_set: CropSet, cfg: TrainConfig, device: torch.device, bf16: bool) -> dict[str, float]:
    """Validation values over the ``val`` rows in a fixed order (torch re-seeded, so stochastic
    models such as MAEs see the same masks every epoch)."""
    model.eval()
    torch.manual_seed(int(np.random.default_rng([cfg.seed, 12345]).integers(2**62)))
    gen = torch.Generator().manual_seed(cfg.seed)
    outputs: list[tuple[int, dict]] = []
    n = len(val_set)
    bs = cfg.batch_size
    starts = list(range(0, n, bs))
    if cfg.val_batches is not None:
        starts = starts[: cfg.val_batches]
    with torch.no_grad():
        for i in starts:
            batch = load_batch(val_set, range(i, min(i + bs, n)))
            batch["image"] = augment(batch["image"], cfg.augment, gen, train=False)
            batch = _to_device(batch, device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                out = model.validation_step(batch)
            outputs.append((len(batch["index"]), out))
    hook = getattr(model, "validation_epoch_end", None)
    if hook is not None:
        return {f"val_{k}": float(v) for k, v in hook([o for _, o in outputs]).items()}
    total = sum(w for w, _ in outputs)
    agg: dict[str, float] = {}
    for w, out in outputs:
        for k, v in _scalars(out).items():
            agg[k] = agg.get(k, 0.0) + v * w / total
    return {f"val_{k}": v for k, v in agg.items()}


def flops_per_crop(model, train_set: CropSet, cfg: TrainConfig, device: torch.device) -> float:
    """FLOPs per training crop (see the module docstring); NaN (logged) when they cannot be counted."""
    value = getattr(model, "flops_per_image", None)
    if value is not None:
        return float(value)
    if len(train_set) == 0:
        return float("nan")
    from torch.utils.flop_counter import FlopCounterMode

    x = augment(load_batch(train_set, [0])["image"], cfg.augment, train=False).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model.embed(x)
        return fc.get_total_flops() / 2.0
    except Exception as err:  # noqa: BLE001 - counting is informative only, never fatal
        log.warning("cannot count the FLOPs of %s (%s); train_flops is NaN", type(model).__name__, err)
        return float("nan")
    finally:
        model.train(was_training)


def fit(model, train_set: CropSet, val_set: CropSet | None, cfg: TrainConfig, out_dir: str | os.PathLike, *,
        spec_hash: str = "", resume: bool = True) -> FitResult:
    """Train ``model`` (see the module docstring); returns the best epoch's weights and the log."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg, device)
    model.to(device)
    opt = make_optimizer(model, cfg)
    sampler = make_sampler(cfg.sampler, train_set.rows, cfg.batch_size, cfg.seed)
    n_batches = len(sampler)
    if cfg.steps_per_epoch is not None:
        n_batches = min(n_batches, cfg.steps_per_epoch * cfg.grad_accum)
    steps_per_epoch = max(1, n_batches // cfg.grad_accum)
    metric, mode = f"val_{getattr(model, 'val_metric', 'loss')}", getattr(model, "val_mode", "min")
    if val_set is None or len(val_set) == 0:
        metric, mode = "train_loss", "min"
        log.warning("no validation rows: the best epoch is chosen on the training loss")
    ckpt_path, best_path = out_dir / "checkpoint.pt", out_dir / "best.pt"
    start, rows, best, best_epoch = 0, [], None, -1
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck.get("spec_hash") == spec_hash and ck["epoch"] + 1 <= cfg.epochs and best_path.exists():
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            start, rows, best, best_epoch = ck["epoch"] + 1, ck["log"], ck["best"], ck["best_epoch"]
            log.info("resuming from %s after epoch %d", ckpt_path, ck["epoch"])
        else:
            log.info("ignoring %s (other settings or finished); training from scratch", ckpt_path)
    crop_flops = flops_per_crop(model, train_set, cfg, device)
    crops_total = int(rows[-1].get("crops_seen", 0)) if rows else 0
    step_fn = model
    if cfg.compile:
        if device.type == "cuda":
            step_fn = torch.compile(model)
        else:
            log.info("compile: true is applied on CUDA only; running eagerly on %s", device)
    for epoch in range(start, cfg.epochs):
        gen = _seed_epoch(cfg.seed, epoch)
        if hasattr(model, "on_epoch_start"):
            model.on_epoch_start(epoch)
        model.train()
        t0, seen, sums, count = time.perf_counter(), 0, {}, 0
        opt.zero_grad(set_to_none=True)
        it = progress(enumerate(sampler.batches(epoch)), total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        for b, idx in it:
            if b >= n_batches:
                break
            step = epoch * steps_per_epoch + b // cfg.grad_accum
            batch = load_batch(train_set, idx)
            batch["image"] = augment(batch["image"], cfg.augment, gen, train=True)
            batch = _to_device(batch, device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                out = step_fn(batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise MorphobenchError(f"training diverged: loss {float(loss)} at epoch {epoch + 1}, batch {b}")
            (loss / cfg.grad_accum).backward()
            if (b + 1) % cfg.grad_accum == 0:
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                _set_lr(opt, lr_at(step, cfg, steps_per_epoch))
                opt.step()
                opt.zero_grad(set_to_none=True)
            seen += len(idx)
            count += 1
            for k, v in _scalars(out).items():
                sums[k] = sums.get(k, 0.0) + v
        secs = time.perf_counter() - t0
        crops_total += seen
        row = {"epoch": epoch + 1, **{f"train_{k}": v / max(count, 1) for k, v in sums.items()},
               "lr": lr_at(max(0, (epoch + 1) * steps_per_epoch - 1), cfg, steps_per_epoch),
               "seconds": round(secs, 3), "images_per_s": round(seen / secs, 2) if secs > 0 else float("nan"),
               "crops_seen": crops_total, "train_flops": crop_flops * crops_total}
        if metric != "train_loss":
            row.update(validate(model, val_set, cfg, device, bf16))
        value = float(row.get(metric, float("nan")))
        if metric not in row:
            raise MorphobenchError(f"validation did not report {metric!r} (got {sorted(row)})")
        improved = _better(value, best, mode)
        if improved:
            best, best_epoch = value, epoch + 1
            _save(best_path, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        row["best"] = improved
        rows.append(row)
        log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                 ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                           if k != "epoch"))
        _save(ckpt_path, {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "log": rows, "best": best, "best_epoch": best_epoch, "spec_hash": spec_hash})
        write_tsv(pd.DataFrame(rows), out_dir / "train_log.tsv")
    if best_epoch < 0:
        raise MorphobenchError(f"no epoch had a finite {metric}; see {out_dir / 'train_log.tsv'}")
    state = torch.load(best_path, map_location="cpu", weights_only=True)
    return FitResult(best_epoch, float(best), pd.DataFrame(rows), state)


def _save(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def spec_digest(spec: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
    return config_hash({"spec": spec, **(extra or {})})


def copy_config(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in copy.deepcopy(d).items()}
