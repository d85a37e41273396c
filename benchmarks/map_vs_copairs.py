#!/usr/bin/env python
"""Benchmark: morphobench mAP engine vs copairs 0.5.5 on the same synthetic profiles.

Both compute, on identical profiles and pair definitions: AP per profile, p-values of AP, mAP per
perturbation with p-values and BH q-values (null_size samples per configuration).

Design (``--design``):
  replicate  CPJUMP1-style perturbation retrieval: 384-well plates with 16–48 negative-control
             wells, perturbations with 2–6 replicates on different plates, 3 % of wells dropped;
             positives = replicates, negatives = negative controls of the same plate.
  dense      sibling-style: negatives = every profile of another perturbation (n² pairs).

Each (tool, size) runs in a fresh subprocess; reported per run:
  time     wall-clock seconds of the metric computation only (data generation and imports excluded;
           best of --repeat runs, each with an empty copairs null cache)
  peak     peak resident set size of that process (ru_maxrss: Python + libraries + data + run)
  +peak    peak RSS minus the RSS just before the computation (what the computation added)
Imports are outside the timing, ours including its compiled kernels (numba; loading them costs
about a second once per process, which a run without them skips when they would not repay it).
Both tools run single-process on the same machine; copairs uses its own threads where it does
(a ThreadPoolExecutor for similarities, nulls and mAP p-values), ours a small pool
(MORPHOBENCH_MAP_THREADS, default: usable CPUs, at most 4; set it to 1 for a single-threaded run).
The reference is skipped (and said so) when its estimated memory exceeds --ref-mem-gb or when it
runs past --timeout.

Usage: python benchmarks/map_vs_copairs.py [--sizes 2000 10000 50000] [--null-size 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_profiles(n: int, d: int, design: str, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = []
    plate = 0
    pert = 0
    while sum(len(r) for r in rows) < n:
        n_ctrl = int(rng.integers(16, 49))
        n_trt = 384 - n_ctrl
        reps = []
        while len(reps) < n_trt:
            reps.extend([pert] * int(rng.integers(2, 7)))
            pert += 1
        rows.append([(f"P{plate:04d}", "negcon", "DMSO")] * n_ctrl +
                    [(f"P{plate:04d}", "trt", f"c{p}") for p in reps[:n_trt]])
        plate += 1
    meta = pd.DataFrame([r for block in rows for r in block],
                        columns=["Metadata_Plate", "Metadata_PertType", "Metadata_Perturbation"])
    # shuffle replicates across plates (keep plate composition), drop 3 % of wells, trim to n
    trt = meta["Metadata_PertType"] == "trt"
    meta.loc[trt, "Metadata_Perturbation"] = rng.permutation(meta.loc[trt, "Metadata_Perturbation"].to_numpy())
    meta = meta[rng.random(len(meta)) > 0.03].iloc[:n].reset_index(drop=True)
    perts = meta["Metadata_Perturbation"].astype("category")
    eff = rng.normal(size=(len(perts.cat.categories), d)) * rng.random((len(perts.cat.categories), 1))
    eff[list(perts.cat.categories).index("DMSO")] = 0
    plates = meta["Metadata_Plate"].astype("category").cat.codes.to_numpy()
    x = eff[perts.cat.codes.to_numpy()] + 0.3 * rng.normal(size=(plates.max() + 1, d))[plates] + \
        rng.normal(size=(len(meta), d))
    meta["Metadata_ref"] = np.where(meta["Metadata_PertType"] == "negcon", np.arange(len(meta)), -1)
    return meta, x.astype(np.float32)


def definitions(design: str):
    if design == "replicate":
        return (["Metadata_Perturbation", "Metadata_ref"], [], ["Metadata_Plate"],
                ["Metadata_PertType", "Metadata_ref"])
    return (["Metadata_Perturbation"], [], [], ["Metadata_Perturbation"])


def pair_count(meta: pd.DataFrame, design: str) -> int:
    """Exact number of unordered (positive + negative) pairs, via our pair counter."""
    from morphobench.evaluate.map.pairs import PairDefinition, encode_columns

    ps, pd_, ns, nd = definitions(design)
    codes = encode_columns(meta, sorted(set(ps + pd_ + ns + nd)), "bench")
    n = len(meta)
    return int((PairDefinition(codes, ps, pd_, n).count.sum() + PairDefinition(codes, ns, nd, n).count.sum()) // 2)


def worker(tool: str, n: int, d: int, design: str, null_size: int, null_method: str, repeat: int = 1) -> dict:
    meta, x = make_profiles(n, d, design)
    args = definitions(design)
    if tool == "ours":
        from morphobench.evaluate import map as M

        M.load_kernels()  # numba import + cached machine code: a one-time (import-like) cost, ~1 s
    else:
        from copairs.map import average_precision, mean_average_precision
        from copairs.map.average_precision import p_values
    import statsmodels.stats.multitest  # noqa: F401  (import cost outside the timing, both tools)

    base = _rss_mb()
    best = None
    for _ in range(repeat):
        os.environ["HOME"] = tempfile.mkdtemp()  # fresh (empty) copairs cache each repeat
        t0 = time.perf_counter()
        if tool == "ours":  # the same flow as morphobench.evaluate.map.retrieval
            ap = M.average_precision(meta, x, *args, no_negatives="keep")
            shared = M.null_table(ap, null_size, 0, method=null_method)
            ap["p_value"] = M.ap_p_values(ap, null_size, 0, method=null_method, nulls=shared)
            mp = M.mean_average_precision(ap, ["Metadata_Perturbation"], null_size, 0, method=null_method,
                                          nulls=shared)
            mp = mp[mp["p_value"].notna()]
        else:
            ap = average_precision(meta, x, *args, progress_bar=False)
            ap["p_value"] = p_values(ap, null_size, 0, progress_bar=False)
            mp = mean_average_precision(ap, ["Metadata_Perturbation"], null_size, 0.05, 0, progress_bar=False,
                                        cache_dir=tempfile.mkdtemp())
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    elapsed = best
    return {"tool": tool, "n": n, "time_s": elapsed, "peak_mb": _peak_mb(), "base_mb": base,
            "mAP": float(mp["mean_average_precision"].mean()),
            "fraction_retrieved": float((mp["corrected_p_value"] < 0.05).mean()),
            "n_groups": int(len(mp)), "n_confs": int(len(ap.loc[ap["n_pos_pairs"] > 0, ["n_pos_pairs", "n_total_pairs"]]
                                                         .drop_duplicates()))}


def run_child(tool, n, a, timeout):
    cmd = [sys.executable, __file__, "--worker", tool, "--sizes", str(n), "--dim", str(a.dim), "--design", a.design,
           "--null-size", str(a.null_size), "--null-method", a.null_method, "--repeat", str(a.repeat)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "n": n, "skipped": f"timed out after {timeout} s"}
    if out.returncode != 0:
        return {"tool": tool, "n": n, "skipped": f"failed (rc {out.returncode}): {out.stderr.strip()[-300:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--design", choices=["replicate", "dense"], default="replicate")
    p.add_argument("--null-size", type=int, default=10000)
    p.add_argument("--null-method", choices=["fast", "copairs"], default="fast",
                   help="our null generation (copairs = reproduce copairs' draws)")
    p.add_argument("--ref-mem-gb", type=float, default=8.0, help="skip copairs above this estimated memory")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--repeat", type=int, default=1, help="best of this many runs per tool (same process)")
    p.add_argument("--worker", choices=["ours", "copairs"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.sizes[0], a.dim, a.design, a.null_size, a.null_method, a.repeat)))
        return
    from morphobench.evaluate.map.options import _n_threads

    print(f"mAP benchmark: design={a.design}, dim={a.dim}, null_size={a.null_size}, ours null={a.null_method}, "
          f"ours threads={_n_threads()}, repeat={a.repeat}, cpus={len(os.sched_getaffinity(0))}")
    print(f"{'n':>7} {'pairs':>12} {'tool':>8} {'time_s':>8} {'peak_MB':>8} {'+peak_MB':>9} {'mAP':>7} "
          f"{'retrieved':>9} {'confs':>6}")
    for n in a.sizes:
        meta, _ = make_profiles(n, 2, a.design)
        pairs = pair_count(meta, a.design)
        est_gb = pairs * 2 * 48 / 2**30  # copairs: both directions × (index, label, sim, sort keys …)
        res = {"ours": run_child("ours", n, a, a.timeout)}
        if est_gb > a.ref_mem_gb:
            res["copairs"] = {"skipped": f"estimated {est_gb:.1f} GB for {pairs:,} pairs > --ref-mem-gb {a.ref_mem_gb}"}
        else:
            res["copairs"] = run_child("copairs", n, a, a.timeout)
        for tool in ("ours", "copairs"):
            r = res[tool]
            if "skipped" in r:
                print(f"{n:>7} {pairs:>12,} {tool:>8}  skipped: {r['skipped']}")
            else:
                print(f"{n:>7} {pairs:>12,} {tool:>8} {r['time_s']:>8.2f} {r['peak_mb']:>8.0f} "
                      f"{r['peak_mb'] - r['base_mb']:>9.0f} {r['mAP']:>7.4f} {r['fraction_retrieved']:>9.3f} "
                      f"{r['n_confs']:>6}")
        if "time_s" in res["ours"] and "time_s" in res["copairs"]:
            print(f"{'':>7} ratio copairs/ours: time ×{res['copairs']['time_s'] / res['ours']['time_s']:.1f}, "
                  f"peak RSS ×{res['copairs']['peak_mb'] / res['ours']['peak_mb']:.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
