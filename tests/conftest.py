"""Test-wide settings. XLA's backend optimisation level 0 roughly halves compile time on CPU, which
dominates these tiny-model tests; numerics stay within float rounding (the 8-vs-1 device comparisons
use the same level on both sides).

The suite runs in two pytest-xdist workers (pyproject's addopts: `-n 2 --dist loadgroup`): most of a
test's time is single-threaded Python tracing, XLA compilation and process start-up, which a second
worker overlaps. Every test that reads a method's smoke runs (the `smoke_runs` fixture, made once per
worker) joins that method's xdist group, so each method's three smoke runs are made once, on one worker.
`python -m pytest -n 0 tests` runs everything in one process."""

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


def _smoke_method(item):
    """The method whose smoke runs `item` reads: its `method` parameter, else what the test names."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "method" in params:
        return params["method"]
    if "protocol" in params:  # test_multiprocess' evaluation protocols: PAWS' own, or SimCLR's run
        return "paws" if "paws" in params["protocol"] else "simclr"
    from tests import helpers  # here, not at the top: it imports jax, after the settings above

    named = item.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")  # test_byol.py -> byol
    return named if named in helpers.METHODS else "simclr"  # e.g. test_faults, whose simclr stands for all


def _shared_fixture(item):
    """'<test module>.module_fixtures' if `item` uses a module-scoped fixture of this suite (made once
    per worker), else None: one group per module, as its fixtures build on each other (test_data's
    test_split on data_dir), so that each is made once."""
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in info.name2fixturedefs.get(name, ()) if info else ():
            if fixturedef.scope == "module" and fixturedef.func.__module__.startswith("tests."):
                return f"{fixturedef.func.__module__}.module_fixtures"
    return None


# The slowest tests (seconds in the two-worker suite, 2-core CPU) start first, so that no worker is
# left with one of them at the end while the other idles.
_SLOW_FIRST = ("test_faults.py", "test_multiprocess.py", "test_benchmark.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "smoke_runs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(f"smoke_{_smoke_method(item)}"))
        elif shared := _shared_fixture(item):
            item.add_marker(pytest.mark.xdist_group(shared))
    items.sort(key=lambda item: item.nodeid.split("::")[0].rsplit("/", 1)[-1] not in _SLOW_FIRST)
