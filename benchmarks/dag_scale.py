"""DAG scale: `snakemake -n` on a 200- and a 2,000-plate 384-well JUMP-layout screen.

    python benchmarks/dag_scale.py                 # 200 and 2,000 plates
    python benchmarks/dag_scale.py --plates 2000   # one size

For each size it writes a load_data CSV (one site per well, five channels, files that need not
exist) for config/scale_test.yaml, builds the image sheet with the ingest checkpoint, then times
`snakemake -n` over the whole default target and reports wall time, peak resident memory of that
Snakemake process (its own, not the ingest's), the number of jobs and the largest per-rule job
count per plate (jobs are per plate or per plate group, never per image or well). Targets (issue
"Running for real and at scale"): 2,000 plates in ≤ 60 s and ≤ 4 GB.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


def write_load_data(path: Path, n_plates: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    rows = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    perts = np.array([f"JCP{i:06d}" for i in range(300)] + ["DMSO"] * 20)
    frames = []
    for p in range(n_plates):
        plate = f"PLATE{p:05d}"
        df = pd.DataFrame({"Metadata_Plate": plate, "Metadata_Well": rows, "Metadata_Site": 1,
                           "Metadata_Batch": f"BATCH{p // 20:03d}",
                           "Metadata_Perturbation": rng.choice(perts, len(rows))})
        for ch in CHANNELS:
            df[f"FileName_Orig{ch}"] = [f"{plate}_{w}_s1_{ch}.tiff" for w in rows]
            df[f"PathName_Orig{ch}"] = f"/data/images/{plate}"
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False, compression="gzip")
    return len(out)


def snakemake(workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "config" / "scale_test.yaml"), *args]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=workdir)
        # this process's own peak (wait4), not RUSAGE_CHILDREN's maximum over every child so far,
        # which was the ingest's (the image sheet) when it ran before `snakemake -n`
        _, status, usage = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        res = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    return res, secs, usage.ru_maxrss / 1024  # ru_maxrss: KiB


def run(n_plates: int, workdir: Path) -> dict:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    n_sites = write_load_data(workdir / "results" / "scale_test_input" / "load_data.csv.gz", n_plates)
    res, ingest_s, _ = snakemake(workdir, "--cores", "1", "results/scale_test/images.parquet")
    if res.returncode != 0:
        raise SystemExit(f"ingest failed:\n{res.stderr[-3000:]}")
    res, secs, peak_mb = snakemake(workdir, "-n", "--quiet", "rules")
    if res.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{res.stderr[-3000:]}")
    counts = {}
    for line in (res.stdout + res.stderr).splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    total = sum(counts.values())
    worst = max(counts.items(), key=lambda kv: kv[1])
    return {"plates": n_plates, "sites": n_sites, "ingest_s": ingest_s, "dag_s": secs, "peak_mb": peak_mb,
            "jobs": total, "max_rule": worst[0], "max_rule_jobs": worst[1], "per_plate": worst[1] / n_plates}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, nargs="*", default=[200, 2000])
    ap.add_argument("--workdir", default=str(REPO / "benchmarks" / "out" / "dag_scale"))
    a = ap.parse_args()
    print("plates\tsites\tingest s\tsnakemake -n s\tpeak MB\tjobs\tlargest rule (jobs, per plate)")
    for n in a.plates:
        r = run(n, Path(a.workdir) / f"p{n}")
        print(f"{r['plates']}\t{r['sites']}\t{r['ingest_s']:.1f}\t{r['dag_s']:.1f}\t{r['peak_mb']:.0f}\t{r['jobs']}\t"
              f"{r['max_rule']} ({r['max_rule_jobs']}, {r['per_plate']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
