"""Light-weight functions the Snakefile calls while building the DAG (no heavy imports)."""

from __future__ import annotations

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
