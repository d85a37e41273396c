"""Training stage: a method spec + crops + split → ``models/{method}/model.pt`` + ``train_log.tsv``.

``model.pt`` is a dict: ``spec`` (the method spec trained), ``model`` (model name), ``model_kwargs``,
``state_dict`` (the best epoch's weights), ``vocab`` (treatments, groups, plates),
``channels``, ``augment`` (the evaluation-time normalization), ``best_epoch``, ``fold``, ``versions``.
:func:`load_trained` rebuilds the model from it for the embed stage.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from morphobench.io import MorphobenchError, atomic_path, package_versions, read_table, write_tsv
from morphobench.training.data import CropSet, Vocab, crop_rows, encode, make_vocab
from morphobench.training.config import TrainConfig, split_params
from morphobench.training.loop import fit, spec_digest
from morphobench.training.splits import read_split

log = logging.getLogger("morphobench.training")


def build_model(name: str, kwargs: dict[str, Any], *, in_chans: int, vocab: Vocab, seed: int):
    """``create_model(name, in_chans=…, num_classes=…, num_groups=…, **kwargs)`` after seeding
    torch, so the initial weights are a function of the seed."""
    from morphobench.models import create_model

    torch.manual_seed(seed)
    kw = {"in_chans": in_chans, "num_classes": len(vocab.treatments), "num_groups": len(vocab.groups),
          **kwargs}
    try:
        return create_model(name, **kw)
    except TypeError as err:
        raise MorphobenchError(f"model {name!r}: bad parameter: {err}") from err


def train_method(spec: dict, crops_index: str | os.PathLike, split_path: str | os.PathLike,
                 wells_path: str | os.PathLike, out_model: str | os.PathLike, *, fold: int = 0,
                 overrides: dict | None = None, resume: bool = True) -> Path:
    """Train ``spec``'s model on the ``train`` rows of ``fold``; best epoch on ``val``."""
    if not spec.get("trains"):
        raise MorphobenchError(f"method {spec.get('name')!r} does not train")
    params = {**spec["params"], **(overrides or {})}
    cfg, model_kwargs = split_params(params)
    split = read_split(split_path, fold, spec.get("split"))
    wells = read_table(wells_path, what="plate map")
    rows = crop_rows(crops_index, split, wells)
    if cfg.train_groups:
        rows = _restrict_groups(rows, cfg, spec["name"])
    train_rows = rows[rows["split"].isin(cfg.train_splits)]
    if train_rows.empty:
        raise MorphobenchError(f"{spec['name']}: no crops in splits {list(cfg.train_splits)} of fold {fold} "
                               f"({crops_index}, {split_path})")
    vocab = make_vocab(train_rows, rows, cfg.group_col)
    train_set = CropSet(encode(train_rows, vocab), cfg.channels, cfg.cache_mb)
    val_set = CropSet(encode(rows[rows["split"] == "val"], vocab), cfg.channels, cfg.cache_mb)
    log.info("%s: %d training crops (%d treatments), %d validation crops, channels %s", spec["name"],
             len(train_set), len(vocab.treatments), len(val_set), train_set.channels)
    model = build_model(spec["model"], model_kwargs, in_chans=len(train_set.channels), vocab=vocab, seed=cfg.seed)
    if hasattr(model, "setup_data"):
        model.setup_data(train_set.rows, vocab)
    if hasattr(model, "setup_validation") and len(val_set):
        model.setup_validation(val_set.rows)
    out_model = Path(out_model)
    digest = spec_digest(spec, {"overrides": overrides or {}, "fold": fold, "n_train": len(train_set)})
    res = fit(model, train_set, val_set, cfg, out_model.parent, spec_hash=digest, resume=resume)
    payload = {
        "spec": spec, "model": spec["model"], "model_kwargs": model_kwargs,
        "state_dict": res.state_dict, "vocab": vocab.to_dict(), "channels": train_set.channels,
        "augment": asdict(cfg.augment), "train_config": {k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in asdict(cfg).items()},
        "best_epoch": res.best_epoch, "best_value": res.best_value, "fold": fold,
        "versions": package_versions(("torch", "timm", "numpy")),
    }
    with atomic_path(out_model) as tmp:
        torch.save(payload, tmp)
    write_tsv(res.log, out_model.parent / "train_log.tsv")
    log.info("%s: best epoch %d (%s), wrote %s", spec["name"], res.best_epoch, res.best_value, out_model)
    return out_model


def _restrict_groups(rows, cfg: TrainConfig, name: str):
    """Only the rows of the variation groups ``cfg.train_groups`` (train and validation; TEAMs
    Table 3 trains on some groups and tests on all): unknown group names are an error."""
    if cfg.group_col not in rows.columns:
        raise MorphobenchError(f"{name}: train_groups needs the variation group column {cfg.group_col!r}")
    have = set(rows[cfg.group_col].astype(str))
    unknown = sorted(set(cfg.train_groups) - have)
    if unknown:
        raise MorphobenchError(f"{name}: train_groups {unknown} are not values of {cfg.group_col} "
                               f"(values: {sorted(have)})")
    keep = rows[cfg.group_col].astype(str).isin(cfg.train_groups)
    log.info("%s: training on groups %s of %s (%d of %d crops)", name, list(cfg.train_groups), cfg.group_col,
             int(keep.sum()), len(rows))
    return rows[keep].reset_index(drop=True)


def read_payload(path: str | os.PathLike) -> dict:
    """The dict of a ``model.pt`` written by :func:`train_method` (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise MorphobenchError(f"trained model not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise MorphobenchError(f"cannot read trained model {path}: {err}") from err


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode, payload) from a ``model.pt`` written by :func:`train_method`."""
    payload = read_payload(path)
    vocab = Vocab.from_dict(payload["vocab"])
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["train_config"].items()})
    model = build_model(payload["model"], payload["model_kwargs"], in_chans=len(payload["channels"]),
                        vocab=vocab, seed=cfg.seed)
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, payload
