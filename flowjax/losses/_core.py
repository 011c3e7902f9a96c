r"""What every loss shares: the batch prologue, the draws, the model call and one regression.

A loss is a target plus :func:`regression`. The pieces here are written once
and used by every loss in :mod:`flowjax.losses`:

- :func:`paired_batch`: the batch checks, the source draw and the coupling;
- :func:`_sample_times`, :func:`_path_noise`, :func:`_drop_labels`: the draws;
- :func:`_model_call`: the model call, with a dropout key when asked for;
- :func:`regression`: the weighted mean squared error.

Coupling state (a warm start's potentials) is not threaded through losses:
a loss is a pure `(params, key, batch) -> (loss, aux)` and its aux holds
scalars only, so a stateful coupling is called with `state=None` (a cold
start). To warm-start, pair the batch before the step and pass the pairs as
`batch = {"x0": ..., "x1": ...}` with the default independent coupling.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from flowjax._checks import (check_array, check_callable, check_finite_eager, check_instance,
                             check_key, check_number, check_output_shape, check_path,
                             check_same_shape, check_signature, check_unit_interval, error_if)
from flowjax._types import Array, Batch, BatchTimes, Float
from flowjax.couplings._base import AbstractCoupling, CouplingResult
from flowjax.paths import Prediction
from flowjax.paths._conversions import check_prediction
from flowjax.time._base import AbstractTimeSampler

_COUPLING = "a coupling object (e.g. flowjax.couplings.Independent() or ExactOT())"
_TIME_SAMPLER = "a time sampler object (e.g. flowjax.time.Uniform() or LogitNormal(0.0, 1.0))"


# -- the regression --------------------------------------------------------------------------


def _squared_error(prediction: Batch, target: Batch) -> BatchTimes:
    """Per-sample mean squared error over the dimensions, `[B]`."""
    check_output_shape("prediction", prediction, target, "target")
    diff = (prediction - target).reshape(target.shape[0], -1)
    return jnp.mean(diff * diff, axis=-1)


def regression(prediction: Batch, target: Batch,
               weight: Float[Array, " B"] | None = None) -> Float[Array, ""]:
    r"""The weighted regression every loss reduces through.

    .. math:: \mathcal L = \frac1B\sum_i w_i\,\|f_i - y_i\|^2 / D,

    with D the number of dimensions of one sample. `target` is used as
    given: a target that should not be differentiated (a bootstrap or a
    `jax.jvp` target) is stopped by the function that builds it.

    Args:
      prediction: the model's output `[B, *dims]`.
      target: the regression target, shaped like `prediction`.
      weight: per-sample weights `[B]`; None is weight 1.

    Returns:
      The scalar loss.
    """
    err = _squared_error(prediction, target)
    return jnp.mean(err) if weight is None else jnp.mean(weight * err)


# -- structural checks shared by the losses --------------------------------------------------


def _check_cond(name: str, cond, batch_size: int) -> None:
    """`cond` (a pytree or None) must have arrays with a leading batch axis as leaves."""
    for leaf in jax.tree.leaves(cond):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"`{name}` must be an array (or a pytree of arrays), "
                            f"got {type(leaf).__name__}.")
        if leaf.ndim < 1 or leaf.shape[0] != batch_size:
            raise ValueError(f"`{name}` must have a leading batch axis of {batch_size}, "
                             f"got shape {tuple(leaf.shape)}.")


def _check_batch(batch, keys=("x1",)) -> None:
    """A dict with `keys`, `x1` an array and `cond`, if any, aligned with it."""
    if not isinstance(batch, dict) or any(k not in batch for k in keys):
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"`batch` must be a dict with the keys {list(keys)} (and optionally "
                         f"'x0', 'cond'), got {got}.")
    check_array("batch['x1']", batch["x1"])
    _check_cond("batch['cond']", batch.get("cond"), batch["x1"].shape[0])


#: The scalar options of the losses, by name, with their bounds (for `check_number`).
_NUMBERS = {"cond_drop_prob": dict(low=0.0, high=1.0, high_open=True),
            "weight_power": dict(low=0.0), "weight_eps": dict(low=0.0, low_open=True),
            "guidance_scale": {}, "guidance_mix": {},
            "finest_steps": dict(low=2, integer=True),
            "bootstrap_fraction": dict(low=0.0, high=1.0, high_open=True)}
#: The optional callables of the losses.
_CALLABLES = ("weighting", "velocity_fn")


def _check_loss_options(args: dict, default_times: AbstractTimeSampler, *,
                        model_args: int | None = None) -> AbstractTimeSampler:
    """Checks a loss's arguments by name, once per call; returns its time sampler.

    `args` are the loss's arguments (`locals()` as its first statement); each
    one the losses share is checked by its name (one name per concept), so
    every loss checks `key`, `apply_fn`, `path`, `prediction`, the scalar
    options, label dropout and guidance the same way. `model_args`, when given,
    is the number of positional arguments `apply_fn` must take. The time
    sampler is `default_times` when None, and must draw pairs exactly when
    `default_times` does.
    """
    check_key("key", args["key"])
    check_callable("apply_fn", args["apply_fn"])
    if model_args is not None:
        check_signature("apply_fn", args["apply_fn"], model_args)
    if args.get("path") is not None:
        check_path("path", args["path"])
    check_prediction("prediction", args.get("prediction", Prediction.VELOCITY))
    for name in _CALLABLES:
        check_callable(name, args.get(name), allow_none=True)
    for name, bounds in _NUMBERS.items():
        if name in args:
            check_number(name, args[name], **bounds)
    if args.get("finest_steps", 2) & (args.get("finest_steps", 2) - 1):
        raise ValueError(f"`finest_steps` must be a power of two >= 2, "
                         f"got {args['finest_steps']!r}.")
    if args.get("distill") and args.get("time_sampler") is not None:
        raise ValueError("`time_sampler` has no role with distill=True (the loss is at t = 0).")
    _check_conditioning(args)
    return _check_time_sampler(args.get("time_sampler"), default_times)


def _check_conditioning(args: dict) -> None:
    """Label dropout and guidance need `null_cond` and a batch with 'cond'."""
    batch = args["batch"]
    missing = args.get("null_cond") is None or not isinstance(batch, dict) \
        or batch.get("cond") is None
    if args.get("cond_drop_prob", 0.0) > 0 and missing:
        raise ValueError("label dropout (`cond_drop_prob` > 0) needs `null_cond` and "
                         "batch['cond'].")
    if _guided(args.get("guidance_scale", 1.0), args.get("guidance_mix", 0.0)) and missing:
        raise ValueError("guidance (`guidance_scale` != 1 or `guidance_mix` != 0) needs "
                         "`null_cond` and batch['cond'].")


def _guided(guidance_scale, guidance_mix) -> bool:
    """Whether MeanFlow's guidance is on (`(1, 0)` is no guidance)."""
    return guidance_scale != 1.0 or guidance_mix != 0.0


def _check_coupling(coupling, cond, allow_cond_blind_coupling: bool) -> AbstractCoupling:
    """A coupling object, refused when it would reorder a conditional batch blindly."""
    check_instance("coupling", coupling, AbstractCoupling, _COUPLING)
    check_instance("allow_cond_blind_coupling", allow_cond_blind_coupling, bool, "a bool")
    name = type(coupling).__name__
    if cond is not None and coupling.reorders and not coupling.uses_cond \
            and not allow_cond_blind_coupling:
        raise ValueError(
            f"`coupling` {name} reorders the pairs without looking at batch['cond']: a "
            "conditional model trained on such pairs learns the wrong conditionals (class "
            "accuracy 0.43 against 0.99 with independent pairs, measured at guidance scale 1). "
            "Use Independent() or ConditionAwareOT(), or pass allow_cond_blind_coupling=True "
            "to train on these pairs anyway.")
    if cond is None and coupling.needs_cond:
        raise ValueError(f"`coupling` {name} pairs by condition: the batch needs 'cond'.")
    return coupling


def _check_time_sampler(time_sampler, default: AbstractTimeSampler) -> AbstractTimeSampler:
    """`time_sampler` (`default` when None): a time-sampler object that draws pairs `(r, t)`
    exactly when `default` does."""
    if time_sampler is None:
        return default
    check_instance("time_sampler", time_sampler, AbstractTimeSampler, _TIME_SAMPLER)
    if time_sampler.pairs != default.pairs:
        want = ("pairs (r, t) (e.g. flowjax.time.OrderedPairs(...))" if default.pairs
                else "one time per sample, not pairs")
        raise ValueError(f"`time_sampler` must draw {want}, got {type(time_sampler).__name__}.")
    return time_sampler


# -- the prologue and the draws --------------------------------------------------------------


class Pairs(NamedTuple):
    """What :func:`paired_batch` returns."""

    x0: Batch  #: sources, paired with `x1` by the coupling
    x1: Batch  #: the data
    cond: Any  #: `batch['cond']` (None when absent), aligned with `x1`
    aux: dict  #: the coupling's scalar diagnostics, `coupling_*`


def _coupling_aux(result: CouplingResult, dtype) -> dict:
    """The coupling's diagnostics as loss aux: `coupling_cost` (float), `coupling_fallback`
    (int32, 1 when the coupling fell back to independent pairs) and `coupling_<stat>` for
    every scalar entry of `result.stats` (integer/bool ones are counts)."""
    aux = {f"coupling_{k}": jnp.asarray(v) for k, v in result.stats.items()
           if jnp.ndim(v) == 0}
    aux["coupling_cost"] = jnp.asarray(result.cost).astype(dtype)
    aux["coupling_fallback"] = jnp.asarray(result.fallback).astype(jnp.int32)
    return aux


def _check_pairing(batch, coupling, keys, allow_cond_blind_coupling):
    """The checked `(x0 or None, x1, cond, coupling)` of :func:`paired_batch`."""
    _check_batch(batch, keys)
    x1, x0, cond = batch["x1"], batch.get("x0"), batch.get("cond")
    coupling = _check_coupling(coupling, cond, allow_cond_blind_coupling)
    if x0 is not None:
        check_same_shape("batch['x0']", x0, "batch['x1']", x1)
        check_array("batch['x0']", x0)
        x0 = check_finite_eager("batch['x0']", x0)
    return x0, check_finite_eager("batch['x1']", x1), cond, coupling


def _check_result(result, x0, x1) -> CouplingResult:
    check_instance("coupling", result, CouplingResult,
                   "a coupling that returns a flowjax.couplings.CouplingResult")
    check_output_shape("coupling", result.x0, x0, "batch['x0']")
    check_output_shape("coupling", result.x1, x1, "batch['x1']")
    return result


def paired_batch(key, batch: dict, coupling: AbstractCoupling, *, keys=("x1",),
                 allow_cond_blind_coupling: bool = False) -> Pairs:
    """Checks a batch, draws `x0 ~ N(0, I)` if it has none, and pairs it with the coupling.

    The prologue of every loss. `key` is split into the key of the source
    draw and that of the coupling. A batch is checked finite in an eager call
    only: under `jit` a non-finite batch gives a non-finite loss, the step
    that :mod:`flowjax.train` skips and counts. A coupling that uses the condition is
    called with `cond=batch['cond']`; one that reorders without it is refused
    on a batch with `cond` unless `allow_cond_blind_coupling`. Couplings keep
    `x1` in place, so `cond` stays aligned with it.

    Args:
      key: a PRNG key.
      batch: a dict with (at least) `keys`, optionally `x0` and `cond`.
      coupling: a coupling object.
      keys: the keys the batch must have.
      allow_cond_blind_coupling: pair a conditional batch with a coupling
        that reorders without using `cond`.

    Returns:
      :class:`Pairs` `(x0, x1, cond, aux)`, `aux` the coupling's scalars.
    """
    x0, x1, cond, coupling = _check_pairing(batch, coupling, keys, allow_cond_blind_coupling)
    k_x0, k_pair = jax.random.split(key)
    x0 = jax.random.normal(k_x0, x1.shape, x1.dtype) if x0 is None else x0
    result = coupling(k_pair, x0, x1, **({"cond": cond} if coupling.uses_cond else {}))
    result = _check_result(result, x0, x1)
    return Pairs(result.x0, result.x1, cond, _coupling_aux(result, x1.dtype))


def _sample_times(time_sampler: AbstractTimeSampler, key, n: int, dtype):
    """`time_sampler(key, (n,))`: `[n]` times in [0, 1], or a pair `(r, t)` with `r <= t`.

    The shapes are checked at trace time, the values in the compiled program.
    """
    out = time_sampler(key, (n,), dtype)
    outs = out if time_sampler.pairs else (out,)
    if not isinstance(outs, tuple) or len(outs) != 1 + time_sampler.pairs or not all(
            getattr(o, "shape", None) == (n,) for o in outs):
        what = "a pair (r, t) of [B] arrays" if time_sampler.pairs else "a [B] array"
        raise ValueError(f"`time_sampler` must return {what} (B = {n}).")
    outs = tuple(check_unit_interval("time_sampler", jnp.asarray(o, dtype)) for o in outs)
    if not time_sampler.pairs:
        return outs[0]
    r, t = outs
    return error_if(r, jnp.any(r > t), "`time_sampler` must return pairs with r <= t."), t


def _path_noise(path, key, like: Batch) -> Batch | None:
    """The path's extra noise `z ~ N(0, I)` shaped like `like`, or None for a noiseless path."""
    return None if path.noise is None else jax.random.normal(key, like.shape, like.dtype)


def _drop_labels(key, cond, null_cond, prob: float):
    """Replaces each label by `null_cond` with probability `prob` (classifier-free guidance).

    Returns `(cond, dropped)` with `dropped: [B]` bool, or None when
    `prob == 0` (nothing is drawn). `cond` may be a pytree of arrays with a
    leading batch axis; every leaf of a dropped row is replaced.
    """
    if prob == 0:
        return cond, None
    batch = jax.tree.leaves(cond)[0].shape[0]
    dropped = jax.random.uniform(key, (batch,)) < prob

    def swap(c):
        mask = dropped.reshape((batch,) + (1,) * (c.ndim - 1))
        return jnp.where(mask, jnp.asarray(null_cond, c.dtype), c)

    return jax.tree.map(swap, cond), dropped


def _model_call(apply_fn, key, *args, like=None):
    """`apply_fn(*args)`, with `key=key` when a key is given (dropout), its shape checked
    against `like` (at trace time) when given."""
    out = apply_fn(*args) if key is None else apply_fn(*args, key=key)
    return out if like is None else check_output_shape("apply_fn", out, like, "x")


def _keyed_model(apply_fn, key):
    """`apply_fn` with `key=key` bound (a model called several times with one dropout mask)."""
    if key is None:
        return apply_fn
    return lambda *args: apply_fn(*args, key=key)
