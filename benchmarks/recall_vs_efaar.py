#!/usr/bin/env python
"""Benchmark: morphobench known-relationship recall vs EFAAR v1.0 ``known_relationship_benchmark``.

Same synthetic gene map for both: n genes (real symbols from the EFAAR annotation files, padded
with unannotated names when n exceeds them), d features, genes of a CORUM complex sharing a
direction; recall at (5 %, 95 %) and (10 %, 90 %) over the sources (default: all five EFAAR
sources, read from the installed efaar-benchmarking wheel). The recall values of both tools are
printed and compared (they must be equal).

Each (tool, size) runs in a fresh subprocess; reported per run:
  time     wall-clock seconds of the benchmark call only (map generation and imports excluded)
  peak     peak resident set size of that process (ru_maxrss: Python + libraries + map + run)
  +peak    peak RSS minus the RSS just before the call (what the call added)
EFAAR is skipped (and said so) when its estimated memory (n×n float64 matrix, its upper-triangle
indices and values, and a sorted copy: ≈ 24·n² bytes) exceeds --ref-mem-gb.

EFAAR's module imports geomloss at top level (used only by its energy-distance metric); the worker
stubs it, as the tests do.

Usage: python benchmarks/recall_vs_efaar.py [--genes 2000 5000 17000] [--dim 128]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types

import numpy as np
import pandas as pd

SOURCES = ["CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB"]
THRESHOLDS = [(0.05, 0.95), (0.1, 0.9)]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _efaar():
    if "geomloss" not in sys.modules:
        stub = types.ModuleType("geomloss")
        stub.SamplesLoss = None
        sys.modules["geomloss"] = stub
    from efaar_benchmarking import benchmarking, constants

    return benchmarking, constants


def make_map(n: int, d: int, seed: int = 0):
    _, cst = _efaar()
    rels = {s: pd.read_csv(f"{cst.BENCHMARK_DATA_DIR}/{s}.txt") for s in SOURCES}
    genes = sorted(set().union(*[set(r["entity1"]) | set(r["entity2"]) for r in rels.values()]))
    rng = np.random.default_rng(seed)
    if n <= len(genes):
        sel = list(rng.choice(genes, n, replace=False))
    else:
        sel = genes + [f"UNANNOTATED{i}" for i in range(n - len(genes))]
    x = rng.normal(size=(n, d))
    idx = {g: i for i, g in enumerate(sel)}
    corum = rels["CORUM"]
    a = corum["entity1"].map(idx)
    b = corum["entity2"].map(idx)
    ok = a.notna() & b.notna() & (rng.random(len(corum)) < 0.3)
    for i, j in zip(a[ok].astype(int), b[ok].astype(int), strict=True):
        x[j] += 0.3 * x[i]
    return sel, x, rels


def worker(tool: str, n: int, d: int, sources: list[str]) -> dict:
    sel, x, rels = make_map(n, d)
    rels = {s: rels[s] for s in sources}
    if tool == "ours":
        from morphobench.evaluate.recall import known_relationship_recall

        df = pd.DataFrame(x, columns=[f"f{i}" for i in range(d)])
        df.insert(0, "Metadata_Gene", sel)
    else:
        from sklearn.utils import Bunch

        bench, cst = _efaar()
        data = Bunch(features=pd.DataFrame(x), metadata=pd.DataFrame({"gene": sel}))
    base = _rss_mb()
    t0 = time.perf_counter()
    if tool == "ours":
        out = known_relationship_recall(df, rels, threshold_pairs=THRESHOLDS)
    else:
        out = bench.known_relationship_benchmark(data, "gene", benchmark_sources=sources, recall_thr_pairs=THRESHOLDS,
                                                 benchmark_data_dir=cst.BENCHMARK_DATA_DIR)
    elapsed = time.perf_counter() - t0
    cols = [c for c in out.columns if c.startswith("recall_")]
    return {"tool": tool, "n": n, "time_s": elapsed, "peak_mb": _peak_mb(), "base_mb": base,
            "recall": {r["source"]: [float(r[c]) for c in cols] for _, r in out.iterrows()},
            "columns": cols}


def run_child(tool, n, a):
    cmd = [sys.executable, __file__, "--worker", tool, "--genes", str(n), "--dim", str(a.dim),
           "--sources", *a.sources]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {a.timeout} s"}
    if out.returncode != 0:
        return {"skipped": f"failed (rc {out.returncode}): {out.stderr.strip()[-300:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genes", type=int, nargs="+", default=[2000, 5000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--sources", nargs="+", default=SOURCES)
    p.add_argument("--ref-mem-gb", type=float, default=10.0, help="skip EFAAR above this estimated memory")
    p.add_argument("--timeout", type=int, default=1200)
    p.add_argument("--worker", choices=["ours", "efaar"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.genes[0], a.dim, a.sources)))
        return
    print(f"recall benchmark: dim={a.dim}, sources={a.sources}, thresholds={THRESHOLDS}")
    print(f"{'genes':>7} {'tool':>6} {'time_s':>8} {'peak_MB':>8} {'+peak_MB':>9}  recall (first source, 5/95)")
    for n in a.genes:
        res = {"ours": run_child("ours", n, a)}
        est = 24 * n * n / 2**30
        res["efaar"] = ({"skipped": f"estimated {est:.1f} GB > --ref-mem-gb {a.ref_mem_gb}"} if est > a.ref_mem_gb
                        else run_child("efaar", n, a))
        for tool in ("ours", "efaar"):
            r = res[tool]
            if "skipped" in r:
                print(f"{n:>7} {tool:>6}  skipped: {r['skipped']}")
                continue
            first = next(iter(r["recall"].values()))[0]
            print(f"{n:>7} {tool:>6} {r['time_s']:>8.2f} {r['peak_mb']:>8.0f} {r['peak_mb'] - r['base_mb']:>9.0f}  "
                  f"{first:.4f}")
        if "time_s" in res["ours"] and "time_s" in res["efaar"]:
            same = res["ours"]["recall"] == res["efaar"]["recall"]
            print(f"{'':>7} ratio efaar/ours: time ×{res['efaar']['time_s'] / res['ours']['time_s']:.1f}, "
                  f"peak RSS ×{res['efaar']['peak_mb'] / res['ours']['peak_mb']:.2f}; "
                  f"recall identical for every source and threshold: {same}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
