#!/usr/bin/env bash
# Runs inside the freshly created conda env, from the Snakemake working directory (the checkout).
set -euo pipefail
python -m pip install --no-deps --editable "${MORPHOBENCH_HOME:-$PWD}"
