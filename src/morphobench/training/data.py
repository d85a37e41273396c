"""Training data: crop rows of a split, a dataset over the crop stores, batch augmentations and
samplers.

* :func:`crop_rows` joins a crop index (``results/{dataset}/crops/{kind}/index.parquet``) with a
  split table and the plate map, and adds integer ``label`` (treatment), ``group`` (variation
  group, a ``Metadata_`` column) and ``plate`` codes.
* :class:`CropSet` reads crops from the chunked zarr stores shard by shard through a bounded LRU
  cache (``cache_mb``), or one chunk per crop when the shards do not fit; stores are never
  required to fit in memory. :func:`load_batch` stacks a batch.
* :func:`augment` works on a whole uint8 batch: random crop (or centre crop at evaluation),
  random flips and 90° rotations (the 8 symmetries of the square, per sample), then per-image,
  per-channel self-standardization (``normalize: self``), or scaling to [0, 1] (``unit``).
* Samplers yield lists of row positions; each is a pure function of (seed, epoch), so an epoch is
  reproducible after a resume: :class:`RandomBatches`, :class:`PairBatches` (batches of
  same-treatment pairs, treatments drawn in balanced rounds) and :class:`PlateBatches` (every batch
  from one plate: AdaBN, TEAMs' per-plate statistics).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from morphobench.data.tables import WELL_KEYS
from morphobench.io import MorphobenchError, read_table
from morphobench.models.layers import self_standardize
from morphobench.training.config import SAMPLERS


# ------------------------------------------------------------------------------------------------
# Rows and labels
# ------------------------------------------------------------------------------------------------
@dataclass
class Vocab:
    """Integer codes of treatments, variation groups and plates (saved in every checkpoint)."""

    treatments: list[str]
    groups: list[str]
    plates: list[str]
    group_col: str

    def to_dict(self) -> dict:
        return {"treatments": self.treatments, "groups": self.groups, "plates": self.plates,
                "group_col": self.group_col}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(list(d["treatments"]), list(d["groups"]), list(d["plates"]), d["group_col"])


def index_rows(index: str | os.PathLike) -> pd.DataFrame:
    """The rows of a crop index parquet with ``Crop_Base`` (the directory its stores are relative to)."""
    idx = read_table(index, what="crop index").reset_index(drop=True)
    idx["Crop_Base"] = str(Path(index).parent)
    return idx


def crop_rows(index: str | os.PathLike, split: pd.DataFrame, wells: pd.DataFrame | None = None) -> pd.DataFrame:
    """Crop index rows with their well's ``split`` (one fold of a split table) and plate-map
    metadata; wells absent from the split are an error (never silently dropped)."""
    idx = index_rows(index)
    keys = list(WELL_KEYS)
    lab = split[keys + ["split"]]
    rows = idx.merge(lab, on=keys, how="left", validate="many_to_one")
    if rows["split"].isna().any():
        miss = rows.loc[rows["split"].isna(), keys].drop_duplicates().head(3).to_dict("records")
        raise MorphobenchError(f"{index}: crops of wells that are not in the split table, e.g. {miss}")
    if wells is not None:
        extra = [c for c in wells.columns if c.startswith("Metadata_") and c not in rows.columns]
        rows = rows.merge(wells[keys + extra], on=keys, how="left", validate="many_to_one")
    return rows


def make_vocab(train_rows: pd.DataFrame, all_rows: pd.DataFrame, group_col: str) -> Vocab:
    """Treatments of the training rows; groups and plates of every row."""
    if group_col not in all_rows.columns:
        raise MorphobenchError(f"variation group column {group_col!r} not in the crop/plate-map columns "
                               f"{[c for c in all_rows.columns if c.startswith('Metadata_')]}")
    return Vocab(sorted(train_rows["Metadata_Perturbation"].astype(str).unique()),
                 sorted(all_rows[group_col].astype(str).unique()),
                 sorted(all_rows["Metadata_Plate"].astype(str).unique()), group_col)


def encode(rows: pd.DataFrame, vocab: Vocab) -> pd.DataFrame:
    """Add ``label`` (−1: treatment not in the vocabulary), ``group`` and ``plate`` codes."""
    out = rows.reset_index(drop=True).copy()
    t = {n: i for i, n in enumerate(vocab.treatments)}
    g = {n: i for i, n in enumerate(vocab.groups)}
    p = {n: i for i, n in enumerate(vocab.plates)}
    out["label"] = out["Metadata_Perturbation"].astype(str).map(t).fillna(-1).astype(np.int64)
    out["group"] = out[vocab.group_col].astype(str).map(g).fillna(-1).astype(np.int64)
    out["plate"] = out["Metadata_Plate"].astype(str).map(p).fillna(-1).astype(np.int64)
    return out


# ------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------
class CropSet(torch.utils.data.Dataset):
    """Crops of ``rows`` (from :func:`crop_rows`/:func:`encode`), channels ``channels`` of the
    store (names; empty = all). Item ``i`` → dict(image uint8/float16 (C,S,S), label, group,
    plate, index).

    Reads go through the stores' shards: a missing crop's whole shard (64 crops by default) is
    read in one call and kept in an LRU cache of at most ``cache_mb`` MB, so once the shards in
    use fit the budget every later epoch reads from memory; when the crops of ``rows`` need more
    than the budget, each crop is read on its own (one chunk) and nothing is cached. Memory stays
    bounded by ``cache_mb`` whatever the dataset size."""

    def __init__(self, rows: pd.DataFrame, channels: Sequence[str] = (), cache_mb: float = 2048):
        self.rows = rows.reset_index(drop=True)
        self._arrays: dict[str, object] = {}
        self._paths = [str(Path(b) / r) for b, r in zip(self.rows.get("Crop_Base", pd.Series(dtype=str)),
                                                          self.rows.get("Crop_Store", pd.Series(dtype=str)),
                                                          strict=True)]
        self._crop_row = self.rows["Crop_Row"].to_numpy(np.int64) if len(self.rows) else np.zeros(0, np.int64)
        store_ch = list(self._array(0).attrs["channels"]) if len(self.rows) else list(channels)
        if channels:
            missing = [c for c in channels if c not in store_ch]
            if missing:
                raise MorphobenchError(f"channels {missing} not in the crop store {self._paths[0]} (has {store_ch})")
            self.channel_idx = [store_ch.index(c) for c in channels]
        else:
            self.channel_idx = list(range(len(store_ch)))
        self.channels = [store_ch[i] for i in self.channel_idx]
        self._all_channels = self.channel_idx == list(range(len(store_ch)))
        for col in ("label", "group", "plate"):
            if col not in self.rows:
                self.rows[col] = -1
        self._codes = self.rows[["label", "group", "plate"]].to_numpy(np.int64)
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._budget = int(cache_mb * 2**20)
        self._cached_bytes = 0
        self.cache_enabled = len(self.rows) > 0 and self._shard_bytes_needed() <= self._budget

    def _array(self, i: int):
        import zarr

        path = self._paths[i]
        if path not in self._arrays:
            if not Path(path).exists():
                raise MorphobenchError(f"crop store not found: {path}")
            self._arrays[path] = zarr.open_array(path, mode="r")
        return self._arrays[path]

    def _shard(self, arr) -> int:
        return int(arr.shards[0]) if getattr(arr, "shards", None) else 1

    def _shard_bytes_needed(self) -> int:
        total = 0
        df = pd.DataFrame({"p": self._paths, "r": self._crop_row})
        for path, grp in df.groupby("p", sort=False):
            arr = self._array(int(grp.index[0]))
            per = int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
            total += grp["r"].floordiv(self._shard(arr)).nunique() * self._shard(arr) * per
        return total

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int) -> np.ndarray:
        arr = self._array(i)
        r = int(self._crop_row[i])
        if self.cache_enabled:
            k = self._shard(arr)
            key = (self._paths[i], r // k)
            block = self._cache.get(key)
            if block is None:
                block = np.asarray(arr[key[1] * k:min(key[1] * k + k, arr.shape[0])])
                self._cache[key] = block
                self._cached_bytes += block.nbytes
                while self._cached_bytes > self._budget and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cached_bytes -= old.nbytes
            else:
                self._cache.move_to_end(key)
            crop = block[r - key[1] * k]
        else:
            crop = np.asarray(arr[r])  # one chunk: all channels of a crop
        return crop if self._all_channels else crop[self.channel_idx]

    def __getitem__(self, i: int) -> dict:
        lab, grp, pl = self._codes[i]
        return {"image": torch.from_numpy(np.ascontiguousarray(self.read(i))), "label": int(lab),
                "group": int(grp), "plate": int(pl), "index": int(i)}


def load_batch(ds: CropSet, idx: Sequence[int]) -> dict:
    """Stack the items ``idx`` of ``ds`` into a batch dict."""
    idx = [int(i) for i in idx]
    images = np.stack([ds.read(i) for i in idx]) if idx else np.zeros((0, len(ds.channels), 1, 1), np.uint8)
    codes = torch.from_numpy(ds._codes[idx])
    return {"image": torch.from_numpy(images), "label": codes[:, 0], "group": codes[:, 1],
            "plate": codes[:, 2], "index": torch.tensor(idx, dtype=torch.long)}


# ------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
    #: random flips (horizontal, vertical) in training
    flips: bool = True
    #: random multiples of 90° in training
    rot90: bool = True
    #: random crop of this edge length in training, centre crop at evaluation (None: full crop)
    crop_size: int | None = None
    #: "self" (per-image per-channel standardization), "unit" ([0, 1]) or "none"
    normalize: str = "self"


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None,
            train: bool = True) -> torch.Tensor:
    """Batch (B, C, H, W) → float batch, augmented when ``train`` (see :class:`AugmentConfig`)."""
    if cfg.normalize not in ("self", "unit", "none"):
        raise MorphobenchError(f"normalize must be self|unit|none, got {cfg.normalize!r}")
    x = _to_float(x) if cfg.normalize != "none" else x.float()
    b, _, h, w = x.shape
    if cfg.crop_size and (cfg.crop_size < h or cfg.crop_size < w):
        s = cfg.crop_size
        if s > min(h, w):
            raise MorphobenchError(f"crop_size {s} is larger than the crops ({h}×{w})")
        if train:
            ys = torch.randint(0, h - s + 1, (b,), generator=generator)
            xs = torch.randint(0, w - s + 1, (b,), generator=generator)
        else:
            ys = torch.full((b,), (h - s) // 2)
            xs = torch.full((b,), (w - s) // 2)
        iy = ys[:, None] + torch.arange(s)[None]  # (B, s)
        ix = xs[:, None] + torch.arange(s)[None]
        bi = torch.arange(b)[:, None, None]
        x = x.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2).contiguous()
    if train and (cfg.flips or cfg.rot90):
        if cfg.rot90:
            k = torch.randint(0, 4, (b,), generator=generator)
        elif cfg.flips:  # vertical flip = 180° rotation ∘ horizontal flip: {id, h, v, hv} uniform
            k = 2 * torch.randint(0, 2, (b,), generator=generator)
        else:
            k = torch.zeros(b, dtype=torch.long)
        f = torch.randint(0, 2, (b,), generator=generator) if cfg.flips else torch.zeros(b, dtype=torch.long)
        out = torch.empty_like(x)
        for kk in range(4):
            for ff in range(2):
                sel = (k == kk) & (f == ff)
                if sel.any():
                    y = x[sel]
                    if ff:
                        y = torch.flip(y, dims=(-1,))
                    out[sel] = torch.rot90(y, kk, dims=(-2, -1)) if kk else y
        x = out
    if cfg.normalize == "self":
        x = self_standardize(x)
    return x


# ------------------------------------------------------------------------------------------------
# Samplers: each epoch's batches are a function of (seed, epoch)
# ------------------------------------------------------------------------------------------------
def epoch_rng(seed: int, epoch: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, salt])


class RandomBatches:
    """Shuffled rows in batches of ``batch_size`` (last incomplete batch dropped if ``drop_last``)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, drop_last: bool = True):
        if n == 0:
            raise MorphobenchError("no training rows")
        self.n, self.batch_size, self.seed, self.drop_last = n, min(batch_size, n), seed, drop_last

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        perm = epoch_rng(self.seed, epoch).permutation(self.n)
        stop = self.n - self.n % self.batch_size if self.drop_last else self.n
        for i in range(0, stop, self.batch_size):
            yield perm[i:i + self.batch_size]

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


class PairBatches:
    """Batches of ``batch_size // 2`` same-treatment pairs (two different rows of one ``label``).

    Each epoch draws as many pairs as there are rows / 2; treatments are visited in shuffled
    rounds (each treatment with ≥ 2 rows once per round), so they are balanced whatever their
    cell counts. Rows with label −1 and treatments with a single row are never drawn."""

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0):
        labels = np.asarray(labels)
        if batch_size < 4 or batch_size % 2:
            raise MorphobenchError(f"pair batches need an even batch_size ≥ 4, got {batch_size}")
        groups = {int(lab): np.flatnonzero(labels == lab) for lab in np.unique(labels) if lab >= 0}
        self.groups = {k: v for k, v in groups.items() if len(v) >= 2}
        if len(self.groups) < 2:
            raise MorphobenchError("pair batches need ≥ 2 treatments with ≥ 2 rows each")
        self.pairs_per_batch = batch_size // 2
        self.n_pairs = max(self.pairs_per_batch, int(sum(len(v) for v in self.groups.values()) // 2))
        self.seed = seed

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        rng = epoch_rng(self.seed, epoch, 1)
        keys = np.array(sorted(self.groups))
        order: list[int] = []
        while len(order) < self.n_pairs:
            order.extend(keys[rng.permutation(len(keys))].tolist())
        order = order[: self.n_pairs - self.n_pairs % self.pairs_per_batch]
        for i in range(0, len(order), self.pairs_per_batch):
            batch = []
            for lab in order[i:i + self.pairs_per_batch]:
                batch.extend(rng.choice(self.groups[lab], 2, replace=False).tolist())
            yield np.asarray(batch)

    def __len__(self) -> int:
        return self.n_pairs // self.pairs_per_batch


class PlateBatches:
    """Every batch holds rows of one plate only (shuffled within the plate; plates interleaved in
    a shuffled order). Plates with fewer rows than ``min_batch`` contribute no batch."""

    def __init__(self, plates: Sequence[int], batch_size: int, seed: int = 0, min_batch: int = 2):
        plates = np.asarray(plates)
        self.by_plate = {int(p): np.flatnonzero(plates == p) for p in np.unique(plates)}
        self.batch_size, self.seed, self.min_batch = batch_size, seed, min_batch

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        rng = epoch_rng(self.seed, epoch, 2)
        chunks = []
        for p in sorted(self.by_plate):
            rows = self.by_plate[p][rng.permutation(len(self.by_plate[p]))]
            for i in range(0, len(rows), self.batch_size):
                c = rows[i:i + self.batch_size]
                if len(c) >= self.min_batch:
                    chunks.append(c)
        for j in rng.permutation(len(chunks)):
            yield chunks[j]

    def __len__(self) -> int:
        return sum(-(-len(v) // self.batch_size) for v in self.by_plate.values())


def make_sampler(kind: str, rows: pd.DataFrame, batch_size: int, seed: int):
    if kind == "random":
        return RandomBatches(len(rows), batch_size, seed)
    if kind == "pairs":
        return PairBatches(rows["label"].to_numpy(), batch_size, seed)
    if kind == "plate":
        return PlateBatches(rows["plate"].to_numpy(), batch_size, seed)
    raise MorphobenchError(f"unknown sampler {kind!r}; choose from {list(SAMPLERS)}")
