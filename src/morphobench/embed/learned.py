"""Embedding crops (cells or tiles) of one plate with a network: trained methods and timm models.

Crops are read from the plate's crop store in index order, normalized as in training (evaluation
mode: centre crop when the model trained on random crops, no flips), and embedded in batches
under ``torch.no_grad()``. Rows: the crop's ``Metadata_*`` site keys, ``Metadata_ObjectNumber``
(0 for tiles), ``Metadata_Crop_X0``/``Y0`` (position in the field) and ``emb_0000 …`` (float32).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

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


def embed_crops(fn: Callable[[torch.Tensor], torch.Tensor], crops_index: str | pd.DataFrame,
                channels: Sequence[str], augment_cfg, *, batch_size: int = 64, device: str | torch.device = "cpu",
                desc: str = "embed") -> pd.DataFrame:
    """Apply ``fn`` (B, C, H, W) → (B, D) to every crop of ``crops_index`` (a crop index parquet, or
    index rows with ``Crop_Base`` as :func:`morphobench.training.data.index_rows` returns them, e.g.
    a subset); rows as in the module doc."""
    from morphobench.training.data import CropSet, augment, index_rows, load_batch

    rows = crops_index.reset_index(drop=True) if isinstance(crops_index, pd.DataFrame) else index_rows(crops_index)
    source = f"{len(rows)} given crops" if isinstance(crops_index, pd.DataFrame) else str(crops_index)
    ds = CropSet(rows, channels)
    n = len(ds)
    chunks: list[np.ndarray] = []
    with torch.no_grad():
        for i in progress(range(0, n, batch_size), total=-(-n // batch_size), desc=desc):
            batch = load_batch(ds, range(i, min(i + batch_size, n)))
            x = augment(batch["image"], augment_cfg, train=False).to(device)
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


def embed_trained(spec: dict, plate: str, inputs) -> pd.DataFrame:
    """A trained method: its ``model.pt`` applied to the plate's crops (``model.embed``)."""
    from morphobench.training.data import AugmentConfig
    from morphobench.training.loop import resolve_device
    from morphobench.training.stage import load_trained

    if not inputs.model or not inputs.crops:
        raise MorphobenchError(f"{spec['name']}: embedding needs the trained model and the plate's crop index")
    device = resolve_device(inputs.device)
    model, payload = load_trained(inputs.model, device)
    aug = AugmentConfig(**payload["augment"])
    bs = int(spec["params"].get("embed_batch_size", spec["params"].get("batch_size", 64)))
    return embed_crops(model.embed, inputs.crops, payload["channels"], aug, batch_size=bs, device=device,
                       desc=f"{spec['name']} {plate}")
