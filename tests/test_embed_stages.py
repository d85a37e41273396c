"""Method → well-profile stages: random, pixel_stats (from TIFFs), gather with QC of empty wells."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from morphobench.data.tables import CHANNELS, filename_col, pathname_col
from morphobench.embed.baselines import pixel_stats_site
from morphobench.embed.stages import gather_wells, pixel_stats_plate, random_method
from morphobench.io import MorphobenchError


def _plate_map(plates=("P1", "P2"), wells=("A01", "A02", "B01")):
    rows = []
    for p in plates:
        for i, w in enumerate(wells):
            rows.append({"Metadata_Plate": p, "Metadata_Well": w,
                         "Metadata_Perturbation": "DMSO" if i == 0 else f"g{i}",
                         "Metadata_PertType": "negcon" if i == 0 else "trt"})
    return pd.DataFrame(rows)


def _sheet(tmp_path, wells: pd.DataFrame, sites=2):
    rng = np.random.default_rng(0)
    rows = []
    for _, w in wells.iterrows():
        for s in range(1, sites + 1):
            rec = {"Metadata_Source": "src", "Metadata_Batch": "B1", "Metadata_Plate": w.Metadata_Plate,
                   "Metadata_Well": w.Metadata_Well, "Metadata_Site": s}
            for ch in CHANNELS:
                f = f"{w.Metadata_Plate}_{w.Metadata_Well}_s{s}_{ch}.tif"
                tifffile.imwrite(tmp_path / f, rng.integers(0, 4000, (32, 32), dtype=np.uint16))
                rec[filename_col(ch)] = f
                rec[pathname_col(ch)] = str(tmp_path)
            rows.append(rec)
    return pd.DataFrame(rows)


def test_random_method_writes_one_row_per_well(tmp_path):
    wells = _plate_map()
    wells.to_parquet(tmp_path / "wells.parquet")
    random_method(tmp_path / "wells.parquet", None, tmp_path / "well.parquet", dim=64, seed=1)
    prof = pd.read_parquet(tmp_path / "well.parquet")
    assert len(prof) == len(wells) and prof.filter(like="emb_").shape[1] == 64
    assert (pd.read_csv(tmp_path / "well_qc.tsv", sep="\t")["status"] == "ok").all()


def test_pixel_stats_plate_then_gather_matches_site_means(tmp_path):
    wells = _plate_map()
    sheet = _sheet(tmp_path, wells)
    sheet.to_parquet(tmp_path / "images.parquet")
    wells.to_parquet(tmp_path / "wells.parquet")
    parts = []
    for p in ("P1", "P2"):
        parts.append(tmp_path / f"{p}.parquet")
        pixel_stats_plate(tmp_path / "images.parquet", p, parts[-1])
    site = pd.read_parquet(parts[0])
    assert len(site) == 6 and site.filter(like="PixelStats_").shape[1] == 30
    # one site recomputed by hand
    r = sheet.iloc[0]
    img = np.stack([tifffile.imread(tmp_path / r[filename_col(c)]) for c in CHANNELS]).astype(np.float32)
    expect = pixel_stats_site(img)
    got = site.iloc[0]
    for k, v in expect.items():
        assert got[k] == pytest.approx(v)
    # drop one well's sites: it must be reported, not silently lost
    parts_df = pd.read_parquet(parts[1])
    parts_df = parts_df[parts_df.Metadata_Well != "B01"]
    parts_df.to_parquet(parts[1])
    gather_wells(parts, tmp_path / "wells.parquet", tmp_path / "images.parquet", tmp_path / "well.parquet")
    prof = pd.read_parquet(tmp_path / "well.parquet")
    assert len(prof) == 5
    assert prof["Metadata_Batch"].eq("B1").all() and prof["Metadata_PertType"].notna().all()
    qc = pd.read_csv(tmp_path / "well_qc.tsv", sep="\t")
    assert qc.loc[qc.status == "no_data", ["Metadata_Plate", "Metadata_Well"]].values.tolist() == [["P2", "B01"]]
    w = prof[(prof.Metadata_Plate == "P1") & (prof.Metadata_Well == "A01")].iloc[0]
    s = site[site.Metadata_Well == "A01"]
    assert w["PixelStats_mean_DNA"] == pytest.approx(s["PixelStats_mean_DNA"].mean())


def test_gather_rejects_wells_missing_from_the_plate_map(tmp_path):
    wells = _plate_map()
    wells.to_parquet(tmp_path / "wells.parquet")
    part = pd.DataFrame({"Metadata_Plate": ["P9"], "Metadata_Well": ["A01"], "f": [1.0]})
    part.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(MorphobenchError, match="not in the plate map"):
        gather_wells([tmp_path / "p.parquet"], tmp_path / "wells.parquet", None, tmp_path / "well.parquet")
    assert not (tmp_path / "well.parquet").exists()
