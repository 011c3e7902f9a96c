# %% [markdown]
# # Diffusion models in the flow view
#
# A Gaussian diffusion model is a flow model on another path. With the data
# at `t = 1` and noise at `t = 0` (flowjax's time; diffusion papers use
# $s = 1 - t$), every path here is
#
# $$x_t = \alpha(t)\,x_1 + \bar\sigma(t)\,\varepsilon, \qquad \varepsilon \sim N(0, I),$$
#
# and a network may predict the noise $\varepsilon$ (DDPM), the data $x_1$,
# the score $\nabla\log p_t$ or the velocity: at a given $(x_t, t)$ each is an
# affine function of any other. You will learn
#
# - the VP path (the DDPM / VP-SDE schedule) and its forward-SDE diffusion,
# - exact conversions between predictions (`flowjax.paths.convert`), checked
#   against a closed-form score,
# - how to train DDPM's noise-prediction loss and sample the model with an
#   ODE (Euler, `DPMSolver2M`), the reverse-time SDE (`solve_sde` with
#   `ReverseDiffusion`) and EDM's Heun sampler (`EDMHeun` on `edm_grid`).

# %%
import functools
import os

import diffrax
import jax
import jax.numpy as jnp
import optax

import flowjax as fj
from flowjax.paths import Prediction

SMALL = os.environ.get("FLOWJAX_TUTORIAL_SMALL") == "1"
STEPS = 400 if SMALL else 4000
BATCH = 128 if SMALL else 256
N_EVAL = 256 if SMALL else 2000

# %% [markdown]
# ## The VP path
#
# `fj.paths.VP(beta_min=0.1, beta_max=20)` is Song et al.'s VP-SDE in flow
# time: $\alpha(t) = e^{-B(1-t)/2}$ with $B(s) = \int_0^s \beta$, and
# $\bar\sigma = \sqrt{1 - \alpha^2}$. Its forward (noising) SDE
# $dx = f x\,ds + g\,dW$ has $g(t)^2 = \beta(1 - t)$;
# `fj.paths.sde_diffusion` computes $g$ for any affine path from
# $g^2 = \bar\sigma^2\,\frac{d}{dt}\log\mathrm{SNR}$. EDM's noise level is the
# noise-to-signal ratio $\sigma = \bar\sigma/\alpha$ (`fj.paths.noise_ratio`).

# %%
vp = fj.paths.VP()
ts = jnp.linspace(0.0, 0.99, 12)
g2 = fj.paths.sde_diffusion(vp, ts) ** 2
beta = vp.beta_min + (1.0 - ts) * (vp.beta_max - vp.beta_min)
g2_error = float(jnp.max(jnp.abs(g2 - beta) / beta))
print(f"alpha(0) = {float(vp.alpha(0.0)):.4f}, EDM sigma at t = 0: "
      f"{float(fj.paths.noise_ratio(vp, 0.0)[0]):.1f}; "
      f"max relative |g^2 - beta(1 - t)| = {g2_error:.1e}")
assert g2_error < 1e-4

# %% [markdown]
# ## Predictions and their conversions
#
# With the posterior means $\hat x_1 = E[x_1 \mid x_t]$ and
# $\hat\varepsilon = E[\varepsilon \mid x_t]$,
#
# $$x_t = \alpha\hat x_1 + \bar\sigma\hat\varepsilon,\qquad
#   v = \dot\alpha\hat x_1 + \dot{\bar\sigma}\hat\varepsilon,\qquad
#   \nabla\log p_t = -\hat\varepsilon/\bar\sigma,$$
#
# a 2x2 linear system that `fj.paths.convert(path, x_t, t, value, given=...,
# to=...)` solves exactly. For a Gaussian-mixture target the exact velocity
# and score are known (`flowjax.analytic`), so converting the exact
# velocity must give the exact score, and converting back and forth must
# return the input.

# %%
mixture = fj.analytic.GaussianMixture.create(
    means=jnp.array([[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]]),
    covs=jnp.tile(0.08 * jnp.eye(2), (3, 1, 1)))


@jax.jit
def conversion_errors(key):
    k_x, k_t = jax.random.split(key)
    t = jax.random.uniform(k_t, (256,), minval=0.05, maxval=0.95)
    x_t = vp.interpolate(jax.random.normal(k_x, (256, 2)), mixture.sample(key, 256), t)
    v = fj.analytic.mixture_velocity(vp, mixture, x_t, t)
    score = fj.paths.convert(vp, x_t, t, v, given=Prediction.VELOCITY, to=Prediction.SCORE)
    eps = fj.paths.convert(vp, x_t, t, score, given=Prediction.SCORE, to=Prediction.NOISE)
    x1 = fj.paths.convert(vp, x_t, t, eps, given=Prediction.NOISE, to=Prediction.DATA)
    v_again = fj.paths.convert(vp, x_t, t, x1, given=Prediction.DATA, to=Prediction.VELOCITY)
    exact_score = fj.analytic.mixture_score(vp, mixture, x_t, t)
    scale = jnp.max(jnp.abs(exact_score))
    return (jnp.max(jnp.abs(score - exact_score)) / scale,
            jnp.max(jnp.abs(v_again - v)) / jnp.max(jnp.abs(v)))


score_error, round_trip = (float(e) for e in conversion_errors(jax.random.PRNGKey(0)))
print(f"velocity -> score vs the exact score: {score_error:.1e} (relative); "
      f"velocity -> score -> noise -> data -> velocity: {round_trip:.1e}")
assert score_error < 1e-4 and round_trip < 1e-4

# %% [markdown]
# ## Training: DDPM's loss and EDM's
#
# `noise_prediction_loss` is DDPM's $L_{simple} = E\,\|\varepsilon_\theta(x_t, t) - \varepsilon\|^2$;
# it is `cfm_loss(prediction=Prediction.NOISE)`, and every diffusion loss
# (score matching, data prediction, EDM) is the same regression with another
# target and a time weighting (`fj.losses.loss_weighting`). A noise
# prediction is ill-conditioned at the noise end, though: its data estimate
# $\hat x_1 = (x_t - \bar\sigma\hat\varepsilon)/\alpha$ multiplies the network's error
# by $1/\alpha(0) \approx 150$ on VP, and solvers that work with $\hat x_1$
# (DPM-Solver++, EDM's Heun) start right there.
#
# EDM (Karras et al. 2022) fixes the scaling instead. In flowjax's time its
# variables are $x_t/\alpha$ and $\sigma = \bar\sigma/\alpha$, so its recipe applies
# to any affine path: `fj.paths.edm_precondition(apply_fn, path, sigma_data=...)`
# wraps a raw network $F$ into the denoiser
# $\hat x_1 = c_{skip}\,x_t/\alpha + c_{out}\,F(c_{in}\,x_t/\alpha, \tfrac14\ln\sigma)$
# (a data prediction), `fj.time.EDMLogNormal(path)` draws EDM's training noise
# levels as flow times, and `fj.losses.edm_weighting` is EDM's loss weight,
# which makes the loss on $F$ unit-weighted at every noise level.

# %%
sigma_data = float(jnp.std(mixture.sample(jax.random.PRNGKey(5), 4096)))
module = fj.models.MLP(hidden=(64, 64, 64))
network = fj.models.model_fn(module)  # called with c_noise in the place of the time
denoiser = fj.paths.edm_precondition(network, vp, sigma_data=sigma_data)
params = jax.jit(module.init)(jax.random.PRNGKey(1), jnp.zeros((1, 2)),
                              jnp.zeros((1,)))["params"]
loss_fn = functools.partial(fj.losses.cfm_loss, apply_fn=denoiser, path=vp,
                            prediction=Prediction.DATA,
                            weighting=fj.losses.edm_weighting(vp, sigma_data),
                            time_sampler=fj.time.EDMLogNormal(vp))
optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, STEPS))
state = fj.train.create_train_state(jax.random.PRNGKey(2), params, optimizer)
step = fj.train.make_train_step(loss_fn, optimizer, ema_decay=0.99)
for i in range(STEPS):
    state, metrics = step(state, {"x1": mixture.sample(jax.random.PRNGKey(100 + i), BATCH)})
    if i % max(1, STEPS // 4) == 0 or i == STEPS - 1:
        print(f"step {i:5d}  loss {float(metrics['loss']):.4f}")

# %% [markdown]
# ## Sampling the denoiser
#
# `ModelVelocity(denoiser, params, path=vp, prediction=Prediction.DATA)`
# converts the denoiser's $\hat x_1$ to a velocity, so every ODE
# solver samples it (the probability-flow ODE). flowjax's own grid solvers
# take the raw prediction and the path instead:
#
# - `DPMSolver2M(path, prediction)`, DPM-Solver++(2M) with the UniC corrector:
#   it integrates the linear part of the ODE exactly in
#   $\lambda = \log(\alpha/\bar\sigma)$, one evaluation per step;
# - `EDMHeun(path, prediction)`, EDM's second-order sampler over the noise
#   levels $\sigma_i$ of `fj.time.edm_grid(N, path)` (EDM's $\rho = 7$ schedule
#   mapped to flow time), starting from $\sigma_{max} = 80$.
#
# `solve_sde` integrates $dx = [v + \tfrac12 g^2\nabla\log p_t]\,dt + g\,dW$,
# which has the same marginals for any $g(t)$; `ReverseDiffusion(vp)` takes
# $g$ from the forward SDE, which makes it the reverse-time SDE (the limit of
# DDPM's ancestral sampler).
#
# To separate solver error from model error, the solvers are first run on
# the *exact* denoiser of the mixture (the exact velocity converted to a data
# prediction) and compared, from the same noise, with a converged solution
# of the same ODE (DPM-Solver++ with 200 steps) and, by W2, with the target.
# At the same 20 evaluations: Euler on a uniform grid, DPM-Solver++ on EDM's
# grid (dense near the data); and EDM's Heun with 15 steps (29 evaluations).

# %%
def exact_denoiser(path, mixture, x, t):
    v = fj.analytic.mixture_velocity(path, mixture, x, t)
    return fj.paths.convert(path, x, t, v, given=Prediction.VELOCITY, to=Prediction.DATA)


exact_data = jax.tree_util.Partial(exact_denoiser, vp, mixture)
exact_velocity = jax.tree_util.Partial(fj.analytic.mixture_velocity, vp, mixture)
dpm = fj.sample.DPMSolver2M(vp, prediction=Prediction.DATA)
edm_heun = fj.sample.EDMHeun(vp, prediction=Prediction.DATA)
reverse_sde = functools.partial(fj.sample.solve_sde, key=jax.random.PRNGKey(3), path=vp,
                                diffusion=fj.sample.ReverseDiffusion(vp),
                                prediction=Prediction.DATA, num_steps=200)
noise = jax.random.normal(jax.random.PRNGKey(-1), (N_EVAL, 2))
test = mixture.sample(jax.random.PRNGKey(-2), N_EVAL)
floor = fj.metrics.w2(mixture.sample(jax.random.PRNGKey(-3), N_EVAL), test)
w2_noise = fj.metrics.w2(noise, test)
reference = fj.sample.solve_ode(exact_data, noise, solver=dpm,
                                ts=fj.time.edm_grid(200, vp)).samples
w2_reference = fj.metrics.w2(reference, test)
runs = {
    "euler, 20 steps": fj.sample.solve_ode(exact_velocity, noise, solver=diffrax.Euler(),
                                           num_steps=20),
    "dpm-solver++(2m), 20 steps": fj.sample.solve_ode(exact_data, noise, solver=dpm,
                                                      ts=fj.time.edm_grid(20, vp)),
    "edm heun, 15 steps": fj.sample.solve_ode(exact_data, noise, solver=edm_heun,
                                              ts=fj.time.edm_grid(15, vp)),
    "reverse SDE, 200 steps": reverse_sde(exact_data, noise),
}
w2, ode_error = {}, {}
for name, sol in runs.items():
    w2[name] = fj.metrics.w2(sol.samples, test)
    ode_error[name] = float(jnp.sqrt(jnp.mean(jnp.sum((sol.samples - reference) ** 2, -1))))
    print(f"exact field, {name:28s} nfe {int(sol.stats['nfe']):3d}  W2 {w2[name]:.3f}  "
          f"RMSE to the converged ODE solution {ode_error[name]:.3f}")
print(f"W2: converged ODE {w2_reference:.3f}, source {w2_noise:.3f}, "
      f"floor (two target samples) {floor:.3f}")

# %% [markdown]
# With the same 20 evaluations DPM-Solver++ on EDM's grid is about twice as
# close to the converged solution as Euler. EDM's Heun starts at
# $\sigma_{max} = 80$ rather than at `t = 0`, and the reverse SDE is
# stochastic, so they end at other points, but in the same distribution.
# Now the trained denoiser, through the same solvers (whose compiled
# programs take the new field's parameters as inputs):

# %%
trained = fj.sample.ModelVelocity(denoiser, state.ema_params)  # its data prediction as is
trained_w2 = {
    "dpm-solver++(2m), 20 steps": fj.metrics.w2(
        fj.sample.solve_ode(trained, noise, solver=dpm, ts=fj.time.edm_grid(20, vp)).samples,
        test),
    "reverse SDE, 200 steps": fj.metrics.w2(reverse_sde(trained, noise).samples, test),
}
for name, value in trained_w2.items():
    print(f"trained denoiser, {name:28s} W2 {value:.3f}")

# %% [markdown]
# The exact field's samples are as close to the target as the converged
# ODE's, whichever sampler; the trained denoiser moves the source towards
# the target, and fully trained (on a 2-core x86-64 CPU) it is within twice
# the W2 floor.

# %%
assert ode_error["dpm-solver++(2m), 20 steps"] < 0.7 * ode_error["euler, 20 steps"]
assert all(w < 1.2 * w2_reference for w in w2.values())
assert all(w < 0.8 * w2_noise for w in trained_w2.values())
if not SMALL:
    assert all(w < 2.0 * floor for w in trained_w2.values())
