"""Byte-identical reruns and interruption safety, through the real Snakefile on the tiny screen.

Run A goes from an empty directory to the tables. Run B starts from another empty directory and is
killed (SIGKILL to Snakemake and every job, no clean-up) at the moment a trained method's profile
is about to be published; after ``snakemake --unlock`` and a rerun with ``--rerun-incomplete`` it
finishes. Every results table and every profile parquet of B equals A's byte for byte.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from test_workflow import snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow

KILL_HOOK = Path(__file__).resolve().parent / "killhook"
TARGETS = ["results/known_relationships.tsv", "results/jump_retrieval.tsv"]
KILL_AT = "results/simulated/profiles/tiny_ae/well.parquet"


def run(workdir: Path, cfg: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """:func:`test_workflow.snakemake` with the plugin method; ``kill_at`` arms the kill hook."""
    if kill_at is None:
        return snakemake(workdir, *args, configfile=cfg, plugin=True)
    return snakemake(workdir, *args, configfile=cfg, plugin=True, env={"MORPHOBENCH_TEST_KILL_AT": kill_at},
                     pythonpath=(KILL_HOOK,))


def outputs(workdir: Path) -> dict[str, bytes]:
    res = workdir / "results"
    files = sorted(res.glob("*.tsv")) + sorted((res / "simulated" / "profiles").rglob("*.parquet"))
    return {str(p.relative_to(workdir)): p.read_bytes() for p in files}


def test_rerun_is_byte_identical_and_a_killed_run_resumes(tmp_path, resources_dir):
    # a baseline and a trained method, one correction: the chain from images to two tables
    cfg = {**tiny_config(resources_dir), "corrections": ["tvn"],
           "methods": ["random", {"name": "tiny_ae", "params": {"epochs": 2}}]}
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    cfg_a, cfg_b = write_config(a / "tiny.yaml", cfg), write_config(b / "tiny.yaml", cfg)
    first = run(a, cfg_a, "--cores", "2", *TARGETS)
    assert first.returncode == 0, first.stderr[-5000:]

    killed = run(b, cfg_b, "--cores", "2", *TARGETS, kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    target = b / KILL_AT
    # killed mid-write: the bytes went to a temporary file, the output itself was never published
    assert not target.exists()
    assert list(target.parent.glob(f".{target.name}.*.tmp")), "the kill came before the write"
    assert not any((b / t).exists() for t in TARGETS)
    # the usual recovery after a crash: unlock, rerun (incomplete outputs are redone)
    unlock = run(b, cfg_b, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    again = run(b, cfg_b, "--cores", "2", "--rerun-incomplete", *TARGETS)
    assert again.returncode == 0, again.stderr[-5000:]

    out_a, out_b = outputs(a), outputs(b)
    assert set(out_a) == set(out_b) and len(out_a) >= len(TARGETS) + 2 * (1 + 2)   # well + tvn/{well,pert}
    assert any("tiny_ae" in name for name in out_a)  # a learned method is among them
    differ = [name for name in out_a if out_a[name] != out_b[name]]
    assert not differ, f"not byte-identical between two runs: {differ}"
