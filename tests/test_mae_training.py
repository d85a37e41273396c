"""The MAE family through the framework: registry entries, split kinds, training (loss falls, FLOPs
logged), per-plate embedding (AdaBN adaptation, channel maps, a model trained elsewhere), the
ImageNet baselines' weights files, the figures and the training-cost table. Tiny models on the
tiny crop screen of test_training."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_training import make_screen  # noqa: E402

from morphobench import methods  # noqa: E402
from morphobench.embed.learned import embed_trained, map_channels  # noqa: E402
from morphobench.embed.stages import EmbedInputs  # noqa: E402
from morphobench.io import MorphobenchError  # noqa: E402
from morphobench.training.config import split_params  # noqa: E402
from morphobench.training.splits import check_split, make_split, read_split  # noqa: E402
from morphobench.training.stage import train_method  # noqa: E402

MAE_FAMILY = methods.names("mae")

TINY = {
    "mae_vit": {"embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_dim": 16, "decoder_heads": 2,
                "patch_size": 8},
    "ca_mae": {"embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_dim": 16, "decoder_heads": 2, "patch_size": 8},
    "mu_net": {"widths": [4, 8, 16], "mask_patch": 8},
    "wsl_densenet": {"growth_rate": 4, "block_config": [1, 1], "neck_hidden": 16, "ghost_batch": 4},
    "wsl_vit": {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8},
}


def tiny_params(name: str, **extra) -> dict:
    m = methods.get(name)
    return {**TINY[m.model], "epochs": 2, "steps_per_epoch": 3, "batch_size": 8, "val_batches": 2,
            "device": "cpu", "cache_mb": 64, **extra}


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    tmp = make_screen(tmp_path_factory.mktemp("mae_screen"), plates=("P1", "P2", "P3"), n_trt=4, per_well=4,
                      size=32, chans=5)
    for kind in ("holdout_batches", "replicate_holdout"):
        make_split(kind, tmp / "wells.parquet", tmp / "splits" / f"{kind}.tsv")
    return tmp


def train(screen: Path, name: str, tag: str = "", **extra) -> Path:
    m = methods.get(name)
    spec = methods.Configured(m, tiny_params(name, **extra)).spec()
    out = screen / "models" / f"{name}{tag}" / "model.pt"
    train_method(spec, screen / "index.parquet", screen / "splits" / f"{m.split}.tsv", screen / "wells.parquet",
                 out, resume=False)
    return out


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
def test_the_papers_models_are_registered():
    want = {f"mae_vit_{s}{p}{f}" for s in "sbl" for p in (16, 8) for f in ("", "+")}
    want |= {"ca_mae_s16", "ca_mae_s16+", "ca_mae_b16", "ca_mae_b16+", "ca_mae_l16+", "mu_net_m", "mu_net_l", "wsl_densenet161",
             "wsl_densenet161_adabn", "wsl_densenet161_adabn_1024", "wsl_vit_b16", "wsl_vit_l16",
             "imagenet_vit_s16", "imagenet_vit_b16", "imagenet_vit_b8", "imagenet_vit_l16"}
    assert want == set(MAE_FAMILY)
    for name in MAE_FAMILY:
        m = methods.get(name)
        assert m.input == "tile256" and m.level == "tile"
        p = m.params()
        if name.startswith("mae_vit"):
            assert p["optimizer"] == "lion" and p["betas"] == [0.9, 0.95] and p["weight_decay"] == 0.05
            assert p["fourier_weight"] == (0.01 if name.endswith("+") else 0.0) and p["mask_ratio"] == 0.75
            assert p["lr"] == (3e-5 if "_l" in name else 1e-4) and p["drop_path"] == (0.3 if "_l" in name else 0.1)
        if name.startswith("mu_net"):
            assert p["optimizer"] == "adamw" and p["lr"] == 1e-3 and p["mask_ratio"] == 0.25 and p["kernel_size"] == 5
        if "adabn" in name:
            assert p["adabn"] and p["sampler"] == "plate"


@pytest.mark.parametrize("name", [n for n in MAE_FAMILY if methods.get(n).trains])
def test_every_registered_model_builds_at_its_registry_defaults(name):
    from morphobench.models import create_model

    m = methods.get(name)
    _, kw = split_params(m.params())
    model = create_model(m.model, in_chans=5, num_classes=7, num_groups=2, **kw)
    assert callable(model.embed)


def test_imagenet_baselines_need_their_weights_file(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = methods.resolve(["random", "imagenet_vit_s16"])
    with pytest.raises(MorphobenchError, match="imagenet_vit_s16: weights file not found"):
        methods.check_files(cfg, ["simulated"])
    with caplog.at_level(logging.WARNING, logger="morphobench.methods"):
        names = [c.name for c in methods.resolve(["all"])]
    assert "imagenet_vit_b8" not in names and "mae_vit_s16+" in names
    assert "leaves out imagenet_vit_b8" in caplog.text
    w = Path("resources/weights/vit_base_patch8_224.augreg_in21k.pth")
    w.parent.mkdir(parents=True)
    w.write_bytes(b"x")
    assert "imagenet_vit_b8" in [c.name for c in methods.resolve(["all"])]
    # a user's own file
    mine = methods.resolve([{"name": "imagenet_vit_s16", "params": {"weights": str(w)}}])
    methods.check_files(mine, ["simulated"])


# ------------------------------------------------------------------------------------------------
# Split kinds
# ------------------------------------------------------------------------------------------------
def test_holdout_batches_and_replicate_holdout(screen):
    wells = pd.read_parquet(screen / "wells.parquet")
    hb = read_split(screen / "splits" / "holdout_batches.tsv")
    val_batches = set(wells.merge(hb[hb["split"] == "val"], on=["Metadata_Plate", "Metadata_Well"])["Metadata_Batch"])
    assert len(val_batches) == 1 and set(hb["split"]) == {"train", "val"}
    assert (hb.groupby("Metadata_Plate")["split"].nunique() == 1).all()  # whole batches (here: plates)
    rh = read_split(screen / "splits" / "replicate_holdout.tsv")
    per = rh.groupby("Metadata_Perturbation")["split"].agg(lambda s: set(s))
    assert all("train" in s for s in per)  # every perturbation (controls too) is trained on
    assert (rh["split"] == "val").mean() == pytest.approx(0.25, abs=0.1)
    # the one-treatment-one-split check still holds for the treatment folds, not for these kinds
    with pytest.raises(MorphobenchError, match="two splits"):
        check_split(rh.drop(columns="split_kind"), "x", "treatment_folds")  # read as a by-treatment kind
    check_split(rh, "x", "replicate_holdout")
    one = wells[wells["Metadata_Plate"] == "P1"]
    single = methods_split("holdout_batches", one)
    assert set(single["split"]) == {"train", "val"}  # one plate: replicate wells held out


def methods_split(kind, wells):
    from morphobench.training.splits import SPLITS

    return SPLITS[kind](wells)


# ------------------------------------------------------------------------------------------------
# Training and embedding
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mae_vit_s16+", "ca_mae_s16", "mu_net_m", "wsl_densenet161_adabn", "wsl_vit_b16"])
def test_tiny_training_logs_flops_and_embeds_a_plate(screen, name):
    out = train(screen, name)
    log = pd.read_csv(out.parent / "train_log.tsv", sep="\t")
    assert list(log["epoch"]) == [1, 2] and log["val_loss"].notna().all()
    assert (np.diff(log["crops_seen"]) > 0).all() and (log["train_flops"] > 0).all()
    per_crop = log["train_flops"] / log["crops_seen"]
    assert np.allclose(per_crop, per_crop.iloc[0])
    payload = torch.load(out, weights_only=False)
    rows = embed_trained(payload["spec"], "P2", EmbedInputs(crops=str(screen / "plates" / "P2.parquet"),
                                                            model=str(out), device="cpu"))
    feats = rows.filter(like="emb_")
    assert len(rows) == 4 * 6 and np.isfinite(feats.to_numpy()).all() and feats.shape[1] > 0


def test_flops_follow_the_papers_convention(screen):
    from morphobench.models.layers.vit import paper_flops

    out = train(screen, "mae_vit_b8", tag="_flops")
    log = pd.read_csv(out.parent / "train_log.tsv", sep="\t")
    p = TINY["mae_vit"]
    assert log["train_flops"].iloc[-1] == pytest.approx(paper_flops(p["embed_dim"], p["depth"], 8)
                                                        * log["crops_seen"].iloc[-1])


def test_adabn_embedding_uses_the_plates_statistics(screen):
    out = train(screen, "wsl_densenet161_adabn", tag="_ada")
    payload = torch.load(out, weights_only=False)
    spec = payload["spec"]
    a = embed_trained(spec, "P1", EmbedInputs(crops=str(screen / "plates" / "P1.parquet"), model=str(out), device="cpu"))
    # the same tiles embedded as part of a plate with other statistics give other embeddings
    idx = pd.read_parquet(screen / "plates" / "P1.parquet")
    other = pd.read_parquet(screen / "plates" / "P2.parquet")
    mixed = pd.concat([idx.head(2), other], ignore_index=True)
    mixed.to_parquet(screen / "plates" / "mixed.parquet")
    b = embed_trained(spec, "P1", EmbedInputs(crops=str(screen / "plates" / "mixed.parquet"), model=str(out),
                                              device="cpu"))
    ea, eb = a.filter(like="emb_").to_numpy()[:2], b.filter(like="emb_").to_numpy()[:2]
    assert not np.allclose(ea, eb, atol=1e-4)
    # deterministic: the same plate twice gives the same embeddings
    a2 = embed_trained(spec, "P1", EmbedInputs(crops=str(screen / "plates" / "P1.parquet"), model=str(out), device="cpu"))
    assert np.allclose(a.filter(like="emb_").to_numpy(), a2.filter(like="emb_").to_numpy())


def test_channel_map_for_fixed_and_channel_agnostic_models(screen):
    store = ["DNA", "ER", "RNA", "AGP", "Mito"]
    model = ["DNA", "ER", "RNA", "AGP", "Mito", "Golgi"]
    # JUMP-style: a 6-channel model fed from 5 stains, one duplicated
    assert map_channels("m", model, store, {"Golgi": "AGP"}) == ["DNA", "ER", "RNA", "AGP", "Mito", "AGP"]
    assert map_channels("m", store, store, None) == store
    assert map_channels("m", store, store, ["Mito", "AGP", "RNA", "ER", "DNA"]) == ["Mito", "AGP", "RNA", "ER", "DNA"]
    assert map_channels("m", store[:3], store + ["BF"], "all", agnostic=True) == store + ["BF"]
    assert map_channels("m", store, store, ["DNA", "RNA"], agnostic=True) == ["DNA", "RNA"]
    for bad, needle in [({"Golgi": "AGP"}, "not channels of the model"), (["DNA"], "1 channel"),
                        ("all", "channel-agnostic"), (7, "a mapping")]:
        with pytest.raises(MorphobenchError, match=needle):
            map_channels("m", store, store, bad)
    with pytest.raises(MorphobenchError, match=r"\['Golgi'\] are not in the screen.*channel_map"):
        map_channels("m", model, store, None)

    # end to end: CA-MAE trained on 5 channels embeds 3 and 5 (any order), per-channel mode C × D
    out = train(screen, "ca_mae_s16", tag="_cm", embed_mode="channels")
    spec = torch.load(out, weights_only=False)["spec"]
    inputs = EmbedInputs(crops=str(screen / "plates" / "P1.parquet"), model=str(out), device="cpu")
    five = embed_trained(spec, "P1", inputs).filter(like="emb_")
    spec3 = {**spec, "params": {**spec["params"], "channel_map": ["RNA", "DNA", "ER"]}}
    three = embed_trained(spec3, "P1", inputs).filter(like="emb_")
    assert five.shape[1] == 5 * 32 and three.shape[1] == 3 * 32
    # per-channel blocks of the same channels agree up to the attention context
    assert np.isfinite(three.to_numpy()).all()
    # a fixed-channel model refuses a list of the wrong length, naming the parameter
    mae = train(screen, "mae_vit_s16", tag="_cm")
    mspec = torch.load(mae, weights_only=False)["spec"]
    bad = {**mspec, "params": {**mspec["params"], "channel_map": ["DNA", "ER"]}}
    with pytest.raises(MorphobenchError, match="mae_vit_s16: channel_map"):
        embed_trained(bad, "P1", EmbedInputs(crops=str(screen / "plates" / "P1.parquet"), model=str(mae), device="cpu"))
    dup = {**mspec, "params": {**mspec["params"], "channel_map": {"Mito": "DNA"}}}
    rows = embed_trained(dup, "P1", EmbedInputs(crops=str(screen / "plates" / "P1.parquet"), model=str(mae),
                                                device="cpu"))
    assert rows.filter(like="emb_").shape[1] == 32


def test_embed_params_are_not_model_arguments():
    cfg, kw = split_params({"epochs": 1, "channel_map": {"a": "b"}, "pretrained": "x.pt", "embed_batch_size": 4,
                            "depth": 2})
    assert kw == {"depth": 2} and cfg.epochs == 1
    m = methods.resolve([{"name": "mae_vit_s16+", "params": {"pretrained": "m.pt", "channel_map": "all"}}])[0]
    assert m.spec()["params"]["pretrained"] == "m.pt"
    with pytest.raises(MorphobenchError, match="unknown parameter 'channel_mapp'"):
        methods.resolve([{"name": "mae_vit_s16+", "params": {"channel_mapp": {}}}])


# ------------------------------------------------------------------------------------------------
# ImageNet baselines
# ------------------------------------------------------------------------------------------------
def test_imagenet_vit_loads_a_local_file_and_embeds_each_channel(screen, tmp_path):
    import morphobench.models  # noqa: F401
    import timm

    from morphobench.embed.pretrained import embed_imagenet_vit, load_imagenet_vit

    torch.manual_seed(0)
    arch = "vit_tiny_patch16_224"
    ref = timm.create_model(arch, pretrained=False)  # stands in for the ImageNet-21k file
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    net = load_imagenet_vit("imagenet_vit_s16", arch, str(path), img_size=32)
    assert net.pos_embed.shape[1] == 1 + 4  # resampled from 14² to 2² patches
    assert torch.equal(net.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    spec = methods.resolve([{"name": "imagenet_vit_s16", "params": {"arch": arch, "weights": str(path),
                                                                     "device": "cpu"}}])[0].spec()
    rows = embed_imagenet_vit(spec, "P1", EmbedInputs(crops=str(screen / "plates" / "P1.parquet")))
    assert rows.filter(like="emb_").shape == (24, 5 * 192)
    adapt = {**spec, "params": {**spec["params"], "channel_mode": "adapt"}}
    assert embed_imagenet_vit(adapt, "P1", EmbedInputs(crops=str(screen / "plates" / "P1.parquet"))) \
        .filter(like="emb_").shape == (24, 192)
    with pytest.raises(MorphobenchError, match="imagenet_vit_s16: ImageNet weights file not found.*export-timm-weights"):
        load_imagenet_vit("imagenet_vit_s16", arch, str(tmp_path / "none.pth"), 32)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MorphobenchError, match="cannot read weights file"):
        load_imagenet_vit("imagenet_vit_s16", arch, str(tmp_path / "bad.pth"), 32)


# ------------------------------------------------------------------------------------------------
# Figures and the training-cost table
# ------------------------------------------------------------------------------------------------
def test_figures_and_training_cost(screen, tmp_path):
    from morphobench.figures import mae as figs
    from morphobench.training.cost import training_cost

    plus = train(screen, "mae_vit_s16+", tag="_fig")
    plain = train(screen, "mae_vit_s16", tag="_fig")
    figs.reconstructions(plus, screen / "index.parquet", tmp_path / "rec.png",
                         split=screen / "splits" / "holdout_batches.tsv")
    assert (tmp_path / "rec.png").stat().st_size > 5000
    unet = train(screen, "mu_net_m", tag="_fig")
    figs.reconstructions(unet, screen / "index.parquet", tmp_path / "rec2.png")
    figs.loss_curves({"mae_vit_s16+": plus.parent / "train_log.tsv", "mae_vit_s16": plain.parent / "train_log.tsv"},
                     tmp_path / "loss.png")
    cost = training_cost({("sim", "mae_vit_s16+", "mae"): plus.parent / "train_log.tsv",
                          ("sim", "mu_net_m", "mae"): unet.parent / "train_log.tsv"}, tmp_path / "cost.tsv")
    assert list(cost["method"]) == ["mae_vit_s16+", "mu_net_m"] and (cost["train_flops"] > 0).all()
    known = pd.DataFrame({"dataset": "sim", "method": ["mae_vit_s16+", "mu_net_m", "random"], "correction": "tvn",
                          "source": "StringDB", "recall_5_95": [0.3, 0.2, 0.1]})
    figs.recall_vs_flops(known, cost, tmp_path / "flops.png")
    figs.recall_vs_flops(known.assign(recall_5_95=np.nan), cost, tmp_path / "none.png")
    summ = pd.DataFrame({"method": ["mae_vit_s16+", "wsl_densenet161_adabn"] * 2, "correction": "none",
                         "category": ["AreaShape", "AreaShape", "Intensity", "Intensity"], "median_r2": [.4, .3, .7, .2]})
    figs.r2_mae_vs_wsl(summ, ["mae_vit_s16+", "wsl_densenet161_adabn"], tmp_path / "r2.png")
    for f in ("loss.png", "flops.png", "none.png", "r2.png"):
        assert (tmp_path / f).stat().st_size > 3000
    with pytest.raises(MorphobenchError, match="does not reconstruct"):
        figs.reconstructions(train(screen, "wsl_vit_b16", tag="_fig"), screen / "index.parquet", tmp_path / "x.png")
