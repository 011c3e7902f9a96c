r"""Diffusion and score-matching losses in the flow view: named settings of :func:`cfm_loss`.

Diffusion papers run time from the data (s = 0) to the noise (s = 1);
flowjax's time is t = 1 - s, so a weight :math:`\lambda(s)` of a paper is
:math:`\lambda(1 - t)` here, and the VP and VE paths of :mod:`flowjax.paths`
are written with that flip already. With :math:`x_t = \alpha x_1 + \bar\sigma\varepsilon`:

============================================  ==========================================
paper's loss                                  flowjax
============================================  ==========================================
DDPM's :math:`L_{simple}` (Ho et al. 2020,    :func:`noise_prediction_loss` on `VP()`
Eq. 14): :math:`\|\varepsilon_\theta - \varepsilon\|^2`
denoising score matching (Vincent 2011;       :func:`dsm_loss`, default
Song & Ermon 2019; Song et al. 2021, Eq. 7):  :math:`\lambda = \bar\sigma^2` (their choice)
:math:`\lambda\|s_\theta + \varepsilon/\bar\sigma\|^2`
likelihood weighting :math:`\lambda = g^2`    :func:`likelihood_weighting`
(Song, Durkan, Murray & Ermon 2021)
data ("x0") prediction                        `cfm_loss(prediction=Prediction.DATA)`
EDM (Karras et al. 2022, Table 1)             :func:`edm_weighting`,
                                              :class:`flowjax.time.EDMLogNormal`,
                                              :func:`flowjax.paths.edm_precondition`
============================================  ==========================================

Every one is the same regression up to a time weighting
(:func:`loss_weighting`): for the same model converted between predictions,
noise, data, velocity and score losses agree per sample once weighted (Kingma
et al. 2021, "Variational diffusion models"; Kingma & Gao 2023).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from flowjax._checks import check_number
from flowjax._types import BatchTimes, Cond, KeyArray, Params, Scalar
from flowjax.couplings._base import AbstractCoupling
from flowjax.losses._cfm import _check_weighting, cfm_loss, loss_weighting
from flowjax.paths import T_CLIP, Prediction, noise_ratio, sde_diffusion
from flowjax.time._base import AbstractTimeSampler

Weighting = Callable[[BatchTimes], BatchTimes]


def noise_prediction_loss(params: Params, key: KeyArray, batch: dict, *, apply_fn: Callable,
                          path, weighting: Weighting | None = None,
                          coupling: AbstractCoupling | None = None,
                          time_sampler: AbstractTimeSampler | None = None,
                          cond_drop_prob: Scalar = 0.0, null_cond: Cond = None,
                          model_key: bool = False,
                          allow_cond_blind_coupling: bool = False) -> tuple[jax.Array, dict]:
    r"""The noise-prediction (:math:`\varepsilon`) loss: DDPM's :math:`L_{simple}` on the VP path.

    .. math:: \mathcal L = E_{t, x_1, \varepsilon}\ w(t)\,
              \big\|\varepsilon_\theta(\alpha x_1 + \bar\sigma\varepsilon, t)
              - \varepsilon\big\|^2 / D

    (Ho et al. 2020, "Denoising diffusion probabilistic models", Eq. 14, with
    w = 1 and `path=flowjax.paths.VP()`; their discrete step :math:`s` is
    flowjax's t = 1 - s/T). It is :func:`cfm_loss` with
    `prediction=Prediction.NOISE`; sample the model with
    `flowjax.sample.ModelVelocity(apply_fn, params, path=path, prediction=Prediction.NOISE)`
    through the probability-flow ODE (:func:`flowjax.sample.solve_ode`) or the
    reverse SDE (:func:`flowjax.sample.solve_sde` with
    :class:`flowjax.sample.ReverseDiffusion`).

    Args:
      params: model parameters.
      key: a PRNG key.
      batch: as in :func:`cfm_loss`.
      apply_fn: `apply_fn(params, x, t, cond) -> eps_hat [B, *dims]`.
      path: the affine path (VP, VE, ...).
      weighting: `w(t) -> [B]`; None is w = 1 ("simple");
        `likelihood_weighting(path, Prediction.NOISE)` is the ELBO's.
      coupling: as in :func:`cfm_loss`.
      time_sampler: as in :func:`cfm_loss`.
      cond_drop_prob: as in :func:`cfm_loss`.
      null_cond: as in :func:`cfm_loss`.
      model_key: as in :func:`cfm_loss`.
      allow_cond_blind_coupling: as in :func:`cfm_loss`.

    Returns:
      `(loss, aux)` as :func:`cfm_loss`.
    """
    return cfm_loss(params, key, batch, apply_fn=apply_fn, path=path,
                    prediction=Prediction.NOISE, weighting=weighting, coupling=coupling,
                    time_sampler=time_sampler, cond_drop_prob=cond_drop_prob,
                    null_cond=null_cond, model_key=model_key,
                    allow_cond_blind_coupling=allow_cond_blind_coupling)


def dsm_loss(params: Params, key: KeyArray, batch: dict, *, apply_fn: Callable, path,
             weighting: Weighting | None = None, coupling: AbstractCoupling | None = None,
             time_sampler: AbstractTimeSampler | None = None, cond_drop_prob: Scalar = 0.0,
             null_cond: Cond = None, model_key: bool = False,
             allow_cond_blind_coupling: bool = False) -> tuple[jax.Array, dict]:
    r"""Denoising score matching: a score model regressed on the conditional score.

    .. math:: \mathcal L = E_{t, x_1, \varepsilon}\ \lambda(t)\,
              \big\|s_\theta(x_t, t) - \nabla_{x_t}\log p(x_t | x_1)\big\|^2 / D,
              \qquad \nabla_{x_t}\log p(x_t | x_1) = -\varepsilon/\bar\sigma(t)

    (Vincent 2011; Song & Ermon 2019; Song et al. 2021, "Score-based generative
    modeling through SDEs", Eq. 7, with their time s = 1 - t). Its minimiser is
    the marginal score :math:`\nabla\log p_t`. The default
    :math:`\lambda = \bar\sigma^2` is Song et al.'s choice
    (:math:`\lambda \propto 1/E\|\nabla\log p(x_t|x_1)\|^2`), which makes the loss
    the noise-prediction loss of :math:`\varepsilon_\theta = -\bar\sigma s_\theta`
    exactly; :func:`likelihood_weighting` gives :math:`\lambda = g^2`. It is
    :func:`cfm_loss` with `prediction=Prediction.SCORE`. Where :math:`\bar\sigma`
    vanishes (t = 1 without a noise floor) the target is floored like
    :func:`flowjax.paths.convert`; use a weighting that vanishes there, or keep
    t away from 1.

    Args:
      params: model parameters.
      key: a PRNG key.
      batch: as in :func:`cfm_loss`.
      apply_fn: `apply_fn(params, x, t, cond) -> score [B, *dims]`.
      path: the affine path (VE and VP in the papers).
      weighting: :math:`\lambda(t) \to [B]`; None is :math:`\bar\sigma(t)^2`.
      coupling: as in :func:`cfm_loss`.
      time_sampler: as in :func:`cfm_loss`.
      cond_drop_prob: as in :func:`cfm_loss`.
      null_cond: as in :func:`cfm_loss`.
      model_key: as in :func:`cfm_loss`.
      allow_cond_blind_coupling: as in :func:`cfm_loss`.

    Returns:
      `(loss, aux)` as :func:`cfm_loss`.
    """
    if weighting is None:
        weighting = loss_weighting(path, Prediction.SCORE, Prediction.NOISE)
    return cfm_loss(params, key, batch, apply_fn=apply_fn, path=path,
                    prediction=Prediction.SCORE, weighting=weighting, coupling=coupling,
                    time_sampler=time_sampler, cond_drop_prob=cond_drop_prob,
                    null_cond=null_cond, model_key=model_key,
                    allow_cond_blind_coupling=allow_cond_blind_coupling)


def likelihood_weighting(path, prediction: Prediction = Prediction.SCORE, *,
                         t_clip: float = T_CLIP) -> Weighting:
    r"""The likelihood weighting :math:`\lambda(t) = g(t)^2` of the score loss, for any prediction.

    With :math:`\lambda = g^2` (:func:`flowjax.paths.sde_diffusion`) the
    score-matching loss bounds the negative log-likelihood (Song, Durkan,
    Murray & Ermon 2021, "Maximum likelihood training of score-based diffusion
    models", Thm. 1). On another prediction the weight is :math:`g^2` times
    :func:`loss_weighting` to the score; for the noise it is

    .. math:: w(t) = \frac{g^2}{\bar\sigma^2} = \frac{d}{dt}\log\mathrm{SNR}(t),

    the continuous-time ELBO's weight of Kingma et al. 2021 (their
    :math:`-\tfrac12\,\mathrm{SNR}'/\mathrm{SNR}` with time flipped, up to the 1/2).
    It grows like 1/(1 - t) at the data end of VP and rectified flow, so it is
    usually paired with importance sampling of t.

    Args:
      path: the affine path.
      prediction: what the model predicts (a :class:`flowjax.paths.Prediction`).
      t_clip: the floors, as in :func:`flowjax.paths.convert`.

    Returns:
      `w(t [B]) -> [B]`.
    """
    _check_weighting(path, t_clip, prediction=prediction)
    to_score = loss_weighting(path, prediction, Prediction.SCORE, t_clip=t_clip)

    def weight(t):
        return sde_diffusion(path, t, t_clip=t_clip) ** 2 * to_score(t)

    return weight


def edm_weighting(path, sigma_data: Scalar = 0.5, prediction: Prediction = Prediction.DATA, *,
                  t_clip: float = T_CLIP) -> Weighting:
    r"""EDM's loss weight :math:`\lambda = (\sigma^2 + \sigma_d^2)/(\sigma\sigma_d)^2` in flow time.

    Karras et al. 2022, Table 1 and Eq. 8: the denoiser loss
    :math:`\lambda(\sigma)\|D(x_1 + \sigma\varepsilon; \sigma) - x_1\|^2`, with
    :math:`\sigma = \bar\sigma(t)/\alpha(t)` (:func:`flowjax.paths.noise_ratio`).
    For a data prediction (the model of :func:`flowjax.paths.edm_precondition`)
    the weight is :math:`\lambda(\sigma(t))`, and then the loss is exactly
    :math:`\|F_\theta - (x_1 - c_{skip}x)/c_{out}\|^2`: unit weight on the raw
    network, because :math:`\lambda c_{out}^2 = 1`. For another prediction it is
    multiplied by :func:`loss_weighting` to the data. Use it with
    :class:`flowjax.time.EDMLogNormal`.

    Args:
      path: the affine path.
      sigma_data: the data's standard deviation :math:`\sigma_d`.
      prediction: what the model predicts.
      t_clip: the floors, as in :func:`flowjax.paths.convert`.

    Returns:
      `w(t [B]) -> [B]`.
    """
    _check_weighting(path, t_clip, prediction=prediction)
    check_number("sigma_data", sigma_data, low=0.0, low_open=True)
    to_data = loss_weighting(path, prediction, Prediction.DATA, t_clip=t_clip)

    def weight(t):
        sigma = noise_ratio(path, t, t_clip=t_clip)
        lam = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
        return lam * to_data(jnp.atleast_1d(t))

    return weight
