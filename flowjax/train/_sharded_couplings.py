r"""Couplings of a batch sharded over devices: per device (local) or over the whole batch (global).

A data-parallel step holds the batch split along its first axis over a mesh
axis (`"data"`, see :func:`flowjax.train.make_mesh`). Any coupling of
:mod:`flowjax.couplings` can then pair it in two ways, each again a coupling
(`wrapper(key, x0, x1, *, cond=None, state=None) -> CouplingResult`):

- :class:`LocalCoupling` pairs each device's rows among themselves
  (`jax.shard_map`): no communication, `D` independent problems of `B / D`
  points (exact OT costs :math:`D (B/D)^3` instead of :math:`B^3`), but the
  plan is block-diagonal, so its pairs are those of a batch `D` times smaller.
- :class:`GlobalCoupling` pairs the whole batch (`B x B` plan). With
  :class:`flowjax.couplings.Sinkhorn` the points stay sharded and XLA splits
  the cost matrix and the plan by rows (each device holds `B / D x B`), which
  is how Klein, Zhang, Mousavi-Hosseini and Cuturi (2025, "On fitting flow
  models with large Sinkhorn couplings") reach a million points on 8-16 GPUs.
  An exact (host) coupling gathers the batch to the host instead.

Both go inside `jax.jit` where the batch is sharded with a
`NamedSharding(mesh, P(axis_name))`, e.g. as the `coupling=` of
:func:`flowjax.losses.cfm_loss` in a sharded train step. A wrapper answers
`reorders`, `uses_cond` and `needs_cond` as its inner coupling does
(instance properties), and `init_state` is the inner coupling's.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flowjax._checks import check_array, check_instance, check_same_shape
from flowjax._types import Batch, Cond, KeyArray
from flowjax.couplings import AbstractCoupling, CouplingResult


def _reduce(value, axis_name):
    """A per-device scalar made global: mean (floats), all (bools), max (ints)."""
    if value.dtype == jnp.bool_:
        return jax.lax.pmin(value.astype(jnp.int32), axis_name).astype(jnp.bool_)
    if jnp.issubdtype(value.dtype, jnp.integer):
        return jax.lax.pmax(value, axis_name)
    return jax.lax.pmean(value, axis_name)


class _AbstractShardedCoupling(AbstractCoupling):
    """A coupling wrapped for a batch sharded along `axis_name` of `mesh`."""

    coupling: AbstractCoupling
    mesh: Mesh = eqx.field(static=True)
    axis_name: str = eqx.field(static=True, default="data")

    def __check_init__(self):
        check_instance("coupling", self.coupling, AbstractCoupling,
                       "a coupling (e.g. flowjax.couplings.ExactOT())")
        if not isinstance(self.mesh, Mesh):
            raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(self.mesh).__name__}.")
        if self.axis_name not in self.mesh.axis_names:
            raise ValueError(f"`axis_name` {self.axis_name!r} is not an axis of `mesh` "
                             f"(axes {self.mesh.axis_names}).")

    @property
    def reorders(self) -> bool:
        return self.coupling.reorders

    @property
    def uses_cond(self) -> bool:
        return self.coupling.uses_cond

    @property
    def needs_cond(self) -> bool:
        return self.coupling.needs_cond

    def init_state(self, x0: Batch, x1: Batch) -> Any:
        return self.coupling.init_state(x0, x1)

    def _check_batch(self, x0, x1, cond, state):
        check_array("x0", x0)
        check_array("x1", x1)
        check_same_shape("x0", x0, "x1", x1)
        num_shards = self.mesh.shape[self.axis_name]
        if x0.shape[0] % num_shards:
            raise ValueError(f"`x0` has {x0.shape[0]} rows, which the {num_shards} devices of "
                             "the mesh axis do not divide.")
        for name, tree in (("cond", cond), ("state", state)):
            for a in jax.tree.leaves(tree):
                if getattr(a, "ndim", 0) < 1 or a.shape[0] % num_shards:
                    raise ValueError(f"`{name}` has a leaf of shape {getattr(a, 'shape', ())}: "
                                     f"it needs a leading batch axis that {num_shards} "
                                     "devices divide.")
        return num_shards


class LocalCoupling(_AbstractShardedCoupling):
    r"""Applies `coupling` on each device to the rows of the batch that live there.

    With the batch sharded along `axis_name` over :math:`D` devices, device
    :math:`k` pairs its :math:`B/D` sources with its :math:`B/D` targets using
    the key `fold_in(key, k)` (`jax.lax.axis_index`), so each shard is an
    independent minibatch-OT problem; the output stays sharded the same way.
    Equivalently the coupling of the whole batch is the block-diagonal plan
    :math:`\mathrm{diag}(P_1, \dots, P_D) / D`.

    The result is made global: `cost` and float `stats` are averaged over the
    devices (`pmean`; over equal shards that is the mean of the whole batch),
    `fallback` is True if any shard fell back, boolean stats are and-ed
    (`converged` of every shard), integer stats take their maximum
    (`n_iters`, the slowest shard); so a Sinkhorn coupling's
    `renormalized_entropy` is the mean of the shards' own values, each on the
    scale of a `B / D`-point problem. `cond` and `state` (a warm start's
    potentials) are split like the batch, and the returned state comes back
    sharded the same way.

    Args:
      coupling: any coupling.
      mesh: the device mesh the batch is sharded over.
      axis_name: the mesh axis of the batch (other axes see replicated data).

    The batch size must be a multiple of the size of the mesh axis.
    """

    def __call__(self, key: KeyArray | None, x0: Batch, x1: Batch, *, cond: Cond = None,
                 state: Any = None) -> CouplingResult:
        num_shards = self._check_batch(x0, x1, cond, state)
        axis, rows = self.axis_name, P(self.axis_name)
        inner = self.coupling

        def body(key, x0, x1, extra):
            if key is not None:
                key = jax.random.fold_in(key, jax.lax.axis_index(axis))
            res = inner(key, x0, x1, cond=extra[0], state=extra[1])
            fallback = jax.lax.pmax(res.fallback.astype(jnp.int32), axis).astype(jnp.bool_)
            stats = {k: _reduce(v, axis) if jnp.ndim(v) == 0 else v for k, v in res.stats.items()}
            return CouplingResult(x0=res.x0, x1=res.x1, cost=jax.lax.pmean(res.cost, axis),
                                  fallback=fallback, state=res.state, stats=stats)

        def local(a):  # the shape of one device's block
            return jax.ShapeDtypeStruct((a.shape[0] // num_shards,) + a.shape[1:], a.dtype)

        shape = jax.eval_shape(
            lambda k, a, b, e: inner(k, a, b, cond=e[0], state=e[1]), key, local(x0),
            local(x1), jax.tree.map(local, (cond, state)))
        out_specs = jax.tree.map(lambda a: P() if len(a.shape) == 0 else rows, shape)
        # check_vma=False: ott's Sinkhorn loop (lax.cond on per-device values) is not
        # written for shard_map's varying-axis types; every output is per device anyway.
        fn = jax.shard_map(body, mesh=self.mesh,
                           in_specs=(None if key is None else P(), rows, rows,
                                     jax.tree.map(lambda _: rows, (cond, state))),
                           out_specs=out_specs, check_vma=False)
        return fn(key, x0, x1, (cond, state))


@eqx.filter_jit
def _global_call(coupling, rows, key, x0, x1, cond, state):
    def constrain(a):
        return a if jnp.ndim(a) == 0 else jax.lax.with_sharding_constraint(a, rows)

    x0, x1, cond, state = jax.tree.map(constrain, (x0, x1, cond, state))
    return jax.tree.map(constrain, coupling(key, x0, x1, cond=cond, state=state))


class GlobalCoupling(_AbstractShardedCoupling):
    r"""Applies `coupling` to the whole sharded batch, keeping every `[B, ...]` array sharded.

    The inputs, the outputs, `cond` and `state` are constrained to rows split
    along `axis_name` (`jax.lax.with_sharding_constraint`); XLA's sharding
    propagation then partitions what the coupling computes in between. For
    :class:`flowjax.couplings.Sinkhorn` this makes the `[B, B]` cost matrix,
    the Sinkhorn kernel applications and the plan row-sharded (each device
    holds `B / D` rows of all `B` columns; the `[B]` potentials and the
    `[B, d]` targets are all-gathered each iteration), so one device never
    holds the whole plan: the sharded Sinkhorn of Klein et al. (2025). The
    result is the one of the unsharded coupling up to the order of
    floating-point sums. A host coupling (:class:`flowjax.couplings.ExactOT`)
    gathers the batch to the host and solves it whole.

    Args:
      coupling: any coupling.
      mesh: the device mesh the batch is sharded over.
      axis_name: the mesh axis of the batch.

    The call is jitted itself (inlined when called inside a jitted step), so
    an eager call is partitioned the same way.
    """

    def __call__(self, key: KeyArray | None, x0: Batch, x1: Batch, *, cond: Cond = None,
                 state: Any = None) -> CouplingResult:
        self._check_batch(x0, x1, cond, state)
        rows = NamedSharding(self.mesh, P(self.axis_name))
        return _global_call(self.coupling, rows, key, x0, x1, cond, state)
