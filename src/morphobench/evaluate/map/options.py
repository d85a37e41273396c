"""How the mAP engine computes — never what: :class:`MapOptions` (block sizes, algorithm paths,
backend, threads), the worker-thread pool, per-thread scratch buffers and BLAS thread limits.

Every option changes speed or memory only; the copairs equality tests run with forced paths
(``MapOptions(neg_dense=False)``, ``MapOptions(ap_method="sort")`` …) to prove it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from morphobench.io import MorphobenchError, progress

__all__ = ["MapOptions", "DEFAULT_OPTIONS", "load_kernels"]


@dataclass(frozen=True)
class MapOptions:
    """Engine settings of :func:`~morphobench.evaluate.map.average_precision`.

    Parameters
    ----------
    max_entries : pairs per block of queries (memory bound of the general path).
    backend, device : similarities with ``"numpy"`` or ``"torch"`` (on ``device``: ``"cpu"``,
        ``"cuda"``, ``"auto"``).
    threads : worker threads of the NumPy-heavy loops; None = ``MORPHOBENCH_MAP_THREADS`` or the
        usable CPUs (at most 4).
    gemm_min_entries : a same-group segment of at least this many entries uses one GEMM.
    gram_max : groups up to this size take pair similarities from one small Gram matrix.
    neg_dense : negatives as dense GEMM blocks where they are (False: entry lists).
    dense_min_entries : … when the dense blocks hold at least this many pairs on average.
    ap_method : ``"auto"``; ``"compare"`` | ``"sort"`` force one AP algorithm.
    gather_values : gathered values per row-wise dot-product chunk (×2 operands, cache-sized).
    blas_small : GEMMs below this many multiply-adds run on one BLAS thread.
    symmetric_min : a negative-pair group of at least this many profiles, most of them queries
        (the dense, sibling-style design), is counted from symmetric tiles of its similarity
        matrix (each pair's similarity computed once, counted for both of its profiles); 0
        disables that path.
    tile : rows (= columns) of a symmetric tile, at most (groups of fewer than ~12 tiles per side
        use smaller ones).
    compiled : the compiled (numba) kernels of symmetric tiles — float32 GEMMs counted exactly
        (entries within the float32 error bound of a threshold decided in float64): True when
        numba is importable, False never (NumPy float64 tiles; same results), None (default)
        when already loaded (:func:`load_kernels`) or when the group is big enough to repay
        loading them (about a second, once per process).
    compiled_tile : rows (= columns) of a float32 symmetric tile on the compiled path, at most
        (and at most ``tile``).
    """

    max_entries: int = 2_000_000
    backend: str = "numpy"
    device: str = "cpu"
    threads: int | None = None
    gemm_min_entries: int = 4096
    gram_max: int = 64
    neg_dense: bool = True
    dense_min_entries: int = 256
    ap_method: str = "auto"
    gather_values: int = 1 << 17
    blas_small: int = 1 << 26
    symmetric_min: int = 4096
    tile: int = 2048
    compiled: bool | None = None
    compiled_tile: int = 1024

    def __post_init__(self):
        if self.backend not in ("numpy", "torch"):
            raise MorphobenchError(f"unknown similarity backend {self.backend!r} (numpy | torch)")
        if self.ap_method not in ("auto", "compare", "sort"):
            raise MorphobenchError(f"ap_method must be auto | compare | sort, got {self.ap_method!r}")
        if self.max_entries < 1 or self.tile < 1 or self.compiled_tile < 1:
            raise MorphobenchError("max_entries, tile and compiled_tile must be ≥ 1")
        if self.threads is not None and self.threads < 1:
            raise MorphobenchError(f"threads must be ≥ 1, got {self.threads}")


DEFAULT_OPTIONS = MapOptions()


def _progress(iterable, desc: str, show: bool):
    """A progress bar only when asked for (importing tqdm is not free)."""
    return progress(iterable, desc=desc, disable=None) if show else iterable


# ----------------------------------------------------------------------------------------------
# BLAS threads
# ----------------------------------------------------------------------------------------------
try:  # threadpoolctl: a scikit-learn dependency
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover
    ThreadpoolController = None
_BLAS_CONTROLLER = None


def _single_thread_blas():
    """Context limiting BLAS to one thread; a no-op when threadpoolctl is unavailable."""
    global _BLAS_CONTROLLER
    if ThreadpoolController is None:  # pragma: no cover
        return contextlib.nullcontext()
    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


# ----------------------------------------------------------------------------------------------
# worker threads and scratch buffers
# ----------------------------------------------------------------------------------------------
_LOCAL = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A per-thread reusable buffer (no page faults from fresh allocations in hot loops)."""
    key = (name, np.dtype(dtype).str)
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    size = int(np.prod(shape))
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


_KERNELS_MODULE = "morphobench.evaluate.map._kernels"
_KERNELS_LOAD_S = 1.0       # order of the one-time cost of importing numba and loading the kernels
_KERNELS_MISSING = False


def _kernels(enabled: bool | None = True, saves_s: float | None = None):
    """The compiled kernels (:mod:`morphobench.evaluate.map._kernels`), or None: when numba is
    not importable, ``enabled`` is False, or — ``enabled`` None (auto) — when they are not loaded
    yet and the estimated saving ``saves_s`` (seconds) is below the one-time cost of loading them
    (the NumPy paths then run; same results)."""
    global _KERNELS_MISSING
    if enabled is False or _KERNELS_MISSING:
        return None
    mod = sys.modules.get(_KERNELS_MODULE)
    if mod is not None:
        return mod
    if enabled is None and saves_s is not None and saves_s < _KERNELS_LOAD_S:
        return None
    try:
        mod = importlib.import_module(_KERNELS_MODULE)
    except ImportError:  # pragma: no cover - numba comes with umap-learn
        _KERNELS_MISSING = True
        return None
    return mod


def load_kernels() -> bool:
    """Import numba and load (or compile and cache) the compiled kernels now — once per process,
    about a second — so that later calls use them whatever their size (by default a call loads
    them only when they save more than that). False when numba is not importable."""
    mod = _kernels(True)
    if mod is None:
        return False
    mod.warm_up()
    return True


def _n_threads(threads: int | None = None) -> int:
    """Worker threads of the NumPy-heavy loops: ``MORPHOBENCH_MAP_THREADS`` or the usable CPUs
    (at most 4); ``threads`` (an option) overrides both."""
    if threads is not None:
        return max(1, int(threads))
    env = os.environ.get("MORPHOBENCH_MAP_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise MorphobenchError(f"MORPHOBENCH_MAP_THREADS must be an integer, got {env!r}") from None
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _run_jobs(fn: Callable, jobs: Sequence, threads: int | None = None) -> None:
    """``fn(job)`` for every job (each writing its own disjoint output), in a small thread pool:
    NumPy releases the GIL in the heavy loops."""
    nt = min(_n_threads(threads), len(jobs))
    if nt <= 1:
        try:
            for job in jobs:
                fn(job)
        finally:
            _LOCAL.__dict__.pop("bufs", None)      # no scratch kept between calls
        return
    with ThreadPoolExecutor(nt) as ex:
        for _ in ex.map(fn, jobs):
            pass


def _run_split(fn: Callable, jobs: Sequence, threads: int | None = None) -> list:
    """``fn(part)`` on ``jobs`` dealt round-robin to up to :func:`_n_threads` workers, each worker's
    GEMMs on one BLAS thread (the limit is process-wide: set once around the pool); with one
    worker a single call on every job, BLAS threads untouched. Returns the parts' results."""
    nt = max(1, min(_n_threads(threads), len(jobs)))
    parts = [jobs[i::nt] for i in range(nt)]
    if nt == 1:
        return [fn(parts[0])]
    out = [None] * nt

    def one(i):
        out[i] = fn(parts[i])

    with _single_thread_blas():
        _run_jobs(one, list(range(nt)), threads)
    return out
