# The README's two commands:  `make run` (set-up + the default run) and `make test` (set-up + tests).
# Set-up is idempotent: on a built machine it takes a few seconds (workflow/scripts/setup.sh).
.PHONY: setup run test

setup:
	bash workflow/scripts/setup.sh

run: setup
	.venv/bin/snakemake --cores all

# Tests run on TEST_WORKERS pytest-xdist workers (default: one per core, at most 4; `make test
# TEST_WORKERS=0` runs them in one process); --durations prints the slowest tests.
# pytest's exit code 5 (no tests collected) counts as a failure
TEST_WORKERS ?= auto
test: setup
	@.venv/bin/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadgroup --durations 25; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: counting as failure" >&2; exit 1; fi; \
	exit $$rc
