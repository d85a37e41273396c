"""Training and inference throughput of every registered trainable model at its input size.

    python benchmarks/train_throughput.py                       # every trainable method, CPU
    python benchmarks/train_throughput.py --device cuda         # + bf16 (eager and torch.compile), MFU
    python benchmarks/train_throughput.py --methods teams mae_vit_s16+ --batch 32 --steps 10
    python benchmarks/train_throughput.py --device cuda --config config/paper/mae_rxrx3.yaml \
        --methods mae_vit_b16 mae_vit_b8          # the methods as that config sets them (paper sizes)

For each method: images/s and peak memory of a training step (forward + backward + optimizer
step, the method's own loss and optimizer settings) and of inference (``model.embed``), on the
CPU with the given threads, and on CUDA in fp32, bf16 autocast, and bf16 + ``torch.compile``.
FLOPs per image come from ``torch.utils.flop_counter`` (forward + backward for training); on CUDA
the model FLOPs utilization is achieved FLOP/s / the device's peak bf16 dense FLOP/s (``--peak-tflops``,
default: H100/H200 989). When the model names a plain timm reference (``reference_timm``
attribute, e.g. the ViT an MAE encoder is built from), the same step of that reference is timed in
the same run and the ratio printed (ours / reference images/s). ``--config FILE`` takes each
method's ``params`` from that config's ``methods:`` list (e.g. the paper-scale ViT-B/16 and ViT-B/8
of ``config/paper/mae_rxrx3.yaml``) instead of the registry's CPU-sized defaults.

Each measurement runs in a fresh subprocess, so the peak resident memory (CPU) and peak CUDA
allocation are the step's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

INPUT_SIZE = {"cell128": 128, "cell112": 112, "tile256": 256}


def _batch(model_in: dict, b: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    c, s = model_in["channels"], model_in["size"]
    return {"image": torch.randn(b, c, s, s, generator=g).to(device),
            "label": torch.randint(0, max(model_in["num_classes"], 1), (b,), generator=g).to(device),
            "group": torch.randint(0, max(model_in["num_groups"], 1), (b,), generator=g).to(device),
            "plate": torch.zeros(b, dtype=torch.long, device=device),
            "index": torch.arange(b, device=device)}


def config_params(path: str | None) -> dict[str, dict]:
    """``{method: params}`` of a config file's ``methods:`` entries (registered methods only)."""
    if not path:
        return {}
    import yaml

    out = {}
    for e in yaml.safe_load(open(path)).get("methods", []):
        if isinstance(e, dict) and "kind" not in e:
            out[e["name"]] = dict(e.get("params") or {})
    return out


def measure(method: str, mode: str, device: str, precision: str, compile_: bool, batch: int, steps: int,
            threads: int, reference: bool, params: dict | None = None) -> dict:
    """One measurement (run inside a subprocess)."""
    import resource

    import torch

    import morphobench.models  # noqa: F401
    from morphobench import methods
    from morphobench.training.config import split_params
    from morphobench.training.loop import make_optimizer

    torch.set_num_threads(threads)
    m = methods.get(method)
    cfg, kw = split_params(m.params(params or {}))
    size = cfg.crop_size or INPUT_SIZE[m.crop_kind]
    channels = len(cfg.channels) or 5
    info = {"channels": channels, "size": size, "num_classes": 64, "num_groups": 4}
    dev = torch.device(device)
    torch.manual_seed(0)
    model = morphobench.models.create_model(m.model, in_chans=channels, num_classes=64, num_groups=4, **kw)
    fwd = model if mode == "train" else model.embed
    if reference:
        import timm

        ref = getattr(model, "reference_timm", None)
        if ref is None:
            return {"skipped": "no reference_timm"}
        model = timm.create_model(ref["arch"], **ref.get("kwargs", {}), in_chans=channels, num_classes=0)
        plain = model
        fwd = (lambda bt: {"loss": plain(bt["image"]).float().mean()}) if mode == "train" else plain
    model.to(dev)
    bt = _batch(info, batch, dev)
    if mode == "train":
        model.train()
        opt = make_optimizer(model, cfg)
    else:
        model.eval()
    run = torch.compile(fwd) if compile_ else fwd
    use_bf16 = precision == "bf16" and dev.type == "cuda"

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            if mode == "train":
                out = run(bt)
                out["loss"].backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    run(bt["image"])

    flops = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            if mode == "train":
                fwd(bt)["loss"].backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    fwd(bt["image"])
        flops = fc.get_total_flops() / batch
    except Exception as err:  # pragma: no cover - flop counting is best effort
        print(f"flop count failed: {err}", file=sys.stderr)
    for _ in range(2):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"images_per_s": batch * steps / secs, "peak_mb": peak, "gflops_per_image": (flops or 0) / 1e9}


def run_sub(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, "--_one", *args], capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", help="registered trainable methods (default: all)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device peak bf16 dense TFLOP/s (MFU)")
    ap.add_argument("--config", help="take each method's params from this config's methods: list")
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method")
    ap.add_argument("--mode")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--reference", action="store_true")
    a = ap.parse_args()
    if a._one:
        print(json.dumps(measure(a.method, a.mode, a.device, a.precision, a.compile, a.batch, a.steps,
                                 a.threads, a.reference, json.loads(a.params))))
        return 0
    from morphobench import methods

    from_config = config_params(a.config)
    names = a.methods or (list(from_config) if a.config else [n for n, m in methods.REGISTRY.items() if m.trains])
    if not names:
        print("no trainable methods registered")
        return 0
    variants = [("fp32", False)] if a.device == "cpu" else [("fp32", False), ("bf16", False), ("bf16", True)]
    print(f"device {a.device}, batch {a.batch}, {a.steps} timed steps, threads {a.threads}")
    print("method\tmode\tprecision\tcompile\timages/s\tpeak MB\tGFLOP/image\tMFU\tvs timm reference")
    for name in names:
        for mode in ("train", "infer"):
            for prec, comp in variants:
                common = ["--method", name, "--mode", mode, "--device", a.device, "--precision", prec,
                          "--batch", str(a.batch), "--steps", str(a.steps), "--threads", str(a.threads),
                          "--params", json.dumps(from_config.get(name, {}))]
                if comp:
                    common.append("--compile")
                r = run_sub(common)
                if "error" in r:
                    print(f"{name}\t{mode}\t{prec}\t{comp}\terror: {r['error']}")
                    continue
                mfu = ""
                if a.device == "cuda" and r["gflops_per_image"]:
                    mfu = f"{r['images_per_s'] * r['gflops_per_image'] / (a.peak_tflops * 1e3):.1%}"
                ref = run_sub([*common, "--reference"])
                ratio = (f"{r['images_per_s'] / ref['images_per_s']:.2f}x"
                         if "images_per_s" in ref and ref["images_per_s"] else ref.get("skipped", ref.get("error", "")))
                print(f"{name}\t{mode}\t{prec}\t{comp}\t{r['images_per_s']:.1f}\t{r['peak_mb']:.0f}\t"
                      f"{r['gflops_per_image']:.2f}\t{mfu}\t{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
