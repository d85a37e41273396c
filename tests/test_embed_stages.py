"""Method → well-profile stages, the same for every method: embed_plate (registry embed function)
→ gather → method_profiles (one aggregation, plate-map join, QC of empty wells); bring-your-own
embeddings with their errors."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from morphobench.data.tables import CHANNELS, filename_col, pathname_col
from morphobench.embed.baselines import pixel_stats_site
from morphobench import methods
from morphobench.embed.stages import EmbedInputs, embed_plate, gather_embeddings, method_profiles
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


def _spec(name, **params):
    return methods.Configured(methods.get(name), params).spec()


def test_random_method_writes_one_row_per_well(tmp_path):
    wells = _plate_map()
    wells.to_parquet(tmp_path / "wells.parquet")
    spec = _spec("random", dim=64, seed=1)
    inp = EmbedInputs(wells=str(tmp_path / "wells.parquet"))
    parts = [tmp_path / f"{p}.parquet" for p in ("P1", "P2")]
    for p, out in zip(("P1", "P2"), parts, strict=True):
        rows = embed_plate(spec, p, out, inp)
        assert set(rows["Metadata_Plate"]) == {p}
    method_profiles(spec, parts, tmp_path / "wells.parquet", None, tmp_path / "well.parquet")
    prof = pd.read_parquet(tmp_path / "well.parquet")
    assert len(prof) == len(wells) and prof.filter(like="emb_").shape[1] == 64
    assert (pd.read_csv(tmp_path / "well_qc.tsv", sep="\t")["status"] == "ok").all()
    # per-plate vectors equal the whole-map vectors (they depend on seed, plate and well only)
    from morphobench.embed.baselines import random_profiles

    ref = random_profiles(wells[["Metadata_Plate", "Metadata_Well"]], dim=64, seed=1)
    np.testing.assert_array_equal(prof.filter(like="emb_").to_numpy(), ref.filter(like="emb_").to_numpy())


def test_pixel_stats_plate_then_gather_matches_site_means(tmp_path):
    wells = _plate_map()
    sheet = _sheet(tmp_path, wells)
    sheet.to_parquet(tmp_path / "images.parquet")
    wells.to_parquet(tmp_path / "wells.parquet")
    spec = _spec("pixel_stats")
    inp = EmbedInputs(wells=str(tmp_path / "wells.parquet"), sheet=str(tmp_path / "images.parquet"))
    parts = []
    for p in ("P1", "P2"):
        parts.append(tmp_path / f"{p}.parquet")
        embed_plate(spec, p, parts[-1], inp)
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
    gather_embeddings(parts, tmp_path / "site.parquet")
    assert len(pd.read_parquet(tmp_path / "site.parquet")) == 10  # 12 sites, 2 dropped
    method_profiles(spec, [tmp_path / "site.parquet"], tmp_path / "wells.parquet", tmp_path / "images.parquet",
                    tmp_path / "well.parquet")
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
    with pytest.raises(MorphobenchError, match="method random .*not in the plate map"):
        method_profiles(_spec("random"), [tmp_path / "p.parquet"], tmp_path / "wells.parquet", None,
                        tmp_path / "well.parquet")
    assert not (tmp_path / "well.parquet").exists()


def _user(tmp_path, df=None, name="my_profiles"):
    m = methods.user_method({"name": name, "kind": "embeddings", "path": str(tmp_path / "mine.parquet")})
    if df is not None:
        df.to_parquet(tmp_path / "mine.parquet")
    return methods.Configured(m).spec()


def test_user_embeddings_several_rows_per_well_are_averaged(tmp_path):
    wells = _plate_map()
    wells.to_parquet(tmp_path / "wells.parquet")
    rng = np.random.default_rng(0)
    cells = wells[["Metadata_Plate", "Metadata_Well"]].loc[np.repeat(wells.index, 3)].reset_index(drop=True)
    cells["Metadata_Perturbation"] = "ignored: the plate map's is used"
    x = rng.normal(size=(len(cells), 4))
    df = pd.concat([cells, pd.DataFrame(x, columns=list("abcd"))], axis=1)
    spec = _user(tmp_path, df)
    method_profiles(spec, [tmp_path / "mine.parquet"], tmp_path / "wells.parquet", None, tmp_path / "well.parquet")
    prof = pd.read_parquet(tmp_path / "well.parquet")
    assert len(prof) == len(wells) and list(prof.columns[-4:]) == list("abcd")
    np.testing.assert_allclose(prof[list("abcd")].to_numpy()[0], x[:3].mean(0))
    assert prof.loc[0, "Metadata_Perturbation"] == wells.loc[0, "Metadata_Perturbation"]


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda d: None, "file not found"),
    (lambda d: d.drop(columns="Metadata_Plate"), "no Metadata_Plate"),
    (lambda d: d.assign(a=np.where(d.index == 2, np.nan, d["a"])), "NaN/inf"),
    (lambda d: d.assign(b=np.where(d.index == 1, np.inf, d["b"])), "NaN/inf"),
    (lambda d: d.assign(Metadata_Well=np.where(d.index == 0, "H12", d["Metadata_Well"])), "not in the plate map"),
])
def test_user_embeddings_bad_input_names_the_method_and_file(tmp_path, mutate, needle):
    wells = _plate_map()
    wells.to_parquet(tmp_path / "wells.parquet")
    good = pd.concat([wells[["Metadata_Plate", "Metadata_Well"]],
                      pd.DataFrame(np.ones((len(wells), 2)), columns=["a", "b"])], axis=1)
    bad = mutate(good)
    spec = _user(tmp_path, bad)
    with pytest.raises(MorphobenchError, match=needle) as err:
        method_profiles(spec, [tmp_path / "mine.parquet"], tmp_path / "wells.parquet", None,
                        tmp_path / "well.parquet")
    assert "my_profiles" in str(err.value) and "mine.parquet" in str(err.value)
    assert not (tmp_path / "well.parquet").exists() and not (tmp_path / "well_qc.tsv").exists()


def test_cellprofiler_drops_undefined_features_instead_of_failing(tmp_path):
    wells = _plate_map()
    wells.to_parquet(tmp_path / "wells.parquet")
    part = wells[["Metadata_Plate", "Metadata_Well"]].assign(
        Metadata_Count_Cells=5, Cells_AreaShape_Area=np.arange(len(wells), dtype=float),
        Cells_Correlation_Correlation_DNA_ER=np.where(np.arange(len(wells)) == 3, np.nan, 0.5))
    part.to_parquet(tmp_path / "p.parquet")
    method_profiles(_spec("cellprofiler"), [tmp_path / "p.parquet"], tmp_path / "wells.parquet", None,
                    tmp_path / "well.parquet")
    prof = pd.read_parquet(tmp_path / "well.parquet")
    assert "Cells_Correlation_Correlation_DNA_ER" not in prof and "Cells_AreaShape_Area" in prof
    assert (prof["Metadata_Count_Cells"] == 5).all()
