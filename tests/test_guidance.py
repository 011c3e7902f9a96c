"""Classifier-free guidance: the linear combination, its interval, and the batched model form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import analytic, paths, sample

PATH = paths.RectifiedFlow()
MEANS = jnp.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
COVS = jnp.tile(0.1 * jnp.eye(2), (3, 1, 1))


@jax.jit
def _apply(params, x, t, cond):
    """A 'model' whose class c is mixture component c and whose null class (3) is the mixture."""
    del params
    full = analytic.GaussianMixture.create(MEANS, COVS)
    per_class = [analytic.mixture_velocity(PATH, analytic.GaussianMixture.create(
        MEANS[k:k + 1], COVS[k:k + 1]), x, t) for k in range(3)]
    options = jnp.stack(per_class + [analytic.mixture_velocity(PATH, full, x, t)])
    return jnp.take_along_axis(options, cond[None, :, None], axis=0)[0]


@pytest.mark.slow
def test_guidance_is_the_linear_combination_inside_the_interval(x64):
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
    t = jnp.array([0.1, 0.3, 0.5, 0.6, 0.8, 0.95])
    cond = jnp.array([0, 1, 2, 0, 1, 2])
    vc = _apply(None, x, t, cond)
    vu = _apply(None, x, t, jnp.full(6, 3))
    for w in (0.0, 1.0, 2.5):
        batched = sample.ClassifierFreeGuidance(_apply, None, cond, null_cond=3,
                                                guidance_scale=w)(x, t)
        np.testing.assert_allclose(batched, vu + w * (vc - vu), rtol=1e-10)
    limited = sample.ClassifierFreeGuidance(_apply, None, cond, null_cond=3, guidance_scale=3.0,
                                            interval=(0.4, 0.7))(x, t)
    inside = (t >= 0.4) & (t <= 0.7)
    np.testing.assert_allclose(limited[~inside], vc[~inside], rtol=1e-10)
    np.testing.assert_allclose(limited[inside], (vu + 3.0 * (vc - vu))[inside], rtol=1e-10)


@pytest.mark.slow
def test_guidance_pushes_class_samples_away_from_the_others(x64):
    """Class 0 sits at (2, 0), the others at (-2, 0) and (0, 2): w > 1 pushes right and down."""
    x0 = jax.random.normal(jax.random.PRNGKey(1), (500, 2))
    cond = jnp.zeros(500, jnp.int32)
    means = {}
    for w in (0.0, 1.0, 3.0):
        field = sample.ClassifierFreeGuidance(_apply, None, cond, null_cond=3, guidance_scale=w)
        out = sample.solve_ode(field, x0, adaptive=sample.Adaptive(1e-6, 1e-6)).samples
        means[w] = np.asarray(out.mean(0))
        if w == 1.0:  # the conditional model samples its class (std 0.32 per axis)
            assert float(jnp.mean(jnp.linalg.norm(out - MEANS[0], axis=1))) < 0.5
    np.testing.assert_allclose(means[0.0], [0.0, 2.0 / 3.0], atol=0.2)  # the whole mixture
    np.testing.assert_allclose(means[1.0], [2.0, 0.0], atol=0.1)
    assert means[3.0][0] > means[1.0][0] + 0.2 and means[3.0][1] < means[1.0][1] - 0.1


def test_bad_arguments():
    cond = jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match="`interval`"):
        sample.ClassifierFreeGuidance(_apply, None, cond, 3, 2.0, interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="`path`"):
        sample.ClassifierFreeGuidance(_apply, None, cond, 3, 2.0,
                                      prediction=paths.Prediction.DATA)
    with pytest.raises(TypeError, match="`path` must be an affine path.*class RectifiedFlow"):
        sample.ClassifierFreeGuidance(_apply, None, cond, 3, 2.0, path=paths.RectifiedFlow,
                                      prediction=paths.Prediction.DATA)
    for bad in ("2.0", None, (1.0, 2.0)):
        with pytest.raises(TypeError, match="`guidance_scale` must be a real number"):
            sample.ClassifierFreeGuidance(_apply, None, cond, 3, guidance_scale=bad)
        with pytest.raises(TypeError, match="`guidance_scale` must be a real number"):
            sample.ClassifierGuidance(lambda x, t: x, lambda p, x, t: x, None, cond, PATH,
                                      guidance_scale=bad)
    with pytest.raises(TypeError, match="`field` must be called as field"):
        sample.ClassifierGuidance(lambda x, t, args: x, lambda p, x, t: x, None, cond, PATH, 1.0)


# -- classifier guidance ---------------------------------------------------------------------

@functools.cache
def _two():
    """The two classes, built once on first use in float32 (not at import: collection
    would compile their checks in every test process)."""
    with jax.enable_x64(False):
        return [analytic.GaussianMixture.gaussian(m, c) for m, c in (
            (jnp.array([1.5, 0.0]), jnp.array([[0.3, 0.1], [0.1, 0.2]])),
            (jnp.array([-1.0, 1.0]), jnp.array([[0.2, 0.0], [0.0, 0.4]])))]


WEIGHTS = np.array([0.3, 0.7], np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("path", [paths.RectifiedFlow(), paths.VP()], ids=["rf", "vp"])
def test_classifier_guidance_with_the_exact_posterior_is_the_conditional_field(x64, path):
    """Two Gaussian classes: log p_t(y | x) is exact, so w = 1 gives v(x, t | y) and any w
    gives classifier-free guidance's v(x | 0) + w (v(x | y) - v(x | 0)) of the exact fields."""
    two = _two()
    full = analytic.GaussianMixture.create(jnp.stack([p.means[0] for p in two]),
                                           jnp.stack([p.covs[0] for p in two]), WEIGHTS)

    def classifier(params, x, t):  # log w_k + log N_k(x; alpha mu_k, C_k): the exact logits
        del params
        return jnp.log(WEIGHTS) + jnp.stack([analytic.mixture_log_prob(path, c, x, t)
                                             for c in two], -1)

    def unconditional(x, t):
        return analytic.mixture_velocity(path, full, x, t)

    x = 1.5 * jax.random.normal(jax.random.PRNGKey(0), (32, 2))
    t = jax.random.uniform(jax.random.PRNGKey(1), (32,), minval=0.05, maxval=0.95)
    labels = jnp.arange(32) % 2
    scales = (0.0, 1.0, 2.5)

    @jax.jit  # one program for every field: compiles once
    def fields(x, t, labels):
        per_class = jnp.stack([analytic.mixture_velocity(path, c, x, t) for c in two])
        guided = [sample.ClassifierGuidance(unconditional, classifier, None, labels, path,
                                            guidance_scale=w)(x, t) for w in scales]
        late = sample.ClassifierGuidance(unconditional, classifier, None, labels, path,
                                         guidance_scale=1.0, interval=(0.5, 1.0))(x, t)
        return per_class, unconditional(x, t), guided, late

    per_class, vu, guided, late = fields(x, t, labels)
    conditional = jnp.where(labels[:, None] == 0, per_class[0], per_class[1])
    for w, g in zip(scales, guided):
        np.testing.assert_allclose(g, vu + w * (conditional - vu), rtol=1e-8, atol=1e-10)
    assert float(jnp.mean(jnp.linalg.norm(conditional - vu, axis=1))) > 0.1  # not trivial
    np.testing.assert_allclose(late, jnp.where((t >= 0.5)[:, None], conditional, vu), rtol=1e-8)
    with pytest.raises(ValueError, match="`labels`"):
        sample.ClassifierGuidance(unconditional, classifier, None, labels[:5], path,
                                  guidance_scale=1.0)(x, t)
