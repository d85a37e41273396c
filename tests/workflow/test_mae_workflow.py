"""The MAE family through the real Snakefile on the tiny screen: training, per-plate embedding
(AdaBN adaptation), every evaluation table, the training-cost table and the family's figures;
and the paper configs validate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from test_workflow import REPO, snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow

TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_dim": 16, "decoder_heads": 2, "patch_size": 16,
            "epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "val_batches": 1}
METHODS = [
    "random",
    {"name": "mae_vit_s16+", "params": TINY_VIT},
    {"name": "wsl_densenet161_adabn", "params": {"growth_rate": 4, "block_config": [1, 1], "neck_hidden": 16,
                                                 "ghost_batch": 2, "epochs": 2, "steps_per_epoch": 2,
                                                 "batch_size": 4, "val_batches": 1}},
]
# CA-MAE, MU-Net and the plain MAE-ViT train and embed in tests/test_mae_training.py; here the family's
# rules, tables and figures (one correction keeps the run short)
TARGETS = ["results/training_cost.tsv", "results/known_relationships.tsv", "results/jump_retrieval.tsv",
           "results/cp_regression.tsv",
           *[f"results/figures/{f}.png" for f in ("mae_loss_curves", "recall_vs_training_flops", "cp_r2_mae_vs_wsl",
                                                  "reconstructions_simulated_mae_vit_s16+")]]


def test_mae_family_runs_end_to_end(tmp_path, resources_dir):
    cfg = {**tiny_config(resources_dir), "methods": METHODS, "corrections": ["none"]}
    res = snakemake(tmp_path, "--cores", "2", *TARGETS, configfile=write_config(tmp_path / "mae.yaml", cfg))
    assert res.returncode == 0, res.stderr[-5000:]
    out = tmp_path / "results"
    names = [m if isinstance(m, str) else m["name"] for m in METHODS]
    trained = names[1:]
    known = pd.read_csv(out / "known_relationships.tsv", sep="\t")
    retr = pd.read_csv(out / "jump_retrieval.tsv", sep="\t")
    cpr = pd.read_csv(out / "cp_regression.tsv", sep="\t")
    for m in trained:
        assert m in set(known["method"]) and m in set(retr["method"]) and m in set(cpr["method"]), m
        log = pd.read_csv(out / "simulated" / "models" / m / "train_log.tsv", sep="\t")
        assert (log["train_flops"] > 0).all() and log["val_loss"].notna().all()
        tiles = pd.read_parquet(out / "simulated" / "embeddings" / m / "tile.parquet")
        assert len(tiles) > 0 and tiles.filter(like="emb_").shape[1] > 0
    cost = pd.read_csv(out / "training_cost.tsv", sep="\t")
    assert sorted(cost["method"]) == sorted(trained) and (cost["train_flops"] > 0).all()
    assert (out / "training_cost.tsv.provenance.json").exists()
    for f in TARGETS[4:]:
        assert (tmp_path / f).stat().st_size > 3000, f
    splits = out / "simulated" / "splits"
    assert (splits / "holdout_batches.tsv").exists() and (splits / "replicate_holdout.tsv").exists()


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
