r"""Conditional flow matching: one pure loss over any path, coupling, time
sampler, prediction target and weighting.

.. math::
    \mathcal L(\theta) = E_{t, (x_0, x_1) \sim \pi, z}\ w(t)\,
        \big\| f_\theta(x_t, t) - y_t \big\|^2 / D,

with :math:`x_t` from the path, :math:`\pi` the coupling, D the number of
dimensions, and the target :math:`y_t` the conditional velocity
:math:`\dot\alpha x_1 + \dot\sigma x_0 + \dot\gamma z` (Lipman et al. 2023;
Tong et al. 2023), the data `x1`, the standardized noise (see
:meth:`AffinePath.noise_target`) or the conditional score. Its gradient
equals that of the marginal flow-matching loss (Lipman et al. 2023, Thm. 2).
With a weighting from :func:`loss_weighting`, the four targets give the same
loss for the same model (:mod:`flowjax.losses._diffusion` lists the
diffusion losses this covers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flowjax._checks import (as_real_array, check_array, check_callable, check_finite,
                             check_key, check_number, check_path, check_same_shape,
                             check_unit_interval, is_concrete)
from flowjax.couplings import independent
from flowjax.paths import Prediction
from flowjax.paths._conversions import _coefficient, _coeffs, check_prediction
from flowjax.time import uniform


def paired_batch(k_x0, k_pair, batch, coupling=None):
    """Checks a batch, draws `x0 ~ N(0, I)` (key `k_x0`) if it has none, and applies the coupling.

    The prologue shared by every loss. Returns `(x0, x1, coupling_aux)`.
    """
    if not isinstance(batch, dict) or "x1" not in batch:
        raise ValueError("`batch` must be a dict with key 'x1' (and optionally 'x0', 'cond').")
    x1 = batch["x1"]
    check_array("batch['x1']", x1)
    check_finite("batch['x1']", x1)  # only outside jit: a traced batch is not inspected
    x0 = batch.get("x0")
    if x0 is None:
        x0 = jax.random.normal(k_x0, x1.shape, x1.dtype)
    else:
        check_array("batch['x0']", x0)
        check_same_shape("batch['x0']", x0, "batch['x1']", x1)
        check_finite("batch['x0']", x0)
    check_cond("batch['cond']", batch.get("cond"), x1.shape[0])
    coupling = independent() if coupling is None else check_callable("coupling", coupling)
    if getattr(coupling, "uses_cond", False):
        if batch.get("cond") is None:
            raise ValueError("this coupling pairs by condition: the batch needs 'cond'.")
        out = coupling(k_pair, x0, x1, batch["cond"])
    else:
        out = coupling(k_pair, x0, x1)
    try:
        (x0_c, x1_c), pair_aux = out
        shapes_ok = x0_c.shape == x0.shape and x1_c.shape == x1.shape and "cost" in pair_aux
    except (TypeError, ValueError, AttributeError):
        shapes_ok = False
    if not shapes_ok:
        raise ValueError("`coupling` must return ((x0, x1), aux) with x0 and x1 shaped like the "
                         "batch and aux['cost'].")
    return x0_c, x1_c, pair_aux


def check_cond(name, cond, batch_size):
    """`cond` (a pytree or None) must have arrays with a leading batch axis as leaves."""
    if cond is None:
        return
    for leaf in jax.tree.leaves(cond):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"`{name}` must be an array (or a pytree of arrays), "
                            f"got {type(leaf).__name__}.")
        if leaf.ndim < 1 or leaf.shape[0] != batch_size:
            raise ValueError(f"`{name}` must have a leading batch axis of {batch_size}, "
                             f"got shape {tuple(leaf.shape)}.")


def check_model(key, apply_fn):
    """The arguments every loss takes: the PRNG key and the model function."""
    check_key("key", key)
    check_callable("apply_fn", apply_fn)


def sample_times(time_sampler, key, n, dtype, *, pairs=False):
    """`time_sampler(key, (n,))`, checked: `[n]` times in [0, 1] (an `(r, t)` pair, r <= t)."""
    out = time_sampler(key, (n,))
    outs = out if pairs else (out,)
    what = "a pair (r, t) of [B] arrays" if pairs else "a [B] array"
    if not isinstance(outs, tuple) or len(outs) != (2 if pairs else 1) or not all(
            hasattr(o, "shape") and o.shape == (n,) for o in outs):
        raise ValueError(f"`time_sampler` must return {what} (B = {n}).")
    outs = tuple(as_real_array("time_sampler", o).astype(dtype) for o in outs)
    for o in outs:
        if is_concrete(o) and not np.all((np.asarray(o) >= 0) & (np.asarray(o) <= 1)):
            raise ValueError("`time_sampler` returned times outside [0, 1] (or NaN).")
    if pairs and is_concrete(outs[0]) and is_concrete(outs[1]) \
            and np.any(np.asarray(outs[0]) > np.asarray(outs[1])):
        raise ValueError("`time_sampler` must return pairs with r <= t.")
    return outs if pairs else outs[0]


def drop_labels(key, cond, null_cond, prob):
    """Replaces each label by `null_cond` with probability `prob` (classifier-free guidance).

    Returns `(cond, dropped)` with `dropped: [B]` bool. `cond` may be a pytree
    of arrays with a leading batch axis; every leaf of a dropped row is replaced.
    """
    batch = jax.tree.leaves(cond)[0].shape[0]
    dropped = jax.random.uniform(key, (batch,)) < prob

    def swap(c):
        mask = dropped.reshape((batch,) + (1,) * (c.ndim - 1))
        return jnp.where(mask, jnp.asarray(null_cond, c.dtype), c)

    return jax.tree.map(swap, cond), dropped


def check_batch(batch, keys=("x1",)):
    """A dict with `keys`; its `cond`, if any, aligned with `x1` (before any work is done)."""
    if not isinstance(batch, dict) or any(k not in batch for k in keys):
        raise ValueError(f"`batch` must be a dict with the keys {list(keys)} (and optionally "
                         "'x0', 'cond').")
    x1 = batch["x1"]
    if hasattr(x1, "shape") and len(x1.shape) >= 1:
        check_cond("batch['cond']", batch.get("cond"), x1.shape[0])


def check_label_dropout(cond_drop_prob, null_cond, batch):
    check_number("cond_drop_prob", cond_drop_prob, low=0.0, high=1.0, high_open=True)
    if cond_drop_prob > 0 and (null_cond is None or batch.get("cond") is None):
        raise ValueError("label dropout (`cond_drop_prob` > 0) needs `null_cond` and batch['cond'].")


def call_model(apply_fn, key, *args):
    """`apply_fn(*args)`, with `key=key` added when a key is given (dropout in training)."""
    return apply_fn(*args) if key is None else apply_fn(*args, key=key)


def check_output(out, target, name="apply_fn"):
    if out.shape != target.shape:
        raise ValueError(
            f"`{name}` returned shape {tuple(out.shape)}, expected {tuple(target.shape)}.")


def loss_weighting(path, given: Prediction, to: Prediction, *, t_clip: float = 1e-5):
    r"""The weight w(t) that turns a loss on prediction `given` into the loss on prediction `to`.

    At fixed :math:`(x_t, t)` every prediction is an affine function of every
    other (:func:`flowjax.paths.convert`), and so are the conditional targets,
    with the same slope. Writing each through the noise prediction
    :math:`\hat\varepsilon`, with :math:`\Delta = \alpha\dot{\bar\sigma} - \bar\sigma\dot\alpha`,

    .. math:: \delta\hat x_1 = -\frac{\bar\sigma}{\alpha}\delta\hat\varepsilon,\quad
              \delta\hat s = -\frac{1}{\bar\sigma}\delta\hat\varepsilon,\quad
              \delta\hat v = \frac{\Delta}{\alpha}\delta\hat\varepsilon,

    so for a model :math:`f` of kind `given` and its conversion :math:`f'` to kind `to`,
    :math:`\|f' - y'_t\|^2 = w(t)\,\|f - y_t\|^2` per sample, exactly, with
    :math:`w = (\partial f'/\partial f)^2`: e.g. noise -> data :math:`(\bar\sigma/\alpha)^2`
    (1/SNR), noise -> score :math:`1/\bar\sigma^2`, score -> noise :math:`\bar\sigma^2`
    (the score-matching weight :math:`\lambda = \bar\sigma^2` of Song et al. 2021
    is the noise loss), noise -> velocity :math:`(\Delta/\alpha)^2`. Kingma et
    al. 2021 ("Variational diffusion models") and Kingma & Gao 2023
    ("Understanding diffusion objectives as the ELBO with simple data
    augmentation") write all these losses as one weighted noise loss; this is
    that table in flow time. The factor is read off :func:`flowjax.paths.convert`,
    so it has the same floors and the identity holds there too.
    Valid for paths without extra noise, or with it folded into
    :math:`\bar\sigma` (independent Gaussian source) for targets other than the velocity.

    Args:
      path: an :class:`flowjax.paths.AffinePath`.
      given: the kind the loss is computed on (a :class:`flowjax.paths.Prediction`).
      to: the kind whose loss it should equal.
      t_clip: the floors, as in :func:`flowjax.paths.convert`.

    Returns:
      `w(t [B]) -> [B]`.
    """
    check_path("path", path)
    check_prediction("given", given)
    check_prediction("to", to)
    check_number("t_clip", t_clip, low=0.0, high=0.5, low_open=True, high_open=True)

    def weight(t):
        t = as_real_array("t", t)
        check_unit_interval("t", t)
        return _coefficient(path, t, given, to, t_clip) ** 2

    return weight


def velocity_weighting(path, prediction: Prediction, *, t_clip: float = 1e-5):
    r"""The weight w(t) that makes a data-, noise- or score-prediction loss a velocity loss.

    :func:`loss_weighting` with `to=Prediction.VELOCITY`: if :math:`f` predicts
    `x1` and :math:`v_f` is its conversion to a velocity,
    :math:`\|v_f - u_t\|^2 = (\Delta/\bar\sigma)^2\|f - x_1\|^2`; for noise
    prediction the factor is :math:`(\Delta/\alpha)^2`, with
    :math:`\Delta = \alpha\dot{\bar\sigma} - \bar\sigma\dot\alpha`
    (see :mod:`flowjax.paths`).
    """
    check_path("path", path)
    check_prediction("prediction", prediction)
    check_number("t_clip", t_clip, low=0.0, high=0.5, low_open=True, high_open=True)
    return loss_weighting(path, prediction, Prediction.VELOCITY, t_clip=t_clip)


def cfm_loss(params, key, batch, *, apply_fn, path, coupling=None,
             time_sampler=None, prediction: Prediction = Prediction.VELOCITY,
             weighting=None, cond_drop_prob: float = 0.0, null_cond=None,
             model_key: bool = False):
    r"""The conditional flow-matching loss, pure and ready for `jax.value_and_grad(has_aux=True)`.

    Bind the options first: `loss = functools.partial(cfm_loss, apply_fn=..., path=...)`.

    Args:
      params: model parameters, passed to `apply_fn`.
      key: a PRNG key (split for the source, coupling, time and noise).
      batch: a dict with `x1` (data `[B, *dims]`), optionally `x0` (source
        samples shaped like `x1`; drawn from N(0, I) when absent) and `cond`
        (conditioning, passed to `apply_fn` aligned with `x1`).
      apply_fn: `apply_fn(params, x, t, cond) -> [B, *dims]`.
      path: an :class:`flowjax.paths.AffinePath`.
      coupling: `(key, x0, x1) -> ((x0, x1), aux)`; independent by default.
        Couplings keep `x1` (and so `cond`) in place.
      time_sampler: `(key, shape) -> t`; uniform by default.
      prediction: what the model predicts and is regressed on:
        `Prediction.VELOCITY`, `DATA`, `NOISE` (DDPM's :math:`\varepsilon`; see
        :func:`noise_prediction_loss`) or `SCORE` (the conditional score
        :math:`-\varepsilon/\bar\sigma`, denoising score matching; see :func:`dsm_loss`).
      weighting: optional `w(t) -> [B]` weights (e.g. :func:`velocity_weighting`,
        :func:`loss_weighting`, :func:`likelihood_weighting`, :func:`edm_weighting`).
      cond_drop_prob: probability of replacing a row's label by `null_cond`
        (label dropout, so one model learns the conditional and unconditional
        fields for classifier-free guidance; Ho and Salimans 2022). The
        coupling sees the true labels.
      null_cond: the "no label" value (e.g. `num_classes` for the flowjax models).
      model_key: if True, the model is called as `apply_fn(..., key=k)` with
        a fresh key from `key` (for dropout; see :func:`flowjax.models.model_fn`).

    Returns:
      `(loss, aux)` with `aux = {"mse", "coupling_cost"}` (unweighted mean
      squared error and the transport cost of the pairs).
    """
    check_prediction("prediction", prediction)
    check_model(key, apply_fn)
    check_batch(batch)
    check_path("path", path)
    check_callable("time_sampler", time_sampler, allow_none=True)
    check_callable("weighting", weighting, allow_none=True)
    check_label_dropout(cond_drop_prob, null_cond, batch)
    time_sampler = uniform() if time_sampler is None else time_sampler
    k_x0, k_pair, k_t, k_z, k_drop, k_model = jax.random.split(key, 6)
    x0, x1, pair_aux = paired_batch(k_x0, k_pair, batch, coupling)
    cond = batch.get("cond")
    if cond_drop_prob > 0:
        cond, _ = drop_labels(k_drop, cond, null_cond, cond_drop_prob)
    t = sample_times(time_sampler, k_t, x1.shape[0], x1.dtype)
    z = None if path.noise is None else jax.random.normal(k_z, x1.shape, x1.dtype)

    x_t = path.interpolate(x0, x1, t, z)
    if prediction == Prediction.VELOCITY:
        target = path.velocity(x0, x1, t, z)
    elif prediction == Prediction.DATA:
        target = x1
    elif prediction == Prediction.NOISE:
        target = path.noise_target(x0, t, z)
    else:  # the conditional score -eps / sigma_total, floored like `convert`
        s_div = _coeffs(path, t, 1e-5).s_div.reshape((-1,) + (1,) * (x1.ndim - 1))
        target = -path.noise_target(x0, t, z) / s_div

    out = call_model(apply_fn, k_model if model_key else None, params, x_t, t, cond)
    check_output(out, target)
    err = jnp.mean(((out - target) ** 2).reshape(x1.shape[0], -1), axis=-1)
    mse = jnp.mean(err)
    loss = mse if weighting is None else jnp.mean(weighting(t) * err)
    return loss, {"mse": mse, "coupling_cost": pair_aux["cost"]}
