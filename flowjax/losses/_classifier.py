r"""A time-dependent classifier on noisy points, for classifier guidance.

.. math:: \mathcal L(\phi) = E_{t, (x_1, y), \varepsilon}\
          \big[-\log p_\phi(y \mid x_t, t)\big],\qquad x_t = \alpha x_1 + \bar\sigma\varepsilon,

the cross-entropy of a classifier that sees the path's noisy points. Its
minimiser is the posterior :math:`p_t(y \mid x_t)` of the marginal path, whose
gradient :class:`flowjax.sample.ClassifierGuidance` adds to the velocity
(Song et al. 2021, "Score-based generative modeling through SDEs", Sec. 5 and
App. I; Dhariwal & Nichol 2021, "Diffusion models beat GANs", Sec. 4).
The source is drawn independently of the data: the guidance formula assumes
the independent Gaussian path, so no coupling is offered.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from flowjax._checks import error_if
from flowjax._types import KeyArray, Params
from flowjax.couplings import Independent
from flowjax.losses._core import (_check_loss_options, _model_call, _path_noise, _sample_times,
                                  paired_batch)
from flowjax.time import Uniform
from flowjax.time._base import AbstractTimeSampler


def _check_labels(labels, logits, batch_size):
    """Integer labels `[B]` for logits `[B, K]`, checked in [0, K) in the compiled program."""
    if getattr(logits, "ndim", None) != 2 or logits.shape[0] != batch_size:
        raise ValueError(f"`apply_fn` must return logits [B, K] with B = {batch_size}, "
                         f"got shape {tuple(getattr(logits, 'shape', ()))}.")
    if not hasattr(labels, "dtype") or not jnp.issubdtype(labels.dtype, jnp.integer) \
            or labels.shape != (batch_size,):
        got = (f"{labels.dtype} of shape {tuple(labels.shape)}" if hasattr(labels, "dtype")
               else type(labels).__name__)
        raise TypeError(f"`batch['cond']` must be an integer array of labels [{batch_size}], "
                        f"got {got}.")
    k = logits.shape[1]
    return error_if(labels, jnp.any((labels < 0) | (labels >= k)),
                    f"`batch['cond']` labels must lie in [0, {k}) (the classifier's logits).")


def classifier_loss(params: Params, key: KeyArray, batch: dict, *, apply_fn: Callable, path,
                    time_sampler: AbstractTimeSampler | None = None,
                    model_key: bool = False) -> tuple[jax.Array, dict]:
    """Cross-entropy of a time-dependent classifier on the path's noisy points.

    Bind the options first: `loss = functools.partial(classifier_loss, apply_fn=..., path=...)`.

    Args:
      params: classifier parameters.
      key: a PRNG key (split for the noise, the time and the model).
      batch: a dict with `x1` (data `[B, *dims]`), `cond` (integer labels
        `[B]` in `[0, K)`, checked in the compiled program) and optionally
        `x0` (noise shaped like `x1`; drawn from N(0, I) when absent).
      apply_fn: `apply_fn(params, x, t) -> logits [B, K]`.
      path: the affine path the guided model was trained on.
      time_sampler: a time-sampler object; `Uniform()` by default.
      model_key: call the classifier as `apply_fn(..., key=k)` (dropout).

    Returns:
      `(loss, aux)` with `aux = {"accuracy"}`, the fraction of noisy points
      classified correctly.
    """
    time_sampler = _check_loss_options(locals(), Uniform(), model_args=3)
    k_pair, k_t, k_z, k_model = jax.random.split(key, 4)
    x0, x1, labels, _ = paired_batch(k_pair, batch, Independent(), keys=("x1", "cond"))
    t = _sample_times(time_sampler, k_t, x1.shape[0], x1.dtype)
    x_t = path.interpolate(x0, x1, t, _path_noise(path, k_z, x1))
    logits = _model_call(apply_fn, k_model if model_key else None, params, x_t, t)
    labels = _check_labels(labels, logits, x1.shape[0])
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    return jnp.mean(nll), {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
