"""The method registry: every method's name, family, input, level, defaults and embed function.

This module is imported while Snakemake builds the DAG, so it imports neither torch nor the
model files (standard library + :mod:`morphobench.io` only). Everything that names a method —
the config schema's enums, the rules' ``{method}`` wildcard, the evaluation method lists, the
README's method table — is derived from :data:`REGISTRY`.

Adding a method = one :func:`register` call here (or in a plugin module, see below) + its model
file under ``src/morphobench/models/``; nothing else names it.

A method (:class:`Method`)
--------------------------
``name``      config/CLI/path name (``[A-Za-z0-9_+.-]``; ``+`` marks the Fourier-loss MAEs)
``family``    ``baseline``, ``cellprofiler``, ``teams``, ``mae``, ``munet``, ``densenet``,
              ``campfire``, ``user`` …
``input``     what it reads: ``none`` (the plate map), ``site`` (whole illumination-corrected
              sites), or a crop kind (``cell128``, ``cell112``, ``tile256``)
``level``     the level of its rows: ``cell``, ``tile``, ``site`` or ``well``
``trains``    whether a model is trained first (``results/{dataset}/models/{method}/model.pt``)
``model``     the model name for :func:`morphobench.models.create_model` (trained methods)
``embed``     ``"module:function"`` that embeds one plate (see :mod:`morphobench.embed.stages`);
              ``None`` when another rule writes the per-plate parts (``parts``)
``parts``     per-plate part path template when not the default
              ``results/{dataset}/embeddings/{method}/plates/{plate}.parquet``
``split``     the saved split table a trained method reads (``results/{dataset}/splits/{split}.tsv``)
``defaults``  parameters (model + training); a config entry ``{name: X, params: {...}}`` overrides
``nonfinite`` ``error`` (NaN/inf in a profile is an error naming the file) or ``drop_features``
              (features with NaN/inf in any well are dropped and logged: CellProfiler)
``needs``     parameters naming local files the method cannot run without (parameter → what the
              file is, e.g. ImageNet ``weights``; the default may be a path or ``None``): a
              configured method without the parameter, or whose file is missing, stops the run with
              an error naming both; ``methods: [all]`` leaves such a method out, with a warning

Bring your own (config ``methods:``, no code change)
----------------------------------------------------
``{name: N, kind: embeddings, path: P}``  a parquet of ``Metadata_Plate``, ``Metadata_Well`` +
    numeric features (several rows per well are averaged); ``path`` may contain ``{dataset}``.
``{name: N, kind: timm, arch: A, weights: W, input: cell128}``  any timm architecture applied to a
    crop kind; ``weights`` is a local file (``state_dict`` or a checkpoint holding one) or the
    literal ``random`` (random init, recorded in the provenance of every table).

Plugins
-------
``MORPHOBENCH_PLUGINS=pkg.mod1,pkg.mod2`` imports those modules when this one is imported; each can
call :func:`register` (and :func:`morphobench.models.register_model` in its model module) to add
methods without editing this package.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from morphobench.io import MorphobenchError

_log = logging.getLogger("morphobench.methods")

#: Inputs a method can read: the plate map only, whole sites, or a crop kind.
#: the crop kinds a method may read (crop stores)
CROP_KINDS: tuple[str, ...] = ("cell128", "cell112", "tile256")
#: what a method reads: nothing but the plate map, whole sites, a crop kind, or another method's
#: well profiles (``params.source``)
INPUTS: tuple[str, ...] = ("none", "site", *CROP_KINDS, "profiles")
#: Levels of a method's rows (what its embeddings file holds).
LEVELS: tuple[str, ...] = ("cell", "tile", "site", "well")
#: Bring-your-own kinds of the config's ``methods:`` entries.
USER_KINDS: tuple[str, ...] = ("embeddings", "timm")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+.-]*$")
#: the ``methods:`` item that stands for every registered method
ALL = "all"
DEFAULT_PARTS = "results/{dataset}/embeddings/{method}/plates/{plate}.parquet"


@dataclass(frozen=True)
class Method:
    """One registered (or user-configured) method; see the module docstring for the fields."""

    name: str
    family: str
    input: str
    level: str
    trains: bool = False
    model: str | None = None
    embed: str | None = None
    parts: str | None = None
    split: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    nonfinite: str = "error"
    description: str = ""
    paper: str = ""
    #: config-level extras of a user method (kind, path, arch, weights)
    user: Mapping[str, Any] = field(default_factory=dict)
    #: parameters naming a local file (name → what the file is; e.g. ImageNet weights): without
    #: it the method stops with an error naming the parameter, and ``methods: [all]`` leaves it
    #: out (a logged warning); the file must exist before the run
    needs: Mapping[str, str] = field(default_factory=dict)

    @property
    def crop_kind(self) -> str | None:
        return self.input if self.input in CROP_KINDS else None

    @property
    def kind(self) -> str:
        return str(self.user.get("kind", "registered"))

    def params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults with ``overrides`` applied. A trained method also takes every training
        parameter (:class:`morphobench.training.config.TrainConfig`); other unknown keys raise,
        naming the method."""
        out = dict(self.defaults)
        allowed = set(out) | (_train_keys() | _embed_keys() if self.trains else set())
        for k, v in (overrides or {}).items():
            if k not in allowed:
                raise MorphobenchError(f"methods: {self.name}: unknown parameter {k!r}; "
                                       f"known: {sorted(allowed)}")
            out[k] = v
        return out

    def missing_files(self, params: Mapping[str, Any] | None = None, base: str | os.PathLike = ".") -> dict[str, str]:
        """``{parameter: file}`` of the ``needs`` files (``params`` applied) not set (``""``) or
        missing under ``base``."""
        p = self.params(params)
        return {k: "" if p.get(k) in (None, "") else str(p[k]) for k in self.needs
                if p.get(k) in (None, "") or not (Path(base) / str(p[k])).is_file()}

    def parts_path(self, dataset: str, plate: str) -> str:
        return (self.parts or DEFAULT_PARTS).format(dataset=dataset, method=self.name, plate=plate)

    def to_spec(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """JSON-able description passed to the stage CLIs (user methods need no registry there)."""
        return {"name": self.name, "family": self.family, "input": self.input, "level": self.level,
                "trains": self.trains, "model": self.model, "embed": self.embed, "split": self.split,
                "nonfinite": self.nonfinite, "params": self.params(params), "user": dict(self.user)}


REGISTRY: dict[str, Method] = {}
#: the per-plate embed function of trained methods that name none
TRAINED_EMBED = "morphobench.embed.learned:embed_trained"


def _train_keys() -> set[str]:
    from morphobench.training.config import TRAIN_KEYS

    return set(TRAIN_KEYS)


def _embed_keys() -> set[str]:
    from morphobench.training.config import EMBED_KEYS

    return set(EMBED_KEYS)


def register(method: Method) -> Method:
    """Add ``method`` to :data:`REGISTRY` (checked; a name can be registered once)."""
    if method.trains and method.embed is None:
        method = replace(method, embed=TRAINED_EMBED)
    _check(method)
    if method.name in REGISTRY:
        raise MorphobenchError(f"method {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def _check(m: Method) -> None:
    if not NAME_RE.match(m.name):
        raise MorphobenchError(f"method name {m.name!r}: use letters, digits and _ + . -")
    if m.input not in INPUTS:
        raise MorphobenchError(f"method {m.name}: input {m.input!r} not in {INPUTS}")
    if m.level not in LEVELS:
        raise MorphobenchError(f"method {m.name}: level {m.level!r} not in {LEVELS}")
    if m.trains and not (m.model and m.split and m.crop_kind):
        raise MorphobenchError(f"method {m.name}: a trained method needs a model, a split and a crop input")
    if m.embed is None and m.parts is None and m.kind != "embeddings":
        raise MorphobenchError(f"method {m.name}: needs an embed function or a parts template")
    if m.nonfinite not in ("error", "drop_features"):
        raise MorphobenchError(f"method {m.name}: nonfinite must be error|drop_features")
    missing = [k for k in m.needs if k not in m.defaults]
    if missing:
        raise MorphobenchError(f"method {m.name}: needed file parameter(s) {missing} missing from its defaults")


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise MorphobenchError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}") from None


def names(family: str | None = None) -> list[str]:
    return [n for n, m in REGISTRY.items() if family is None or m.family == family]


# ------------------------------------------------------------------------------------------------
# Built-in methods. Model families register theirs below their family header.
# ------------------------------------------------------------------------------------------------
register(Method(
    "random", "baseline", input="none", level="well", embed="morphobench.embed.baselines:embed_random",
    defaults={"dim": 1024, "seed": 0},
    description="one fixed-seed N(0,1) vector per well (depends only on seed, plate, well)",
    paper="MAE-CVPR Table 3"))
for _dim in (128, 384, 512, 768):
    register(Method(
        f"random_{_dim}", "baseline", input="none", level="well", embed="morphobench.embed.baselines:embed_random",
        defaults={"dim": _dim, "seed": 0},
        description=f"one fixed-seed N(0,1) {_dim}-D vector per well (random baselines of several sizes)",
        paper="MAE-W A.3"))
register(Method(
    "shuffled", "baseline", input="profiles", level="well", embed="morphobench.embed.baselines:embed_shuffled",
    defaults={"source": "cellprofiler", "seed": 0},
    description="another method's well profiles (params.source), each well given another well's profile "
                "(a seeded derangement)",
    paper="MAE-W A.3"))
register(Method(
    "pixel_stats", "baseline", input="site", level="site", embed="morphobench.embed.baselines:embed_pixel_stats",
    description="30 intensity statistics per site over every channel: per channel the first 30 // C of mean, sd, "
                "median, p5, p95, fraction above Otsu (6 × 5 channels, 5 × 6)",
    paper="MAE-CVPR Table 3"))
register(Method(
    "cellprofiler", "cellprofiler", input="site", level="well",
    parts="results/{dataset}/cellprofiler/{plate}.wells.parquet", nonfinite="drop_features",
    description="CellProfiler features (cp-measure or CellProfiler), well medians of the objects",
    paper="JUMP / MAE-CVPR §5.5"))


# ---- TEAMs family (TEAMs paper; models/teams.py) -----------------------------------------------
# CPU-sized defaults (README "Methods"); the paper's settings are in config/paper/teams_bbbc.yaml:
# Adam 1e-3, exponential decay γ 0.9, 40 epochs, batch 768, memory 2,816, 128² crops. The paper
# gives no optimizer for the baselines: they use the TEAMs settings.
_TEAMS_TRAIN = {"optimizer": "adam", "lr": 1e-3, "schedule": "exponential", "gamma": 0.9, "epochs": 5,
                "batch_size": 64, "steps_per_epoch": 24, "downsample": 4, "normalize": "unit",
                "group_col": "Metadata_Batch", "moa_col": "Metadata_MoA", "moa_sep": "|", "val_seed": 0}
_TEAMS_PAPER = "TEAMs (Wang et al. 2021)"


def _teams(name: str, model: str, description: str, table: str, **defaults: Any) -> None:
    register(Method(name, "teams", input="cell128", level="cell", trains=True, model=model,
                    split="treatment_folds", defaults={**_TEAMS_TRAIN, **defaults}, description=description,
                    paper=f"{_TEAMS_PAPER} {table}"))


_teams("teams", "teams", "ResNet-18 → one linear expert per variation group (512-D each, concatenated at "
       "inference), treatment exemplars (ProxyNCA), cross-batch memory", "Table 2c",
       backbone="resnet18", embed_dim=512, experts=True, memory_size=256, temperature=1.0)
_teams("teams_effnet", "teams", "TEAMs with an EfficientNet-B0 backbone", "Table 5",
       backbone="efficientnet_b0", embed_dim=512, experts=True, memory_size=256, temperature=1.0)
_teams("teams_exemplars", "teams", "ablation: treatment exemplars only (one shared projection, no memory)",
       "Table 2c", backbone="resnet18", embed_dim=512, experts=False, memory_size=0, temperature=1.0)
_teams("teams_exemplars_moe", "teams", "ablation: treatment exemplars + variation experts (no memory)",
       "Table 2c", backbone="resnet18", embed_dim=512, experts=True, memory_size=0, temperature=1.0)
_teams("online_negatives", "online_negatives", "ResNet-18 → 512-D; margin loss (m 0.3) over all positive × "
       "negative pairs of batches of same-treatment pairs", "Table 2b",
       backbone="resnet18", embed_dim=512, experts=False, margin=0.3, adversarial=0.0, rsc_features=0.0,
       rsc_rows=0.0, sampler="pairs")
_teams("online_negatives_adversarial", "online_negatives", "online negatives + a linear variation-group "
       "classifier on the backbone features through gradient reversal × 1e-2", "Table 2b",
       backbone="resnet18", embed_dim=512, experts=False, margin=0.3, adversarial=0.01, rsc_features=0.0,
       rsc_rows=0.0, sampler="pairs")
_teams("online_negatives_rsc", "online_negatives", "online negatives + self-challenging (mute the 50 % most "
       "important features on 1/3 of each batch)", "Table 2b",
       backbone="resnet18", embed_dim=512, experts=False, margin=0.3, adversarial=0.0, rsc_features=0.5,
       rsc_rows=1 / 3, sampler="pairs")
_teams("online_negatives_moe", "online_negatives", "online negatives with one expert per variation group",
       "Table 2b", backbone="resnet18", embed_dim=512, experts=True, margin=0.3, adversarial=0.0,
       rsc_features=0.0, rsc_rows=0.0, sampler="pairs")
_teams("treatment_classification", "treatment_classification", "weakly supervised: EfficientNet-B0 + one "
       "treatment classifier per variation group; 1,280-D pooled features", "Table 2a",
       backbone="efficientnet_b0", per_group_heads=True)
register(Method(
    "transfer_effnet", "teams", input="cell128", level="cell", embed="morphobench.models.teams:embed_transfer",
    defaults={"weights": None, "arch": "efficientnet_b0", "batch_size": 32, "crop_size": None, "channels": []},
    needs={"weights": "a local file with the ImageNet weights of timm's efficientnet_b0 (a state_dict)"},
    description="ImageNet EfficientNet-B0 on each channel replicated to RGB, pooled features concatenated "
                "(1,280 × C); weights from a local file, never random", paper=f"{_TEAMS_PAPER} Table 2a"))

# ---- MAE family: MAE-ViT, CA-MAE, MU-Net, WSL, ImageNet ViTs (MAE-W / MAE-CVPR; models/mae.py …) --
# Registry defaults are CPU-sized (the default screen on 2 cores): the papers' recipes (optimizer,
# learning rate, betas, weight decay, schedule, mask ratio, Fourier weight, drop-path, LayerScale,
# QK-norm, parallel blocks, patch size, width) with shallower encoders, light decoders and short
# schedules; config/paper/mae_rxrx3.yaml and mae_jump.yaml restore the papers' sizes (README
# "Methods" lists both). Inputs: whole 256² tiles (random flips in training; the default screen's
# sites are one tile each, so a "random 256² crop" is the whole tile).
_MAE_TRAIN = {"optimizer": "lion", "betas": [0.9, 0.95], "weight_decay": 0.05, "schedule": "cosine",
              "batch_size": 16, "flips": True, "rot90": False, "normalize": "self", "val_batches": 4}
_MAE_CPU = {"s": {"depth": 2}, "b": {"depth": 2}, "l": {"depth": 2}}
#: width and heads follow ``size`` (S 384/6, B 768/12, L 1024/16) unless given
_VIT_ARCH = {"embed_dim": None, "num_heads": None}
_MAE_SHORT = {"epochs": 3, "steps_per_epoch": 6}  # L and patch-8 variants on the CPU (README)
for _size, _label in (("s", "ViT-S"), ("b", "ViT-B"), ("l", "ViT-L")):
    for _patch in (16, 8):
        for _plus in (False, True):
            _short = _size == "l" or _patch == 8
            register(Method(
                f"mae_vit_{_size}{_patch}{'+' if _plus else ''}", "mae", input="tile256", level="tile",
                trains=True, model="mae_vit", split="holdout_batches",
                defaults={**_MAE_TRAIN, "size": _size, "patch_size": _patch, **_MAE_CPU[_size], **_VIT_ARCH,
                          "decoder_dim": 128, "decoder_depth": 1, "decoder_heads": 4, "mask_ratio": 0.75,
                          "fourier_weight": 0.01 if _plus else 0.0, "drop_path": 0.3 if _size == "l" else 0.1,
                          "lr": 3e-5 if _size == "l" else 1e-4, "epochs": 6, "steps_per_epoch": 8,
                          **(_MAE_SHORT if _short else {})},
                description=f"MAE {_label}/{_patch}{' + Fourier loss (α 0.01)' if _plus else ''}: mean of the "
                            "final layer's patch tokens",
                paper="MAE-W §3, MAE-CVPR §4.2" + (" / Eq. 3" if _plus else "")))
for _size, _label, _plus in (("s", "ViT-S", False), ("s", "ViT-S", True), ("b", "ViT-B", False),
                              ("b", "ViT-B", True), ("l", "ViT-L", True)):
    register(Method(
            f"ca_mae_{_size}16{'+' if _plus else ''}", "mae", input="tile256", level="tile", trains=True,
            model="ca_mae", split="holdout_batches",
            defaults={**_MAE_TRAIN, "size": _size, "patch_size": 16, **_MAE_CPU[_size], **_VIT_ARCH, "decoder_dim": 64,
                      "decoder_depth": 1, "decoder_heads": 4, "mask_ratio": 0.85 if _size == "l" else 0.75,
                      "mask_mode": "per_channel", "embed_mode": "mean", "fourier_weight": 0.01 if _plus else 0.0,
                      "drop_path": 0.3 if _size == "l" else 0.1, "lr": 3e-5 if _size == "l" else 1e-4,
                      "epochs": 6, "steps_per_epoch": 8, **(_MAE_SHORT if _size == "l" else {})},
            description=f"channel-agnostic MAE {_label}/16{' + Fourier loss' if _plus else ''}: shared patch "
                        "projection, per-channel masks and decoders; any channels at inference",
            paper="MAE-CVPR §4.2.2"))
for _name, _widths, _label in (("mu_net_m", [32, 64, 128, 256, 512], "M"),
                               ("mu_net_l", [32, 64, 128, 256, 512, 1024], "L")):
    register(Method(
        _name, "mae", input="tile256", level="tile", trains=True, model="mu_net", split="holdout_batches",
        defaults={"optimizer": "adamw", "betas": [0.9, 0.95], "weight_decay": 0.05, "lr": 1e-3,
                  "schedule": "cosine", "batch_size": 16, "flips": True, "rot90": False, "normalize": "self",
                  "val_batches": 4, "widths": [w // 8 for w in _widths], "blocks": 1, "kernel_size": 5,
                  "mask_ratio": 0.25, "mask_patch": 16, "epochs": 6, "steps_per_epoch": 8,
                  **({} if _label == "M" else _MAE_SHORT)},
        description=f"masked U-Net MU-Net-{_label} (mask 25 %, kernel 5): pooled bottleneck (ours)",
        paper="MAE-W §3, MAE-CVPR §4.2"))
for _name, _dim, _adabn in (("wsl_densenet161", 128, False), ("wsl_densenet161_adabn", 128, True),
                            ("wsl_densenet161_adabn_1024", 1024, True)):
    register(Method(
        _name, "mae", input="tile256", level="tile", trains=True, model="wsl_densenet", split="replicate_holdout",
        defaults={"optimizer": "momentum", "momentum": 0.9, "lr": 0.05, "weight_decay": 1e-4, "schedule": "cosine",
                  "batch_size": 16, "flips": True, "rot90": False, "normalize": "self", "val_batches": 4,
                  "embed_dim": _dim, "growth_rate": 12, "block_config": [2, 4, 6, 4], "neck_hidden": None, "adabn": _adabn,
                  "ghost_batch": 16, "adabn_inference": "plate", "sampler": "plate" if _adabn else "random",
                  "epochs": 6, "steps_per_epoch": 8},
        description=f"weakly supervised DenseNet-161 perturbation classifier, {_dim}-D MLP-neck embedding"
                    + (", AdaBN (one plate per batch, per-plate statistics at inference)" if _adabn else ""),
        paper="MAE-W A.1.1, MAE-CVPR §4.1"))
for _size, _label in (("b", "ViT-B"), ("l", "ViT-L")):
    register(Method(
        f"wsl_vit_{_size}16", "mae", input="tile256", level="tile", trains=True, model="wsl_vit",
        split="replicate_holdout",
        defaults={"optimizer": "adamw", "betas": [0.9, 0.999], "lr": 3e-4, "weight_decay": 0.05, "schedule": "cosine",
                  "batch_size": 16, "flips": True, "rot90": False, "normalize": "self", "val_batches": 4,
                  "size": _size, "patch_size": 16, "depth": 2, **_VIT_ARCH, "drop_path": 0.1, "epochs": 6,
                  "steps_per_epoch": 8,
                  **(_MAE_SHORT if _size == "l" else {})},
        description=f"weakly supervised {_label}/16 perturbation classifier: class-token embedding",
        paper="MAE-CVPR §4.1"))
for _key, _arch, _label in (("s16", "vit_small_patch16_224.augreg_in21k", "ViT-S/16"),
                            ("b16", "vit_base_patch16_224.augreg_in21k", "ViT-B/16"),
                            ("b8", "vit_base_patch8_224.augreg_in21k", "ViT-B/8"),
                            ("l16", "vit_large_patch16_224.augreg_in21k", "ViT-L/16")):
    register(Method(
        f"imagenet_vit_{_key}", "mae", input="tile256", level="tile",
        embed="morphobench.embed.pretrained:embed_imagenet_vit",
        needs={"weights": f"a local file with the ImageNet-21k weights of timm's {_arch} (python -m "
                          "morphobench.embed export-timm-weights on a machine with internet access)"},
        defaults={"arch": _arch, "weights": f"resources/weights/{_arch}.pth", "channel_mode": "per_channel",
                  "normalize": "self", "batch_size": 32, "device": "auto"},
        description=f"ImageNet-21k {_label} (timm {_arch}; weights from a local file); each channel as "
                    "grey RGB, class tokens concatenated",
        paper="MAE-CVPR Table 3"))

# ---- Campfire family (Campfire paper; models/campfire.py) ----------------------------------------
#: Campfire training as the paper (§3.1: AdamW lr 5e-4, wd 0.005, linear warm-up from 1e-5, cosine to
#: 1e-6, flips + rotations + channel normalisation; Nu, Ac, M trained, ER and RNA held out), sized
#: for a CPU: few epochs and steps. config/paper/campfire_jump_source3.yaml has the paper's scale.
#: "Channel normalisation": the crop store is scaled per plate and channel (percentiles), inputs are
#: that scale mapped to [0, 1] (``normalize: unit``); per-image self-standardization (MAE-CVPR) would
#: erase intensity phenotypes. AdamW betas (0.9, 0.95) as MAE (the paper names none).
_CAMPFIRE_TRAIN = {"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.005, "betas": [0.9, 0.95],
                   "schedule": "cosine", "warmup_lr": 1e-5, "min_lr": 1e-6, "flips": True, "rot90": True,
                   "normalize": "unit", "channels": ["DNA", "AGP", "Mito"]}
#: model parameters every Campfire size takes (models/campfire.py; the loss weights and filter
#: fractions are README "Campfire"'s documented defaults — every one can be set in `params`)
_CAMPFIRE_MODEL = {"img_size": 112, "patch_size": 14, "mask_ratio": 0.8, "mlp_ratio": 4.0, "drop_path_rate": 0.0,
                   "rope_theta": 100.0, "channel_subsampling": True, "lambda_spatial": 0.75, "lambda_low": 0.25,
                   "lambda_high": 0.0, "lambda_fourier": 0.0, "low_pass_fraction": 0.25, "high_pass_fraction": 0.1}
register(Method(
    "campfire_s14", "campfire", input="cell112", level="cell", trains=True, model="campfire_s14", split="campfire",
    defaults={"embed_dim": 96, "depth": 2, "num_heads": 3, "decoder_dim": 64, "decoder_depth": 1,
              "decoder_heads": 2, **_CAMPFIRE_MODEL, **_CAMPFIRE_TRAIN, "epochs": 4, "warmup_epochs": 1,
              "batch_size": 64, "steps_per_epoch": 15, "val_batches": 4},
    description="Campfire channel-agnostic MAE, patch 14, one shared decoder; CPU-sized defaults (96-d × 2 "
                "blocks, decoder 64-d × 1, 4 epochs × 15 steps of 64); ViT-S/14 (384-d × 12 blocks, 6 heads) "
                "with params",
    paper="Campfire §2.2, §3.1"))
register(Method(
    "campfire_b14", "campfire", input="cell112", level="cell", trains=True, model="campfire_b14", split="campfire",
    defaults={"embed_dim": 768, "depth": 12, "num_heads": 12, "decoder_dim": 512, "decoder_depth": 8,
              "decoder_heads": 16, **_CAMPFIRE_MODEL, **_CAMPFIRE_TRAIN, "epochs": 1, "warmup_epochs": 0.5,
              "batch_size": 32, "steps_per_epoch": 5, "val_batches": 2},
    description="Campfire with a ViT-B/14 encoder (768-d × 12 blocks); CPU defaults train 5 steps only",
    paper="Campfire §2.2, App. B"))
register(Method(
    "campfire_l14", "campfire", input="cell112", level="cell", trains=True, model="campfire_l14", split="campfire",
    defaults={"embed_dim": 1024, "depth": 24, "num_heads": 16, "decoder_dim": 512, "decoder_depth": 8,
              "decoder_heads": 16, **_CAMPFIRE_MODEL, **_CAMPFIRE_TRAIN, "epochs": 1, "warmup_epochs": 0.5,
              "batch_size": 16, "steps_per_epoch": 3, "val_batches": 1},
    description="Campfire with the paper's ViT-L/14 encoder (1024-d × 24 blocks); CPU defaults train 3 steps "
                "only (paper scale: config/paper/campfire_jump_source3.yaml)",
    paper="Campfire §3.1, Table 2.4"))


# ------------------------------------------------------------------------------------------------
# Config → resolved methods
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Configured:
    """A method as configured for a run: the method + its parameter overrides."""

    method: Method
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.method.name

    def spec(self, train: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The method's spec; for trained methods the config's ``train:`` settings (device,
        precision, compile) apply unless the method's own ``params`` set them."""
        over = dict(self.overrides)
        if self.method.trains:
            for k, v in (train or {}).items():
                over.setdefault(k, v)
        return self.method.to_spec(over)


def user_method(entry: Mapping[str, Any], where: str = "methods") -> Method:
    """A bring-your-own method from its config entry (checked; errors name the key)."""
    name = entry.get("name")
    kind = entry.get("kind")
    if not isinstance(name, str) or not NAME_RE.match(name) or name == ALL:
        raise MorphobenchError(f"{where}: name {name!r} must be letters, digits and _ + . - (and not 'all')")
    if name in REGISTRY:
        raise MorphobenchError(f"{where}: {name!r} is a registered method; give your method another name")
    allowed = {"embeddings": {"name", "kind", "path", "description"},
               "timm": {"name", "kind", "arch", "weights", "input", "params", "description"}}
    if kind not in allowed:
        raise MorphobenchError(f"{where} ({name}): kind must be one of {list(USER_KINDS)}, got {kind!r}")
    extra = sorted(set(entry) - allowed[kind])
    if extra:
        raise MorphobenchError(f"{where} ({name}): unknown key(s) {extra} for kind {kind!r}; "
                               f"allowed: {sorted(allowed[kind])}")
    if kind == "embeddings":
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            raise MorphobenchError(f"{where} ({name}): kind 'embeddings' needs path: <parquet file>")
        return Method(name, "user", input="none", level="well", description=entry.get("description", ""),
                      user={"kind": kind, "path": path})
    arch, weights, inp = entry.get("arch"), entry.get("weights"), entry.get("input", "cell128")
    if not isinstance(arch, str) or not arch:
        raise MorphobenchError(f"{where} ({name}): kind 'timm' needs arch: <timm architecture>")
    if not isinstance(weights, str) or not weights:
        raise MorphobenchError(f"{where} ({name}): kind 'timm' needs weights: <local file> or 'random'")
    if inp not in CROP_KINDS:
        raise MorphobenchError(f"{where} ({name}): input must be a crop kind {list(CROP_KINDS)}, got {inp!r}")
    level = "tile" if inp.startswith("tile") else "cell"
    defaults = {"batch_size": 64, "normalize": "self", "device": "auto"}
    return Method(name, "user", input=inp, level=level, embed="morphobench.embed.timm_embed:embed_plate",
                  defaults=defaults, description=entry.get("description", f"timm {arch}"),
                  user={"kind": kind, "arch": arch, "weights": weights})


def resolve(entries: Iterable[Any], where: str = "methods") -> list[Configured]:
    """The config's ``methods:`` list → configured methods (names unique, registered or BYO).
    The item ``all`` stands for every registered method (``config/all_methods.yaml``)."""
    out: list[Configured] = []
    seen: set[str] = set()
    expanded: list[tuple[str, Any]] = []
    for i, e in enumerate(entries):
        if e == ALL:
            listed = {x if isinstance(x, str) else x.get("name") for x in entries if x != ALL}
            for n in REGISTRY:
                if n in listed:
                    continue
                missing = REGISTRY[n].missing_files()
                if missing:
                    _log.warning("%s: 'all' leaves out %s: %s (place the file there, or list the method "
                                 "as {name: %s, params: {...}} naming it)", where, n,
                                 "; ".join(f"params.{k} ({REGISTRY[n].needs[k]}) "
                                           + (f"file not found: {v}" if v else "not set")
                                           for k, v in missing.items()), n)
                    continue
                expanded.append((f"{where}[{i}] (all: {n})", n))
        else:
            expanded.append((f"{where}[{i}]", e))
    for key, e in expanded:
        if isinstance(e, str):
            c = Configured(get_for(e, key))
        elif isinstance(e, Mapping):
            if "kind" in e:
                c = Configured(user_method(e, key))
            else:
                extra = sorted(set(e) - {"name", "params"})
                if extra:
                    raise MorphobenchError(f"{key}: unknown key(s) {extra}; a registered method takes "
                                           "{name, params}; your own takes kind: embeddings|timm")
                m = get_for(e.get("name"), key)
                params = e.get("params") or {}
                m.params(params)  # unknown parameters raise now, naming the method
                c = Configured(m, dict(params))
        else:
            raise MorphobenchError(f"{key}: a method is a name or a mapping, got {e!r}")
        for p, what in c.method.needs.items():
            if c.method.params(c.overrides).get(p) in (None, ""):
                raise MorphobenchError(f"{key}: method {c.name!r} needs params.{p}: {what} "
                                       f"(e.g. {{name: {c.name}, params: {{{p}: ...}}}})")
        if c.name in seen:
            raise MorphobenchError(f"{key}: method {c.name!r} listed twice")
        seen.add(c.name)
        out.append(c)
    if not out:
        raise MorphobenchError(f"{where}: no methods configured")
    names = {c.name for c in out} | set(REGISTRY)
    for c in out:
        if c.method.input == "profiles":
            src = c.method.params(c.overrides).get("source")
            if src == c.name or src not in names:
                raise MorphobenchError(f"{where}: method {c.name!r}: params.source must name another method "
                                       f"(registered or configured), got {src!r}")
    return out


def get_for(name: Any, key: str) -> Method:
    if not isinstance(name, str) or name not in REGISTRY:
        raise MorphobenchError(f"{key}: unknown method {name!r}; registered: {sorted(REGISTRY)} "
                               "(or bring your own: {name, kind: embeddings|timm, …})")
    return REGISTRY[name]


def needed_files(c: Configured) -> dict[str, str]:
    """The local files a configured method's ``needs`` name (parameter → path)."""
    params = c.method.params(c.overrides)
    return {p: str(params[p]) for p in c.method.needs if params.get(p) not in (None, "")}


def check_files(configured: Iterable[Configured], datasets: Iterable[str], base: str | os.PathLike = ".") -> None:
    """Bring-your-own files and the files a method ``needs`` must exist before the run starts
    (errors name the method and file)."""
    for c in configured:
        m = c.method
        for k, f in m.missing_files(c.overrides, base).items():
            raise MorphobenchError(f"method {m.name}: {k} file not found: {Path(base) / f} ({m.needs[k]}; set "
                                   f"params: {{{k}: …}}; README 'Methods' says where such files come from)")
        if m.kind == "embeddings":
            for ds in datasets:
                p = Path(base) / m.user["path"].format(dataset=ds)
                if not p.is_file():
                    raise MorphobenchError(f"method {m.name}: embeddings file not found: {p}")
        if m.kind == "timm" and m.user["weights"] != "random":
            p = Path(base) / m.user["weights"]
            if not p.is_file():
                raise MorphobenchError(f"method {m.name}: weights file not found: {p} "
                                       "(or weights: random for a randomly initialised network)")


def evaluation_lists(config: Mapping[str, Any], configured: Mapping[str, Configured]) -> dict[str, Any]:
    """Method lists of the evaluations, checked against the configured methods:
    ``cp_regression`` (``evaluate.cp_regression.methods``; ``all`` = every configured method but
    the CellProfiler features themselves) and ``batch_correction`` (one configured or registered
    method)."""
    ev = config.get("evaluate", {})
    cpr = ev.get("cp_regression", {}).get("methods", "all")
    if cpr == "all":
        cpr = [n for n, c in configured.items() if c.method.family != "cellprofiler"]
    for i, n in enumerate(cpr):
        if n not in configured:
            raise MorphobenchError(f"evaluate.cp_regression.methods[{i}]: {n!r} is not one of the configured "
                                   f"methods {list(configured)}")
    bc = ev.get("batch_correction", {}).get("method")
    if bc is not None and bc not in configured and bc not in REGISTRY:
        raise MorphobenchError(f"evaluate.batch_correction.method: {bc!r} is neither a configured method "
                               f"{list(configured)} nor a registered one")
    return {"all": list(configured), "cp_regression": list(cpr), "batch_correction": bc}


def provenance(configured: Iterable[Configured]) -> dict[str, dict[str, Any]]:
    """What each configured method is, for the results tables' provenance sidecars."""
    out = {}
    for c in configured:
        m = c.method
        d: dict[str, Any] = {"family": m.family, "kind": m.kind, "input": m.input, "level": m.level,
                             "trains": m.trains}
        if c.overrides:
            d["params"] = dict(c.overrides)
        if m.kind == "embeddings":
            d["path"] = m.user["path"]
        if m.kind == "timm":
            d["arch"] = m.user["arch"]
            d["weights"] = ("random (randomly initialised network, no trained weights)"
                            if m.user["weights"] == "random" else m.user["weights"])
        out[c.name] = d
    return out


def config_schema(schema_file: str | os.PathLike) -> str:
    """The config schema with the registry's method names filled into ``$defs.method_name``
    (written once per content to the temp directory; returns its path for
    ``snakemake.utils.validate``)."""
    import hashlib
    import json
    import tempfile

    import yaml

    schema = yaml.safe_load(Path(schema_file).read_text())
    schema.setdefault("$defs", {}).setdefault("method_name", {"type": "string"})["enum"] = sorted(REGISTRY) + [ALL]
    text = json.dumps(schema, sort_keys=True, indent=1)
    out = Path(tempfile.gettempdir()) / f"morphobench-config-schema-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
    return str(out)


def wildcard_regex(configured: Iterable[Configured]) -> str:
    """Regex for the ``{method}`` wildcard: exactly the configured + registered names."""
    all_names = sorted(set(REGISTRY) | {c.name for c in configured}, key=lambda s: (-len(s), s))
    return "|".join(re.escape(n) for n in all_names)


def _load_plugins() -> None:
    for mod in filter(None, (s.strip() for s in os.environ.get("MORPHOBENCH_PLUGINS", "").split(","))):
        try:
            importlib.import_module(mod)
        except ImportError as err:
            raise MorphobenchError(f"MORPHOBENCH_PLUGINS: cannot import {mod!r}: {err}") from err


_load_plugins()
