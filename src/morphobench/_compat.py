"""Make torchvision (and therefore timm) importable on CPU-only torch.

PyPI's ``torchvision==0.28.0`` is a CUDA build. With the CPU torch wheel its C extension
(``torchvision/_C.so``) cannot be loaded, so the ``torchvision::nms`` / ``torchvision::qnms``
operators are never defined, and ``import torchvision`` fails in ``_meta_registrations`` with
``RuntimeError: operator torchvision::nms does not exist``.

:func:`ensure_torchvision` must run before torchvision is first imported. It tries to load the
extension exactly as torchvision would; only when that fails does it define the two operators
with pure-torch implementations (greedy NMS), so ``import torchvision``, ``torchvision.transforms.v2``
and ``import timm`` work, and ``torch.ops.torchvision.nms`` gives correct results on CPU.
The other extension ops (roi_align, deform_conv2d, image decoding) stay unavailable; torchvision
raises its own clear error if they are called. ``torchvision.io`` is unusable here: morphobench
reads images with tifffile/imageio.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_STATE: dict[str, object] = {"done": False, "fallback": False, "library": None}


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    for cand in sorted(pkg.glob("_C*.so")) + sorted(pkg.glob("_C*.pyd")):
        return cand
    return None


def _nms_impl(dets, scores, iou_threshold: float):
    """Greedy non-maximum suppression (same contract as torchvision's C++ kernel)."""
    import torch

    if dets.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.argsort(scores, descending=True, stable=True)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool, device=dets.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=dets.device)


def _qnms_impl(dets, scores, iou_threshold: float):
    return _nms_impl(dets.dequantize(), scores.dequantize(), iou_threshold)


def ensure_torchvision() -> bool:
    """Prepare torch so that ``import torchvision`` works. Idempotent.

    Returns True when the pure-torch fallback operators were registered (extension unusable),
    False when torchvision's own extension loaded (or torchvision is not installed).
    """
    if _STATE["done"]:
        return bool(_STATE["fallback"])
    _STATE["done"] = True
    if "torchvision" in sys.modules:
        # Already imported (successfully, or the caller handles the failure): nothing to do.
        return False
    import torch

    ext = _extension_path()
    if ext is None:
        return False
    try:
        torch.ops.load_library(str(ext))
        return False
    except (ImportError, OSError) as err:
        log.debug("torchvision extension %s unusable (%s): registering pure-torch ops", ext, err)
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
        try:
            torch.ops.torchvision.nms  # noqa: B018 - already defined by someone else
            return False
        except (AttributeError, RuntimeError):
            pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms_impl, "CompositeExplicitAutograd")
    lib.impl("qnms", _qnms_impl, "CompositeExplicitAutograd")
    _STATE["library"] = lib  # keep the registration alive
    _STATE["fallback"] = True
    os.environ.setdefault("TORCHVISION_WARN_WHEN_EXTENSION_LOADING_FAILS", "")
    return True


def import_timm():
    """Import and return timm after :func:`ensure_torchvision`."""
    ensure_torchvision()
    import timm

    return timm
