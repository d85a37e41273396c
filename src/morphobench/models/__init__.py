"""Models (TEAMs, MAE-ViT, CA-MAE, MU-Net, WSL DenseNet, Campfire), timm's way.

Importing this package makes torchvision/timm usable on CPU-only torch (see morphobench._compat).

``create_model(name, **params)`` builds any registered model; each family's file
(``teams.py``, ``mae.py``, ``munet.py``, ``densenet.py``, ``campfire.py``) registers its
constructors with :func:`register_model`; shared pieces live in :mod:`morphobench.models.layers`.
A model name may also be ``"package.module:callable"`` (plugins, tests).

The interface the training loop and the embed stage use (:class:`EmbeddingModel`):

``forward(batch) -> dict``  one training step's outputs: ``batch`` holds ``image`` (B, C, H, W float,
    already augmented and normalized), ``label`` (treatment index, −1 for none), ``group``
    (variation-group index), ``plate`` (plate index) and ``index`` (row); returns at least
    ``loss`` (a scalar tensor); other scalar entries go to the training log. (``forward`` is what
    ``torch.compile`` compiles on CUDA.)
``validation_step(batch) -> dict``  defaults to ``forward`` without gradients;
    ``validation_epoch_end(outputs) -> dict`` may turn the per-batch outputs into epoch values.
``embed(image) -> Tensor``  (B, D) embeddings for inference.
``val_metric`` / ``val_mode``  which validation value picks the best epoch (default ``loss``, ``min``).
``on_epoch_start(epoch)``, ``setup_data(rows, vocab)``  optional hooks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from morphobench._compat import ensure_torchvision
from morphobench.io import MorphobenchError

ensure_torchvision()

import torch  # noqa: E402
from torch import nn  # noqa: E402


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_loaded = False


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Decorator: register a model constructor under ``name`` (default: the function's name)."""

    def deco(f):
        key = name or f.__name__
        if key in _MODELS and _MODELS[key] is not f:
            raise MorphobenchError(f"model {key!r} is already registered")
        _MODELS[key] = f
        return f

    return deco(fn) if fn is not None else deco


def family_modules() -> list[str]:
    """The family files of this package (every module but ``layers``), imported on the first
    :func:`create_model` call so that each registers its models."""
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "layers" and not m.name.startswith("_"))


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for mod in family_modules():
            importlib.import_module(f"morphobench.models.{mod}")
        _loaded = True


def list_models() -> list[str]:
    _load_families()
    return sorted(_MODELS)


def model_constructor(name: str) -> Callable[..., nn.Module]:
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as err:
            raise MorphobenchError(f"model {name!r}: cannot import {attr} from {mod}: {err}") from err
    _load_families()
    if name not in _MODELS:
        raise MorphobenchError(f"unknown model {name!r}; registered: {sorted(_MODELS)}")
    return _MODELS[name]


def create_model(name: str, **params) -> nn.Module:
    """Build model ``name`` with ``params`` (e.g. ``in_chans``, ``num_classes``, widths)."""
    return model_constructor(name)(**params)


class EmbeddingModel(nn.Module):
    """Base class of the trainable models (see the module docstring)."""

    val_metric: str = "loss"
    val_mode: str = "min"

    def forward(self, batch: dict) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def validation_step(self, batch: dict) -> dict:
        with torch.no_grad():
            return self(batch)

    def embed(self, image: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
