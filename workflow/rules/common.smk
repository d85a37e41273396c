# Shared helpers: config validation (with defaults), dataset/plate lists, target lists, and the
# input/param functions of the rule files (one section per file below; the rule files hold only
# rules, as `snakemake --lint` asks). Plain functions of config values are in
# src/morphobench/workflow_helpers.py.
import functools
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

# The package lives in src/; make it importable for the DAG helpers even before `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from morphobench.workflow_helpers import (  # noqa: E402
    dataset_plates,
    fewer_full_collections,
    images_cmd,
    interpreter_first_on_path,
    is_arm_correction,
    resource_tables,
    simulated_plate_mem_mb,
    teams_variant_fold,
)

from morphobench import methods as MB_METHODS  # noqa: E402  (no torch: the method registry)
from morphobench.io import MorphobenchError as _MBError  # noqa: E402

# The schema's method-name enums are filled from the registry (one place names the methods).
validate(config, schema=MB_METHODS.config_schema(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"),
         set_default=True)

# Rules run `python -m morphobench.<stage>`: make `python` the interpreter that runs Snakemake
# (e.g. .venv/bin/python, also when the venv is not activated). Under --use-conda each job's
# activated environment still comes first on PATH.
interpreter_first_on_path()

# Snakemake's own process: the DAG of a large screen is millions of objects that live until it
# exits; the default full garbage collections, each over all of them, were about a fifth of the
# CPU of `snakemake -n` at 1,000-2,000 plates (benchmarks/dag_scale.py).
fewer_full_collections()

from morphobench.io import config_hash as _config_hash  # noqa: E402

RES = config["resources"]["dir"]
CONFIG_HASH = _config_hash(config)  # recorded in every results table's provenance sidecar
DATASETS = list(config["datasets"])
LOGS = "logs"
BENCH = "benchmarks/out"


try:
    METHODS = {c.name: c for c in MB_METHODS.resolve(config["methods"])}
    MB_METHODS.check_files(METHODS.values(), DATASETS)
    EVAL_LISTS = MB_METHODS.evaluation_lists(config, METHODS)
except _MBError as _err:
    raise WorkflowError(f"config: {_err}") from None


def configured(name):
    """A configured method, or a registered one another stage needs (e.g. `cellprofiler` as the
    regression target when it is not in `methods:`)."""
    return METHODS.get(name) or MB_METHODS.Configured(MB_METHODS.get(name))


def method_spec(name):
    """The JSON-able spec of a method (registry defaults ← `train:` ← its params in `methods:`)."""
    return configured(name).spec(config["train"])


wildcard_constraints:
    dataset="[^/]+",
    method=MB_METHODS.wildcard_regex(METHODS.values()),
    correction="[^/]+",
    plate="[^/]+",


def dataset_cfg(dataset):
    try:
        return config["datasets"][dataset]
    except KeyError:
        raise WorkflowError(f"dataset {dataset!r} is not configured under 'datasets:' "
                            f"(configured: {DATASETS})")


def plates(dataset):
    """Plate ids of a dataset: from the config for simulated screens, else from the image sheet
    built by the `image_sheet` checkpoint (call only inside input functions)."""
    cfg = dataset_cfg(dataset)
    if cfg["loader"] == "simulated":
        return dataset_plates(cfg)
    sheet = checkpoints.image_sheet.get(dataset=dataset).output.sheet
    return list(_sheet_plates(sheet, os.stat(sheet).st_mtime_ns))


@functools.lru_cache(maxsize=None)
def _sheet_plates(sheet, mtime_ns):
    """The plates of an image sheet, read once per file version (input functions call plates()
    for every job: re-reading a 2,000-plate sheet each time dominated the DAG build)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    col = pq.read_table(sheet, columns=["Metadata_Plate"]).column("Metadata_Plate")
    return tuple(sorted(str(p) for p in pc.unique(col).to_pylist()))


def plates_if_known(dataset):
    """Plates known from the config alone (simulated screens); [] for real screens (checkpoint)."""
    cfg = dataset_cfg(dataset)
    return dataset_plates(cfg) if cfg["loader"] == "simulated" else []


def as_json(obj):
    """Shell-quoted JSON for passing a config section to `python -m morphobench.<stage>`."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


METHODS_PROVENANCE = as_json(MB_METHODS.provenance(METHODS.values()))


RESULT_TABLES = ["known_relationships", "recall_curve", "stringdb_gene_sets", "jump_retrieval",
                 "cp_regression", "cp_regression_summary", "batch_correction"]
FIGURE_NAMES = ["recall_curves", "recall_by_method", "retrieval", "cp_regression_r2", "batch_correction"]


def all_targets():
    targets = [f"{RES}/{p}" for p in resource_tables()]
    for ds in DATASETS:
        targets += [f"results/{ds}/images.parquet", f"results/{ds}/wells.parquet"]
        if dataset_cfg(ds)["loader"] == "simulated" and config["figures"]["example_sites"]:
            targets.append(f"results/figures/example_sites_{ds}.png")
        targets += [f"results/{ds}/illum/{p}.png" for p in plates_if_known(ds)]
        if config["images"]["materialize_illum"]:
            targets += [f"results/{ds}/corrected/{p}.parquet" for p in plates_if_known(ds)]
        targets += [f"results/{ds}/crops/{k}/index.parquet" for k in config["images"]["crops"]["kinds"]]
    targets += [f"results/{t}.tsv" for t in RESULT_TABLES]
    targets += [f"results/figures/{f}.png" for f in FIGURE_NAMES]
    return targets


# ---- simulate.smk ---------------------------------------------------------------------------------
def sim_section(dataset):
    return dataset_cfg(dataset).get("simulate", {})


# ---- correct.smk ----------------------------------------------------------------------------------
BUILTIN_EXPRESSION = {"u2os": f"{RES}/genes/u2os_zfpkm.tsv"}  # shipped zFPKM tables, by cell line


def expression_table(dataset):
    """The zFPKM table of a dataset's cell line (correct.expression.<dataset>: a shipped table's
    name or a path), or None when none is configured."""
    value = config["correct"]["expression"].get(dataset)
    if value is None:
        return None
    return BUILTIN_EXPRESSION.get(str(value).lower(), value)


def arm_skipped(dataset):
    """True when +arm corrections of this dataset are skipped (and recorded) for lack of an
    expression table of its cell line (correct.missing_expression: skip)."""
    return (dataset_cfg(dataset)["loader"] != "simulated" and expression_table(dataset) is None
            and config["correct"]["missing_expression"] == "skip")


def arm_args(wildcards):
    """Inputs of the chromosome-arm correction: the real gene → arm and expression tables (the
    simulated screen uses real genes on real arms, so the same tables describe it)."""
    if not is_arm_correction(wildcards.correction):
        return {}
    expr = expression_table(wildcards.dataset)
    if expr is None and dataset_cfg(wildcards.dataset)["loader"] == "simulated":
        expr = BUILTIN_EXPRESSION["u2os"]  # the simulator takes its genes' expression from the U2OS table
    if expr is None:
        raise WorkflowError(
            f"correction {wildcards.correction!r} of dataset {wildcards.dataset!r} needs the expression "
            f"(zFPKM) table of its cell line: set correct.expression.{wildcards.dataset} to 'u2os' (U2OS "
            "screens: JUMP, BBBC022) or to a gene,zfpkm table of the screen's cell line (RxRx3: HUVEC), "
            "or correct.missing_expression: skip to record the +arm rows as skipped")
    return {"gene_arms": f"{RES}/genes/gene_arms.tsv", "zfpkm": expr}


def arm_flags(wildcards, input):
    flags = []
    for name, flag in (("truth", "--truth"), ("gene_arms", "--gene-arms"), ("zfpkm", "--zfpkm")):
        if name in input.keys():
            flags.append(f"{flag} {input[name]}")
    return " ".join(flags)


# ---- train.smk ------------------------------------------------------------------------------------
def train_inputs(w):
    m = configured(w.method).method
    if not m.trains:
        raise WorkflowError(f"method {w.method!r} does not train (results/{w.dataset}/models/ holds trained methods only)")
    ds = f"results/{w.dataset}"
    return {"crops": f"{ds}/crops/{m.crop_kind}/index.parquet", "split": f"{ds}/splits/{m.split}.tsv",
            "wells": f"{ds}/wells.parquet"}


def train_device(w):
    return method_spec(w.method)["params"].get("device", "auto")


# ---- embed.smk ------------------------------------------------------------------------------------
def _method(w):
    return configured(w.method).method


def embed_plate_inputs(w):
    """The files a method's per-plate embedding reads, from its registry input."""
    m = _method(w)
    ds = f"results/{w.dataset}"
    d = {"wells": f"{ds}/wells.parquet", "sheet": f"{ds}/images.parquet"}
    if m.input == "site":
        d["illum"] = f"{ds}/illum/{w.plate}.npz"
    elif m.input == "profiles":  # another method's well profiles (params.source; e.g. shuffled)
        d["profiles"] = f"{ds}/profiles/{method_spec(w.method)['params']['source']}/well.parquet"
    elif m.crop_kind:
        d["crops"] = f"{ds}/crops/{m.crop_kind}/plates/{w.plate}.parquet"
        d["store"] = f"{ds}/crops/{m.crop_kind}/plates/{w.plate}.zarr"
    if m.trains:  # its own training on this dataset, or a model.pt given as params: {pretrained: …}
        d["model"] = method_spec(w.method)["params"].get("pretrained") or f"{ds}/models/{w.method}/model.pt"
    if m.kind == "timm" and m.user["weights"] != "random":
        d["weights"] = m.user["weights"]
    for p, path in MB_METHODS.needed_files(configured(w.method)).items():
        d[f"needs_{p}"] = path
    return d


def embed_plate_flags(w, input):
    return " ".join(f"--{k} {input[k]}" for k in ("illum", "crops", "model", "profiles") if k in input.keys())


def run_cores():
    """--cores of this run, or None without it (a cluster executor: `--jobs N`, each job on an
    allocation of its own, sized by the rule's threads)."""
    try:
        return workflow.cores
    except WorkflowError:  # Snakemake's "requires a total number of cores"
        return None


def cores_upto(cap):
    """Threads of a job that uses every core it gets: the run's cores, at most ``cap`` (``cap`` on a
    cluster)."""
    cores = run_cores()
    return cap if cores is None else max(1, min(cores, cap))


def half_cores(cap):
    """Threads of a torch job: half the cores, at least 1, at most ``cap`` (``cap`` on a cluster).
    On a small machine a training or network embedding then runs beside another job (a second
    training, the image stages) instead of alone at a torch thread efficiency of about 75 %."""
    cores = run_cores()
    return cap if cores is None else max(1, min(cores // 2, cap))


def embed_threads(w):
    """A network's embeddings on up to two torch threads (:func:`half_cores`), the rest on one."""
    m = _method(w)
    return half_cores(2) if (m.trains or m.kind == "timm") else 1


def method_parts(w):
    """Per-plate parts of a method (registry template), or a user's own embeddings file."""
    m = _method(w)
    if m.kind == "embeddings":
        return [m.user["path"].format(dataset=w.dataset)]
    return [m.parts_path(w.dataset, p) for p in plates(w.dataset)]


def profile_parts(w):
    m = _method(w)
    if m.level == "well":
        return method_parts(w)
    return [f"results/{w.dataset}/embeddings/{w.method}/{m.level}.parquet"]


# ---- evaluate.smk ---------------------------------------------------------------------------------
def eval_key(w):
    return as_json({"dataset": w.dataset, "method": w.method, "correction": w.correction})


def eval_combos(methods=None, corrections=None, datasets=None):
    """(dataset, method, correction) triples configured for the evaluations (+arm corrections of
    datasets without an expression table left out when correct.missing_expression is skip)."""
    return [(d, m, c) for d in (datasets or DATASETS) for m in (methods or EVAL_LISTS["all"])
            for c in (corrections or config["corrections"]) if not (is_arm_correction(c) and arm_skipped(d))]


def eval_parts(table, combos):
    return [f"results/{d}/eval/{m}/{c}/{table}.tsv" for d, m, c in combos]


def arm_skips(corrections):
    """The +arm rows recorded as skipped in the batch-correction table (correct.missing_expression: skip)."""
    return {d: {c: f"no expression table for the cell line of {d} (correct.expression.{d})"
                for c in corrections if is_arm_correction(c)}
            for d in DATASETS if arm_skipped(d)}


# ---- teams.smk ------------------------------------------------------------------------------------
TEAMS = config["teams"]
TRIP = TEAMS["triplets"]
TEAMS_SPLIT = "treatment_folds"
TEAMS_CROP = "cell128"  # the random floor's cells (one vector per cell of this crop index)


def teams_cell_methods():
    """Configured methods scored by MoA triplets: cell-level embeddings (+ `random`, per cell)."""
    ok = [n for n, c in METHODS.items() if c.method.level == "cell" or n == "random"]
    if TRIP["methods"] == "all":
        return ok
    for i, n in enumerate(TRIP["methods"]):
        if n not in ok:
            raise WorkflowError(f"config: teams.triplets.methods[{i}]: {n!r} is not a configured method with "
                                f"cell-level embeddings (those: {ok})")
    return list(TRIP["methods"])


def _teams_group_col(name):
    return method_spec(name)["params"].get("group_col", "Metadata_Batch")


def teams_expert_methods():
    return [n for n in teams_cell_methods()
            if configured(n).method.trains and method_spec(n)["params"].get("experts") is True]


def _fold_trained(name):
    m = configured(name).method
    return m.trains and m.split == TEAMS_SPLIT


def teams_variation_groups(dataset, col):
    """Values of a variation-group column: from the config for simulated screens (batches or
    plates), else from the image sheet (checkpoint; call inside input functions only)."""
    cfg = dataset_cfg(dataset)
    if cfg["loader"] == "simulated" and col in ("Metadata_Batch", "Metadata_Plate"):
        from morphobench.simulate.params import resolve_params

        p = resolve_params(cfg.get("simulate", {}))
        return sorted({b if col == "Metadata_Batch" else pl for b, pl in p.plates})
    import pandas as pd

    sheet = f"results/{dataset}/images.parquet" if cfg["loader"] == "simulated" else \
        checkpoints.image_sheet.get(dataset=dataset).output.sheet
    cols = pd.read_parquet(sheet, columns=None).columns
    if col not in cols:
        raise WorkflowError(f"teams: variation group column {col!r} is not in the image sheet of {dataset}")
    return sorted(pd.read_parquet(sheet, columns=[col])[col].astype(str).unique())


def teams_heldout_methods():
    return [n for n in TEAMS["heldout_groups"]["methods"] if n in METHODS and _fold_trained(n)]


def teams_heldout_datasets():
    """Datasets whose variation groups are known from the config and are ≥ min_groups (real screens
    are included; their groups are read once the image sheet exists)."""
    out = []
    for ds in DATASETS:
        if dataset_cfg(ds)["loader"] != "simulated":
            out.append(ds)
            continue
        cols = {_teams_group_col(m) for m in teams_heldout_methods()}
        if cols and all(len(teams_variation_groups(ds, c)) >= TEAMS["heldout_groups"]["min_groups"] for c in cols):
            out.append(ds)
    return out


def teams_variant_spec(w):
    """The method's spec; `without_{group}` trains on every other variation group (train_groups)."""
    spec = method_spec(w.method)
    if w.variant.startswith("without_"):
        held = w.variant[len("without_"):]
        groups = teams_variation_groups(w.dataset, _teams_group_col(w.method))
        if held not in groups:
            raise WorkflowError(f"teams: {held!r} is not a variation group of {w.dataset} ({groups})")
        spec = {**spec, "params": {**spec["params"], "train_groups": [g for g in groups if g != held]}}
    return as_json(spec)


def teams_variant_train_inputs(w):
    m = configured(w.method).method
    if not _fold_trained(w.method):
        raise WorkflowError(f"teams: {w.method!r} does not train on {TEAMS_SPLIT}")
    ds = f"results/{w.dataset}"
    return {"crops": f"{ds}/crops/{m.crop_kind}/index.parquet", "split": f"{ds}/splits/{TEAMS_SPLIT}.tsv",
            "wells": f"{ds}/wells.parquet"}


def teams_variant_embed_inputs(w):
    m = configured(w.method).method
    ds = f"results/{w.dataset}"
    return {"model": f"{ds}/teams/{w.variant}/models/{w.method}/model.pt",
            "crops": f"{ds}/crops/{m.crop_kind}/plates/{w.plate}.parquet",
            "store": f"{ds}/crops/{m.crop_kind}/plates/{w.plate}.zarr",
            "wells": f"{ds}/wells.parquet", "sheet": f"{ds}/images.parquet"}


def teams_model_path(dataset, method, fold):
    if int(fold) > 0 and _fold_trained(method):
        return f"results/{dataset}/teams/fold{fold}/models/{method}/model.pt"
    return f"results/{dataset}/models/{method}/model.pt"


def teams_triplet_inputs(w):
    ds = f"results/{w.dataset}"
    d = {"wells": f"{ds}/wells.parquet", "split": f"{ds}/splits/{TEAMS_SPLIT}.tsv"}
    m = configured(w.method).method
    if m.level != "cell":  # random: one fixed-seed vector per cell
        d["crops"] = f"{ds}/crops/{TEAMS_CROP}/index.parquet"
    elif int(w.fold) > 0 and _fold_trained(w.method):
        d["emb"] = f"{ds}/teams/fold{w.fold}/embeddings/{w.method}/cell.parquet"
    else:
        d["emb"] = f"{ds}/embeddings/{w.method}/cell.parquet"
    return d


def teams_triplet_source(w, input):
    if "emb" in input.keys():
        return f"--emb {input.emb}"
    return f"--random-cells {input.crops} --random-dim {TRIP['random_dim']}"


def teams_key(w, **extra):
    m = configured(w.method).method
    return {"dataset": w.dataset, "method": w.method, **extra,
            "trained_on": (m.split if m.trains else "none")}


def teams_heldout_emb(w):
    ds = f"results/{w.dataset}"
    if w.held == "none":
        return f"{ds}/embeddings/{w.method}/cell.parquet"
    return f"{ds}/teams/without_{w.held}/embeddings/{w.method}/cell.parquet"


def teams_parts(table):
    if table == "moa_triplets":
        return [f"results/{d}/teams/{m}/fold{f}/moa_triplets.tsv"
                for d in DATASETS for m in teams_cell_methods() for f in TRIP["folds"]]
    if table == "teams_expert_modes":
        return [f"results/{d}/teams/{m}/fold{f}/expert_modes.tsv"
                for d in DATASETS for m in teams_expert_methods() for f in TRIP["folds"]]
    if table == "teams_heldout_groups":
        out = []
        for d in teams_heldout_datasets():
            for m in teams_heldout_methods():
                groups = teams_variation_groups(d, _teams_group_col(m))
                if len(groups) >= TEAMS["heldout_groups"]["min_groups"]:
                    out += [f"results/{d}/teams/{m}/heldout_{h}/moa_triplets.tsv" for h in ["none", *groups]]
        if not out:
            raise WorkflowError("teams: no dataset has enough variation groups for Table 3 "
                                f"(≥ {TEAMS['heldout_groups']['min_groups']})")
        return out
    raise WorkflowError(f"unknown TEAMs table {table!r}")


# ---- mae.smk --------------------------------------------------------------------------------------
def _trained_here(name):
    """Configured trained methods that train on the datasets (not a `pretrained` model file)."""
    c = METHODS[name]
    return c.method.trains and not method_spec(name)["params"].get("pretrained")


# ---- campfire.smk ---------------------------------------------------------------------------------
def _cf_datasets(section):
    sel = section["datasets"]
    if sel == "all":
        return DATASETS
    unknown = [d for d in sel if d not in DATASETS]
    if unknown:
        raise WorkflowError(f"config: evaluate.*.datasets: {unknown} are not configured datasets {DATASETS}")
    return list(sel)


def _cf_channel_set_inputs(w):
    m = configured(w.method).method
    if not (m.trains and m.level in ("cell", "tile")):
        raise WorkflowError(f"method {w.method!r}: channel sets need a trained cell- or tile-level model")
    ds = f"results/{w.dataset}"
    return {"model": f"{ds}/models/{w.method}/model.pt", "cells": f"{ds}/campfire/cells.parquet",
            "crops": f"{ds}/crops/{m.crop_kind}/index.parquet"}


def _cf_probe_inputs(w):
    m = configured(w.method).method
    ds = f"results/{w.dataset}"
    d = {"cells": f"{ds}/campfire/cells.parquet"}
    d["rows"] = (f"{ds}/profiles/{w.method}/well.parquet" if m.level == "well"
                 else f"{ds}/embeddings/{w.method}/{m.level}.parquet")
    if m.trains and m.level in ("cell", "tile"):
        d["channel_sets"] = f"{ds}/campfire/channel_sets/{w.method}.parquet"
    if m.level == "tile":
        d["crops"] = f"{ds}/crops/{m.crop_kind}/index.parquet"
    return d


def _cf_probe_flags(w, input):
    return " ".join(f"--{k.replace('_', '-')} {input[k]}" for k in ("channel_sets", "crops") if k in input.keys())


# ---- the report (snakemake --report; captions in workflow/report/) --------------------------------
# results table or figure name → (report category, the paper table or figure it corresponds to)
REPORT_ITEMS = {
    "example_sites": ("Simulated screen", "none (what the simulated cells look like)"),
    "known_relationships": ("Known relationships", "MAE-CVPR Table 3"),
    "recall_curve": ("Known relationships", "MAE-CVPR Fig. 5 (right)"),
    "recall_curves": ("Known relationships", "MAE-CVPR Fig. 5 (right)"),
    "recall_by_method": ("Known relationships", "MAE-CVPR Table 3 (as bars)"),
    "stringdb_gene_sets": ("Known relationships", "MAE-CVPR Table 5"),
    "jump_retrieval": ("Retrieval", "MAE-CVPR Table 4"),
    "retrieval": ("Retrieval", "MAE-CVPR Table 4 (as bars)"),
    "cp_regression": ("CellProfiler regression", "MAE-CVPR Fig. 6 (per feature)"),
    "cp_regression_summary": ("CellProfiler regression", "MAE-CVPR Fig. 6"),
    "cp_regression_r2": ("CellProfiler regression", "MAE-CVPR Fig. 6"),
    "cp_r2_mae_vs_wsl": ("CellProfiler regression", "MAE-CVPR Fig. 6"),
    "batch_correction_recall": ("Batch correction", "MAE-CVPR Table 2 (long form)"),
    "batch_correction": ("Batch correction", "MAE-CVPR Table 2"),
    "training_cost": ("MAE training", "MAE-W App. A.3"),
    "mae_loss_curves": ("MAE training", "MAE-CVPR Fig. 3"),
    "reconstructions": ("MAE training", "MAE-W Fig. 1, MAE-CVPR Fig. 2"),
    "recall_vs_training_flops": ("MAE training", "MAE-W Figs. 2 and 4, MAE-CVPR Fig. 5 (left)"),
    "moa_triplets": ("TEAMs", "TEAMs Table 1 (the tasks), per fold"),
    "teams_expert_modes": ("TEAMs", "TEAMs Table 6, per fold"),
    "teams_heldout_groups": ("TEAMs", "TEAMs Table 3, per fold"),
    "teams_table2": ("TEAMs", "TEAMs Table 2"),
    "teams_table3": ("TEAMs", "TEAMs Table 3"),
    "teams_table4": ("TEAMs", "TEAMs Table 4"),
    "teams_table5": ("TEAMs", "TEAMs Table 5"),
    "teams_table6": ("TEAMs", "TEAMs Table 6"),
    "teams_umap": ("TEAMs", "TEAMs Fig. 5"),
    "campfire_probes": ("Campfire", "Campfire Table 3.1"),
    "campfire_probes_summary": ("Campfire", "Campfire Table 3.1"),
    "campfire_channel_sets": ("Campfire", "Campfire Fig. 3.4, Table 3.2"),
    "zprime": ("Campfire", "Campfire Fig. 3.5, App. C"),
}


def report_category(item):
    """The report category of a results table or figure (REPORT_ITEMS)."""
    return REPORT_ITEMS[item][0]


def report_labels(kind, name, item=None):
    """Labels of a reported file: its name (``kind``: table or figure) and the paper table or
    figure it corresponds to (``item``: its REPORT_ITEMS key when not ``name``)."""
    return {kind: name, "paper": REPORT_ITEMS[item or name][1]}
