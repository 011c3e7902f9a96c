r"""Conditional flow matching: one pure loss over any path, coupling, time
sampler, prediction target and weighting.

.. math::
    \mathcal L(\theta) = E_{t, (x_0, x_1) \sim \pi, z}\ w(t)\,
        \big\| f_\theta(x_t, t) - y_t \big\|^2 / D,

with :math:`x_t` from the path, :math:`\pi` the coupling, D the number of
dimensions, and the target :math:`y_t` (:func:`cfm_target`) the conditional
velocity :math:`\dot\alpha x_1 + \dot\sigma x_0 + \dot\gamma z` (Lipman et
al. 2023; Tong et al. 2023), the data `x1`, the standardized noise (see
:meth:`AffinePath.noise_target`) or the conditional score. Its gradient
equals that of the marginal flow-matching loss (Lipman et al. 2023, Thm. 2).
With a weighting from :func:`loss_weighting`, the four targets give the same
loss for the same model (:mod:`flowjax.losses._diffusion` lists the
diffusion losses this covers).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from flowjax._checks import as_real_array, check_number, check_path
from flowjax._types import Batch, BatchTimes, Cond, KeyArray, Params, Scalar
from flowjax.couplings import Independent
from flowjax.couplings._base import AbstractCoupling
from flowjax.losses._core import (_check_cond, _check_loss_options, _drop_labels, _model_call,
                                  _path_noise, _sample_times, paired_batch, regression)
from flowjax.paths import T_CLIP, Prediction, convert
from flowjax.paths._conversions import _coefficient, check_prediction
from flowjax.time import Uniform
from flowjax.time._base import AbstractTimeSampler

check_cond = _check_cond  # the name flowjax.losses._cnf imports


def _check_weighting(path, t_clip, **predictions):
    """The arguments of a weighting: a path, the floors' `t_clip` and the predictions."""
    check_path("path", path)
    for name, kind in predictions.items():
        check_prediction(name, kind)
    check_number("t_clip", t_clip, low=0.0, high=0.5, low_open=True, high_open=True)


def cfm_target(path, x0: Batch, x1: Batch, t: BatchTimes, z: Batch | None = None, *,
               prediction: Prediction = Prediction.VELOCITY) -> Batch:
    r"""The conditional flow-matching target at :math:`x_t` on `path`, for each prediction.

    - `VELOCITY`: the conditional velocity :math:`\dot\alpha x_1 + \dot\sigma x_0 + \dot\gamma z`;
    - `DATA`: `x1`;
    - `NOISE`: the standardized noise :math:`\varepsilon` (:meth:`AffinePath.noise_target`);
    - `SCORE`: the conditional score :math:`-\varepsilon/\bar\sigma`, floored near
      :math:`\bar\sigma = 0` like :func:`flowjax.paths.convert` (at :data:`flowjax.paths.T_CLIP`).

    Args:
      path: an :class:`flowjax.paths.AffinePath`.
      x0: sources `[B, *dims]`.
      x1: data `[B, *dims]`.
      t: times `[B]` in [0, 1].
      z: the path's extra noise `[B, *dims]`; required iff the path has noise.
      prediction: what the model predicts (a :class:`flowjax.paths.Prediction`).

    Returns:
      The target `[B, *dims]`.
    """
    check_prediction("prediction", prediction)
    if prediction == Prediction.VELOCITY:
        return path.velocity(x0, x1, t, z)
    if prediction == Prediction.DATA:
        return x1
    eps = path.noise_target(x0, t, z)
    if prediction == Prediction.NOISE:
        return eps
    x_t = path.interpolate(x0, x1, t, z)  # the score of eps does not depend on x_t
    return convert(path, x_t, t, eps, given=Prediction.NOISE, to=Prediction.SCORE,
                   t_clip=T_CLIP)


def loss_weighting(path, given: Prediction, to: Prediction, *,
                   t_clip: float = T_CLIP) -> Callable[[BatchTimes], BatchTimes]:
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
    _check_weighting(path, t_clip, given=given, to=to)

    def weight(t):
        return _coefficient(path, as_real_array("t", t), given, to, t_clip) ** 2

    return weight


def velocity_weighting(path, prediction: Prediction, *,
                       t_clip: float = T_CLIP) -> Callable[[BatchTimes], BatchTimes]:
    r"""The weight w(t) that makes a data-, noise- or score-prediction loss a velocity loss.

    :func:`loss_weighting` with `to=Prediction.VELOCITY`: if :math:`f` predicts
    `x1` and :math:`v_f` is its conversion to a velocity,
    :math:`\|v_f - u_t\|^2 = (\Delta/\bar\sigma)^2\|f - x_1\|^2`; for noise
    prediction the factor is :math:`(\Delta/\alpha)^2`, with
    :math:`\Delta = \alpha\dot{\bar\sigma} - \bar\sigma\dot\alpha`
    (see :mod:`flowjax.paths`).

    Args:
      path: an :class:`flowjax.paths.AffinePath`.
      prediction: what the model predicts.
      t_clip: the floors, as in :func:`flowjax.paths.convert`.

    Returns:
      `w(t [B]) -> [B]`.
    """
    _check_weighting(path, t_clip, prediction=prediction)
    return loss_weighting(path, prediction, Prediction.VELOCITY, t_clip=t_clip)


def cfm_loss(params: Params, key: KeyArray, batch: dict, *, apply_fn: Callable, path,
             coupling: AbstractCoupling | None = None,
             time_sampler: AbstractTimeSampler | None = None,
             prediction: Prediction = Prediction.VELOCITY,
             weighting: Callable[[BatchTimes], BatchTimes] | None = None,
             cond_drop_prob: Scalar = 0.0, null_cond: Cond = None, model_key: bool = False,
             allow_cond_blind_coupling: bool = False) -> tuple[jax.Array, dict]:
    r"""The conditional flow-matching loss, pure and ready for `jax.value_and_grad(has_aux=True)`.

    :func:`cfm_target` regressed on (:func:`regression`). Bind the options
    first: `loss = functools.partial(cfm_loss, apply_fn=..., path=...)`.

    Args:
      params: model parameters, passed to `apply_fn`.
      key: a PRNG key (split for the source, coupling, time, noise, label
        dropout and model, in that order: `jax.random.split(key, 5)`, the
        first half of the first key drawing the source).
      batch: a dict with `x1` (data `[B, *dims]`), optionally `x0` (source
        samples shaped like `x1`; drawn from N(0, I) when absent) and `cond`
        (conditioning, passed to `apply_fn` aligned with `x1`).
      apply_fn: `apply_fn(params, x, t, cond) -> [B, *dims]`.
      path: an :class:`flowjax.paths.AffinePath`.
      coupling: a coupling object (:mod:`flowjax.couplings`);
        `Independent()` by default. It keeps `x1` (and so `cond`) in place.
        On a batch with `cond`, a coupling that reorders the pairs without
        using the condition (`ExactOT`, `Sinkhorn`, ...) is refused: the
        model would learn the wrong conditionals. Use `Independent()` or
        `ConditionAwareOT()`, or set `allow_cond_blind_coupling`.
      time_sampler: a time-sampler object (:mod:`flowjax.time`); `Uniform()` by default.
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
        a fresh key from `key` (for dropout).
      allow_cond_blind_coupling: train a conditional batch on the pairs of a
        coupling that ignores `cond`.

    Returns:
      `(loss, aux)`, aux a dict of scalars: `mse` (the unweighted mean
      squared error), `coupling_cost` (the transport cost of the pairs),
      `coupling_fallback` (int32, 1 when the coupling fell back to
      independent pairs) and the coupling's own scalar stats as `coupling_*`.
    """
    time_sampler = _check_loss_options(locals(), Uniform())
    k_pair, k_t, k_z, k_drop, k_model = jax.random.split(key, 5)
    x0, x1, cond, aux = paired_batch(k_pair, batch, Independent() if coupling is None
                                     else coupling,
                                     allow_cond_blind_coupling=allow_cond_blind_coupling)
    cond, _ = _drop_labels(k_drop, cond, null_cond, cond_drop_prob)
    t = _sample_times(time_sampler, k_t, x1.shape[0], x1.dtype)
    z = _path_noise(path, k_z, x1)
    target = cfm_target(path, x0, x1, t, z, prediction=prediction)
    out = _model_call(apply_fn, k_model if model_key else None, params,
                      path.interpolate(x0, x1, t, z), t, cond, like=x1)
    mse = regression(out, target)
    loss = mse if weighting is None else regression(out, target, weighting(t))
    return loss, {"mse": mse, **aux}
