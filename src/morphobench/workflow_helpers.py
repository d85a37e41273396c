"""Light-weight functions the Snakefile calls while building the DAG (no heavy imports).

Plain functions of config values live here (testable without Snakemake); the rule files keep
only rules, and the helpers that need the workflow's globals (``config``, ``checkpoints``, the
method registry as configured) are in ``workflow/rules/common.smk``.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import MutableMapping

from morphobench.io import MorphobenchError


def dataset_plates(ds_cfg: dict) -> list[str]:
    """Plate ids of a configured dataset, derivable from the config alone."""
    loader = ds_cfg["loader"]
    if loader == "simulated":
        from morphobench.simulate.params import resolve_params

        return [plate for _batch, plate in resolve_params(ds_cfg.get("simulate", {})).plates]
    raise MorphobenchError(f"datasets: loader {loader!r} does not list plates from the config")


def resource_tables() -> list[str]:
    """Resource tables (relative to the resources dir) that `rule all` builds."""
    from morphobench.resources import RESOURCE_TABLES

    return list(RESOURCE_TABLES)


def interpreter_first_on_path(environ: MutableMapping[str, str] | None = None,
                              executable: str | None = None) -> None:
    """Put the directory of the interpreter running Snakemake first on PATH, so that the rules'
    `python -m morphobench.<stage>` use it (e.g. .venv/bin/python, also when the venv is not
    activated). Under --use-conda each job's activated environment still comes first."""
    environ = os.environ if environ is None else environ
    bindir = os.path.dirname(executable or sys.executable)
    environ["PATH"] = os.pathsep.join([bindir, environ.get("PATH", "")])


def fewer_full_collections(oldest: int = 1000) -> None:
    """Let Python's cyclic garbage collector scan the whole heap (its oldest generation) only
    after ``oldest`` collections of the middle one instead of 10. Snakemake builds the DAG as
    millions of long-lived objects that no collection frees, so the default full scans, each
    over the whole heap, were about a fifth of the CPU of `snakemake -n` on a 1,000-plate screen
    (benchmarks/dag_scale.py); the young generations are collected as before."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, oldest)


def simulated_plate_mem_mb(sim_cfg: dict) -> int:
    """Memory (MB) of one simulate_plate job: the label masks of the whole plate stay in memory
    (2 × uint16 per pixel per site) + overhead. ``sim_cfg``: a dataset's ``simulate:`` section."""
    from morphobench.simulate.params import resolve_params

    p = resolve_params(sim_cfg)
    sites = p.plate_format * p.sites_per_well
    return int(600 + 3 * 4 * sites * p.image_size ** 2 / 2**20)


def images_cmd(stage: str, images_cfg: dict) -> str:
    """The per-plate command of an image stage: one CLI with the same flags for both backends
    (``images_cfg``: the config's ``images:`` section)."""
    cmd = f"python -m morphobench.images {stage} --backend {images_cfg['backend']}"
    if images_cfg["backend"] == "cellprofiler":
        cmd += f" --python {images_cfg['cellprofiler_python']}"
    return cmd


def teams_variant_fold(variant: str) -> int:
    """The fold a TEAMs extra training (``fold{k}`` or ``without_{group}``) trains on."""
    return int(variant[4:]) if variant.startswith("fold") else 0


def is_arm_correction(correction: str) -> bool:
    """True for a correction followed by the chromosome-arm correction (``<correction>+arm``)."""
    return correction.endswith("+arm")
