"""The MAE family's paper configs validate and resolve. (The family runs through the real Snakefile
in tests/workflow/test_workflow.py::test_tiny_config_runs_end_to_end, with the other methods.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from test_workflow import REPO


@pytest.mark.parametrize("name", ["mae_rxrx3.yaml", "mae_jump.yaml"])
def test_paper_configs_validate_and_resolve(name):
    from morphobench import methods

    cfg = yaml.safe_load((REPO / "config" / "paper" / name).read_text())
    validate(cfg, methods.config_schema(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    resolved = methods.resolve(cfg["methods"])
    assert cfg["train"]["device"] == "cuda"
    for c in resolved:
        if c.method.trains:
            c.method.params(c.overrides)  # every parameter known
    if name == "mae_rxrx3.yaml":
        vit = next(c for c in resolved if c.name == "mae_vit_l8+")
        p = vit.spec()["params"]
        assert p["depth"] == 24 and p["batch_size"] * p["grad_accum"] == 4096 and p["lr"] == 3e-5
        assert p["drop_path"] == 0.3 and p["epochs"] == 50 and p["optimizer"] == "lion"
    else:
        ca = next(c for c in resolved if c.name == "ca_mae_l16+")
        assert ca.overrides["channel_map"] == "all" and Path(ca.overrides["pretrained"]).name == "model.pt"
