"""The config schema stays in sync with the stages' parameter dataclasses and loaders."""

from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _defs():
    return yaml.safe_load(SCHEMA.read_text())["$defs"]


@pytest.mark.parametrize(("module", "cls", "key", "extra"), [
    ("morphobench.images.illum", "IllumParams", "illum_params", set()),
    ("morphobench.images.segment", "SegmentParams", "segment_params", set()),
    ("morphobench.images.crops", "CropParams", "crop_params", {"kind"}),
    ("morphobench.images.features", "FeatureParams", "feature_params", set()),
])
def test_image_parameter_schemas_match_dataclasses(module, cls, key, extra):
    import importlib

    dc = getattr(importlib.import_module(module), cls)
    names = {f.name for f in fields(dc)}
    in_schema = set(_defs()[key]["properties"]) - {"preset"}
    assert in_schema == names - extra


def test_dataset_schema_lists_every_loader_key():
    from morphobench.data.loaders import LOADER_KEYS, PLATE_MAP_KEYS

    ds = _defs()["dataset"]["properties"]
    for loader, keys in LOADER_KEYS.items():
        assert loader in ds["loader"]["enum"]
        assert set(keys) <= set(ds), (loader, set(keys) - set(ds))
    assert set(ds["plate_map"]["properties"]) == set(PLATE_MAP_KEYS)


@pytest.mark.parametrize("name", ["config.yaml", "jump_cpjump1.yaml", "jump_cpg0016_source3.yaml",
                                  "rxrx3.yaml", "bbbc022.yaml", "bbbc036.yaml", "bbbc037.yaml",
                                  "all_methods.yaml", "paper/teams_bbbc.yaml",
                                  "teams_simulated.yaml"])
def test_shipped_configs_validate(name):
    cfg = yaml.safe_load((REPO / "config" / name).read_text())
    from morphobench import methods

    validate(cfg, methods.config_schema(SCHEMA), set_default=True)
    assert cfg["images"]["backend"] == "inprocess"  # defaults filled in
    methods.resolve(cfg["methods"])  # every method entry resolves (names, parameters, needed files named)


def test_scale_test_config_plans_per_plate(tmp_path):
    """config/scale_test.yaml (benchmarks/dag_scale.py) on a 3-plate JUMP-layout sheet: the ingest
    checkpoint and `snakemake -n` of the whole default target succeed; no rule has a job per site
    or well (1,152 sites: the largest rule is a per-method × correction one)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dag_scale", REPO / "benchmarks" / "dag_scale.py")
    dag_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag_scale)
    out = dag_scale.run(3, tmp_path / "p3")
    assert out["sites"] == 3 * 384 and out["jobs"] > 3 * 5 and out["max_rule_jobs"] <= 30, out
