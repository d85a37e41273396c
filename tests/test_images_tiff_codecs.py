"""Every TIFF a microscope writes: compressed TIFFs (LZW, Deflate, ZSTD …) read back bit-exact in
both environments (morphobench's and the CellProfiler backend's); a compression without a decoder
is an error naming the codec and the file, never "truncated or corrupt". PNG and 8-/16-bit stay
covered."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from morphobench.images import cp_backend as cb
from morphobench.images.io import read_image
from morphobench.io import MorphobenchError

REPO = Path(__file__).resolve().parents[1]
#: tifffile compression names → what microscopes write (Deflate = zlib / Adobe Deflate)
CODECS = ("none", "lzw", "zlib", "adobe_deflate", "zstd", "packbits", "lzma")
REAL = REPO / "resources" / "stardist" / "img2d.tif"


def _pixels(dtype) -> np.ndarray:
    """Real nuclei (StarDist's img2d) when fetched, else a deterministic pattern; both dtypes
    span their range so the full bit depth is exercised."""
    if REAL.exists():
        base = tifffile.imread(REAL).astype(np.float64)
    else:
        y, x = np.mgrid[0:96, 0:112]
        base = np.sin(x / 7.0) * np.cos(y / 5.0) + np.random.default_rng(0).random((96, 112))
    base = (base - base.min()) / (base.max() - base.min())
    return np.round(base * np.iinfo(dtype).max).astype(dtype)


def _write(path: Path, img: np.ndarray, codec: str, predictor: bool = False) -> Path:
    kw = {} if codec == "none" else {"compression": codec}
    if predictor:
        kw["predictor"] = True
    tifffile.imwrite(path, img, **kw)
    return path


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
@pytest.mark.parametrize("codec", CODECS)
def test_compressed_tiffs_read_bit_exact(tmp_path, codec, dtype):
    img = _pixels(dtype)
    p = _write(tmp_path / f"x_{codec}.tif", img, codec)
    with tifffile.TiffFile(p) as t:  # the file really is compressed as asked
        assert (t.pages[0].compression == 1) == (codec == "none")
    out = read_image(p)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("codec", ["lzw", "zlib", "zstd"])
def test_horizontal_predictor(tmp_path, codec):
    img = _pixels(np.uint16)
    np.testing.assert_array_equal(read_image(_write(tmp_path / "p.tif", img, codec, predictor=True)), img)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_png(tmp_path, dtype):
    img = _pixels(dtype)
    iio.imwrite(tmp_path / "x.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), img)


def _patch_compression(src: Path, dst: Path, code: int) -> Path:
    """Copy of a TIFF whose Compression tag says ``code``."""
    raw = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as t:
        off = t.pages[0].tags["Compression"].valueoffset
    struct.pack_into("<H", raw, off, code)
    dst.write_bytes(bytes(raw))
    return dst


def test_unknown_codec_is_named(tmp_path):
    src = _write(tmp_path / "lzw.tif", _pixels(np.uint16), "lzw")
    bad = _patch_compression(src, tmp_path / "odd_codec.tif", 12345)
    with pytest.raises(MorphobenchError) as err:
        read_image(bad)
    msg = str(err.value)
    assert "odd_codec.tif" in msg and "12345" in msg and "compression" in msg
    assert "corrupt" not in msg


def test_missing_imagecodecs_is_named(tmp_path, monkeypatch):
    """Without imagecodecs tifffile cannot decode LZW: the error says so (codec + file + fix)."""
    import types

    import tifffile.tifffile as tt

    p = _write(tmp_path / "site_lzw.tif", _pixels(np.uint16), "lzw")
    monkeypatch.setattr(tt, "imagecodecs", types.SimpleNamespace())
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", tt.CompressionCodec(encode=False))
    with pytest.raises(MorphobenchError) as err:
        read_image(p)
    msg = str(err.value)
    assert "site_lzw.tif" in msg and "LZW" in msg and "imagecodecs" in msg
    assert "corrupt" not in msg


# --------------------------------------------------------------------------------------------
# The CellProfiler environment reads the same files (its worker has its own reader)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cp_python() -> Path:
    try:
        py = cb.resolve_python()
    except MorphobenchError as err:
        if os.environ.get("MORPHOBENCH_REQUIRE_CP") == "1":
            pytest.fail(f"MORPHOBENCH_REQUIRE_CP=1 but {err}")
        pytest.skip(f"CellProfiler environment absent: {err}")
    return py


_WORKER_READ = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import cp_worker
out = {}
for path in sys.argv[2:]:
    try:
        img, scale = cp_worker.read_image(path, with_scale=True)
        out[path] = {"sum": float(np.asarray(img, np.float64).sum() * scale), "max": float(img.max() * scale)}
    except cp_worker.WorkerError as err:
        out[path] = {"error": str(err), "file": err.file}
print(json.dumps(out))
"""


def test_cellprofiler_env_reads_compressed_tiffs(tmp_path, cp_python):
    img = _pixels(np.uint16)
    paths = [_write(tmp_path / f"x_{c}.tif", img, c) for c in CODECS]
    bad = _patch_compression(paths[1], tmp_path / "odd_codec.tif", 12345)
    out = subprocess.run([str(cp_python), "-c", _WORKER_READ, str(REPO / "src/morphobench/images"),
                          *map(str, paths), str(bad)], capture_output=True, text=True,
                         env=cb._worker_env(), check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for p in paths:  # CellProfiler scale (÷ 65535) undone: the file's counts, exactly
        assert res[str(p)]["sum"] == pytest.approx(float(img.astype(np.float64).sum()), rel=1e-6), p.name
        assert res[str(p)]["max"] == pytest.approx(float(img.max())), p.name
    assert "12345" in res[str(bad)]["error"] and res[str(bad)]["file"] == str(bad)
    assert "corrupt" not in res[str(bad)]["error"]
    assert cb.worker_versions(cp_python)["imagecodecs"] != "absent"
