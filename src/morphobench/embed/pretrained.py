"""ImageNet-pretrained ViT baselines (MAE-CVPR Table 3: ViT-S/16, ViT-B/16, ViT-B/8, ViT-L/16 trained
on ImageNet-21k), applied to the ``tile256`` crops of one plate.

``weights`` is a local file: timm's ImageNet-21k checkpoint of ``arch`` saved as a ``state_dict``
(``python -m morphobench.embed export-timm-weights --arch ARCH --out FILE`` writes it on a machine
with internet access). Without the file the method fails with an error naming it — never random
weights under this name. The classifier is dropped and the position embeddings are resampled from
the 224² grid to the crop's grid with timm's checkpoint filter (bicubic).

Feeding C channels to an RGB model (the papers don't say how; ours): ``channel_mode: per_channel``
(default) repeats each self-standardized channel into the three RGB inputs, embeds every channel
separately with the network's pooled output (the class token for these ViTs) and concatenates the
C embeddings in the crop store's channel order (C × D features, as TEAMs' transfer-learning
baseline); ``channel_mode: adapt`` instead adapts the first layer to C input channels with timm's
``adapt_input_conv`` (RGB filters repeated cyclically and rescaled by 3 / C): one pass, D features.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from morphobench.io import MorphobenchError, atomic_path

log = logging.getLogger("morphobench.embed.pretrained")

CHANNEL_MODES = ("per_channel", "adapt")


def load_imagenet_vit(name: str, arch: str, weights: str, img_size: int, in_chans: int = 3) -> torch.nn.Module:
    """timm ``arch`` with the ImageNet ``weights`` file, for ``img_size``² crops of ``in_chans``
    channels (eval mode; a missing or unfitting file is an error naming the method)."""
    import morphobench.models  # noqa: F401  (timm on CPU-only torch)
    import timm
    from timm.models import adapt_input_conv
    from timm.models.vision_transformer import checkpoint_filter_fn

    if not timm.is_model(arch):
        raise MorphobenchError(f"method {name}: timm does not know architecture {arch!r}")
    path = Path(weights)
    if not path.is_file():
        raise MorphobenchError(
            f"method {name}: ImageNet weights file not found: {path}. The workflow does not download "
            f"weights; on a machine with internet access run `python -m morphobench.embed export-timm-weights "
            f"--arch {arch} --out {path}` and copy the file here (this method never runs with random weights)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MorphobenchError(f"method {name}: cannot read weights file {path}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise MorphobenchError(f"method {name}: {path} holds no state_dict of tensors")
    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size, in_chans=in_chans)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as err:
        raise MorphobenchError(f"method {name}: {path} does not fit timm {arch!r}: {err}") from err
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.shape[1] != in_chans:
        state["patch_embed.proj.weight"] = adapt_input_conv(in_chans, w)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise MorphobenchError(f"method {name}: {path} does not fit timm {arch!r}: {str(err)[:500]}") from err
    if missing or unexpected:
        raise MorphobenchError(f"method {name}: {path} does not fit timm {arch!r}: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}")
    return model.eval()


class PerChannel(torch.nn.Module):
    """Each channel repeated to RGB and embedded on its own; embeddings concatenated (C × D)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        z = self.net(x.reshape(b * c, 1, h, w).expand(b * c, 3, h, w))
        return z.reshape(b, c * z.shape[-1])


def embed_imagenet_vit(spec: dict, plate: str, inputs) -> "pd.DataFrame":  # noqa: F821
    """Per-plate embed function of the ``imagenet_vit_*`` methods."""
    from morphobench.embed.learned import embed_crops
    from morphobench.training.data import AugmentConfig, CropSet, index_rows
    from morphobench.training.loop import resolve_device

    p = spec["params"]
    mode = p.get("channel_mode", "per_channel")
    if mode not in CHANNEL_MODES:
        raise MorphobenchError(f"method {spec['name']}: channel_mode must be one of {CHANNEL_MODES}, got {mode!r}")
    if not inputs.crops:
        raise MorphobenchError(f"method {spec['name']}: no crop index given for plate {plate}")
    rows = index_rows(inputs.crops)
    channels = CropSet(rows.head(1)).channels if len(rows) else []
    size = int(CropSet(rows.head(1)).read(0).shape[-1]) if len(rows) else 224
    device = resolve_device(p.get("device", "auto"))
    net = load_imagenet_vit(spec["name"], p["arch"], p["weights"], size, 3 if mode == "per_channel" else len(channels))
    model = (PerChannel(net) if mode == "per_channel" else net).to(device)
    aug = AugmentConfig(flips=False, rot90=False, normalize=p.get("normalize", "self"))
    return embed_crops(model, inputs.crops, channels, aug, batch_size=int(p.get("batch_size", 32)), device=device,
                       desc=f"{spec['name']} {plate}")


def export_timm_weights(arch: str, out: str) -> Path:
    """Save timm's pretrained ``arch`` (downloaded by timm; needs internet) as a state_dict file."""
    import morphobench.models  # noqa: F401
    import timm

    try:
        model = timm.create_model(arch, pretrained=True)
    except Exception as err:
        raise MorphobenchError(f"cannot download the pretrained weights of {arch!r} (internet access?): {err}") from err
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    log.info("wrote %s (%s)", out, arch)
    return Path(out)
