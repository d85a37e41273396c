"""Channel-set embeddings of the probe cells (Campfire §3.3–3.4, Fig. 3.4, Table 3.2).

A trained model whose class says ``channel_agnostic = True`` (its ``embed(image)`` accepts any
number and order of channels: Campfire, CA-MAE …) embeds the crops that hold the probe cells once
per configured channel set — the *same* crops each time, e.g. {DNA}, {Mito}, {AGP}, {DNA, AGP},
{DNA, Mito}, {DNA, AGP, Mito} and the held-out set {DNA, ER, RNA}. A model that is not channel
agnostic gets an empty table (its probes use its own embeddings only). Output rows carry the
embeddings' keys (``Metadata_*`` site keys, ``Metadata_ObjectNumber``, ``Metadata_Crop_X0/Y0``),
``Metadata_ChannelSet`` (channel names joined by ``+``), ``Metadata_Level`` (cell or tile) and
``emb_*`` columns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from morphobench.data.tables import SITE_KEYS
from morphobench.io import MorphobenchError, read_table, write_parquet

log = logging.getLogger("morphobench.evaluate.channel_sets")


def set_name(channels: Sequence[str]) -> str:
    return "+".join(channels)


def check_channel_sets(channel_sets: Sequence[Sequence[str]], where: str = "evaluate.campfire_probes.channel_sets"):
    sets = [list(map(str, s)) for s in channel_sets]
    for i, s in enumerate(sets):
        if not s or len(set(s)) != len(s):
            raise MorphobenchError(f"{where}[{i}]: a channel set is a non-empty list of distinct channel names, "
                                   f"got {s}")
    names = [set_name(s) for s in sets]
    if len(set(names)) != len(names):
        raise MorphobenchError(f"{where}: a channel set is listed twice ({names})")
    return sets


def _empty(level: str) -> pd.DataFrame:
    cols = [*SITE_KEYS, "Metadata_ObjectNumber", "Metadata_Crop_X0", "Metadata_Crop_Y0", "Metadata_ChannelSet",
            "Metadata_Level"]
    return pd.DataFrame({c: pd.Series(dtype=object if c in ("Metadata_ChannelSet", "Metadata_Level") else None)
                         for c in cols})


def channel_set_embeddings(model_path: str | os.PathLike, cells_path: str | os.PathLike,
                           crops_index: str | os.PathLike, channel_sets: Sequence[Sequence[str]],
                           out: str | os.PathLike, *, level: str, device: str = "auto",
                           batch_size: int = 64, name: str = "method") -> pd.DataFrame:
    """Embed the method's crops that hold the probe cells with every channel set (module docstring)."""
    from morphobench.embed.learned import crop_metadata, embed_crops
    from morphobench.evaluate.probes import cell_rows
    from morphobench.training.data import AugmentConfig, index_rows
    from morphobench.training.loop import resolve_device
    from morphobench.training.stage import load_trained

    sets = check_channel_sets(channel_sets)
    if level not in ("cell", "tile"):
        raise MorphobenchError(f"method {name}: channel sets need cell or tile crops, not {level!r} rows")
    dev = resolve_device(device)
    model, payload = load_trained(model_path, dev)
    if not getattr(model, "channel_agnostic", False):
        log.info("method %s: %s is not channel agnostic; no channel-set embeddings", name, type(model).__name__)
        write_parquet(_empty(level), out)
        return _empty(level)
    cells = read_table(cells_path, what="campfire probe cells")
    rows = index_rows(crops_index)
    meta = crop_metadata(rows)
    tile = None
    if level == "tile" and len(rows):
        from morphobench.training.data import CropSet

        tile = int(CropSet(rows.head(1))._array(0).shape[-1])
    hit = cell_rows(cells, meta, level, tile_size=tile, source=f"method {name} crops {crops_index}")
    need = np.unique(hit[np.isfinite(hit)].astype(int))
    if (~np.isfinite(hit)).any():
        log.warning("method %s: %d of %d probe cells are in none of its %s crops", name,
                    int((~np.isfinite(hit)).sum()), len(cells), level)
    if len(need) == 0:
        raise MorphobenchError(f"method {name}: none of the probe cells is in its crops {crops_index}")
    sub = rows.iloc[need].reset_index(drop=True)
    aug = AugmentConfig(**payload["augment"])
    parts = []
    for chans in sets:
        emb = embed_crops(model.embed, sub, chans, aug, batch_size=batch_size, device=dev,
                          desc=f"{name} {set_name(chans)}")
        emb.insert(len(SITE_KEYS) + 3, "Metadata_ChannelSet", set_name(chans))
        emb.insert(len(SITE_KEYS) + 4, "Metadata_Level", level)
        parts.append(emb)
    table = pd.concat(parts, ignore_index=True)
    write_parquet(table, out)
    log.info("method %s: %d crops × %d channel sets (%s), trained on %s", name, len(sub), len(sets),
             ", ".join(set_name(s) for s in sets), "+".join(payload["channels"]))
    return table
