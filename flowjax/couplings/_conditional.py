r"""Conditional optimal transport (C²OT; Cheng and Schwing 2025) for conditional models."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from flowjax._checks import check_array, check_finite, check_number
from flowjax._types import Batch, Cond, KeyArray, Scalar
from flowjax.couplings._base import AbstractCoupling, CouplingResult, pairs_result
from flowjax.couplings._common import (assignment_host, check_call, column_assignment,
                                       host_permutation, host_sq_cost)


def _per_class_host(x0, x1, cond):
    """Exact OT within each class of the integer labels `cond`."""
    cond = np.asarray(cond)
    perm = np.empty(x0.shape[0], np.int32)
    for c in np.unique(cond):
        idx = np.flatnonzero(cond == c)
        perm[idx] = idx[assignment_host(x0[idx], x1[idx])]
    return perm


def _penalised_host(x0, x1, cond, weight):
    """Exact OT for the squared distance plus `weight` times the condition mismatch."""
    c = np.asarray(cond).reshape(x0.shape[0], -1)
    if np.issubdtype(c.dtype, np.integer) or c.dtype == bool:
        penalty = np.any(c[:, None, :] != c[None, :, :], axis=-1).astype(np.float64)
    else:
        penalty = host_sq_cost(c, c)
    return column_assignment(host_sq_cost(x0, x1) + float(np.asarray(weight)) * penalty)


def _check_cond(cond, batch_size, per_class):
    check_array("cond", cond, floating=False)
    if not (jnp.issubdtype(cond.dtype, jnp.number) or cond.dtype == jnp.bool_) \
            or jnp.issubdtype(cond.dtype, jnp.complexfloating):
        raise TypeError(f"`cond` must hold real numbers or labels, got {cond.dtype}.")
    if cond.shape[0] != batch_size:
        raise ValueError(f"`cond` must have a leading batch axis of {batch_size}, "
                         f"got shape {tuple(cond.shape)}.")
    if per_class and (cond.ndim != 1 or not jnp.issubdtype(cond.dtype, jnp.integer)):
        raise TypeError("`weight=None` (per-class OT) needs integer labels: `cond` must be "
                        f"an int array [B], got {cond.dtype} of shape {tuple(cond.shape)}.")
    return check_finite("cond", cond) if jnp.issubdtype(cond.dtype, jnp.floating) else cond


class ConditionAwareOT(AbstractCoupling):
    r"""Conditional optimal transport (C²OT) for conditional models.

    Plain minibatch OT pairs a noise sample with whichever data point is
    nearest, whatever its label, so under training the source seen with each
    condition is skewed, while sampling draws it from the unskewed N(0, I).
    C²OT gives each source sample `x0[i]` the condition `cond[i]` of the data
    point it came with (independent of `x0`, so the source stays unskewed for
    every condition) and adds a condition term to the cost:

    .. math:: C_{ij} = \|x_0^{(i)} - x_1^{(j)}\|^2 + w\, d(c_i, c_j),

    with `d` the mismatch indicator for integer labels and the squared
    distance for real-valued conditions. `weight=None` is the exact discrete
    case (:math:`w = \infty`): OT within each class separately, so no pair
    ever changes its condition. Solved exactly with SciPy on the host like
    :class:`ExactOT`. Called without `cond`, it raises.

    Args:
      weight: the condition weight `w` (> 0), or None for per-class OT
        (integer labels only).
    """

    uses_cond = True
    needs_cond = True
    weight: Scalar | None

    def __init__(self, weight: Scalar | None = None):
        self.weight = check_number("weight", weight, low=0.0, low_open=True, allow_none=True)

    def __call__(self, key: KeyArray | None, x0: Batch, x1: Batch, *, cond: Cond = None,
                 state: Any = None) -> CouplingResult:
        x0, x1 = check_call(self, key, x0, x1, cond, key_used=False)
        cond = _check_cond(cond, x1.shape[0], self.weight is None)
        if self.weight is None:
            perm = host_permutation(_per_class_host, x0, x1, cond)
        else:
            perm = host_permutation(_penalised_host, x0, x1, cond,
                                    jnp.asarray(self.weight, jnp.float32))
        return pairs_result(x0[perm], x1)
