"""The toy2d methods as objects: one table from config names to method specifications.

A :class:`Spec` says what a method trains (its loss, built with the run's
model function), what its network predicts, how it is sampled (`kind`) and
which coupling pairs whole calls of batches ahead of the loss. :func:`spec`
builds it from the config; :func:`make_method` turns it into the
:class:`experiments._loop.Method` the shared loop trains.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax

from experiments._loop import Method
from flowjax import couplings, data, losses, models, paths, time

SOURCES = {"normal": data.standard_normal, "8gaussians": data.eight_gaussians}
TARGETS = {"moons": data.moons, "8gaussians": data.eight_gaussians, "circles": data.circles,
           "swissroll": data.swissroll, "scurve": data.scurve, "2spirals": data.two_spirals,
           "checkerboard": data.checkerboard}
CFM_METHODS = ("icfm", "otcfm", "otcfm_sinkhorn", "sbcfm", "fm", "vp", "cosine")
DIFFUSION_METHODS = ("vp_eps", "edm")  # Gaussian source only
FLOW_MAP_METHODS = ("meanflow", "shortcut")
METHODS = CFM_METHODS + DIFFUSION_METHODS + FLOW_MAP_METHODS + ("reflow",)
COUPLINGS = ("independent", "exact_ot", "sinkhorn")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a run is.

    Attributes:
      kind: "velocity" (a velocity field), "diffusion" (sampled also by the
        reverse SDE and EDM's Heun), "flow_map" (sampled with K jumps) or "reflow".
      path: the probability path of its loss (and of its samplers).
      coupling: the coupling of its pairs.
      ahead: pair whole calls of K batches before the fused steps (exact OT: the
        K assignments are solved in parallel host threads) instead of in the loss.
      prediction: what the network (after any preconditioning) predicts.
      loss: `loss(apply_fn, coupling) -> loss_fn` for the loop.
      loss_name: the loss's name on plots.
    """

    kind: str
    path: paths.AffinePath
    coupling: Any
    ahead: bool
    loss: Callable
    loss_name: str = "CFM loss"
    prediction: paths.Prediction = paths.Prediction.VELOCITY


def _noise(config):
    return paths.ConstantNoise(config.sigma) if config.sigma > 0 else None


def _sinkhorn(config):
    return couplings.Sinkhorn(config.sinkhorn_epsilon, scale_free=True)


def _cfm(path, coupling, ahead=False, kind="velocity", prediction=paths.Prediction.VELOCITY,
         loss_name="CFM loss", **options):
    if prediction != paths.Prediction.VELOCITY:
        options["prediction"] = prediction

    def loss(apply_fn, coupling):
        return functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=path,
                                 coupling=coupling, **options)
    return Spec(kind, path, coupling, ahead, loss, loss_name, prediction)


def _named_coupling(name, config):
    return {"independent": (couplings.Independent(), False), "exact_ot": (couplings.ExactOT(), True),
            "sinkhorn": (_sinkhorn(config), False)}[name]


def _meanflow(config):
    mf = config.meanflow
    times = (time.LogitNormal(mf.logit_loc, mf.logit_scale) if mf.times == "logit_normal"
             else time.Uniform())
    coupling, ahead = _named_coupling(mf.coupling, config)

    def loss(apply_fn, coupling):
        return functools.partial(
            losses.meanflow_loss, apply_fn=apply_fn, coupling=coupling,
            time_sampler=time.OrderedPairs(times, equal_fraction=mf.equal_fraction),
            weight_power=mf.weight_power, weight_eps=mf.weight_eps)
    return Spec("flow_map", paths.RectifiedFlow(), coupling, ahead, loss, "MeanFlow loss")


def _shortcut(config):
    sc = config.shortcut
    coupling, ahead = _named_coupling(sc.coupling, config)

    def loss(apply_fn, coupling):
        return functools.partial(losses.shortcut_loss, apply_fn=apply_fn, coupling=coupling,
                                 finest_steps=sc.finest_steps,
                                 bootstrap_fraction=sc.bootstrap_fraction)
    return Spec("flow_map", paths.RectifiedFlow(), coupling, ahead, loss, "shortcut loss")


def _reflow(distill):
    def loss(apply_fn, coupling):
        return functools.partial(losses.reflow_loss, apply_fn=apply_fn, distill=distill)
    return Spec("reflow", paths.RectifiedFlow(), None, False, loss,
                "distillation loss" if distill else "reflow loss")


def _edm(config):
    path, e = paths.RectifiedFlow(), config.edm  # EDM's loss only sees sigma = sigma_bar / alpha
    return _cfm(path, couplings.Independent(), kind="diffusion", loss_name="EDM loss",
                prediction=paths.Prediction.DATA,
                time_sampler=time.EDMLogNormal(path, e.p_mean, e.p_std),
                weighting=losses.edm_weighting(path, e.sigma_data))


#: Config name -> `spec(config)`. `reflow-k` (k >= 2) and `reflow-2-distill` are runs of "reflow".
TABLE: dict[str, Callable[[Any], Spec]] = {
    "icfm": lambda c: _cfm(paths.RectifiedFlow(noise=_noise(c)), couplings.Independent()),
    "otcfm": lambda c: _cfm(paths.RectifiedFlow(noise=_noise(c)), couplings.ExactOT(), True),
    "otcfm_sinkhorn": lambda c: _cfm(paths.RectifiedFlow(noise=_noise(c)), _sinkhorn(c)),
    "sbcfm": lambda c: _cfm(paths.RectifiedFlow(noise=paths.BridgeNoise(c.sb_sigma)),
                            couplings.SchrodingerBridge(c.sb_sigma)),
    "fm": lambda c: _cfm(paths.LipmanPath(sigma_min=c.sigma_min), couplings.Independent()),
    "vp": lambda c: _cfm(paths.VP(), couplings.Independent()),
    "cosine": lambda c: _cfm(paths.Cosine(), couplings.Independent()),
    "vp_eps": lambda c: _cfm(paths.VP(), couplings.Independent(), kind="diffusion",
                             prediction=paths.Prediction.NOISE, loss_name="noise-prediction loss"),
    "edm": _edm,
    "meanflow": _meanflow,
    "shortcut": _shortcut,
    "reflow": lambda c: _reflow(False),
    "reflow-distill": lambda c: _reflow(True),
}


def spec(run: str, config) -> Spec:
    """The :class:`Spec` of a run (`icfm`, ..., `reflow-3`, `reflow-2-distill`)."""
    if run.startswith("reflow-"):
        return TABLE["reflow-distill" if run.endswith("distill") else "reflow"](config)
    if run not in TABLE:
        raise ValueError(f"config.methods: unknown method {run!r}; choose from {METHODS}.")
    return TABLE[run](config)


def runs_of(method: str, config) -> tuple[str, ...]:
    """The runs a method name trains: `reflow` is 2-RF, ..., k-RF and the distilled 2-RF."""
    if method != "reflow":
        return (method,)
    runs = tuple(f"reflow-{k}" for k in range(2, config.reflow.rounds + 1))
    return runs + (("reflow-2-distill",) if config.reflow.distill else ())


def teacher(run: str) -> str:
    """The run whose ODE pairs (and, warm-started, weights) a reflow run trains on."""
    if run == "reflow-2-distill":
        return "reflow-2"
    k = int(run.split("-")[1])
    return "icfm" if k == 2 else f"reflow-{k - 1}"


def make_module(run: str, config):
    """The MLP of a run: two-time for flow maps, with the method's time-embedding scale."""
    if run in FLOW_MAP_METHODS:
        return models.MLP(hidden=tuple(config.hidden), time_dim=config.time_dim, two_times=True,
                          time_scale=config[run].time_scale)
    return models.MLP(hidden=tuple(config.hidden), time_dim=config.time_dim,
                      time_scale=config.time_scale)


def apply_fn_of(run: str, config):
    """The model function of a run (EDM's: the preconditioned denoiser, in flow time)."""
    module = make_module(run, config)
    if run == "edm":
        return paths.edm_precondition(models.model_fn(module), spec(run, config).path,
                                      sigma_data=config.edm.sigma_data)
    return models.average_model_fn(module) if run in FLOW_MAP_METHODS else models.model_fn(module)


def init_fn(run: str, config):
    """`init(key) -> params` of a run's MLP."""
    module, x, t = make_module(run, config), jnp.zeros((1, 2)), jnp.zeros((1,))
    extra = (None, t) if run in FLOW_MAP_METHODS else ()
    return lambda key: module.init(key, x, t, *extra)["params"]


def optimizer(config):
    """Adam with linear warm-up, then cosine decay to a tenth of the peak rate."""
    return optax.adam(optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.num_train_steps,
        end_value=0.1 * config.learning_rate))


def make_loss(run: str, config, apply_fn):
    """The loss of a run, and the coupling to apply to whole calls ahead of it (or None)."""
    s = spec(run, config)
    if s.ahead:
        return s.loss(apply_fn, couplings.Independent()), s.coupling
    return s.loss(apply_fn, s.coupling), None


def make_methods(config, runs) -> dict[str, tuple[Method, Spec]]:
    """The loop's :class:`Method` and the :class:`Spec` of each run, built once.

    Runs with the same loss (every `reflow-k`, k >= 2) share one loss object
    and one optimizer, so the loop compiles their step once.
    """
    opt, shared, out = optimizer(config), {}, {}
    for run in runs:
        s, kind = spec(run, config), ("reflow-k" if run.startswith("reflow-")
                                      and not run.endswith("distill") else run)
        apply_fn = apply_fn_of(run, config)
        if kind not in shared:
            shared[kind] = make_loss(run, config, apply_fn)
        loss, ahead = shared[kind]
        out[run] = (Method(run, loss, opt, init_fn(run, config), apply_fn=apply_fn,
                           loss_name=s.loss_name, coupling=ahead), s)
    return out
