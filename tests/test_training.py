"""The training framework on a tiny model: loss, determinism, resume, samplers, splits, schedules,
augmentations, checkpoint → embedding."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "plugins"))

from morphobench.images.crops import CropParams, _create_store  # noqa: E402
from morphobench.io import MorphobenchError  # noqa: E402
from morphobench.training.config import TrainConfig, split_params  # noqa: E402
from morphobench.training.data import (  # noqa: E402
    AugmentConfig,
    CropSet,
    PairBatches,
    PlateBatches,
    RandomBatches,
    augment,
    crop_rows,
    encode,
    make_vocab,
)
from morphobench.training.loop import fit, lr_at  # noqa: E402
from morphobench.training.splits import check_split, make_split, read_split, treatment_folds  # noqa: E402


def make_screen(tmp: Path, plates=("P1", "P2"), n_trt=8, per_well=6, size=16, chans=3, seed=0):
    """A crop store per plate (zarr, sharded as the crops stage writes it) + index + plate map.
    Each treatment has its own mean intensity pattern, so there is something to learn."""
    rng = np.random.default_rng(seed)
    wells, idx_parts = [], []
    names = [f"T{i}" for i in range(n_trt)]
    pattern = {n: rng.uniform(40, 200, chans) for n in names + ["DMSO"]}
    for p in plates:
        layout = [(n, "trt") for n in names] + [("DMSO", "negcon")] * 2
        rows, crops = [], []
        for w, (pert, kind) in enumerate(layout):
            well = f"A{w + 1:02d}"
            wells.append({"Metadata_Plate": p, "Metadata_Well": well, "Metadata_Perturbation": pert,
                          "Metadata_PertType": kind, "Metadata_Batch": f"B{p}"})
            for c in range(per_well):
                img = pattern[pert][:, None, None] + rng.normal(0, 25, (chans, size, size))
                crops.append(np.clip(img, 0, 255).astype(np.uint8))
                rows.append({"Metadata_Source": "s", "Metadata_Batch": f"B{p}", "Metadata_Plate": p,
                             "Metadata_Well": well, "Metadata_Site": 1, "ImageNumber": 1, "ObjectNumber": c + 1,
                             "Crop_Row": len(rows), "Crop_CenterX": 8, "Crop_CenterY": 8, "Crop_X0": 0,
                             "Crop_Y0": 0, "Crop_Store": f"plates/{p}.zarr"})
        (tmp / "plates").mkdir(parents=True, exist_ok=True)
        arr = _create_store(tmp / "plates" / f"{p}.zarr", len(crops), chans, size, "uint8", CropParams(shard_crops=8))
        arr[:] = np.stack(crops)
        arr.attrs["channels"] = ["DNA", "ER", "RNA", "AGP", "Mito"][:chans]
        idx = pd.DataFrame(rows)
        idx.assign(Crop_Store=f"{p}.zarr").to_parquet(tmp / "plates" / f"{p}.parquet")  # relative to its dir
        idx_parts.append(idx)
    pd.concat(idx_parts, ignore_index=True).to_parquet(tmp / "index.parquet")
    pd.DataFrame(wells).to_parquet(tmp / "wells.parquet")
    make_split("treatment_folds", tmp / "wells.parquet", tmp / "split.tsv", n_folds=4, seed=0)
    return tmp


def datasets(tmp: Path, cfg: TrainConfig):
    rows = crop_rows(tmp / "index.parquet", read_split(tmp / "split.tsv", 0), pd.read_parquet(tmp / "wells.parquet"))
    train = rows[rows["split"] == "train"]
    vocab = make_vocab(train, rows, cfg.group_col)
    return (CropSet(encode(train, vocab), cfg.channels), CropSet(encode(rows[rows["split"] == "val"], vocab)),
            vocab)


def tiny(seed=0, dim=8):
    from tiny_model import tiny_ae

    torch.manual_seed(seed)
    return tiny_ae(in_chans=3, dim=dim)


CFG = TrainConfig(epochs=3, batch_size=8, lr=5e-3, schedule="cosine", warmup_epochs=0.5, seed=1,
                  device="cpu", cache_mb=64, normalize="unit")


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    return make_screen(tmp_path_factory.mktemp("screen"))


def test_loss_decreases_and_log_has_every_epoch(screen, tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 6})
    tr, va, _ = datasets(screen, cfg)
    res = fit(tiny(), tr, va, cfg, tmp_path / "m")
    log = pd.read_csv(tmp_path / "m" / "train_log.tsv", sep="\t")
    assert list(log["epoch"]) == list(range(1, 7))
    assert {"train_loss", "val_loss", "lr", "seconds", "images_per_s", "best"} <= set(log.columns)
    assert log["train_loss"].iloc[-1] < 0.5 * log["train_loss"].iloc[0]
    assert log["val_loss"].iloc[-1] < log["val_loss"].iloc[0]
    assert res.best_epoch == int(log.loc[log["val_loss"].idxmin(), "epoch"])
    assert (tmp_path / "m" / "checkpoint.pt").exists() and (tmp_path / "m" / "best.pt").exists()


def test_two_runs_give_identical_weights(screen, tmp_path):
    tr, va, _ = datasets(screen, CFG)
    a = fit(tiny(), tr, va, CFG, tmp_path / "a")
    b = fit(tiny(), tr, va, CFG, tmp_path / "b")
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    la = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    lb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(la[k], lb[k]) for k in la)
    # another seed gives other weights (the seed is really used)
    c = fit(tiny(), tr, va, TrainConfig(**{**CFG.__dict__, "seed": 2}), tmp_path / "c")
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_resume_from_mid_run_checkpoint_equals_uninterrupted(screen, tmp_path):
    tr, va, _ = datasets(screen, CFG)
    full = fit(tiny(), tr, va, CFG, tmp_path / "full", spec_hash="x")

    class Killed(RuntimeError):
        pass

    model = tiny()

    def die(epoch):
        if epoch == 2:
            raise Killed("killed during epoch 3")

    model.on_epoch_start = die
    with pytest.raises(Killed):
        fit(model, tr, va, CFG, tmp_path / "cut", spec_hash="x")
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed = fit(tiny(), tr, va, CFG, tmp_path / "cut", spec_hash="x")
    last_full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    last_cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for k in last_full["model"]:
        assert torch.equal(last_full["model"][k], last_cut["model"][k]), k
    for k in full.state_dict:
        assert torch.equal(full.state_dict[k], resumed.state_dict[k]), k
    assert resumed.best_epoch == full.best_epoch
    pd.testing.assert_frame_equal(full.log.drop(columns=["seconds", "images_per_s"]),
                                  resumed.log.drop(columns=["seconds", "images_per_s"]))
    # another spec (hash) does not resume: it trains from scratch
    other = fit(tiny(), tr, va, CFG, tmp_path / "cut", spec_hash="y")
    assert len(other.log) == CFG.epochs


def test_gradient_accumulation_equals_a_large_batch():
    """Two accumulated half-batches step like one full batch (mean losses, equal halves)."""
    from morphobench.training.loop import make_optimizer

    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    m1, m2 = tiny(), tiny()
    m2.load_state_dict(m1.state_dict())
    cfg = TrainConfig(optimizer="momentum", lr=0.1, momentum=0.0)  # plain SGD (timm "sgd" is Nesterov)
    o1, o2 = make_optimizer(m1, cfg), make_optimizer(m2, cfg)
    m1({"image": x})["loss"].backward()
    o1.step()
    for half in (x[:4], x[4:]):
        (m2({"image": half})["loss"] / 2).backward()
    o2.step()
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lr_schedules():
    cfg = TrainConfig(epochs=10, lr=1.0, warmup_epochs=2, warmup_lr=0.0, min_lr=0.1, schedule="cosine")
    assert lr_at(0, cfg, 10) == 0.0 and lr_at(10, cfg, 10) == pytest.approx(0.5)
    assert lr_at(20, cfg, 10) == pytest.approx(1.0)
    assert lr_at(60, cfg, 10) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(99, cfg, 10) == pytest.approx(0.1, abs=1e-3)
    exp = TrainConfig(epochs=5, lr=1.0, schedule="exponential", gamma=0.9)
    assert [lr_at(e * 4, exp, 4) for e in range(4)] == pytest.approx([1, 0.9, 0.81, 0.729])
    assert lr_at(7, exp, 4) == pytest.approx(0.9)


def test_split_params_separates_model_kwargs_and_rejects_bad_values():
    cfg, kw = split_params({"epochs": 3, "betas": [0.9, 0.95], "dim": 64})
    assert cfg.epochs == 3 and cfg.betas == (0.9, 0.95) and kw == {"dim": 64}
    with pytest.raises(MorphobenchError, match="schedule"):
        split_params({"schedule": "linear"})
    with pytest.raises(MorphobenchError, match="sampler"):
        split_params({"sampler": "balanced"})


# ------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------
def test_plate_sampler_never_mixes_plates_and_is_a_function_of_seed_and_epoch():
    plates = np.repeat([0, 1, 2], [37, 50, 13])
    s = PlateBatches(plates, batch_size=8, seed=3)
    seen = []
    for b in s.batches(0):
        assert len(set(plates[b])) == 1
        seen.extend(b.tolist())
    assert sorted(seen) == list(range(100))  # every row once (no plate below min_batch here)
    assert [b.tolist() for b in s.batches(4)] == [b.tolist() for b in PlateBatches(plates, 8, 3).batches(4)]
    assert [b.tolist() for b in s.batches(4)] != [b.tolist() for b in s.batches(5)]


def test_pair_sampler_batches_hold_same_treatment_pairs_balanced():
    labels = np.concatenate([np.full(40, 0), np.full(4, 1), np.full(10, 2), [-1, -1], [3]])
    s = PairBatches(labels, batch_size=6, seed=0)
    counts = np.zeros(4)
    for b in s.batches(0):
        assert len(b) == 6
        pairs = b.reshape(-1, 2)
        for i, j in pairs:
            assert i != j and labels[i] == labels[j] >= 0
            counts[labels[i]] += 1
    assert counts[3] == 0  # a single-row treatment is never drawn
    assert counts[:3].max() - counts[:3].min() <= 1  # balanced rounds, whatever the row counts


def test_random_sampler_covers_each_row_once():
    s = RandomBatches(50, 8, seed=1)
    rows = np.concatenate(list(s.batches(0)))
    assert len(rows) == 48 and len(set(rows)) == 48 and len(s) == 6


# ------------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------------
def test_treatment_folds_never_put_a_treatment_in_two_folds(tmp_path):
    wells = pd.DataFrame({"Metadata_Plate": np.repeat(["P1", "P2"], 30), "Metadata_Well": [f"W{i}" for i in range(60)],
                          "Metadata_Perturbation": [f"g{i % 25}" if i % 30 < 25 else "DMSO" for i in range(60)],
                          "Metadata_PertType": ["trt" if i % 30 < 25 else "negcon" for i in range(60)],
                          "Metadata_Gene": [f"g{i % 25}" if (i % 30 < 25 and i % 25 < 15) else None for i in range(60)],
                          "Metadata_Compound": [f"g{i % 25}" if (i % 30 < 25 and i % 25 >= 15) else None
                                                for i in range(60)]})
    t = treatment_folds(wells, n_folds=5, seed=0)
    check_split(t)
    test = t[t["split"] == "test"]
    assert test.groupby("Metadata_Perturbation")["fold"].nunique().max() == 1  # one test fold each
    assert set(test["Metadata_Perturbation"]) == {f"g{i}" for i in range(25)}  # every treatment tested once
    for f, g in t.groupby("fold"):
        assert g.groupby("Metadata_Perturbation")["split"].nunique().drop("DMSO").max() == 1
        assert set(g.loc[g["Metadata_PertType"] == "negcon", "split"]) == {"control"}  # never trained on
        assert not (g["split"] == "train").any() or "DMSO" not in set(g.loc[g["split"] == "train",
                                                                             "Metadata_Perturbation"])
        for mod in ("gene", "compound"):  # both modalities in every test fold
            names = set(g.loc[g["split"] == "test", "Metadata_Perturbation"])
            assert names & ({f"g{i}" for i in range(15)} if mod == "gene" else {f"g{i}" for i in range(15, 25)})
    again = treatment_folds(wells, n_folds=5, seed=0)
    pd.testing.assert_frame_equal(t, again)
    bad = t.copy()
    bad.loc[(bad["fold"] == 0) & (bad["Metadata_Perturbation"] == "g0") & (bad["Metadata_Plate"] == "P1"), "split"] = "train"
    bad.loc[(bad["fold"] == 0) & (bad["Metadata_Perturbation"] == "g0") & (bad["Metadata_Plate"] == "P2"), "split"] = "val"
    with pytest.raises(MorphobenchError, match="two splits"):
        check_split(bad)
    with pytest.raises(MorphobenchError, match="n_folds"):
        treatment_folds(wells, n_folds=2)


def test_crop_rows_refuse_wells_missing_from_the_split(screen):
    split = read_split(screen / "split.tsv", 0)
    with pytest.raises(MorphobenchError, match="not in the split table"):
        crop_rows(screen / "index.parquet", split[split["Metadata_Well"] != "A01"])


# ------------------------------------------------------------------------------------------------
# augmentation and data
# ------------------------------------------------------------------------------------------------
def test_augment_flips_rotations_crop_and_self_standardization():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 2, 12, 12), dtype=torch.uint8)
    y = augment(x, AugmentConfig(flips=True, rot90=True, normalize="unit"), g)
    xs = x.float() / 255
    for i in range(64):  # each output is one of the 8 symmetries of its input
        cands = [torch.rot90(v, k, (-2, -1)) for v in (xs[i], torch.flip(xs[i], (-1,))) for k in range(4)]
        assert any(torch.equal(y[i], c) for c in cands)
    assert not torch.equal(y, xs)
    z = augment(x, AugmentConfig(crop_size=8, normalize="self"), g)
    assert z.shape == (64, 2, 8, 8)
    torch.testing.assert_close(z.mean((-2, -1)), torch.zeros(64, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((-2, -1), unbiased=False), torch.ones(64, 2), atol=1e-3, rtol=0)
    c = augment(x, AugmentConfig(crop_size=8, normalize="unit"), g, train=False)  # centre crop, no flips
    torch.testing.assert_close(c, xs[:, :, 2:10, 2:10])


def test_cropset_reads_equal_the_store_with_and_without_cache(screen):
    import zarr

    rows = crop_rows(screen / "index.parquet", read_split(screen / "split.tsv", 0))
    cached, direct = CropSet(rows, cache_mb=64), CropSet(rows, cache_mb=0.001)
    assert cached.cache_enabled and not direct.cache_enabled
    store = zarr.open_array(str(screen / "plates" / "P2.zarr"), mode="r")
    for i in np.random.default_rng(0).permutation(len(rows))[:40]:
        np.testing.assert_array_equal(cached.read(i), direct.read(i))
        if rows.at[i, "Metadata_Plate"] == "P2":
            np.testing.assert_array_equal(cached.read(i), store[int(rows.at[i, "Crop_Row"])])
    sub = CropSet(rows, channels=["RNA", "DNA"])
    np.testing.assert_array_equal(sub.read(5), cached.read(5)[[2, 0]])
    with pytest.raises(MorphobenchError, match="not in the crop store"):
        CropSet(rows, channels=["Mito"])


# ------------------------------------------------------------------------------------------------
# stage: train_method → model.pt → embed_plate
# ------------------------------------------------------------------------------------------------
def test_train_method_then_embed_plate(screen, tmp_path):
    import tiny_method  # noqa: F401  (registers the plugin method)

    from morphobench import methods
    from morphobench.embed.stages import EmbedInputs, embed_plate
    from morphobench.training.stage import load_trained, train_method

    spec = methods.Configured(methods.get("tiny_ae"), {"epochs": 2, "device": "cpu"}).spec()
    out = train_method(spec, screen / "index.parquet", screen / "split.tsv", screen / "wells.parquet",
                       tmp_path / "models" / "tiny_ae" / "model.pt", fold=0)
    model, payload = load_trained(out)
    assert payload["channels"] == ["DNA", "ER", "RNA"] and payload["best_epoch"] in (1, 2)
    assert payload["vocab"]["treatments"] and "DMSO" not in payload["vocab"]["treatments"]
    assert (tmp_path / "models" / "tiny_ae" / "train_log.tsv").exists()
    rows = embed_plate(spec, "P1", tmp_path / "P1.parquet",
                       EmbedInputs(crops=str(screen / "plates" / "P1.parquet"), model=str(out), device="cpu"))
    assert len(rows) == 60 and rows.filter(like="emb_").shape[1] == 8
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_ObjectNumber"} <= set(rows.columns)
    # the embedding equals the trained model applied by hand (eval mode, same normalization)
    x = torch.from_numpy(CropSet(pd.read_parquet(screen / "plates" / "P1.parquet")
                                 .assign(Crop_Base=str(screen / "plates"))).read(0)[None])
    ref = model.embed(augment(x, AugmentConfig(**payload["augment"]), train=False)).detach().numpy()[0]
    np.testing.assert_allclose(rows.filter(like="emb_").to_numpy()[0], ref, rtol=1e-5, atol=1e-6)
