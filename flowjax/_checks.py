"""Argument checks shared by the public functions.

Every check runs on shapes and dtypes, which are known while tracing, so it
works inside `jax.jit`. Checks on values (range of `t`, finiteness) run only
when the value is concrete, i.e. outside of a trace: they cost a host sync,
so they belong at the edges (data loading, samplers called eagerly), never
inside a jitted step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
    """Raises if a concrete `x` holds NaN or inf (no-op under a trace)."""
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")


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
    check_unit_interval(name, t)
    return t


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


def check_unit_interval(name: str, t):
    """Raises if a concrete `t` (any shape) is outside [0, 1] or NaN (no-op under a trace)."""
    if is_concrete(t) and np.size(t):
        tv = np.asarray(t)
        if np.any(np.isnan(tv)):
            raise ValueError(f"`{name}` must lie in [0, 1]; it contains NaN.")
        if np.any(tv < 0) or np.any(tv > 1):
            raise ValueError(f"`{name}` must lie in [0, 1]; got values in "
                             f"[{tv.min():.4g}, {tv.max():.4g}].")


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

    `low`/`high` are inclusive unless `low_open`/`high_open`. A traced 0-d array
    passes the type check and skips the value checks. Returns `value`.
    """
    if value is None and allow_none:
        return value
    if integer:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"`{name}` must be an int, got {value!r}.")
    elif not _is_real_number(value):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    if not is_concrete(value):
        return value
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
    """Checks that `path` is an affine path (anything with the schedule methods and `noise`)."""
    if not all(callable(getattr(path, m, None)) for m in _PATH_METHODS) \
            or not hasattr(path, "noise"):
        raise TypeError(f"`{name}` must be an affine path (a flowjax.paths.AffinePath), "
                        f"got {type(path).__name__}.")
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
