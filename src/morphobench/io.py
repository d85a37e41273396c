"""Atomic file output, tables, provenance and logging shared by every stage.

Every stage writes through :func:`atomic_path` (write to a temporary sibling, then rename), so a
failure never leaves a partial output behind for Snakemake or a user to pick up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger("morphobench")


class MorphobenchError(RuntimeError):
    """A user-facing error: bad input, bad config, missing file. The message says what and where."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    On any exception the temporary file/directory is removed and ``path`` is left untouched
    (an existing ``path`` is only replaced after the new content is complete).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` to parquet atomically (no index, deterministic bytes for equal frames)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
    return path


def write_tsv(df: pd.DataFrame, path: str | os.PathLike, *, float_format: str = "%.10g") -> Path:
    """Write a results table as TSV atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format=float_format, lineterminator="\n")
    return path


def read_table(path: str | os.PathLike, *, what: str = "table") -> pd.DataFrame:
    """Read a parquet/TSV/CSV table with an error that names the file."""
    path = Path(path)
    if not path.exists():
        raise MorphobenchError(f"{what} not found: {path}")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        sep = "\t" if path.suffix in {".tsv", ".txt"} else ","
        return pd.read_csv(path, sep=sep)
    except Exception as err:  # pragma: no cover - message re-wrapping
        raise MorphobenchError(f"cannot read {what} {path}: {err}") from err


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable config section."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except Exception:  # pragma: no cover
        return "unknown"


def package_versions(names: tuple[str, ...] = ("numpy", "pandas", "scipy", "scikit-learn", "torch",
                                               "snakemake", "copairs", "cp-measure")) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "absent"
    return out


def write_provenance(table_path: str | os.PathLike, config: Any = None, *, config_digest: str | None = None,
                     methods: Any = None) -> Path:
    """Write ``<table>.provenance.json`` beside a results table: config hash, versions, commit.

    ``config_digest`` (from :func:`config_hash`, e.g. computed by the Snakefile) is used as is;
    otherwise the hash of ``config``. ``methods`` (``morphobench.methods.provenance``) records what
    each method is — e.g. a network with random weights says so. Contains no timestamps, so the
    same config gives byte-identical sidecars.
    """
    import morphobench

    table_path = Path(table_path)
    side = table_path.with_name(table_path.name + ".provenance.json")
    info = {
        "table": table_path.name,
        "config_hash": config_digest or config_hash(config),
        "morphobench": morphobench.__version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
    }
    if methods:
        info["methods"] = methods
    with atomic_path(side) as tmp:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return side


def setup_logging(logfile: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr (which Snakemake rules redirect to their ``log:``) and optionally a file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    if os.environ.get("SLURM_JOB_ID"):  # on a cluster, say which job wrote this log
        log.info("SLURM_JOB_ID=%s on %s (partition %s)", os.environ["SLURM_JOB_ID"],
                 os.environ.get("SLURMD_NODENAME", "?"), os.environ.get("SLURM_JOB_PARTITION", "?"))


def progress(iterable, **kw):
    """tqdm progress bar to stderr (shows in rule logs); ``desc`` names the loop."""
    from tqdm.auto import tqdm

    kw.setdefault("mininterval", 2.0)
    kw.setdefault("file", sys.stderr)
    kw.setdefault("disable", os.environ.get("MORPHOBENCH_NO_PROGRESS") == "1")
    return tqdm(iterable, **kw)


def cli_exit(prog: str, fn, *args, error_code: int = 1, **kwargs) -> int:
    """Run a CLI command; return its exit code. A :class:`MorphobenchError` is logged as
    ``prog: error: …`` (no traceback for user errors) → ``error_code``; any other exception is
    logged with its traceback → 1. Logging goes to stderr (the rule's ``log:``) and to the
    ``--log`` file when :func:`setup_logging` was given one."""
    log = logging.getLogger("morphobench")
    try:
        fn(*args, **kwargs)
    except MorphobenchError as err:
        log.error("%s: error: %s", prog, err)
        return error_code
    except Exception:
        log.exception("%s failed", prog)
        return 1
    return 0


def load_json_arg(text: str, what: str = "--spec") -> dict:
    """A JSON object given on the command line, or ``@file.json`` (empty: ``{}``); errors name
    the option."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        if text.startswith("@"):
            with open(text[1:]) as fh:
                text = fh.read()
        d = json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise MorphobenchError(f"{what} is not valid JSON: {err}") from err
    if not isinstance(d, dict):
        raise MorphobenchError(f"{what} must be a JSON object")
    return d
