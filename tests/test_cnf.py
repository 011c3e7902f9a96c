"""CNF maximum likelihood: the loss is -mean log-likelihood, its gradient is right (finite
differences, closed forms, both adjoints), Hutchinson is unbiased, and arguments are checked."""

import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowjax import losses, sample

def tiny_mlp(params, x, t, cond=None):
    """A one-hidden-layer tanh field on [x, t], in the dtype of its parameters."""
    del cond
    h = jnp.tanh(jnp.concatenate([x, t[:, None]], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def _mlp_params(key, d=2, width=8):
    k = jax.random.split(key, 4)
    return {"w1": jax.random.normal(k[0], (d + 1, width)) / math.sqrt(d + 1),
            "b1": 0.1 * jax.random.normal(k[1], (width,)),
            "w2": jax.random.normal(k[2], (width, d)) / math.sqrt(width),
            "b2": 0.1 * jax.random.normal(k[3], (d,))}


def gaussian_flow(params, x, t, cond=None):
    r"""The exact rectified-flow velocity from N(0, I) to N(mu, diag(s^2)), s = exp(log_s).

    The marginal at t is N(t mu, diag(c_t)) with c_t = t^2 s^2 + (1 - t)^2, and
    v = mu + c_t' / (2 c_t) (x - t mu) (Lipman et al. 2023, Thm. 1): its flow
    has density N(mu, diag(s^2)) at t = 1 whatever the parameters.
    """
    del cond
    mu, s2, t = params["mu"], jnp.exp(2 * params["log_s"]), t[:, None]
    c = t ** 2 * s2 + (1 - t) ** 2
    return mu + (t * s2 - (1 - t)) / c * (x - t * mu)


@pytest.fixture(scope="module")
def mlp_problem():
    """A tiny MLP CNF on 2-D points with fixed Euler steps and its exact-trace loss and gradient,
    in float64 (shared by two tests: one compile)."""
    with jax.enable_x64(True):
        params = _mlp_params(jax.random.PRNGKey(0))
        x1 = 1.5 * jax.random.normal(jax.random.PRNGKey(1), (8, 2))
        opts = dict(apply_fn=tiny_mlp, solver=diffrax.Euler(), num_steps=4)
        key, batch = jax.random.PRNGKey(2), {"x1": x1}
        value_and_grad = jax.jit(jax.value_and_grad(
            lambda p: losses.cnf_mle_loss(p, key, batch, **opts)[0]))
        value, grad = value_and_grad(params)
    return params, batch, opts, value_and_grad, value, grad


@pytest.mark.xdist_group("cnf_mlp")  # one worker: one compile
def test_gradient_matches_central_differences(x64, mlp_problem):
    """The default adjoint differentiates the discretized solve exactly."""
    params, _, _, value_and_grad, _, grad = mlp_problem
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    g = jax.flatten_util.ravel_pytree(grad)[0]
    h = 1e-5
    for i, u in enumerate(jax.random.normal(jax.random.PRNGKey(3), (3, flat.size))):
        fd = (value_and_grad(unravel(flat + h * u))[0]
              - value_and_grad(unravel(flat - h * u))[0]) / (2 * h)
        np.testing.assert_allclose(float(g @ u), float(fd), rtol=1e-7, err_msg=f"direction {i}")


@pytest.mark.xdist_group("cnf_mlp")  # one worker: one compile
def test_hutchinson_loss_and_gradient_are_unbiased(x64, mlp_problem):
    """Over probe keys, the mean Hutchinson loss and gradient equal the exact-trace ones.

    With fixed steps the trajectory does not depend on the probes and the
    estimate is linear in them, so the only error is Monte Carlo (4 s.e.).
    """
    params, batch, opts, _, exact, exact_grad = mlp_problem
    est = jax.jit(jax.vmap(jax.value_and_grad(
        lambda p, k: losses.cnf_mle_loss(p, k, batch, num_probes=1, **opts)[0]),
        in_axes=(None, 0)))
    n = 256
    vals, grads = est(params, jax.random.split(jax.random.PRNGKey(4), n))
    g = jax.vmap(lambda t: jax.flatten_util.ravel_pytree(t)[0])(grads)
    g_exact = jax.flatten_util.ravel_pytree(exact_grad)[0]
    se, g_se = float(vals.std()) / math.sqrt(n), g.std(0) / math.sqrt(n)
    assert se > 1e-3 and float(g_se.max()) > 1e-3  # the estimates do vary with the probes
    assert abs(float(vals.mean() - exact)) < 4 * se, (vals.mean(), exact, se)
    z = np.abs(np.asarray(g.mean(0) - g_exact)) / np.maximum(np.asarray(g_se), 1e-12)
    assert float(z.max()) < 4.5, z  # 4.5 s.e. over all parameters


@pytest.mark.slow
@pytest.mark.parametrize("adjoint", [None, diffrax.BacksolveAdjoint()],
                         ids=["recursive_checkpoint", "backsolve"])
def test_loss_and_gradient_of_the_exact_gaussian_flow(x64, adjoint):
    """The flow of `gaussian_flow` has density N(mu, diag(s^2)), so the loss and its gradient
    through the adaptive solve are the closed forms, with either adjoint."""
    params = {"mu": jnp.array([0.5, -1.0]), "log_s": jnp.array([0.3, -0.4])}
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 2)) * 1.3 + 0.5
    loss = functools.partial(losses.cnf_mle_loss, apply_fn=gaussian_flow,
                             adaptive=sample.Adaptive(1e-8, 1e-8), adjoint=adjoint)
    (nll, aux), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        params, jax.random.PRNGKey(1), {"x1": x})
    s2 = jnp.exp(2 * params["log_s"])
    z2 = (x - params["mu"]) ** 2 / s2
    want = jnp.mean(jnp.sum(0.5 * z2 + params["log_s"] + 0.5 * math.log(2 * math.pi), -1))
    np.testing.assert_allclose(nll, want, rtol=1e-7)
    np.testing.assert_allclose(grad["mu"], -jnp.mean((x - params["mu"]) / s2, 0), rtol=1e-5)
    np.testing.assert_allclose(grad["log_s"], jnp.mean(1 - z2, 0), rtol=1e-5)
    assert float(aux["nll"]) == float(nll) and int(aux["nfe"]) > 10


@pytest.mark.slow
def test_loss_is_minus_mean_log_likelihood():
    """Same params and key: the loss is -mean sample.log_likelihood (same probes, same NFE)."""
    module_params = _mlp_params(jax.random.PRNGKey(0), width=16)
    x1 = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    key = jax.random.PRNGKey(2)
    velocity = sample.ModelVelocity(tiny_mlp, module_params)
    opts = dict(num_probes=2, solver=diffrax.Euler(), num_steps=5)
    nll, aux = losses.cnf_mle_loss(module_params, key, {"x1": x1}, apply_fn=tiny_mlp, **opts)
    sol = sample.log_likelihood(velocity, x1, key=key, **opts)
    logp, nfe = sol.log_prob, sol.nfe
    np.testing.assert_allclose(nll, -jnp.mean(logp), rtol=1e-6)
    assert int(aux["nfe"]) == int(nfe) == 5


def test_bad_arguments():
    params, key = {}, jax.random.PRNGKey(1)  # every check fails before the model is called
    x = np.ones((4, 2), np.float32)
    loss = functools.partial(losses.cnf_mle_loss, params, key, apply_fn=tiny_mlp)
    with pytest.raises(ValueError, match="dict with key 'x1'"):
        loss(x)
    with pytest.raises(ValueError, match=r"`batch\['x0'\]`"):
        loss({"x1": x, "x0": x})
    with pytest.raises(RuntimeError, match="non-finite"):
        loss({"x1": np.where(np.eye(4, 2) > 0, np.inf, x)})
    with pytest.raises(TypeError, match="floating"):
        loss({"x1": np.ones((4, 2), np.int32)})
    with pytest.raises(ValueError, match="`num_probes`"):
        loss({"x1": x}, num_probes=0)
    with pytest.raises(TypeError, match="`probe`"):
        loss({"x1": x}, num_probes=1, probe="rademacher")
    with pytest.raises(TypeError, match="`adjoint`"):
        loss({"x1": x}, adjoint="backsolve")
    with pytest.raises(ValueError, match="error estimate"):
        loss({"x1": x}, solver=diffrax.Euler())
    with pytest.raises(ValueError, match="`rtol`"):
        loss({"x1": x}, adaptive=sample.Adaptive(rtol=0.0))
    with pytest.raises(TypeError, match="`adaptive`"):
        loss({"x1": x}, adaptive=1e-5)
    with pytest.raises(ValueError, match="`num_steps`"):
        loss({"x1": x}, solver=diffrax.Euler(), num_steps=0)
    with pytest.raises(RuntimeError, match="`ts`"):
        loss({"x1": x}, solver=diffrax.Euler(), ts=np.array([1.0, 0.5, 0.6]))
    with pytest.raises(TypeError, match="`apply_fn`"):
        losses.cnf_mle_loss(params, key, {"x1": x}, apply_fn=None)
