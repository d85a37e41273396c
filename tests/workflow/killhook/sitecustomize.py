"""Test hook (tests/workflow/test_rerun.py): a power cut in the middle of a write.

Imported by every Python process of a test run whose PYTHONPATH holds this folder. When
``MORPHOBENCH_TEST_KILL_AT`` is set, the first ``os.replace`` onto a path ending with it (the
rename that publishes an atomically written output) first kills, with SIGKILL, its whole process
group: the test starts Snakemake in a session of its own, and Snakemake's jobs stay in it. The
output's bytes are written to its temporary file and nothing gets a chance to clean up.
"""

import os
import signal

_target = os.environ.get("MORPHOBENCH_TEST_KILL_AT")
if _target:
    _replace = os.replace

    def _killing_replace(src, dst, *args, **kwargs):
        if os.fspath(dst).endswith(_target):
            os.killpg(os.getpgrp(), signal.SIGKILL)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _killing_replace
