"""The ``cellprofiler`` image backend: illumination, segmentation and measurement by CellProfiler.

CellProfiler's library (``cellprofiler-library-nightly`` / ``-core-nightly`` 5.0.0.dev784) needs
numpy < 2 and scipy < 1.11, so it runs in its own environment (``envs/cellprofiler.yaml``, or the
venv made by ``workflow/scripts/setup_cellprofiler_env.sh``). This module is the driver in
morphobench's environment: it writes a request (TIFF paths + parameters, JSON), runs
:mod:`morphobench.images.cp_worker` with that environment's interpreter, and converts the worker's
outputs (``.npz`` arrays, CSV tables) into the formats of the in-process backend, atomically:

- :func:`run_illum_cp`    → the plate's illumination ``.npz`` (:class:`~morphobench.images.io.IllumFunctions`)
- :func:`run_segment_cp`  → the plate's zarr label store + object table (+ QC table), exactly the
  layout of :func:`morphobench.images.segment.run_segment`
- :func:`run_features_cp` → object-level CellProfiler features (parquet: ``Metadata_*`` site keys,
  ``ImageNumber``, ``ObjectNumber``, ``{Compartment}_{Category}_{Feature}[_{Channel}...]``), from
  any label store (so the CellProfiler measurements can also run on the in-process segmentation).

Downstream stages cannot tell which backend ran, except from the ``backend`` entry the outputs'
metadata carry.

Parameters are the in-process backend's (:class:`~morphobench.images.illum.IllumParams`,
:class:`~morphobench.images.segment.SegmentParams`, :class:`~morphobench.images.features.FeatureParams`,
presets included), translated to the CellProfiler module settings that do the same thing
(:func:`cp_illum_settings`, :func:`cp_segment_settings`, :func:`cp_measure_settings`);
``cp_settings`` overrides any translated setting with a CellProfiler-native one (e.g.
``regularization_factor`` or ``cells_method: "Watershed - Gradient"``). The command line is the
in-process one: ``python -m morphobench.images illum|segment|features --backend cellprofiler``.

The interpreter is, in order: the ``python`` argument, ``$MORPHOBENCH_CP_PYTHON``, the config key
``images.cellprofiler_python``, and ``.venv-cellprofiler/bin/python`` (relative paths are looked
up in the working directory, then in the repository root). With conda:
``conda env create -f envs/cellprofiler.yaml`` and point the key at that env's ``bin/python``.
The worker never sees this environment's packages (``PYTHONPATH`` etc. are removed for it).

Set ``MORPHOBENCH_CP_KEEP=1`` to keep the worker's scratch directory (request, raw outputs).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from morphobench.data.tables import SITE_KEYS, sheet_channels
from morphobench.images.cp_worker import SCALE_PER_SIGMA
from morphobench.images.illum import IllumParams, cp_median_radius, effective_median_size, save_illum_png
from morphobench.images.io import IllumFunctions, site_label, site_meta, site_paths
from morphobench.images.segment import (
    OBJECTS,
    LabelStoreWriter,
    SegmentParams,
    cell_foreground_channels,
    object_table,
    open_labels,
    write_segmentation_tables,
)
from morphobench.io import MorphobenchError, atomic_path, write_parquet

log = logging.getLogger("morphobench.images.cp_backend")

#: the worker script (runs in the CellProfiler environment)
WORKER = Path(__file__).with_name("cp_worker.py")
#: default interpreter of the CellProfiler environment
DEFAULT_PYTHON = ".venv-cellprofiler/bin/python"
#: protocol version spoken by driver and worker
PROTOCOL = 1
SETUP_HINT = ("create it with `bash workflow/scripts/setup_cellprofiler_env.sh` (a venv, ~1 min) or "
              "use conda (`envs/cellprofiler.yaml`), or point images.cellprofiler_python / "
              "$MORPHOBENCH_CP_PYTHON at its python")
_REPO = Path(__file__).resolve().parents[3]

_THRESHOLD_METHODS = {"otsu": "Otsu", "li": "Minimum Cross-Entropy"}
_DECLUMP = {"shape": "Shape", "intensity": "Intensity", "none": "None"}
#: in-process cell_method → (IdentifySecondaryObjects method, EnhanceEdges Sobel?, ImageMath Invert?)
_CELL_METHODS = {"propagation": ("Propagation", False, False),
                 "intensity": ("Watershed - Image", False, False),
                 "membrane": ("Watershed - Image", False, True),
                 "gradient": ("Watershed - Image", True, True),
                 "distance": ("Distance - B", False, False)}


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------
def resolve_python(python: str | os.PathLike | None = None, config: Mapping | None = None) -> Path:
    """The CellProfiler environment's interpreter; raises :class:`MorphobenchError` if absent."""
    cand = python or os.environ.get("MORPHOBENCH_CP_PYTHON")
    if not cand and config:
        cand = (config.get("images") or {}).get("cellprofiler_python")
    cand = Path(cand or DEFAULT_PYTHON).expanduser()
    tried = [cand] if cand.is_absolute() else [Path.cwd() / cand, _REPO / cand]
    for p in tried:
        if p.exists():
            return p.absolute()  # not resolve(): a venv's python is a symlink to the base one
    raise MorphobenchError(f"CellProfiler environment not found: no interpreter at "
                           f"{' or '.join(map(str, dict.fromkeys(tried)))}; {SETUP_HINT}")


@functools.lru_cache(maxsize=8)
def _versions(python: str) -> dict:
    try:
        out = subprocess.run([python, str(WORKER), "--version"], capture_output=True, text=True,
                             timeout=120, env=_worker_env())
    except (OSError, subprocess.TimeoutExpired) as err:
        raise MorphobenchError(f"CellProfiler environment {python} does not run: {err}; {SETUP_HINT}") from err
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise MorphobenchError(f"CellProfiler environment {python} is broken (worker --version exited "
                               f"{out.returncode}): {out.stderr.strip()[-800:]}; {SETUP_HINT}")
    info = json.loads(lines[-1])
    if info.get("cellprofiler-library-nightly", "absent") == "absent":
        raise MorphobenchError(f"{python} has no cellprofiler-library; {SETUP_HINT}")
    if info.get("protocol") != PROTOCOL:
        raise MorphobenchError(f"worker protocol {info.get('protocol')} != driver protocol {PROTOCOL}")
    return info


def worker_versions(python: str | os.PathLike | None = None) -> dict:
    """Versions of the CellProfiler environment (numpy, cellprofiler-library, …) as the worker sees them."""
    return dict(_versions(str(resolve_python(python))))


def available(python: str | os.PathLike | None = None) -> tuple[bool, str]:
    """``(True, versions)`` if the CellProfiler environment works, else ``(False, reason)``."""
    try:
        v = worker_versions(python)
    except MorphobenchError as err:
        return False, str(err)
    return True, json.dumps(v, sort_keys=True)


def _worker_env() -> dict:
    env = dict(os.environ)
    # the worker must see ONLY its own environment's packages (numpy<2), never ours
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX"):
        env.pop(k, None)
    env["PYTHONNOUSERSITE"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    return env


# --------------------------------------------------------------------------------------------
# Running the worker
# --------------------------------------------------------------------------------------------
def _abs(p: Path) -> str:
    return str(p if p.is_absolute() else (Path.cwd() / p))


def request_sites(rows: pd.DataFrame, channels: Sequence[str], root=None) -> list[dict]:
    """The ``sites`` entry of a worker request: absolute file paths per channel, sheet order."""
    out = []
    for _, row in rows.iterrows():
        paths = site_paths(row, channels, root)
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise MorphobenchError(f"site {site_label(row)}: image file(s) not found: {missing}")
        out.append({"paths": {ch: _abs(p) for ch, p in zip(channels, paths, strict=True)},
                    "site": site_label(row)})
    return out


def run_worker(task: str, sites: list[dict], channels: Sequence[str], params: Mapping[str, Any],
               workdir: str | os.PathLike, *, python: str | os.PathLike | None = None,
               illum: str | os.PathLike | None = None, labels: str | os.PathLike | None = None,
               timeout: float | None = None) -> dict:
    """Run one worker task in ``workdir`` (outputs land there); return its ``result.json``.

    Raises :class:`MorphobenchError` naming the file the worker failed on (from its
    ``error.json``) plus the end of its stderr.
    """
    py = resolve_python(python)
    _versions(str(py))  # clear error if the environment is broken
    workdir = Path(workdir)
    out_dir = workdir / task
    out_dir.mkdir(parents=True, exist_ok=True)
    req = {"protocol": PROTOCOL, "task": task, "channels": list(channels), "sites": sites,
           "illum": _abs(Path(illum)) if illum else None,
           "labels": _abs(Path(labels)) if labels else None,
           "params": dict(params), "out_dir": str(out_dir.absolute())}
    req_path = workdir / f"request_{task}.json"
    req_path.write_text(json.dumps(req, indent=1, default=_json_default))
    cmd = [str(py), str(WORKER), str(req_path.absolute())]
    log.info("cellprofiler %s: %d site(s) with %s", task, len(sites), py)
    returncode, tail = _stream(cmd, timeout, task)
    err_file = out_dir / "error.json"
    if returncode != 0 or err_file.exists():
        info = {}
        if err_file.exists():
            try:
                info = json.loads(err_file.read_text())
            except ValueError:
                pass
        where = f" [file: {info['file']}]" if info.get("file") else ""
        msg = info.get("message") or f"exit status {returncode}"
        tail = "\n".join(list(tail)[-15:])
        raise MorphobenchError(f"cellprofiler worker ({task}) failed: {info.get('error', 'Error')}: "
                               f"{msg}{where}\n--- worker stderr (end) ---\n{tail}")
    result = json.loads((out_dir / "result.json").read_text())
    log.info("cellprofiler %s: done in %.1f s", task, result.get("seconds", float("nan")))
    return result


def _stream(cmd: list[str], timeout: float | None, task: str) -> tuple[int, collections.deque]:
    """Run the worker; relay its ``progress:`` lines to the log as they come (long plates show
    progress in the rule's log); return ``(exit status, last output lines)``."""
    tail: collections.deque = collections.deque(maxlen=60)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_worker_env(), bufsize=1)
    timer = None
    timed_out = threading.Event()
    if timeout:
        def _kill():
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, _kill)
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("progress: "):
                log.info("cellprofiler %s", line[len("progress: "):])
            elif line.strip() and "image assets were not found" not in line:
                tail.append(line)
                log.debug("worker: %s", line)
        returncode = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if timed_out.is_set():
        raise MorphobenchError(f"cellprofiler worker ({task}) timed out after {timeout} s")
    return returncode, tail


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class _Workdir:
    """A scratch directory for one driver call (under $TMPDIR), removed afterwards unless
    ``$MORPHOBENCH_CP_KEEP=1`` (then its path is logged, for debugging)."""

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="morphobench-cp-"))
        return self.path

    def __exit__(self, *exc):
        if os.environ.get("MORPHOBENCH_CP_KEEP") == "1":
            log.warning("cellprofiler: keeping worker files in %s", self.path)
        else:
            shutil.rmtree(self.path, ignore_errors=True)
        return False


def _illum_file(illum, workdir: Path) -> str | None:
    """An illumination ``.npz`` the worker can read (the IllumFunctions file format is one)."""
    if illum is None:
        return None
    if isinstance(illum, IllumFunctions):
        return str(illum.save(workdir / "illum_in.npz"))
    if isinstance(illum, Mapping):
        return str(IllumFunctions(dict(illum)).save(workdir / "illum_in.npz"))
    p = Path(illum)
    if not p.exists():
        raise MorphobenchError(f"illumination functions not found: {p}")
    return _abs(p)


# --------------------------------------------------------------------------------------------
# Illumination
# --------------------------------------------------------------------------------------------
def cp_illum_settings(params: IllumParams, width: int, overrides: Mapping | None = None) -> dict:
    """CorrectIlluminationCalculate settings doing what :func:`illum.illum_function` does.

    Same downsampling; CellProfiler's median filter is a disk of radius
    ``int(size / 2.35 + 0.5)`` (its "smoothing filter size" ``size``), chosen here so the disk's
    diameter equals the in-process square window's side; rescaling "Yes" = divide by the 2nd
    percentile (CellProfiler's fixed robust minimum; ``robust_min_percentile`` must be 2).
    """
    if params.method == "cellprofiler":  # the JUMP pipeline: Resize, then CellProfiler's own filter size
        if abs(params.robust_min_percentile - 2.0) > 1e-9:
            raise MorphobenchError("CellProfiler's illumination rescaling uses the 2nd percentile; illum "
                                   f"robust_min_percentile={params.robust_min_percentile}")
        out = {"resize_factor": float(params.resize_factor), "smoothing_method": "Median Filter",
               "filter_size": int(params.filter_size), "rescale": "Yes", "skip_blank": True}
        out.update(overrides or {})
        return out
    if abs(params.robust_min_percentile - 2.0) > 1e-9:
        raise MorphobenchError("the cellprofiler backend's illumination rescaling uses the 2nd "
                               f"percentile; illum robust_min_percentile={params.robust_min_percentile}")
    side = effective_median_size(width, params)
    radius = max(1, (side - 1) // 2)
    size = round(2.35 * radius)
    while int(size / 2.35 + 0.5) < radius:
        size += 1
    while size > 1 and int(size / 2.35 + 0.5) > radius:
        size -= 1
    out = {"downsample": int(params.downsample), "smoothing_method": "Median Filter",
           "filter_size": int(size), "rescale": "Yes", "skip_blank": True}
    out.update(overrides or {})
    return out


def run_illum_cp(rows: pd.DataFrame, out: str | os.PathLike, params: IllumParams = IllumParams(), *,
                 png: str | os.PathLike | None = None, root=None, python=None,
                 cp_settings: Mapping | None = None, timeout: float | None = None) -> IllumFunctions:
    """Illumination functions of one plate by CellProfiler; writes ``out`` (.npz) (+ PNG).

    Same file format as :func:`morphobench.images.illum.run_illum`.
    """
    if rows.empty:
        raise MorphobenchError("illum (cellprofiler): no sites")
    channels = list(params.channels) or sheet_channels(rows)
    plate = str(rows["Metadata_Plate"].iloc[0])
    sites = request_sites(rows, channels, root)
    import tifffile

    first = sites[0]["paths"][channels[0]]
    try:
        width = int(tifffile.TiffFile(first).pages[0].shape[-1])
    except Exception:
        from morphobench.images.io import read_image

        width = read_image(first).shape[1]
    settings = cp_illum_settings(params, width, cp_settings)
    with _Workdir() as wd:
        res = run_worker("illum", sites, channels, settings, wd, python=python, timeout=timeout)
        with np.load(wd / "illum" / "illum.npz") as z:
            funcs = {ch: z[ch].astype(np.float32) for ch in channels}
        extra = json.loads((wd / "illum" / "illum.json").read_text())
    for rec in extra["skipped"]:
        log.warning("illum (cellprofiler): plate %s site %s channel %s: blank image (skipped)",
                    plate, sites[rec["site"]]["site"], rec["channel"])
    meta = {"backend": "cellprofiler", "params": asdict(params), "cp_settings": settings,
            "n_images": extra["n_images"],
            "median_size_used": (effective_median_size(width, params) if params.method != "cellprofiler"
                                 else 2 * cp_median_radius(params.filter_size) + 1),
            "qc": [{"site": sites[r["site"]]["site"], "channel": r["channel"], "issue": "blank image"}
                   for r in extra["skipped"]],
            "versions": res.get("versions", {})}
    funcs_obj = IllumFunctions(funcs, plate=plate, meta=meta)
    funcs_obj.save(out)
    if png:
        save_illum_png(funcs_obj, png)
    return funcs_obj


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------
def cp_segment_settings(params: SegmentParams, overrides: Mapping | None = None,
                        channels: Sequence[str] | None = None) -> dict:
    """IdentifyPrimaryObjects / IdentifySecondaryObjects settings doing what
    :func:`segment.segment_nuclei` / :func:`segment.segment_cells` do.

    Cells, as in the in-process backend: the foreground is a Threshold (``cell_threshold_method``
    × ``cell_threshold_correction``) of the composite ImageMath "Add" of the
    ``cell_foreground_channels`` (``channels``, when given, resolves the default "all but the
    nuclei channel"; otherwise the worker does, from the request's channels), each smoothed
    (σ ``cell_smooth_sigma``) and rescaled to its 1st–99.5th percentile; the nuclei are added and
    holes filled. IdentifySecondaryObjects then runs on ``cell_channel`` (GaussianFilter σ
    ``cell_watershed_sigma``) inside that foreground, ``cell_method`` mapped to:

    - ``propagation`` → Propagation, regularization factor = ``propagation_lambda``, on
      CellProfiler's [0, 1] intensities (the step costs differ in form — CellProfiler's
      √((Σ₃ₓ₃|Δ|)² + λ²·steps) against the in-process scaled gradient + λ·distance — but the
      results agree closely, below; rescaling the image as the in-process gradient is scaled
      agreed worse, r 0.75 on the synthetic plate);
    - ``intensity`` → Watershed - Image (CellProfiler floods ``1 − image``: borders where dim);
    - ``membrane`` → ImageMath Invert + Watershed - Image (floods the image: borders on bright
      membranes, as the in-process watershed on the smoothed image);
    - ``gradient`` → EnhanceEdges (Sobel) + ImageMath Invert + Watershed - Image (floods the
      Sobel magnitude, as the in-process backend; CellProfiler's own "Watershed - Gradient" takes
      the Sobel along x only);
    - ``distance`` → Distance - B (propagation with λ 1 inside the foreground, up to
      ``cell_max_distance``, else unlimited; "Distance - N" would ignore the foreground).

    ``cell_max_distance`` masks the foreground (distance to the nearest nucleus) for every method.
    Measured agreement of matched cells (synthetic test plate / 12 simulated-screen sites;
    area Pearson r, median IoU): propagation 0.98, 0.96 / 0.99, 0.98; intensity 0.98, 0.97 /
    0.95, 0.99; membrane 0.95, 0.98 / 1.00, 0.99; distance 0.98, 0.97 / 1.00, 0.99; gradient
    0.64, 0.97 / 0.90, 0.98 (CellProfiler's watersheds are 8-connected, the in-process ones 4-).

    ``overrides`` are worker settings (``cp_worker.SEGMENT_DEFAULTS`` names) applied last, plus
    one driver option, ``smoothing``:

    - ``"gaussian_filter"`` (default): GaussianFilter modules (σ = ``smooth_sigma``,
      ``cell_smooth_sigma`` per foreground channel, ``cell_watershed_sigma``) run before the
      threshold / Identify modules, whose threshold smoothing is off — threshold and watershed
      see the smoothed images, as in the in-process backend;
    - ``"threshold"``: CellProfiler's usual set-up, no GaussianFilter; the threshold modules'
      "threshold smoothing scale" = σ · 1.3488 (CellProfiler's default 1.3488 is σ 1): the
      threshold is computed on the raw image and only the binarised image is smoothed; the
      secondary objects grow on the unsmoothed cell channel.
    """
    if params.method == "cellprofiler":
        return _cp_settings_cellprofiler(params, overrides)
    overrides = dict(overrides or {})
    smoothing = overrides.pop("smoothing", "gaussian_filter")
    if smoothing not in ("gaussian_filter", "threshold"):
        raise MorphobenchError(f"cellprofiler smoothing {smoothing!r}: use 'gaussian_filter' or 'threshold'")
    tm = _THRESHOLD_METHODS.get(params.threshold_method)
    ctm = _THRESHOLD_METHODS.get(params.cell_threshold_method)
    if tm is None or ctm is None:
        raise MorphobenchError(f"the cellprofiler backend thresholds with {sorted(_THRESHOLD_METHODS)}; "
                               f"got {params.threshold_method!r} / {params.cell_threshold_method!r}")
    if params.declump not in _DECLUMP:
        raise MorphobenchError(f"unknown declump {params.declump!r}; use {sorted(_DECLUMP)}")
    if params.cell_method not in _CELL_METHODS:
        raise MorphobenchError(f"unknown cell_method {params.cell_method!r}; use {sorted(_CELL_METHODS)}")
    if params.compactness:
        log.warning("cellprofiler backend: watershed compactness %s has no CellProfiler setting; ignored",
                    params.compactness)
    if params.threshold_log:
        raise MorphobenchError("threshold_log is not supported by the cellprofiler backend's "
                               "IdentifyPrimaryObjects settings here; set it false")
    method, edges, invert = _CELL_METHODS[params.cell_method]
    fgc = (cell_foreground_channels(channels, params) if channels is not None
           else list(params.cell_foreground_channels) or None)
    lines = params.dividing_lines or params.declump
    s = {
        "nuclei_channel": params.nuclei_channel,
        "min_contrast": float(params.min_contrast),
        "min_diameter": int(round(params.min_diameter)),
        "max_diameter": int(round(params.max_diameter)),
        "threshold_method": tm,
        "threshold_smoothing_scale": params.smooth_sigma * SCALE_PER_SIGMA,
        "threshold_correction_factor": params.threshold_correction,
        "unclump_method": _DECLUMP[params.declump],
        "watershed_method": _DECLUMP.get(lines, "None") if params.declump != "none" else "None",
        "declump_smoothing_filter_size": (None if params.declump_sigma is None
                                          else max(1, int(round(params.declump_sigma * 2.35)))),
        "maxima_suppression_size": params.maxima_suppression,
        "exclude_border_objects": bool(params.exclude_border),
        "cells_channel": params.cell_channel,
        "cells_foreground_channels": fgc,
        "cells_foreground_percentiles": [1.0, 99.5],
        "cells_method": method,
        "cells_enhance_edges": edges,
        "cells_invert": invert,
        "regularization_factor": float(params.propagation_lambda),
        "cells_threshold_method": ctm,
        "cells_threshold_smoothing_scale": params.cell_smooth_sigma * SCALE_PER_SIGMA,
        "cells_threshold_correction_factor": params.cell_threshold_correction,
        "cells_max_distance": (None if params.cell_max_distance is None
                               else float(params.cell_max_distance)),
        # Distance - B without a limit in the in-process backend: dilate "as far as needed"
        "distance_to_dilate": int(params.cell_max_distance) if params.cell_max_distance is not None
        else 100000,
    }
    if smoothing == "gaussian_filter":
        s.update({"pre_smooth_sigma": float(params.smooth_sigma), "threshold_smoothing_scale": 0.0,
                  "cells_pre_smooth_sigma": float(params.cell_smooth_sigma),
                  "cells_threshold_smoothing_scale": 0.0,
                  "cells_watershed_sigma": float(params.cell_watershed_sigma)})
    s.update(overrides)
    return s


def _cp_settings_cellprofiler(params: SegmentParams, overrides: Mapping | None = None) -> dict:
    """Worker settings of ``method="cellprofiler"`` (the ``jump`` preset): CellProfiler's own
    modules with the very settings the in-process :mod:`~morphobench.images.identify` follows."""
    if params.cell_method != "intensity" or params.declump not in ("shape", "none"):
        raise MorphobenchError("segment method cellprofiler: use declump 'shape' and cell_method 'intensity'")
    tm = _THRESHOLD_METHODS.get(params.threshold_method)
    if tm is None:
        raise MorphobenchError(f"segment method cellprofiler: nuclei threshold {params.threshold_method!r}; "
                               f"use {sorted(_THRESHOLD_METHODS)}")
    if params.cell_threshold_method != "otsu":
        raise MorphobenchError("segment method cellprofiler: the cell threshold is Otsu (2 or 3 classes)")
    lines = params.dividing_lines or params.declump
    s = {
        "nuclei_channel": params.nuclei_channel, "min_contrast": float(params.min_contrast),
        "nuclei_background": ({"block_size": int(params.nuclei_background_block),
                               "filter_size": float(params.nuclei_background_filter)}
                              if params.nuclei_background_block else None),
        "pre_smooth_sigma": 0.0, "threshold_method": tm,
        "threshold_smoothing_scale": float(params.smooth_sigma) * SCALE_PER_SIGMA,
        "threshold_correction_factor": float(params.threshold_correction),
        "threshold_min": float(params.threshold_bounds[0]), "threshold_max": float(params.threshold_bounds[1]),
        "min_diameter": params.min_diameter, "max_diameter": params.max_diameter,
        "exclude_size": True, "exclude_border_objects": False,
        "unclump_method": _DECLUMP[params.declump],
        "watershed_method": _DECLUMP.get(lines, "None") if params.declump != "none" else "None",
        "declump_smoothing_filter_size": 10, "maxima_suppression_size": params.maxima_suppression,
        "low_res_maxima": False, "fill_holes": "After declumping only",
        "cells_channel": params.cell_channel, "cells_foreground_channels": [params.cell_channel],
        "cells_method": "Watershed - Image", "cells_threshold_mode": "module",
        "cells_threshold_method": "Multi-Otsu" if params.cell_threshold_classes == 3 else "Otsu",
        "cells_threshold_log": bool(params.cell_threshold_log),
        "cells_threshold_correction_factor": float(params.cell_threshold_correction),
        "cells_threshold_min": float(params.cell_threshold_bounds[0]),
        "cells_threshold_max": float(params.cell_threshold_bounds[1]),
        "cells_threshold_smoothing_scale": float(params.cell_smooth_sigma) * SCALE_PER_SIGMA,
        "cells_fill_holes": True, "discard_edge_cells": False,
        "filter_border_after_cells": bool(params.exclude_border),
    }
    s.update(overrides or {})
    return s


def run_segment_cp(rows: pd.DataFrame, labels_out: str | os.PathLike, objects_out: str | os.PathLike,
                   params: SegmentParams = SegmentParams(), *, illum=None,
                   qc_out: str | os.PathLike | None = None, root=None, python=None,
                   cp_settings: Mapping | None = None, timeout: float | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segment one plate with CellProfiler; write the label store, object table (and QC table).

    Outputs have exactly the layout of :func:`morphobench.images.segment.run_segment` (zarr
    ``sites × 2 (Nuclei, Cells) × H × W`` uint32 + attributes; object table from
    :func:`~morphobench.images.segment.object_table`); the store's attributes add
    ``backend: cellprofiler``, the CellProfiler settings and the environment's versions.
    Nothing is left behind on failure.
    """
    if rows.empty:
        raise MorphobenchError("segment (cellprofiler): no sites")
    channels = sheet_channels(rows)
    settings = cp_segment_settings(params, cp_settings, channels=channels)
    if not settings.get("cells_foreground_channels"):  # an override of None / []: all but nuclei
        settings["cells_foreground_channels"] = ([c for c in channels if c != settings["nuclei_channel"]]
                                                 or [settings["cells_channel"]])
    # the channels the in-process backend reads (nuclei, cell, cell foreground), in its order
    use = list(dict.fromkeys([settings["nuclei_channel"], settings["cells_channel"],
                              *settings["cells_foreground_channels"]]))
    for ch in use:
        if ch not in channels:
            raise MorphobenchError(f"segmentation channel {ch!r} not in the image sheet (has {channels})")
    sites = request_sites(rows, use, root)
    with _Workdir() as wd:
        res = run_worker("segment", sites, use, settings, wd, python=python,
                         illum=_illum_file(illum, wd), timeout=timeout)
        info = {d["site"]: d for d in res["sites"]}
        tables, qcs = [], []
        labels_out = Path(labels_out)
        with np.load(wd / "segment" / "labels.npz") as z, atomic_path(labels_out, is_dir=True) as tmp:
            store = LabelStoreWriter(tmp, len(rows))
            for i, (_, row) in enumerate(rows.iterrows()):
                nuc = z[f"s{i}_nuclei"].astype(np.uint32)
                cel = z[f"s{i}_cells"].astype(np.uint32)
                store.put(i, nuc, cel, row)
                meta = site_meta(row)
                d = info[i]
                blank = d.get("blank", [])
                if blank:
                    log.warning("segment (cellprofiler): site %s has blank channel(s) %s",
                                site_label(row), ",".join(blank))
                if d.get("low_contrast"):
                    log.warning("segment (cellprofiler): site %s: nuclei contrast %.2f < min_contrast %.2f "
                                "(noise only?): no objects", site_label(row), _num(d.get("contrast")),
                                params.min_contrast)
                scale = float(d.get("scale", 1.0))  # CellProfiler's nuclei threshold is on [0, 1]
                qcs.append({**meta, "ImageNumber": i + 1, "Count_Nuclei": int(nuc.max()),
                            "Count_Cells": int(len(np.unique(cel)) - 1),
                            "Threshold_Nuclei": _num(d.get("threshold_nuclei")) * scale,
                            # on the percentile-scaled composite: unit-free, as in-process
                            "Threshold_Cells": _num(d.get("threshold_cells")),
                            "QC_Blank": bool(blank), "QC_BlankChannels": ",".join(blank),
                            "Contrast_Nuclei": _num(d.get("contrast")),
                            "QC_LowContrast": bool(d.get("low_contrast", False))})
                tables.append(object_table(nuc, cel, meta, image_number=i + 1))
            qc_df = pd.DataFrame(qcs)
            store.finish({"objects": list(OBJECTS), "channels_used": use, "params": asdict(params),
                          "sites": _jsonable(qc_df), "backend": "cellprofiler",
                          "cp_settings": _jsonable_obj(settings),
                          "versions": res.get("versions", {})})
    return write_segmentation_tables(tables, qc_df, rows, objects_out, qc_out)


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _jsonable_obj(v):
    if isinstance(v, dict):
        return {k: _jsonable_obj(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable_obj(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _jsonable(df: pd.DataFrame) -> list[dict]:
    return [_jsonable_obj(rec) for rec in df.to_dict("records")]


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def labels_to_npz(labels_store: str | os.PathLike, rows: pd.DataFrame, path: Path) -> Path:
    """Write a plate label store's sites, in ``rows`` order, as the worker's labels ``.npz``."""
    arr, sites = open_labels(labels_store)
    keys = [k for k in SITE_KEYS if k in sites.columns]
    index = {tuple(str(v) for v in r): i for i, r in enumerate(sites[keys].itertuples(index=False))}
    out = {}
    for j, (_, row) in enumerate(rows.iterrows()):
        key = tuple(str(row[k]) for k in keys)
        if key not in index:
            raise MorphobenchError(f"label store {labels_store}: no labels for site {site_label(row)}")
        lab = np.asarray(arr[index[key]])
        if lab.max() > np.iinfo(np.int32).max:
            raise MorphobenchError(f"label store {labels_store}: object numbers beyond int32")
        out[f"s{j}_nuclei"] = lab[0].astype(np.int32)
        out[f"s{j}_cells"] = lab[1].astype(np.int32)
    np.savez(path, **out)
    return path


_CP_CORRELATIONS = {"pearson": "Correlation", "manders": "Manders", "rwc": "RWC", "overlap": "Overlap",
                    "costes": "Costes"}


def cp_measure_settings(params, overrides: Mapping | None = None) -> dict:
    """The worker's measurement settings (``cp_worker.MEASURE_DEFAULTS``) that measure what the
    in-process features (:class:`~morphobench.images.features.FeatureParams`) measure: the same
    compartments, groups, channels, texture scales and levels, granularity, radial bins,
    colocalization types and threshold, neighbour sets and cytoplasm definition."""
    from morphobench.images.features import feature_params, neighbor_sets

    if isinstance(params, Mapping):
        raw = dict(params)
        params = feature_params(raw.pop("preset", "full"), **raw)
    if params.radial_zernikes and "RadialDistribution" in params.groups:
        log.warning("cellprofiler backend: RadialDistribution Zernike moments are not measured by the "
                    "worker (JUMP measures none); set radial_zernikes false for equal feature sets")
    unknown = sorted(set(params.correlations) - set(_CP_CORRELATIONS))
    if unknown:
        raise MorphobenchError(f"unknown correlation measure(s) {unknown}; allowed {sorted(_CP_CORRELATIONS)}")
    s = {"compartments": list(params.compartments), "categories": list(params.groups),
         "channels": list(params.channels) or None, "zernike": bool(params.zernike),
         "advanced_shape": bool(params.advanced_shape),
         "texture_scales": [int(x) for x in params.texture_scales],
         "texture_gray_levels": int(params.texture_gray_levels),
         "granularity_spectrum_length": int(params.granularity_spectrum),
         "granularity_subsample_size": float(params.granularity_subsample),
         "granularity_image_sample_size": float(params.granularity_image_sample),
         "granularity_element_size": int(params.granularity_element_size),
         "radial_bins": int(params.radial_bins),
         "neighbors": [[c, m, int(d)] for c, m, d in neighbor_sets(params)],
         "correlation_types": [_CP_CORRELATIONS[c] for c in params.correlations],
         "correlation_threshold": float(params.correlation_threshold),
         "shrink_primary": bool(params.shrink_nuclei)}
    s.update(overrides or {})
    return s


def run_features_cp(rows: pd.DataFrame, labels_store: str | os.PathLike, out: str | os.PathLike, *,
                    illum=None, root=None, python=None, settings: Mapping | None = None,
                    timeout: float | None = None, params=None, workers: int = 1) -> pd.DataFrame:
    """Object-level CellProfiler measurements of one plate; writes ``out`` (parquet).

    ``settings``: the worker's measurement settings (``cp_worker.MEASURE_DEFAULTS`` names:
    ``compartments``, ``categories`` — AreaShape, Intensity, Texture, Granularity,
    RadialDistribution, Correlation, Neighbors —, ``channels``, texture scales, …).
    One row per object: ``Metadata_*`` site keys, ``ImageNumber``, ``ObjectNumber``, then the
    features named as CellProfiler names them (``Nuclei_AreaShape_Area``,
    ``Cells_Intensity_MeanIntensity_AGP``, ``Cytoplasm_Texture_Contrast_Mito_3_00_256`` …).
    Intensities are on CellProfiler's scale (16-bit counts / 65535, after illumination correction).
    """
    if rows.empty:
        raise MorphobenchError("features (cellprofiler): no sites")
    if params is not None:  # the in-process FeatureParams: the same measurement
        settings = {**cp_measure_settings(params), **dict(settings or {})}
    settings = dict(settings or {})
    channels = list(settings.get("channels") or sheet_channels(rows))
    sites = request_sites(rows, channels, root)
    # ``workers`` > 1: that many worker processes, each on a contiguous share of the sites
    chunks = [c for c in np.array_split(np.arange(len(rows)), max(1, min(int(workers), len(rows)))) if len(c)]
    seconds: dict[str, float] = {}  # worker seconds per feature group (benchmarks/images.py)
    with _Workdir() as wd:
        ipath = _illum_file(illum, wd)

        def one(k: int) -> pd.DataFrame:
            idx = chunks[k]
            sub = wd / f"part{k}"
            sub.mkdir()
            lpath = labels_to_npz(labels_store, rows.iloc[idx], sub / "labels_in.npz")
            res = run_worker("measure", [sites[j] for j in idx], channels, settings, sub, python=python,
                             illum=ipath, labels=lpath, timeout=timeout)
            for cat, sec in res.get("seconds_by_category", {}).items():
                seconds[cat] = seconds.get(cat, 0.0) + float(sec)
            part = pd.read_csv(sub / "measure" / "features.csv")  # repr floats: exact
            part["site"] = idx[part["site"].to_numpy()]
            return part

        if len(chunks) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(chunks)) as ex:
                parts = list(ex.map(one, range(len(chunks))))
        else:
            parts = [one(0)]
        feats = pd.concat(parts, ignore_index=True)
    meta = pd.DataFrame([site_meta(r) for _, r in rows.iterrows()])
    meta["ImageNumber"] = np.arange(1, len(rows) + 1, dtype=np.int64)
    site = feats.pop("site").to_numpy()
    front = meta.iloc[site].reset_index(drop=True)
    feats["ObjectNumber"] = feats["ObjectNumber"].astype(np.int64)
    df = pd.concat([front, feats.reset_index(drop=True)], axis=1)
    for k in SITE_KEYS:
        df[k] = df[k].astype(rows[k].dtype)
    fcols = [c for c in df.columns if c not in (*SITE_KEYS, "ImageNumber", "ObjectNumber")]
    df[fcols] = df[fcols].astype(np.float64)
    if params is not None and params.max_objects_per_well:
        # the in-process backend's seeded subset of objects per well (CellProfiler measured all)
        from morphobench.images.features import _select_objects

        _, lsites = open_labels(labels_store)
        pick = _select_objects(lsites, params)
        keep = np.zeros(len(df), bool)
        for im, objs in pick.items():
            sel = df["ImageNumber"].to_numpy() == im
            keep |= sel if objs is None else sel & np.isin(df["ObjectNumber"].to_numpy(), objs)
        df = df[keep].reset_index(drop=True)
    write_parquet(df, out)
    df.attrs["seconds_by_group"] = seconds
    return df


# --------------------------------------------------------------------------------------------
# Command line: the environment check (the stages run through ``python -m morphobench.images
# <stage> --backend cellprofiler``, the same CLI and flags as the in-process backend)
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m morphobench.images.cp_backend",
        description="Check the CellProfiler environment (prints its versions). The image stages of this "
                    "backend run as `python -m morphobench.images illum|segment|features --backend "
                    "cellprofiler [--python PY] ...`, with the in-process backend's flags.")
    ap.add_argument("task", choices=["check"])
    ap.add_argument("--python", help="interpreter of the CellProfiler environment")
    a = ap.parse_args(argv)
    print(json.dumps(worker_versions(a.python), indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MorphobenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
