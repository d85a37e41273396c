#!/usr/bin/env bash
# Set up (or verify) everything a fresh machine needs to run morphobench: the main environment
# .venv (torch first and pinned, then this package with its test extra and the EFAAR reference
# library) and the CellProfiler backend environment .venv-cellprofiler (its own script).
#
# Idempotent and quick when nothing changed: a stamp file in .venv records the sha256 of
# pyproject.toml and of the pins below; if it matches and the imports work, nothing is installed
# ("up to date", a second or two). If the pins changed or the venv is broken, .venv is rebuilt from
# scratch. The stamp is written last, so an interrupted set-up is redone next time.
#
# Usage:  bash workflow/scripts/setup.sh        (what `make setup`, `make run` and `make test` call)
# Env:    PYTHON (default python3.11), PIP_ARGS (extra pip install arguments)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3.11}"
VENV="$REPO/.venv"
# torch FIRST and pinned: an unpinned torch pulls a multi-GB CUDA build
TORCH_PIN="torch==2.13.0"
ORACLE_PIN="efaar-benchmarking==1.0"   # reference library the tests compare with (installed --no-deps)
STAMP="$VENV/.morphobench-setup.sha256"
HASH="$( { cat pyproject.toml; echo "$TORCH_PIN $ORACLE_PIN"; } | sha256sum | cut -d' ' -f1)"
CHECK='import morphobench.models, timm, torchvision, snakemake, efaar_benchmarking, cp_measure, copairs'
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "setup: $*" >&2; }
start=$(date +%s)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  say ".venv up to date"
else
  command -v "$PYTHON" >/dev/null || PYTHON=python3
  say "building .venv with $("$PYTHON" --version 2>&1)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q ${PIP_ARGS:-} "$TORCH_PIN"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q ${PIP_ARGS:-} -e ".[test]"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q ${PIP_ARGS:-} --no-deps "$ORACLE_PIN"
  "$VENV/bin/python" -c "$CHECK"
  echo "$HASH" > "$STAMP"
  say ".venv ready"
fi
bash "$REPO/workflow/scripts/setup_cellprofiler_env.sh"
say "done in $(( $(date +%s) - start )) s"
