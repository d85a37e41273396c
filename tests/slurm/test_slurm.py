"""SLURM for real: a single-node cluster on this machine (slurmctld + slurmd + munged, started
and stopped by the test), and a small target of the real Snakefile run through
``snakemake --workflow-profile profiles/slurm`` (snakemake-executor-plugin-slurm → sbatch).

Skips, saying why, only where the test cannot be root or apt cannot install slurm-wlm/munge.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster import SlurmCluster, ensure_installed

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]


def test_snakemake_profile_runs_jobs_through_sbatch(tmp_path, resources_dir):
    why = ensure_installed()
    if why:
        pytest.skip(why)
    work = tmp_path / "work"
    work.mkdir()
    cfg = {"seed": 0, "resources": {"dir": str(resources_dir), "offline": True},
           "datasets": {"simulated": {"loader": "simulated", "simulate": {"preset": "tiny", "seed": 3}}}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/simulated/illum/SIMB1P1.npz"
    with SlurmCluster(tmp_path / "slurm") as cluster:
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
               "--configfile", str(work / "config.yaml"), "--workflow-profile", str(REPO / "profiles" / "slurm"),
               # this cluster: one partition, no accounting (poll with squeue), fast first poll
               "--default-resources", "slurm_partition=main", "mem_mb=1000", "runtime=30",
               "--slurm-no-account", "--slurm-status-command", "squeue",
               "--slurm-init-seconds-before-status-checks", "1", "--slurm-keep-successful-logs",
               "--latency-wait", "5", "--jobs", "4", target]
        t0 = time.time()
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=cluster.env, timeout=900)
        secs = time.time() - t0
        print(f"SLURM round trip of {target}: {secs:.1f} s")
        jobs = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=cluster.env).stdout
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    assert (work / target).exists()
    assert jobs.strip() == ""  # nothing left in the queue
    # every job went through sbatch: the plugin's per-job slurm logs, and our rule logs name the job
    rules = {"simulate_design", "simulate_plate", "simulate_sheet", "illum_calc"}
    slurm_logs = {p.parent.parent.name for p in (work / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert {f"rule_{r}" for r in rules} <= slurm_logs, slurm_logs
    submitted = set(re.findall(r"SLURM run ID: \S+|Job \d+ has been submitted with SLURM jobid (\d+)",
                               res.stdout + res.stderr))
    assert submitted, (res.stdout + res.stderr)[-3000:]
    for log in [work / "logs" / "simulated" / "illum" / "SIMB1P1.log"]:
        assert "SLURM_JOB_ID=" in log.read_text(), log.read_text()[-2000:]
    # the daemons it started are stopped (by their saved PIDs) and their pid files removed
    assert len(cluster.stopped_pids) >= 2 and not list((tmp_path / "slurm").glob("*.pid"))
    for pid in cluster.stopped_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert os.path.exists(tmp_path / "slurm" / "log" / "slurmctld.log")
