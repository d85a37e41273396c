"""Reading sites from an image sheet (tifffile for TIFF, imageio for other formats).

Every image stage reads pixels through :func:`read_site`, which applies the plate's illumination
correction functions on the fly (``pixels / illum``), so no corrected copy of a screen is written.

Pixel values stay in the file's units (e.g. 16-bit counts) as float32; stages that need another
scale (CellProfiler features use [0, 1] = counts / 65535) rescale explicitly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from morphobench.data.tables import (
    SITE_KEYS,
    filename_col,
    pathname_col,
    sheet_channels,
    validate_image_sheet,
)
from morphobench.images.cp_worker import TiffCodecError, read_tiff
from morphobench.io import MorphobenchError, atomic_path, load_json_arg, read_table

TIFF_SUFFIXES = (".tif", ".tiff")


# --------------------------------------------------------------------------------------------
# Image sheet
# --------------------------------------------------------------------------------------------
def load_sheet(path: str | os.PathLike, plate: str | None = None) -> pd.DataFrame:
    """Read and validate an image sheet; with ``plate``, keep that plate's sites (sorted).

    Relative ``PathName_Orig*`` entries are resolved against the sheet's directory's parent
    chain only when they do not exist relative to the working directory (see :func:`site_paths`).
    """
    sheet = read_table(path, what="image sheet")
    validate_image_sheet(sheet, str(path))
    sheet.attrs["source"] = str(path)
    if plate is not None:
        sheet = plate_rows(sheet, plate, source=str(path))
    return sheet


def plate_rows(sheet: pd.DataFrame, plate: str, source: str = "<image sheet>") -> pd.DataFrame:
    """Rows of one plate, sorted by the site keys (deterministic site order)."""
    rows = sheet[sheet["Metadata_Plate"].astype(str) == str(plate)]
    if rows.empty:
        plates = sorted(sheet["Metadata_Plate"].astype(str).unique())[:10]
        raise MorphobenchError(f"image sheet {source}: plate {plate!r} not found (plates: {plates})")
    rows = rows.sort_values(list(SITE_KEYS), kind="stable").reset_index(drop=True)
    rows.attrs.update(sheet.attrs)
    return rows


def site_meta(row: Mapping[str, Any] | pd.Series) -> dict[str, Any]:
    """The ``Metadata_*`` site keys of a sheet row as a plain dict."""
    return {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in SITE_KEYS}


def site_label(row: Mapping[str, Any] | pd.Series) -> str:
    return "/".join(str(row[k]) for k in SITE_KEYS[2:])


def site_paths(row: Mapping[str, Any] | pd.Series, channels: Sequence[str],
               root: str | os.PathLike | None = None) -> list[Path]:
    """File path of each channel of one site (``PathName_Orig<Ch>/FileName_Orig<Ch>``).

    A relative ``PathName`` is taken relative to ``root`` when given, else to the working
    directory (Snakemake runs rules from the workflow directory).
    """
    out = []
    for ch in channels:
        try:
            d, f = row[pathname_col(ch)], row[filename_col(ch)]
        except KeyError as err:
            raise MorphobenchError(f"image sheet has no column for channel {ch!r} ({err})") from None
        p = Path(str(d)) / str(f)
        if root is not None and not p.is_absolute():
            p = Path(root) / p
        out.append(p)
    return out


# --------------------------------------------------------------------------------------------
# Single images
# --------------------------------------------------------------------------------------------
def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one 2-D image; errors name the file (missing, truncated, not 2-D, or a TIFF
    compression without a decoder, named: LZW, Deflate, ZSTD … need ``imagecodecs``)."""
    path = Path(path)
    if not path.exists():
        raise MorphobenchError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:

            img = read_tiff(str(path))
        else:
            import imageio.v3 as iio

            img = iio.imread(path)
    except TiffCodecError as err:  # a compression without a decoder here: name it
        raise MorphobenchError(f"cannot read image {path}: {err}") from err
    except Exception as err:
        raise MorphobenchError(f"cannot read image {path}: {type(err).__name__}: {err} "
                               "(truncated or corrupt file?)") from err
    img = np.asarray(img)
    if img.size == 0:
        raise MorphobenchError(f"cannot read image {path}: no pixel data (truncated or corrupt file?)")
    if img.ndim == 3 and 1 in (img.shape[0], img.shape[-1]):
        img = img.reshape(img.shape[:-1] if img.shape[-1] == 1 else img.shape[1:])
    if img.ndim != 2:
        raise MorphobenchError(f"image {path}: expected a single 2-D plane, got shape {img.shape}")
    return img


def read_site(row: Mapping[str, Any] | pd.Series, channels: Sequence[str] | None = None,
              illum: IllumFunctions | Mapping[str, np.ndarray] | None = None,
              root: str | os.PathLike | None = None) -> np.ndarray:
    """Read one site as a ``(C, H, W)`` float32 array, illumination-corrected when ``illum`` given.

    Parameters
    ----------
    row : image sheet row (``FileName_Orig<Ch>``, ``PathName_Orig<Ch>``, ``Metadata_*``).
    channels : channel names in the order wanted; default: every channel of the row, canonical order.
    illum : per-channel illumination functions (:class:`IllumFunctions` or a dict channel → array);
        each plane is divided by its function (all functions are ≥ 1).
    root : directory relative ``PathName`` entries are resolved against.

    Raises
    ------
    MorphobenchError naming the file for a missing / unreadable image or when the channels of the
    site have different shapes or do not match the illumination function's shape.
    """
    if channels is None:
        channels = sheet_channels(pd.DataFrame([dict(row)]))
    paths = site_paths(row, channels, root)
    planes = [read_image(p) for p in paths]
    shapes = {p.name: pl.shape for p, pl in zip(paths, planes, strict=True)}
    if len(set(shapes.values())) > 1:
        raise MorphobenchError(f"site {site_label(row)}: channel images differ in shape: "
                               + ", ".join(f"{paths[i]} {planes[i].shape}" for i in range(len(paths))))
    out = np.stack(planes).astype(np.float32, copy=False)
    if illum is not None:
        apply_illum(out, channels, illum, where=lambda: f"site {site_label(row)}", files=paths)
    return out


def apply_illum(img: np.ndarray, channels: Sequence[str],
                illum: IllumFunctions | Mapping[str, np.ndarray], where: str | Callable[[], str] = "image",
                files: Sequence[str | os.PathLike] | None = None) -> np.ndarray:
    """Divide each plane of ``img`` (C, H, W; float, in place) by its channel's illumination
    function; errors name the channel and (with ``files``) the image file. ``where`` (or a
    callable giving it, evaluated only for an error message) says which site."""
    for i, ch in enumerate(channels):
        f = illum[ch] if ch in illum else None
        if f is None:
            raise MorphobenchError(f"illumination functions have no channel {ch!r} "
                                   f"(have {list(illum.keys())})")
        if f.shape != img.shape[1:]:
            what = f"image {files[i]}" if files is not None else f"channel {ch}"
            place = where() if callable(where) else where
            raise MorphobenchError(f"{place}: {what} has shape {img.shape[1:]} but the "
                                   f"illumination function for {ch} has shape {f.shape}")
        img[i] /= f
    return img


def blank_channels(img: np.ndarray, channels: Sequence[str], eps: float = 0.0) -> list[str]:
    """Channels whose plane is constant (e.g. all zero) — QC flag, not an error."""
    return [ch for ch, pl in zip(channels, img, strict=True) if float(pl.max() - pl.min()) <= eps]


# --------------------------------------------------------------------------------------------
# Illumination functions file
# --------------------------------------------------------------------------------------------
@dataclass
class IllumFunctions(Mapping):
    """Per-channel illumination functions of one plate (float32, ≥ 1), read-only mapping."""

    functions: dict[str, np.ndarray]
    plate: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, ch: str) -> np.ndarray:
        return self.functions[ch]

    def __iter__(self):
        return iter(self.functions)

    def __len__(self) -> int:
        return len(self.functions)

    @property
    def channels(self) -> list[str]:
        return list(self.functions)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` (one float32 array per channel + ``__meta__`` JSON) atomically."""
        path = Path(path)
        meta = {"plate": self.plate, "channels": self.channels, **self.meta}
        arrays = {"__meta__": np.array(json.dumps(meta, default=str, sort_keys=True)),
                  **{ch: np.ascontiguousarray(f, dtype=np.float32) for ch, f in self.functions.items()}}
        with atomic_path(path) as tmp:
            _write_npz(tmp, arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> IllumFunctions:
        path = Path(path)
        if not path.exists():
            raise MorphobenchError(f"illumination functions not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                funcs = {ch: z[ch].astype(np.float32) for ch in meta["channels"]}
        except Exception as err:
            raise MorphobenchError(f"cannot read illumination functions {path}: {err}") from err
        return cls(funcs, plate=meta.pop("plate", ""), meta=meta)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so equal inputs give equal bytes."""
    import io as _io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = _io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def load_illum(path: str | os.PathLike | None) -> IllumFunctions | None:
    return None if path is None else IllumFunctions.load(path)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------
def params_from(cls, params: Mapping[str, Any] | str | None = None, *,
                presets: Mapping[str, Mapping[str, Any]] | None = None, **overrides):
    """Build a params dataclass from defaults + a dict / JSON string / ``@file.json``.

    With ``presets``, a ``preset`` key names the entry applied first (other keys override it).
    Unknown keys or presets raise :class:`MorphobenchError` listing the allowed ones.
    """
    if isinstance(params, str):
        params = load_json_arg(params, "--params")
    merged = dict(params or {})
    merged.update(overrides)
    if presets is not None and "preset" in merged:
        name = merged.pop("preset")
        if name not in presets:
            raise MorphobenchError(f"{cls.__name__}: unknown preset {name!r}; choose {sorted(presets)}")
        merged = {**presets[name], **merged}
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(merged) - names)
    if unknown:
        raise MorphobenchError(f"{cls.__name__}: unknown parameter(s) {unknown}; allowed {sorted(names)}")
    for k, v in list(merged.items()):
        if isinstance(v, list):
            merged[k] = tuple(v)
    return cls(**merged)
