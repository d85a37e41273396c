"""The test suite's own xdist scheduling (tests/conftest.py): tests that share a module-scoped
fixture stay on one worker, every other test is a unit of its own."""

from __future__ import annotations

from pathlib import Path

from conftest import shared_fixture_files

TESTS = Path(__file__).resolve().parent


def test_files_with_module_fixtures_are_grouped():
    grouped = shared_fixture_files(TESTS)
    # module-scoped fixtures: the rendered default screen's pixel_stats profiles, the rendered plate
    assert {"tests/test_benchmark_simulated.py", "tests/test_images_simulated.py"} <= grouped
    # function-scoped fixtures only (tmp_path): no group, so its long tests spread over the workers
    assert "tests/workflow/test_workflow.py" not in grouped
    assert all((TESTS.parent / f).exists() for f in grouped)


def test_work_units_are_files_only_for_grouped_files(pytestconfig):
    from conftest import pytest_xdist_make_scheduler, work_unit

    grouped = shared_fixture_files(TESTS)
    a = "tests/test_benchmark_simulated.py::test_corum_recall_with_tvn_above_random"
    b = "tests/test_benchmark_simulated.py::test_sibling_retrieval_above_random"
    c = "tests/workflow/test_workflow.py::test_tiny_config_runs_end_to_end"
    assert work_unit(a, grouped) == work_unit(b, grouped) == "tests/test_benchmark_simulated.py"
    assert work_unit(c, grouped) == c
    if pytestconfig.getvalue("dist") != "loadgroup":  # other --dist modes: xdist's own scheduler
        assert pytest_xdist_make_scheduler(pytestconfig, log=None) is None
