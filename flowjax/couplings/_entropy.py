"""The renormalized entropy of a coupling plan."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flowjax._checks import check_array, check_finite, error_if
from flowjax._types import Array, Float


def _entropy(p):
    return -jnp.sum(jax.scipy.special.xlogy(p, p))


@jax.jit
def plan_entropy(plan):
    """:func:`renormalized_entropy` without the checks."""
    p = plan / jnp.sum(plan)
    h_a, h_b = _entropy(jnp.sum(p, axis=1)), _entropy(jnp.sum(p, axis=0))
    return 2.0 * _entropy(p) / (h_a + h_b) - 1.0


def _checked_plan(plan):
    check_array("plan", plan, rank=2)
    if plan.shape[0] * plan.shape[1] < 2:
        raise ValueError(f"`plan` must have more than one entry, got shape {tuple(plan.shape)}.")
    return error_if(check_finite("plan", plan), jnp.any(plan < 0) | ~(jnp.sum(plan) > 0),
                    "`plan` must be nonnegative with a positive total mass.")


def renormalized_entropy(plan: Float[Array, "n m"]) -> Float[Array, ""]:
    r"""The scale-free sharpness of a coupling: 0 for a permutation, 1 for the independent plan.

    For a coupling :math:`P` with marginals :math:`a = P\mathbf 1`,
    :math:`b = P^\top \mathbf 1`, the entropy satisfies
    :math:`\tfrac12 (H(a) + H(b)) \le H(P) \le H(a) + H(b)` (Cuturi 2013), so

    .. math:: \mathcal E(P) = \frac{2 H(P)}{H(a) + H(b)} - 1 \in [0, 1],

    with :math:`H(p) = -\sum p \log p`. With uniform marginals
    :math:`a = b = \mathbf 1/n` this is :math:`H(P)/\log n - 1`: 0 for a
    permutation matrix / n (what exact OT returns), 1 for the independent plan
    :math:`\mathbf 1 \mathbf 1^\top / n^2` (I-CFM). Unlike :math:`\varepsilon` or
    the transport cost it reads on the same [0, 1] scale whatever the scale of
    the data, its dimension or n (Klein, Zhang, Mousavi-Hosseini and Cuturi
    2025, "On fitting flow models with large Sinkhorn couplings", Sec. 3, who
    recommend plans with :math:`\mathcal E` around 0.1-0.2).

    Args:
      plan: a nonnegative matrix `[n, m]` (not both 1); it is normalised to total
        mass 1 first, so a 0/1 permutation matrix can be passed as it is.

    Returns:
      A scalar in [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> from flowjax.couplings import renormalized_entropy
      >>> renormalized_entropy(jnp.eye(4)), renormalized_entropy(jnp.ones((4, 4)))
      (Array(0., dtype=float32), Array(1., dtype=float32))
    """
    return plan_entropy(_checked_plan(plan))
