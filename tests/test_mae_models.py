"""The MAE family's models against their definitions (MAE-W, MAE-CVPR; REFERENCE.md §2): masking,
the loss on masked patches only, the Fourier loss against NumPy, Lion's published rule, CA-MAE's
channel agnosticism, AdaBN's per-plate statistics, MU-Net's mask fraction and the FLOPs convention.
Tiny widths/depths and 32–64 px crops throughout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morphobench.models import create_model
from morphobench.models.layers.adabn import adapt_to_plate, ghost_forward
from morphobench.models.layers.losses import (
    mae_loss,
    masked_mean,
    patch_fourier_l1,
    patchify,
    patchify_channels,
    unpatchify,
    unpatchify_channels,
)
from morphobench.models.layers.masking import num_kept, random_masking, restore
from morphobench.models.layers.vit import analytic_macs, paper_flops
from morphobench.models.munet import patch_mask

TINY_VIT = {"size": "s", "embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_dim": 16, "decoder_depth": 1,
            "decoder_heads": 2}


# ------------------------------------------------------------------------------------------------
# Masking
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "ratio"), [(16, 0.75), (64, 0.75), (49, 0.75), (16, 0.25), (10, 0.85)])
def test_masking_keeps_round_fraction_and_restores_order(n, ratio):
    torch.manual_seed(0)
    b, d = 3, 4
    x = torch.arange(b * n, dtype=torch.float32).reshape(b, n, 1).expand(b, n, d).clone()
    kept, mask, ids_restore, ids_keep = random_masking(x, ratio)
    k = int(round((1 - ratio) * n))
    assert num_kept(n, ratio) == k and kept.shape == (b, k, d)
    assert (mask.sum(1) == n - k).all() and set(mask.unique().tolist()) <= {0.0, 1.0}
    # the kept tokens are the unmasked positions, and differ between images
    for i in range(b):
        assert sorted(ids_keep[i].tolist()) == torch.nonzero(mask[i] == 0).flatten().tolist()
    assert not torch.equal(mask[0], mask[1])
    # the decoder side puts every kept token back at its position, mask tokens elsewhere
    token = torch.full((d,), -1.0)
    full = restore(kept, ids_restore, token)
    vis = mask == 0
    assert torch.equal(full[vis], x[vis])
    assert (full[~vis] == -1).all()


def test_masking_works_per_channel():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 8)  # (B, C, N, D): CA-MAE's independent mask per channel
    kept, mask, ids_restore, _ = random_masking(x, 0.75)
    assert kept.shape == (2, 3, 4, 8) and (mask.sum(-1) == 12).all()
    assert not torch.equal(mask[0, 0], mask[0, 1])
    full = restore(kept, ids_restore, torch.zeros(8))
    assert torch.equal(full[mask == 0], x[mask == 0])


def test_patchify_roundtrips():
    x = torch.randn(2, 3, 32, 48)
    p = patchify(x, 16)
    assert p.shape == (2, 6, 16 * 16 * 3)
    assert torch.equal(p[0, 1].reshape(16, 16, 3).permute(2, 0, 1), x[0, :, :16, 16:32])
    assert torch.equal(unpatchify(p, 16, 3, (2, 3)), x)
    pc = patchify_channels(x, 16)
    assert pc.shape == (2, 3, 6, 256) and torch.equal(pc[1, 2, 4].reshape(16, 16), x[1, 2, 16:, 16:32])
    assert torch.equal(unpatchify_channels(pc, 16, (2, 3)), x)


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------
def test_loss_ignores_visible_patches():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 16, 48), torch.randn(2, 16, 48)
    mask = torch.zeros(2, 16)
    mask[:, ::3] = 1
    for w in (0.0, 0.01):
        base = mae_loss(pred, target, mask, 4, w)["loss"]
        changed = target.clone()
        changed[0, 1] += 5.0  # visible patch (mask 0)
        assert torch.allclose(mae_loss(pred, changed, mask, 4, w)["loss"], base)
        changed[0, 3] += 5.0  # masked patch
        assert not torch.allclose(mae_loss(pred, changed, mask, 4, w)["loss"], base)
    # mse = plain mean over masked patches
    ref = ((pred - target) ** 2).mean(-1)[mask == 1].mean()
    assert torch.allclose(mae_loss(pred, target, mask, 4)["loss"], ref)


def test_model_loss_ignores_visible_patch_targets():
    """MAE-ViT end to end: with the masks fixed by the seed, changing the target of a visible patch
    (not the input) leaves the loss unchanged."""
    torch.manual_seed(0)
    m = create_model("mae_vit", in_chans=2, patch_size=8, **TINY_VIT).eval()
    x = torch.randn(2, 2, 32, 32)
    torch.manual_seed(5)
    pred, mask, _ = m.forward_masked(x)
    torch.manual_seed(5)
    assert torch.allclose(m({"image": x})["loss"], mae_loss(pred, patchify(x, 8), mask, 8)["loss"])
    target = patchify(x, 8)
    vis = int(torch.nonzero(mask[0] == 0)[0])
    t2 = target.clone()
    t2[0, vis] = 100.0
    assert torch.allclose(mae_loss(pred, t2, mask, 8)["loss"], mae_loss(pred, target, mask, 8)["loss"])


def _np_fourier(pred: np.ndarray, target: np.ndarray, p: int) -> np.ndarray:
    """NumPy reference of MAE-CVPR Eq. 2 per patch: vectors (..., P·P·C) in (p, q, c) order."""
    c = pred.shape[-1] // (p * p)
    out = np.zeros(pred.shape[:-1])
    for idx in np.ndindex(*pred.shape[:-1]):
        a = pred[idx].reshape(p, p, c)
        b = target[idx].reshape(p, p, c)
        vals = [np.abs(np.abs(np.fft.fft2(a[:, :, ch])) - np.abs(np.fft.fft2(b[:, :, ch]))).mean() for ch in range(c)]
        out[idx] = np.mean(vals)
    return out


@pytest.mark.parametrize("shape", [(7, 4 * 4 * 3), (2, 5, 4 * 4 * 3), (2, 3, 5, 4 * 4), (2, 3, 4, 5, 4 * 4 * 2)])
def test_fourier_loss_equals_numpy_for_every_rank(shape):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=shape), rng.normal(size=shape)
    got = patch_fourier_l1(torch.from_numpy(pred), torch.from_numpy(target), 4).numpy()
    np.testing.assert_allclose(got, _np_fourier(pred, target, 4), rtol=1e-5, atol=1e-6)
    # the masked mean over patches and the combination of Eq. 3
    mask = torch.from_numpy((rng.random(shape[:-1]) < 0.5).astype(np.float32))
    out = mae_loss(torch.from_numpy(pred).float(), torch.from_numpy(target).float(), mask, 4, 0.01)
    ref_ft = _np_fourier(pred, target, 4)[mask.numpy() == 1].mean()
    ref_mse = ((pred - target) ** 2).mean(-1)[mask.numpy() == 1].mean()
    assert out["fourier"].item() == pytest.approx(ref_ft, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.99 * ref_mse + 0.01 * ref_ft, rel=1e-5)


def test_fourier_loss_rejects_wrong_patch_length():
    with pytest.raises(ValueError, match="patch"):
        patch_fourier_l1(torch.zeros(2, 10), torch.zeros(2, 10), 4)


def test_masked_mean():
    assert masked_mean(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 1])).item() == 2.5


# ------------------------------------------------------------------------------------------------
# Lion (timm.optim.Lion through the framework's optimizer factory)
# ------------------------------------------------------------------------------------------------
def test_lion_update_equals_its_published_rule():
    """Chen et al. 2023, Alg. 2: c = β1·m + (1−β1)·g; θ ← θ − lr·(sign(c) + λ·θ); m ← β2·m + (1−β2)·g."""
    from morphobench.training.config import TrainConfig
    from morphobench.training.loop import make_optimizer

    lin = torch.nn.Linear(2, 1, bias=False)  # 2 parameters (a matrix: weight decay applies)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -0.3]]))
    cfg = TrainConfig(optimizer="lion", lr=0.1, betas=(0.9, 0.95), weight_decay=0.05)
    opt = make_optimizer(lin, cfg)
    assert type(opt).__name__ == "Lion"
    theta, m = np.array([0.5, -0.3]), np.zeros(2)
    lr, b1, b2, wd = 0.1, 0.9, 0.95, 0.05
    for g in ([1.0, -2.0], [-0.5, 0.2], [0.05, 0.01], [-3.0, -1.0]):
        lin.weight.grad = torch.tensor([g], dtype=torch.float32)
        opt.step()
        g = np.array(g)
        c = b1 * m + (1 - b1) * g
        theta = theta - lr * (np.sign(c) + wd * theta)
        m = b2 * m + (1 - b2) * g
        np.testing.assert_allclose(lin.weight.detach().numpy()[0], theta, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# MAE-ViT and CA-MAE
# ------------------------------------------------------------------------------------------------
def test_mae_vit_uses_the_papers_timm_blocks_and_embeds_patch_means():
    from timm.models.vision_transformer import ParallelScalingBlock

    m = create_model("mae_vit", in_chans=3, patch_size=8, **TINY_VIT)
    blk = m.encoder.blocks[0]
    assert isinstance(blk, ParallelScalingBlock) and blk.in_proj.bias is None  # no QK(V) bias
    assert not isinstance(blk.q_norm, torch.nn.Identity)  # QK-norm
    assert torch.allclose(blk.ls.gamma, torch.full_like(blk.ls.gamma, 1e-4))  # LayerScale
    assert m.encoder.pos_embed is None  # fixed sin-cos embeddings are added instead
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    tokens, _ = m.patch_tokens(x)
    full = m._encode(tokens)
    assert torch.allclose(m.embed(x), full[:, 1:].mean(1))
    assert m.embed(torch.randn(1, 3, 64, 48)).shape == (1, 32)  # any size divisible by the patch
    with pytest.raises(ValueError, match="channel_map"):
        m.embed(torch.randn(1, 4, 32, 32))
    rec = m.reconstruct(x)
    assert rec["reconstruction"].shape == x.shape and rec["mask_ratio"].item() == pytest.approx(0.75)
    # the visible patches of the masked input are the original's, the masked ones are zero
    vis = (rec["masked"] != 0).float()
    assert torch.allclose(rec["masked"], x * vis)
    assert torch.allclose(rec["reconstruction"] * vis, x * vis)


def test_mae_drop_path_follows_the_paper():
    m = create_model("mae_vit", in_chans=1, patch_size=8, **{**TINY_VIT, "depth": 3}, drop_path=0.3)
    rates = [float(getattr(b.drop_path, "drop_prob", 0.0)) for b in m.encoder.blocks]
    assert rates == pytest.approx([0.0, 0.15, 0.3])


def test_ca_mae_takes_any_number_and_order_of_channels():
    torch.manual_seed(0)
    m = create_model("ca_mae", in_chans=5, patch_size=8, **TINY_VIT).eval()
    assert m.channel_agnostic
    x = torch.randn(2, 8, 32, 32)
    d = 32
    for c in (5, 3, 8):
        xc = x[:, :c]
        assert m.embed(xc).shape == (2, d)
        assert m.embed(xc, "cls").shape == (2, d)
        per = m.embed(xc, "channels")
        assert per.shape == (2, c * d)
    # no channel identity anywhere in the encoder: reordering the channels permutes the
    # per-channel blocks and leaves the mean and class-token embeddings unchanged
    perm = [2, 0, 1]
    x3 = x[:, :3]
    assert torch.allclose(m.embed(x3[:, perm]), m.embed(x3), atol=1e-5)
    assert torch.allclose(m.embed(x3[:, perm], "cls"), m.embed(x3, "cls"), atol=1e-5)
    per, per_p = m.embed(x3, "channels").reshape(2, 3, d), m.embed(x3[:, perm], "channels").reshape(2, 3, d)
    assert torch.allclose(per_p, per[:, perm], atol=1e-5)


def test_ca_mae_training_masks_each_channel_and_decodes_per_channel():
    torch.manual_seed(0)
    m = create_model("ca_mae", in_chans=3, patch_size=8, fourier_weight=0.01, **TINY_VIT)
    x = torch.randn(2, 3, 32, 32)
    pred, mask, _ = m.forward_masked(x)
    assert pred.shape == (2, 3, 16, 64) and mask.shape == (2, 3, 16)
    assert (mask.sum(-1) == 12).all()  # round(0.25 · 16) = 4 kept in EVERY channel
    assert len(m.decoders) == 3
    out = m({"image": x})
    out["loss"].backward()
    assert {"loss", "mse", "fourier"} <= set(out)
    assert all(p.grad is not None for p in m.decoders[2].parameters())
    with pytest.raises(ValueError, match="one decoder per channel"):
        m({"image": x[:, :2]})
    joint = create_model("ca_mae", in_chans=3, patch_size=8, mask_mode="joint", **TINY_VIT)
    _, jm, _ = joint.forward_masked(x)
    assert (jm.sum((1, 2)) == 48 - 12).all()  # the ratio applied to all C·N tokens at once
    rec = m.reconstruct(x)
    assert rec["reconstruction"].shape == x.shape


def test_mae_and_ca_mae_learn_on_a_tiny_batch():
    """A few optimizer steps reduce the reconstruction loss on images whose masked patches are
    predictable from the visible ones (a constant per image and channel + a little noise)."""
    for name in ("mae_vit", "ca_mae"):
        torch.manual_seed(0)
        m = create_model(name, in_chans=2, patch_size=8, fourier_weight=0.01, **TINY_VIT)
        x = torch.randn(4, 2, 1, 1) * 2 + 0.1 * torch.randn(4, 2, 32, 32)
        opt = torch.optim.AdamW(m.parameters(), 3e-3)
        losses = []
        for _ in range(30):
            torch.manual_seed(1)
            out = m({"image": x})
            losses.append(float(out["loss"].detach()))
            out["loss"].backward()
            opt.step()
            opt.zero_grad()
        assert losses[-1] < 0.7 * losses[0], (name, losses[0], losses[-1])


# ------------------------------------------------------------------------------------------------
# FLOPs convention (MAE-W A.3)
# ------------------------------------------------------------------------------------------------
def test_paper_flops_convention():
    assert paper_flops(768, 12, 16) == pytest.approx(17.6e9 * 1.69)
    assert paper_flops(768, 12, 8) == pytest.approx(17.6e9 * 1.69 * 16)
    assert paper_flops(384, 12, 16) == pytest.approx(4.6e9 * 1.69)
    assert paper_flops(1024, 24, 8) == pytest.approx(61.6e9 * 1.69 * 16)
    # the analytic count that stands in for other sizes reproduces Touvron's ViT-B/16 number
    assert analytic_macs(768, 12, 197, 768) == pytest.approx(17.6e9, rel=0.03)
    assert analytic_macs(384, 12, 197, 768) == pytest.approx(4.6e9, rel=0.03)
    m = create_model("mae_vit", in_chans=5, patch_size=16, **TINY_VIT)
    assert m.flops_per_image == pytest.approx(analytic_macs(32, 1, 197, 768) * 1.69)
    ca = create_model("ca_mae", in_chans=5, patch_size=16, **TINY_VIT)
    assert ca.flops_per_image == pytest.approx(5 * m.flops_per_image)


# ------------------------------------------------------------------------------------------------
# MU-Net
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "patch", "ratio"), [(64, 16, 0.25), (64, 8, 0.25), (32, 8, 0.5)])
def test_mu_net_masks_the_intended_fraction(size, patch, ratio):
    torch.manual_seed(0)
    m = patch_mask(3, size, size, patch, ratio)
    n = (size // patch) ** 2
    squares = m[:, 0, ::patch, ::patch]
    assert (squares.flatten(1).sum(1) == round(ratio * n)).all()
    assert m.mean().item() == pytest.approx(round(ratio * n) / n)
    # whole squares only
    assert torch.equal(m, squares.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1))


def test_mu_net_loss_on_masked_pixels_and_bottleneck_embedding():
    torch.manual_seed(0)
    net = create_model("mu_net", in_chans=2, widths=[4, 8, 16], blocks=1, kernel_size=5, mask_patch=8)
    x = torch.randn(2, 2, 32, 32)
    out = net({"image": x})
    assert out["masked_fraction"].item() == pytest.approx(0.25)
    out["loss"].backward()
    net.eval()
    assert net.embed(x).shape == (2, 16)
    assert torch.allclose(net.embed(x), net.encode(x)[-1].mean((-2, -1)))
    conv = net.down[0][0].body[0]
    assert conv.kernel_size == (5, 5)
    with pytest.raises(ValueError, match="divisible"):
        net.embed(torch.randn(1, 2, 30, 30))


# ------------------------------------------------------------------------------------------------
# WSL and AdaBN
# ------------------------------------------------------------------------------------------------
TINY_DN = {"growth_rate": 4, "block_config": [1, 1], "embed_dim": 8, "neck_hidden": 8}


def test_wsl_densenet_is_timm_densenet161_with_an_mlp_neck():
    m = create_model("wsl_densenet", in_chans=6, num_classes=10)
    n = sum(p.numel() for p in m.backbone.parameters())
    assert 26e6 < n < 27e6  # timm densenet161 (26.5 M parameters without the classifier)
    assert m.embed_dim == 128 and m.head.in_features == 128


def test_adabn_gives_plate_dependent_outputs_for_the_same_tile():
    torch.manual_seed(0)
    kw = dict(in_chans=3, num_classes=4, **TINY_DN)
    ada = create_model("wsl_densenet", adabn=True, ghost_batch=4, **kw).eval()
    plain = create_model("wsl_densenet", adabn=False, **kw).eval()
    plain.load_state_dict(ada.state_dict())
    tile = torch.randn(1, 3, 32, 32)
    plate_a = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    plate_b = [torch.randn(4, 3, 32, 32) * 3 + 2 for _ in range(2)]  # other plate statistics
    assert ada.adapt(plate_a) == 8
    za = ada.embed(tile)
    za_again = ada.embed(tile)
    ada.adapt(plate_b)
    zb = ada.embed(tile)
    assert torch.allclose(za, za_again)  # deterministic within a plate, whatever the batch
    assert not torch.allclose(za, zb, atol=1e-3)  # the same tile, other plate: other embedding
    # without AdaBN, adapting does nothing and the embedding is the same
    assert plain.adapt(plate_a) == 0
    z1 = plain.embed(tile)
    plain.adapt(plate_b)
    assert torch.allclose(z1, plain.embed(tile))
    # the plate statistics are those of the plate: the first BN's running mean = the plate's mean
    bn0 = ada.backbone.features.norm0
    ada.adapt(plate_a)
    stem = torch.nn.Sequential(ada.backbone.features.conv0)
    with torch.no_grad():
        f = torch.cat([stem(x) for x in plate_a])
    assert torch.allclose(bn0.running_mean, f.mean((0, 2, 3)), atol=1e-5)


def test_adabn_validation_uses_each_plates_own_statistics():
    torch.manual_seed(0)
    m = create_model("wsl_densenet", adabn=True, ghost_batch=8, in_chans=2, num_classes=3, **TINY_DN).eval()
    xa, xb = torch.randn(3, 2, 32, 32), torch.randn(3, 2, 32, 32) * 2 + 1
    lab = torch.tensor([0, 1, 2])
    alone = m.validation_step({"image": xa, "label": lab, "plate": torch.zeros(3, dtype=torch.long)})
    mixed = m.validation_step({"image": torch.cat([xa, xb]), "label": torch.cat([lab, lab]),
                               "plate": torch.tensor([0, 0, 0, 1, 1, 1])})
    other = m.validation_step({"image": torch.cat([xa, xb]), "label": torch.cat([lab, lab]),
                               "plate": torch.zeros(6, dtype=torch.long)})
    assert float(mixed["loss"]) != pytest.approx(float(other["loss"]))
    assert np.isfinite(float(alone["loss"]))
    running = m.backbone.features.norm0.running_mean.clone()
    m.validation_step({"image": xb, "label": lab, "plate": torch.ones(3, dtype=torch.long)})
    assert torch.equal(running, m.backbone.features.norm0.running_mean)  # validation changes no state


def test_ghost_forward_is_per_chunk_batch_norm():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3).train()
    x = torch.randn(8, 3, 4, 4)
    out = ghost_forward(bn, x, 4)
    ref = torch.cat([(c - c.mean((0, 2, 3), keepdim=True)) / torch.sqrt(c.var((0, 2, 3), unbiased=False,
                                                                               keepdim=True) + bn.eps)
                     for c in x.split(4)])
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(ghost_forward(bn, x, 0), bn(x))


def test_adapt_to_plate_restores_momentum_and_leaves_eval_mode():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    adapt_to_plate(net, net, [torch.randn(4, 1, 3, 3)])
    assert not net.training and net[1].momentum == 0.1


def test_wsl_classifier_loss_accuracy_and_ignored_labels():
    torch.manual_seed(0)
    m = create_model("wsl_densenet", in_chans=2, num_classes=3, **TINY_DN)
    out = m({"image": torch.randn(4, 2, 32, 32), "label": torch.tensor([0, 1, -1, 2]),
             "plate": torch.zeros(4, dtype=torch.long)})
    assert out["loss"].requires_grad and 0 <= float(out["accuracy"]) <= 1
    none = m({"image": torch.randn(2, 2, 32, 32), "label": torch.tensor([-1, -1]), "plate": torch.zeros(2)})
    assert float(none["loss"]) == 0.0
    vit = create_model("wsl_vit", in_chans=2, num_classes=3, size="b", embed_dim=32, depth=1, num_heads=2,
                       patch_size=8).eval()
    x = torch.randn(2, 2, 32, 32)
    assert vit.embed(x).shape == (2, 32)
    t = vit.encoder.patch_embed.proj(x).flatten(2).transpose(1, 2)
    assert vit.flops_per_image == pytest.approx(paper_flops(32, 1, 8))
    assert t.shape[1] == 16
