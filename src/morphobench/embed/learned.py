"""Embedding crops (cells or tiles) of one plate with a network: trained methods and timm models.

Crops are read from the plate's crop store in index order, normalized as in training (evaluation
mode: centre crop when the model trained on random crops, no flips), and embedded in batches
under ``torch.no_grad()``. Rows: the crop's ``Metadata_*`` site keys, ``Metadata_ObjectNumber``
(0 for tiles), ``Metadata_Crop_X0``/``Y0`` (position in the field) and ``emb_0000 …`` (float32).

Trained methods (:func:`embed_trained`) take two more method parameters:

``pretrained``   a ``model.pt`` to embed with instead of ``results/{dataset}/models/{method}/model.pt``
    (e.g. a model trained on another screen; the embed rule then needs no training on this one).
``channel_map``  which of the screen's channels feed the model (MAE-CVPR Table 4: JUMP's stains
    mapped onto a model trained on other channels). ``None`` (default): the model's own training
    channels, by name. A mapping ``{model channel: screen channel}`` (channels not named keep their
    name; one screen channel may feed several model channels — "duplicating one where the model
    expects more"). A list of screen channels: fed in that order — as many as the model has, or any
    number for a channel-agnostic model (``model.channel_agnostic``, e.g. CA-MAE). ``all``: every
    channel of the screen's crop store as it is (channel-agnostic models only).

A model may define ``adapt(batches)``: it is called with all of the plate's (normalized) crops
before they are embedded — AdaBN re-estimates its batch-norm statistics on the plate there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from morphobench.data.tables import SITE_KEYS
from morphobench.io import MorphobenchError, progress

log = logging.getLogger("morphobench.embed.learned")


def crop_metadata(rows: pd.DataFrame) -> pd.DataFrame:
    meta = rows[list(SITE_KEYS)].reset_index(drop=True).copy()
    meta["Metadata_ObjectNumber"] = rows["ObjectNumber"].to_numpy(np.int64)
    meta["Metadata_Crop_X0"] = rows["Crop_X0"].to_numpy(np.int64)
    meta["Metadata_Crop_Y0"] = rows["Crop_Y0"].to_numpy(np.int64)
    return meta


def _rows(crops_index: str | pd.DataFrame) -> pd.DataFrame:
    from morphobench.training.data import index_rows

    return crops_index.reset_index(drop=True) if isinstance(crops_index, pd.DataFrame) else index_rows(crops_index)


def crop_batches(crops_index: str | pd.DataFrame, channels: Sequence[str], augment_cfg, *, batch_size: int = 64,
                 device: str | torch.device = "cpu", desc: str | None = None) -> Iterator[torch.Tensor]:
    """The crops of ``crops_index`` (a crop index parquet, or index rows with ``Crop_Base`` as
    :func:`morphobench.training.data.index_rows` returns them, e.g. a subset; channels
    ``channels``, in index order) as normalized evaluation-mode batches (B, C, H, W) on ``device``."""
    from morphobench.training.data import CropSet, augment, load_batch

    ds = CropSet(_rows(crops_index), channels)
    n = len(ds)
    starts = range(0, n, batch_size)
    it = progress(starts, total=len(starts), desc=desc) if desc else starts
    for i in it:
        batch = load_batch(ds, range(i, min(i + batch_size, n)))
        yield augment(batch["image"], augment_cfg, train=False).to(device)


def embed_crops(fn: Callable[[torch.Tensor], torch.Tensor], crops_index: str | pd.DataFrame,
                channels: Sequence[str], augment_cfg, *, batch_size: int = 64, device: str | torch.device = "cpu",
                desc: str = "embed") -> pd.DataFrame:
    """Apply ``fn`` (B, C, H, W) → (B, D) to every crop of ``crops_index`` (a parquet or index rows,
    as :func:`crop_batches`); rows as in the module doc."""
    rows = _rows(crops_index)
    source = f"{len(rows)} given crops" if isinstance(crops_index, pd.DataFrame) else str(crops_index)
    chunks: list[np.ndarray] = []
    with torch.no_grad():
        for x in crop_batches(rows, channels, augment_cfg, batch_size=batch_size, device=device, desc=desc):
            z = fn(x)
            if z.ndim != 2 or z.shape[0] != x.shape[0]:
                raise MorphobenchError(f"{desc}: embedding of shape {tuple(z.shape)} for a batch of {x.shape[0]}")
            chunks.append(z.float().cpu().numpy())
    if not chunks:
        log.warning("%s: %s holds no crops", desc, source)
        return crop_metadata(rows)
    emb = np.concatenate(chunks).astype(np.float32)
    if not np.isfinite(emb).all():
        raise MorphobenchError(f"{desc}: non-finite embeddings for {source}")
    feats = pd.DataFrame(emb, columns=[f"emb_{j:04d}" for j in range(emb.shape[1])])
    return pd.concat([crop_metadata(rows), feats], axis=1)


def map_channels(name: str, model_channels: Sequence[str], store_channels: Sequence[str], channel_map: Any,
                 agnostic: bool = False) -> list[str]:
    """The screen (crop-store) channels to feed a model trained on ``model_channels``, in order
    (``channel_map`` as in the module docstring); errors name the method and the parameter."""
    key = f"methods: {name}: channel_map"
    model_channels, store_channels = list(model_channels), list(store_channels)
    if channel_map is None:
        out = model_channels
    elif channel_map == "all":
        if not agnostic:
            raise MorphobenchError(f"{key}: 'all' needs a channel-agnostic model; {name} takes exactly "
                                   f"{model_channels}")
        out = store_channels
    elif isinstance(channel_map, Mapping):
        unknown = sorted(set(channel_map) - set(model_channels))
        if unknown:
            raise MorphobenchError(f"{key}: {unknown} are not channels of the model (it has {model_channels})")
        out = [str(channel_map.get(c, c)) for c in model_channels]
    elif isinstance(channel_map, (list, tuple)) and all(isinstance(c, str) for c in channel_map) and channel_map:
        out = list(channel_map)
        if not agnostic and len(out) != len(model_channels):
            raise MorphobenchError(f"{key}: {len(out)} channel(s) {out} for a model trained on "
                                   f"{len(model_channels)} {model_channels}")
    else:
        raise MorphobenchError(f"{key}: a mapping {{model channel: screen channel}}, a list of screen channels "
                               f"or 'all', got {channel_map!r}")
    missing = [c for c in out if c not in store_channels]
    if missing:
        raise MorphobenchError(f"{key}: channel(s) {missing} are not in the screen's crops {store_channels}; "
                               f"the model was trained on {model_channels}"
                               + ("" if channel_map is not None else " (map them with channel_map)"))
    return out


def embed_trained(spec: dict, plate: str, inputs) -> pd.DataFrame:
    """A trained method: its ``model.pt`` applied to the plate's crops (``model.embed``)."""
    from morphobench.training.data import AugmentConfig, CropSet, index_rows
    from morphobench.training.loop import resolve_device
    from morphobench.training.stage import load_trained

    if not inputs.model or not inputs.crops:
        raise MorphobenchError(f"{spec['name']}: embedding needs the trained model and the plate's crop index")
    device = resolve_device(inputs.device)
    model, payload = load_trained(inputs.model, device)
    aug = AugmentConfig(**payload["augment"])
    params = spec["params"]
    bs = int(params.get("embed_batch_size", params.get("batch_size", 64)))
    rows = index_rows(inputs.crops)
    store = CropSet(rows.head(1)).channels if len(rows) else list(payload["channels"])
    channels = map_channels(spec["name"], payload["channels"], store, params.get("channel_map"),
                            bool(getattr(model, "channel_agnostic", False)))
    if channels != list(payload["channels"]):
        log.info("%s %s: model channels %s fed from the screen's %s", spec["name"], plate, payload["channels"], channels)
    adapt = getattr(model, "adapt", None)
    if adapt is not None and len(rows):
        n = adapt(crop_batches(inputs.crops, channels, aug, batch_size=bs, device=device,
                               desc=f"{spec['name']} {plate} (adapt)"))
        if n:
            log.info("%s %s: adapted to the plate on %d crops", spec["name"], plate, n)
    return embed_crops(model.embed, inputs.crops, channels, aug, batch_size=bs, device=device,
                       desc=f"{spec['name']} {plate}")
