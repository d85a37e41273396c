"""The plain DAG helpers of src/morphobench/workflow_helpers.py (the rule files' functions that
need no workflow globals)."""

from __future__ import annotations

import gc
import os

from morphobench.simulate.params import resolve_params
from morphobench.workflow_helpers import (
    fewer_full_collections,
    images_cmd,
    interpreter_first_on_path,
    is_arm_correction,
    simulated_plate_mem_mb,
    teams_variant_fold,
)


def test_images_cmd_per_backend():
    assert images_cmd("illum", {"backend": "inprocess"}) == "python -m morphobench.images illum --backend inprocess"
    cp = images_cmd("segment", {"backend": "cellprofiler", "cellprofiler_python": "/x/bin/python"})
    assert cp == "python -m morphobench.images segment --backend cellprofiler --python /x/bin/python"


def test_interpreter_goes_first_on_path():
    env = {"PATH": "/usr/bin"}
    interpreter_first_on_path(env, "/venv/bin/python")
    assert env["PATH"] == os.pathsep.join(["/venv/bin", "/usr/bin"])
    empty: dict[str, str] = {}
    interpreter_first_on_path(empty, "/venv/bin/python")
    assert empty["PATH"].split(os.pathsep)[0] == "/venv/bin"


def test_fewer_full_collections_keeps_the_young_generations():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        fewer_full_collections()
        assert gc.get_threshold() == (700, 10, 1000)
        fewer_full_collections(50)
        assert gc.get_threshold() == (700, 10, 50)
    finally:
        gc.set_threshold(*before)


def test_simulated_plate_memory_grows_with_the_plate():
    tiny, default = simulated_plate_mem_mb({"preset": "tiny"}), simulated_plate_mem_mb({"preset": "default"})
    p = resolve_params({"preset": "default"})
    assert default == int(600 + 3 * 4 * p.plate_format * p.sites_per_well * p.image_size ** 2 / 2**20)
    assert 600 <= tiny < default


def test_small_predicates():
    assert teams_variant_fold("fold3") == 3 and teams_variant_fold("without_B1") == 0
    assert is_arm_correction("tvn+arm") and not is_arm_correction("tvn")
