"""The memorization experiment's two fields: the exact empirical velocity and the trained MLP.

:func:`network` is the `experiments._loop.Method` of the MLP trained with
I-CFM (rectified-flow path, independent pairs); one object serves every
training-set size, so they share one compiled step. :func:`empirical_velocity`
is the exact minimizer of the same loss over all functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from experiments._loop import KeyedBatches, Method
from flowjax import losses, models, paths

PATH = paths.RectifiedFlow()
T_CLIP = paths.T_CLIP  # as flowjax.analytic: sigma is floored at sigma(1 - T_CLIP) to stay finite


def empirical_velocity(points, x, t):
    r"""The exact marginal velocity towards the empirical measure of `points [N, d]`, `[B, d]`.

    For the rectified-flow path :math:`x_t = t x_1 + (1 - t) x_0`, `x0 ~ N(0, I)`,

    .. math:: v(x, t) = \dot\alpha\, m + \dot\sigma\,\frac{x - \alpha m}{\sigma},\qquad
              m = \sum_k \operatorname{softmax}_k\Big(-\frac{\|x - \alpha y_k\|^2}
              {2\sigma^2}\Big) y_k,

    the posterior mean of the conditional velocity (Lipman et al. 2023, Thm. 1):
    :func:`flowjax.analytic.mixture_velocity` of `GaussianMixture.empirical(points)`
    (tested equal), without the per-component Cholesky factors that make that
    general form too slow for 64-D data.
    """
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])[:, None]
    a, da, ds = PATH.alpha(t), PATH.d_alpha(t), PATH.d_sigma_total(t)
    s = jnp.maximum(PATH.sigma_total(t), PATH.sigma_total(jnp.asarray(1.0 - T_CLIP, x.dtype)))
    diff = x[:, None, :] - a[:, :, None] * points[None]  # [B, N, d]
    weights = jax.nn.softmax(-jnp.sum(diff ** 2, -1) / (2 * s ** 2), axis=-1)
    m = weights @ points
    return da * m + ds * (x - a * m) / s


def exact_apply_fn(points, x, t, cond=None):
    """The exact empirical velocity as a model function (the training points are its params)."""
    del cond
    return empirical_velocity(points, x, t)


@functools.cache
def _network_fn(hidden, time_dim, time_scale):
    """The model function of an architecture (the same object for equal architectures)."""
    return models.model_fn(models.MLP(hidden=hidden, time_dim=time_dim, time_scale=time_scale))


def make_module(config):
    return models.MLP(hidden=tuple(config.hidden), time_dim=config.time_dim,
                      time_scale=config.time_scale)


def network(config, dim: int) -> Method:
    """The MLP on `dim`-D points, trained with I-CFM under Adam, warm-up then cosine decay."""
    apply_fn = _network_fn(tuple(config.hidden), config.time_dim, float(config.time_scale))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.num_train_steps,
        end_value=0.1 * config.learning_rate)
    module = make_module(config)

    def init(key):
        return jax.jit(module.init)(key, jnp.zeros((1, dim)), jnp.zeros((1,)))["params"]

    return Method("network", functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=PATH),
                  optax.adam(schedule), init, apply_fn=apply_fn, loss_name="CFM loss")


def point_batches(config, train_points, key) -> KeyedBatches:
    """Calls of `steps_per_call` batches drawn with replacement from `train_points [N, d]`."""
    n, d = train_points.shape
    k, b = config.steps_per_call, config.batch_size

    @jax.jit
    def make(call_key):
        k_idx, k_x0 = jax.random.split(call_key)
        idx = jax.random.randint(k_idx, (k, b), 0, n)
        return {"x0": jax.random.normal(k_x0, (k, b, d)), "x1": train_points[idx]}

    return KeyedBatches(make, key, steps_per_call=k)
