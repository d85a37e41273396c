"""Runs the real Snakefile: dry-run plan, config validation, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from morphobench.data.tables import validate_image_sheet, validate_plate_map

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[2]
KEYS = ["dataset", "method", "correction"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


PLUGINS = REPO / "tests" / "plugins"


def snakemake(workdir: Path, *args: str, configfile: Path | None = None, timeout: int = 1500,
              plugin: bool = False, env: dict[str, str] | None = None, pythonpath: tuple[Path, ...] = ()):
    """The real Snakefile in ``workdir``, in a session of its own (a signal to its process group
    reaches Snakemake and its jobs only). ``env``: extra variables; ``pythonpath``: folders put
    first on PYTHONPATH."""
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(configfile or REPO / "config" / "config.yaml")]
    cmd += list(args)
    run_env = dict(os.environ, MORPHOBENCH_NO_PROGRESS="1", **(env or {}))
    paths = [str(p) for p in pythonpath]
    if plugin:  # the test plugin: one registry entry (tiny_method.py) + its model file (tiny_model.py)
        run_env["MORPHOBENCH_PLUGINS"] = "tiny_method"
        paths.append(str(PLUGINS))
    if paths:
        run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, run_env.get("PYTHONPATH")]))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env, cwd=workdir,
                          start_new_session=True)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def tiny_config(resources_dir: Path) -> dict:
    """The tiny preset (2 plates, 128² px, 1 site) with stage settings sized to it: small crops and
    tiles (a 256² tile does not fit a 128² field), cheap CellProfiler feature groups."""
    return {
        "seed": 0,
        "resources": {"dir": str(resources_dir), "offline": True},
        "datasets": {"simulated": {"loader": "simulated", "simulate": {"preset": "tiny", "seed": 3}}},
        "images": {
            "crops": {"kinds": ["cell128", "tile256"], "cell128": {"size": 32}, "tile256": {"size": 64}},
            "features": {"preset": "minimal", "groups": ["AreaShape", "Intensity", "Neighbors"],
                         "max_objects_per_well": 5},
        },
        "corrections": ["none", "tvn"],
        # the batch-correction table's 18 default rows are checked on the default screen and in
        # test_eval_stages; here four of them (given out of order: the table keeps the paper's)
        # Campfire's probes (cell112 crops) and Z′ have their own test (test_campfire_runs_end_to_end…)
        "evaluate": {"retrieval": {"null_size": 2000},
                     "batch_correction": {"corrections": ["tvn+arm", "tvn", "none+arm", "none"]},
                     "campfire_probes": {"datasets": []}, "zprime": {"datasets": []}},
    }


def test_dry_run_lists_full_plan(tmp_path):
    res = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    n_plates = 4  # default preset: 2 batches x 2 plates
    assert default["datasets"]["simulated"]["simulate"]["preset"] == "default"
    for rule in ("all", "simulate_design", "simulate_plate", "example_sites"):
        assert rule in out, f"rule {rule} missing from the plan:\n{out}"
    # one simulate_plate job per plate, never per image
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("simulate_plate"))
    assert int(line.split()[-1]) == n_plates, line


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"datasets": {"simulated": {"loader": "simulated", "simulate": {"presett": "tiny"}}}}, "presett"),
        ({"seed": "zero"}, "seed"),
        ({"resourcez": {}}, "resourcez"),
        ({"datasets": {"simulated": {"loader": "simulated", "simulate": {"image_size": 10}}}}, "image_size"),
    ],
)
def test_bad_config_fails_validation_naming_the_key(tmp_path, patch, needle):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg.update(patch)
    res = snakemake(tmp_path, "-n", configfile=write_config(tmp_path / "bad.yaml", cfg))
    assert res.returncode != 0
    msg = res.stdout + res.stderr
    assert "validat" in msg.lower(), msg
    assert needle in msg, msg


def test_slurm_workflow_profile_keeps_its_resources(tmp_path, resources_dir):
    """`--workflow-profile profiles/slurm` (the README's cluster command) replaces profiles/default:
    every job gets the profile's account and partition, train its own; with `--profile` Snakemake
    would still read profiles/default, whose default-resources win and drop them."""
    cfg = write_config(tmp_path / "c.yaml", {"seed": 0, "resources": {"dir": str(resources_dir), "offline": True},
                                            "datasets": {"simulated": {"loader": "simulated",
                                                                       "simulate": {"preset": "tiny"}}}})
    target = "results/simulated/illum/SIMB1P1.npz"
    res = snakemake(tmp_path, "-n", "--workflow-profile", str(REPO / "profiles" / "slurm"), target, configfile=cfg)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "profiles/default" not in out and "workflow specific profile" in out
    jobs = [ln for ln in out.splitlines() if ln.strip().startswith("resources:")]
    assert len(jobs) >= 3 and all("slurm_account=<your_account>" in ln and "slurm_partition=<your_partition>" in ln
                                  for ln in jobs), jobs
    # the local profile read as well (what --profile would do): the account is gone
    res = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"), target, configfile=cfg)
    assert res.returncode == 0 and "slurm_account" not in res.stdout + res.stderr


def test_a_new_method_needs_one_registry_entry(tmp_path, resources_dir):
    """The plugin registers `tiny_ae` (one Method + its model file): with it in `methods:` the DAG
    has its split, training, per-plate embedding, profiles and a part of every evaluation."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["methods"] = ["random", "tiny_ae"]
    path = write_config(tmp_path / "c.yaml", cfg)
    res = snakemake(tmp_path, "-n", "--printshellcmds", configfile=path, plugin=True)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    for needle in ("results/simulated/splits/treatment_folds.tsv", "results/simulated/models/tiny_ae/model.pt",
                   "results/simulated/embeddings/tiny_ae/plates/SIMB1P1.parquet",
                   "results/simulated/embeddings/tiny_ae/cell.parquet",
                   "results/simulated/profiles/tiny_ae/well.parquet",
                   "results/simulated/eval/tiny_ae/tvn+arm/known_relationships.tsv",
                   "results/simulated/eval/tiny_ae/tvn+arm/jump_retrieval.tsv",
                   "results/simulated/eval/tiny_ae/tvn+arm/cp_regression.tsv"):
        assert needle in out, needle
    # without the plugin the name is unknown, and the error says which entry
    bad = snakemake(tmp_path, "-n", configfile=path)
    assert bad.returncode != 0 and "tiny_ae" in bad.stdout + bad.stderr


# the MAE family at tiny sizes: an MAE-ViT with the Fourier loss and the weakly supervised DenseNet
# (AdaBN); CA-MAE, MU-Net and the plain MAE-ViT train and embed in tests/test_mae_training.py
TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_dim": 16, "decoder_heads": 2, "patch_size": 16,
            "epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "val_batches": 1}
MAE_METHODS = [
    {"name": "mae_vit_s16+", "params": TINY_VIT},
    {"name": "wsl_densenet161_adabn", "params": {"growth_rate": 4, "block_config": [1, 1], "neck_hidden": 16,
                                                 "ghost_batch": 2, "epochs": 2, "steps_per_epoch": 2,
                                                 "batch_size": 4, "val_batches": 1}},
]
MAE_FIGURES = ("mae_loss_curves", "recall_vs_training_flops", "cp_r2_mae_vs_wsl",
               "reconstructions_simulated_mae_vit_s16+")


def check_mae_family(res: Path, trained: list[str]) -> None:
    """The MAE family's rules after a run: training with FLOPs, tile embeddings (AdaBN adaptation for
    the WSL model), the training-cost table of every trained method, the family's figures and splits."""
    for m in (m["name"] for m in MAE_METHODS):
        log = pd.read_csv(res / "simulated" / "models" / m / "train_log.tsv", sep="\t")
        assert (log["train_flops"] > 0).all() and log["val_loss"].notna().all(), m
        tiles = pd.read_parquet(res / "simulated" / "embeddings" / m / "tile.parquet")
        assert len(tiles) > 0 and tiles.filter(like="emb_").shape[1] > 0, m
    cost = pd.read_csv(res / "training_cost.tsv", sep="\t")
    assert sorted(cost["method"]) == sorted(trained) and (cost["train_flops"] > 0).all()
    assert (res / "training_cost.tsv.provenance.json").exists()
    for f in MAE_FIGURES:
        assert (res / "figures" / f"{f}.png").stat().st_size > 3000, f
    splits = res / "simulated" / "splits"
    assert (splits / "holdout_batches.tsv").exists() and (splits / "replicate_holdout.tsv").exists()


def test_tiny_config_runs_end_to_end(tmp_path, resources_dir):
    """The real Snakefile on the tiny screen with every kind of method: the baselines, trained
    methods (a plugin method, TEAMs, an MAE-ViT, the WSL DenseNet) and both bring-your-own kinds (a
    profiles parquet and a timm network), to every table, figure and the report."""
    import morphobench.models  # noqa: F401  (torchvision/timm on CPU-only torch)
    import timm
    import torch

    base = tiny_config(resources_dir)
    cfg = write_config(tmp_path / "tiny.yaml", base)
    first = snakemake(tmp_path, "--cores", "2", "results/simulated/wells.parquet", configfile=cfg)
    assert first.returncode == 0, first.stderr[-3000:]
    plate_map = pd.read_parquet(tmp_path / "results/simulated/wells.parquet")
    rng = np.random.default_rng(0)
    mine = plate_map[["Metadata_Plate", "Metadata_Well"]].copy()
    for j in range(6):
        mine[f"my_feature_{j}"] = rng.normal(size=len(mine))
    (tmp_path / "data").mkdir()
    mine.to_parquet(tmp_path / "data" / "my_wells.parquet")
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "data" / "resnet18.pth")
    teams = {"name": "teams", "params": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "embed_dim": 8,
                                         "memory_size": 16, "downsample": 1, "backbone": "test_resnet"}}
    base.update({"splits": {"treatment_folds": {"n_folds": 3}},
                 "teams": {"triplets": {"n_boot": 100, "n_treatment_triplets": 200}, "umap": {"methods": ["teams"]}}})
    methods = ["random", "pixel_stats", "cellprofiler", {"name": "tiny_ae", "params": {"epochs": 2}}, teams,
               {"name": "my_profiles", "kind": "embeddings", "path": "data/my_wells.parquet"},
               {"name": "my_resnet", "kind": "timm", "arch": "resnet18", "weights": "data/resnet18.pth",
                "input": "cell128"},
               {"name": "shuffled", "params": {"source": "cellprofiler"}}, *MAE_METHODS]
    # one correction for every method (TVN); the batch-correction table adds none/+arm for cellprofiler
    cfg = write_config(tmp_path / "tiny.yaml", {**base, "methods": methods, "corrections": ["tvn"]})
    res = snakemake(tmp_path, "--cores", "2", configfile=cfg, plugin=True)
    assert res.returncode == 0, res.stderr[-5000:]
    ds = tmp_path / "results" / "simulated"
    sheet = pd.read_parquet(ds / "images.parquet")
    chans = validate_image_sheet(sheet, "images.parquet")
    assert chans[:5] == ["DNA", "ER", "RNA", "AGP", "Mito"]
    wells = pd.read_parquet(ds / "wells.parquet")
    validate_plate_map(wells, "wells.parquet")
    # every site's files exist and every site's well is in the plate map
    first = sheet.iloc[0]
    # PathName is relative to the Snakemake working directory (here tmp_path), or absolute
    assert (tmp_path / first["PathName_OrigDNA"] / first["FileName_OrigDNA"]).exists()
    keys = set(zip(wells.Metadata_Plate, wells.Metadata_Well, strict=True))
    assert set(zip(sheet.Metadata_Plate, sheet.Metadata_Well, strict=True)) <= keys
    assert (tmp_path / "results" / "figures" / "example_sites_simulated.png").stat().st_size > 10_000
    # every results table, with its key columns, one row per configured combination
    res = tmp_path / "results"
    methods = ["random", "pixel_stats", "cellprofiler", "tiny_ae", "teams", "my_profiles", "my_resnet", "shuffled",
               *[m["name"] for m in MAE_METHODS]]
    corrections = ["tvn"]
    known = pd.read_csv(res / "known_relationships.tsv", sep="\t")
    assert list(known.columns[:8]) == ["dataset", "method", "correction", "source", "n_genes", "n_pairs",
                                       "recall_5_95", "recall_10_90"]
    assert len(known) == len(methods) * len(corrections) * 5
    retr = pd.read_csv(res / "jump_retrieval.tsv", sep="\t")
    for col in ("dataset", "method", "correction", "task", "n_groups", "mAP", "fraction_retrieved",
                "null_size", "seed"):
        assert col in retr.columns
    tasks = ["perturbation", "sibling_compound", "sibling_compound_gene", "sibling_compound_orf", "sibling_guide"]
    assert (retr["null_size"] == 2000).all() and set(retr["task"]) == set(tasks)
    # the simulated screen is one condition (Metadata_CellType U2OS): its row + the mean ± sd row per
    # task that applies to it; tasks without any query (ORF, guides) are one recorded row
    per = retr.groupby(["method", "correction", "task"])["condition"].apply(list)
    assert len(per) == len(methods) * len(corrections) * len(tasks)
    assert all(c == ["CellType=U2OS", "mean ± sd"] for c in per.xs("perturbation", level="task"))
    assert all(len(c) == 1 or c[-1] == "mean ± sd" for c in per)
    detail = pd.read_parquet(res / "retrieval" / "simulated" / "cellprofiler" / "tvn" / "perturbation.parquet")
    assert detail["mean_average_precision"].between(0, 1).all()
    assert set(known["method"]) == set(methods) and set(retr["method"]) == set(methods)
    cpr = pd.read_csv(res / "cp_regression.tsv", sep="\t")
    assert set(cpr["method"]) == set(methods) - {"cellprofiler"} and cpr["r2"].notna().any()
    assert (cpr["model"] == "ols").all() and (cpr["n_targets"] == cpr.groupby(KEYS)["feature"].transform("size")).all()
    split = pd.read_csv(res / "simulated" / "splits" / "cp_regression_plates.tsv", sep="\t")
    assert split.groupby("Metadata_Batch")["split"].nunique().eq(1).all()   # whole experiments held out
    # the trained method: split, model, log, cell-level embeddings through the shared path
    ds_res = res / "simulated"
    assert (ds_res / "models" / "tiny_ae" / "model.pt").exists()
    log = pd.read_csv(ds_res / "models" / "tiny_ae" / "train_log.tsv", sep="\t")
    assert list(log["epoch"]) == [1, 2] and log["val_loss"].notna().all()
    cells = pd.read_parquet(ds_res / "embeddings" / "tiny_ae" / "cell.parquet")
    assert cells.filter(like="emb_").shape[1] == 8 and "Metadata_ObjectNumber" in cells
    assert len(pd.read_parquet(ds_res / "embeddings" / "my_resnet" / "cell.parquet")) == len(cells)
    cp_prof = pd.read_parquet(ds_res / "profiles" / "cellprofiler" / "well.parquet")
    shuf = pd.read_parquet(ds_res / "profiles" / "shuffled" / "well.parquet")
    assert len(shuf) == len(cp_prof) and not shuf.filter(like="Nuclei_").equals(cp_prof.filter(like="Nuclei_"))
    mine_prof = pd.read_parquet(ds_res / "profiles" / "my_profiles" / "well.parquet")
    assert len(mine_prof) == len(plate_map) and mine_prof["Metadata_PertType"].notna().all()
    split = pd.read_csv(ds_res / "splits" / "treatment_folds.tsv", sep="\t")
    assert not split.loc[split["Metadata_PertType"] != "trt", "split"].ne("control").any()
    prov = json.loads((res / "jump_retrieval.tsv.provenance.json").read_text())
    assert prov["methods"]["my_resnet"]["weights"] == "data/resnet18.pth"
    assert prov["methods"]["my_profiles"]["kind"] == "embeddings"
    summ = pd.read_csv(res / "cp_regression_summary.tsv", sep="\t")
    assert {"AreaShape", "Intensity"} <= set(summ["category"])
    bc = pd.read_csv(res / "batch_correction.tsv", sep="\t")
    assert set(bc["method"]) == {"cellprofiler"} and list(bc["correction"]) == ["none", "tvn", "none+arm", "tvn+arm"]
    assert list(bc["row"]) == [1, 2, 3, 4] and "recall_5_95_CORUM" in bc.columns
    for t in ("known_relationships", "jump_retrieval", "cp_regression", "batch_correction"):
        assert (res / f"{t}.tsv.provenance.json").exists()
    for fig in ("recall_curves", "recall_by_method", "retrieval", "cp_regression_r2", "batch_correction"):
        assert (res / "figures" / f"{fig}.png").stat().st_size > 5_000
    crops = pd.read_parquet(res / "simulated" / "crops" / "cell128" / "index.parquet")
    assert len(crops) > 0 and crops["Metadata_Plate"].nunique() == 2
    cp = pd.read_parquet(res / "simulated" / "profiles" / "cellprofiler" / "well.parquet")
    assert "Nuclei_AreaShape_Area" in cp.columns and cp["Metadata_PertType"].notna().all()
    # TEAMs: MoA triplets of every cell-level method (+ the random floor, one vector per cell),
    # expert modes of teams, the paper tables and the UMAP
    trip = pd.read_csv(res / "moa_triplets.tsv", sep="\t")
    assert set(trip["method"]) == {"random", "tiny_ae", "teams", "my_resnet"}
    assert set(trip["task"]) == {"single_cell", "single_cell_other_treatment", "vs_control", "treatment"}
    assert (trip["fold"] == 0).all() and trip["accuracy"].dropna().between(0, 1).all()
    assert trip.loc[trip["task"] == "single_cell", "n_triplets"].gt(0).all()
    modes = pd.read_csv(res / "teams_expert_modes.tsv", sep="\t")
    assert set(modes["method"]) == {"teams"} and set(modes["expert_mode"]) == {"mean", "random", "oracle"}
    t2 = pd.read_csv(res / "teams_table2.tsv", sep="\t")
    assert {"dataset", "group", "method", "single_cell_mean", "vs_control_mean"} <= set(t2.columns)
    assert t2.set_index("method").loc["teams", "group"] == "c"
    for fig in ("teams_table2", "teams_table4", "teams_table6", "teams_umap/simulated/teams"):
        assert (res / "figures" / f"{fig}.png").stat().st_size > 5_000, fig
    assert not (res / "teams_table3.tsv").exists()  # two batches: no held-out-group table
    check_mae_family(res, trained=["tiny_ae", "teams", *[m["name"] for m in MAE_METHODS]])
    # every rule wrote a log; no temporary files left behind
    assert any((tmp_path / "logs").rglob("*.log"))
    assert not [p for p in tmp_path.rglob("*.tmp")]
    check_report(tmp_path, cfg)
    # re-running is a no-op
    again = snakemake(tmp_path, "--cores", "1", "-n", configfile=cfg, plugin=True)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_cellprofiler_backend_and_materialized_illumination(tmp_path, resources_dir):
    """images.backend: cellprofiler runs illumination, segmentation and measurement with
    CellProfiler's library (its own environment); materialize_illum writes corrected copies."""
    from morphobench.images.cp_backend import available

    ok, why = available(REPO / ".venv-cellprofiler" / "bin" / "python")
    if not ok:
        if os.environ.get("MORPHOBENCH_REQUIRE_CP") == "1":
            pytest.fail(f"CellProfiler environment required but unusable: {why}")
        pytest.skip(f"no CellProfiler environment (bash workflow/scripts/setup_cellprofiler_env.sh): {why}")
    cfg = tiny_config(resources_dir)
    cfg["images"].update({"backend": "cellprofiler", "materialize_illum": True,
                          "cellprofiler_python": str(REPO / ".venv-cellprofiler" / "bin" / "python")})
    path = write_config(tmp_path / "cp.yaml", cfg)
    # one plate's chain (the rules are per plate; the gathers are the in-process backend's, tested
    # in test_tiny_config_runs_end_to_end)
    targets = ["results/simulated/cellprofiler/SIMB1P1.wells.parquet",
               "results/simulated/corrected/SIMB1P1.parquet"]
    res = snakemake(tmp_path, "--cores", "2", *targets, configfile=path)
    assert res.returncode == 0, res.stderr[-5000:]
    log = (tmp_path / "logs" / "simulated" / "segment" / "SIMB1P1.log").read_text()
    assert "cellprofiler" in log.lower() or "worker" in log.lower(), log[-2000:]
    wells = pd.read_parquet(tmp_path / targets[0])
    assert len(wells) > 0 and "Nuclei_AreaShape_Area" in wells.columns
    assert len(pd.read_parquet(tmp_path / "results/simulated/objects/SIMB1P1.parquet")) > 0  # segmentation
    objects = pd.read_parquet(tmp_path / "results/simulated/cellprofiler/SIMB1P1.objects.parquet")
    assert len(objects) > 0 and set(objects["Metadata_Well"]) <= set(wells["Metadata_Well"])
    corrected = pd.read_parquet(tmp_path / targets[1])
    first = corrected.iloc[0]
    assert Path(first["PathName_OrigDNA"], first["FileName_OrigDNA"]).exists() or \
        (tmp_path / first["PathName_OrigDNA"] / first["FileName_OrigDNA"]).exists()


def _arm_config(tmp_path, resources_dir, correct=None):
    cfg = {"resources": {"dir": str(resources_dir), "offline": True},
           "datasets": {"rx": {"loader": "pattern", "image_root": "data/rx",
                               "pattern": r"(?P<plate>[^/]+)/(?P<well>[A-Z]+\d+)_s(?P<site>\d+)_w(?P<channel>\d)\.png",
                               "channels": {"1": "DNA", "2": "ER", "3": "AGP", "4": "RNA", "5": "Mito"}}},
           "corrections": ["tvn+arm"]}
    if correct:
        cfg["correct"] = correct
    return write_config(tmp_path / "arm.yaml", cfg)


def test_arm_needs_the_screens_expression_table(tmp_path, resources_dir):
    """+arm on a real screen: its cell line's expression table (correct.expression), never U2OS
    silently; without one, a message naming the key."""
    target = "results/rx/profiles/random/tvn+arm/perturbation.parquet"
    res = snakemake(tmp_path, "-n", target, configfile=_arm_config(tmp_path, resources_dir))
    msg = res.stdout + res.stderr
    assert res.returncode != 0 and "correct.expression.rx" in msg and "u2os_zfpkm" not in msg
    table = tmp_path / "huvec_zfpkm.tsv"
    table.write_text("gene\tzfpkm\nA\t-4\n")
    res = snakemake(tmp_path, "-n", target, configfile=_arm_config(tmp_path, resources_dir,
                                                                      {"expression": {"rx": str(table)}}))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"--zfpkm {table}" in res.stdout + res.stderr
    # missing_expression: skip — the plan has no +arm job for the screen (recorded as skipped rows)
    res = snakemake(tmp_path, "-n", "results/jump_retrieval.tsv", "--quiet", "rules",
                    configfile=_arm_config(tmp_path, resources_dir, {"missing_expression": "skip"}))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tvn+arm" not in res.stdout + res.stderr
def test_campfire_runs_end_to_end_on_the_tiny_screen(tmp_path, resources_dir):
    """Campfire through the real Snakefile (tiny sizes): its split, training, per-plate embedding,
    probe cells, channel-set embeddings, probes of every method (incl. a bring-your-own parquet), Z′
    of every method × correction and the three figures."""
    base = tiny_config(resources_dir)
    base["images"]["crops"] = {"kinds": ["cell112"], "cell112": {"size": 28}}
    cfg = write_config(tmp_path / "tiny.yaml", base)
    first = snakemake(tmp_path, "--cores", "2", "results/simulated/wells.parquet", configfile=cfg)
    assert first.returncode == 0, first.stderr[-3000:]
    plate_map = pd.read_parquet(tmp_path / "results/simulated/wells.parquet")
    mine = plate_map[["Metadata_Plate", "Metadata_Well"]].copy()
    for j in range(4):  # a profile of several features (a 1-D one can have no spherical-mean direction)
        mine[f"f{j}"] = np.random.default_rng(j).normal(size=len(mine))
    (tmp_path / "data").mkdir()
    mine.to_parquet(tmp_path / "data" / "mine.parquet")
    tiny_cf = {"img_size": 28, "patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 1, "decoder_dim": 8,
               "decoder_depth": 1, "decoder_heads": 1, "epochs": 1, "steps_per_epoch": 2, "batch_size": 8,
               "val_batches": 1}
    cfg = write_config(tmp_path / "tiny.yaml", {
        **base,
        "methods": ["random", {"name": "campfire_s14", "params": tiny_cf},
                    {"name": "mine", "kind": "embeddings", "path": "data/mine.parquet"}],
        "splits": {"campfire": {"n_heldout_plates": 1, "n_heldout_compounds": 2, "n_train": 1, "n_val": 1,
                                "n_test": 1, "one_well_per_plate": False}},
        "evaluate": {**base["evaluate"],
                     "campfire_probes": {"n_subsets": 2, "n_folds": 3, "max_epochs": 3, "patience": 2,
                                         "channel_sets": [["DNA"], ["DNA", "ER", "RNA"]]},
                     "zprime": {"reference": "all", "corrections": ["none", "tvn"]}},
    })
    targets = ["results/campfire_probes_summary.tsv", "results/zprime.tsv", "results/figures/campfire_probes.png",
               "results/figures/campfire_channel_sets.png", "results/figures/zprime.png"]
    res = snakemake(tmp_path, "--cores", "2", *targets, configfile=cfg)
    assert res.returncode == 0, res.stderr[-5000:]
    out = tmp_path / "results"
    split = pd.read_csv(out / "simulated/splits/campfire.tsv", sep="\t")
    assert {"train", "test_out_plate", "test_out_compound"} <= set(split["split"])
    probes = pd.read_csv(out / "campfire_probes.tsv", sep="\t")
    assert set(probes["method"]) == {"random", "campfire_s14", "mine"}
    cf = probes[probes["method"] == "campfire_s14"]
    assert set(cf["channel_set"]) == {"default", "DNA", "DNA+ER+RNA"}  # channel agnostic: re-embedded per set
    assert set(probes.loc[probes["method"] == "random", "channel_set"]) == {"default"}
    assert probes["accuracy"].between(0, 1).all() and set(probes["task"]) <= {"A", "B"}
    summ = pd.read_csv(out / "campfire_probes_summary.tsv", sep="\t")
    assert {"accuracy_mean", "accuracy_ci_low", "chance"} <= set(summ.columns)
    z = pd.read_csv(out / "zprime.tsv", sep="\t")
    corrections = base["corrections"]
    assert set(z["method"]) == {"random", "campfire_s14", "mine"} and set(z["correction"]) == set(corrections)
    n_ctrl = plate_map.loc[plate_map["Metadata_PertType"] != "trt", "Metadata_Perturbation"].nunique()
    assert len(z) == 3 * len(corrections) * n_ctrl * (n_ctrl - 1)  # every ordered pair (reference: all)
    for fig in ("campfire_probes", "campfire_channel_sets", "zprime"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5_000
    assert (out / "zprime.tsv.provenance.json").exists() and (out / "campfire_probes.tsv.provenance.json").exists()


# figures and tables of several report categories, and their caption texts (workflow/report/*.rst)
REPORT_FILES = [f"{f}.png" for f in ("recall_curves", "recall_by_method", "retrieval", "cp_regression_r2",
                                      "batch_correction", "example_sites_simulated")] + \
               [f"{t}.tsv" for t in ("known_relationships", "recall_curve", "stringdb_gene_sets", "jump_retrieval",
                                     "cp_regression", "cp_regression_summary", "batch_correction", "moa_triplets")]
REPORT_CAPTIONS = ["Recall curves of known relationships", "Known-relationship recall by method", "Retrieval mAP",
                   "CellProfiler-feature regression, per category", "Batch corrections",
                   "Example sites of dataset simulated", "StringDB recall within gene sets", "MAE-CVPR Table 4",
                   "morphobench: Cell Painting screens from raw images"]


def check_report(workdir: Path, cfg: Path) -> None:
    """`snakemake --report` after a finished run embeds every figure and results table with its
    caption (a Jinja or reStructuredText error in a caption stops --report)."""
    import re

    report = workdir / "results" / "report.html"
    res = snakemake(workdir, "--report", str(report), configfile=cfg, plugin=True)
    assert res.returncode == 0, res.stderr[-5000:]
    html = report.read_text()
    assert len(html) > 200_000  # the PNGs and tables are embedded
    for name in REPORT_FILES:
        assert name in html, name
    for text in REPORT_CAPTIONS:
        assert text in html, text
    for category in ("Known relationships", "Retrieval", "CellProfiler regression", "Batch correction",
                     "Simulated screen", "TEAMs"):
        assert category in html, category
    assert not re.search(r"Error loading caption", res.stdout + res.stderr)


def test_default_run_schedule_plan(tmp_path):
    """The default run's schedule: torch jobs on half the cores (1 thread on 2 cores, at most 8 for
    a training), the chain to the trainings first, and the greedy scheduler of profiles/default."""
    import re

    def plan(cores: int) -> dict[str, set[tuple[str, str]]]:
        res = snakemake(tmp_path, "-n", "-p", "--cores", str(cores))
        assert res.returncode == 0, res.stderr[-3000:]
        jobs: dict[str, set[tuple[str, str]]] = {}
        for block in re.split(r"\n(?=(?:local)?rule \w+:)", res.stdout + res.stderr):
            m = re.match(r"(?:local)?rule (\w+):", block)
            if m:
                prio = re.search(r"priority: (\d+)", block)
                threads = re.search(r"--threads (\d+)", block)
                jobs.setdefault(m.group(1), set()).add((prio.group(1) if prio else "0",
                                                        threads.group(1) if threads else "-"))
        return jobs

    small, big = plan(2), plan(16)
    assert small["train"] == {("50", "1")} and big["train"] == {("50", "8")}
    assert {t for _, t in small["embed_plate"]} == {"1"} and {t for _, t in big["embed_plate"]} == {"1", "2"}
    for rule in ("split", "illum_calc", "segment", "crops", "crop_index"):
        assert {p for p, _ in small[rule]} == {"50"}, rule
    assert {p for p, _ in small["cp_features"]} == {"0"}   # the features fill the gaps
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["scheduler"] == "greedy"
