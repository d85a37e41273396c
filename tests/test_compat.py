"""timm/torchvision must work on the CPU torch wheel although PyPI's torchvision is a CUDA build."""

import subprocess
import sys

import torch


def test_timm_vit_and_transforms_v2_work_on_cpu_torch():
    import morphobench.models  # noqa: F401  (registers fallbacks before torchvision is imported)
    import timm
    from torchvision.transforms import v2

    model = timm.create_model("vit_small_patch16_224", in_chans=5, img_size=128, pretrained=False,
                              num_classes=0)
    out = model(torch.randn(2, 5, 128, 128))
    assert out.shape == (2, 384)
    assert torch.isfinite(out).all()
    tf = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.CenterCrop(64)])
    x = torch.arange(5 * 128 * 128, dtype=torch.float32).reshape(5, 128, 128)
    y = tf(x)
    assert y.shape == (5, 64, 64)
    assert torch.equal(y, x.flip(-1)[:, 32:96, 32:96])


def test_fallback_nms_matches_greedy_definition():
    from morphobench._compat import _nms_impl, ensure_torchvision

    ensure_torchvision()
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    keep = torch.ops.torchvision.nms(boxes, scores, 0.5)
    # box 3 (score .95) suppresses 0 (IoU .9) and 1; box 2 is disjoint
    assert keep.tolist() == [3, 2]
    assert _nms_impl(boxes, scores, 0.99).tolist() == [3, 0, 1, 2]
    assert torch.ops.torchvision.nms(boxes[:0], scores[:0], 0.5).numel() == 0


def test_plain_import_in_fresh_interpreter_only_registers_when_needed():
    code = (
        "from morphobench._compat import ensure_torchvision, _extension_path\n"
        "import torch\n"
        "ext = _extension_path()\n"
        "try:\n"
        "    torch.ops.load_library(str(ext)); loadable = True\n"
        "except OSError:\n"
        "    loadable = False\n"
        "print(loadable, ensure_torchvision())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loadable, fallback = out.stdout.split()
    # the fallback is registered exactly when torchvision's own extension cannot load
    assert (loadable == "True") != (fallback == "True")
