"""Train state and jitted train steps built from any loss and optax optimizer."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from flowjax._checks import check_callable, check_instance, check_key, check_number
from flowjax._types import Array, KeyArray, Params, PyTree

_OPTIMIZER = "an optax.GradientTransformation (e.g. optax.adam(1e-3))"


@struct.dataclass
class TrainState:
    """Everything a run needs to continue, as one pytree (one orbax call saves it).

    Attributes:
      params: model parameters.
      ema_params: exponential moving average of `params`.
      opt_state: the optax state.
      step: number of optimizer updates applied (int32 scalar).
      key: the run's base PRNG key; the `i`-th call of a step (counting skipped
        ones) uses `fold_in(key, i)`, with `i = step + nonfinite_total`.
      nonfinite_total: steps skipped because their loss or gradients were not
        finite, over the whole run (int32 scalar).
      nonfinite_consecutive: steps skipped in a row up to now; 0 after an
        applied update (int32 scalar).
    """

    params: Params
    ema_params: Params
    opt_state: PyTree
    step: Array
    key: KeyArray
    nonfinite_total: Array
    nonfinite_consecutive: Array


def _check_state_args(key, params, optimizer):
    """The key, the optimizer, and every leaf of `params` a floating array (naming a bad leaf)."""
    check_key("key", key)
    check_instance("optimizer", optimizer, optax.GradientTransformation, _OPTIMIZER)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not (hasattr(leaf, "dtype") and hasattr(leaf, "shape")
                and jnp.issubdtype(leaf.dtype, jnp.inexact)):
            what = f"dtype {leaf.dtype}" if hasattr(leaf, "dtype") else type(leaf).__name__
            raise TypeError(
                f"`params` must be a pytree of floating arrays, but the leaf at "
                f"params{jax.tree_util.keystr(path)} is {what}. For a whole model pass its "
                "parameters: `apply_fn, params = flowjax.models.from_equinox(model)` (or "
                "from_nnx, from_linen).")


def create_train_state(key: KeyArray, params: Params,
                       optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state: EMA starts at `params`, step 0.

    Args:
      key: the run's base PRNG key.
      params: any pytree of floating arrays (e.g. the params of
        :func:`flowjax.models.from_equinox`); another leaf is a `TypeError`
        naming its path.
      optimizer: an optax `GradientTransformation`.

    The state holds copies, so the caller's `params` and `key` survive the steps
    (which donate the state's buffers). Its arrays are committed to the
    default device, as a restored checkpoint's are: a fresh and a restored
    state then hit the same compiled step (an uncommitted state would make
    the first step after a restore compile again).
    """
    _check_state_args(key, params, optimizer)

    def zero():  # distinct buffers: each leaf is donated on its own
        return jnp.zeros((), jnp.int32)

    state = TrainState(params=jax.tree.map(jnp.copy, params),
                       ema_params=jax.tree.map(jnp.copy, params),
                       opt_state=optimizer.init(params), step=zero(), key=jnp.copy(key),
                       nonfinite_total=zero(), nonfinite_consecutive=zero())
    device = jax.config.jax_default_device or jax.local_devices()[0]
    return jax.device_put(state, device)


def _check_step_args(loss_fn, optimizer, ema_decay):
    """The arguments of the step builders, checked when the step is built."""
    check_callable("loss_fn", loss_fn)
    check_instance("optimizer", optimizer, optax.GradientTransformation, _OPTIMIZER)
    check_number("ema_decay", ema_decay, low=0.0, high=1.0, high_open=True)


def _grad_norm(grads):
    """The global L2 norm, summed in at least float32 (no overflow of half-precision squares)."""
    return optax.tree.norm(jax.tree.map(
        lambda g: g.astype(jnp.promote_types(g.dtype, jnp.float32)), grads))


def _update(loss_fn, optimizer, ema_decay, state: TrainState, batch):
    """One optimizer step, or none if the loss or a gradient is not finite.

    The pure body shared by the single and scanned steps. One reduction
    decides: the gradient norm (reported anyway) is NaN or infinite exactly
    when some gradient entry is, or when the sum of squares overflows float32
    (a norm above ~1e19, a diverged run). The update is computed either way
    and selected with `jnp.where` (no branch, no host sync): on a non-finite
    step the params, EMA, optimizer state and `step` stay as they were and
    the skip counters grow.
    """
    key = jax.random.fold_in(state.key, state.step + state.nonfinite_total)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, batch)
    grad_norm = _grad_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(params, state.ema_params, step_size=1.0 - ema_decay)

    def keep(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    skipped = jnp.logical_not(finite).astype(jnp.int32)
    new = state.replace(params=keep(params, state.params),
                        ema_params=keep(ema, state.ema_params),
                        opt_state=keep(opt_state, state.opt_state),
                        step=state.step + 1 - skipped,
                        nonfinite_total=state.nonfinite_total + skipped,
                        nonfinite_consecutive=(state.nonfinite_consecutive + 1) * skipped)
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "update_norm": jnp.where(finite, optax.tree.norm(updates), 0.0),
               "param_norm": optax.tree.norm(new.params), "skipped": skipped,
               "nonfinite_total": new.nonfinite_total,
               "nonfinite_consecutive": new.nonfinite_consecutive, **aux}
    return new, metrics


def _jit(fn, state_sharding, batch_sharding):
    """`jax.jit` with the state donated, and placed by the given shardings if any."""
    if state_sharding is None and batch_sharding is None:
        return jax.jit(fn, donate_argnums=0)
    if state_sharding is None or batch_sharding is None:
        raise ValueError("`state_sharding` and `batch_sharding` must be given together.")
    mesh = jax.tree.leaves(batch_sharding)[0]
    if not isinstance(mesh, NamedSharding):
        raise TypeError(f"`batch_sharding` must hold NamedSharding, got {mesh!r}.")
    metrics = NamedSharding(mesh.mesh, PartitionSpec())
    return jax.jit(fn, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, metrics), donate_argnums=0)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    ema_decay: float = 0.999, state_sharding: PyTree | None = None,
                    batch_sharding: PyTree | None = None) -> Callable:
    """A jitted `step(state, batch) -> (state, metrics)`.

    Args:
      loss_fn: `loss_fn(params, key, batch) -> (loss, aux)` (e.g. a bound
        :func:`flowjax.losses.cfm_loss`).
      optimizer: an optax `GradientTransformation` (e.g. `optax.adam(1e-3)`);
        anything else is a `TypeError` when the step is built.
      ema_decay: EMA decay; `ema = decay * ema + (1 - decay) * params`.
      state_sharding: the state's layout, a pytree of NamedSharding from
        :func:`state_shardings` (data parallel or FSDP), or None for one
        device.
      batch_sharding: the batch's layout, e.g. :func:`batch_sharding`
        (one sharding for every leaf, or a matching pytree). Given together
        with `state_sharding`; metrics come back replicated.

    The step's key is `fold_in(state.key, state.step + state.nonfinite_total)`
    (the number of calls so far), so a run is a pure function of its initial
    state and batches, on any number of devices (JAX's random bits do not
    depend on the sharding). The input state is donated.

    **Non-finite steps.** If the loss or any gradient entry is NaN or
    infinite (tested as one reduction: the gradient norm, which also
    counts a norm that overflows float32, above ~1e19), the step is skipped inside the compiled function (the idea of
    `optax.apply_if_finite`, here covering the EMA and `step` too): params,
    EMA, optimizer state and `step` come back unchanged, and
    `state.nonfinite_total` and `state.nonfinite_consecutive` grow by one
    (the latter returns to 0 at the next applied update). No host sync is
    added; a training loop reads the counters from the metrics when it logs
    and stops a run whose consecutive count reaches its limit. A skipped
    step reports its (non-finite) loss and gradient norm, `update_norm` 0.

    Returns metrics `loss`, `grad_norm`, `update_norm`, `param_norm`,
    `skipped` (1 if this step was skipped, else 0), `nonfinite_total`,
    `nonfinite_consecutive` and the loss's `aux` entries.
    """
    _check_step_args(loss_fn, optimizer, ema_decay)

    def step(state, batch):
        return _update(loss_fn, optimizer, ema_decay, state, batch)

    return _jit(step, state_sharding, batch_sharding)


def make_multi_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    ema_decay: float = 0.999, state_sharding: PyTree | None = None,
                    batch_sharding: PyTree | None = None) -> Callable:
    """A jitted `steps(state, batches) -> (state, metrics)` running K steps in one `lax.scan`.

    `batches` is the per-step batch stacked on a leading axis of size K; the
    returned metrics are stacked the same way. For small models this removes
    the per-step dispatch overhead; results equal K calls of
    :func:`make_train_step` (same keys, same order). The shardings are as in
    :func:`make_train_step`; the batch axis of stacked batches is axis 1
    (`batch_sharding(mesh, leading=1)`).
    """
    _check_step_args(loss_fn, optimizer, ema_decay)

    def steps(state, batches):
        return jax.lax.scan(lambda s, b: _update(loss_fn, optimizer, ema_decay, s, b),
                            state, batches)

    return _jit(steps, state_sharding, batch_sharding)


_COUNTERS = ("nonfinite_total", "nonfinite_consecutive")  # the step's running totals


def summarize_metrics(metrics: dict[str, Array]) -> dict[str, Array]:
    """One record of scalars from the metrics of a step or a :func:`make_multi_step` call.

    Device operations only (no host sync). The step's running totals
    (`nonfinite_total`, `nonfinite_consecutive`) take their value after the
    last step. Every other integer or bool entry is a count of events per
    step (`skipped`, a loss's fallback flags, ...) and is summed over the
    call; floating entries are averaged over their finite values (NaN if
    none): the NaN loss of one skipped step would otherwise hide the
    others'. No entry of a loss's `aux` is known by name.

    Args:
      metrics: the metrics of :func:`make_train_step` (scalars) or of
        :func:`make_multi_step` (stacked on a leading axis of K steps).

    Returns:
      A dict of scalar arrays, e.g. for :class:`MetricsWriter`.
    """
    def reduce(name, value):
        value = jnp.asarray(value)
        if name in _COUNTERS:
            return value.reshape(-1)[-1]
        if jnp.issubdtype(value.dtype, jnp.inexact):
            finite = jnp.isfinite(value)
            return jnp.sum(jnp.where(finite, value, 0)) / jnp.sum(finite)  # NaN if none
        return jnp.sum(value.astype(jnp.int32))

    return {name: jax.tree.map(lambda v, n=name: reduce(n, v), value)
            for name, value in metrics.items()}
