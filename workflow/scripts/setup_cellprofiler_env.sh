#!/usr/bin/env bash
# Create (or verify) the separate Python environment of the `cellprofiler` image backend.
#
# Why a second environment: cellprofiler-library-nightly / cellprofiler-core-nightly 5.0.0.dev784
# require numpy<2 and scipy<1.11, morphobench itself numpy 2.4 / scipy 1.17. The backend's worker
# (src/morphobench/images/cp_worker.py) runs in this environment and exchanges only files with
# the main one, so the two never share a process.
#
# What it does: `python3.11 -m venv .venv-cellprofiler`, then installs EXACTLY the pinned list of
# envs/cellprofiler.yaml (the `pip:` entries; the same file conda users get with --use-conda).
# The list is the complete dependency closure, so pip installs it with --no-deps (no resolver run:
# fast and the same on every machine) and `pip check` then proves it is consistent.
#
# Idempotent: a stamp file in the venv records the sha256 of the pin list. If the stamp matches and
# the worker's imports succeed, the script exits at once ("up to date"); if the pins changed or the
# venv is broken/incomplete, the venv is rebuilt from scratch. The stamp is written last, so an
# interrupted run is redone next time. Concurrent calls are serialised with flock when available.
#
# Usage:   bash workflow/scripts/setup_cellprofiler_env.sh [--check | --print-pins] [VENV_DIR]
#          --check       exit 0 if VENV_DIR is up to date, 1 if not; builds nothing
#          --print-pins  print the pinned requirements and exit
# Env:     PYTHON (default python3.11), CP_VENV (default <repo>/.venv-cellprofiler; VENV_DIR wins),
#          PIP_ARGS (extra pip install arguments, e.g. a --find-links for offline installs).
# Then:    config key images.cellprofiler_python = <VENV_DIR>/bin/python (the default).
set -euo pipefail

MODE=build
case "${1:-}" in
  --check) MODE=check; shift ;;
  --print-pins) MODE=pins; shift ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  -*) echo "unknown option $1" >&2; exit 64 ;;
esac
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-${CP_VENV:-$REPO/.venv-cellprofiler}}"
PYTHON="${PYTHON:-python3.11}"
YAML="$REPO/envs/cellprofiler.yaml"
STAMP_NAME=".morphobench-cellprofiler.sha256"

die() { echo "setup_cellprofiler_env: ERROR: $*" >&2; exit 1; }
say() { echo "setup_cellprofiler_env: $*" >&2; }

[[ -f "$YAML" ]] || die "pin list $YAML not found"
start=$(date +%s)

# The pins: every "- name==version" line of the yaml's pip: section.
PINS="$(sed -n 's/^[[:space:]]*-[[:space:]]*\([A-Za-z0-9_.-]*==[^[:space:]#]*\).*$/\1/p' "$YAML")"
[[ -n "$PINS" ]] || die "no 'name==version' pins found in $YAML"
grep -q '^cellprofiler-library-nightly==' <<<"$PINS" || die "$YAML does not pin cellprofiler-library-nightly"
HASH="$(echo "$PINS" | sha256sum | cut -d' ' -f1)"
if [[ "$MODE" == pins ]]; then echo "$PINS"; exit 0; fi

# The check the worker needs: these imports (and the numpy<2 the library requires).
CHECK='import sys; assert sys.version_info[:2] == (3, 11), sys.version
import numpy, scipy, skimage, tifffile, imagecodecs, cellprofiler_library, cellprofiler_core
from cellprofiler_library.modules import identifyprimaryobjects, identifysecondaryobjects, measureobjectsizeshape
from cellprofiler_library.modules._measureobjectintensity import measure_object_intensity
from cellprofiler_library.modules._measuretexture import measure_object_texture
from cellprofiler_library.modules._correctilluminationcalculate import correctilluminationcalculate
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__'

up_to_date() {
  [[ -x "$VENV/bin/python" && -f "$VENV/$STAMP_NAME" ]] || return 1
  [[ "$(cat "$VENV/$STAMP_NAME")" == "$HASH" ]] || return 1
  "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1
}

if [[ "$MODE" == check ]]; then
  if up_to_date; then say "up to date: $VENV"; exit 0; fi
  say "missing or out of date: $VENV"; exit 1
fi

mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"   # absolute: a venv is not relocatable
LOCK="${TMPDIR:-/tmp}/morphobench-cpenv-$(echo "$VENV" | sha256sum | cut -c1-16).lock"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$LOCK"
  flock 9
fi

if up_to_date; then
  say "up to date: $VENV ($(( $(date +%s) - start )) s)"
  exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 \
  || die "interpreter '$PYTHON' not found; install Python 3.11 or set PYTHON=/path/to/python3.11"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
  || die "'$PYTHON' is not Python 3.11 (the pins are resolved for 3.11)"

if [[ -e "$VENV" ]]; then
  # Only ever delete something that is a virtual environment.
  [[ -f "$VENV/pyvenv.cfg" ]] || die "$VENV exists and is not a virtual environment; remove it or pick another path"
  say "rebuilding $VENV (pins changed or environment incomplete)"
  rm -rf "$VENV"
fi

say "creating $VENV with $PYTHON"
"$PYTHON" -m venv "$VENV"
REQ="$(mktemp)"
trap 'rm -f "$REQ"' EXIT
echo "$PINS" >"$REQ"
say "installing $(wc -l <"$REQ") pinned packages"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  ${PIP_ARGS:-} -r "$REQ"
"$VENV/bin/python" -m pip check >&2 || die "pip check failed: the pin list in $YAML is inconsistent"
"$VENV/bin/python" -c "$CHECK" >/dev/null || die "the new environment cannot import the CellProfiler library"
echo "$HASH" >"$VENV/$STAMP_NAME"
say "ready: $VENV/bin/python ($(( $(date +%s) - start )) s)"
