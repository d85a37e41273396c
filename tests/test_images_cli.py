"""``python -m morphobench.images``: every stage on a tiny plate, errors → exit code 2."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from morphobench.images.__main__ import main
from morphobench.images.crops import CropDataset
from morphobench.images.synthetic import write_synthetic_plate
from morphobench.io import write_parquet


@pytest.fixture(scope="module")
def sheet_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    sheets = []
    for plate, seed in (("P1", 1), ("P2", 2)):
        s, _ = write_synthetic_plate(d / "img", plate=plate, wells=("A01", "A02"), sites=1, size=160,
                                     n_cells=12, seed=seed)
        sheets.append(s)
    write_parquet(pd.concat(sheets, ignore_index=True), d / "images.parquet")
    return d


def test_all_stages(sheet_path):
    d = sheet_path
    s = str(d / "images.parquet")
    for plate in ("P1", "P2"):
        assert main(["illum", "--sheet", s, "--plate", plate, "--out", f"{d}/illum/{plate}.npz",
                     "--png", f"{d}/illum/{plate}.png", "--log", f"{d}/logs/illum_{plate}.log"]) == 0
        assert main(["segment", "--sheet", s, "--plate", plate, "--illum", f"{d}/illum/{plate}.npz",
                     "--out", f"{d}/objects/{plate}.parquet", "--labels", f"{d}/labels/{plate}.zarr",
                     "--qc", f"{d}/qc/{plate}.parquet", "--params", json.dumps({"cell_channel": "RNA"})]) == 0
        assert main(["crops", "--sheet", s, "--plate", plate, "--illum", f"{d}/illum/{plate}.npz",
                     "--kind", "cell112", "--objects", f"{d}/objects/{plate}.parquet",
                     "--labels", f"{d}/labels/{plate}.zarr", "--params", '{"size": 48}',
                     "--out", f"{d}/crops/{plate}.zarr", "--index", f"{d}/crops/{plate}.parquet"]) == 0
        assert main(["features", "--sheet", s, "--plate", plate, "--illum", f"{d}/illum/{plate}.npz",
                     "--labels", f"{d}/labels/{plate}.zarr", "--params", '{"preset": "minimal"}',
                     "--out", f"{d}/cp/{plate}.objects.parquet", "--wells-out", f"{d}/cp/{plate}.wells.parquet"]) == 0
    assert (d / "logs" / "illum_P1.log").stat().st_size > 0
    assert main(["gather-crops", "--out", f"{d}/crops/index.parquet",
                 f"{d}/crops/P1.parquet", f"{d}/crops/P2.parquet"]) == 0
    ds = CropDataset(d / "crops" / "index.parquet")
    assert len(ds) > 0 and ds[0][0].shape == (5, 48, 48)
    wells = pd.concat([pd.read_parquet(d / "cp" / f"{p}.wells.parquet") for p in ("P1", "P2")])
    assert len(wells) == 4 and "Cells_AreaShape_Area" in wells.columns
    assert main(["translation-table", "--channels", "DNA", "ER", "--out", f"{d}/tt.tsv"]) == 0
    tt = pd.read_csv(d / "tt.tsv", sep="\t")
    assert "Nuclei_Intensity_MeanIntensity_DNA" in set(tt["cellprofiler_name"])


def test_errors_exit_2(sheet_path, capsys):
    d = sheet_path
    s = str(d / "images.parquet")
    assert main(["illum", "--sheet", s, "--plate", "NOPE", "--out", f"{d}/x.npz"]) == 2
    assert "plate 'NOPE' not found" in capsys.readouterr().err
    assert main(["segment", "--sheet", s, "--plate", "P1", "--out", f"{d}/x.parquet", "--labels",
                 f"{d}/x.zarr", "--params", '{"nope": 1}']) == 2
    assert "unknown parameter" in capsys.readouterr().err
    assert main(["features", "--sheet", s, "--plate", "P1", "--labels", f"{d}/x.zarr",
                 "--out", f"{d}/x.parquet", "--params", '{"preset": "huge"}']) == 2
    assert not (d / "x.npz").exists() and not (d / "x.zarr").exists() and not (d / "x.parquet").exists()


def test_both_backends_one_cli(sheet_path):
    """The same flags and parameters (jump presets) for both backends; the same output formats
    and, on the same input, the same objects and the same feature columns."""
    import os

    from morphobench.images.cp_backend import resolve_python
    from morphobench.images.segment import open_labels
    from morphobench.io import MorphobenchError

    try:
        py = str(resolve_python())
    except MorphobenchError as err:
        if os.environ.get("MORPHOBENCH_REQUIRE_CP") == "1":
            pytest.fail(str(err))
        pytest.skip(f"CellProfiler environment absent: {err}")
    d = sheet_path
    s = str(d / "images.parquet")
    seg = json.dumps({"preset": "jump", "min_diameter": 8, "max_diameter": 60})
    feats = json.dumps({"preset": "jump", "groups": ["AreaShape", "Intensity", "Texture"], "channels": ["DNA", "RNA"],
                        "texture_scales": [3]})
    for backend in ("inprocess", "cellprofiler"):
        o = d / backend
        extra = ["--backend", backend] + (["--python", py] if backend == "cellprofiler" else [])
        assert main(["illum", "--sheet", s, "--plate", "P1", "--out", f"{o}/illum.npz", "--png", f"{o}/illum.png",
                     "--params", '{"preset": "jump"}', *extra]) == 0
        assert main(["segment", "--sheet", s, "--plate", "P1", "--illum", f"{d}/inprocess/illum.npz",
                     "--out", f"{o}/objects.parquet", "--labels", f"{o}/labels.zarr", "--qc", f"{o}/qc.parquet",
                     "--params", seg, *extra]) == 0
        assert main(["features", "--sheet", s, "--plate", "P1", "--illum", f"{d}/inprocess/illum.npz",
                     "--labels", f"{d}/inprocess/labels.zarr", "--params", feats, "--threads", "2",
                     "--out", f"{o}/cp.parquet", "--wells-out", f"{o}/wells.parquet", *extra]) == 0
    a, _ = open_labels(d / "inprocess" / "labels.zarr")
    b, _ = open_labels(d / "cellprofiler" / "labels.zarr")
    assert (a[:] == b[:]).all() and a[:].max() > 0
    fa = pd.read_parquet(d / "inprocess" / "cp.parquet")
    fb = pd.read_parquet(d / "cellprofiler" / "cp.parquet")
    assert len(fa) == len(fb) > 0
    assert {c for c in fb.columns} <= set(fa.columns)
    wa, wb = pd.read_parquet(d / "inprocess" / "wells.parquet"), pd.read_parquet(d / "cellprofiler" / "wells.parquet")
    assert list(wa["Metadata_Well"]) == list(wb["Metadata_Well"])
