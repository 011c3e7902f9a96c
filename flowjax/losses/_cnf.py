r"""Maximum-likelihood training of a continuous normalizing flow (CNF) through the divergence ODE.

The model is a velocity field :math:`v_\theta(x, t)` whose flow carries the
source :math:`p_0` (N(0, I) by default) at t = 0 to the model density
:math:`p_1^\theta` at t = 1, flowjax's time. Its log-likelihood at a data
point follows from the instantaneous change of variables (Chen et al. 2018,
"Neural ordinary differential equations", Thm. 1):

.. math::
    \log p_1^\theta(x_1) = \log p_0(x_0) - \int_0^1 \nabla\cdot v_\theta(x_t, t)\,dt,
    \qquad \mathcal L(\theta) = -\frac{1}{B}\sum_{i} \log p_1^\theta(x_1^{(i)}),

with :math:`x_t` solved backwards from :math:`x_1` at t = 1 to :math:`x_0`
at t = 0. The gradient goes through the ODE solve (diffrax's adjoints), the
divergence is the exact Jacobian trace or Hutchinson's estimator (Grathwohl
et al. 2019, "FFJORD": unbiased for the loss and, with probes drawn from
the step's key, for its gradient). This is the baseline that flow matching
replaces with a simulation-free regression (Lipman et al. 2023).
"""

from __future__ import annotations

import diffrax

from flowjax._checks import check_array, check_finite_eager, check_instance, check_key
from flowjax._divergence import (Probe, _check_likelihood_options, _reverse_grid,
                                 divergence_solve, draw_probes, standard_normal_log_prob)
from flowjax.losses._cfm import check_cond
from flowjax.sample._fields import ModelVelocity
from flowjax.sample._solution import _resolve_grid


def _check_batch(key, batch):
    """The key and the batch of a likelihood loss: `x1` (checked), an optional `cond`, no `x0`."""
    check_key("key", key)
    if not isinstance(batch, dict) or "x1" not in batch:
        raise ValueError("`batch` must be a dict with key 'x1' (and optionally 'cond').")
    if batch.get("x0") is not None:
        raise ValueError("`batch['x0']` has no role in maximum likelihood: the source enters "
                         "through `source_log_prob`; drop it from the batch.")
    check_array("batch['x1']", batch["x1"])
    check_cond("batch['cond']", batch.get("cond"), batch["x1"].shape[0])
    return check_finite_eager("batch['x1']", batch["x1"])


def cnf_mle_loss(params, key, batch, *, apply_fn, num_probes: int | None = None,
                 probe: Probe = Probe.RADEMACHER, solver=None, num_steps: int | None = None,
                 ts=None, adaptive=None, adjoint=None,
                 source_log_prob=standard_normal_log_prob):
    r"""The negative log-likelihood of a CNF, pure and ready for `jax.value_and_grad(has_aux=True)`.

    Bind the options first: `loss = functools.partial(cnf_mle_loss, apply_fn=...)`.
    The same computation as `-mean(`:func:`flowjax.sample.log_likelihood`\ `)`,
    made a training loss: the model's parameters are ODE arguments, so any
    diffrax adjoint can differentiate it.

    Args:
      params: model parameters, passed to `apply_fn`.
      key: a PRNG key; it draws the Hutchinson probes (unused for the exact trace).
      batch: a dict with `x1` (data `[B, *dims]`) and optionally `cond`
        (passed to `apply_fn`). There is no `x0`: the source enters only
        through `source_log_prob`.
      apply_fn: `apply_fn(params, x, t, cond) -> [B, *dims]`, a velocity.
      num_probes: None for the exact trace of the Jacobian (`D` forward-mode
        passes per evaluation: for small `D`, e.g. 2-D data); else the number of
        Hutchinson probes per sample, redrawn from `key` every call and fixed
        along the trajectory (one pass per probe: for high `D`).
      probe: `Probe.RADEMACHER` (lower variance) or `Probe.GAUSSIAN`.
      solver: a diffrax solver; Dopri5 by default.
      num_steps: a fixed number of uniform steps (the loss is then the
        likelihood of the discretized divergence, a biased estimate: evaluate
        with an adaptive solve).
      ts: a grid `[N + 1]` between 0 and 1 instead, walked from 1 to 0.
      adaptive: the adaptive step control (:class:`flowjax.sample.Adaptive`,
        the default, at 1e-5 as FFJORD trains its toys; its `max_steps` also
        sizes the checkpoints of the default adjoint).
      adjoint: a diffrax adjoint. Default `diffrax.RecursiveCheckpointAdjoint()`
        (discretise-then-optimise): the exact gradient of the computed loss,
        with the forward states checkpointed (about `sqrt(max_steps)` of them)
        and no second ODE solve, which for the small fields this loss is for is
        both the cheaper and the more robust choice. `diffrax.BacksolveAdjoint()`
        (Chen et al.'s continuous adjoint, used by FFJORD) needs O(1) memory
        in the number of steps but solves an adjoint ODE backwards, so its
        gradient is only accurate to the solver's tolerance.
      source_log_prob: `log p_0` per sample; standard normal by default.

    Returns:
      `(loss, aux)`: the mean negative log-likelihood in nats, and
      `aux = {"nll", "nfe"}`: the loss again and the number of evaluations of the
      augmented field (a velocity and its divergence) in the forward solve. The
      backward pass adds about two to three forward costs per evaluation
      (recomputation from checkpoints and the vector-Jacobian products).
    """
    x1 = _check_batch(key, batch)
    field = ModelVelocity(apply_fn, params, batch.get("cond"))
    solver = diffrax.Dopri5() if solver is None else solver
    _check_likelihood_options(solver, source_log_prob, num_probes, key, probe)
    ts, adaptive, _, _ = _resolve_grid(x1, num_steps=num_steps, ts=ts, adaptive=adaptive,
                                       t0=None, t1=None, default_adaptive=True)
    controller, dt0, cap = _reverse_grid(solver, ts, adaptive)
    if adjoint is not None:
        check_instance("adjoint", adjoint, diffrax.AbstractAdjoint,
                       "a diffrax adjoint (e.g. diffrax.RecursiveCheckpointAdjoint())")
    log_prob, stats = divergence_solve(field, x1, draw_probes(key, num_probes, probe, x1),
                                       solver=solver, controller=controller, dt0=dt0,
                                       max_steps=cap, source_log_prob=source_log_prob,
                                       adjoint=adjoint)
    nll = -log_prob.mean()
    return nll, {"nll": nll, "nfe": stats["nfe"]}
