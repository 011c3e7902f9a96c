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

import jax
import jax.numpy as jnp

from flowjax._checks import check_callable, check_key, check_path, check_signature
from flowjax.losses._cfm import call_model, check_batch, paired_batch, sample_times
from flowjax.time import uniform


def classifier_loss(params, key, batch, *, apply_fn, path, time_sampler=None,
                    model_key: bool = False):
    """Cross-entropy of a time-dependent classifier on the path's noisy points.

    Bind the options first: `loss = functools.partial(classifier_loss, apply_fn=..., path=...)`.

    Args:
      params: classifier parameters.
      key: a PRNG key (split for the noise, the time and the model).
      batch: a dict with `x1` (data `[B, *dims]`), `cond` (integer labels
        `[B]` in `[0, K)`) and optionally `x0` (noise shaped like `x1`;
        drawn from N(0, I) when absent).
      apply_fn: `apply_fn(params, x, t) -> logits [B, K]`.
      path: the affine path the guided model was trained on.
      time_sampler: `(key, shape) -> t`; uniform by default.
      model_key: call the classifier as `apply_fn(..., key=k)` (dropout).

    Returns:
      `(loss, aux)` with `aux = {"accuracy"}`, the fraction of noisy points
      classified correctly.
    """
    check_key("key", key)
    check_signature("apply_fn", apply_fn, 3)
    check_path("path", path)
    check_callable("time_sampler", time_sampler, allow_none=True)
    check_batch(batch, ("x1", "cond"))
    labels = batch["cond"]
    if not hasattr(labels, "dtype") or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError("`batch['cond']` must be an integer array of labels.")
    time_sampler = uniform() if time_sampler is None else time_sampler
    k_x0, k_t, k_z, k_model = jax.random.split(key, 4)
    x0, x1, _ = paired_batch(k_x0, None, batch)
    if labels.shape != x1.shape[:1]:
        raise ValueError(f"`batch['cond']` must have shape {x1.shape[:1]}, got {labels.shape}.")
    t = sample_times(time_sampler, k_t, x1.shape[0], x1.dtype)
    z = None if path.noise is None else jax.random.normal(k_z, x1.shape, x1.dtype)
    x_t = path.interpolate(x0, x1, t, z)
    logits = call_model(apply_fn, k_model if model_key else None, params, x_t, t)
    if logits.ndim != 2 or logits.shape[0] != x1.shape[0]:
        raise ValueError(f"`apply_fn` must return logits [B, K] with B = {x1.shape[0]}, "
                         f"got shape {tuple(logits.shape)}.")
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return jnp.mean(nll), {"accuracy": accuracy}
