"""Gene sets for StringDB recall at a false-positive rate (MAE-CVPR §5.4, Table 5).

MAE-CVPR Table 5 scores three gene sets "as defined in Sivanandan et al." (CP-DiNO, 2023):
PoC-124, MoA-300 and DG-1640. No pinned registry package carries these lists (checked: the
efaar-benchmarking 0.1.0 / 1.0, jump-image-datasets 0.3.0 and stardist 0.9.2 files morphobench
fetches), so morphobench does not ship them: take them from that paper's supplementary tables and
list them in the config, each as a file::

    evaluate:
      known_relationships:
        gene_sets:
          PoC-124: data/gene_sets/poc124.txt     # one gene symbol per line
          MoA-300: data/gene_sets/moa300.txt
          DG-1640: data/gene_sets/dg1640.csv     # or a CSV/TSV with a 'gene' column
          all: all                               # every gene of the map

A gene set is a list of HGNC symbols in the same namespace as the map's ``Metadata_Gene`` and the
annotation tables. Text files: one symbol per line; blank lines and lines starting with ``#`` are
ignored. CSV / TSV: the ``gene`` column (else ``symbol``/``Gene``, else the only column).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from morphobench.io import MorphobenchError

__all__ = ["read_gene_set", "resolve_gene_set"]

_COLUMNS = ("gene", "symbol", "Gene", "Symbol", "gene_symbol")


def read_gene_set(path: str | os.PathLike) -> list[str]:
    """Gene symbols of a gene-set file (sorted, unique); a missing or empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise MorphobenchError(f"gene-set file {path} not found (see morphobench.resources.gene_sets for "
                               "the format and where MAE-CVPR's PoC-124/MoA-300/DG-1640 come from)")
    if path.suffix.lower() in (".csv", ".tsv"):
        try:
            df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str)
        except Exception as err:
            raise MorphobenchError(f"cannot read gene-set table {path}: {err}") from err
        col = next((c for c in _COLUMNS if c in df.columns), df.columns[0] if df.shape[1] == 1 else None)
        if col is None:
            raise MorphobenchError(f"gene-set table {path}: no gene column (one of {list(_COLUMNS)}; "
                                   f"have {list(df.columns)})")
        genes = df[col].dropna().str.strip()
    else:
        lines = path.read_text().splitlines()
        genes = pd.Series([ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")])
    genes = sorted(set(genes[genes != ""]))
    if len(genes) < 2:
        raise MorphobenchError(f"gene-set file {path}: {len(genes)} gene(s); a gene set needs at least 2")
    return genes


def resolve_gene_set(value, map_genes: list[str]) -> list[str]:
    """A configured gene set: ``"all"`` (every gene of the map), a list of symbols, or a file."""
    if isinstance(value, str):
        return list(map_genes) if value == "all" else read_gene_set(value)
    genes = [str(g) for g in value]
    if len(set(genes)) < 2:
        raise MorphobenchError(f"gene set {genes[:5]}: a gene set needs at least 2 genes")
    return genes
