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
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}.")


def check_time(t, batch_size: int | None = None, name: str = "t"):
    """Checks that `t` is a scalar or a `[B]` vector in [0, 1] and returns it as an array."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    if t.ndim > 1:
        raise ValueError(f"`{name}` must be a scalar or have shape [B], got {tuple(t.shape)}.")
    if t.ndim == 1 and batch_size is not None and t.shape[0] != batch_size:
        raise ValueError(
            f"`{name}` has {t.shape[0]} entries but the batch has {batch_size}.")
    if is_concrete(t):
        tv = np.asarray(t)
        if not np.all(np.isfinite(tv)) or np.any(tv < 0) or np.any(tv > 1):
            raise ValueError(
                f"`{name}` must lie in [0, 1]; got values in "
                f"[{np.nanmin(tv):.4g}, {np.nanmax(tv):.4g}].")
    return t


def broadcast_time(t, x):
    """Reshapes a scalar or `[B]` time so that it broadcasts against `x: [B, *dims]`."""
    t = jnp.asarray(t, dtype=x.dtype)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape + (1,) * (x.ndim - 1))
