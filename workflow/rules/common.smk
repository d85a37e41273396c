# Shared helpers: config validation (with defaults), dataset/plate lists, target lists.
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
    resource_tables,
)

from morphobench import methods as MB_METHODS  # noqa: E402  (no torch: the method registry)
from morphobench.io import MorphobenchError as _MBError  # noqa: E402

# The schema's method-name enums are filled from the registry (one place names the methods).
validate(config, schema=MB_METHODS.config_schema(Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"),
         set_default=True)

# Rules run `python -m morphobench.<stage>`: make `python` the interpreter that runs Snakemake
# (e.g. .venv/bin/python, also when the venv is not activated). Under --use-conda each job's
# activated environment still comes first on PATH.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

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
