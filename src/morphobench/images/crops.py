"""Single-cell crops and field tiles for model training/embedding.

Kinds (``CropParams.kind``):

- ``"cell"``: a ``size × size`` × all-channel crop centred on the nucleus (TEAMs: 128, Campfire:
  112). The centre is the nucleus centroid rounded to a pixel; if that pixel is not inside the
  nucleus (a concave nucleus), the nucleus pixel nearest to the centroid is used. The crop covers
  rows ``cy − size//2 … cy + size//2 − 1`` (same for x), so the object's centre pixel sits at
  ``(size//2, size//2)`` of the crop. Cells whose box leaves the image are skipped
  (``border="skip"``, default) or zero-padded (``border="pad"``).
- ``"tile"``: non-overlapping ``size × size`` tiles of the whole field, row-major (MAE: 256;
  64 tiles for a 2048² field; a 256² simulated field gives one tile). Partial tiles at the
  right/bottom edge are dropped.

Named presets: ``cell128`` (TEAMs), ``cell112`` (Campfire), ``tile256`` (MAE) — see :data:`PRESETS`.

Intensity scaling (``scaling``): ``"uint8"`` (default) maps each channel linearly from its
plate-wide ``percentiles`` (0.1 %, 99.9 % of illumination-corrected pixels, sampled from every
site) to 0…255 with clipping; the limits are stored in the store's attributes. ``"float16"``
stores the illumination-corrected intensities unchanged (file units) as float16.

Storage (one per plate, since jobs are per plate): a zarr v3 array ``N × C × size × size`` with one
chunk per crop (grouped into shards of ``shard_crops`` crops, so a random crop is read with one
ranged read of one chunk, never a whole plate), plus a parquet index with one row per crop:
``Metadata_*``, ``ImageNumber``, ``ObjectNumber`` (0 for tiles), ``Crop_Row`` (row in the store),
``Crop_CenterX/Y`` and ``Crop_X0/Y0`` (top-left corner in the field; may be negative with
padding), ``Crop_Store`` (store path relative to the index file's directory).

Dataset level: :func:`gather_crop_index` concatenates the per-plate indexes into one parquet
(``Crop_Store`` rewritten relative to the gathered index); :class:`CropDataset` opens any index
and returns ``(array C×H×W, index row)`` for item ``i`` in O(1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from morphobench.data.tables import SITE_KEYS, sheet_channels
from morphobench.images.io import IllumFunctions, read_site, site_label
from morphobench.images.segment import open_labels
from morphobench.io import MorphobenchError, atomic_path, progress, read_table, write_parquet

log = logging.getLogger("morphobench.images.crops")


@dataclass(frozen=True)
class CropParams:
    """Crop parameters."""

    #: "cell" (object-centred) or "tile" (non-overlapping field tiles)
    kind: str = "cell"
    #: crop / tile edge length (px)
    size: int = 128
    #: "skip" cells whose box leaves the field, or "pad" with zeros
    border: str = "skip"
    #: "uint8" (per-plate per-channel percentile scaling) or "float16" (raw, illum-corrected)
    scaling: str = "uint8"
    #: low/high percentiles for uint8 scaling
    percentiles: tuple[float, float] = (0.1, 99.9)
    #: pixels sampled per site and channel to estimate the percentiles
    percentile_samples: int = 20000
    #: channels stored, in this order (empty: every channel of the sheet, canonical order)
    channels: tuple[str, ...] = ()
    #: skip cells whose nucleus or cell touches the field border (in addition to ``border``)
    skip_border_objects: bool = False
    #: crops per zarr shard (one chunk per crop inside; 0 = no sharding, one file per crop)
    shard_crops: int = 64
    #: keep at most this many cells per well (seeded random subset; 0 = all)
    max_per_well: int = 0
    #: seed for pixel sampling and the per-well subset
    seed: int = 0


#: Named presets (paper settings); ``CropParams(**PRESETS[name])``.
PRESETS: dict[str, dict] = {
    "cell128": {"kind": "cell", "size": 128},  # TEAMs
    "cell112": {"kind": "cell", "size": 112},  # Campfire
    "tile256": {"kind": "tile", "size": 256},  # MAE
}


def preset_params(name: str, **overrides) -> CropParams:
    if name not in PRESETS:
        raise MorphobenchError(f"unknown crop kind {name!r}; presets {sorted(PRESETS)}")
    return CropParams(**{**PRESETS[name], **overrides})


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
def anchor_pixel(nuclei: np.ndarray, number: int, cx: float, cy: float) -> tuple[int, int]:
    """Pixel (y, x) the crop is centred on: the rounded centroid if inside the nucleus, else the
    nucleus pixel nearest to the centroid."""
    h, w = nuclei.shape
    y, x = int(round(cy)), int(round(cx))
    if 0 <= y < h and 0 <= x < w and nuclei[y, x] == number:
        return y, x
    ys, xs = np.nonzero(nuclei == number)
    if len(ys) == 0:
        raise MorphobenchError(f"object {number} not found in the label image")
    k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(ys[k]), int(xs[k])


def cut(img: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """``img[:, y0:y0+size, x0:x0+size]`` with zero padding outside the field."""
    c, h, w = img.shape
    out = np.zeros((c, size, size), img.dtype)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + size), min(w, x0 + size)
    if ye > ys and xe > xs:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = img[:, ys:ye, xs:xe]
    return out


def _keys(df: pd.DataFrame) -> pd.Series:
    """One string key per row from the site keys (``Source/Batch/Plate/Well/Site``)."""
    if not len(df):
        return pd.Series([], index=df.index, dtype=str)
    cols = [df[c].astype(str) for c in SITE_KEYS]   # vectorized (a row-wise join costs seconds per plate)
    out = cols[0]
    for col in cols[1:]:
        out = out + "/" + col
    return out


def add_anchors(objects: pd.DataFrame, nuclei_of) -> pd.DataFrame:
    """Add ``Crop_CenterY/X`` (the :func:`anchor_pixel` of every object); ``nuclei_of(site_key)``
    returns the site's nuclei label image. Objects without a centroid are dropped."""
    df = objects.dropna(subset=["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]).copy()
    df = df.reset_index(drop=True)
    cy = np.zeros(len(df), np.int64)
    cx = np.zeros(len(df), np.int64)
    if len(df):
        keys = _keys(df)
        num = df["ObjectNumber"].to_numpy()
        x, y = df["Nuclei_Location_Center_X"].to_numpy(), df["Nuclei_Location_Center_Y"].to_numpy()
        for key, idx in keys.groupby(keys, sort=False).groups.items():
            nuc = nuclei_of(key)
            for i in idx:
                cy[i], cx[i] = anchor_pixel(nuc, int(num[i]), x[i], y[i])
    df["Crop_CenterX"], df["Crop_CenterY"] = cx, cy
    return df


def plan_cell_crops(objects: pd.DataFrame, shape: tuple[int, int], params: CropParams) -> pd.DataFrame:
    """Eligible objects (rows of ``objects`` with ``Crop_CenterX/Y``, see :func:`add_anchors`):
    border policy, optional border-object exclusion and per-well cap applied."""
    h, w = shape
    s = params.size
    df = objects
    cx, cy = df["Crop_CenterX"].to_numpy(), df["Crop_CenterY"].to_numpy()
    inside = (cy - s // 2 >= 0) & (cy - s // 2 + s <= h) & (cx - s // 2 >= 0) & (cx - s // 2 + s <= w)
    if params.border == "skip":
        keep = inside
    elif params.border == "pad":
        keep = np.ones(len(df), bool)
    else:
        raise MorphobenchError(f"unknown border policy {params.border!r}; use skip|pad")
    if params.skip_border_objects:
        for col in ("Nuclei_TouchesBorder", "Cells_TouchesBorder"):
            if col in df:
                keep &= ~df[col].to_numpy(bool)
    df = df[keep]
    if params.max_per_well and len(df):
        rng = np.random.default_rng(params.seed)
        parts = []
        for _, g in df.groupby(["Metadata_Plate", "Metadata_Well"], sort=True):
            if len(g) > params.max_per_well:
                g = g.iloc[np.sort(rng.choice(len(g), params.max_per_well, replace=False))]
            parts.append(g)
        df = pd.concat(parts)
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------
def plate_percentiles(rows: pd.DataFrame, channels: Sequence[str], params: CropParams, *,
                      illum=None, root=None) -> np.ndarray:
    """(C, 2) per-channel low/high percentiles of the plate (pixels sampled from every site)."""
    rng = np.random.default_rng(params.seed)
    samples: list[list[np.ndarray]] = [[] for _ in channels]
    for _, row in progress(rows.iterrows(), total=len(rows), desc="crops: percentiles"):
        img = read_site(row, channels, illum=illum, root=root)
        flat = img.reshape(len(channels), -1)
        k = min(params.percentile_samples, flat.shape[1])
        idx = rng.choice(flat.shape[1], k, replace=False) if k < flat.shape[1] else slice(None)
        for c in range(len(channels)):
            samples[c].append(flat[c, idx])
    lims = np.array([np.percentile(np.concatenate(s), params.percentiles) for s in samples])
    lims[:, 1] = np.maximum(lims[:, 1], lims[:, 0] + 1e-6)
    return lims


def scale_uint8(img: np.ndarray, lims: np.ndarray) -> np.ndarray:
    lo, hi = lims[:, 0, None, None], lims[:, 1, None, None]
    return np.clip(np.rint((img - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _create_store(path: Path, n: int, c: int, size: int, dtype: str, params: CropParams):
    import zarr

    chunks = (1, c, size, size)
    shards = None
    if params.shard_crops and n > 0:
        shards = (min(params.shard_crops, n), c, size, size)
    return zarr.create_array(str(path), shape=(n, c, size, size), chunks=chunks, shards=shards,
                             dtype=dtype, fill_value=0, overwrite=True,
                             dimension_names=("crop", "channel", "y", "x"))


def run_crops(rows: pd.DataFrame, store_out: str | os.PathLike, index_out: str | os.PathLike,
              params: CropParams = CropParams(), *, objects: pd.DataFrame | None = None,
              labels: str | os.PathLike | None = None, illum: IllumFunctions | None = None,
              root=None) -> pd.DataFrame:
    """Write one plate's crop store + index. Cell crops need ``objects`` (segmentation object
    table) and ``labels`` (label store); tiles need neither. Returns the index."""
    channels = list(params.channels) or sheet_channels(rows)
    if params.kind not in ("cell", "tile"):
        raise MorphobenchError(f"unknown crop kind {params.kind!r}; use cell|tile")
    if params.scaling not in ("uint8", "float16"):
        raise MorphobenchError(f"unknown scaling {params.scaling!r}; use uint8|float16")
    s = params.size
    store_out, index_out = Path(store_out), Path(index_out)
    lims = (plate_percentiles(rows, channels, params, illum=illum, root=root)
            if params.scaling == "uint8" else None)
    dtype = "uint8" if params.scaling == "uint8" else "float16"

    site_key = _keys(rows).tolist()
    if params.kind == "cell":
        if objects is None or labels is None:
            raise MorphobenchError("cell crops need the object table and the label store")
        larr, lsites = open_labels(labels)
        lkey = _keys(lsites).tolist()
        lpos = {k: i for i, k in enumerate(lkey)}
        missing = [k for k in site_key if k not in lpos]
        if missing:
            raise MorphobenchError(f"label store {labels} lacks sites {missing[:3]} of the image sheet")
        objects = objects[_keys(objects).isin(set(site_key))]  # this plate's sites only
        anchored = add_anchors(objects, lambda k: np.asarray(larr[lpos[k], 0]))
        plan = plan_cell_crops(anchored, tuple(larr.shape[2:]), params)
        groups = dict(tuple(plan.groupby(_keys(plan), sort=False))) if len(plan) else {}
        n_total = len(plan)
    else:
        lpos, groups = {}, {}
        n_total = None  # known after reading the first site

    records: list[dict] = []
    with atomic_path(store_out, is_dir=True) as tmp:
        arr = None
        buf: list[np.ndarray] = []
        written = 0

        def flush(final=False):
            nonlocal written, buf
            step = params.shard_crops or 1
            while buf and (len(buf) >= step or final):
                take = buf[:step] if len(buf) >= step else buf
                arr[written:written + len(take)] = np.stack(take)
                written += len(take)
                buf = buf[len(take):]

        for i, (_, row) in enumerate(progress(rows.iterrows(), total=len(rows), desc=f"crops {params.kind}{s}")):
            key = site_key[i]
            if params.kind == "cell" and key not in groups:
                continue
            img = read_site(row, channels, illum=illum, root=root)
            h, w = img.shape[1:]
            if params.kind == "tile":
                ny, nx = h // s, w // s
                if n_total is None:
                    n_total = len(rows) * ny * nx
                    if n_total == 0:
                        raise MorphobenchError(f"tile size {s} is larger than the field ({h}×{w})")
                boxes = [(ty * s, tx * s, 0, ty * s + s // 2, tx * s + s // 2)
                         for ty in range(ny) for tx in range(nx)]
            else:
                if tuple(larr.shape[2:]) != (h, w):
                    raise MorphobenchError(f"site {site_label(row)}: labels {tuple(larr.shape[2:])} "
                                           f"vs image {(h, w)}")
                boxes = [(int(r.Crop_CenterY) - s // 2, int(r.Crop_CenterX) - s // 2, int(r.ObjectNumber),
                          int(r.Crop_CenterY), int(r.Crop_CenterX))
                         for r in groups[key].itertuples(index=False)]
            if arr is None:
                arr = _create_store(tmp, n_total, len(channels), s, dtype, params)
            data = scale_uint8(img, lims) if lims is not None else img.astype(np.float16)
            meta = {k: row[k] for k in SITE_KEYS}
            image_number = int(lpos[key]) + 1 if params.kind == "cell" else i + 1
            for y0, x0, on, cy, cx in boxes:
                buf.append(cut(data, y0, x0, s))
                records.append({**meta, "ImageNumber": image_number, "ObjectNumber": on,
                                "Crop_Row": len(records), "Crop_CenterX": cx, "Crop_CenterY": cy,
                                "Crop_X0": x0, "Crop_Y0": y0})
            flush()
        if arr is None:  # no eligible objects on the whole plate: empty store
            arr = _create_store(tmp, 0, len(channels), s, dtype, params)
        else:
            flush(final=True)
        if written != arr.shape[0]:
            raise MorphobenchError(f"internal: wrote {written} crops into a store of {arr.shape[0]}")
        arr.attrs.update({"channels": channels, "params": _json(asdict(params)),
                          "percentiles": None if lims is None else lims.tolist(),
                          "plate": str(rows["Metadata_Plate"].iloc[0])})
    index = pd.DataFrame.from_records(records, columns=list(SITE_KEYS) + [
        "ImageNumber", "ObjectNumber", "Crop_Row", "Crop_CenterX", "Crop_CenterY", "Crop_X0", "Crop_Y0"])
    for k in SITE_KEYS:
        index[k] = index[k].astype(rows[k].dtype)
    index["Crop_Store"] = os.path.relpath(store_out.resolve(), index_out.resolve().parent)
    write_parquet(index, index_out)
    return index


def _json(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# Dataset-level index and reading
# --------------------------------------------------------------------------------------------
def gather_crop_index(index_paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> pd.DataFrame:
    """Concatenate per-plate crop indexes into one dataset index (``Crop_Store`` re-based to
    ``out``'s directory; rows keep their per-store ``Crop_Row``)."""
    out = Path(out)
    parts = []
    for p in index_paths:
        p = Path(p)
        df = read_table(p, what="crop index")
        df["Crop_Store"] = [os.path.relpath((p.parent / s).resolve(), out.resolve().parent)
                            for s in df["Crop_Store"]]
        parts.append(df)
    if not parts:
        raise MorphobenchError("gather_crop_index: no per-plate indexes given")
    idx = pd.concat(parts, ignore_index=True)
    write_parquet(idx, out)
    return idx


class CropDataset:
    """Random access to the crops listed in a (per-plate or gathered) index parquet.

    ``ds[i]`` → ``(crop (C, S, S) numpy array, index row as dict)``; stores are opened lazily
    and cached; each access reads one chunk.
    """

    def __init__(self, index: str | os.PathLike | pd.DataFrame, base: str | os.PathLike | None = None):
        if isinstance(index, pd.DataFrame):
            self.index = index.reset_index(drop=True)
            self.base = Path(base or ".")
        else:
            self.index = read_table(index, what="crop index")
            self.base = Path(base) if base else Path(index).parent
        self._stores: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.index)

    def store(self, rel: str):
        import zarr

        if rel not in self._stores:
            path = self.base / rel
            if not path.exists():
                raise MorphobenchError(f"crop store not found: {path}")
            self._stores[rel] = zarr.open_array(str(path), mode="r")
        return self._stores[rel]

    @property
    def channels(self) -> list[str]:
        if not len(self.index):
            return []
        return list(self.store(self.index["Crop_Store"].iloc[0]).attrs["channels"])

    def __getitem__(self, i: int):
        rec = self.index.iloc[int(i)]
        arr = self.store(rec["Crop_Store"])
        return np.asarray(arr[int(rec["Crop_Row"])]), rec.to_dict()

