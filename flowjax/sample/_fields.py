"""Velocity fields and flow maps as pytrees: a model function with its parameters.

A field is called `field(x [B, *dims], t [B]) -> [B, *dims]`; a flow map
`flow_map(x, r, t)`. The model function is a static field (compared by
identity) and the parameters and conditions are leaves, so a field rebuilt
from the same function with new parameters reuses a compiled sampler. The
model is called through one inner `jax.jit`, which traces it once per input
shape however many times a solver evaluates the field.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx

from flowjax._checks import (check_array, check_finite, check_instance, check_output_shape,
                             check_path, check_signature)
from flowjax._types import Batch, BatchTimes, Cond, Params
from flowjax.paths import AffinePath, Prediction, convert
from flowjax.paths._conversions import check_prediction


@eqx.filter_jit
def _call_model(apply_fn, params, x, *inputs):
    """`apply_fn(params, x, *inputs)`, compiled once per input shape; shaped like `x`."""
    return check_output_shape("apply_fn", apply_fn(params, x, *inputs), x)  # at trace time


def _check_inputs(field, x, x_name: str = "x0", num_times: int = 1, field_name: str = "field"):
    """`x` checked (a floating batch, compiled finiteness check) after the field's signature."""
    _check_field(field_name, field, num_times)
    check_array(x_name, x)
    return check_finite(x_name, x)


def _check_field(name: str, field, num_times: int = 1):
    """Checks that `field` can be called as `field(x, t)` (or `field(x, r, t)`)."""
    call = "field(x [B, *dims], t [B])" if num_times == 1 else "flow_map(x, r [B], t [B])"
    if isinstance(field, type):  # e.g. ModelVelocity itself, not ModelVelocity(apply_fn, params)
        check_instance(name, field, (), f"a field called as {call}")
    try:
        return check_signature(name, field, num_times + 1)
    except TypeError as err:
        raise TypeError(f"`{name}` must be called as {call}, e.g. "
                        f"flowjax.sample.ModelVelocity(apply_fn, params); {err}") from None


def _check_model(apply_fn, num_args, path=None, prediction=Prediction.VELOCITY):
    """A model function of `num_args` arguments; `path` (an instance) converts a prediction
    that is not a velocity."""
    check_signature("apply_fn", apply_fn, num_args)
    check_prediction("prediction", prediction)
    if path is not None or prediction != Prediction.VELOCITY:
        if path is None:
            raise ValueError("`path` is needed to convert a non-velocity prediction.")
        check_path("path", path)


def _to_velocity(path, prediction, x, t, out):
    if prediction == Prediction.VELOCITY:
        return out
    return convert(path, x, t, out, given=prediction, to=Prediction.VELOCITY)


class ModelVelocity(eqx.Module):
    """The velocity field of a model `apply_fn(params, x, t, cond) -> [B, *dims]`.

    A data, noise or score prediction (`prediction`) is turned into a velocity
    with :func:`flowjax.paths.convert` on `path`.

    Attributes:
      apply_fn: the model function (static: compared by identity).
      params: its parameters, any pytree of arrays.
      cond: the condition passed to `apply_fn` (leading batch axis), or None.
      path: the affine path the model was trained on (needed for a
        prediction other than a velocity).
      prediction: the kind of the model's output.
    """

    apply_fn: Callable = eqx.field(static=True)
    params: Params
    cond: Cond = None
    path: AffinePath | None = None
    prediction: Prediction = eqx.field(default=Prediction.VELOCITY, static=True)

    def __check_init__(self):
        _check_model(self.apply_fn, 4, self.path, self.prediction)

    def __call__(self, x: Batch, t: BatchTimes) -> Batch:
        out = _call_model(self.apply_fn, self.params, x, t, self.cond)
        return _to_velocity(self.path, self.prediction, x, t, out)


class ModelFlowMap(eqx.Module):
    """The flow map of an average-velocity model `apply_fn(params, x, r, t, cond)`.

    Called `flow_map(x, r, t)`, the average velocity with
    :math:`x_t = x_r + (t - r)\\,u(x_r, r, t)` (MeanFlow, shortcut models).
    """

    apply_fn: Callable = eqx.field(static=True)
    params: Params
    cond: Cond = None

    def __check_init__(self):
        _check_model(self.apply_fn, 5)

    def __call__(self, x: Batch, r: BatchTimes, t: BatchTimes) -> Batch:
        return _call_model(self.apply_fn, self.params, x, r, t, self.cond)
