"""Models of Flax linen, Flax NNX and equinox as the library's model function.

A model function is `apply_fn(params, x, t, cond=None, key=None) -> [B, *dims]`
(a flow map: `apply_fn(params, x, r, t, cond=None, key=None)`), with `params`
a pytree of floating arrays: what the losses, the train step, the samplers
and the checkpoints take. Each adapter splits a model into such a function
and its parameters:

- :func:`from_linen` (`module, params`), :func:`model_fn` (`module`),
- :func:`from_nnx` (`model`, through `nnx.split`),
- :func:`from_equinox` (`model`, through `eqx.partition(model, eqx.is_inexact_array)`).

The function is an immutable `equinox.Module` whose fields are all static:
two built from the same structure (the same linen module configuration, the
same NNX `GraphDef`, the same equinox static part) are equal and hash alike,
so rebuilding one does not recompile a sampler or a train step that holds it.

The wrapped model is called as `model(x, t)`, or `model(x, t, cond)` when a
condition is given (a flow map: `model(x, r, t[, cond])`); a `key` is passed
on as `key=key` (linen: `train=True` with `key` as the `dropout` rng).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp

from flowjax._checks import check_instance
from flowjax._types import Batch, Cond, KeyArray, Params

__all__ = ["EquinoxModel", "LinenModel", "NNXModel", "from_equinox", "from_linen", "from_nnx",
           "model_fn", "average_model_fn"]


def _call_args(adapter, args, cond, key):
    """`(times, cond, key)` from the positional arguments after `x` and the keywords."""
    n = 2 if adapter.flow_map else 1
    extra = args[n:]
    if len(args) < n or len(extra) > 2 or (extra and cond is not None) \
            or (len(extra) == 2 and key is not None):
        want = "x, r, t, cond=None, key=None" if adapter.flow_map else "x, t, cond=None, key=None"
        raise TypeError(f"a {type(adapter).__name__} takes (params, {want}), got "
                        f"{1 + len(args)} positional arguments after `params`.")
    return args[:n], (extra[0] if extra else cond), (extra[1] if len(extra) == 2 else key)


class _Adapter(eqx.Module):
    """The shared call convention; subclasses define `flow_map` and `_forward(params, inputs, key)`."""

    def __call__(self, params: Params, x: Batch, *args, cond: Cond = None,
                 key: KeyArray | None = None) -> Batch:
        """`self(params, x, t, cond=None, key=None)`, or `(params, x, r, t, cond=None, key=None)`."""
        times, cond, key = _call_args(self, args, cond, key)
        return self._forward(params, (x, *times) + (() if cond is None else (cond,)), key)


class LinenModel(_Adapter):
    """The model function of a linen module: `module.apply({"params": params}, *inputs)`.

    Attributes:
      module: the linen module (its configuration; a dataclass compared by value).
      flow_map: the module is a flow map, called as `module(x, r, t[, cond])`.
      duration: flowjax's two-time modules (`MLP`, `UNet`, `DiT` with
        `two_times=True`), which take the state time `r` and the jump
        duration: `module(x, r, cond, t - r)`. Set by :func:`average_model_fn`.
    """

    module: nn.Module = eqx.field(static=True)
    flow_map: bool = eqx.field(static=True, default=False)
    duration: bool = eqx.field(static=True, default=False)

    def _forward(self, params, inputs, key):
        if self.duration:
            x, r, t, *cond = inputs
            inputs = (x, r, cond[0] if cond else None, t - r)
        variables = {"params": params}
        if key is None:
            return self.module.apply(variables, *inputs)
        return self.module.apply(variables, *inputs, train=True, rngs={"dropout": key})


class NNXModel(_Adapter):
    """The model function of an NNX module: `nnx.merge(graphdef, params)(*inputs)`.

    Attributes:
      graphdef: the module's structure, from `nnx.split`.
      flow_map: the module is a flow map, called as `model(x, r, t[, cond])`.
    """

    graphdef: Any = eqx.field(static=True)
    flow_map: bool = eqx.field(static=True, default=False)

    def _forward(self, params, inputs, key):
        from flax import nnx

        model = nnx.merge(self.graphdef, params)
        return model(*inputs) if key is None else model(*inputs, key=key)


class EquinoxModel(_Adapter):
    """The model function of an equinox module: `eqx.combine(params, static)(*inputs)`.

    Attributes:
      static: the module without its floating arrays (`eqx.partition`'s second part).
      batched: the module takes a batch; else (equinox's convention) it takes
        one sample and is mapped over the batch with `jax.vmap` (one key each).
      flow_map: the module is a flow map, called as `model(x, r, t[, cond])`.
    """

    static: Any = eqx.field(static=True)
    batched: bool = eqx.field(static=True, default=False)
    flow_map: bool = eqx.field(static=True, default=False)

    def _forward(self, params, inputs, key):
        model = eqx.combine(params, self.static)
        kw = {} if key is None else {"key": key}
        if self.batched:
            return model(*inputs, **kw)
        x, *rest = inputs
        batch = x.shape[0]
        times = [jnp.broadcast_to(jnp.asarray(s, x.dtype), (batch,)) for s in
                 rest[:2 if self.flow_map else 1]]
        rest = times + rest[len(times):]
        if key is not None:
            kw = {"key": jax.random.split(key, batch)}
        return jax.vmap(lambda *a, **k: model(*a, **k))(x, *rest, **kw)


def model_fn(module: nn.Module) -> LinenModel:
    """The model function `apply_fn(params, x, t, cond=None, key=None)` of a linen module.

    Given a `key`, the module runs in training mode (`train=True`, dropout
    on, with `key` as its `dropout` rng): what the losses do with
    `model_key=True`. Without one it is deterministic, as samplers want it.
    Only modules with a `train` argument (:class:`UNet`, :class:`DiT`) accept
    a key. Two calls with equal modules give equal (and equally hashed)
    functions.
    """
    return LinenModel(_linen_module(module))


def average_model_fn(module: nn.Module) -> LinenModel:
    """Turns a flowjax two-time module into `apply_fn(params, x, r, t, cond)`, an average velocity.

    `x` is the state at time `r` and the output the average velocity to time
    `t >= r`, so that `x_t = x + (t - r) * apply_fn(params, x, r, t, cond)`
    (see :func:`flowjax.losses.meanflow_loss`). The module sees the state
    time `r` and the duration `t - r`. A `key` turns on training mode, as
    for :func:`model_fn`.
    """
    return LinenModel(_linen_module(module, two_times=True), flow_map=True, duration=True)


def _linen_module(module, two_times=False):
    check_instance("module", module, nn.Module, "a flax.linen.Module instance")
    if two_times and not getattr(module, "two_times", False):
        raise ValueError("`module` must take two times (e.g. MLP(two_times=True)).")
    return module


def _linen_params(variables):
    """`params` from a linen variables dict `{"params": ...}`, or `variables` if it is params."""
    if not hasattr(variables, "keys") or "params" not in variables:
        return variables
    other = sorted(set(variables.keys()) - {"params"})
    if other:
        raise ValueError(f"`params` holds the variable collections {other} besides 'params'; "
                         "from_linen supports modules whose only variables are parameters.")
    return variables["params"]


def from_linen(module: nn.Module, params: Params, *,
               flow_map: bool = False) -> tuple[LinenModel, Params]:
    """`(apply_fn, params)` for a linen module.

    Args:
      module: a `flax.linen.Module`, called as `module(x, t[, cond])` (a flow
        map: `module(x, r, t[, cond])`); with a `key`, as
        `module(..., train=True)` with the `dropout` rng.
      params: `module.init(...)`'s variables `{"params": ...}` or the params
        inside them.
      flow_map: the module is a flow map (two times). For flowjax's own
        two-time modules use :func:`average_model_fn`.

    Returns:
      `apply_fn(params, x, t, cond=None, key=None)` (a :class:`LinenModel`)
      and the params.
    """
    return LinenModel(_linen_module(module), flow_map=bool(flow_map)), _linen_params(params)


def _split_nnx(model):
    """`nnx.split(model, nnx.Param, ...)`, refusing a model with state other than parameters."""
    from flax import nnx

    check_instance("model", model, nnx.Module, "a flax.nnx.Module instance")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    others = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(rest)[0]]
    if others:
        raise ValueError(f"`model` holds state other than nnx.Param (e.g. {others[:3]}); "
                         "from_nnx supports models whose state is parameters only.")
    return graphdef, params


def from_nnx(model, *, flow_map: bool = False) -> tuple[NNXModel, Params]:
    """`(apply_fn, params)` for a Flax NNX module, through `nnx.split(model, nnx.Param, ...)`.

    Args:
      model: an `nnx.Module` called as `model(x, t[, cond])` (a flow map:
        `model(x, r, t[, cond])`), with `key=key` when a key is given. Its
        state must be parameters only (`nnx.Param`); batch statistics or
        stored RNG streams are refused, naming them.
      flow_map: the model is a flow map (two times).

    Returns:
      `apply_fn` (an :class:`NNXModel`, equal for models of the same
      `GraphDef`) and the `nnx.State` of the parameters, a pytree of arrays.
    """
    graphdef, params = _split_nnx(model)
    return NNXModel(graphdef, flow_map=bool(flow_map)), params


def _partition_equinox(model):
    """`eqx.partition(model, eqx.is_inexact_array)`, refusing other arrays (unhashable structure)."""
    check_instance("model", model, eqx.Module, "an equinox.Module instance")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    arrays = [jax.tree_util.keystr(p) for p, leaf in
              jax.tree_util.tree_flatten_with_path(static)[0] if eqx.is_array(leaf)]
    if arrays:
        raise TypeError(f"`model` holds non-floating arrays (at {arrays[:3]}); they cannot be "
                        "trained as params nor hashed as structure: keep them as Python values "
                        "in a static field (eqx.field(static=True)).")
    return params, static


def from_equinox(model, *, batched: bool = False,
                 flow_map: bool = False) -> tuple[EquinoxModel, Params]:
    """`(apply_fn, params)` for an equinox module, through `eqx.partition(model, eqx.is_inexact_array)`.

    Args:
      model: an `eqx.Module` called as `model(x, t[, cond])` (a flow map:
        `model(x, r, t[, cond])`), with `key=key` when a key is given.
      batched: `model` takes a batch `x [B, *dims], t [B]`; by default (the
        equinox convention) it takes one sample `x [*dims], t []` and is
        mapped over the batch.
      flow_map: the model is a flow map (two times).

    Returns:
      `apply_fn` (an :class:`EquinoxModel`, equal for models with equal
      static parts) and the floating arrays of `model` (the model itself
      with `None` elsewhere), the params to train and checkpoint.
    """
    params, static = _partition_equinox(model)
    return EquinoxModel(static, batched=bool(batched), flow_map=bool(flow_map)), params
