"""CFM loss: its gradient is the marginal FM gradient; prediction targets and weightings agree."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import analytic, couplings, losses, paths
from flowjax.paths import Prediction


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
    sampler = lambda k, s: jax.random.uniform(k, s, minval=0.05, maxval=0.95)  # noqa: E731

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
    for i, coupling in enumerate((couplings.Independent(), couplings.ExactOT(),
                                  couplings.Sinkhorn(0.1), couplings.SchrodingerBridge(0.5))):
        loss = functools.partial(losses.cfm_loss, apply_fn=linear_field,
                                 path=paths.RectifiedFlow(noise=paths.BridgeNoise(0.5)),
                                 coupling=coupling)
        (val, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
            params, jax.random.PRNGKey(2), {"x1": x1})
        assert np.isfinite(float(val)) and float(aux["coupling_cost"]) > 0
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
        # Sinkhorn's fallback flag reaches the step metrics (0: this solve converged).
        assert i != 2 or "coupling_fallback" in aux
        assert int(aux.get("coupling_fallback", 0)) == 0


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
    with pytest.raises(ValueError, match=r"`batch\['x1'\]` contains non-finite"):
        loss(params, key, {"x1": jnp.ones((4, 2)).at[1, 1].set(jnp.inf)})
    with pytest.raises(ValueError, match="`apply_fn` returned shape"):
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
    loss = functools.partial(losses.cfm_loss, apply_fn=linear_field, path=paths.RectifiedFlow(),
                             coupling=couplings.ConditionAwareOT())
    _, aux = loss(_params(key), key, {"x1": x1, "cond": cond})
    # The loss draws x0 with the first key of its split, as the coupling would see it.
    x0 = jax.random.normal(jax.random.split(key, 6)[0], x1.shape)
    expect = couplings.ConditionAwareOT()(None, x0, x1, cond=cond).cost
    np.testing.assert_allclose(float(aux["coupling_cost"]), float(expect), rtol=1e-6)
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
                                  time_sampler=lambda k, shape: t,
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
