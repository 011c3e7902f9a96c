"""Fuzzing the public API: invalid inputs get a clear error, valid inputs finite outputs.

Every public function of paths, time, couplings, losses, sample, metrics,
analytic and data is given generated invalid arguments (wrong ranks,
mismatched batches, wrong dtypes, t outside [0, 1], NaN/inf, empty batches,
wrong types, options out of range). Each must raise a ValueError or TypeError
whose message names the argument in backticks, as the library writes it,
from a frame inside flowjax (one of its checks, not an error from deep
inside jax, XLA, diffrax, ott or SciPy), or, for a value checked inside the
compiled program (`flowjax._checks.error_if`), equinox's runtime error with
that message. Generated valid arguments must give
finite outputs.

`COUNTS` adds up the cases of the whole module; `test_fuzz_totals`, the
last test, asserts at least 1,000 cases with a clear error for every
invalid one, and writes the figures to `fuzz_counts.json` under pytest's
base temporary directory (and prints them; run with `-s` to see them).
Shapes are fixed (batch 3, 2 dimensions) so that the jitted solvers compile
once. The module is one xdist group: its counters live in one process.
"""

from __future__ import annotations

import functools
import json
import math
import os
import traceback
from typing import Any, Callable, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import flowjax
from flowjax import analytic, couplings, data, losses, metrics, paths, sample
from flowjax import time as ftime
from flowjax.paths import Prediction

pytestmark = pytest.mark.xdist_group("fuzz")  # one worker: the counters add up in one process

B, D = 3, 2  # every generated batch: 3 points in 2 dimensions (one compilation per solver)
FLOWJAX_DIR = os.path.dirname(os.path.abspath(flowjax.__file__)) + os.sep
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

#: Per module: invalid cases, those that got a clear error, valid cases, those with finite outputs.
COUNTS: dict[str, dict[str, int]] = {}
#: The fuzz tests that must have run for `test_fuzz_totals` to judge the totals.
FUZZ_TESTS = ("paths", "time", "couplings", "losses", "sample", "metrics", "analytic", "data")
RAN: set[str] = set()


def _count(module, field):
    COUNTS.setdefault(module, {"invalid": 0, "clear": 0, "valid": 0, "finite": 0})[field] += 1


def _last_frame(err):
    frames = traceback.extract_tb(err.__traceback__)
    return frames[-1].filename if frames else "?"


def assert_clear_error(module, arg, call):
    """`call()` must raise ValueError/TypeError naming `arg`, from inside flowjax."""
    _count(module, "invalid")
    try:
        call()
    except eqx.EquinoxRuntimeError as err:  # a compiled value check (flowjax._checks.error_if)
        assert f"`{arg}`" in str(err), f"invalid `{arg}`: the value check does not name it: {err}"
        _count(module, "clear")
        return
    except (ValueError, TypeError) as err:
        where = _last_frame(err)
        assert f"`{arg}`" in str(err), (
            f"invalid `{arg}`: the {type(err).__name__} does not name it: {err}")
        assert where.startswith(FLOWJAX_DIR), (
            f"invalid `{arg}`: raised outside flowjax, in {where}: {type(err).__name__}: {err}")
        _count(module, "clear")
        return
    except eqx.EquinoxRuntimeError as err:  # a compiled value check (flowjax._checks.error_if)
        assert f"`{arg}`" in str(err), (
            f"invalid `{arg}`: the compiled check does not name it: {err}")
        _count(module, "clear")
        return
    except Exception as err:  # noqa: BLE001 - any other type is a failure of the check
        pytest.fail(f"invalid `{arg}`: {type(err).__name__} (not ValueError/TypeError) from "
                    f"{_last_frame(err)}: {err}")
    pytest.fail(f"invalid `{arg}`: no error was raised")


def assert_finite(module, *outputs):
    _count(module, "valid")
    for leaf in jax.tree.leaves(outputs):
        assert np.all(np.isfinite(np.asarray(leaf))), f"non-finite output: {leaf}"
    _count(module, "finite")


# --------------------------------------------------------------------------
# Strategies: valid values and the ways to get each kind of argument wrong.
# --------------------------------------------------------------------------

KEY = jax.random.PRNGKey(0)
EDGES = (0.0, 1e-7, 1.0 - 1e-7, 1.0)


def floats_array(shape=(B, D), bound=100.0):
    return hnp.arrays(np.float32, shape, elements=st.floats(-bound, bound, width=32))


def times(shape=(B,)):
    """Times in [0, 1], the edges 0, 1e-7, 1 - 1e-7 and 1 included."""
    element = st.sampled_from(EDGES) | st.floats(0.0, 1.0, width=32)
    return hnp.arrays(np.float32, shape, elements=element)


NOT_ARRAYS = st.sampled_from([None, "x", {"a": 1.0}, 2.5, object()])
LISTS = st.just([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
WRONG_DTYPES = st.sampled_from([np.int32, np.uint8, np.bool_, np.complex64])


def _with_nonfinite(x, where, value):
    x = np.array(x, np.float32, copy=True)
    x.reshape(-1)[where % x.size] = value
    return x


def bad_array(shape=(B, D), *, mismatch=True, lists_ok=False, min_rank=1, rank=None,
              none_ok=False, nonfinite=True):
    """Invalid versions of a float array of `shape` (its first axis the batch).

    `nonfinite=False` for the path methods, which let a NaN propagate (a train
    step skips it) and check only types, ranks and shapes of their data.
    """
    shape = tuple(shape)
    options = [
        NOT_ARRAYS.filter(lambda v: v is not None) if none_ok else NOT_ARRAYS,
        WRONG_DTYPES.map(lambda dt: np.ones(shape, dt)),
        st.just(np.zeros((0,) + shape[1:], np.float32)),  # an empty batch
    ]
    if nonfinite:
        options.append(st.tuples(st.integers(0, 100), st.sampled_from(
            [np.nan, np.inf, -np.inf])).map(
                lambda a: _with_nonfinite(np.full(shape, 0.5, np.float32), *a)))
    if not lists_ok:
        options.append(LISTS)
    if min_rank >= 1:
        options.append(st.just(np.float32(0.5)))  # no batch axis
    if rank is not None:
        options.append(st.sampled_from([shape[:-1] or (1, 1), shape + (1,)]).map(
            lambda s: np.full(s, 0.5, np.float32)))
    if mismatch:  # another argument fixes the batch and the dimensions
        options.append(st.integers(1, 3).map(
            lambda k: np.full((shape[0] + k,) + shape[1:], 0.5, np.float32)))
        if len(shape) > 1:
            options.append(st.integers(1, 3).map(
                lambda k: np.full(shape[:-1] + (shape[-1] + k,), 0.5, np.float32)))
    return st.one_of(*options)


def _out_of_unit():
    return (st.floats(1.001, 1e30) | st.floats(-1e30, -1e-3)
            | st.sampled_from([np.nan, np.inf, -np.inf]))


def bad_time(batch=B, *, vector=True):
    """Invalid times: outside [0, 1], NaN/inf, wrong shape, wrong type."""
    options = [
        _out_of_unit(),
        st.tuples(st.integers(0, batch - 1), _out_of_unit()).map(
            lambda a: _with_nonfinite(np.full((batch,), 0.5, np.float32), *a)),
        st.sampled_from([None, "0.5", 0.5j, {"t": 0.5}, object()]),
    ]
    if vector:
        options.append(st.sampled_from([np.full((batch, 1), 0.5, np.float32),
                                        np.full((batch + 1,), 0.5, np.float32)]))
    return st.one_of(*options)


def bad_number(*, low=None, high=None, low_open=False, high_open=False, integer=False,
               none_ok=False, placeholders_ok=False):
    """Invalid scalar options: wrong type, non-finite, outside the bounds.

    `placeholders_ok`: a pytree field, which must accept None, booleans and
    bare objects (JAX and equinox rebuild pytrees with them as leaves).
    """
    wrong = [st.sampled_from(["1", [1.0], 1j] + ([] if placeholders_ok else [True, object()]))]
    if not (none_ok or placeholders_ok):
        wrong.append(st.just(None))
    if integer:
        wrong.append(st.sampled_from([2.5, float("nan"), np.float32(2.0)]))
    else:
        wrong.append(st.sampled_from([np.nan, np.inf, -np.inf]))
    if low is not None:
        below = st.floats(1e-3, 1e6).map(lambda d: low - d)
        if integer:
            below = st.integers(1, 100).map(lambda d: int(math.ceil(low)) - d)
        wrong.append(below if not low_open else below | st.just(type(low)(low)))
    if high is not None:
        above = st.floats(1e-3, 1e6).map(lambda d: high + d)
        if integer:
            above = st.integers(1, 100).map(lambda d: int(high) + d)
        wrong.append(above if not high_open else above | st.just(high))
    return st.one_of(*wrong)


BAD_CALLABLE = st.sampled_from([1, "f", [len], object()])
BAD_KEY = st.sampled_from([None, 0, "key", np.ones(2, np.float32), np.zeros(3, np.uint32),
                           np.zeros((2, 2), np.uint32)])
BAD_PATH = st.sampled_from([None, "RectifiedFlow", 1.0, Prediction.DATA, object(),
                            paths.RectifiedFlow])  # the class for an instance
BAD_PREDICTION = st.sampled_from(["velocity", 0, None, paths.RectifiedFlow()])
BAD_SHAPE = st.sampled_from([(-1,), "3", (2.5,), None, (True,), ((B,),)])
BAD_STEPS = bad_number(low=1, integer=True)


def bad_grid(length=5):
    """Invalid time grids: not increasing, outside [0, 1], NaN, too short, wrong rank or type."""
    return st.one_of(
        st.just(np.array([0.0, 0.6, 0.4, 1.0], np.float32)),
        st.just(np.array([0.0, 0.5, 0.5, 1.0], np.float32)),
        st.just(np.array([-0.5, 0.5, 1.0], np.float32)),
        st.just(np.array([0.0, 0.5, 1.5], np.float32)),
        st.just(np.array([0.0], np.float32)),
        st.just(np.full((2, 2), 0.5, np.float32)),
        st.tuples(st.integers(1, length - 2), st.sampled_from([np.nan, np.inf])).map(
            lambda a: _with_nonfinite(np.linspace(0, 1, length, dtype=np.float32), *a)),
        st.sampled_from(["0 1", object()]),
    )


# --------------------------------------------------------------------------
# A spec: a public function, valid arguments and the arguments to break.
# --------------------------------------------------------------------------


class Mutation(NamedTuple):
    arg: str  # the name the error must give, as the library writes it
    key: Any  # the keyword to replace, or a (keyword, item) pair for a dict argument
    values: st.SearchStrategy

    def __repr__(self):
        return f"Mutation({self.arg!r})"


class Spec(NamedTuple):
    name: str
    call: Callable[[dict], Any]
    valid: Callable[[], dict]
    mutations: tuple

    def __repr__(self):
        return f"Spec({self.name!r})"


def _replace(kwargs, key, value):
    kwargs = dict(kwargs)
    if isinstance(key, tuple):
        outer, inner = key
        sub = dict(kwargs[outer])
        if value is _DROP:
            sub.pop(inner, None)
        else:
            sub[inner] = value
        kwargs[outer] = sub
    else:
        kwargs[key] = value
    return kwargs


_DROP = object()  # removes a dict entry


def run_invalid(module, specs, max_examples):
    """Draws a spec, one of its arguments and a bad value for it, and checks the error.

    Then draws again among the (function, argument) pairs not drawn yet, so that
    every pair is exercised at least once (a few top-up rounds, deterministic).
    """
    flat = [(spec, m) for spec in specs for m in spec.mutations]
    drawn = set()

    def run(indices, examples):
        @settings(max_examples=examples, **SETTINGS)
        @given(data=st.data())
        def check(data):
            i = data.draw(st.sampled_from(indices), label="pair")
            spec, mutation = flat[i]
            bad = data.draw(mutation.values, label=f"bad `{mutation.arg}` of {spec.name}")
            kwargs = _replace(spec.valid(), mutation.key, bad)
            drawn.add(i)
            assert_clear_error(module, mutation.arg, lambda: spec.call(kwargs))

        check()

    run(list(range(len(flat))), max_examples)
    for _ in range(8):
        missing = [i for i in range(len(flat)) if i not in drawn]
        if not missing:
            break
        run(missing, 2 * len(missing))
    assert not [i for i in range(len(flat)) if i not in drawn], "pairs never drawn"
    counts = COUNTS[module]
    assert counts["clear"] == counts["invalid"] >= max_examples


# A linear "model" with one scalar parameter, for the losses and samplers.


def apply_fn(params, x, t, cond=None):
    return params * x + t[:, None]


def average_fn(params, x, r, t, cond=None):
    return params * x + (t - r)[:, None] + r[:, None]


def _wrong_shape(params, x, *times, cond=None):
    return x[:, :1]


# --------------------------------------------------------------------------
# flowjax.paths
# --------------------------------------------------------------------------

ALL_PATHS = (
    paths.RectifiedFlow(), paths.LipmanPath(0.01), paths.Cosine(), paths.VP(), paths.VE(),
    paths.Polynomial(3.0), paths.Polynomial(0.5), paths.CondOT(noise=paths.ConstantNoise(0.1)),
    paths.RectifiedFlow(noise=paths.BridgeNoise(0.7)), paths.Cosine(noise=paths.BridgeNoise(0.3)),
    paths.VP(noise=paths.ConstantNoise(0.05)),
)
NOISY = paths.RectifiedFlow(noise=paths.BridgeNoise(0.5))
X = np.linspace(-1.0, 1.0, B * D, dtype=np.float32).reshape(B, D)
T = np.array([0.0, 0.5, 1.0], np.float32)
SCHEDULES = ("alpha", "sigma", "d_alpha", "d_sigma", "gamma", "d_gamma", "sigma_total",
             "d_sigma_total")


def _pair_specs(method):
    def call(kw):
        return getattr(kw.pop("path"), method)(**kw)

    return [
        Spec(f"{method}", call, lambda: dict(path=paths.RectifiedFlow(), x0=X, x1=X + 1, t=T),
             (Mutation("x0", "x0", bad_array(nonfinite=False)),
              Mutation("x1", "x1", bad_array(nonfinite=False)),
              Mutation("t", "t", bad_time()),
              Mutation("z", "z", bad_array(none_ok=True, nonfinite=False)))),
        Spec(f"{method} (noisy)", call, lambda: dict(path=NOISY, x0=X, x1=X, t=0.3, z=X),
             (Mutation("z", "z", bad_array(nonfinite=False) | st.just(None)),
              Mutation("t", "t", bad_time()))),
    ]


PATH_SPECS = [
    *_pair_specs("interpolate"),
    *_pair_specs("velocity"),
    Spec("noise_target", lambda kw: NOISY.noise_target(**kw), lambda: dict(x0=X, t=T, z=X),
         (Mutation("x0", "x0", bad_array(mismatch=False, nonfinite=False)),
          Mutation("t", "t", bad_time()),
          Mutation("z", "z", bad_array(nonfinite=False) | st.just(None)))),
    *[Spec(f"{path!r}.{m}", lambda kw, p=path, m=m: getattr(p, m)(**kw), lambda: dict(t=T),
           (Mutation("t", "t", bad_time(vector=False)),))
      for path in (paths.RectifiedFlow(), paths.VP(), paths.Polynomial(0.5), NOISY)
      for m in SCHEDULES],
    Spec("convert", lambda kw: paths.convert(**kw),
         lambda: dict(path=paths.Cosine(), x_t=X, t=T, value=X, given=Prediction.DATA,
                      to=Prediction.VELOCITY),
         (Mutation("path", "path", BAD_PATH), Mutation("x_t", "x_t", bad_array(nonfinite=False)),
          Mutation("value", "value", bad_array(nonfinite=False)), Mutation("t", "t", bad_time()),
          Mutation("given", "given", BAD_PREDICTION), Mutation("to", "to", BAD_PREDICTION),
          Mutation("t_clip", "t_clip", bad_number(low=0.0, high=0.5, low_open=True,
                                                  high_open=True)))),
    *[Spec(name, lambda kw, f=f: f(**kw), lambda: dict(path=paths.VP(), t=T),
           (Mutation("path", "path", BAD_PATH), Mutation("t", "t", bad_time(vector=False)),
            Mutation("t_clip", "t_clip", bad_number(low=0.0, high=0.5, low_open=True,
                                                    high_open=True))))
      for name, f in (("noise_ratio", paths.noise_ratio), ("sde_diffusion", paths.sde_diffusion))],
    Spec("edm_scalings", lambda kw: paths.edm_scalings(**kw),
         lambda: dict(sigma=np.array([0.1, 1.0, 80.0], np.float32)),
         (Mutation("sigma", "sigma", st.sampled_from(
             [0.0, -1.0, np.nan, np.inf, None, "1", np.array([1.0, 0.0], np.float32)])),
          Mutation("sigma_data", "sigma_data", bad_number(low=0.0, low_open=True)))),
    Spec("edm_precondition", lambda kw: paths.edm_precondition(**kw),
         lambda: dict(apply_fn=apply_fn, path=paths.VP()),
         (Mutation("apply_fn", "apply_fn", BAD_CALLABLE),
          Mutation("path", "path", BAD_PATH),
          Mutation("sigma_data", "sigma_data", bad_number(low=0.0, low_open=True)),
          Mutation("t_clip", "t_clip", bad_number(low=0.0, high=0.5, low_open=True,
                                                  high_open=True)))),
    Spec("edm_precondition(...)(params, x, t)",
         lambda kw: paths.edm_precondition(kw.pop("apply_fn"), paths.VP())(**kw),
         lambda: dict(apply_fn=apply_fn, params=0.5, x=X, t=T),
         (Mutation("x", "x", bad_array(mismatch=False, nonfinite=False)),
          Mutation("t", "t", bad_time()),
          Mutation("apply_fn", "apply_fn", st.just(_wrong_shape)))),
    Spec("ConstantNoise", lambda kw: paths.ConstantNoise(**kw), lambda: dict(sigma=0.1),
         (Mutation("sigma", "sigma", bad_number(low=0.0, placeholders_ok=True)),)),
    Spec("BridgeNoise", lambda kw: paths.BridgeNoise(**kw), lambda: dict(sigma=0.1),
         (Mutation("sigma", "sigma", bad_number(low=0.0, placeholders_ok=True)),)),
    Spec("LipmanPath", lambda kw: paths.LipmanPath(**kw), lambda: dict(sigma_min=0.01),
         (Mutation("sigma_min", "sigma_min", st.floats(1.0, 1e6) | st.floats(-1e6, -1e-6)
                   | st.sampled_from(["0.1", np.nan, np.inf])),)),
    Spec("VP", lambda kw: paths.VP(**kw), lambda: dict(beta_min=0.1, beta_max=20.0),
         (Mutation("beta_min", "beta_min", st.floats(-1e6, -1e-6) | st.floats(20.001, 1e6)
                   | st.sampled_from(["0.1", np.nan, -np.inf])),
          Mutation("beta_max", "beta_max", st.floats(-1e6, 0.0999)
                   | st.sampled_from(["20", np.nan, np.inf])))),
    Spec("VE", lambda kw: paths.VE(**kw), lambda: dict(sigma_min=0.01, sigma_max=50.0),
         (Mutation("sigma_min", "sigma_min", st.floats(-1e6, 0.0) | st.floats(50.0, 1e6)
                   | st.sampled_from(["0.1", np.nan, np.inf])),
          Mutation("sigma_max", "sigma_max", st.floats(-1e6, 0.01)
                   | st.sampled_from(["50", np.nan, np.inf])))),
    Spec("Polynomial", lambda kw: paths.Polynomial(**kw), lambda: dict(n=2.0),
         (Mutation("n", "n", bad_number(low=0.0, low_open=True)),)),
    *[Spec(f"{cls.__name__}(noise=...)", lambda kw, c=cls: c(**kw), lambda: dict(noise=None),
           (Mutation("noise", "noise", st.sampled_from(["bridge", 0.1, 1, object(),
                                                        Prediction.DATA])),))
      for cls in (paths.RectifiedFlow, paths.LipmanPath, paths.Cosine, paths.Polynomial,
                  paths.VP, paths.VE)],
]


def test_fuzz_paths():
    run_invalid("paths", PATH_SPECS, max_examples=220)
    _fuzz_paths_valid()
    RAN.add("paths")


def _fuzz_paths_valid():
    ops = ("interpolate", "velocity", "noise_target", "convert", "noise_ratio",
           "sde_diffusion", "loss_weighting") + SCHEDULES

    @settings(max_examples=60, **SETTINGS)
    @given(path=st.sampled_from(ALL_PATHS), op=st.sampled_from(ops), x0=floats_array(),
           x1=floats_array(), z=floats_array(bound=5.0), t=times(),
           given_=st.sampled_from(list(Prediction)), to=st.sampled_from(list(Prediction)))
    def check(path, op, x0, x1, z, t, given_, to):
        z = None if path.noise is None else z
        if op in ("interpolate", "velocity"):
            out = getattr(path, op)(x0, x1, t, z)
        elif op == "noise_target":
            out = path.noise_target(x0, t, z)
        elif op == "convert":
            out = paths.convert(path, path.interpolate(x0, x1, t, z), t, x1, given=given_, to=to)
        elif op in ("noise_ratio", "sde_diffusion"):
            out = getattr(paths, op)(path, t)
            assert np.all(np.asarray(out) >= 0)
        elif op == "loss_weighting":
            out = losses.loss_weighting(path, given_, to)(t)
        else:
            out = getattr(path, op)(t)
        assert_finite("paths", out)

    check()


# --------------------------------------------------------------------------
# flowjax.time
# --------------------------------------------------------------------------

SAMPLERS = (ftime.Uniform(), ftime.LogitNormal(0.4, 1.0), ftime.Mode(1.29),
            ftime.Beta(2.0, 5.0), ftime.Shifted(ftime.Uniform(), 3.0))
BAD_SAMPLER = BAD_CALLABLE | st.sampled_from([ftime.LogitNormal, "uniform", len])


def _sampler_spec(name, sampler):
    return Spec(f"{name}(key, shape)", lambda kw: sampler(**kw),
                lambda: dict(key=KEY, shape=(B,)),
                (Mutation("key", "key", BAD_KEY), Mutation("shape", "shape", BAD_SHAPE)))


TIME_SPECS = [
    *[_sampler_spec(f"sampler{i}", s) for i, s in enumerate(SAMPLERS)],
    _sampler_spec("OrderedPairs", ftime.OrderedPairs()),
    _sampler_spec("EDMLogNormal", ftime.EDMLogNormal(paths.RectifiedFlow())),
    Spec("LogitNormal", lambda kw: ftime.LogitNormal(**kw), lambda: dict(loc=0.0, std=1.0),
         (Mutation("loc", "loc", bad_number() | st.just(KEY)),
          Mutation("std", "std", bad_number(low=0.0, low_open=True)))),
    Spec("Mode", lambda kw: ftime.Mode(**kw), lambda: dict(s=1.0),
         (Mutation("s", "s", bad_number(low=-1.0, high=2.0 / (math.pi - 2.0))),)),
    Spec("Beta", lambda kw: ftime.Beta(**kw), lambda: dict(a=1.0, b=2.0),
         (Mutation("a", "a", bad_number(low=0.0, low_open=True)),
          Mutation("b", "b", bad_number(low=0.0, low_open=True)))),
    Spec("shift_time", lambda kw: ftime.shift_time(**kw), lambda: dict(t=T, shift=3.0),
         (Mutation("t", "t", bad_time(vector=False)),
          Mutation("shift", "shift", bad_number(low=0.0, low_open=True)))),
    Spec("Shifted", lambda kw: ftime.Shifted(**kw),
         lambda: dict(sampler=ftime.Uniform(), shift=3.0),
         (Mutation("sampler", "sampler", BAD_SAMPLER | st.just(None)),
          Mutation("shift", "shift", bad_number(low=0.0, low_open=True)))),
    Spec("OrderedPairs", lambda kw: ftime.OrderedPairs(**kw),
         lambda: dict(sampler=None, equal_fraction=0.5),
         (Mutation("sampler", "sampler", BAD_SAMPLER),
          Mutation("equal_fraction", "equal_fraction", bad_number(low=0.0, high=1.0)))),
    Spec("uniform_grid", lambda kw: ftime.uniform_grid(**kw), lambda: dict(num_steps=4),
         (Mutation("num_steps", "num_steps", BAD_STEPS),)),
    Spec("shifted_grid", lambda kw: ftime.shifted_grid(**kw), lambda: dict(num_steps=4, shift=3.0),
         (Mutation("num_steps", "num_steps", BAD_STEPS),
          Mutation("shift", "shift", bad_number(low=0.0, low_open=True)))),
    Spec("time_of_noise_ratio", lambda kw: ftime.time_of_noise_ratio(**kw),
         lambda: dict(path=paths.VP(), ratio=np.array([0.5, 2.0], np.float32), iterations=8),
         (Mutation("path", "path", BAD_PATH),
          Mutation("ratio", "ratio", st.sampled_from([-1.0, np.nan, "1", None,
                                                      np.array([1.0, -0.5], np.float32)])),
          Mutation("iterations", "iterations", bad_number(low=1, integer=True)))),
    Spec("edm_sigmas", lambda kw: ftime.edm_sigmas(**kw), lambda: dict(num_steps=4),
         (Mutation("num_steps", "num_steps", BAD_STEPS),
          Mutation("sigma_min", "sigma_min", bad_number(low=0.0, high=80.0, low_open=True,
                                                        high_open=True)),
          Mutation("sigma_max", "sigma_max", bad_number(low=0.002, low_open=True)),
          Mutation("rho", "rho", bad_number(low=0.0, low_open=True)))),
    Spec("EDMLogNormal", lambda kw: ftime.EDMLogNormal(**kw), lambda: dict(path=paths.VP()),
         (Mutation("path", "path", BAD_PATH), Mutation("p_mean", "p_mean", bad_number()),
          Mutation("p_std", "p_std", bad_number(low=0.0, low_open=True)))),
    Spec("edm_grid", lambda kw: ftime.edm_grid(**kw),
         lambda: dict(num_steps=4, path=paths.RectifiedFlow(), sigma_min=0.002,
                      sigma_max=80.0, rho=7.0),
         (Mutation("num_steps", "num_steps", BAD_STEPS), Mutation("path", "path", BAD_PATH),
          Mutation("sigma_min", "sigma_min", bad_number(low=0.0, high=80.0, low_open=True,
                                                        high_open=True)),
          Mutation("sigma_max", "sigma_max", bad_number(low=0.002, low_open=True)),
          Mutation("rho", "rho", bad_number(low=0.0, low_open=True)))),
]


def test_fuzz_time():
    run_invalid("time", TIME_SPECS, max_examples=120)
    _fuzz_time_valid()
    RAN.add("time")


def _fuzz_time_valid():
    @settings(max_examples=40, **SETTINGS)
    @given(which=st.sampled_from([0, 1, 2, 4, len(SAMPLERS)]),  # beta's draws: test_time
           seed=st.integers(0, 2 ** 31 - 1),
           loc=st.floats(-3.0, 3.0), scale=st.floats(0.1, 3.0),
           shift=st.floats(0.1, 10.0), steps=st.sampled_from([1, 4]))
    def check(which, seed, loc, scale, shift, steps):
        key = jax.random.PRNGKey(seed)
        if which == len(SAMPLERS):
            t = ftime.LogitNormal(loc, scale)(key, (B,))
        else:
            t = SAMPLERS[which](key, (B,))
        grids = [ftime.uniform_grid(steps), ftime.shifted_grid(steps, shift)]
        sigmas = np.asarray(ftime.edm_sigmas(steps, rho=shift))
        assert sigmas[-1] == 0 and np.all(np.diff(sigmas) < 0)
        t = jnp.concatenate([t, ftime.EDMLogNormal(paths.VP(), loc, scale)(key, (B,))])
        assert np.all((np.asarray(t) >= 0) & (np.asarray(t) <= 1))
        for g in grids:
            g = np.asarray(g)
            assert g[0] == 0 and g[-1] == 1 and np.all(np.diff(g) > 0)
        assert_finite("time", t, grids, sigmas, ftime.shift_time(t, shift))

    check()


# --------------------------------------------------------------------------
# flowjax.couplings
# --------------------------------------------------------------------------

from ott.geometry.epsilon_scheduler import Epsilon  # noqa: E402
from ott.solvers.linear.acceleration import Momentum  # noqa: E402

SINKHORN = couplings.Sinkhorn(0.5, threshold=1e-2, max_iterations=50)
WARM = couplings.Sinkhorn(0.5, threshold=1e-2, max_iterations=50, warm_start=True)
LABELS = np.array([0, 1, 0], np.int32)


def _pair_mutations(x0="x0", x1="x1"):
    return (Mutation(x0, x0, bad_array()), Mutation(x1, x1, bad_array()))


COUPLING_SPECS = [
    *[Spec(f"{name}(key, x0, x1)", lambda kw, c=c: c(**kw),
           lambda: dict(key=KEY, x0=X, x1=X + 1.0),
           (Mutation("key", "key", BAD_KEY.filter(lambda k: k is not None)),
            *_pair_mutations()))
      for name, c in (("Independent", couplings.Independent()),
                      ("ExactOT", couplings.ExactOT()), ("Sinkhorn", SINKHORN))],
    Spec("Sinkhorn warm", lambda kw: WARM(**kw),
         lambda: dict(key=KEY, x0=X, x1=X + 1.0, state=None),
         (Mutation("state", "state", st.sampled_from(
             [1.0, "g", couplings.SinkhornPotentials(X, np.zeros(B + 1, np.float32)),
              couplings.SinkhornPotentials(np.ones((B, D + 1), np.float32),
                                           np.zeros(B, np.float32))])),)),
    Spec("ConditionAwareOT(key, x0, x1, cond)",
         lambda kw: couplings.ConditionAwareOT(None)(**kw),
         lambda: dict(key=KEY, x0=X, x1=X + 1.0, cond=LABELS),
         (Mutation("key", "key", BAD_KEY.filter(lambda k: k is not None)), *_pair_mutations(),
          Mutation("cond", "cond", st.sampled_from(
              [np.zeros(B + 1, np.int32), np.float32(0.0), None, "labels",
               np.zeros((B, 2), np.int32), np.array([0.5, 0.1, 0.2], np.float32)])))),
    Spec("ConditionAwareOT(weight)(..., cond)",
         lambda kw: couplings.ConditionAwareOT(1.0)(**kw),
         lambda: dict(key=KEY, x0=X, x1=X + 1.0, cond=np.ones((B, 2), np.float32)),
         (Mutation("cond", "cond", bad_array((B, 2), mismatch=False).filter(
             lambda c: not (isinstance(c, np.ndarray) and c.dtype.kind in "iub"))
                   | st.just(np.ones((B + 1, 2), np.float32))),)),
    Spec("Sinkhorn", lambda kw: couplings.Sinkhorn(**kw), lambda: dict(epsilon=0.1),
         (Mutation("epsilon", "epsilon", bad_number(low=0.0, low_open=True)),
          Mutation("threshold", "threshold", bad_number(low=0.0, low_open=True)),
          Mutation("max_iterations", "max_iterations", bad_number(low=1, integer=True)),
          Mutation("sample", "sample", st.sampled_from(["gumbel", None, 1])),
          Mutation("epsilon_schedule", "epsilon_schedule", st.sampled_from(
              ["anneal", 50.0, Epsilon, (50.0, 0.8)])),
          Mutation("epsilon_schedule.init", "epsilon_schedule", st.sampled_from(
              [Epsilon(0.1, init=0.5, decay=0.9), Epsilon(0.1, init=np.nan, decay=0.9)])),
          Mutation("epsilon_schedule.decay", "epsilon_schedule", st.sampled_from(
              [Epsilon(0.1, init=10.0, decay=0.0), Epsilon(0.1, init=10.0, decay=-0.5)])),
          Mutation("momentum", "momentum", st.sampled_from(["adaptive", "fast", 2.5, True,
                                                            Momentum])),
          Mutation("momentum.value", "momentum", st.sampled_from(
              [Momentum(value=2.5), Momentum(value=0.0), Momentum(value=np.nan)])),
          Mutation("momentum.start", "momentum", st.sampled_from(
              [Momentum(start=10), Momentum(start=-1), Momentum(start=2.5)])))),
    Spec("SchrodingerBridge", lambda kw: couplings.SchrodingerBridge(**kw),
         lambda: dict(sigma=1.0),
         (Mutation("sigma", "sigma", bad_number(low=0.0, low_open=True)),)),
    Spec("ConditionAwareOT", lambda kw: couplings.ConditionAwareOT(**kw),
         lambda: dict(weight=1.0),
         (Mutation("weight", "weight", bad_number(low=0.0, low_open=True, none_ok=True)),)),
    Spec("sinkhorn_plan", lambda kw: couplings.sinkhorn_plan(**kw),
         lambda: dict(x0=X, x1=X + 1.0, epsilon=0.5, max_iterations=50),
         (*_pair_mutations(), Mutation("epsilon", "epsilon", bad_number(low=0.0, low_open=True)),
          Mutation("threshold", "threshold", bad_number(low=0.0, low_open=True)),
          Mutation("max_iterations", "max_iterations", bad_number(low=1, integer=True)))),
    Spec("sq_distances", lambda kw: couplings.sq_distances(**kw),
         lambda: dict(x0=X, x1=X[:2]),
         (Mutation("x0", "x0", bad_array(mismatch=False)),
          Mutation("x1", "x1", bad_array(mismatch=False)),
          Mutation("x1", "x1", st.just(np.ones((B, D + 1), np.float32))))),
    Spec("renormalized_entropy", lambda kw: couplings.renormalized_entropy(**kw),
         lambda: dict(plan=np.full((B, B), 1.0 / B ** 2, np.float32)),
         (Mutation("plan", "plan", bad_array((B, B), mismatch=False, rank=2)
                   | st.just(-np.eye(B, dtype=np.float32))
                   | st.just(np.zeros((B, B), np.float32))),)),
]


def test_fuzz_couplings():
    run_invalid("couplings", COUPLING_SPECS, max_examples=120)
    _fuzz_couplings_valid()
    RAN.add("couplings")


def _fuzz_couplings_valid():
    pair = (couplings.Independent(), couplings.ExactOT())

    @settings(max_examples=30, **SETTINGS)
    @given(which=st.integers(0, 2), x0=floats_array(), x1=floats_array())
    def check(which, x0, x1):
        if which < 2:
            res = pair[which](KEY, x0, x1)
            assert sorted(map(tuple, np.asarray(res.x0))) == sorted(map(tuple, x0))
        else:
            res = couplings.ConditionAwareOT(None)(KEY, x0, x1, cond=LABELS)
        np.testing.assert_array_equal(res.x1, x1)  # x1 stays in place
        plan = np.abs(x0[:, :1] - x1[:, 0][None]) + 1e-3
        assert_finite("couplings", res.x0, res.cost, couplings.sq_distances(x0, x1),
                      couplings.renormalized_entropy(plan))

    check()


# --------------------------------------------------------------------------
# flowjax.losses
# --------------------------------------------------------------------------


def _batch_mutations(require_x0=False):
    x1 = bad_array(mismatch=False)
    x0 = bad_array() if not require_x0 else bad_array(none_ok=False)
    return (
        Mutation("batch", "batch", st.sampled_from([None, "x1", [X], {"x": X}, X])),
        Mutation("batch['x1']", ("batch", "x1"), x1),
        Mutation("batch['x0']", ("batch", "x0"), x0.filter(lambda v: v is not None)),
        Mutation("batch['cond']", ("batch", "cond"), st.sampled_from(
            [np.zeros(B + 1, np.int32), np.float32(0.0), "labels", {"c": np.zeros(B + 2)}])),
    )


class _At(ftime.AbstractTimeSampler):
    """Every time `t` (or every pair `(r, t)`)."""

    t: float
    r: float | None = None

    @property
    def pairs(self):
        return self.r is not None

    def _draw(self, key, shape):
        t = jnp.full(shape, self.t)
        return t if self.r is None else (jnp.full(shape, self.r), t)


BAD_TIME_SAMPLER = BAD_CALLABLE | st.sampled_from(
    [ftime.LogitNormal, ftime.Uniform, "uniform", lambda key, shape: jnp.full(shape, 0.5)])


def _common_mutations():
    return (
        Mutation("key", "key", BAD_KEY),
        Mutation("apply_fn", "apply_fn", BAD_CALLABLE | st.just(_wrong_shape)),
        Mutation("coupling", "coupling", BAD_CALLABLE | st.sampled_from(
            [lambda key, x0, x1: (x0, x1), couplings.ExactOT, "exact_ot"])),
        Mutation("path", "path", BAD_PATH.filter(lambda p: p is not None)),
    )


def _losses_valid(**extra):
    return lambda: dict(params=0.5, key=KEY, batch={"x1": X, "x0": X - 1.0}, **extra)


LOSS_SPECS = [
    Spec("cfm_loss", lambda kw: losses.cfm_loss(**kw),
         _losses_valid(apply_fn=apply_fn, path=paths.RectifiedFlow()),
         (*_common_mutations(), *_batch_mutations(),
          Mutation("time_sampler", "time_sampler", BAD_TIME_SAMPLER | st.just(
              ftime.OrderedPairs(ftime.Uniform()))),
          Mutation("prediction", "prediction", BAD_PREDICTION),  # SCORE is valid (DSM)
          Mutation("weighting", "weighting", BAD_CALLABLE),
          Mutation("cond_drop_prob", "cond_drop_prob", bad_number(low=0.0, high=1.0,
                                                                  high_open=True)))),
    Spec("meanflow_loss", lambda kw: losses.meanflow_loss(**kw),
         _losses_valid(apply_fn=average_fn),
         (*_common_mutations(), *_batch_mutations(),
          Mutation("time_sampler", "time_sampler", BAD_TIME_SAMPLER | st.sampled_from(
              [ftime.OrderedPairs, ftime.Uniform()])),
          Mutation("velocity_fn", "velocity_fn", BAD_CALLABLE),
          Mutation("weight_power", "weight_power", bad_number(low=0.0)),
          Mutation("weight_eps", "weight_eps", bad_number(low=0.0, low_open=True)),
          Mutation("guidance_scale", "guidance_scale", bad_number()),
          Mutation("guidance_mix", "guidance_mix", bad_number()),
          Mutation("cond_drop_prob", "cond_drop_prob", bad_number(low=0.0, high=1.0,
                                                                  high_open=True)))),
    Spec("shortcut_loss", lambda kw: losses.shortcut_loss(**kw),
         _losses_valid(apply_fn=average_fn, finest_steps=4),
         (*_common_mutations(), *_batch_mutations(),
          Mutation("time_sampler", "time_sampler", BAD_TIME_SAMPLER),
          Mutation("finest_steps", "finest_steps", bad_number(low=2, integer=True) | st.just(6)),
          Mutation("bootstrap_fraction", "bootstrap_fraction",
                   bad_number(low=0.0, high=1.0, high_open=True)))),
    Spec("reflow_loss", lambda kw: losses.reflow_loss(**kw), _losses_valid(apply_fn=apply_fn),
         (Mutation("key", "key", BAD_KEY),
          Mutation("apply_fn", "apply_fn", BAD_CALLABLE | st.just(_wrong_shape)),
          Mutation("batch", ("batch", "x0"), st.just(_DROP)),
          *_batch_mutations()[1:],
          Mutation("time_sampler", "time_sampler", BAD_TIME_SAMPLER))),
    Spec("cnf_mle_loss", lambda kw: losses.cnf_mle_loss(**kw),
         lambda: dict(params=0.5, key=KEY, batch={"x1": X}, apply_fn=apply_fn,
                      solver=diffrax.Euler(), num_steps=2),
         (Mutation("key", "key", BAD_KEY),
          Mutation("apply_fn", "apply_fn", BAD_CALLABLE | st.just(_wrong_shape)),
          *[m for m in _batch_mutations() if m.arg != "batch['x0']"],
          Mutation("batch['x0']", ("batch", "x0"), st.just(X)),  # no role in likelihood
          Mutation("num_probes", "num_probes", bad_number(low=1, integer=True, none_ok=True)),
          Mutation("probe", "probe", st.sampled_from(["gaussian", 1, None])),
          Mutation("solver", "solver", st.sampled_from(["dopri5", diffrax.Kvaerno5(), 1])),
          Mutation("num_steps", "num_steps", bad_number(low=1, integer=True)),
          Mutation("ts", "ts", bad_grid()),
          Mutation("adjoint", "adjoint", st.sampled_from(["backsolve", 1, diffrax.Dopri5()])),
          Mutation("source_log_prob", "source_log_prob", BAD_CALLABLE))),
    Spec("cnf_mle_loss adaptive", lambda kw: losses.cnf_mle_loss(**kw),
         lambda: dict(params=0.5, key=KEY, batch={"x1": X}, apply_fn=apply_fn),
         (Mutation("adaptive", "adaptive", st.sampled_from([1e-5, "dopri5", sample.Adaptive])),
          Mutation("solver", "solver", st.just(diffrax.Euler())))),
    Spec("meanflow_target", lambda kw: losses.meanflow_target(**kw),
         lambda: dict(apply_fn=average_fn, params=0.5, x=X, r=np.full(B, 0.2, np.float32),
                      t=np.array([0.2, 0.5, 1.0], np.float32), v=X),
         (Mutation("apply_fn", "apply_fn", BAD_CALLABLE | st.just(_wrong_shape)),
          Mutation("x", "x", bad_array(mismatch=False)), Mutation("v", "v", bad_array()),
          Mutation("r", "r", bad_time()), Mutation("t", "t", bad_time()),
          Mutation("r", "r", st.just(np.full(B, 0.9, np.float32))))),
    Spec("velocity_weighting", lambda kw: losses.velocity_weighting(**kw),
         lambda: dict(path=paths.RectifiedFlow(), prediction=Prediction.DATA),
         (Mutation("path", "path", BAD_PATH),
          Mutation("prediction", "prediction", BAD_PREDICTION),
          Mutation("t_clip", "t_clip", bad_number(low=0.0, high=0.5, low_open=True,
                                                  high_open=True)))),
    *[Spec(name, lambda kw, f=f: f(**kw),
           _losses_valid(apply_fn=apply_fn, path=paths.VP()),
           (*_common_mutations(), *_batch_mutations(),
            Mutation("weighting", "weighting", BAD_CALLABLE)))
      for name, f in (("noise_prediction_loss", losses.noise_prediction_loss),
                      ("dsm_loss", losses.dsm_loss))],
    Spec("classifier_loss", lambda kw: losses.classifier_loss(**kw),
         lambda: dict(params=0.5, key=KEY, batch={"x1": X, "cond": LABELS},
                      apply_fn=lambda p, x, t: p * x, path=paths.RectifiedFlow()),
         (Mutation("key", "key", BAD_KEY),
          Mutation("apply_fn", "apply_fn", BAD_CALLABLE | st.just(lambda p, x, t: x[:, 0])),
          Mutation("path", "path", BAD_PATH.filter(lambda p: p is not None)),
          Mutation("batch", "batch", st.sampled_from([None, "x1", {"x1": X}])),
          Mutation("batch['x1']", ("batch", "x1"), bad_array(mismatch=False)),
          Mutation("batch['cond']", ("batch", "cond"), st.sampled_from(
              [np.zeros(B + 1, np.int32), np.zeros(B, np.float32), "labels",
               np.zeros((B, 2), np.int32)])),
          Mutation("time_sampler", "time_sampler", BAD_TIME_SAMPLER))),
    Spec("loss_weighting", lambda kw: losses.loss_weighting(**kw),
         lambda: dict(path=paths.VP(), given=Prediction.NOISE, to=Prediction.DATA),
         (Mutation("path", "path", BAD_PATH), Mutation("given", "given", BAD_PREDICTION),
          Mutation("to", "to", BAD_PREDICTION),
          Mutation("t_clip", "t_clip", bad_number(low=0.0, high=0.5, low_open=True,
                                                  high_open=True)))),
    Spec("likelihood_weighting", lambda kw: losses.likelihood_weighting(**kw),
         lambda: dict(path=paths.VP()),
         (Mutation("path", "path", BAD_PATH),
          Mutation("prediction", "prediction", BAD_PREDICTION),
          Mutation("t_clip", "t_clip", bad_number(low=0.0, high=0.5, low_open=True,
                                                  high_open=True)))),
    Spec("edm_weighting", lambda kw: losses.edm_weighting(**kw), lambda: dict(path=paths.VP()),
         (Mutation("path", "path", BAD_PATH),
          Mutation("sigma_data", "sigma_data", bad_number(low=0.0, low_open=True)),
          Mutation("prediction", "prediction", BAD_PREDICTION),
          Mutation("t_clip", "t_clip", bad_number(low=0.0, high=0.5, low_open=True,
                                                  high_open=True)))),
    *[Spec(f"{name}(...)(t)", lambda kw, w=w: w(**kw), lambda: dict(t=T),
           (Mutation("t", "t", bad_time(vector=False)),))
      for name, w in (("likelihood_weighting", losses.likelihood_weighting(paths.VP())),
                      ("edm_weighting", losses.edm_weighting(paths.VP())))],
    Spec("velocity_weighting(...)(t)",
         lambda kw: losses.velocity_weighting(paths.Cosine(), Prediction.NOISE)(**kw),
         lambda: dict(t=T), (Mutation("t", "t", bad_time(vector=False)),)),
]


def test_fuzz_losses():
    run_invalid("losses", LOSS_SPECS, max_examples=120)
    _fuzz_losses_valid()
    RAN.add("losses")


def _fuzz_losses_valid():
    edge_times = st.sampled_from(EDGES + (0.5,))

    @settings(max_examples=30, **SETTINGS)
    @given(which=st.sampled_from(["cfm", "meanflow", "shortcut", "reflow"]),
           path=st.sampled_from([ALL_PATHS[0], ALL_PATHS[3], ALL_PATHS[-3]]),
           prediction=st.sampled_from(
               [Prediction.VELOCITY, Prediction.DATA, Prediction.NOISE]),
           x1=floats_array(), x0=floats_array(bound=5.0), t=edge_times, r=edge_times,
           params=st.floats(-2.0, 2.0), seed=st.integers(0, 2 ** 31 - 1))
    def check(which, path, prediction, x1, x0, t, r, params, seed):
        key, batch = jax.random.PRNGKey(seed), {"x1": x1, "x0": x0}
        at_t = _At(t)
        if which == "cfm":
            out = losses.cfm_loss(params, key, batch, apply_fn=apply_fn, path=path,
                                  time_sampler=at_t, prediction=prediction,
                                  weighting=losses.velocity_weighting(path, prediction))
        elif which == "meanflow":
            pairs = _At(max(r, t), min(r, t))
            out = losses.meanflow_loss(params, key, batch, apply_fn=average_fn, path=path,
                                       time_sampler=pairs)
        elif which == "shortcut":
            out = losses.shortcut_loss(params, key, batch, apply_fn=average_fn, path=path,
                                       time_sampler=at_t, finest_steps=4)
        else:
            out = losses.reflow_loss(params, key, batch, apply_fn=apply_fn, time_sampler=at_t)
        assert_finite("losses", out)

    check()


# --------------------------------------------------------------------------
# flowjax.sample
# --------------------------------------------------------------------------


def _linear(scale, x, t):
    return scale * x + t[:, None]


field = jax.tree_util.Partial(_linear, 0.5)  # a pytree field: one compilation per solver
flow_map = sample.ModelFlowMap(average_fn, 0.5)


def _wrong_field(x, t):
    return x[:, :1]


def _wrong_flow_map(x, r, t):
    return x[:, :1]


def _old_style_field(x, t, args):  # the `velocity_fn(x, t, args)` of earlier versions
    return x


GRID = np.array([0.0, 1e-7, 0.5, 1.0 - 1e-7, 1.0], np.float32)
BAD_FIELD = BAD_CALLABLE | st.sampled_from([_wrong_field, _old_style_field,
                                             sample.ModelVelocity])
BAD_FLOW_MAP = BAD_CALLABLE | st.sampled_from([_wrong_flow_map, _wrong_field])
BAD_ODE_SOLVER = st.sampled_from(["dopri5", diffrax.Kvaerno5(), 1])
BAD_SDE_SOLVER = st.sampled_from(["euler", diffrax.Dopri5(), 1])
BAD_ADAPTIVE = st.sampled_from([1e-5, "dopri5", (1e-5, 1e-5), sample.Adaptive])
BAD_DIFFUSION = BAD_CALLABLE | st.sampled_from([None, "constant", sample.ConstantDiffusion])
BAD_INTERVAL = st.sampled_from([(0.5, 0.2), (-0.1, 0.5), (0.0, 1.5), (np.nan, 1.0), (0.1,),
                                "0 1", None, (0.1, 0.2, 0.3)])
POSITIVE = bad_number(low=0.0, low_open=True)
LABELS = np.zeros(B, np.int32)


def _field_spec(name, call, valid, field_arg="field", x_arg="x0", extra=(), bad=BAD_FIELD):
    return Spec(name, call, valid,
                (Mutation(field_arg, field_arg, bad),
                 Mutation(x_arg, x_arg, bad_array(mismatch=False)), *extra))


def _grid_spec(name, call, valid):
    """The same sampler on a user grid `ts`, with bad grids."""
    return Spec(name + " ts", call, lambda: dict(valid(), ts=GRID),
                (Mutation("ts", "ts", bad_grid()),))


def _ode(**fixed):
    return lambda kw: sample.solve_ode(**kw, **fixed)


SAMPLE_SPECS = [
    _field_spec("solve_ode", _ode(), lambda: dict(field=field, x0=X, solver=diffrax.Euler(),
                                                  num_steps=2),
                extra=(Mutation("solver", "solver", BAD_ODE_SOLVER),
                       Mutation("num_steps", "num_steps", BAD_STEPS),
                       Mutation("t0", "t0", bad_number(low=0.0, high=1.0) | st.just(1.0)),
                       Mutation("t1", "t1", bad_number(low=0.0, high=1.0) | st.just(0.0)),
                       Mutation("num_save", "num_save", bad_number(low=2, integer=True)))),
    _grid_spec("solve_ode", _ode(), lambda: dict(field=field, x0=X, solver=diffrax.Euler())),
    Spec("solve_ode adaptive", _ode(), lambda: dict(field=field, x0=X),
         (Mutation("adaptive", "adaptive", BAD_ADAPTIVE),
          Mutation("solver", "solver", st.just(diffrax.Euler())))),
    Spec("Adaptive", lambda kw: sample.Adaptive(**kw),
         lambda: dict(rtol=1e-5, atol=1e-5, max_steps=16),
         (Mutation("rtol", "rtol", POSITIVE), Mutation("atol", "atol", POSITIVE),
          Mutation("max_steps", "max_steps", BAD_STEPS))),
    _field_spec("solve_ode DPMSolver2M", _ode(solver=sample.DPMSolver2M(paths.VP())),
                lambda: dict(field=field, x0=X, ts=GRID),
                extra=(Mutation("ts", "ts", bad_grid()),
                       Mutation("adaptive", "adaptive", st.just(sample.Adaptive())))),
    Spec("DPMSolver2M", lambda kw: sample.DPMSolver2M(**kw), lambda: dict(path=paths.VP()),
         (Mutation("path", "path", BAD_PATH),
          Mutation("prediction", "prediction", BAD_PREDICTION))),
    _field_spec("solve_ode EDMHeun", _ode(solver=sample.EDMHeun(paths.VP(), sigma_max=10.0)),
                lambda: dict(field=field, x0=X, ts=ftime.edm_grid(2, paths.VP(),
                                                                  sigma_max=10.0)),
                extra=(Mutation("ts", "ts", bad_grid()),)),
    Spec("EDMHeun", lambda kw: sample.EDMHeun(**kw),
         lambda: dict(path=paths.VP(), prediction=Prediction.DATA, sigma_max=10.0),
         (Mutation("path", "path", BAD_PATH),
          Mutation("prediction", "prediction", BAD_PREDICTION),
          Mutation("sigma_max", "sigma_max", POSITIVE))),
    _field_spec("solve_sde", lambda kw: sample.solve_sde(**kw),
                lambda: dict(field=field, x0=X, key=KEY, path=paths.Cosine(),
                             diffusion=sample.ConstantDiffusion(0.5), ts=GRID),
                extra=(Mutation("key", "key", BAD_KEY), Mutation("path", "path", BAD_PATH),
                       Mutation("diffusion", "diffusion", BAD_DIFFUSION),
                       Mutation("ts", "ts", bad_grid()),
                       Mutation("num_steps", "ts", st.just(None)),
                       Mutation("solver", "solver", BAD_SDE_SOLVER),
                       Mutation("prediction", "prediction", BAD_PREDICTION))),
    _field_spec("log_likelihood", lambda kw: sample.log_likelihood(**kw),
                lambda: dict(field=field, x1=X, solver=diffrax.Euler(), num_steps=2),
                x_arg="x1",
                extra=(Mutation("num_steps", "num_steps", BAD_STEPS),
                       Mutation("num_probes", "num_probes", bad_number(low=1, integer=True,
                                                                       none_ok=True)),
                       Mutation("probe", "probe", st.sampled_from(["gaussian", 1, None])),
                       Mutation("source_log_prob", "source_log_prob", BAD_CALLABLE),
                       Mutation("solver", "solver", BAD_ODE_SOLVER))),
    _grid_spec("log_likelihood", lambda kw: sample.log_likelihood(**kw),
               lambda: dict(field=field, x1=X, solver=diffrax.Euler())),
    Spec("log_likelihood probes", lambda kw: sample.log_likelihood(**kw),
         lambda: dict(field=field, x1=X, solver=diffrax.Euler(), num_steps=2,
                      num_probes=2, key=KEY),
         (Mutation("key", "key", BAD_KEY),)),
    Spec("log_likelihood adaptive", lambda kw: sample.log_likelihood(**kw),
         lambda: dict(field=field, x1=X), (Mutation("adaptive", "adaptive", BAD_ADAPTIVE),)),
    _field_spec("solve_flow_map", lambda kw: sample.solve_flow_map(**kw),
                lambda: dict(flow_map=flow_map, x0=X, num_steps=2), field_arg="flow_map",
                # num_steps=None with no ts is the default single jump, not an error
                extra=(Mutation("num_steps", "num_steps",
                                bad_number(low=1, integer=True, none_ok=True)),),
                bad=BAD_FLOW_MAP),
    _grid_spec("solve_flow_map", lambda kw: sample.solve_flow_map(**kw),
               lambda: dict(flow_map=flow_map, x0=X)),
    _field_spec("reflow_pairs", lambda kw: sample.reflow_pairs(**kw),
                lambda: dict(field=field, x0=X, solver=diffrax.Euler(), num_steps=2),
                extra=(Mutation("chunk_size", "chunk_size", bad_number(low=1, integer=True,
                                                                       none_ok=True)),
                       Mutation("num_steps", "num_steps", BAD_STEPS))),
    Spec("standard_normal_log_prob", lambda kw: sample.standard_normal_log_prob(**kw),
         lambda: dict(x=X), (Mutation("x", "x", bad_array(mismatch=False)),)),
    Spec("bits_per_dim", lambda kw: sample.bits_per_dim(**kw),
         lambda: dict(log_prob=np.zeros(B, np.float32), shape=(D,)),
         (Mutation("log_prob", "log_prob", bad_array((B,), mismatch=False, min_rank=0)),
          Mutation("shape", "shape", BAD_SHAPE | st.just((0,))),
          Mutation("num_bins", "num_bins", bad_number(low=1, integer=True)),
          Mutation("data_range", "data_range", POSITIVE))),
    Spec("ModelVelocity", lambda kw: sample.ModelVelocity(**kw),
         lambda: dict(apply_fn=apply_fn, params=0.5, path=paths.VP(),
                      prediction=Prediction.DATA),
         (Mutation("apply_fn", "apply_fn", BAD_CALLABLE),
          Mutation("path", "path", BAD_PATH | st.just(paths.RectifiedFlow)),
          Mutation("prediction", "prediction", BAD_PREDICTION))),
    Spec("ModelFlowMap", lambda kw: sample.ModelFlowMap(**kw),
         lambda: dict(apply_fn=average_fn, params=0.5),
         (Mutation("apply_fn", "apply_fn", BAD_CALLABLE),)),
    Spec("evaluations_per_step", lambda kw: sample.evaluations_per_step(**kw),
         lambda: dict(solver=diffrax.Euler()), (Mutation("solver", "solver", BAD_ODE_SOLVER),)),
    Spec("ClassifierFreeGuidance", lambda kw: sample.ClassifierFreeGuidance(**kw),
         lambda: dict(apply_fn=apply_fn, params=0.5, cond=LABELS, null_cond=1,
                      guidance_scale=2.0),
         (Mutation("apply_fn", "apply_fn", BAD_CALLABLE),
          Mutation("guidance_scale", "guidance_scale", bad_number()),
          Mutation("interval", "interval", BAD_INTERVAL),
          Mutation("path", "path", BAD_PATH.filter(lambda p: p is not None)),
          Mutation("prediction", "prediction", BAD_PREDICTION))),
    Spec("ClassifierGuidance", lambda kw: sample.ClassifierGuidance(**kw),
         lambda: dict(field=field, classifier_fn=lambda p, x, t: x, classifier_params=None,
                      labels=LABELS, path=paths.VP(), guidance_scale=2.0),
         (Mutation("field", "field", BAD_FIELD.filter(lambda f: f is not _wrong_field)),
          Mutation("classifier_fn", "classifier_fn", BAD_CALLABLE),
          Mutation("path", "path", BAD_PATH),
          Mutation("guidance_scale", "guidance_scale", bad_number()),
          Mutation("interval", "interval", BAD_INTERVAL))),
    Spec("ReverseDiffusion", lambda kw: sample.ReverseDiffusion(**kw),
         lambda: dict(path=paths.VP(), factor=1.0),
         (Mutation("path", "path", BAD_PATH), Mutation("factor", "factor", bad_number(low=0.0)))),
    Spec("ConstantDiffusion", lambda kw: sample.ConstantDiffusion(**kw),
         lambda: dict(g=1.0), (Mutation("g", "g", bad_number(low=0.0)),)),
    Spec("SigmaDiffusion", lambda kw: sample.SigmaDiffusion(**kw),
         lambda: dict(path=paths.VP(), factor=1.0),
         (Mutation("path", "path", BAD_PATH), Mutation("factor", "factor", bad_number(low=0.0)))),
    Spec("VanishingDiffusion", lambda kw: sample.VanishingDiffusion(**kw),
         lambda: dict(g=1.0, power=1.0),
         (Mutation("g", "g", bad_number(low=0.0)), Mutation("power", "power", POSITIVE))),
]


def test_fuzz_sample():
    run_invalid("sample", SAMPLE_SPECS, max_examples=170)
    _fuzz_sample_valid()
    RAN.add("sample")


def _fuzz_sample_valid():
    solvers = (diffrax.Euler(), diffrax.Heun())

    @settings(max_examples=20, **SETTINGS)
    @given(x0=floats_array(bound=10.0), scale=st.floats(-2.0, 2.0, width=32),
           which=st.sampled_from(["ode", "ode_grid", "flow_map", "log_prob"]),
           solver=st.sampled_from(solvers),
           steps=st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4))
    def check(x0, scale, which, solver, steps):
        scale = np.float32(scale)
        grid = np.concatenate([[0.0], np.cumsum(steps)[:-1] / np.sum(steps), [1.0]])
        velocity = jax.tree_util.Partial(_linear, scale)
        if which == "ode":
            out = sample.solve_ode(velocity, x0, solver=solver, num_steps=2)
        elif which == "ode_grid":
            out = sample.solve_ode(velocity, x0, solver=solver, ts=grid)
        elif which == "flow_map":
            out = sample.solve_flow_map(sample.ModelFlowMap(average_fn, scale), x0, ts=grid)
        else:
            out = sample.standard_normal_log_prob(x0), sample.bits_per_dim(
                sample.standard_normal_log_prob(x0), (D,))
        assert_finite("sample", out)

    check()


# --------------------------------------------------------------------------
# flowjax.metrics, flowjax.analytic, flowjax.data
# --------------------------------------------------------------------------

TRAJ = np.stack([X, X + 0.5, X + 1.0])  # [T, B, D]
TS3 = np.array([0.0, 0.5, 1.0], np.float32)
FEATS = np.linspace(-1.0, 1.0, 4 * D, dtype=np.float32).reshape(4, D) ** 3

METRIC_SPECS = [
    Spec("w2", lambda kw: metrics.w2(**kw), lambda: dict(x=X, y=X + 1.0),
         (Mutation("x", "x", bad_array()), Mutation("y", "y", bad_array()))),
    Spec("path_energy", lambda kw: metrics.path_energy(**kw),
         lambda: dict(velocities=TRAJ, ts=TS3),
         (Mutation("velocities", "velocities", bad_array(TRAJ.shape, mismatch=False)
                   | st.just(np.concatenate([TRAJ, TRAJ[:1]]))),
          Mutation("ts", "ts", bad_grid(3) | st.just(np.array([0.0, 1.0], np.float32))))),
    Spec("normalized_path_energy", lambda kw: metrics.normalized_path_energy(**kw),
         lambda: dict(velocities=TRAJ, ts=TS3, w2_squared=1.0),
         (Mutation("w2_squared", "w2_squared", bad_number(low=0.0, low_open=True)),
          Mutation("velocities", "velocities", NOT_ARRAYS))),
    Spec("straightness", lambda kw: metrics.straightness(**kw),
         lambda: dict(trajectory=TRAJ, velocities=TRAJ, ts=TS3),
         (Mutation("trajectory", "trajectory", bad_array(TRAJ.shape, mismatch=False, rank=3)
                   .filter(lambda v: not (isinstance(v, np.ndarray) and v.ndim == 4
                                          and v.shape[0] == 3))),
          Mutation("velocities", "velocities", bad_array(TRAJ.shape)),
          Mutation("ts", "ts", bad_grid(3) | st.just(np.array([0.0, 1.0], np.float32))))),
    *[Spec(name, lambda kw, f=f: f(**kw), lambda: dict(feats_a=FEATS, feats_b=FEATS + 1.0),
           (Mutation("feats_a", "feats_a", bad_array(FEATS.shape, rank=2)
                     .filter(lambda v: not (isinstance(v, np.ndarray) and v.ndim == 2
                                            and v.shape[1] == D))
                     | st.just(FEATS[:1])),
            Mutation("feats_b", "feats_b", bad_array(FEATS.shape, rank=2)
                     .filter(lambda v: not (isinstance(v, np.ndarray) and v.ndim == 2
                                            and v.shape[1] == D))),
            *extra))
      for name, f, extra in (
          ("frechet_distance", metrics.frechet_distance, ()),
          ("kernel_distance", functools.partial(metrics.kernel_distance, num_subsets=2,
                                                key=jax.random.key(0)),
           (Mutation("subset_size", "subset_size", bad_number(low=2, integer=True)),)),
      )],
    Spec("kernel_distance", lambda kw: metrics.kernel_distance(**kw),
         lambda: dict(feats_a=FEATS, feats_b=FEATS, key=jax.random.key(0)),
         (Mutation("num_subsets", "num_subsets", bad_number(low=1, integer=True)),
          Mutation("key", "key", st.sampled_from([None, 0, "0", 1.5, np.zeros(3, np.uint32)])))),
]

MIX = analytic.GaussianMixture.create(np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32),
                                      np.stack([np.eye(D, dtype=np.float32) * 0.5] * 2))
MEAN, COV = np.array([1.0, -1.0], np.float32), np.array([[0.5, 0.1], [0.1, 0.3]], np.float32)
BAD_COV = st.sampled_from([np.ones((D, D + 1), np.float32), np.eye(D + 1, dtype=np.float32),
                           np.array([[1.0, 0.5], [0.0, 1.0]], np.float32),  # not symmetric
                           np.array([[1.0, 0.0], [0.0, -1.0]], np.float32),  # not PSD
                           np.array([[np.nan, 0.0], [0.0, 1.0]], np.float32), None, "cov"])
BAD_MIXTURE = st.sampled_from([None, "mix", {"means": MEAN}, MEAN,
                               analytic.GaussianMixture.gaussian(np.zeros(D + 1, np.float32),
                                                                 np.eye(D + 1, dtype=np.float32))])

ANALYTIC_SPECS = [
    Spec("GaussianMixture.create", lambda kw: analytic.GaussianMixture.create(**kw),
         lambda: dict(means=np.array(MIX.means), covs=np.array(MIX.covs)),
         (Mutation("means", "means", bad_array((2, D), mismatch=False, rank=2, lists_ok=True)),
          Mutation("covs", "covs", BAD_COV.map(lambda c: c if not hasattr(c, "shape")
                                               else np.stack([c, c]))),
          Mutation("weights", "weights", st.sampled_from(
              [np.array([1.0, -1.0], np.float32), np.zeros(2, np.float32), np.ones(3),
               np.array([np.nan, 1.0]), "w"])))),
    Spec("GaussianMixture.gaussian", lambda kw: analytic.GaussianMixture.gaussian(**kw),
         lambda: dict(mean=MEAN, cov=COV),
         (Mutation("mean", "mean", st.sampled_from([None, "m", np.float32(1.0),
                                                    np.array([np.inf, 0.0], np.float32)])),
          Mutation("cov", "cov", BAD_COV))),
    Spec("GaussianMixture.empirical", lambda kw: analytic.GaussianMixture.empirical(**kw),
         lambda: dict(points=X),
         (Mutation("points", "points", bad_array(mismatch=False, rank=2, lists_ok=True)),)),
    Spec("GaussianMixture.sample", lambda kw: MIX.sample(**kw), lambda: dict(key=KEY, n=B),
         (Mutation("key", "key", BAD_KEY), Mutation("n", "n", BAD_STEPS))),
    *[Spec(f.__name__, lambda kw, f=f: f(**kw),
           lambda: dict(path=paths.VP(), mixture=MIX, x=X, t=T),
           (Mutation("path", "path", BAD_PATH), Mutation("mixture", "mixture", BAD_MIXTURE),
            Mutation("x", "x", bad_array(mismatch=False, rank=2)),
            Mutation("t", "t", bad_time())))
      for f in (analytic.mixture_velocity, analytic.mixture_score, analytic.mixture_log_prob)],
    Spec("gaussian_flow_map", lambda kw: analytic.gaussian_flow_map(**kw),
         lambda: dict(path=paths.Cosine(), mean=MEAN, cov=COV, x0=X, t=T),
         (Mutation("path", "path", BAD_PATH), Mutation("mean", "mean", st.sampled_from(
             [None, np.zeros(D + 1, np.float32), np.array([np.nan, 0.0])])),
          Mutation("cov", "cov", BAD_COV), Mutation("x0", "x0", bad_array(mismatch=False, rank=2)),
          Mutation("t", "t", bad_time()))),
    Spec("gaussian_average_velocity", lambda kw: analytic.gaussian_average_velocity(**kw),
         lambda: dict(path=paths.Cosine(), mean=MEAN, cov=COV, x=X,
                      r=np.zeros(B, np.float32), t=T),
         (Mutation("path", "path", BAD_PATH), Mutation("mean", "mean", st.sampled_from(
             [None, np.zeros(D + 1, np.float32)])),
          Mutation("cov", "cov", BAD_COV), Mutation("x", "x", bad_array(mismatch=False, rank=2)),
          Mutation("r", "r", bad_time() | st.just(np.ones(B, np.float32))),
          Mutation("t", "t", bad_time()))),
]

IMAGES = np.zeros((4, 2, 2, 1), np.uint8)
TOYS = (data.standard_normal, data.eight_gaussians, data.moons, data.circles, data.swissroll,
        data.scurve, data.two_spirals, data.checkerboard, data.from_array(X))

DATA_SPECS = [
    *[Spec(f"{getattr(f, '__name__', 'from_array')}(key, n)", lambda kw, f=f: f(**kw),
           lambda: dict(key=KEY, n=B),
           (Mutation("key", "key", BAD_KEY), Mutation("n", "n", BAD_STEPS)))
      for f in TOYS],
    Spec("standard_normal", lambda kw: data.standard_normal(**kw),
         lambda: dict(key=KEY, n=B, dim=D), (Mutation("dim", "dim", BAD_STEPS),)),
    *[Spec(f"{f.__name__}({arg})", lambda kw, f=f: f(**kw), lambda: dict(key=KEY, n=B),
           (Mutation(arg, arg, bad_number(low=0.0)),))
      for f, arg in ((data.eight_gaussians, "radius"), (data.eight_gaussians, "std"),
                     (data.moons, "noise"), (data.circles, "noise"), (data.swissroll, "noise"),
                     (data.scurve, "noise"), (data.two_spirals, "noise"))],
    Spec("from_array", lambda kw: data.from_array(**kw), lambda: dict(data=X),
         (Mutation("data", "data", bad_array(mismatch=False, lists_ok=True)),)),
    Spec("ArraySource", lambda kw: data.ArraySource(**kw),
         lambda: dict(images=IMAGES, labels=np.zeros(4, np.int32)),
         (Mutation("images", "images", st.sampled_from(
             [IMAGES.astype(np.float32), IMAGES[0], None, "images", IMAGES[:0]])),
          Mutation("labels", "labels", st.sampled_from(
              [np.zeros(3, np.int32), None, np.zeros((4, 2), np.int32),
               np.full(4, 0.5, np.float32)])))),
    Spec("ImagePipeline", lambda kw: data.ImagePipeline(**kw),
         lambda: dict(source=data.ArraySource(IMAGES, np.zeros(4, np.int32)), batch_size=2,
                      process_index=0, process_count=1),
         (Mutation("source", "source", st.sampled_from([None, 1, "mnist", IMAGES[0, 0, 0]])),
          Mutation("batch_size", "batch_size", bad_number(low=1, high=4, integer=True)),
          Mutation("process_index", "process_index", st.sampled_from([-1, 1, "0", 0.5])),
          Mutation("process_count", "process_count", st.sampled_from([0, -2, "1", 1.5])),
          Mutation("seed", "seed", st.sampled_from([None, "0", 1.5, -1])))),
    Spec("digits_source", lambda kw: data.digits_source(**kw), lambda: dict(split="train"),
         (Mutation("split", "split", st.sampled_from(["validation", None, 0])),
          Mutation("num_test", "num_test", bad_number(low=1, high=1796, integer=True)))),
    Spec("tfds_source", lambda kw: data.tfds_source(**kw), lambda: dict(name="mnist"),
         (Mutation("name", "name", st.sampled_from([None, 1, ["mnist"]])),
          Mutation("split", "split", st.sampled_from([None, 0])),
          Mutation("data_dir", "data_dir", st.sampled_from([1, ["dir"]])))),
]


def test_fuzz_metrics():
    run_invalid("metrics", METRIC_SPECS, max_examples=100)

    @settings(max_examples=30, **SETTINGS)
    @given(x=floats_array(), y=floats_array(), feats=floats_array((5, D), bound=10.0))
    def check(x, y, feats):
        velocities = np.stack([x, y, x])
        assert_finite("metrics", metrics.w2(x, y), metrics.path_energy(velocities, TS3),
                      metrics.straightness(velocities, velocities, TS3),
                      metrics.frechet_distance(feats, feats + 1.0),
                      metrics.kernel_distance(feats, feats, key=KEY, num_subsets=2,
                                              subset_size=3))

    check()
    RAN.add("metrics")


def test_fuzz_analytic():
    run_invalid("analytic", ANALYTIC_SPECS, max_examples=120)

    empirical = analytic.GaussianMixture.empirical(X)  # singular: the hardest case at t = 1

    @jax.jit  # one compilation per path (eager, the batched linear algebra compiles op by op)
    def fields(path, x, r, t):
        return (analytic.mixture_velocity(path, empirical, x, t),
                analytic.mixture_score(path, empirical, x, t),
                analytic.mixture_log_prob(path, MIX, x, t),
                analytic.gaussian_flow_map(path, MEAN, COV, x, t),
                analytic.gaussian_average_velocity(path, MEAN, COV, x, r, t))

    @settings(max_examples=20, **SETTINGS)
    @given(path=st.sampled_from([paths.RectifiedFlow(), paths.VP()]),
           x=floats_array(bound=10.0), t=times(), r=times())
    def check(path, x, t, r):
        assert_finite("analytic", fields(path, x, np.minimum(r, t), np.maximum(r, t)))

    check()
    RAN.add("analytic")


def test_fuzz_data():
    run_invalid("data", DATA_SPECS, max_examples=100)

    @settings(max_examples=20, **SETTINGS)
    @given(which=st.sampled_from(TOYS), seed=st.integers(0, 2 ** 31 - 1))
    def check(which, seed):
        out = which(jax.random.PRNGKey(seed), B)
        assert out.shape == (B, D)
        assert_finite("data", out)

    check()
    RAN.add("data")


def test_fuzz_totals(tmp_path_factory):
    """At least 1,000 generated cases, a clear error for every invalid one (run last)."""
    missing = [name for name in FUZZ_TESTS if name not in RAN]
    if missing:
        pytest.skip(f"the fuzz tests of {missing} did not run in this process")
    total = {field: sum(c[field] for c in COUNTS.values())
             for field in ("invalid", "clear", "valid", "finite")}
    figures = {"cases": total["invalid"] + total["valid"], **total,
               "clear_error_share": total["clear"] / total["invalid"], "per_module": COUNTS}
    path = tmp_path_factory.getbasetemp() / "fuzz_counts.json"
    path.write_text(json.dumps(figures, indent=1))
    print(f"\nfuzz figures ({path}): {json.dumps(figures)}")
    assert figures["cases"] >= 1000
    assert total["clear"] == total["invalid"]
    assert total["finite"] == total["valid"]
