"""Repository-level pytest setup: the notebooks run under nbval at the smoke preset.

nbval executes each notebook as it is; its parameters cell reads MMLIB_PRESET and
MMLIB_STUDY_OUT, so the suite runs the whole study at the smoke scale into one temporary
folder (notebooks run in name order and reuse each other's models there).
"""

import os
import tempfile


def pytest_configure(config):
    os.environ.setdefault("MMLIB_PRESET", "smoke")
    os.environ.setdefault("MMLIB_STUDY_OUT", tempfile.mkdtemp(prefix="mmlib-nbval-"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    # The bf16 self-check's verdicts (mmlib.engine.precision) go to a folder of the run, not ~/.cache.
    os.environ.setdefault("MMLIB_CACHE_DIR", tempfile.mkdtemp(prefix="mmlib-cache-"))
