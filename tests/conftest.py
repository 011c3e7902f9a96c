"""Shared fixtures: float64 scoped to the tests that check identities; 8 host devices.

A test run sees 8 CPU devices (`--xla_force_host_platform_device_count=8`,
set before JAX starts) so that sharded and multi-device code is tested in
process. Unsharded computations still run on device 0 alone. A collective
that hangs fails after 60 s instead of stalling the suite.
The run compiles each large XLA program once: a persistent compilation
cache in a temporary directory, made at the start of the run, shared by the
xdist workers and the experiment commands the tests start, and deleted at the
end (programs that compile in under 0.5 s are not cached). A test that checks
the cache itself uses its own directory.
"""

import os
import shutil
import tempfile

_FLAGS = ("--xla_force_host_platform_device_count=8",
          "--xla_cpu_collective_call_terminate_timeout_seconds=60")
_xla = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_xla] + [f for f in _FLAGS if f.split("=")[0] not in _xla])

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


def pytest_configure(config):
    """Starts the run's compilation cache (see the module docstring); the workers
    inherit its directory through the environment."""
    if not hasattr(config, "workerinput") and "FLOWJAX_TEST_XLA_CACHE" not in os.environ:
        config.flowjax_cache = tempfile.mkdtemp(prefix="flowjax-test-xla-")
        os.environ["FLOWJAX_TEST_XLA_CACHE"] = config.flowjax_cache
    cache = os.environ.get("FLOWJAX_TEST_XLA_CACHE", "")
    os.environ["FLOWJAX_COMPILATION_CACHE"] = cache  # for the experiment commands
    if cache:
        from experiments._cli import enable_compilation_cache

        enable_compilation_cache(cache, min_compile_secs=0.5)
    _check_loadgroup(config)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.fast_cases(n)`: the first n collected cases of a parametrized test stay
    in the fast suite (`make test`), and its other cases are marked slow."""
    seen = {}
    for item in items:
        marker = item.get_closest_marker("fast_cases")
        if marker is None:
            continue
        key = (item.path, item.originalname)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > marker.args[0]:
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
    if getattr(config, "flowjax_cache", None):
        shutil.rmtree(config.flowjax_cache, ignore_errors=True)
        del os.environ["FLOWJAX_TEST_XLA_CACHE"]


def _check_loadgroup(config):
    """Stops at once when `--dist loadgroup` would not group: each `xdist_group` holds a
    run that its tests share, and ungrouped it is trained again on every worker. pytest 9.2
    moved the node id where pytest-xdist 3.8 writes the group."""
    if config.getoption("dist", "no") != "loadgroup" or hasattr(config, "workerinput"):
        return
    import xdist

    version = lambda v: tuple(int(p) for p in v.split(".")[:2])  # noqa: E731
    if version(pytest.__version__) >= (9, 2) and version(xdist.__version__) <= (3, 8):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__} ignores "
            "`--dist loadgroup`; install the pinned versions: pip install -e '.[test]'")
