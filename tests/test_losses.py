"""CFM loss: its gradient is the marginal FM gradient; prediction targets and weightings agree."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import analytic, couplings, losses, paths
from flowjax import time as ftime
from flowjax.paths import Prediction


#: What a failed compiled value check raises: eagerly `EquinoxRuntimeError`; under `jax.jit`
#: the runtime's error (a RuntimeError or ValueError, by backend) carrying the message.
VALUE_CHECK_ERRORS = (eqx.EquinoxRuntimeError, RuntimeError, ValueError)


class Between(ftime.AbstractTimeSampler):
    """Uniform times on [lo, hi] (keeps the tests away from the singular ends)."""

    lo: float = 0.05
    hi: float = 0.95

    def _draw(self, key, shape):
        return jax.random.uniform(key, shape, minval=self.lo, maxval=self.hi)


class Fixed(ftime.AbstractTimeSampler):
    """The given times, whatever the key."""

    t: jax.Array

    def _draw(self, key, shape):
        return jnp.broadcast_to(self.t, shape)


def linear_field(params, x, t, cond=None):
    """A small model with enough freedom to have a non-trivial gradient."""
    del cond
    t = t[:, None]
    return x @ params["w"] + t * (x @ params["u"]) + params["b"] + t * params["c"]


def _params(key, d=2):
    k = jax.random.split(key, 4)
    return {"w": 0.3 * jax.random.normal(k[0], (d, d)), "u": 0.3 * jax.random.normal(k[1], (d, d)),
            "b": jax.random.normal(k[2], (d,)), "c": jax.random.normal(k[3], (d,))}


def _mixture():
    means = jnp.array([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]])
    a = jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]],
                   [[0.1, 0.0], [0.0, 0.1]]])
    return analytic.GaussianMixture.create(means, a, jnp.array([0.5, 0.3, 0.2]))


def _grad_stats(grad_fn, keys):
    flat = jnp.stack([jax.flatten_util.ravel_pytree(grad_fn(k))[0] for k in keys])
    return flat.mean(0), flat.std(0) / np.sqrt(len(keys))


def _marginal_fm_grad(path, data, field, params, n):
    """Gradient of the marginal FM loss on `data`, regressing on the exact field of `field`."""

    @jax.jit
    def grad(key):
        kd, k0, kt = jax.random.split(key, 3)
        x1, x0 = data.sample(kd, n), jax.random.normal(k0, (n, 2))
        t = jax.random.uniform(kt, (n,))
        x_t = path.alpha(t)[:, None] * x1 + path.sigma_total(t)[:, None] * x0
        target = analytic.mixture_velocity(path, field, x_t, t)
        return jax.grad(lambda p: jnp.mean((linear_field(p, x_t, t) - target) ** 2))(params)

    return grad


@pytest.mark.slow
@pytest.mark.parametrize("path", [paths.RectifiedFlow(), paths.Cosine(),
                                  paths.RectifiedFlow(noise=paths.BridgeNoise(0.5))],
                         ids=["rf", "cosine", "rf+bridge"])
def test_cfm_gradient_equals_marginal_fm_gradient(x64, path):
    """Lipman et al. 2023, Thm. 2, to Monte Carlo tolerance (4 standard errors)."""
    mix, params, n = _mixture(), _params(jax.random.PRNGKey(0)), 4096
    keys = jax.random.split(jax.random.PRNGKey(1), 24)
    loss = functools.partial(losses.cfm_loss, apply_fn=linear_field, path=path)

    @jax.jit
    def cfm_grad(key):
        kd, kl = jax.random.split(key)
        return jax.grad(lambda p: loss(p, kl, {"x1": mix.sample(kd, n)})[0])(params)

    fm_grad = _marginal_fm_grad(path, mix, mix, params, n)
    g_cfm, se_cfm = _grad_stats(cfm_grad, keys)
    g_fm, se_fm = _grad_stats(fm_grad, jax.random.split(jax.random.PRNGKey(2), 24))
    se = np.sqrt(se_cfm ** 2 + se_fm ** 2)
    assert np.all(np.abs(g_cfm - g_fm) < 4 * se + 1e-9), (g_cfm, g_fm, se)
    assert float(jnp.linalg.norm(g_cfm - g_fm) / jnp.linalg.norm(g_fm)) < 0.05
    # Power: a wrong marginal field (the mixture shifted by 0.3) is detected.
    shifted = analytic.GaussianMixture.create(mix.means + 0.3, mix.covs, mix.weights)
    wrong_grad = _marginal_fm_grad(path, mix, shifted, params, n)
    g_wrong, _ = _grad_stats(wrong_grad, keys[:8])
    assert np.max(np.abs(g_cfm - g_wrong) / se) > 10


def test_exact_field_has_zero_loss_for_a_single_data_point(x64):
    """For x1 = c the marginal velocity of rectified flow is (c - x) / (1 - t)."""
    c = jnp.array([1.5, -0.5])

    def exact(params, x, t, cond=None):
        return (c - x) / (1.0 - t)[:, None]

    loss, aux = losses.cfm_loss(None, jax.random.PRNGKey(0), {"x1": jnp.tile(c, (512, 1))},
                                apply_fn=exact, path=paths.RectifiedFlow())
    assert float(loss) < 1e-20
    assert float(aux["mse"]) < 1e-20


@pytest.mark.parametrize("prediction", [Prediction.DATA, Prediction.NOISE])
@pytest.mark.parametrize("path", [paths.RectifiedFlow(), paths.Cosine(), paths.VP()],
                         ids=["rf", "cosine", "vp"])
def test_velocity_weighting_makes_losses_equal(x64, prediction, path):
    """A data/noise model with `velocity_weighting` has the loss of its velocity conversion."""
    params = _params(jax.random.PRNGKey(3))
    x1 = jax.random.normal(jax.random.PRNGKey(4), (256, 2)) + 1.0
    sampler = Between()

    def as_prediction(p, x, t, cond=None):
        v = linear_field(p, x, t)
        return paths.convert(path, x, t, v, given=Prediction.VELOCITY, to=prediction)

    key = jax.random.PRNGKey(5)
    lv, _ = losses.cfm_loss(params, key, {"x1": x1}, apply_fn=linear_field, path=path,
                            time_sampler=sampler)
    lp, _ = losses.cfm_loss(params, key, {"x1": x1}, apply_fn=as_prediction, path=path,
                            time_sampler=sampler, prediction=prediction,
                            weighting=losses.velocity_weighting(path, prediction))
    assert float(lp) == pytest.approx(float(lv), rel=1e-8)
    lu, _ = losses.cfm_loss(params, key, {"x1": x1}, apply_fn=as_prediction, path=path,
                            time_sampler=sampler, prediction=prediction)
    assert abs(float(lu) - float(lv)) > 1e-3 * float(lv)  # the weighting matters


def test_loss_is_jittable_with_every_coupling():
    params = _params(jax.random.PRNGKey(0))
    x1 = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    for coupling in (couplings.Independent(), couplings.ExactOT(), couplings.Sinkhorn(0.1),
                     couplings.SchrodingerBridge(0.5)):
        loss = functools.partial(losses.cfm_loss, apply_fn=linear_field,
                                 path=paths.RectifiedFlow(noise=paths.BridgeNoise(0.5)),
                                 coupling=coupling)
        (val, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
            params, jax.random.PRNGKey(2), {"x1": x1})
        assert np.isfinite(float(val)) and float(aux["coupling_cost"]) > 0
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
        # Every coupling reports its fallback as an int32 count (0: this solve converged),
        # and every aux entry is a scalar.
        assert aux["coupling_fallback"].dtype == jnp.int32 and int(aux["coupling_fallback"]) == 0
        assert all(jnp.ndim(v) == 0 for v in aux.values()), aux


def test_ot_coupling_lowers_the_pair_cost():
    params = _params(jax.random.PRNGKey(0))
    x1 = jax.random.normal(jax.random.PRNGKey(1), (128, 2)) * 0.3
    costs = {}
    for name, c in (("ind", couplings.Independent()), ("ot", couplings.ExactOT())):
        _, aux = losses.cfm_loss(params, jax.random.PRNGKey(2), {"x1": x1},
                                 apply_fn=linear_field, path=paths.RectifiedFlow(), coupling=c)
        costs[name] = float(aux["coupling_cost"])
    assert costs["ot"] < 0.9 * costs["ind"]


def test_bad_inputs():
    params = _params(jax.random.PRNGKey(0))
    loss = functools.partial(losses.cfm_loss, apply_fn=linear_field, path=paths.RectifiedFlow())
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="'x1'"):
        loss(params, key, {"data": jnp.ones((4, 2))})
    with pytest.raises(ValueError, match=r"`batch\['x0'\]` and `batch\['x1'\]`"):
        loss(params, key, {"x1": jnp.ones((4, 2)), "x0": jnp.ones((3, 2))})
    with pytest.raises(TypeError, match="`prediction`"):
        loss(params, key, {"x1": jnp.ones((4, 2))}, prediction="score")
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"`batch\['x1'\]` contains non-finite"):
        loss(params, key, {"x1": jnp.ones((4, 2)).at[1, 1].set(jnp.inf)})
    with pytest.raises(ValueError, match="`apply_fn` returned"):
        losses.cfm_loss(params, key, {"x1": jnp.ones((4, 2))}, path=paths.RectifiedFlow(),
                        apply_fn=lambda p, x, t, c: x[:, :1])
    with pytest.raises(TypeError, match="`prediction`"):
        losses.velocity_weighting(paths.RectifiedFlow(), "data")


def _null_indicator(params, x, t, cond, key=None):
    """Predicts 1 in every coordinate for rows whose label is the null token 10, else 0."""
    del params, t, key
    return jnp.broadcast_to((cond == 10)[:, None].astype(x.dtype), x.shape)


def test_label_dropout_replaces_the_drop_fraction_of_labels():
    n, p = 20_000, 0.2
    batch = {"x1": jnp.zeros((n, 2)), "cond": jnp.zeros((n,), jnp.int32)}
    # Data prediction with x1 = 0: a row's error is 1 exactly when its label was dropped.
    _, aux = losses.cfm_loss(None, jax.random.PRNGKey(0), batch, apply_fn=_null_indicator,
                             path=paths.RectifiedFlow(), prediction=Prediction.DATA,
                             cond_drop_prob=p, null_cond=10)
    se = np.sqrt(p * (1 - p) / n)
    assert abs(float(aux["mse"]) - p) < 4 * se
    _, aux = losses.cfm_loss(None, jax.random.PRNGKey(0), batch, apply_fn=_null_indicator,
                             path=paths.RectifiedFlow(), prediction=Prediction.DATA)
    assert float(aux["mse"]) == 0.0


def test_the_condition_aware_coupling_gets_the_labels():
    x1 = jax.random.normal(jax.random.PRNGKey(1), (64, 2)) * 0.3
    cond = jnp.arange(64) % 4
    key = jax.random.PRNGKey(2)
    x0 = jax.random.normal(jax.random.PRNGKey(3), x1.shape)
    loss = functools.partial(losses.cfm_loss, apply_fn=linear_field, path=paths.RectifiedFlow(),
                             coupling=couplings.ConditionAwareOT())
    _, aux = loss(_params(key), key, {"x1": x1, "x0": x0, "cond": cond})
    expect = couplings.ConditionAwareOT()(None, x0, x1, cond=cond).cost
    blind = couplings.ExactOT()(None, x0, x1).cost
    np.testing.assert_allclose(float(aux["coupling_cost"]), float(expect), rtol=1e-6)
    assert float(blind) < float(expect) - 1e-3  # the labels changed the pairing
    with pytest.raises(ValueError, match="needs 'cond'"):
        loss(_params(key), key, {"x1": x1})


def test_model_key_reaches_the_model_and_dropout_follows_it():
    def dropout_field(params, x, t, cond=None, key=None):
        mask = jax.random.bernoulli(key, 0.5, x.shape) if key is not None else 1.0
        return linear_field(params, x, t, cond) * mask

    params = _params(jax.random.PRNGKey(0))
    batch = {"x1": jax.random.normal(jax.random.PRNGKey(1), (256, 2))}
    loss = functools.partial(losses.cfm_loss, apply_fn=dropout_field, path=paths.RectifiedFlow())
    plain = float(loss(params, jax.random.PRNGKey(3), batch)[0])
    a = float(loss(params, jax.random.PRNGKey(3), batch, model_key=True)[0])
    b = float(loss(params, jax.random.PRNGKey(3), batch, model_key=True)[0])
    c = float(loss(params, jax.random.PRNGKey(4), batch, model_key=True)[0])
    assert a == b and a != plain
    assert np.isfinite(c) and c != a
    with pytest.raises(ValueError, match="null_cond"):
        loss(params, jax.random.PRNGKey(3), batch, cond_drop_prob=0.1)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        loss(params, jax.random.PRNGKey(3), batch, cond_drop_prob=1.0, null_cond=0)


# -- diffusion losses in the flow view -----------------------------------------------------

KINDS = (Prediction.NOISE, Prediction.DATA, Prediction.VELOCITY, Prediction.SCORE)


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("path", [paths.VP(), paths.VE(0.01, 50.0)], ids=["vp", "ve"])
def test_prediction_losses_agree_up_to_the_documented_weighting(x64, path):
    """One model read as each of the four predictions: per sample, at random t, the loss on
    `given` weighted by `loss_weighting(path, given, to)` is the loss on `to`."""
    params = _params(jax.random.PRNGKey(3))
    x1 = jax.random.normal(jax.random.PRNGKey(4), (64, 2)) + 1.0
    keys = jax.random.split(jax.random.PRNGKey(5), 64)

    def as_kind(kind):
        def apply(p, x, t, cond=None):  # the velocity model, converted to `kind`
            v = linear_field(p, x, t)
            return paths.convert(path, x, t, v, given=Prediction.VELOCITY, to=kind)
        return apply

    # Every ordered pair on VP; on VE the pairs through the noise (the others are products).
    pairs = [(g, k) for g in KINDS for k in KINDS
             if g == k or isinstance(path, paths.VP) or Prediction.NOISE in (g, k)]

    @jax.jit
    def per_sample(keys, x1):
        def one(key, x):  # a batch of one: the loss of one sample at one random t
            return {f"{g.value}>{k.value}": losses.cfm_loss(
                params, key, {"x1": x[None]}, apply_fn=as_kind(g), path=path, prediction=g,
                weighting=None if g == k else losses.loss_weighting(path, g, k))[0]
                for g, k in pairs}
        return jax.vmap(one)(keys, x1)

    out = per_sample(keys, x1)
    for name, value in out.items():
        to = name.split(">")[1]
        np.testing.assert_allclose(value, out[f"{to}>{to}"], rtol=1e-9, err_msg=name)
    # The weights depend on t: the unweighted losses are not proportional to each other.
    for k in KINDS[1:]:
        assert np.std(np.log(out[f"{k.value}>{k.value}"] / out["noise>noise"])) > 0.1, k


def test_diffusion_weightings_match_their_formulas(x64):
    pairs = ((Prediction.NOISE, Prediction.DATA), (Prediction.SCORE, Prediction.NOISE),
             (Prediction.NOISE, Prediction.VELOCITY), (Prediction.DATA, Prediction.VELOCITY))

    @jax.jit  # one program per path
    def values(path, t):
        return {"pairs": [losses.loss_weighting(path, g, k)(t) for g, k in pairs],
                "velocity": losses.velocity_weighting(path, Prediction.DATA)(t),
                "d_log_snr": jax.vmap(jax.grad(
                    lambda u: jnp.log(path.alpha(u) ** 2 / path.sigma(u) ** 2)))(t),
                "ll_noise": losses.likelihood_weighting(path, Prediction.NOISE)(t),
                "ll_score": losses.likelihood_weighting(path)(t),
                "g2": paths.sde_diffusion(path, t) ** 2,
                "edm_data": losses.edm_weighting(path, 0.5)(t),
                "edm_noise": losses.edm_weighting(path, 0.5, Prediction.NOISE)(t)}

    t = jnp.linspace(0.05, 0.95, 10)
    for path in (paths.VP(), paths.VE(0.01, 50.0)):
        out = values(path, t)
        a, s = path.alpha(t), path.sigma(t)
        delta = a * path.d_sigma(t) - s * path.d_alpha(t)
        expect = [(s / a) ** 2, s ** 2, (delta / a) ** 2, (delta / s) ** 2]  # as in the pairs
        for got, value in zip(out["pairs"], expect):
            np.testing.assert_allclose(got, value, rtol=1e-10)
        np.testing.assert_allclose(out["velocity"], expect[3], rtol=1e-10)
        # Likelihood weighting: g^2 on the score; d log SNR / dt on the noise (Kingma et al.).
        np.testing.assert_allclose(out["ll_noise"], out["d_log_snr"], rtol=1e-10)
        np.testing.assert_allclose(out["ll_score"], out["g2"], rtol=1e-12)
        # EDM: lambda(sigma) for a data prediction, times 1/SNR for a noise prediction.
        sig = s / a
        lam = (sig ** 2 + 0.25) / (sig * 0.5) ** 2
        np.testing.assert_allclose(out["edm_data"], lam, rtol=1e-10)
        np.testing.assert_allclose(out["edm_noise"], lam * sig ** 2, rtol=1e-10)


def test_dsm_and_noise_prediction_losses_are_the_named_settings(x64):
    """DSM with Song et al.'s lambda = sigma^2 is the noise loss of eps = -sigma * score."""
    path, params, key = paths.VP(), _params(jax.random.PRNGKey(6)), jax.random.PRNGKey(7)
    batch = {"x1": jax.random.normal(jax.random.PRNGKey(8), (128, 2))}

    def score(p, x, t, cond=None):
        return paths.convert(path, x, t, linear_field(p, x, t), given=Prediction.VELOCITY,
                             to=Prediction.SCORE)

    def noise(p, x, t, cond=None):
        return -path.sigma(t)[:, None] * score(p, x, t)

    @jax.jit
    def values(params, key, batch):
        return (losses.dsm_loss(params, key, batch, apply_fn=score, path=path)[0],
                losses.noise_prediction_loss(params, key, batch, apply_fn=noise, path=path)[0],
                losses.cfm_loss(params, key, batch, apply_fn=noise, path=path,
                                prediction=Prediction.NOISE)[0],
                losses.dsm_loss(params, key, batch, apply_fn=score, path=path,
                                weighting=lambda t: jnp.ones_like(t))[0])

    dsm, eps, cfm, unweighted = values(params, key, batch)
    assert float(dsm) == pytest.approx(float(eps), rel=1e-10) and float(eps) == float(cfm)
    assert float(unweighted) > 2 * float(dsm)  # lambda = 1 weighs the small-sigma end up


def test_edm_loss_regresses_the_raw_network_on_its_unit_target(x64):
    """With the preconditioned model and lambda, the loss is |F - (x1 - c_skip x)/c_out|^2."""
    sd, n = 0.7, 256
    path = paths.VP()
    params = _params(jax.random.PRNGKey(9))
    x1 = sd * jax.random.normal(jax.random.PRNGKey(10), (n, 2))
    x0 = jax.random.normal(jax.random.PRNGKey(11), (n, 2))
    t = jax.random.uniform(jax.random.PRNGKey(12), (n,), minval=0.01, maxval=0.99)
    model = paths.edm_precondition(linear_field, path, sigma_data=sd)

    @jax.jit
    def values(params, x1, x0, t):
        loss, _ = losses.cfm_loss(params, jax.random.PRNGKey(0), {"x1": x1, "x0": x0},
                                  apply_fn=model, path=path, prediction=Prediction.DATA,
                                  time_sampler=Fixed(t),
                                  weighting=losses.edm_weighting(path, sd))
        sigma = (path.sigma(t) / path.alpha(t))[:, None]
        c_skip, c_out, c_in, c_noise = paths.edm_scalings(sigma, sd)
        x = x1 + sigma * x0  # EDM's noisy input
        target = (x1 - c_skip * x) / c_out
        raw = linear_field(params, c_in * x, c_noise[:, 0])
        return loss, jnp.mean((raw - target) ** 2), jnp.var(target)

    loss, direct, target_var = values(params, x1, x0, t)
    assert float(loss) == pytest.approx(float(direct), rel=1e-10)
    assert abs(float(target_var) - 1.0) < 0.1  # the unit-variance target


@pytest.mark.slow
def test_classifier_loss_is_smallest_at_the_exact_posterior(x64):
    """Two Gaussian classes: the exact p_t(y | x_t) beats sharper and flatter versions of it."""
    path = paths.RectifiedFlow()
    means, cov = jnp.array([[1.5, 0.0], [-1.5, 0.5]]), 0.2 * jnp.eye(2)
    parts = [analytic.GaussianMixture.gaussian(m, cov) for m in means]
    labels = (jnp.arange(4096) % 2).astype(jnp.int32)
    x1 = jnp.where(labels[:, None] == 0, parts[0].sample(jax.random.PRNGKey(1), 4096),
                   parts[1].sample(jax.random.PRNGKey(2), 4096))

    def exact(temperature):
        def logits(params, x, t):
            del params
            return jnp.stack([analytic.mixture_log_prob(path, c, x, t) for c in parts],
                             -1) * temperature
        return logits

    run = jax.jit(lambda temp: losses.classifier_loss(
        None, jax.random.PRNGKey(3), {"x1": x1, "cond": labels}, apply_fn=exact(temp),
        path=path), static_argnums=())
    (best, aux), (sharp, _), (flat, _) = run(1.0), run(2.0), run(0.5)
    assert float(best) < float(sharp) - 0.01 and float(best) < float(flat) - 0.01
    assert 0.6 < float(aux["accuracy"]) < 1.0
    with pytest.raises(ValueError, match="'cond'"):
        losses.classifier_loss(None, jax.random.PRNGKey(3), {"x1": x1}, apply_fn=exact(1.0),
                               path=path)
    with pytest.raises(TypeError, match="integer"):
        losses.classifier_loss(None, jax.random.PRNGKey(3), {"x1": x1, "cond": 1.0 * labels},
                               apply_fn=exact(1.0), path=path)
    with pytest.raises(TypeError, match="`given`"):
        losses.loss_weighting(path, "noise", Prediction.DATA)


# -- the regression core, the targets and the checks at the boundary ----------------------


def test_regression_is_the_weighted_mean_squared_error_per_dimension():
    pred = jnp.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    target = jnp.array([[0.0, 0.0], [1.0, 1.0], [3.0, 1.0]])
    per_sample = np.array([2.5, 1.0, 2.0])  # ||pred - target||^2 / D
    assert float(losses.regression(pred, target)) == pytest.approx(per_sample.mean())
    w = jnp.array([0.5, 2.0, 0.0])
    assert float(losses.regression(pred, target, w)) == pytest.approx(np.mean(w * per_sample))
    with pytest.raises(ValueError, match="`prediction`"):
        losses.regression(pred[:, :1], target)


def test_cfm_targets_follow_the_path(x64):
    path = paths.VP()
    k0, k1, kt = jax.random.split(jax.random.PRNGKey(0), 3)
    x0, x1 = jax.random.normal(k0, (8, 2)), jax.random.normal(k1, (8, 2))
    t = jax.random.uniform(kt, (8,), minval=0.05, maxval=0.95)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    da, ds = path.d_alpha(t)[:, None], path.d_sigma(t)[:, None]
    expect = {Prediction.VELOCITY: da * x1 + ds * x0, Prediction.DATA: x1,
              Prediction.NOISE: x0, Prediction.SCORE: -x0 / s}
    for kind, value in expect.items():
        np.testing.assert_allclose(losses.cfm_target(path, x0, x1, t, prediction=kind), value,
                                   rtol=1e-12, err_msg=kind)
    # A noise prediction read off the score target is the noise target (x_t plays no part).
    x_t = a * x1 + s * x0
    score = losses.cfm_target(path, x0, x1, t, prediction=Prediction.SCORE)
    np.testing.assert_allclose(paths.convert(path, x_t, t, score, given=Prediction.SCORE,
                                             to=Prediction.NOISE), x0, rtol=1e-10)
    np.testing.assert_allclose(losses.reflow_target(x0, x1), x1 - x0)
    with pytest.raises(TypeError, match="`prediction`"):
        losses.cfm_target(path, x0, x1, t, prediction="score")


def _cond_batch():
    x1 = jax.random.normal(jax.random.PRNGKey(1), (32, 2))
    return {"x1": x1, "cond": jnp.arange(32) % 4}


def _two_time_field(params, x, r, t, cond=None):
    return linear_field(params, x, t) + (t - r)[:, None]


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("name", ["cfm", "meanflow", "shortcut", "dsm"])
def test_cond_blind_couplings_are_refused_on_a_conditional_batch(name):
    """An OT coupling that ignores `cond` would pair rows across classes: refused, with the
    reason and the opt-in in the message; the opt-in, the independent and the
    condition-aware couplings train."""
    params, key, batch = _params(jax.random.PRNGKey(0)), jax.random.PRNGKey(2), _cond_batch()
    loss = {"cfm": functools.partial(losses.cfm_loss, apply_fn=linear_field,
                                     path=paths.RectifiedFlow()),
            "dsm": functools.partial(losses.dsm_loss, apply_fn=linear_field, path=paths.VP()),
            "meanflow": functools.partial(losses.meanflow_loss, apply_fn=_two_time_field),
            "shortcut": functools.partial(losses.shortcut_loss, apply_fn=_two_time_field,
                                          finest_steps=4)}[name]
    for blind in (couplings.ExactOT(), couplings.Sinkhorn(0.1)):
        with pytest.raises(ValueError, match="allow_cond_blind_coupling=True") as err:
            loss(params, key, batch, coupling=blind)
        assert "`coupling`" in str(err.value) and "batch['cond']" in str(err.value)
        assert "wrong conditionals" in str(err.value)
        value, aux = loss(params, key, batch, coupling=blind, allow_cond_blind_coupling=True)
        assert np.isfinite(float(value)) and float(aux["coupling_cost"]) > 0
    for fine in (couplings.Independent(), couplings.ConditionAwareOT()):
        assert np.isfinite(float(loss(params, key, batch, coupling=fine)[0]))
    # Without `cond` the same coupling is fine.
    assert np.isfinite(float(loss(params, key, {"x1": batch["x1"]},
                                  coupling=couplings.ExactOT())[0]))


def logit_normal(loc=0.0, scale=1.0):
    """An old-style factory: returns a sampler function instead of being one."""
    return lambda key, shape: jax.nn.sigmoid(loc + scale * jax.random.normal(key, shape))


def test_option_mistakes_get_errors_that_name_the_argument():
    params, key = _params(jax.random.PRNGKey(0)), jax.random.PRNGKey(0)
    batch = {"x1": jnp.ones((4, 2))}
    loss = functools.partial(losses.cfm_loss, params, key, batch, apply_fn=linear_field,
                             path=paths.RectifiedFlow())
    cases = [
        (dict(time_sampler=ftime.LogitNormal), TypeError,
         r"`time_sampler`.*the class LogitNormal itself; pass an instance"),
        (dict(time_sampler=logit_normal), TypeError,
         r"`time_sampler`.*the function logit_normal; if it builds the object, call it"),
        (dict(time_sampler="logit_normal"), TypeError, r"`time_sampler`.*string"),
        (dict(time_sampler=ftime.OrderedPairs(ftime.Uniform())), ValueError,
         r"`time_sampler` must draw one time per sample"),
        (dict(coupling=couplings.ExactOT), TypeError,
         r"`coupling`.*the class ExactOT itself; pass an instance"),
        (dict(coupling="exact_ot"), TypeError, r"`coupling`.*the string 'exact_ot'"),
        (dict(coupling=lambda key, x0, x1: ((x0, x1), {})), TypeError, r"`coupling` must be"),
        (dict(apply_fn=3), TypeError, r"`apply_fn` must be callable"),
        (dict(prediction=Prediction), TypeError, r"`prediction`"),
        (dict(allow_cond_blind_coupling="yes"), TypeError, r"`allow_cond_blind_coupling`"),
    ]
    for kwargs, kind, match in cases:
        with pytest.raises(kind, match=match):
            loss(**kwargs)
    with pytest.raises(ValueError, match=r"`batch` must be a dict with the keys \['x1'\]"):
        losses.cfm_loss(params, key, {"data": jnp.ones((4, 2))}, apply_fn=linear_field,
                        path=paths.RectifiedFlow())
    with pytest.raises(TypeError, match=r"`time_sampler`.*the class"):
        losses.meanflow_loss(params, key, batch, apply_fn=_two_time_field,
                             time_sampler=ftime.OrderedPairs)
    with pytest.raises(ValueError, match=r"`time_sampler` must draw pairs"):
        losses.meanflow_loss(params, key, batch, apply_fn=_two_time_field,
                             time_sampler=ftime.Uniform())
    with pytest.raises(ValueError, match="`finest_steps` must be a power of two"):
        losses.shortcut_loss(params, key, batch, apply_fn=_two_time_field, finest_steps=12)
    with pytest.raises(ValueError, match="`time_sampler` has no role"):
        losses.reflow_loss(params, key, {"x0": batch["x1"], **batch}, apply_fn=linear_field,
                           distill=True, time_sampler=ftime.Uniform())


def test_times_outside_the_unit_interval_fail_in_the_compiled_loss():
    params, key = _params(jax.random.PRNGKey(0)), jax.random.PRNGKey(0)
    loss = jax.jit(lambda t: losses.cfm_loss(params, key, {"x1": jnp.ones((4, 2))},
                                             apply_fn=linear_field, path=paths.RectifiedFlow(),
                                             time_sampler=Fixed(t))[0])
    assert np.isfinite(float(loss(jnp.full(4, 0.5))))
    with pytest.raises(VALUE_CHECK_ERRORS, match="`time_sampler` must lie in"):
        loss(jnp.full(4, 1.5))


def test_classifier_labels_outside_the_classes_fail(x64):
    x1 = jax.random.normal(jax.random.PRNGKey(0), (4, 2))

    def logits(params, x, t):  # two classes
        return jnp.stack([x[:, 0], -x[:, 0]], -1)

    run = jax.jit(lambda labels: losses.classifier_loss(
        None, jax.random.PRNGKey(1), {"x1": x1, "cond": labels}, apply_fn=logits,
        path=paths.RectifiedFlow())[0])
    assert np.isfinite(float(run(jnp.array([0, 1, 1, 0]))))
    for bad in ([0, 1, 2, 0], [0, -1, 1, 0]):  # 2 is out of range; -1 would wrap around
        with pytest.raises(VALUE_CHECK_ERRORS, match=r"`batch\['cond'\]` labels"):
            run(jnp.array(bad))


@pytest.mark.slow
def test_public_annotations_hold_at_run_time():
    """jaxtyping + beartype over the targets, the regression and a loss."""
    import beartype
    import jaxtyping

    def typechecked(fn):
        return jaxtyping.jaxtyped(typechecker=beartype.beartype)(fn)

    k0, k1, kt = jax.random.split(jax.random.PRNGKey(0), 3)
    x0, x1 = jax.random.normal(k0, (8, 2)), jax.random.normal(k1, (8, 2))
    r, t = jnp.full(8, 0.2), jax.random.uniform(kt, (8,), minval=0.3, maxval=0.9)
    rf, params = paths.RectifiedFlow(), _params(jax.random.PRNGKey(1))
    calls = [
        (losses.regression, (x0, x1), dict(weight=t)),
        (losses.cfm_target, (rf, x0, x1, t), dict(prediction=Prediction.DATA)),
        (losses.reflow_target, (x0, x1), {}),
        (losses.meanflow_target, (_two_time_field, params, x0, r, t, x1), {}),
        (losses.shortcut_target, (_two_time_field, params, x0, r, t), {}),
        (losses.cfm_loss, (params, jax.random.PRNGKey(2), {"x1": x1}),
         dict(apply_fn=linear_field, path=rf, coupling=couplings.ExactOT())),
    ]
    for fn, args, kwargs in calls:
        expected = fn(*args, **kwargs)
        got = typechecked(fn)(*args, **kwargs)
        assert jax.tree.structure(got) == jax.tree.structure(expected), fn.__qualname__
    with pytest.raises(Exception, match="(?i)type-check|violat"):  # a [B] weight of another B
        typechecked(losses.regression)(x0, x1, jnp.ones(3))
