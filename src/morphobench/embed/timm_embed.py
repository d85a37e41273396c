"""Bring your own network: ``{name: N, kind: timm, arch: A, weights: W, input: cell128}``.

``timm.create_model(arch, pretrained=False, num_classes=0, in_chans=C)`` gives the pooled features
of any timm architecture for the screen's C channels. ``weights`` is a local file — a
``state_dict``, or a checkpoint holding one under ``state_dict``/``model`` — loaded after dropping
the classifier (every other tensor must match the architecture exactly); a first convolution trained on another channel count (e.g. ImageNet RGB) is
adapted with timm's ``adapt_input_conv`` (repeat and rescale), as timm does for pretrained weights.
``weights: random`` keeps the random initialisation (seeded; said so in every table's provenance).
Crops are normalized per ``normalize``: ``self`` (per-image per-channel standardization, default),
``unit`` ([0, 1]) or ``none``.
"""

from __future__ import annotations

import logging

import torch

from morphobench.io import MorphobenchError

log = logging.getLogger("morphobench.embed.timm")


def build_timm(name: str, arch: str, weights: str, in_chans: int) -> torch.nn.Module:
    import morphobench.models  # noqa: F401  (torchvision on CPU-only torch)
    import timm
    from timm.models import adapt_input_conv

    if not timm.is_model(arch):
        raise MorphobenchError(f"method {name}: timm does not know architecture {arch!r} "
                               f"(timm {timm.__version__}; see timm.list_models())")
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans)
    if weights == "random":
        log.warning("method %s: %s with RANDOM weights (weights: random)", name, arch)
        return model.eval()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MorphobenchError(f"method {name}: weights file not found: {weights}") from None
    except Exception as err:
        raise MorphobenchError(f"method {name}: cannot read weights file {weights}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise MorphobenchError(f"method {name}: {weights} holds no state_dict of tensors")
    own = model.state_dict()
    first = model.pretrained_cfg.get("first_conv")
    if first and f"{first}.weight" in state and f"{first}.weight" in own:
        w = state[f"{first}.weight"]
        if w.ndim == 4 and w.shape[1] != own[f"{first}.weight"].shape[1]:
            state[f"{first}.weight"] = adapt_input_conv(in_chans, w)
            log.info("method %s: adapted %s from %d to %d input channels", name, first, w.shape[1], in_chans)
    head = model.pretrained_cfg.get("classifier")
    state = {k: v for k, v in state.items() if not (head and k.startswith(f"{head}."))}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise MorphobenchError(f"method {name}: {weights} does not fit timm {arch!r}: {str(err)[:500]}") from err
    if missing or unexpected:
        raise MorphobenchError(f"method {name}: {weights} does not fit timm {arch!r}: {len(missing)} missing "
                               f"tensor(s), e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}")
    return model.eval()


def embed_plate(spec: dict, plate: str, inputs) -> "pd.DataFrame":  # noqa: F821
    from morphobench.embed.learned import embed_crops
    from morphobench.training.data import AugmentConfig, CropSet, index_rows
    from morphobench.training.loop import resolve_device

    user, params = spec["user"], spec["params"]
    if not inputs.crops:
        raise MorphobenchError(f"method {spec['name']}: no crop index given for plate {plate}")
    rows = index_rows(inputs.crops)
    channels = CropSet(rows.head(1)).channels if len(rows) else []
    device = resolve_device(params.get("device", "auto"))
    model = build_timm(spec["name"], user["arch"], user["weights"], len(channels) or 1).to(device)
    aug = AugmentConfig(flips=False, rot90=False, normalize=params.get("normalize", "self"))
    return embed_crops(model, inputs.crops, channels, aug, batch_size=int(params.get("batch_size", 64)),
                       device=device, desc=f"{spec['name']} {plate}")
