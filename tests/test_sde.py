"""SDE samplers keep the path's marginals (closed-form Gaussian check) and sample mixtures."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import analytic, metrics, paths, sample

PATH = paths.RectifiedFlow()


def _exact(target, x, t):
    return analytic.mixture_velocity(PATH, target, x, t)


def _field(target):
    """The exact velocity of `target` as a pytree field (the mixture is a leaf)."""
    return jax.tree_util.Partial(_exact, target)


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("name, diffusion", [
    ("constant", sample.ConstantDiffusion(1.0)),
    ("sigma", sample.SigmaDiffusion(PATH, 1.5)),
    ("vanishing", sample.VanishingDiffusion(2.0, 1.0)),
])
def test_marginals_match_the_closed_form(x64, name, diffusion):
    """Mean and covariance of x_t equal alpha mu and alpha^2 Sigma + sigma^2 I along the way."""
    mean, cov = jnp.array([1.0, -1.0]), jnp.array([[0.5, 0.2], [0.2, 0.3]])
    target, n = analytic.GaussianMixture.gaussian(mean, cov), 20_000
    x0 = jax.random.normal(jax.random.PRNGKey(0), (n, 2))
    sol = sample.solve_sde(_field(target), x0, key=jax.random.PRNGKey(1), path=PATH,
                           diffusion=diffusion, num_steps=200, save_trajectory=True)
    assert int(sol.nfe) == 200
    for i in (50, 100, 200):
        t = float(sol.ts[i])
        xs = sol.trajectory[i]
        a, s = PATH.alpha(t), PATH.sigma(t)
        # Standard errors at n = 20,000: mean ~0.005, covariance entries ~0.005.
        np.testing.assert_allclose(xs.mean(0), a * mean, atol=0.025)
        np.testing.assert_allclose(jnp.cov(xs.T), a ** 2 * cov + s ** 2 * jnp.eye(2), atol=0.03)


@pytest.mark.slow
def test_w2_to_a_mixture_within_one_and_a_half_floors(x64):
    mix = analytic.GaussianMixture.create(
        jnp.array([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]]),
        jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]],
                   [[0.1, 0.0], [0.0, 0.1]]]), jnp.array([0.5, 0.3, 0.2]))
    n = 2000
    ref = mix.sample(jax.random.PRNGKey(1), n)
    floor = np.mean([metrics.w2(mix.sample(jax.random.PRNGKey(10 + i), n), ref)
                     for i in range(4)])
    x0 = jax.random.normal(jax.random.PRNGKey(0), (n, 2))
    for diffusion in (sample.ConstantDiffusion(1.0), sample.VanishingDiffusion(2.0)):
        sol = sample.solve_sde(_field(mix), x0, key=jax.random.PRNGKey(3), path=PATH,
                               diffusion=diffusion, num_steps=200, solver=diffrax.ShARK())
        assert int(sol.nfe) == 400
        assert metrics.w2(sol.samples, ref) < 1.5 * floor


def test_finite_with_constant_noise_up_to_t_equal_one():
    target = analytic.GaussianMixture.empirical(jnp.array([[0.0, 1.0], [1.0, 0.0]]))
    sol = sample.solve_sde(_field(target), jnp.ones((8, 2)), key=jax.random.PRNGKey(0), path=PATH,
                           diffusion=sample.ConstantDiffusion(1.0), num_steps=50)
    assert np.all(np.isfinite(sol.samples))


def test_zero_diffusion_is_the_euler_ode_solve(x64):
    target = analytic.GaussianMixture.gaussian(jnp.zeros(2), jnp.eye(2) * 0.3)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    sde = sample.solve_sde(_field(target), x0, key=jax.random.PRNGKey(1), path=PATH,
                           diffusion=sample.ConstantDiffusion(0.0), num_steps=20)
    ode = sample.solve_ode(_field(target), x0, solver=diffrax.Euler(), num_steps=20)
    np.testing.assert_allclose(sde.samples, ode.samples, rtol=1e-10, atol=1e-12)


def test_bad_inputs():
    x0 = jnp.ones((4, 2))
    target = analytic.GaussianMixture.gaussian(jnp.zeros(2), jnp.eye(2))
    field = _field(target)
    kwargs = dict(key=jax.random.PRNGKey(0), path=PATH, diffusion=sample.ConstantDiffusion(1.0))
    with pytest.raises(ValueError, match="`num_steps`"):
        sample.solve_sde(field, x0, **kwargs)
    with pytest.raises(TypeError, match="`solver`"):
        sample.solve_sde(field, x0, num_steps=4, solver=diffrax.Dopri5(), **kwargs)
    with pytest.raises(ValueError, match="`g`"):
        sample.ConstantDiffusion(-1.0)
    with pytest.raises(ValueError, match="`factor`"):
        sample.ReverseDiffusion(PATH, -0.5)
    with pytest.raises(ValueError, match="`power`"):
        sample.VanishingDiffusion(1.0, 0.0)
    with pytest.raises(TypeError, match="`path`.*class RectifiedFlow"):
        sample.ReverseDiffusion(paths.RectifiedFlow)
    with pytest.raises(TypeError, match="`path`.*class RectifiedFlow"):
        sample.solve_sde(field, x0, num_steps=4, key=kwargs["key"], path=paths.RectifiedFlow,
                         diffusion=kwargs["diffusion"])
    # A diffusion given by name, as the class itself, or not at all.
    for bad, hint in (("constant", "string 'constant'"),
                      (sample.ConstantDiffusion, "class ConstantDiffusion"),
                      (None, "NoneType")):
        with pytest.raises(TypeError, match=f"`diffusion` must be a diffusion schedule.*{hint}"):
            sample.solve_sde(field, x0, num_steps=4, key=kwargs["key"], path=PATH,
                             diffusion=bad)


def test_same_key_and_grid_give_the_same_samples():
    target = analytic.GaussianMixture.gaussian(jnp.zeros(2), jnp.eye(2) * 0.3)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 2))

    def run(seed):
        return sample.solve_sde(_field(target), x0, key=jax.random.PRNGKey(seed), path=PATH,
                                diffusion=sample.ConstantDiffusion(1.0), num_steps=10).samples

    np.testing.assert_array_equal(run(1), run(1))
    assert np.min(np.abs(run(1) - run(2))) > 0  # every coordinate got its own noise
