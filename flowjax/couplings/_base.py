"""The coupling protocol: an immutable object that pairs sources with targets.

A coupling is called as ``coupling(key, x0, x1, *, cond=None, state=None)``
and returns a :class:`CouplingResult`. It is an :class:`equinox.Module`, so
it is a pytree: its numeric options are leaves (changing them does not
recompile a jitted step that receives the coupling as an argument), and what
it declares about itself (`reorders`, `uses_cond`, `needs_cond`) belongs to
its type, so it survives `functools.partial`, `jax.jit` and pickling.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from flowjax._types import Batch, Cond, KeyArray


class CouplingResult(eqx.Module):
    """What a coupling returns.

    Attributes:
      x0: sources `[B, *dims]`, reordered or resampled to pair with `x1`.
      x1: targets `[B, *dims]`, in place (every coupling here re-indexes `x0`
        only, so labels travelling with `x1` stay aligned).
      cost: mean squared distance of the returned pairs, a scalar.
      fallback: True where the coupling could not pair (e.g. Sinkhorn did
        not converge) and returned the independent pairing instead; a bool scalar.
      state: the state to hand to the next call (e.g. Sinkhorn warm-start
        potentials), or None for a stateless coupling.
      stats: further scalar diagnostics, a dict of arrays. Integer and bool
        entries are counts (summed over steps by :mod:`flowjax.train`),
        floating entries are averaged.
    """

    x0: jax.Array
    x1: jax.Array
    cost: jax.Array
    fallback: jax.Array
    state: Any = None
    stats: dict = eqx.field(default_factory=dict)


class AbstractCoupling(eqx.Module):
    """Base class of every coupling.

    Class attributes (read them on the instance: wrappers such as
    :class:`flowjax.train.LocalCoupling` forward their inner coupling's):
      reorders: whether the coupling changes which source goes with which
        target (False only for the independent coupling).
      uses_cond: whether the pairing takes `cond` into account.
      needs_cond: whether calling without `cond` is an error.
    """

    reorders: ClassVar[bool] = True
    uses_cond: ClassVar[bool] = False
    needs_cond: ClassVar[bool] = False

    def __call__(self, key: KeyArray | None, x0: Batch, x1: Batch, *, cond: Cond = None,
                 state: Any = None) -> CouplingResult:
        raise NotImplementedError

    def init_state(self, x0: Batch, x1: Batch) -> Any:
        """The state of the first call (None for a stateless coupling)."""
        del x0, x1
        return None


def mean_pair_cost(x0, x1):
    """Mean over the batch of `||x0 - x1||^2`, a scalar."""
    d = (x0 - x1).reshape(x0.shape[0], -1)
    return jnp.mean(jnp.sum(d * d, axis=-1))


def pairs_result(x0, x1, **kw) -> CouplingResult:
    """A :class:`CouplingResult` for pairs `(x0, x1)`, with their cost (no fallback by default)."""
    kw.setdefault("fallback", jnp.zeros((), jnp.bool_))
    return CouplingResult(x0=x0, x1=x1, cost=mean_pair_cost(x0, x1), **kw)
