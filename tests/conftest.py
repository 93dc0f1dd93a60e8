"""Test-wide settings. XLA's backend optimisation level 0 roughly halves compile time on CPU, which
dominates these tiny-model tests; numerics stay within float rounding (the 8-vs-1 device comparisons
use the same level on both sides)."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# A persistent compilation cache: the resume tests compile the same step in three runs of main, and
# the device subprocesses compile what the parent already compiled; the cache serves the repeats.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ssljax-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
    """smoke_runs(method) -> helpers.SmokeRuns: the method's smoke preset run straight to the end, and
    run again pre-empted by a real SIGTERM after step 2 then resumed, each once per session (the
    contract test and the method's own tests read the same runs)."""
    from tests import helpers

    cache = {}

    def get(method):
        if method not in cache:
            cache[method] = helpers.smoke_runs(method, tmp_path_factory.mktemp(f"{method}_smoke"))
        return cache[method]

    return get
