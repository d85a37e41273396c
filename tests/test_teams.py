"""TEAMs family models: exemplar loss, cross-batch memory, experts at inference, gradient reversal,
RSC, the online-negatives loss (hand computation), and tiny trainings through the framework."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import morphobench.models  # noqa: F401  (torchvision/timm on CPU-only torch)
from morphobench.io import MorphobenchError
from morphobench.models import create_model
from morphobench.models.layers import GradientReversal
from morphobench.models.teams import (
    FeatureMemory,
    exemplar_loss,
    pair_margin_loss,
    rsc_mask,
)

TINY = {"in_chans": 3, "backbone": "test_resnet", "embed_dim": 16}  # timm's test-sized ResNet


def _batch(b=8, c=3, s=16, k=4, g=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, c, s, s, generator=gen), "label": torch.arange(b) % k,
            "group": (torch.arange(b) // 2) % g, "plate": torch.zeros(b, dtype=torch.long), "index": torch.arange(b)}


# ------------------------------------------------------------------------------------------------
# Exemplar loss
# ------------------------------------------------------------------------------------------------
def test_exemplar_loss_is_proxynca_on_cosine_distance():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(5, 8), dim=1)
    c = torch.randn(3, 8)
    lab = torch.tensor([0, 1, 2, 0, 1])
    cn = F.normalize(c, dim=1)
    ref = []
    for i in range(5):
        d = 1 - z[i] @ cn.T  # cosine distances
        others = [j for j in range(3) if j != lab[i]]
        ref.append(-torch.log(torch.exp(-d[lab[i]]) / torch.exp(-d[others]).sum()))
    assert exemplar_loss(z, c, lab).item() == pytest.approx(torch.stack(ref).mean().item(), rel=1e-5)


def test_exemplar_loss_decreases_on_a_separable_set_and_trains_the_exemplars():
    """Four well-separated point clouds, a linear encoder: the exemplar loss falls and its
    gradient reaches the exemplars (they move towards their class means)."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 10, generator=gen) * 3
    x = torch.cat([centers[k] + 0.3 * torch.randn(32, 10, generator=gen) for k in range(4)])
    y = torch.arange(4).repeat_interleave(32)
    enc = torch.nn.Linear(10, 8)
    ex = torch.nn.Parameter(F.normalize(torch.randn(4, 8, generator=gen), dim=1))
    start = ex.detach().clone()
    opt = torch.optim.Adam([*enc.parameters(), ex], lr=0.05)
    losses = []
    for _ in range(40):
        loss = exemplar_loss(F.normalize(enc(x), dim=1), ex, y)
        opt.zero_grad()
        loss.backward()
        assert ex.grad is not None and ex.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
    assert not torch.allclose(ex.detach(), start)
    z = F.normalize(enc(x), dim=1)
    pred = (z @ F.normalize(ex, dim=1).T).argmax(1)
    assert (pred == y).float().mean() > 0.95


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------
def test_memory_holds_k_detached_entries_fifo():
    mem = FeatureMemory(5, 2)
    assert mem.entries()[0].shape == (0, 2)
    seen = []
    for step in range(4):  # batches of 3 → 12 entries, the memory keeps the last 5
        z = torch.full((3, 2), float(step), requires_grad=True) + torch.arange(3.0)[:, None] / 10
        lab = torch.arange(3) + 10 * step
        mem.enqueue(z * 1.0, lab)
        seen += lab.tolist()
        feats, labels = mem.entries()
        assert len(labels) == min(len(seen), 5)
        assert labels.tolist() == seen[-5:]  # oldest first, exactly the most recent K
        assert not feats.requires_grad
    # a batch larger than K keeps its K most recent rows
    mem.enqueue(torch.zeros(7, 2), torch.arange(100, 107))
    assert mem.entries()[1].tolist() == [102, 103, 104, 105, 106]


def test_teams_memory_loss_reaches_exemplars_only():
    torch.manual_seed(0)
    m = create_model("teams", num_classes=4, num_groups=2, memory_size=8, **TINY)
    b = _batch()
    out1 = m(b)
    assert "memory_loss" not in out1 and int(m.memory.count) == 8
    out2 = m(_batch(seed=1))
    assert "memory_loss" in out2
    m.zero_grad()
    out2["memory_loss"].requires_grad_(False)
    # the memory entries are detached: the memory loss alone has a gradient for the exemplars only
    mz, ml = m.memory.entries()
    lm = exemplar_loss(mz, m.exemplars, ml)
    lm.backward()
    assert m.exemplars.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in m.named_parameters() if n != "exemplars")
    # in eval mode the memory is not updated
    m.eval()
    before = m.memory.feats.clone()
    m(_batch(seed=2))
    assert torch.equal(before, m.memory.feats)


# ------------------------------------------------------------------------------------------------
# Experts
# ------------------------------------------------------------------------------------------------
def test_inference_concatenates_per_expert_normalized_vectors():
    torch.manual_seed(0)
    m = create_model("teams", num_classes=4, num_groups=3, memory_size=0, **TINY).eval()
    x = _batch()["image"]
    with torch.no_grad():
        z = m.embed(x)
        f = m.features(x)
        w = m.experts.proj.weight.view(3, 16, -1)
        bias = m.experts.proj.bias.view(3, 16)
        ref = torch.cat([F.normalize(f @ w[e].T + bias[e], dim=1) for e in range(3)], dim=1)
    assert z.shape == (8, 48)
    assert torch.allclose(z, ref, atol=1e-5)
    assert torch.allclose(z.view(8, 3, 16).norm(dim=-1), torch.ones(8, 3), atol=1e-5)
    # training uses each cell's own expert: the same vectors as the matching block
    with torch.no_grad():
        g = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
        own = m.experts.own(f, g)
    assert torch.allclose(own, z.view(8, 3, 16)[torch.arange(8), g], atol=1e-5)


def test_without_experts_one_projection():
    m = create_model("teams", num_classes=4, num_groups=3, experts=False, memory_size=0, **TINY).eval()
    assert m.embed(_batch()["image"]).shape == (8, 16)


# ------------------------------------------------------------------------------------------------
# Gradient reversal, RSC, online negatives
# ------------------------------------------------------------------------------------------------
def test_gradient_reversal_flips_and_scales():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    (GradientReversal(0.01)(x) * w).sum().backward()
    assert torch.allclose(x.grad, -0.01 * w)
    y = torch.randn(4, 3)
    assert torch.equal(GradientReversal(0.01)(y), y)


def test_rsc_mutes_the_intended_fraction_of_the_intended_rows():
    torch.manual_seed(0)
    imp = torch.randn(12, 10)
    mask = rsc_mask(imp, feature_frac=0.5, row_frac=1 / 3, generator=torch.Generator().manual_seed(1))
    muted_rows = (mask == 0).any(1)
    assert int(muted_rows.sum()) == 4  # 1/3 of 12
    assert ((mask[muted_rows] == 0).sum(1) == 5).all()  # 50 % of 10 features
    assert (mask[~muted_rows] == 1).all()
    for r in torch.nonzero(muted_rows).flatten():  # the muted ones are the most important
        top = set(imp[r].topk(5).indices.tolist())
        assert set(torch.nonzero(mask[r] == 0).flatten().tolist()) == top


def test_online_negatives_loss_equals_hand_computation():
    """4 cells, two treatments: positive pairs (0,1), (2,3); negative pairs the other four; the
    loss is the mean over the 2 × 4 combinations of max(0, m + s(y,n) − s(x,p))."""
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]]), dim=1)
    lab = torch.tensor([0, 0, 1, 1])
    s = z @ z.T
    pos = [s[0, 1], s[2, 3]]  # 0.8, 0.8
    neg = [s[0, 2], s[0, 3], s[1, 2], s[1, 3]]  # 0, -0.6, 0.6, 0.0
    m = 0.3
    hand = sum(max(0.0, m + float(n) - float(p)) for p in pos for n in neg) / 8
    # by hand: for each positive 0.8: negatives 0 → 0, -0.6 → 0, 0.6 → 0.1, 0 → 0: 0.1 each → 0.2 / 8
    assert hand == pytest.approx(0.025)
    assert pair_margin_loss(z, lab, m).item() == pytest.approx(hand, abs=1e-6)


def test_online_negatives_loss_matches_the_pair_matrix():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(16, 6), dim=1).requires_grad_(True)
    lab = torch.arange(16) // 2
    s = z @ z.T
    pairs = list(itertools.combinations(range(16), 2))
    pos = torch.stack([s[i, j] for i, j in pairs if lab[i] == lab[j]])
    neg = torch.stack([s[i, j] for i, j in pairs if lab[i] != lab[j]])
    ref = torch.relu(0.3 + neg[None, :] - pos[:, None]).mean()
    got = pair_margin_loss(z, lab, 0.3)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    g1 = torch.autograd.grad(got, z, retain_graph=True)[0]
    g2 = torch.autograd.grad(ref, z)[0]
    assert torch.allclose(g1, g2, atol=1e-6)


def test_online_negatives_variants_run():
    torch.manual_seed(0)
    b = _batch()
    adv = create_model("online_negatives", num_classes=4, num_groups=2, adversarial=0.01, **TINY)
    out = adv(b)
    assert {"pair_loss", "adv_loss", "adv_acc"} <= set(out)
    out["loss"].backward()
    assert adv.group_head.weight.grad is not None
    rsc = create_model("online_negatives", num_classes=4, num_groups=2, rsc_features=0.5, rsc_rows=0.5, **TINY)
    out = rsc(b)
    assert float(out["rsc_muted"]) == pytest.approx(0.25)  # half the rows × half the features
    out["loss"].backward()
    moe = create_model("online_negatives", num_classes=4, num_groups=2, experts=True, **TINY).eval()
    assert moe.embed(b["image"]).shape == (8, 32)
    with pytest.raises(MorphobenchError, match="rsc_rows"):
        create_model("online_negatives", num_classes=4, num_groups=2, rsc_rows=2.0, **TINY)


def test_treatment_classifier_heads_per_group():
    torch.manual_seed(0)
    m = create_model("treatment_classification", in_chans=3, num_classes=4, num_groups=2,
                     backbone="test_efficientnet")
    b = _batch()
    out = m(b)
    out["loss"].backward()
    assert m.heads[0].weight.grad.abs().sum() > 0 and m.heads[1].weight.grad.abs().sum() > 0
    assert m.eval().embed(b["image"]).shape == (8, m.num_features)


def test_triplet_validation_uses_moa_or_treatments():
    m = create_model("teams", num_classes=4, num_groups=1, memory_size=0, **TINY).eval()
    rows = pd.DataFrame({"Metadata_Perturbation": ["a", "a", "b", "b", "c", "c"],
                         "Metadata_MoA": ["X", "X", "X", "X", "Y", "Y"]})
    m.setup_validation(rows)
    emb = torch.tensor([[1.0, 0], [1, 0.1], [0.9, 0.2], [1, 0], [0, 1], [0.1, 1]])
    out = m.validation_epoch_end([{"embedding": emb, "index": torch.arange(6)}])
    assert out["triplet_acc"] == 1.0 and out["triplets_by_moa"] == 1.0
    m.setup_validation(rows.drop(columns="Metadata_MoA"))
    out = m.validation_epoch_end([{"embedding": emb, "index": torch.arange(6)}])
    assert out["triplets_by_moa"] == 0.0 and out["triplets"] == 6


def test_transfer_needs_weights_and_uses_them(tmp_path):
    """transfer_effnet refuses to run without a weights file; the per-channel network gives F × C
    features per cell, equal to the network applied to each channel replicated to RGB (the
    end-to-end run with a weights file written from a fresh efficientnet_b0 is in
    test_transfer_effnet_plate)."""
    import timm

    from morphobench.embed.stages import EmbedInputs
    from morphobench.models.teams import ChannelwiseTransfer, embed_transfer

    spec = {"name": "transfer_effnet", "params": {"weights": None, "batch_size": 4}}
    with pytest.raises(MorphobenchError, match="needs ImageNet weights"):
        embed_transfer(spec, "P1", EmbedInputs(crops="x"))
    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", num_classes=0).eval()
    x = torch.rand(2, 3, 32, 32)
    model = ChannelwiseTransfer(net).eval()
    with torch.no_grad():
        z = model(x)
        ref = net((x[:, 1:2].expand(-1, 3, -1, -1) - model.mean) / model.std)
    f = net.num_features
    assert z.shape == (2, 3 * f)
    assert torch.allclose(z[:, f:2 * f], ref, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Through the framework: a tiny TEAMs training on a tiny crop store
# ------------------------------------------------------------------------------------------------
def _tiny_store(tmp_path, n_per=12, treatments=6, size=16):
    """A crop store of ``treatments`` × ``n_per`` cells whose mean intensity per channel encodes
    the treatment's MoA (two classes), on 2 plates/batches; controls and a split table."""
    import zarr

    rng = np.random.default_rng(0)
    rows, imgs = [], []
    wells = []
    names = [f"T{i}" for i in range(treatments)] + ["DMSO"]
    for i, t in enumerate(names):
        moa = "A" if i % 2 == 0 else "B"
        for j in range(n_per):
            plate = f"P{j % 2 + 1}"
            well = f"W{i:02d}"
            base = np.full((3, size, size), 60.0)
            if t != "DMSO":
                base[0 if moa == "A" else 1] += 80
            imgs.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
            rows.append({"Metadata_Source": "s", "Metadata_Batch": f"B{j % 2 + 1}", "Metadata_Plate": plate,
                         "Metadata_Well": well, "Metadata_Site": 1, "ObjectNumber": j + 1, "Crop_X0": 0,
                         "Crop_Y0": 0, "Crop_Row": len(imgs) - 1, "Crop_Store": "store.zarr"})
        for p in ("P1", "P2"):
            wells.append({"Metadata_Plate": p, "Metadata_Well": f"W{i:02d}", "Metadata_Perturbation": t,
                          "Metadata_PertType": "negcon" if t == "DMSO" else "trt",
                          "Metadata_MoA": None if t == "DMSO" else ("A" if i % 2 == 0 else "B")})
    arr = zarr.create_array(str(tmp_path / "store.zarr"), shape=(len(imgs), 3, size, size), chunks=(1, 3, size, size),
                            dtype="uint8")
    arr[:] = np.stack(imgs)
    arr.attrs["channels"] = ["DNA", "ER", "RNA"]
    pd.DataFrame(rows).to_parquet(tmp_path / "index.parquet")
    wells = pd.DataFrame(wells)
    wells.to_parquet(tmp_path / "wells.parquet")
    return wells


def test_tiny_teams_trains_through_the_framework(tmp_path):
    from morphobench.methods import get
    from morphobench.training.splits import treatment_folds
    from morphobench.training.stage import load_trained, train_method

    wells = _tiny_store(tmp_path)
    split = treatment_folds(wells, n_folds=3, seed=0)
    split.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    spec = get("teams").to_spec({"epochs": 2, "batch_size": 8, "steps_per_epoch": 3, "embed_dim": 8,
                                 "memory_size": 16, "downsample": 1, "device": "cpu",
                                 "backbone": "test_resnet"})
    out = train_method(spec, tmp_path / "index.parquet", tmp_path / "split.tsv", tmp_path / "wells.parquet",
                       tmp_path / "m" / "model.pt")
    log = pd.read_csv(tmp_path / "m" / "train_log.tsv", sep="\t")
    assert list(log["epoch"]) == [1, 2]
    assert log["val_triplet_acc"].between(0, 1).all() and (log["val_triplets"] > 0).all()
    assert {"train_exemplar_loss", "train_memory_loss"} <= set(log.columns)
    model, payload = load_trained(out)
    assert payload["vocab"]["groups"] == ["B1", "B2"] and model.n_experts == 2
    # Table 3: training on one group only builds one expert
    spec1 = get("teams").to_spec({"epochs": 1, "batch_size": 8, "steps_per_epoch": 2, "embed_dim": 8,
                                  "memory_size": 0, "downsample": 1, "device": "cpu", "train_groups": ["B1"],
                                  "backbone": "test_resnet"})
    out1 = train_method(spec1, tmp_path / "index.parquet", tmp_path / "split.tsv", tmp_path / "wells.parquet",
                        tmp_path / "m1" / "model.pt")
    m1, p1 = load_trained(out1)
    assert p1["vocab"]["groups"] == ["B1"] and m1.n_experts == 1
    bad = get("teams").to_spec({"epochs": 1, "train_groups": ["B9"], "device": "cpu"})
    with pytest.raises(MorphobenchError, match="B9"):
        train_method(bad, tmp_path / "index.parquet", tmp_path / "split.tsv", tmp_path / "wells.parquet",
                     tmp_path / "m2" / "model.pt")


def test_treatment_folds_never_train_on_controls_or_share_treatments():
    from morphobench.training.splits import treatment_folds

    wells = pd.DataFrame({"Metadata_Plate": "P", "Metadata_Well": [f"W{i}" for i in range(40)],
                          "Metadata_Perturbation": [f"T{i % 15}" if i < 30 else "DMSO" for i in range(40)],
                          "Metadata_PertType": ["trt"] * 30 + ["negcon"] * 10})
    s = treatment_folds(wells, n_folds=5, seed=1)
    test = s[s["split"] == "test"]
    assert (test.groupby("Metadata_Perturbation")["fold"].nunique() == 1).all()  # one test fold each
    assert set(test["Metadata_Perturbation"]) == {f"T{i}" for i in range(15)}
    assert (s.loc[s["Metadata_PertType"] == "negcon", "split"] == "control").all()
    assert not s.loc[s["split"] == "train", "Metadata_PertType"].ne("trt").any()
    per_fold = s[s["Metadata_PertType"] == "trt"].groupby(["fold", "Metadata_Perturbation"])["split"].nunique()
    assert (per_fold == 1).all()


def test_transfer_effnet_plate(tmp_path):
    """transfer_effnet end to end on a crop store, with a weights file this test writes from a
    fresh timm efficientnet_b0: 1,280 × C features per cell; a file that does not fit: an error."""
    import timm

    from morphobench.embed.stages import EmbedInputs
    from morphobench.methods import get
    from morphobench.models.teams import embed_transfer

    _tiny_store(tmp_path, n_per=2, treatments=2, size=16)
    torch.manual_seed(0)
    torch.save(timm.create_model("efficientnet_b0", num_classes=1000).state_dict(), tmp_path / "effnet.pth")
    spec = get("transfer_effnet").to_spec({"weights": str(tmp_path / "effnet.pth"), "batch_size": 4})
    rows = embed_transfer(spec, "P1", EmbedInputs(crops=str(tmp_path / "index.parquet"), device="cpu"))
    feats = rows.filter(like="emb_")
    assert feats.shape == (6, 3 * 1280) and np.isfinite(feats.to_numpy()).all()
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_ObjectNumber"} <= set(rows.columns)
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "wrong.pth")
    spec = get("transfer_effnet").to_spec({"weights": str(tmp_path / "wrong.pth")})
    with pytest.raises(MorphobenchError, match="does not fit"):
        embed_transfer(spec, "P1", EmbedInputs(crops=str(tmp_path / "index.parquet"), device="cpu"))
