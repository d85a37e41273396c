"""Campfire: the model (tiny sizes), its loss, the channel-subset sampler, the ID/OOD split (incl.
the real JUMP source_3 TARGET2 plate map), leak-free linear probes, channel sets and Z′."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import morphobench.models  # noqa: F401  (timm on CPU-only torch)
from morphobench.io import MorphobenchError
from morphobench.models import create_model
from morphobench.models.campfire import (
    Campfire,
    campfire_loss,
    fourier_filter,
    fourier_mask,
    random_keep,
    sample_channel_subset,
)

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "plugins"))

TINY = {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_dim": 16,
        "decoder_depth": 1, "decoder_heads": 2}


def tiny_model(in_chans=3, seed=0, **kw) -> Campfire:
    torch.manual_seed(seed)
    return create_model("campfire_s14", in_chans=in_chans, num_classes=0, num_groups=0, **{**TINY, **kw})


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_forward_backward_with_1_2_3_channels(channels):
    m = tiny_model(in_chans=3, channel_subsampling=False)
    m.train()
    x = torch.randn(4, channels, 28, 28)
    out = m({"image": x})
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["n_channels"] == channels
    out["loss"].backward()
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "decoder_blocks.0.mlp.fc1.weight",
                 "decoder_head.weight", "channel_embed.weight", "mask_token"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    emb = m.embed(x)
    assert emb.shape == (4, 32) and torch.isfinite(emb).all()


def test_decoder_has_one_parameter_set_whatever_the_channels():
    shapes = {c: {k: v.shape for k, v in tiny_model(in_chans=c).state_dict().items()} for c in (1, 3, 5)}
    assert shapes[1] == shapes[3] == shapes[5]
    dec = [k for k in shapes[3] if k.startswith(("decoder", "channel_embed", "mask_token"))]
    assert dec and not any(str(c) in k.split(".")[0] for k in dec for c in range(1, 6))
    # the same decoder weights reconstruct 1 and 4 channels
    m = tiny_model()
    m.eval()
    for c in (1, 4):
        pred, _ = m.reconstruct(torch.randn(2, c, 28, 28))
        assert pred.shape == (2, c, 28, 28)


def test_channel_subset_sampler_is_uniform_over_non_empty_subsets():
    from scipy.stats import chisquare

    torch.manual_seed(0)
    draws = [tuple(sample_channel_subset(3)) for _ in range(7000)]
    subsets = sorted(set(draws))
    assert len(subsets) == 7 and () not in subsets
    counts = np.array([draws.count(s) for s in subsets])
    assert chisquare(counts).pvalue > 0.001, counts
    # sizes follow the subset count (3 of size 1, 3 of size 2, 1 of size 3), not U{1..3}
    sizes = np.bincount([len(d) for d in draws], minlength=4)[1:] / len(draws)
    np.testing.assert_allclose(sizes, [3 / 7, 3 / 7, 1 / 7], atol=0.02)
    with pytest.raises(MorphobenchError):
        sample_channel_subset(0)


def test_training_batches_use_channel_subsets():
    m = tiny_model()
    m.train()
    torch.manual_seed(1)
    seen = {m({"image": torch.randn(2, 3, 28, 28)})["n_channels"] for _ in range(30)}
    assert seen == {1.0, 2.0, 3.0}
    m.eval()  # validation: every training channel
    assert m({"image": torch.randn(2, 3, 28, 28)})["n_channels"] == 3.0


def test_mask_is_the_same_for_every_channel_at_a_position():
    m = tiny_model()
    m.eval()
    torch.manual_seed(3)
    keep = random_keep(2, m.num_patches, 0.8)
    assert keep.shape == (2, 3) and all(len(set(k.tolist())) == 3 for k in keep)  # 16 patches, 20 % kept
    x = torch.randn(2, 3, 28, 28)
    base, _ = m.encode(x, keep)
    assert base.shape == (2, 3 * 3, 32)
    masked = sorted(set(range(16)) - set(keep[0].tolist()))
    for c in range(3):  # changing a masked position of any one channel changes nothing the encoder sees
        y = x.clone()
        r, q = divmod(masked[0], 4)
        y[0, c, r * 7:(r + 1) * 7, q * 7:(q + 1) * 7] += 5.0
        torch.testing.assert_close(m.encode(y, keep)[0], base)
    for c in range(3):  # a kept position is visible in every channel
        y = x.clone()
        r, q = divmod(int(keep[0, 0]), 4)
        y[0, c, r * 7:(r + 1) * 7, q * 7:(q + 1) * 7] += 5.0
        assert not torch.allclose(m.encode(y, keep)[0][0], base[0])


def test_embedding_accepts_any_channels_in_any_order():
    m = tiny_model()
    m.eval()
    assert m.channel_agnostic
    x = torch.randn(3, 5, 28, 28)
    with torch.no_grad():
        e = m.embed(x)
        assert e.shape == (3, 32)
        torch.testing.assert_close(m.embed(x[:, [4, 2, 0, 1, 3]]), e, rtol=1e-4, atol=1e-5)
        assert m.embed(x[:, :1]).shape == (3, 32)
    with pytest.raises(MorphobenchError, match="expected"):
        m.embed(torch.randn(1, 2, 30, 30))


def test_channel_embedding_takes_no_gradient_through_the_batch_mean():
    m = tiny_model()
    _, means = m.encode(torch.randn(2, 3, 28, 28), random_keep(2, 16, 0.8))
    assert means.shape == (3, 32) and not means.requires_grad


def test_fourier_filters_remove_the_requested_fraction():
    low = fourier_mask(28, 28, 0.25, "low")
    high = fourier_mask(28, 28, 0.1, "high")
    assert abs(1 - low.mean().item() - 0.25) < 0.03 and abs(1 - high.mean().item() - 0.1) < 0.03
    assert low[0, 0] == 1 and high[0, 0] == 0  # low pass keeps DC, high pass removes it
    assert fourier_mask(8, 8, 0.0, "low").all()
    const = torch.full((1, 1, 28, 28), 3.0)
    torch.testing.assert_close(fourier_filter(const, 0.25, "low"), const)  # a constant has no high frequencies
    torch.testing.assert_close(fourier_filter(const, 0.1, "high"), torch.zeros_like(const), atol=1e-5, rtol=0)
    x = torch.randn(2, 1, 28, 28)
    y = fourier_filter(x, 0.3, "low")
    assert y.dtype == torch.float32 and y.shape == x.shape
    with pytest.raises(MorphobenchError):
        fourier_mask(8, 8, 1.0, "low")


def test_campfire_loss_terms():
    torch.manual_seed(0)
    p, t = torch.randn(2, 2, 28, 28), torch.randn(2, 2, 28, 28)
    only = campfire_loss(p, t, lambda_spatial=1.0, lambda_low=0.0, lambda_high=0.0, lambda_fourier=0.0,
                         low_pass_fraction=0.25, high_pass_fraction=0.1)
    torch.testing.assert_close(only["loss"], ((p - t) ** 2).mean())
    full = campfire_loss(p, t, lambda_spatial=0.25, lambda_low=0.25, lambda_high=0.25, lambda_fourier=0.25,
                         low_pass_fraction=0.25, high_pass_fraction=0.1)
    fft = (torch.fft.fft2(p, norm="ortho").abs() - torch.fft.fft2(t, norm="ortho").abs()).abs().mean()
    torch.testing.assert_close(full["l1_fft"], fft)
    expect = 0.25 * (full["mse"] + full["mse_low"] + full["mse_high"] + full["l1_fft"])
    torch.testing.assert_close(full["loss"], expect)
    assert campfire_loss(t, t, **{k: 0.25 for k in ("lambda_spatial", "lambda_low", "lambda_high", "lambda_fourier")},
                         low_pass_fraction=0.2, high_pass_fraction=0.2)["loss"].abs() < 1e-6


def test_registered_sizes_and_bad_parameters():
    from morphobench import methods

    for name, dim in (("campfire_s14", 96), ("campfire_b14", 768), ("campfire_l14", 1024)):
        m = methods.get(name)
        assert m.family == "campfire" and m.input == "cell112" and m.split == "campfire"
        assert m.defaults["embed_dim"] == dim and m.defaults["channels"] == ["DNA", "AGP", "Mito"]
        assert m.defaults["lr"] == 5e-4 and m.defaults["weight_decay"] == 0.005
    # the registry's model defaults are the model's own defaults (one documented set)
    import inspect

    sig = inspect.signature(Campfire.__init__).parameters
    for k, v in methods.get("campfire_s14").defaults.items():
        if k in sig and k not in ("embed_dim", "depth", "num_heads", "decoder_dim", "decoder_depth", "decoder_heads"):
            assert sig[k].default == v, k
    big = create_model("campfire_l14", in_chans=3, embed_dim=64, depth=1, num_heads=4, decoder_dim=32,
                       decoder_depth=1, decoder_heads=2)
    assert big.patch_size == 14 and big.num_patches == 64
    with pytest.raises(MorphobenchError, match="multiple of patch_size"):
        create_model("campfire_s14", img_size=100)
    with pytest.raises(MorphobenchError, match="mask_ratio"):
        tiny_model(mask_ratio=1.0)
    with pytest.raises(MorphobenchError, match="heads"):
        tiny_model(embed_dim=30, num_heads=4)


# ------------------------------------------------------------------------------------------------
# split
# ------------------------------------------------------------------------------------------------
def plate_map(n_plates=6, n_cpd=10, n_gene=4, dmso=4, seed=0) -> pd.DataFrame:
    """Every compound and gene once per plate (TARGET2-like), two positive controls, DMSO wells."""
    rows = []
    for p in range(n_plates):
        perts = ([(f"C{i:02d}", "trt", f"C{i:02d}") for i in range(n_cpd)]
                 + [(f"G{i}", "trt", None) for i in range(n_gene)]
                 + [("POS1", "poscon", "POS1"), ("POS2", "poscon", "POS2")] + [("DMSO", "negcon", "DMSO")] * dmso)
        for w, (pert, kind, cpd) in enumerate(perts):
            rows.append({"Metadata_Plate": f"P{p}", "Metadata_Well": f"W{w:03d}", "Metadata_Perturbation": pert,
                         "Metadata_PertType": kind, "Metadata_Compound": cpd})
    return pd.DataFrame(rows)


def test_campfire_split_invariants_and_quotas():
    from morphobench.training.splits import SPLITS, check_campfire_split, check_split

    w = plate_map()
    t = SPLITS["campfire"](w, seed=1, n_heldout_plates=2, n_heldout_compounds=3, n_train=2, n_val=1, n_test=1)
    check_split(t)
    check_campfire_split(t)
    assert len(t) == len(w) and not t.duplicated(["Metadata_Plate", "Metadata_Well"]).any()  # no well in two splits
    ood = set(t.loc[t["split"].isin(["test_out_plate", "test_out_all"]), "Metadata_Plate"])
    held = set(t.loc[t["split"].isin(["test_out_compound", "test_out_all"]), "Metadata_Perturbation"])
    assert len(ood) == 2 and len(held) == 3 and all(h.startswith("C") for h in held)  # compounds, never controls
    assert not t[t["Metadata_Perturbation"].isin(held)]["split"].isin(["train", "val", "test"]).any()
    assert set(t[t["Metadata_Plate"].isin(ood)]["split"]) <= {"test_out_plate", "test_out_all"}
    idp = t[t["split"].isin(["train", "val", "test"])]
    counts = idp.groupby(["Metadata_Perturbation", "split"]).size().unstack(fill_value=0)
    assert (counts["train"] == 2).all() and (counts["val"] == 1).all() and (counts["test"] == 1).all()
    # one well per plate: a perturbation's 4 wells come from 4 different ID plates
    assert (idp.groupby("Metadata_Perturbation")["Metadata_Plate"].nunique() == 4).all()
    assert set(t.loc[(t["Metadata_Perturbation"] == "DMSO") & ~t["Metadata_Plate"].isin(ood), "split"]) == {
        "train", "val", "test", "unused"}  # extra DMSO wells are left out, not dropped
    again = SPLITS["campfire"](w, seed=1, n_heldout_plates=2, n_heldout_compounds=3, n_train=2, n_val=1, n_test=1)
    pd.testing.assert_frame_equal(t, again)  # seeded
    other = SPLITS["campfire"](w, seed=2, n_heldout_plates=2, n_heldout_compounds=3, n_train=2, n_val=1, n_test=1)
    assert not t["split"].equals(other["split"])


def test_campfire_split_with_few_wells_and_extra_plates():
    from morphobench.training.splits import SPLITS

    w = plate_map(n_plates=3)
    # 2 ID plates: quotas of 4 wells cannot be met; every perturbation gets train, then test
    t = SPLITS["campfire"](w, seed=0, n_heldout_plates=1, n_heldout_compounds=2, n_train=2, n_val=1, n_test=1)
    idp = t[t["split"].isin(["train", "val", "test"]) & (t["Metadata_PertType"] == "trt")]
    assert set(idp.groupby("Metadata_Perturbation")["split"].apply(lambda s: tuple(sorted(s)))) == {("test", "train")}
    # n_train null: every remaining well trains; without one_well_per_plate every DMSO well is used
    t = SPLITS["campfire"](w, seed=0, n_heldout_plates=1, n_heldout_compounds=2, n_train=None, n_val=1, n_test=1,
                           one_well_per_plate=False)
    assert "unused" not in set(t["split"])
    # plates outside the design only add training wells (held-out compounds there are unused)
    extra = plate_map(n_plates=2).assign(Metadata_Plate=lambda d: "X" + d["Metadata_Plate"])
    t = SPLITS["campfire"](pd.concat([w, extra]), seed=0, n_heldout_plates=1, n_heldout_compounds=2,
                           plates=["P0", "P1", "P2"], other_plates_train_fraction=0.5)
    xs = t[t["Metadata_Plate"].str.startswith("X")]
    assert set(xs["split"]) == {"train", "unused"} and 0.2 < (xs["split"] == "train").mean() < 0.8
    held = set(t.loc[t["split"] == "test_out_compound", "Metadata_Perturbation"])
    assert (xs.loc[xs["Metadata_Perturbation"].isin(held), "split"] == "unused").all()


@pytest.mark.parametrize(("kw", "needle"), [
    ({"n_heldout_plates": 6}, "n_heldout_plates"),
    ({"n_heldout_compounds": 11}, "n_heldout_compounds"),
    ({"controls": ["NOPE"]}, "controls"),
    ({"plates": ["P0", "Q9"]}, "plates"),
    ({"n_train": 0}, "n_train"),
])
def test_campfire_split_errors_name_the_key(kw, needle):
    from morphobench.training.splits import SPLITS

    with pytest.raises(MorphobenchError, match=f"splits.campfire.{needle}"):
        SPLITS["campfire"](plate_map(), **kw)


def test_campfire_split_guard_catches_leaks():
    from morphobench.training.splits import SPLITS, check_campfire_split, check_split

    t = SPLITS["campfire"](plate_map(), n_heldout_plates=2, n_heldout_compounds=3, n_train=2, n_val=1, n_test=1)
    held = t.loc[t["split"] == "test_out_compound", "Metadata_Perturbation"].iat[0]
    bad = t.copy()
    bad.loc[(bad["Metadata_Perturbation"] == held) & (bad["split"] == "test_out_all"), "split"] = "val"
    with pytest.raises(MorphobenchError, match="held-out compound"):
        check_campfire_split(bad)
    bad = t.copy()
    bad.loc[bad["split"] == "test_out_plate", "split"] = "train"
    with pytest.raises(MorphobenchError, match="held-out plates"):
        check_campfire_split(bad)
    check_split(t)  # a by-well kind: a treatment in train and test is allowed
    with pytest.raises(MorphobenchError, match="unknown split_kind"):
        check_split(t.assign(split_kind="nope"))
    with pytest.raises(MorphobenchError, match="treatment"):
        check_split(t.drop(columns="split_kind"))  # without its kind the by-treatment rule applies


def jump_target2_plate_map(resources_dir) -> pd.DataFrame:
    wells = pd.read_parquet(resources_dir / "jump" / "well.parquet")
    plates = pd.read_parquet(resources_dir / "jump" / "plate.parquet")
    t2 = plates[(plates["Metadata_Source"] == "source_3") & (plates["Metadata_PlateType"] == "TARGET2")]
    w = wells.merge(t2, on=["Metadata_Source", "Metadata_Plate"])
    w = w.rename(columns={"Metadata_JCP2022": "Metadata_Perturbation"})
    w["Metadata_Compound"] = w["Metadata_Perturbation"]
    w["Metadata_PertType"] = np.where(w["Metadata_Perturbation"] == "JCP2022_033924", "negcon", "trt")
    return w


#: the 8 JUMP positive controls (Campfire's control_ids with DMSO, JCP2022_033924)
JUMP_POSCON = ["JCP2022_012818", "JCP2022_025848", "JCP2022_035095", "JCP2022_037716", "JCP2022_046054",
               "JCP2022_050797", "JCP2022_064022", "JCP2022_085227"]


def test_campfire_split_on_jump_source3_target2(resources_dir):
    from morphobench.training.splits import SPLITS, check_campfire_split, check_split

    w = jump_target2_plate_map(resources_dir)
    assert w["Metadata_Plate"].nunique() == 25 and w["Metadata_Perturbation"].nunique() == 302
    t = SPLITS["campfire"](w, controls=["JCP2022_033924", *JUMP_POSCON])  # the paper's defaults
    check_split(t)
    check_campfire_split(t)
    ood = set(t.loc[t["split"].isin(["test_out_plate", "test_out_all"]), "Metadata_Plate"])
    held = set(t.loc[t["split"].isin(["test_out_compound", "test_out_all"]), "Metadata_Perturbation"])
    assert len(ood) == 5 and len(held) == 60 and not held & {"JCP2022_033924", *JUMP_POSCON}
    idp = t[t["split"].isin(["train", "val", "test"])]
    assert idp["Metadata_Perturbation"].nunique() == 302 - 60  # 233 ID compounds + 9 controls
    per = idp.groupby(["Metadata_Perturbation", "split"]).size().unstack(fill_value=0)
    assert (per["val"] == 2).all() and (per["test"] == 4).all() and per["train"].between(13, 14).all()
    assert (per["train"] == 14).mean() > 0.99
    # one well per plate: each compound's ID wells are on distinct plates
    assert (idp.groupby("Metadata_Perturbation")["Metadata_Plate"].agg(lambda s: s.is_unique)).all()
    dmso = t[(t["Metadata_Perturbation"] == "JCP2022_033924") & ~t["Metadata_Plate"].isin(ood)]
    assert (dmso["split"] == "unused").sum() == 20 * 64 - 20


# ------------------------------------------------------------------------------------------------
# probes
# ------------------------------------------------------------------------------------------------
def probe_cells(n_per_well=12, seed=0) -> pd.DataFrame:
    """Probe cells of a small design: 3 controls × (2 train, 1 val, 1 test, 1 OOD) wells, 4 held-out
    compounds × 3 ID wells + 1 OOD well; well-level effects on top of class means."""
    rng = np.random.default_rng(seed)
    rows = []
    w = 0
    for task, classes, splits in (("A", ["DMSO", "P1", "P2"], ["train", "train", "val", "test", "test_out_plate"]),
                                  ("B", ["H1", "H2", "H3", "H4"], ["test_out_compound"] * 3 + ["test_out_all"])):
        for c in classes:
            for s in splits:
                w += 1
                plate = "OOD" if s in ("test_out_plate", "test_out_all") else f"P{w % 3}"
                for k in range(n_per_well):
                    rows.append({"Metadata_Plate": plate, "Metadata_Well": f"W{w:03d}", "Metadata_Site": 1,
                                 "ObjectNumber": k + 1, "task": task, "split": s, "probe_class": c,
                                 "Crop_CenterX": int(rng.integers(0, 64)), "Crop_CenterY": int(rng.integers(0, 64))})
    return pd.DataFrame(rows)


def class_vectors(cells, sep=2.0, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    centre = {c: rng.normal(0, sep, dim) for c in sorted(cells["probe_class"].unique())}
    well = {k: rng.normal(0, 0.3, dim) for k in cells["Metadata_Well"].unique()}
    return np.stack([centre[c] + well[k] + rng.normal(0, 1, dim)
                     for c, k in zip(cells["probe_class"], cells["Metadata_Well"], strict=True)])


def test_grouped_folds_never_split_a_well():
    from morphobench.evaluate.probes import grouped_folds

    cells = probe_cells()
    b = cells[cells["split"] == "test_out_compound"]
    fold = grouped_folds(b["probe_class"].to_numpy(), b["Metadata_Well"].to_numpy(), 5, seed=0)
    assert set(fold) == set(range(5))
    assert (b.assign(f=fold).groupby("Metadata_Well")["f"].nunique() == 1).all()
    with pytest.raises(MorphobenchError, match="cannot fill"):
        grouped_folds(b["probe_class"].to_numpy(), b["Metadata_Well"].to_numpy(), 13, seed=0)


def test_probe_cannot_read_test_data_before_its_final_evaluation(monkeypatch):
    from morphobench.evaluate import probes

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), np.array(["a", "b", "c"] * 20, dtype=object)
    sealed = probes.SealedTestSet("test", x[:10], y[:10])
    # a probe under training is not final: reading the test set raises
    unfinished = probes.LinearProbe(np.zeros(4), np.ones(4), np.zeros((3, 4)), np.zeros(3),
                                    np.array(["a", "b", "c"], dtype=object), 0, [])
    with pytest.raises(MorphobenchError, match="before the probe's training finished"):
        sealed.read(unfinished)
    with pytest.raises(MorphobenchError):
        sealed.read(None)
    # a training routine that peeks at the test data is stopped by the guard
    real_fit = probes.fit_linear_probe

    def peeking_fit(*args, **kw):
        probe = real_fit(*args, **kw)
        sealed.read(probe)  # still inside training: probe.final is False
        return probe

    monkeypatch.setattr(probes, "fit_linear_probe", peeking_fit)
    with pytest.raises(MorphobenchError, match="test data may only be used for the final evaluation"):
        probes.run_probe(x[10:40], y[10:40], x[40:], y[40:], [sealed])
    monkeypatch.setattr(probes, "fit_linear_probe", real_fit)
    # the normal path reads each test set exactly once, after training
    t1 = probes.SealedTestSet("test", x[:10], y[:10])
    rows = probes.run_probe(x[10:40], y[10:40], x[40:], y[40:], [t1])
    assert t1.reads == 1 and rows[0]["n_test"] == 10


def test_probe_early_stops_on_validation_only():
    from morphobench.evaluate.probes import ProbeConfig, SealedTestSet, fit_linear_probe, run_probe

    cells = probe_cells()
    x = class_vectors(cells)
    y = cells["probe_class"].to_numpy(dtype=object)
    tr, va, te = (np.flatnonzero(cells["split"] == s) for s in ("train", "val", "test"))
    cfg = ProbeConfig(max_epochs=40, patience=5, lr=1e-2, batch_size=16)
    a = run_probe(x[tr], y[tr], x[va], y[va], [SealedTestSet("test", x[te], y[te])], cfg)
    # any other test data (even adversarial labels) leaves the trained probe and its epoch unchanged
    b = run_probe(x[tr], y[tr], x[va], y[va], [SealedTestSet("test", -x[te], y[te][::-1])], cfg)
    assert a[0]["best_epoch"] == b[0]["best_epoch"]
    p1, p2 = fit_linear_probe(x[tr], y[tr], x[va], y[va], cfg), fit_linear_probe(x[tr], y[tr], x[va], y[va], cfg)
    np.testing.assert_array_equal(p1.weight, p2.weight)  # deterministic
    # the chosen epoch is the first best validation accuracy, and stopping waits `patience` epochs
    assert p1.history[p1.best_epoch - 1] == max(p1.history)
    assert p1.best_epoch == 1 + int(np.argmax(p1.history))
    assert len(p1.history) <= min(cfg.max_epochs, p1.best_epoch + cfg.patience)
    # separable classes: far above chance
    assert a[0]["accuracy"] > 0.8 and a[0]["n_classes"] == 3
    with pytest.raises(MorphobenchError, match="no validation cells"):
        fit_linear_probe(x[tr], y[tr], x[:0], y[:0], cfg)


def test_probe_tasks_layout_and_chance_for_noise():
    from morphobench.evaluate.probes import ProbeConfig, probe_tasks, summarize

    cells = probe_cells()
    cfg = ProbeConfig(max_epochs=30, patience=5, lr=1e-2, batch_size=16)
    tab = probe_tasks(class_vectors(cells), cells, n_subsets=2, n_folds=3, cfg=cfg)
    assert len(tab) == 2 * 2 + 3 * 2
    assert set(zip(tab["task"], tab["test_split"])) == {("A", "test"), ("A", "test_out_plate"),
                                                        ("B", "test_out_compound"), ("B", "test_out_all")}
    a = tab[tab["task"] == "A"]
    assert (a["n_train"] == 36).all()  # 2 disjoint halves of the 72 training cells
    s = summarize(tab.assign(dataset="d", method="m", channel_set="default"))
    assert (s.loc[s["task"] == "A", "accuracy_mean"] > 0.7).all()
    # pure noise: every well gets an unrelated vector (like `random`), accuracy stays near chance
    rng = np.random.default_rng(1)
    wells = {k: rng.normal(size=6) for k in cells["Metadata_Well"].unique()}
    noise = np.stack([wells[k] for k in cells["Metadata_Well"]])
    tn = summarize(probe_tasks(noise, cells, n_subsets=2, n_folds=3, cfg=cfg).assign(
        dataset="d", method="random", channel_set="default"))
    assert (tn["accuracy_mean"] < 0.75).all()


def test_sample_probe_cells_caps_per_well():
    from morphobench.evaluate.probes import sample_probe_cells

    idx, split = [], []
    for w, (pert, s, n) in enumerate([("DMSO", "train", 150), ("P1", "val", 40), ("H1", "test_out_compound", 50),
                                      ("H1", "test_out_all", 10), ("T1", "train", 80), ("DMSO", "unused", 50)]):
        split.append({"Metadata_Plate": "A", "Metadata_Well": f"W{w}", "Metadata_Perturbation": pert,
                      "Metadata_PertType": "trt", "fold": 0, "split": s, "split_kind": "campfire"})
        idx += [{"Metadata_Plate": "A", "Metadata_Well": f"W{w}", "Metadata_Site": 1, "ObjectNumber": k}
                for k in range(n)]
    cells = sample_probe_cells(pd.DataFrame(idx), pd.DataFrame(split), ["DMSO", "P1"], seed=0)
    n = cells.groupby("Metadata_Well").size().to_dict()
    assert n == {"W0": 100, "W1": 40, "W2": 30, "W3": 10}  # T1 (an ID treatment) and unused wells are not probed
    assert set(cells.loc[cells["task"] == "A", "probe_class"]) == {"DMSO", "P1"}
    again = sample_probe_cells(pd.DataFrame(idx).iloc[::-1], pd.DataFrame(split), ["DMSO", "P1"], seed=0)
    assert sorted(map(tuple, again[["Metadata_Well", "ObjectNumber"]].values)) == \
        sorted(map(tuple, cells[["Metadata_Well", "ObjectNumber"]].values))


def test_cell_vectors_at_every_level():
    from morphobench.evaluate.probes import cell_vectors

    cells = pd.DataFrame({"Metadata_Plate": ["A", "A", "A"], "Metadata_Well": ["W1", "W1", "W2"],
                          "Metadata_Site": [1, 2, 1], "ObjectNumber": [5, 6, 7],
                          "Crop_CenterX": [10, 40, 70], "Crop_CenterY": [10, 40, 10]})
    well = pd.DataFrame({"Metadata_Plate": ["A", "A"], "Metadata_Well": ["W1", "W2"], "f": [1.0, 2.0]})
    x, ok = cell_vectors(cells, well, "well")
    assert ok.all() and x[:, 0].tolist() == [1.0, 1.0, 2.0]
    site = pd.DataFrame({"Metadata_Plate": ["A"] * 3, "Metadata_Well": ["W1", "W1", "W2"], "Metadata_Site": [1, 2, 1],
                         "f": [1.0, 2.0, 3.0]})
    assert cell_vectors(cells, site, "site")[0][:, 0].tolist() == [1.0, 2.0, 3.0]
    cell = pd.DataFrame({"Metadata_Plate": ["A", "A"], "Metadata_Well": ["W1", "W2"], "Metadata_Site": [1, 1],
                         "Metadata_ObjectNumber": [5, 7], "f": [8.0, 9.0]})
    x, ok = cell_vectors(cells, cell, "cell")
    assert ok.tolist() == [True, False, True] and x[[0, 2], 0].tolist() == [8.0, 9.0]
    tiles = pd.DataFrame({"Metadata_Plate": ["A"] * 4, "Metadata_Well": ["W1", "W1", "W1", "W2"],
                          "Metadata_Site": [1, 1, 2, 1], "Metadata_Crop_X0": [0, 32, 32, 64],
                          "Metadata_Crop_Y0": [0, 0, 32, 0], "f": [1.0, 2.0, 3.0, 4.0]})
    x, ok = cell_vectors(cells, tiles, "tile", tile_size=32)
    assert ok.all() and x[:, 0].tolist() == [1.0, 3.0, 4.0]


# ------------------------------------------------------------------------------------------------
# Z′
# ------------------------------------------------------------------------------------------------
def test_zprime_equals_a_hand_computation():
    from morphobench.evaluate.zprime import projection_scores, zprime_pairs

    ref = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    tgt = np.array([[4.0, 1.0], [5.0, 1.0], [6.0, 1.0]])
    # by hand: μ_ref = (1, 1/3); centred target mean = (4, 2/3); u = (4, 2/3)/‖·‖
    u = np.array([4.0, 2.0 / 3.0]) / np.hypot(4.0, 2.0 / 3.0)
    s_r = (ref - [1.0, 1.0 / 3.0]) @ u
    s_t = (tgt - [1.0, 1.0 / 3.0]) @ u
    sr, st = projection_scores(ref, tgt)
    np.testing.assert_allclose(sr, s_r)
    np.testing.assert_allclose(st, s_t)
    assert abs(sr.mean()) < 1e-12  # the reference is centred
    sd = lambda v: np.sqrt(((v - v.mean()) ** 2).sum() / (len(v) - 1))  # noqa: E731
    expect = 1 - 3 * (sd(s_r) + sd(s_t)) / abs(s_r.mean() - s_t.mean())
    prof = pd.DataFrame(np.vstack([ref, tgt]), columns=["f1", "f2"]).assign(
        Metadata_Perturbation=["neg"] * 3 + ["pos"] * 3)
    z = zprime_pairs(prof, ["neg", "pos"], ["neg"])
    assert len(z) == 1 and z["reference"].iat[0] == "neg" and z["target"].iat[0] == "pos"
    np.testing.assert_allclose(z["zprime"].iat[0], expect)
    med = lambda v: np.median(v)  # noqa: E731
    mad = lambda v: 1.4826 * np.median(np.abs(v - np.median(v)))  # noqa: E731
    np.testing.assert_allclose(z["zprime_robust"].iat[0], 1 - 3 * (mad(s_r) + mad(s_t)) / abs(med(s_r) - med(s_t)))
    # 1-D check against the textbook formula: scores are the values themselves (up to sign)
    one = pd.DataFrame({"f": [1.0, 2.0, 3.0, 10.0, 11.0, 12.0], "Metadata_Perturbation": ["a"] * 3 + ["b"] * 3})
    np.testing.assert_allclose(zprime_pairs(one, ["a", "b"], ["a"])["zprime"].iat[0], 1 - 3 * (1 + 1) / 9)


def test_zprime_groups_pairs_and_skips():
    from morphobench.evaluate.zprime import resolve_groups, zprime_pairs

    rng = np.random.default_rng(0)
    prof = pd.DataFrame(rng.normal(size=(9, 3)), columns=["a", "b", "c"])
    prof["Metadata_Perturbation"] = ["DMSO"] * 4 + ["P1"] * 3 + ["P2"] * 1 + ["T"]
    prof["Metadata_PertType"] = ["negcon"] * 4 + ["poscon"] * 4 + ["trt"]
    grp, ref = resolve_groups(prof, None, None)
    assert grp == ["DMSO", "P1", "P2"] and ref == ["DMSO"]
    z = zprime_pairs(prof, grp, ref)
    assert list(z["target"]) == ["P1", "P2"] and z["skip_reason"].iat[1] == "fewer than 2 wells in a group"
    assert np.isnan(z["zprime"].iat[1]) and np.isfinite(z["zprime"].iat[0])
    grp, ref = resolve_groups(prof, None, "all")
    assert len(zprime_pairs(prof, grp, ref)) == 6  # every ordered pair
    with pytest.raises(MorphobenchError, match="evaluate.zprime.groups"):
        resolve_groups(prof, ["DMSO", "nope"], None)
    with pytest.raises(MorphobenchError, match="evaluate.zprime.reference"):
        resolve_groups(prof, None, ["P9"])


# ------------------------------------------------------------------------------------------------
# trained model → channel sets → probes (the framework's path, tiny sizes)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Campfire trained by the framework on a 5-channel screen with a Campfire split."""
    from test_training import make_screen

    from morphobench import methods
    from morphobench.training.splits import make_split
    from morphobench.training.stage import train_method

    tmp = make_screen(tmp_path_factory.mktemp("cf"), plates=("P1", "P2", "P3"), n_trt=6, per_well=5, size=28,
                      chans=5)
    make_split("campfire", tmp / "wells.parquet", tmp / "campfire.tsv", n_heldout_plates=1, n_heldout_compounds=2,
               n_train=1, n_val=1, n_test=1, heldout_from="treatment", one_well_per_plate=False)
    params = {**TINY, "epochs": 2, "batch_size": 8, "steps_per_epoch": 3, "device": "cpu", "cache_mb": 64}
    spec = methods.resolve([{"name": "campfire_s14", "params": params}])[0].spec()
    train_method(spec, tmp / "index.parquet", tmp / "campfire.tsv", tmp / "wells.parquet", tmp / "m" / "model.pt")
    return tmp


def test_channel_set_embeddings_and_probes_of_a_trained_campfire(trained, tmp_path):
    from morphobench.embed.learned import embed_crops
    from morphobench.evaluate.channel_sets import channel_set_embeddings
    from morphobench.evaluate.probes import ProbeConfig, probe_cells_stage, probes_stage
    from morphobench.training.data import AugmentConfig, index_rows
    from morphobench.training.stage import load_trained

    model, payload = load_trained(trained / "m" / "model.pt")
    assert payload["channels"] == ["DNA", "AGP", "Mito"] and payload["augment"]["normalize"] == "unit"
    log = pd.read_csv(trained / "m" / "train_log.tsv", sep="\t")
    assert log["val_loss"].notna().all() and (log["train_n_channels"] <= 3).all()
    cells = probe_cells_stage(trained / "index.parquet", trained / "campfire.tsv", tmp_path / "cells.parquet")
    assert set(cells["task"]) == {"A", "B"} and set(cells.loc[cells["task"] == "A", "probe_class"]) == {"DMSO"}
    sets = [["DNA"], ["DNA", "ER", "RNA"], ["Mito", "AGP", "DNA"]]
    table = channel_set_embeddings(trained / "m" / "model.pt", tmp_path / "cells.parquet", trained / "index.parquet",
                                   sets, tmp_path / "cs.parquet", level="cell", device="cpu", batch_size=16)
    assert table.groupby("Metadata_ChannelSet").size().to_dict() == {s: len(cells) for s in
                                                                     ("DNA", "DNA+ER+RNA", "Mito+AGP+DNA")}
    # the trained channel set in another order gives the trained embedding (channel agnostic)
    rows = index_rows(trained / "index.parquet")
    own = embed_crops(model.embed, rows, payload["channels"], AugmentConfig(**payload["augment"]))
    perm = table[table["Metadata_ChannelSet"] == "Mito+AGP+DNA"]
    merged = perm.merge(own, on=["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"])
    assert len(merged) == len(cells)
    np.testing.assert_allclose(merged.filter(regex="emb_.*_x").to_numpy(), merged.filter(regex="emb_.*_y").to_numpy(),
                               rtol=1e-4, atol=1e-5)
    # probes: the method's own rows + each channel set
    own.to_parquet(tmp_path / "cell.parquet")
    tab = probes_stage(tmp_path / "cells.parquet", tmp_path / "cell.parquet", "cell",
                       {"dataset": "d", "method": "campfire_s14"}, tmp_path / "probes.tsv",
                       channel_sets_path=tmp_path / "cs.parquet", n_subsets=2, n_folds=3,
                       cfg=ProbeConfig(max_epochs=3, patience=2))
    assert set(tab["channel_set"]) == {"default", "DNA", "DNA+ER+RNA", "Mito+AGP+DNA"}
    assert list(tab.columns[:3]) == ["dataset", "method", "channel_set"] and tab["accuracy"].between(0, 1).all()


def test_channel_sets_of_a_model_that_is_not_channel_agnostic(trained, tmp_path):
    from morphobench import methods
    from morphobench.evaluate.channel_sets import channel_set_embeddings
    from morphobench.evaluate.probes import probe_cells_stage
    from morphobench.training.stage import train_method

    import tiny_method  # noqa: F401  (the test plugin: registers tiny_ae)

    spec = methods.resolve([{"name": "tiny_ae", "params": {"epochs": 1, "device": "cpu", "normalize": "unit",
                                                           "channels": ["DNA", "ER", "RNA"]}}])[0].spec()
    train_method(spec, trained / "index.parquet", trained / "campfire.tsv", trained / "wells.parquet",
                 tmp_path / "ae" / "model.pt")
    probe_cells_stage(trained / "index.parquet", trained / "campfire.tsv", tmp_path / "cells.parquet")
    out = channel_set_embeddings(tmp_path / "ae" / "model.pt", tmp_path / "cells.parquet", trained / "index.parquet",
                                 [["DNA"]], tmp_path / "cs.parquet", level="cell", device="cpu")
    assert out.empty and pd.read_parquet(tmp_path / "cs.parquet").empty
    with pytest.raises(MorphobenchError, match="listed twice"):
        channel_set_embeddings(tmp_path / "ae" / "model.pt", tmp_path / "cells.parquet", trained / "index.parquet",
                               [["DNA"], ["DNA"]], tmp_path / "x.parquet", level="cell")


def test_summary_intervals():
    from scipy.stats import binomtest

    from morphobench.evaluate.probes import summarize, wilson_interval

    lo, hi = wilson_interval(0.7, 40)
    ci = binomtest(28, 40).proportion_ci(method="wilson")
    np.testing.assert_allclose([lo, hi], [ci.low, ci.high], atol=1e-6)
    tab = pd.DataFrame({"dataset": "d", "method": "m", "channel_set": "default", "task": "A", "test_split": "test",
                        "n_classes": 3, "n_test": 40, "majority": 0.5, "accuracy": [0.6, 0.7, 0.8],
                        "balanced_accuracy": [0.5, 0.6, 0.7]})
    s = summarize(tab).iloc[0]
    assert s["n_runs"] == 3 and np.isclose(s["accuracy_mean"], 0.7) and np.isclose(s["accuracy_sd"], 0.1)
    from scipy import stats

    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    np.testing.assert_allclose([s["accuracy_ci_low"], s["accuracy_ci_high"]], [0.7 - half, 0.7 + half])
    np.testing.assert_allclose([s["accuracy_cells_ci_low"], s["accuracy_cells_ci_high"]], [ci.low, ci.high], atol=1e-6)
    assert np.isclose(s["chance"], 1 / 3) and s["majority"] == 0.5


def test_campfire_figures(tmp_path):
    from morphobench.figures.campfire_plots import channel_set_accuracy, probe_accuracy, zprime_bars

    rows = []
    for method, sets in (("campfire_s14", ["default", "DNA", "DNA+ER+RNA"]), ("random", ["default"])):
        for cs in sets:
            for task, splits in (("A", ["test", "test_out_plate"]), ("B", ["test_out_compound", "test_out_all"])):
                for run in range(3):
                    for sp in splits:
                        rows.append({"dataset": "d", "method": method, "channel_set": cs, "task": task,
                                     "subset_or_fold": run, "test_split": sp, "n_classes": 3 if task == "A" else 4,
                                     "accuracy": 0.3 + 0.1 * run, "balanced_accuracy": 0.3})
    probes = pd.DataFrame(rows)
    probe_accuracy(probes, tmp_path / "p.png")
    channel_set_accuracy(probes, tmp_path / "c.png")
    z = pd.DataFrame({"dataset": "d", "method": ["a", "a", "b"], "correction": "none", "reference": "DMSO",
                      "target": ["P1", "P2", "P1"], "zprime": [0.2, -30.0, np.nan]})
    zprime_bars(z, tmp_path / "z.png")
    for f in ("p", "c", "z"):
        assert (tmp_path / f"{f}.png").stat().st_size > 5_000
    with pytest.raises(MorphobenchError, match="lacks column"):
        probe_accuracy(probes.drop(columns="task"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
