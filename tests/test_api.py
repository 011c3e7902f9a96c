"""The package surface: lazy imports, runtime-checked annotations, the share of check lines."""

import os
import pathlib
import subprocess
import sys
import textwrap

import beartype
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("orbax", "tensorflow_datasets", "tensorflow", "matplotlib", "sklearn",
         "ml_collections", "tqdm")


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("module", ["flowjax", "flowjax.losses", "flowjax.sample",
                                    "flowjax.paths", "flowjax.couplings", "flowjax.time",
                                    "flowjax.analytic", "flowjax.metrics", "flowjax.data"])
def test_import_pulls_in_no_heavy_dependency(module):
    """A loss-and-sampler program imports neither checkpointing, data sets nor plotting."""
    loaded = _run(f"""
        import sys
        import {module}
        print(" ".join(m for m in {HEAVY!r} if m in sys.modules))
    """).split()
    assert loaded == [], f"`import {module}` imported {loaded}"


def test_root_is_lazy_and_exports_the_switches():
    out = _run("""
        import sys
        import flowjax
        print("flowjax.train" in sys.modules, "flowjax.losses" in sys.modules)
        print(flowjax.paths.RectifiedFlow.__name__, "flowjax.paths" in sys.modules)
        print(flowjax.__version__, callable(flowjax.set_value_checks),
              callable(flowjax.value_checks), "train" in dir(flowjax))
        try:
            flowjax.nope
        except AttributeError as err:
            print("AttributeError", err)
    """).splitlines()
    assert out[0] == "False False"
    assert out[1] == "RectifiedFlow True"
    assert out[2].split() == ["0.1.0", "True", "True", "True"]
    assert out[3].startswith("AttributeError") and "nope" in out[3]


def test_value_check_switch_rejects_non_bool():
    import flowjax

    with pytest.raises(TypeError, match="`enabled` must be a bool"):
        flowjax.set_value_checks("no")
    assert flowjax.value_checks_enabled()


# -- runtime type checks of the annotations ------------------------------------------------


def _typechecked(fn):
    return jaxtyping.jaxtyped(typechecker=beartype.beartype)(fn)


@pytest.mark.slow
def test_public_annotations_hold_at_run_time():
    """jaxtyping + beartype over a handful of public functions of several subpackages."""
    from flowjax import analytic, data, metrics, paths

    key = jax.random.key(0)
    x = jax.random.normal(key, (8, 2))
    t = jnp.linspace(0.1, 0.9, 8)
    rf = paths.RectifiedFlow()
    mix = analytic.GaussianMixture.gaussian(jnp.zeros(2), jnp.eye(2))
    calls = [
        (paths.convert, (rf, x, t, x), dict(given=paths.Prediction.DATA,
                                            to=paths.Prediction.VELOCITY)),
        (paths.noise_ratio, (paths.VP(), t), {}),
        (paths.sde_diffusion, (paths.Cosine(), 0.5), {}),
        (paths.edm_scalings, (jnp.array([0.5, 2.0]),), {}),
        (type(rf).interpolate, (rf, x, x, t), {}),
        (type(rf).alpha, (rf, t), {}),
        (analytic.mixture_velocity, (rf, mix, x, t), {}),
        (analytic.mixture_log_prob, (rf, mix, x, 0.5), {}),
        (analytic.gaussian_flow_map, (rf, jnp.zeros(2), jnp.eye(2), x, t), {}),
        (data.moons, (key, 16), {}),
        (data.standard_normal, (key, 4, 3), {}),
        (metrics.w2, (np.asarray(x), np.asarray(x) + 1.0), {}),
        (metrics.path_energy, (np.stack([np.asarray(x)] * 3), np.array([0.0, 0.5, 1.0])), {}),
        (metrics.kernel_distance, (np.asarray(x), np.asarray(x)),
         dict(key=key, num_subsets=2, subset_size=4)),
    ]
    for fn, args, kwargs in calls:
        expected = fn(*args, **kwargs)
        got = _typechecked(fn)(*args, **kwargs)
        assert jax.tree.structure(got) == jax.tree.structure(expected), fn.__qualname__


def test_runtime_type_check_catches_a_wrong_rank():
    """The annotations say something: a `[B]` time against a batch of another size fails."""
    from flowjax import paths

    x = jnp.ones((4, 2))
    with pytest.raises(Exception, match="(?i)type-check|violat"):
        _typechecked(paths.convert)(paths.RectifiedFlow(), x, jnp.full((3,), 0.5), x,
                                    given=paths.Prediction.DATA, to=paths.Prediction.NOISE)


# -- the share of check lines --------------------------------------------------------------


def _load_tool():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_share
    finally:
        sys.path.pop(0)
    return check_share


def test_check_share_counts_what_it_documents(tmp_path):
    tool = _load_tool()
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "_mod.py").write_text(textwrap.dedent('''
        def public(x, n):
            """Docstring lines are not counted."""
            check_array("x", x)
            if n < 0:
                raise ValueError("n")
            x = error_if(x, x > 1, "x")
            y = x + n
            return y

        def _private(x):
            raise ValueError("not counted")

        def check_thing(x):
            raise ValueError("a helper: not counted")

        class Thing:
            def method(self, a):
                b = _check_a(a)
                return b

            def abstract(self):
                raise NotImplementedError
    '''))
    counts = {c.name.split(".", 2)[-1]: (c.body, c.checks) for c in tool.count_package(pkg)}
    assert counts == {"public": (6, 4), "Thing.method": (2, 1), "Thing.abstract": (1, 0)}
    assert tool.share(tool.count_package(pkg)) == pytest.approx(5 / 9)


def test_check_share_of_the_package_is_at_most_15_percent():
    tool = _load_tool()
    counts = tool.count_package(ROOT / "flowjax")
    worst = sorted(counts, key=lambda c: -c.checks)[:10]
    assert tool.share(counts) <= 0.15, (
        f"check lines are {tool.share(counts):.1%} of public-function bodies; most in: "
        + ", ".join(f"{c.name} ({c.checks}/{c.body})" for c in worst))
