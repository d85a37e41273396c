"""The conda environments (envs/*.yaml, used by `snakemake --use-conda`, which cannot run on a
machine without conda) stay valid and pinned like the tested venv path: the morphobench env's pins
equal pyproject.toml's, the CellProfiler env's pins are exact and equal what its set-up script and
(when built) its venv hold; every config file validates against the schema."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
#: pyproject dependencies that the per-rule conda env does not need (the workflow engine itself)
ENGINE_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].strip().lower()


def _norm(req: str) -> str:
    return re.sub(r"\[[^\]]*\]", "", req.replace(" ", "")).lower()


def pip_pins(env_file: Path) -> list[str]:
    env = yaml.safe_load(env_file.read_text())
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, f"{env_file}: one pip: section expected"
    return pips[0]


def test_every_env_file_is_valid_conda_yaml():
    files = sorted((REPO / "envs").glob("*.yaml"))
    assert {f.name for f in files} >= {"morphobench.yaml", "cellprofiler.yaml"}
    for f in files:
        env = yaml.safe_load(f.read_text())
        assert set(env) >= {"name", "channels", "dependencies"}, f
        assert "conda-forge" in env["channels"], f
        assert any(str(d).startswith("python=3.11") for d in env["dependencies"]), f


def test_morphobench_env_pins_equal_pyproject():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    want = {_norm(d) for d in deps if _name(d) not in ENGINE_ONLY}
    have = {_norm(p) for p in pip_pins(REPO / "envs" / "morphobench.yaml")}
    assert have == want, f"only in env: {sorted(have - want)}; only in pyproject: {sorted(want - have)}"
    post = REPO / "envs" / "morphobench.post-deploy.sh"
    assert post.exists() and "pip install" in post.read_text()


def test_cellprofiler_env_is_an_exact_lock():
    pins = pip_pins(REPO / "envs" / "cellprofiler.yaml")
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", p) for p in pins), pins
    names = [_name(p) for p in pins]
    assert len(names) == len(set(names)), "a package pinned twice"
    script = REPO / "workflow" / "scripts" / "setup_cellprofiler_env.sh"
    printed = subprocess.run(["bash", str(script), "--print-pins"], capture_output=True, text=True, check=True)
    assert printed.stdout.split() == pins
    venv_python = REPO / ".venv-cellprofiler" / "bin" / "python"
    if not venv_python.exists():
        pytest.skip("no .venv-cellprofiler built here (bash workflow/scripts/setup_cellprofiler_env.sh)")
    frozen = subprocess.run([str(venv_python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                            check=True).stdout.split()
    frozen = {_name(f): f.split("==", 1)[1] for f in frozen if "==" in f}
    for p in pins:
        n, v = p.split("==")
        assert frozen.get(n.lower()) == v, f"{p}: installed {frozen.get(n.lower())}"


def config_files() -> list[Path]:
    return sorted((REPO / "config").glob("*.yaml")) + sorted((REPO / "config").glob("*/*.yaml"))


@pytest.mark.parametrize("path", config_files(), ids=lambda p: str(p.relative_to(REPO / "config")))
def test_every_config_file_validates(path):
    from snakemake.utils import validate

    from morphobench import methods

    cfg = yaml.safe_load(path.read_text())
    validate(cfg, methods.config_schema(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    conf = {c.name: c for c in methods.resolve(cfg["methods"])}
    methods.evaluation_lists(cfg, conf)
