"""Paths: conditional velocity = d/dt interpolant, exact conversions, safe ends, clear errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowjax
from flowjax import paths
from flowjax.paths import Prediction

ALL_PATHS = [
    paths.RectifiedFlow(),
    paths.LipmanPath(sigma_min=0.01),
    paths.Cosine(),
    paths.VP(),
    paths.VE(sigma_min=0.01, sigma_max=50.0),
    paths.Polynomial(n=3.0),
    paths.Polynomial(n=0.5),
    paths.RectifiedFlow(noise=paths.ConstantNoise(0.1)),
    paths.RectifiedFlow(noise=paths.BridgeNoise(0.7)),
    paths.Cosine(noise=paths.BridgeNoise(0.3)),
    paths.VP(noise=paths.ConstantNoise(0.05)),
]
IDS = [f"{type(p).__name__}-{type(p.noise).__name__}" for p in ALL_PATHS]


def _batch(key, shape=(16, 3)):
    k0, k1, kz, kt = jax.random.split(key, 4)
    x0 = jax.random.normal(k0, shape)
    x1 = 2.0 + jax.random.normal(k1, shape)
    z = jax.random.normal(kz, shape)
    t = jax.random.uniform(kt, shape[:1], minval=0.02, maxval=0.98)
    return x0, x1, z, t


@pytest.mark.fast_cases(4)
@pytest.mark.parametrize("path", ALL_PATHS, ids=IDS)
def test_velocity_is_time_derivative_of_interpolant(x64, path):
    x0, x1, z, t = _batch(jax.random.PRNGKey(0))
    z = z if path.noise is not None else None

    def interp(tt):
        return path.interpolate(x0, x1, tt, z)

    _, jvp = jax.jvp(interp, (t,), (jnp.ones_like(t),))
    v = jax.jit(lambda a, b, c, d: path.velocity(a, b, c, d))(x0, x1, t, z)
    np.testing.assert_allclose(v, jvp, rtol=1e-6, atol=1e-6)


@pytest.mark.fast_cases(4)
@pytest.mark.parametrize("path", ALL_PATHS, ids=IDS)
def test_schedule_derivatives_match_autodiff(x64, path):
    t = jnp.linspace(0.05, 0.95, 19)
    for f, df in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma),
                  (path.gamma, path.d_gamma), (path.sigma_total, path.d_sigma_total)):
        auto = jax.vmap(jax.grad(f))(t)
        np.testing.assert_allclose(df(t), auto, rtol=1e-6, atol=1e-8)


@pytest.mark.fast_cases(2)
@pytest.mark.parametrize("path", ALL_PATHS, ids=IDS)
def test_conversions_round_trip(x64, path):
    x0, x1, _, t = _batch(jax.random.PRNGKey(1))
    x_t = jax.random.normal(jax.random.PRNGKey(2), x0.shape) * 2.0
    value = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
    conv = jax.jit(paths.convert, static_argnames=("given", "to"))
    for a in Prediction:
        for b in Prediction:
            there = conv(path, x_t, t, value, given=a, to=b)
            back = conv(path, x_t, t, there, given=b, to=a)
            np.testing.assert_allclose(back, value, rtol=1e-6, atol=1e-6,
                                       err_msg=f"{a} -> {b} -> {a}")


@pytest.mark.parametrize("path", ALL_PATHS[:6], ids=IDS[:6])
def test_conversions_recover_conditional_quantities(x64, path):
    """With one (x0, x1) pair the posterior means are x0 and x1 themselves."""
    x0, x1, _, t = _batch(jax.random.PRNGKey(4))
    x_t = path.interpolate(x0, x1, t)
    v = path.velocity(x0, x1, t)
    conv = lambda val, g, to: paths.convert(path, x_t, t, val, given=g, to=to)  # noqa: E731
    np.testing.assert_allclose(conv(v, Prediction.VELOCITY, Prediction.DATA), x1, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(conv(v, Prediction.VELOCITY, Prediction.NOISE), x0, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(conv(x1, Prediction.DATA, Prediction.VELOCITY), v, rtol=1e-6,
                               atol=1e-6)
    # Score of the Gaussian source-conditioned marginal: -x0 / sigma.
    s = conv(x0, Prediction.NOISE, Prediction.SCORE)
    np.testing.assert_allclose(s, -x0 / path.sigma(t)[:, None], rtol=1e-6)


def test_endpoints_of_paths():
    """Source at t = 0, data at t = 1 (up to each path's documented offsets)."""
    x0, x1, _, _ = _batch(jax.random.PRNGKey(6))
    ones, zeros = jnp.ones(x0.shape[0]), jnp.zeros(x0.shape[0])
    for p in (paths.RectifiedFlow(), paths.Cosine(), paths.Polynomial(2.0),
              paths.LipmanPath(0.0)):
        np.testing.assert_allclose(p.interpolate(x0, x1, zeros), x0, atol=1e-6)
        np.testing.assert_allclose(p.interpolate(x0, x1, ones), x1, atol=1e-6)
    vp = paths.VP()
    assert float(vp.alpha(0.0)) == pytest.approx(np.exp(-0.5 * (0.1 + 0.5 * 19.9)), rel=1e-5)
    np.testing.assert_allclose(vp.interpolate(x0, x1, ones), x1, atol=1e-6)
    t = jnp.linspace(0, 1, 11)
    np.testing.assert_allclose(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, 1.0, rtol=1e-6)
    ve = paths.VE(0.01, 50.0)
    np.testing.assert_allclose(ve.sigma(jnp.array([0.0, 1.0])), [50.0, 0.01], rtol=1e-5)
    lip = paths.LipmanPath(0.1)
    np.testing.assert_allclose(lip.interpolate(x0, x1, ones), x1 + 0.1 * x0, rtol=1e-6)


def test_bridge_noise_variance():
    p = paths.RectifiedFlow(noise=paths.BridgeNoise(0.5))
    t = jnp.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(p.gamma(t), 0.5 * np.sqrt(t * (1 - t)), rtol=1e-6)


def test_bad_inputs_name_the_argument():
    p = paths.RectifiedFlow()
    x = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="`x0` and `x1`"):
        p.interpolate(x, jnp.ones((5, 2)), 0.5)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`t` must lie in"):
        p.interpolate(x, x, 1.5)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`t` must lie in"):
        p.velocity(x, x, jnp.array([0.1, -0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="`t` has 3 entries"):
        p.interpolate(x, x, jnp.ones(3) * 0.5)
    with pytest.raises(ValueError, match="`x0` must have rank"):
        p.interpolate(jnp.ones(()), jnp.ones(()), 0.5)
    with pytest.raises(TypeError, match="`x1` must have a floating dtype"):
        p.interpolate(x, jnp.ones((4, 2), jnp.int32), 0.5)
    with pytest.raises(ValueError, match="pass `z`"):
        paths.RectifiedFlow(noise=paths.BridgeNoise(1.0)).interpolate(x, x, 0.5)
    with pytest.raises(TypeError, match="`given`"):
        paths.convert(p, x, 0.5, x, given="velocity", to=Prediction.DATA)
    with pytest.raises(ValueError, match="`value` and `x_t`"):
        paths.convert(p, x, 0.5, jnp.ones((4, 3)), given=Prediction.DATA, to=Prediction.NOISE)
    with pytest.raises(ValueError, match="`n` must be a positive"):
        paths.Polynomial(n=-1.0)


# -- the forward SDE of a path and EDM's preconditioning ------------------------------------


def test_sde_diffusion_closed_forms(x64):
    """g^2 = beta(1 - t) on VP, d sigma^2/ds on VE, 2(1 - t)/t on RF; = sigma^2 d log SNR / dt."""
    vp, ve, rf = paths.VP(), paths.VE(0.01, 50.0), paths.RectifiedFlow()
    others = (paths.Cosine(), paths.VP(noise=paths.ConstantNoise(0.05)))

    @jax.jit  # one program: compiles once
    def values(t):
        def d_log_snr(p):
            return jax.vmap(jax.grad(lambda s: 2 * jnp.log(p.alpha(s) / p.sigma_total(s))))(t)
        return {"vp": paths.sde_diffusion(vp, t), "ve": paths.sde_diffusion(ve, t),
                "ve_ds": jax.vmap(jax.grad(lambda s: ve.sigma(1.0 - s) ** 2))(1.0 - t),
                "rf": paths.sde_diffusion(rf, t),
                "rf_ends": paths.sde_diffusion(rf, jnp.array([0.0, 1.0])),
                "others": [paths.sde_diffusion(p, t) for p in others],
                "snr": [p.sigma_total(t) ** 2 * d_log_snr(p) for p in others]}

    t = jnp.linspace(0.03, 0.97, 17)
    out = values(t)
    np.testing.assert_allclose(out["vp"] ** 2, 0.1 + 19.9 * (1 - t), rtol=1e-12)
    np.testing.assert_allclose(out["ve"] ** 2, out["ve_ds"], rtol=1e-12)  # d sigma^2 / ds
    np.testing.assert_allclose(out["rf"] ** 2, 2 * (1 - t) / t, rtol=1e-12)
    for g, expect in zip(out["others"], out["snr"]):
        np.testing.assert_allclose(g ** 2, expect, rtol=1e-10)
    assert np.all(np.isfinite(out["rf_ends"]))


def test_noise_ratio_is_edms_sigma_and_inverts_its_time(x64):
    from flowjax import time as ftime

    ps = (paths.VP(), paths.Cosine(), paths.VE(0.01, 50.0))

    @jax.jit
    def values(t):
        sigmas = [paths.noise_ratio(p, t) for p in ps]
        return (paths.noise_ratio(paths.RectifiedFlow(), t), sigmas,
                [p.sigma_total(t) / p.alpha(t) for p in ps],
                [ftime.time_of_noise_ratio(p, s) for p, s in zip(ps, sigmas)],
                paths.noise_ratio(paths.RectifiedFlow(), jnp.array([0.0, 1.0])))

    t = jnp.linspace(0.05, 0.95, 7)
    rf, sigmas, expect, times, ends = values(t)
    np.testing.assert_allclose(rf, (1 - t) / t, rtol=1e-12)
    for sigma, e, back in zip(sigmas, expect, times):
        np.testing.assert_allclose(sigma, e, rtol=1e-12)
        np.testing.assert_allclose(back, t, atol=1e-12)
    assert np.all(np.isfinite(ends)) and np.all(ends > 0)


def test_edm_scalings_match_table_1_and_its_identities(x64):
    """Karras et al. 2022, Table 1 / App. B.6: unit input and target variance, lambda c_out^2 = 1.
    """
    sd = 0.5
    c_skip, c_out, c_in, c_noise = paths.edm_scalings(sd, sd)  # at sigma = sigma_data
    np.testing.assert_allclose([c_skip, c_out, c_in], [0.5, sd / np.sqrt(2), 1 / (sd * np.sqrt(2))],
                               rtol=1e-14)
    sigma = jnp.geomspace(1e-3, 1e2, 41)
    c_skip, c_out, c_in, c_noise = paths.edm_scalings(sigma, sd)
    lam = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2  # EDM's loss weight
    np.testing.assert_allclose(c_in ** 2 * (sigma ** 2 + sd ** 2), 1.0, rtol=1e-12)
    np.testing.assert_allclose(lam * c_out ** 2, 1.0, rtol=1e-12)
    # Var[(x1 - c_skip (x1 + sigma n)) / c_out] = 1 for Var[x1] = sd^2.
    target_var = ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2
    np.testing.assert_allclose(target_var, 1.0, rtol=1e-12)
    np.testing.assert_allclose(c_noise, 0.25 * np.log(sigma), rtol=1e-12)
    assert float(c_skip[0]) > 1 - 1e-5 and float(c_out[0]) < 1e-3  # sigma -> 0: D -> x
    assert float(c_skip[-1]) < 1e-4 and float(c_out[-1]) == pytest.approx(sd, rel=1e-4)


def test_edm_precondition_is_the_denoiser_in_edm_variables(x64):
    """D(x_t / alpha; sigma) = c_skip x + c_out F(c_in x, c_noise) on any path."""
    w = jnp.array([[0.7, -0.3], [0.2, 1.1]])

    def raw(params, x, c_noise, cond=None):
        return jnp.tanh(x @ params) * (1.0 + c_noise[:, None])

    x_edm = 2.0 * jax.random.normal(jax.random.PRNGKey(3), (16, 2))
    t = jax.random.uniform(jax.random.PRNGKey(4), (16,), minval=0.05, maxval=0.99)
    ps = (paths.RectifiedFlow(), paths.VP(), paths.VE(0.01, 50.0))

    @jax.jit
    def values(x_edm, t):
        out = []
        for p in ps:
            model = paths.edm_precondition(raw, p, sigma_data=1.3)
            sigma = p.sigma_total(t) / p.alpha(t)
            c_skip, c_out, c_in, c_noise = (c[:, None] for c in paths.edm_scalings(sigma, 1.3))
            expect = c_skip * x_edm + c_out * raw(w, c_in * x_edm, c_noise[:, 0])
            out.append((model(w, p.alpha(t)[:, None] * x_edm, t), expect))
        end = paths.edm_precondition(raw, ps[0], sigma_data=1.3)(w, x_edm, jnp.ones(16))
        return out, end

    out, end = values(x_edm, t)
    for got, expect in out:
        np.testing.assert_allclose(got, expect, rtol=1e-12)
    np.testing.assert_allclose(end, x_edm, atol=1e-4)  # at the data end D returns its input
    with pytest.raises(ValueError, match="`sigma_data`"):
        paths.edm_precondition(raw, paths.VP(), sigma_data=0.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`sigma` must be positive"):
        paths.edm_scalings(jnp.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="`apply_fn` returned"):
        paths.edm_precondition(lambda p, x, c, k: x[:, :1], paths.VP())(None, x_edm, t)


# -- compiled value checks, no host transfer, class-for-instance ----------------------------


def test_time_checks_are_compiled_and_switchable():
    """`t` outside [0, 1] fails inside `jit` too (the check is compiled), and can be left out."""
    p = paths.VP()
    x = jnp.ones((3, 2))
    runtime = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)  # filter_jit / jax.jit
    for bad in (1.5, -0.1, jnp.nan):
        with pytest.raises(runtime, match="`t` must lie in"):
            jax.jit(p.alpha)(jnp.full((3,), bad))
        with pytest.raises(runtime, match="`t` must lie in"):
            eqx.filter_jit(lambda t: paths.convert(p, x, t, x, given=Prediction.DATA,
                                            to=Prediction.VELOCITY))(jnp.full((3,), bad))
    # Data are not checked for finiteness: a NaN propagates (a train step then skips it).
    nan = jax.jit(lambda a: (p.interpolate(a, a, 0.5), paths.convert(
        p, a, 0.5, a, given=Prediction.DATA, to=Prediction.NOISE)))(x.at[0, 0].set(jnp.nan))
    assert all(bool(jnp.isnan(o[0, 0])) and bool(jnp.all(jnp.isfinite(o[1:]))) for o in nan)
    with pytest.raises(TypeError, match="`t` must be a real number"):
        p.sigma("0.5")
    with flowjax.value_checks(False):  # a new program, traced without the check
        out = jax.jit(lambda t: p.alpha(t))(jnp.full((3,), 1.5))
    assert out.shape == (3,)


@pytest.mark.fast_cases(3)
@pytest.mark.parametrize("path", ALL_PATHS, ids=IDS)
def test_eager_convert_and_schedules_make_no_host_transfer(path):
    """An eager `convert` and every schedule method on device arrays never copy to the host."""
    x_t = jax.device_put(jnp.linspace(-1.0, 1.0, 12).reshape(4, 3))
    t = jax.device_put(jnp.array([0.0, 0.3, 0.7, 1.0]))
    with jax.transfer_guard_device_to_host("disallow"):
        outs = [paths.convert(path, x_t, t, x_t, given=a, to=b)
                for a in Prediction for b in Prediction]
        outs += [getattr(path, m)(t) for m in ("alpha", "sigma", "d_alpha", "d_sigma", "gamma",
                                               "d_gamma", "sigma_total", "d_sigma_total")]
        outs += [paths.noise_ratio(path, t), paths.sde_diffusion(path, t)]
        z = None if path.noise is None else x_t
        outs += [path.interpolate(x_t, x_t, t, z), path.velocity(x_t, x_t, t, z)]
    assert all(np.all(np.isfinite(np.asarray(o))) for o in outs)


def test_path_class_for_instance_names_the_argument():
    x = jnp.ones((4, 2))
    with pytest.raises(TypeError, match=r"`path` must be an affine path.*class RectifiedFlow "
                                        r"itself; pass an instance, RectifiedFlow\(\.\.\.\)"):
        paths.convert(paths.RectifiedFlow, x, 0.5, x, given=Prediction.DATA,
                      to=Prediction.VELOCITY)
    for fn in (paths.noise_ratio, paths.sde_diffusion):
        with pytest.raises(TypeError, match="`path` must be an affine path.*class VP itself"):
            fn(paths.VP, 0.5)
    with pytest.raises(TypeError, match="`path`.*the string 'rf'"):
        paths.noise_ratio("rf", 0.5)
    with pytest.raises(TypeError, match="`noise`.*class BridgeNoise itself"):
        paths.RectifiedFlow(noise=paths.BridgeNoise)
    with pytest.raises(TypeError, match="`given` must be a flowjax.paths.Prediction.*'data'"):
        paths.convert(paths.RectifiedFlow(), x, 0.5, x, given="data", to=Prediction.VELOCITY)


@pytest.mark.parametrize("n, t_max", [(3.0, 2e-4), (4.0, 3e-3), (5.0, 1.2e-2)])
def test_float32_velocity_conversions_on_high_powers_are_exact_near_t0(n, t_max):
    """On t^n (n >= 3) a float32 velocity converts to data and noise as float64 does.

    There Delta = -n t^(n-1) is below float32's eps although it is exact (no cancellation);
    a floor relative to its terms leaves it alone down to `T_CLIP`.
    """
    path = paths.Polynomial(n)
    t64 = np.geomspace(paths.T_CLIP, t_max, 9)
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(9, 3)), 2.0 + rng.normal(size=(9, 3))
    a, da = t64[:, None] ** n, n * t64[:, None] ** (n - 1)
    x_t, v = a * x1 + (1 - a) * x0, da * x1 - da * x0  # the pair's point and velocity
    args32 = [jnp.asarray(u, jnp.float32) for u in (x_t, t64, v)]
    for to, exact in ((Prediction.DATA, x1), (Prediction.NOISE, x0)):
        got = paths.convert(path, args32[0], args32[1], args32[2], given=Prediction.VELOCITY,
                            to=to)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4, err_msg=str(to))
    # and finite at t = 0 itself, where the velocity says nothing of the data
    zero = paths.convert(path, args32[0], jnp.zeros(9), args32[2], given=Prediction.VELOCITY,
                         to=Prediction.DATA)
    assert np.all(np.isfinite(np.asarray(zero)))


def test_paths_of_different_classes_have_different_tree_structures():
    """Two path (or noise) classes with the same fields must never share a compiled program."""
    structure = jax.tree_util.tree_structure
    classes = [paths.RectifiedFlow(), paths.Cosine(), paths.VP(), paths.VE(), paths.LipmanPath(),
               paths.Polynomial()]
    for i, a in enumerate(classes):
        for b in classes[i + 1:]:
            assert structure(a) != structure(b), (a, b)
    assert structure(paths.ConstantNoise(0.1)) != structure(paths.BridgeNoise(0.1))
    assert structure(paths.Polynomial(n=2.0)) != structure(paths.Polynomial(n=3.0))
    assert structure(paths.Cosine()) == structure(paths.Cosine())

