"""A single-node SLURM cluster on this machine, for the SLURM integration test.

:class:`SlurmCluster` writes a ``slurm.conf`` in a scratch folder (state, spool, logs and pid
files there too), starts ``munged`` (unless one already answers), ``slurmctld`` and ``slurmd`` in
the foreground as child processes, waits until the node is idle, and on exit stops only the
daemons it started, by their saved PIDs, and removes their stale pid files. No systemd is needed.

Settings that make slurm work in a container without cgroups or accounting (see the issue):
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, ``MailProg=/bin/true``,
``SelectType=select/cons_tres`` with ``CR_Core_Memory`` and ``DefMemPerCPU`` (else one job takes
the whole node), ``MpiDefault=none``, no accounting storage (so clients poll with ``squeue``), and
the node line from ``slurmd -C`` with ``NodeAddr=127.0.0.1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
PACKAGES = ("slurm-wlm", "munge")
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


def ensure_installed() -> str | None:
    """Install slurm + munge with apt when missing; returns why it cannot (None when ready)."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0:
        return f"SLURM binaries {missing_binaries()} are missing and this test is not root (cannot apt-get install)"
    if shutil.which("apt-get") is None:
        return "SLURM binaries are missing and apt-get is not available"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed (apt unreachable?): {res.stderr.strip()[-300:]}"
    return None if not missing_binaries() else f"still missing after apt-get: {missing_binaries()}"


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    def __init__(self, root: str | os.PathLike, def_mem_per_cpu: int = 1000):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.def_mem_per_cpu = def_mem_per_cpu
        self.procs: list[subprocess.Popen] = []
        self.names: list[str] = []
        self.stopped_pids: list[int] = []
        self._linked = False

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def write_conf(self) -> None:
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        node = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
        node_line = next(ln for ln in node.splitlines() if ln.startswith("NodeName="))
        host = node_line.split()[0].split("=", 1)[1]
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=morphobench-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "MpiDefault=none",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MailProg=/bin/true",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            f"DefMemPerCPU={self.def_mem_per_cpu}",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2", "SchedulerType=sched/backfill",
            f"{node_line} NodeAddr=127.0.0.1 State=UNKNOWN",
            "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")

    def _munge_ok(self) -> bool:
        enc = subprocess.run(["munge", "-n"], capture_output=True)
        if enc.returncode != 0:
            return False
        return subprocess.run(["unmunge"], input=enc.stdout, capture_output=True).returncode == 0

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(p)
        self.names.append(name)
        (self.root / f"{name}.started.pid").write_text(str(p.pid))
        return p

    def _install_default_conf(self) -> None:
        """Jobs' nested ``srun`` (snakemake's slurm-jobstep executor drops ``SLURM_*`` variables,
        ``SLURM_CONF`` among them) reads the default ``/etc/slurm/slurm.conf``: link ours there
        for the cluster's lifetime, unless another cluster's file is in place."""
        if DEFAULT_CONF.is_symlink() and not DEFAULT_CONF.exists():
            DEFAULT_CONF.unlink()  # a dangling link left by an interrupted run
        if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
            if DEFAULT_CONF.resolve() != self.conf.resolve():
                raise RuntimeError(f"{DEFAULT_CONF} exists (another SLURM cluster?); not replacing it")
            return
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(self.conf)
        self._linked = True

    def start(self, timeout: float = 60) -> SlurmCluster:
        self.write_conf()
        self._install_default_conf()
        if not self._munge_ok():
            key = Path("/etc/munge/munge.key")
            if not key.exists():
                subprocess.run(["mungekey", "--create"], check=True)
                shutil.chown(key, "munge", "munge")
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            self._start(["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", _sbin("munged"), "-F"],
                        "munged")  # setpriv execs munged: the saved PID is the daemon's
            self._wait(self._munge_ok, 15, "munged")
        for stale in ("slurmctld.pid", "slurmd.pid"):
            (self.root / stale).unlink(missing_ok=True)
        self._start([_sbin("slurmctld"), "-D", "-f", str(self.conf)], "slurmctld")
        time.sleep(1)
        self._start([_sbin("slurmd"), "-D", "-f", str(self.conf)], "slurmd")
        self._wait(self._idle, timeout, "slurm node idle")
        return self

    def _idle(self) -> bool:
        res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env)
        return res.returncode == 0 and res.stdout.strip() in ("idle", "mix", "alloc")

    def _wait(self, ok, timeout: float, what: str) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if ok():
                return
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{what}: daemon {p.args} exited with {p.returncode}; logs in {self.root}/log")
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.root}/log")

    def stop(self) -> None:
        """Stop the daemons this object started (by their saved PIDs), newest first."""
        for name, p in reversed(list(zip(self.names, self.procs, strict=True))):
            pid = int((self.root / f"{name}.started.pid").read_text())
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            self.stopped_pids.append(pid)
            (self.root / f"{name}.started.pid").unlink(missing_ok=True)
        self.procs.clear()
        self.names.clear()
        for stale in ("slurmctld.pid", "slurmd.pid"):
            (self.root / stale).unlink(missing_ok=True)
        if self._linked and DEFAULT_CONF.is_symlink():
            DEFAULT_CONF.unlink()
        self._linked = False

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
