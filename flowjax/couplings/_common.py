"""What the couplings share: the call checks, the cost matrix and SciPy's assignment on the host."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from flowjax._checks import (check_array, check_finite_eager, check_key, check_same_shape,
                             is_concrete)
from flowjax._types import Array, Batch, Float


def flat(x):
    return x.reshape(x.shape[0], -1)


def _check_call(coupling, key, x0, x1, cond, *, key_used: bool):
    """The structural checks of one coupling call; returns `(x0, x1)` with their finiteness check.

    A coupling that draws nothing ignores its key and accepts None for it.
    """
    if key_used or key is not None:
        check_key("key", key)
    check_array("x0", x0)
    check_array("x1", x1)
    check_same_shape("x0", x0, "x1", x1)
    if coupling.needs_cond and cond is None:
        raise ValueError(f"`cond` is required: {type(coupling).__name__} pairs within "
                         "conditions; pass cond=batch['cond'].")
    return check_finite_eager("x0", x0), check_finite_eager("x1", x1)


def sq_distances(x0: Batch, x1: Batch) -> Float[Array, "B0 B1"]:
    """The squared Euclidean cost matrix `[B0, B1]` of two batches `[B0, *dims]`, `[B1, *dims]`."""
    check_array("x0", x0)
    check_array("x1", x1)
    if x0.shape[1:] != x1.shape[1:]:
        raise ValueError(f"`x0` and `x1` must have the same dimensions after the batch axis, "
                         f"got {tuple(x0.shape)} and {tuple(x1.shape)}.")
    a, b = flat(check_finite_eager("x0", x0)), flat(check_finite_eager("x1", x1))
    d = jnp.sum(a ** 2, -1)[:, None] + jnp.sum(b ** 2, -1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(d, 0.0)


def host_sq_cost(x0, x1):
    """The squared-distance matrix of two batches `[B, *dims]`, in float64 NumPy on the host."""
    a = np.asarray(x0, dtype=np.float64).reshape(x0.shape[0], -1)
    b = np.asarray(x1, dtype=np.float64).reshape(x1.shape[0], -1)
    return np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def column_assignment(cost):
    """For each column j of `cost`, the row that SciPy's assignment gives it."""
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(rows)
    perm[cols] = rows
    return perm.astype(np.int32)


def assignment_host(x0, x1):
    """The optimal re-indexing of `x0` for the squared-distance cost (SciPy, on the host)."""
    return column_assignment(host_sq_cost(x0, x1))


_POOL = None


def _pool():
    """One process-wide thread pool: SciPy's assignment releases the GIL."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                   thread_name_prefix="flowjax-ot")
    return _POOL


def _batched_host(solve, event_ndim, x0, x1, *extra):
    """`solve(x0, x1, *extra) -> perm` over any leading (vmapped) axes, in parallel threads."""
    lead = x0.shape[:x0.ndim - event_ndim]
    flat_args = [np.asarray(a).reshape((-1,) + np.shape(a)[len(lead):]) for a in (x0, x1, *extra)]
    if flat_args[0].shape[0] == 1:
        perms = [solve(*(a[0] for a in flat_args))]
    else:
        perms = list(_pool().map(solve, *flat_args))
    return np.stack(perms).reshape(lead + (x0.shape[-event_ndim],))


def host_permutation(solve, x0, x1, *extra):
    """The re-indexing `solve(x0, x1, *extra) -> perm` computed on the host.

    Traced (under `jit` or `vmap`) it goes through `jax.pure_callback`;
    called eagerly it runs directly, which also works on arrays sharded over
    several devices (a callback there would be pinned to one device).
    """
    host = functools.partial(_batched_host, solve, x0.ndim)
    if all(is_concrete(a) for a in (x0, x1, *extra)):
        return jnp.asarray(host(x0, x1, *extra))
    out = jax.ShapeDtypeStruct((x1.shape[0],), jnp.int32)
    return jax.pure_callback(host, out, x0, x1, *extra, vmap_method="broadcast_all")
