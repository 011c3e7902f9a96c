"""Argument checks shared by the public functions.

Two kinds of check, both safe inside `jax.jit`, `vmap` and `grad`:

- Structural checks (types, ranks, shapes, dtypes, a factory passed uncalled,
  a class passed instead of an instance, a string where an object belongs)
  run in Python once per call, at trace time, and cost nothing afterwards.
- Value checks (`t` in [0, 1], finiteness, label ranges) are compiled into the
  program with :func:`equinox.error_if`: no host copy, eager or jitted. They
  return the checked array, and only a value that flows on from that return
  is checked. They are on by default; :func:`set_value_checks` (or the
  environment variable ``FLOWJAX_VALUE_CHECKS=0``) leaves them out of programs
  traced afterwards.
"""

from __future__ import annotations

import contextlib
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_value_checks = os.environ.get("FLOWJAX_VALUE_CHECKS", "1").strip().lower() not in (
    "0", "false", "off", "no")


def set_value_checks(enabled: bool) -> None:
    """Turns the compiled value checks on or off for programs traced from now on.

    Programs already compiled keep the setting they were traced with.
    """
    global _value_checks
    if not isinstance(enabled, bool):
        raise TypeError(f"`enabled` must be a bool, got {enabled!r}.")
    _value_checks = enabled


def value_checks_enabled() -> bool:
    """Whether value checks are compiled into newly traced programs."""
    return _value_checks


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Context manager form of :func:`set_value_checks`."""
    previous = _value_checks
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def error_if(x, bad, message: str):
    """`x`, with a compiled check that raises `message` where `bad` holds.

    Use the returned value: the check runs only if something depends on it.
    A no-op when value checks are off.
    """
    if not _value_checks:
        return x
    return eqx.error_if(x, bad, message)


def is_concrete(x) -> bool:
    """True when `x` holds values (not a tracer inside `jit`/`grad`/`vmap`)."""
    return not isinstance(x, jax.core.Tracer)


def check_array(name: str, x, *, min_rank: int = 1, rank: int | None = None,
                floating: bool = True):
    """Checks that `x` is an array of the given rank with a floating dtype."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"`{name}` must be an array, got {type(x).__name__}.")
    if rank is not None and x.ndim != rank:
        raise ValueError(f"`{name}` must have rank {rank}, got shape {tuple(x.shape)}.")
    if x.ndim < min_rank:
        raise ValueError(
            f"`{name}` must have rank >= {min_rank} (a leading batch axis), "
            f"got shape {tuple(x.shape)}.")
    if floating and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype, got {x.dtype}.")
    if min_rank >= 1 and x.shape[0] == 0:
        raise ValueError(f"`{name}` has an empty batch (shape {tuple(x.shape)}).")


def check_finite(name: str, x):
    """`x` with a compiled check that it holds no NaN or inf (see :func:`error_if`)."""
    return error_if(x, ~jnp.all(jnp.isfinite(x)),
                    f"`{name}` contains non-finite values (NaN or inf).")


def check_same_shape(name_a: str, a, name_b: str, b):
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"`{name_a}` must be an array, got {type(a).__name__}.")
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}.")


def check_time(t, batch_size: int | None = None, name: str = "t"):
    """Checks that `t` is a scalar or a `[B]` vector in [0, 1] and returns it as an array."""
    t = as_real_array(name, t)
    if t.ndim > 1:
        raise ValueError(f"`{name}` must be a scalar or have shape [B], got {tuple(t.shape)}.")
    if t.ndim == 1 and batch_size is not None and t.shape[0] != batch_size:
        raise ValueError(
            f"`{name}` has {t.shape[0]} entries but the batch has {batch_size}.")
    return check_unit_interval(name, t)


def broadcast_time(t, x):
    """Reshapes a scalar or `[B]` time so that it broadcasts against `x: [B, *dims]`."""
    t = jnp.asarray(t, dtype=x.dtype)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape + (1,) * (x.ndim - 1))


# --------------------------------------------------------------------------
# Times of any shape, option values, keys, callables and paths.
# --------------------------------------------------------------------------


def as_real_array(name: str, t):
    """`t` (a real number or array) as a floating array, else a TypeError naming it."""
    if t is None or isinstance(t, (str, bytes, dict)):
        raise TypeError(f"`{name}` must be a real number or array, got {type(t).__name__}.")
    try:
        t = jnp.asarray(t)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a real number or array, "
                        f"got {type(t).__name__}.") from err
    if not (jnp.issubdtype(t.dtype, jnp.floating) or jnp.issubdtype(t.dtype, jnp.integer)
            or t.dtype == jnp.bool_):
        raise TypeError(f"`{name}` must hold real numbers, got dtype {t.dtype}.")
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    return t


def check_finite_eager(name: str, x):
    """:func:`check_finite` on a concrete `x`; a traced `x` passes through unchecked.

    For data that a training step consumes: inside a jitted step a NaN batch
    becomes a non-finite loss, which :mod:`flowjax.train` skips and counts,
    rather than an error that stops the run.
    """
    return check_finite(name, x) if is_concrete(x) else x


def check_unit_interval(name: str, t):
    """`t` (any shape) with a compiled check that it lies in [0, 1] (NaN fails)."""
    return error_if(t, ~jnp.all((t >= 0) & (t <= 1)),
                    f"`{name}` must lie in [0, 1] (and not be NaN).")


def check_instance(name: str, value, cls, what: str):
    """Checks `isinstance(value, cls)`, explaining the usual mistakes in the message.

    `what` names the expected kind, e.g. "a coupling (e.g. flowjax.couplings.ExactOT())".
    A class passed instead of an instance, a factory or class left uncalled,
    and a string where an object belongs each get their own hint.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, type):
        hint = f"the class {value.__name__} itself; pass an instance, {value.__name__}(...)"
    elif isinstance(value, str):
        hint = f"the string {value!r}; options are objects, not strings"
    elif callable(value) and getattr(value, "__name__", None):
        hint = (f"the function {value.__name__}; if it builds the object, call it: "
                f"{value.__name__}(...)")
    else:
        hint = type(value).__name__
    raise TypeError(f"`{name}` must be {what}, got {hint}.")


def _is_real_number(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    # A 0-d real array (concrete or traced) counts as a number.
    return (hasattr(value, "shape") and hasattr(value, "dtype") and value.shape == ()
            and (jnp.issubdtype(value.dtype, jnp.floating)
                 or jnp.issubdtype(value.dtype, jnp.integer)))


def check_number(name: str, value, *, low=None, high=None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False, allow_none: bool = False):
    """Checks a scalar option: a real number (an int if `integer`), finite, within the bounds.

    `low`/`high` are inclusive unless `low_open`/`high_open`. A Python or NumPy
    number is checked here; a 0-d JAX array (concrete or traced) gets the value
    checks compiled in (:func:`error_if`, no host copy), so use the returned value.
    """
    if value is None and allow_none:
        return value
    if integer:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"`{name}` must be an int, got {value!r}.")
    elif not _is_real_number(value):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        bad = ~jnp.isfinite(value)
        if low is not None:
            bad |= (value <= low) if low_open else (value < low)
        if high is not None:
            bad |= (value >= high) if high_open else (value > high)
        return error_if(value, bad, f"`{name}` must be finite and within "
                        f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}.")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    if low is not None and (v < low or (low_open and v == low)):
        if integer and low == 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        raise ValueError(f"`{name}` must be {'>' if low_open else '>='} {low}, got {value!r}.")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"`{name}` must be {'<' if high_open else '<='} {high}, got {value!r}.")
    return value


def check_callable(name: str, fn, *, allow_none: bool = False):
    if fn is None and allow_none:
        return fn
    if not callable(fn):
        raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}.")
    return fn


def check_key(name: str, key):
    """Checks a PRNG key: a typed key (`jax.random.key`) or a raw uint32 key (`PRNGKey`)."""
    if not hasattr(key, "shape") or not hasattr(key, "dtype"):
        raise TypeError(f"`{name}` must be a PRNG key (jax.random.key or PRNGKey), "
                        f"got {type(key).__name__}.")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim != 0:
            raise ValueError(f"`{name}` must be a single PRNG key, got shape {tuple(key.shape)}.")
    elif key.dtype != jnp.uint32 or key.ndim != 1 or key.shape[0] not in (2, 4):
        raise TypeError(f"`{name}` must be a PRNG key (jax.random.key or a uint32 PRNGKey of "
                        f"shape (2,)), got {key.dtype} of shape {tuple(key.shape)}.")
    return key


def check_shape(name: str, shape):
    """Checks an output shape: an int or a tuple of ints >= 0; returns it as a tuple."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (int(shape),)
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_))
            for s in shape):
        raise TypeError(f"`{name}` must be a tuple of ints, got {shape!r}.")
    if any(s < 0 for s in shape):
        raise ValueError(f"`{name}` must have non-negative sizes, got {tuple(shape)}.")
    return tuple(int(s) for s in shape)


_PATH_METHODS = ("alpha", "sigma", "d_alpha", "d_sigma", "sigma_total", "d_sigma_total")


def check_path(name: str, path):
    """Checks that `path` is an affine path: an object with the schedule methods and `noise`.

    A path class passed uncalled (`flowjax.paths.RectifiedFlow` for
    `RectifiedFlow()`) is refused with that hint.
    """
    if isinstance(path, type) or not hasattr(path, "noise") \
            or not all(callable(getattr(path, m, None)) for m in _PATH_METHODS):
        check_instance(name, path, (), "an affine path, e.g. flowjax.paths.RectifiedFlow()")
    return path


def check_grid(name: str, ts, *, increasing: bool | None = True, start=None,
               end=None) -> np.ndarray:
    """Checks a concrete time grid `[N + 1]` (N >= 1): finite, in [0, 1], strictly monotone.

    `increasing=False` asks for a strictly decreasing grid, `None` for either;
    `start`/`end`, when given, are the times it must begin and end at (up to
    rounding). Returns the grid as a float64 NumPy array.
    """
    if ts is None or isinstance(ts, (str, bytes, dict)):
        raise TypeError(f"`{name}` must be an array of times, got {type(ts).__name__}.")
    try:
        grid = np.asarray(ts, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be an array of times, got {type(ts).__name__}.") from err
    if grid.ndim != 1 or grid.size < 2:
        raise ValueError(f"`{name}` must be a grid [N + 1] with N >= 1, got shape {grid.shape}.")
    if not np.all(np.isfinite(grid)) or np.any(grid < 0) or np.any(grid > 1):
        raise ValueError(f"`{name}` must hold finite times in [0, 1], got {grid}.")
    if increasing is None:
        increasing = bool(grid[-1] > grid[0])
        what = "a monotone"
    else:
        what = "an increasing" if increasing else "a decreasing"
    steps = np.diff(grid) if increasing else -np.diff(grid)
    if np.any(steps <= 0):
        raise ValueError(f"`{name}` must be {what} grid (strictly), got {grid}.")
    for where, want, got in (("start", start, grid[0]), ("end", end, grid[-1])):
        if want is not None and not np.isclose(got, want):
            raise ValueError(f"`{name}` must {where} at {want}, got {got}.")
    return grid


def check_host_array(name: str, x, *, rank: int | None = None, min_rank: int = 1,
                     min_points: int = 1) -> np.ndarray:
    """`x` as a finite float64 NumPy array, for functions that compute on the host.

    Structural checks as :func:`check_array`, then (on the host copy those
    functions make anyway) finiteness and at least `min_points` rows.
    """
    check_array(name, x, rank=rank, min_rank=min_rank)
    host = np.asarray(x, np.float64)
    if not np.all(np.isfinite(host)):
        raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")
    if host.shape[0] < min_points:
        raise ValueError(f"`{name}` needs at least {min_points} points, got {host.shape[0]}.")
    return host


def check_output_shape(name: str, out, like, what: str = "x"):
    """Raises if `out`, what the user function `name` returned, is not shaped like `like`."""
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(like.shape):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"`{name}` returned {got}, expected the shape of `{what}`, "
                         f"{tuple(like.shape)}.")
    return out


def check_signature(name: str, fn, num_args: int):
    """Checks that `fn` can be called with `num_args` positional arguments, when Python can tell."""
    import inspect

    check_callable(name, fn)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C callables: nothing to check
        return fn
    try:
        signature.bind(*range(num_args))
    except TypeError as err:
        raise TypeError(f"`{name}` must take {num_args} positional arguments: {err}.") from None
    return fn
