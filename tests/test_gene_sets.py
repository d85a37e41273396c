"""Gene sets for StringDB recall at 5 % FPR (MAE-CVPR Table 5): user-supplied files, "all", lists."""

import pandas as pd
import pytest

from morphobench.io import MorphobenchError
from morphobench.resources import read_gene_set, resolve_gene_set


def test_gene_set_files(tmp_path):
    (tmp_path / "poc.txt").write_text("# PoC-124 (Sivanandan et al.)\nTP53\n\nMDM2\n  ATM \nTP53\n")
    assert read_gene_set(tmp_path / "poc.txt") == ["ATM", "MDM2", "TP53"]
    pd.DataFrame({"gene": ["A", "B", None], "x": [1, 2, 3]}).to_csv(tmp_path / "s.csv", index=False)
    assert read_gene_set(tmp_path / "s.csv") == ["A", "B"]
    pd.DataFrame({"Symbol": ["C", "D"]}).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    assert read_gene_set(tmp_path / "s.tsv") == ["C", "D"]
    assert resolve_gene_set("all", ["X", "Y"]) == ["X", "Y"]
    assert resolve_gene_set(str(tmp_path / "poc.txt"), []) == ["ATM", "MDM2", "TP53"]
    assert resolve_gene_set(["A", "B"], []) == ["A", "B"]


def test_bad_gene_sets_are_clear_errors(tmp_path):
    with pytest.raises(MorphobenchError, match="not found"):
        read_gene_set(tmp_path / "missing.txt")
    (tmp_path / "one.txt").write_text("TP53\n")
    with pytest.raises(MorphobenchError, match="at least 2"):
        read_gene_set(tmp_path / "one.txt")
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(MorphobenchError, match="no gene column"):
        read_gene_set(tmp_path / "x.csv")
    with pytest.raises(MorphobenchError, match="at least 2"):
        resolve_gene_set(["A", "A"], [])
