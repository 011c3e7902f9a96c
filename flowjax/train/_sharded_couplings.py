r"""Couplings of a batch sharded over devices: per device (local) or over the whole batch (global).

A data-parallel step holds the batch split along its first axis over a mesh
axis (`"data"`, see :func:`flowjax.train.make_mesh`). Any coupling
`coupling(key, x0, x1) -> ((x0, x1), aux)` of :mod:`flowjax.couplings` can
then pair it in two ways, both again couplings with the same signature:

- :func:`local_coupling` pairs each device's rows among themselves
  (`jax.shard_map`): no communication, `D` independent problems of `B / D`
  points (exact OT costs :math:`D (B/D)^3` instead of :math:`B^3`), but the
  plan is block-diagonal, so its pairs are those of a batch `D` times smaller.
- :func:`global_coupling` pairs the whole batch (`B x B` plan). With
  :func:`flowjax.couplings.sinkhorn` the points stay sharded and XLA splits the
  cost matrix and the plan by rows (each device holds `B / D x B`), which is
  how Klein, Zhang, Mousavi-Hosseini and Cuturi (2025, "On fitting flow models
  with large Sinkhorn couplings") reach a million points on 8-16 GPUs. An
  exact (host) coupling gathers the batch to the host instead.

Both go inside `jax.jit` where the batch is sharded with a
`NamedSharding(mesh, P(axis_name))`, e.g. as the `coupling=` of
:func:`flowjax.losses.cfm_loss` in a sharded train step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flowjax._checks import check_array, check_same_shape


def _check_args(coupling, mesh, axis_name):
    if not callable(coupling):
        raise TypeError(f"`coupling` must be a coupling function (key, x0, x1) -> ((x0, x1), aux), "
                        f"got {type(coupling).__name__}.")
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    if axis_name not in mesh.axis_names:
        raise ValueError(f"`axis_name` {axis_name!r} is not an axis of `mesh` "
                         f"(axes {mesh.axis_names}).")


def _check_batch(x0, x1, num_shards):
    check_array("x0", x0)
    check_array("x1", x1)
    check_same_shape("x0", x0, "x1", x1)
    if x0.shape[0] % num_shards:
        raise ValueError(f"`x0` has {x0.shape[0]} rows, which the {num_shards} devices of the "
                         "mesh axis do not divide.")


def _reduce(value, axis_name):
    """A per-device scalar of `aux` made global: mean (floats), all (bools), max (ints)."""
    if value.dtype == jnp.bool_:
        return jax.lax.pmin(value.astype(jnp.int32), axis_name).astype(jnp.bool_)
    if jnp.issubdtype(value.dtype, jnp.integer):
        return jax.lax.pmax(value, axis_name)
    return jax.lax.pmean(value, axis_name)


def _wrap(coupling, wrapped):
    wrapped.uses_cond = getattr(coupling, "uses_cond", False)
    wrapped.__doc__ = coupling.__doc__
    return wrapped


def local_coupling(coupling, mesh: Mesh, axis_name: str = "data"):
    r"""Applies `coupling` on each device to the rows of the batch that live there.

    With the batch sharded along `axis_name` over :math:`D` devices, device
    :math:`k` pairs its :math:`B/D` sources with its :math:`B/D` targets using
    the key `fold_in(key, k)` (`jax.lax.axis_index`), so each shard is an
    independent minibatch-OT problem; the output stays sharded the same way.
    Equivalently the coupling of the whole batch is the block-diagonal plan
    :math:`\mathrm{diag}(P_1, \dots, P_D) / D`.

    `aux` is made global: float scalars are averaged over the devices
    (`pmean`; `cost`, the mean over equal shards, is then the mean of the
    whole batch), booleans are and-ed (`converged` of every shard), integers
    take their maximum (`n_iters`, the slowest shard); so a Sinkhorn
    coupling's `renormalized_entropy` is the mean of the shards' own values,
    each on the scale of a `B / D`-point problem. Non-scalar entries
    (e.g. a warm start's `potentials`) are concatenated back along the batch
    axis. Extra positional arguments (the `cond` of
    :func:`flowjax.couplings.condition_aware_ot`) and an `init` keyword (a
    warm start) are split like the batch.

    Args:
      coupling: any `coupling(key, x0, x1, ...) -> ((x0, x1), aux)`.
      mesh: the device mesh the batch is sharded over.
      axis_name: the mesh axis of the batch (other axes see replicated data).

    Returns:
      A coupling with the same signature, to call inside or outside `jax.jit`;
      the batch size must be a multiple of the size of the mesh axis.
    """
    _check_args(coupling, mesh, axis_name)
    num_shards = mesh.shape[axis_name]
    rows = P(axis_name)

    def wrapped(key, x0, x1, *args, **kwargs):
        _check_batch(x0, x1, num_shards)
        for i, a in enumerate(jax.tree.leaves((args, kwargs))):
            if getattr(a, "ndim", 0) < 1 or a.shape[0] % num_shards:
                raise ValueError(f"extra argument {i} of shape {getattr(a, 'shape', ())} must have "
                                 f"a leading batch axis that {num_shards} devices divide.")

        def body(key, x0, x1, args, kwargs):
            if key is not None:
                key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
            pairs, aux = coupling(key, x0, x1, *args, **kwargs)
            aux = jax.tree.map(lambda a: _reduce(a, axis_name) if jnp.ndim(a) == 0 else a, aux)
            return pairs, aux

        def local(a):  # the shape of one device's block
            return jax.ShapeDtypeStruct((a.shape[0] // num_shards,) + a.shape[1:], a.dtype)

        _, aux_shape = jax.eval_shape(
            lambda *a: coupling(*a[:3], *a[3], **a[4]), key, local(x0), local(x1),
            jax.tree.map(local, args), jax.tree.map(local, kwargs))
        aux_spec = jax.tree.map(lambda a: P() if len(a.shape) == 0 else rows, aux_shape)
        key_spec = None if key is None else P()
        # check_vma=False: ott's Sinkhorn loop (lax.cond on per-device values) is not
        # written for shard_map's varying-axis types; every output is per device anyway.
        fn = jax.shard_map(body, mesh=mesh,
                           in_specs=(key_spec, rows, rows, jax.tree.map(lambda _: rows, args),
                                     jax.tree.map(lambda _: rows, kwargs)),
                           out_specs=((rows, rows), aux_spec), check_vma=False)
        return fn(key, x0, x1, args, kwargs)

    return _wrap(coupling, wrapped)


def global_coupling(coupling, mesh: Mesh, axis_name: str = "data"):
    r"""Applies `coupling` to the whole sharded batch, keeping every `[B, ...]` array sharded.

    The inputs, the outputs and any extra batch-aligned arguments are
    constrained to rows split along `axis_name`
    (`jax.lax.with_sharding_constraint`); XLA's sharding propagation then
    partitions what the coupling computes in between. For
    :func:`flowjax.couplings.sinkhorn` this makes the `[B, B]` cost matrix, the
    Sinkhorn kernel applications and the plan row-sharded (each device holds
    `B / D` rows of all `B` columns; the `[B]` potentials and the `[B, d]`
    targets are all-gathered each iteration), so one device never holds the
    whole plan: the sharded Sinkhorn of Klein et al. (2025). The result is the
    one of the unsharded coupling up to the order of floating-point sums. A
    host coupling (:func:`flowjax.couplings.exact_ot`) gathers the batch to the
    host and solves it whole.

    Args:
      coupling: any `coupling(key, x0, x1, ...) -> ((x0, x1), aux)`.
      mesh: the device mesh the batch is sharded over.
      axis_name: the mesh axis of the batch.

    Returns:
      A coupling with the same signature. It is jitted itself (inlined when
      called inside a jitted step), so an eager call is partitioned the same
      way.
    """
    _check_args(coupling, mesh, axis_name)
    num_shards = mesh.shape[axis_name]
    rows = NamedSharding(mesh, P(axis_name))

    def constrain(a):
        return a if jnp.ndim(a) == 0 else jax.lax.with_sharding_constraint(a, rows)

    @jax.jit
    def run(key, x0, x1, args, kwargs):
        x0, x1, args, kwargs = jax.tree.map(constrain, (x0, x1, args, kwargs))
        (x0, x1), aux = coupling(key, x0, x1, *args, **kwargs)
        return jax.tree.map(constrain, ((x0, x1), aux))

    def wrapped(key, x0, x1, *args, **kwargs):
        _check_batch(x0, x1, num_shards)
        return run(key, x0, x1, args, kwargs)

    return _wrap(coupling, wrapped)
