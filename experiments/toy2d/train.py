"""Train and evaluate flow-matching and few-step methods on 2D toy problems.

`train_and_evaluate(config, workdir)` trains one model per (source, run),
evaluates each, and writes `config.json`, `metrics.jsonl`, `results.json`,
plots and orbax checkpoints into `workdir`. Velocity fields (the CFM methods
and the k-rectified flows of `reflow`) are sampled with Euler at several step
counts and with adaptive Dopri5; flow maps (`meanflow`, `shortcut`) with
`K` jumps (`meanflow-K`, `shortcut-K`) and with Dopri5 on their instantaneous
field. The diffusion methods (`vp_eps`: DDPM's noise prediction on the VP
path; `edm`: EDM's preconditioned denoiser and loss) are sampled through the
same probability-flow ODE solvers, by the reverse-time SDE (`sde-N`,
Euler-Maruyama) and by EDM's Heun sampler on the rho = 7 grid (`heun-N`,
2N - 1 evaluations). Starting again on the same workdir resumes: finished runs are restored
from their checkpoints and unfinished ones continue from their latest one.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments._devices import make_mesh, strategy, validate_sharding
from experiments._workdir import (Preempted, check_nonfinite, restore, start_run,
                                  write_results)
from flowjax import couplings, data, losses, metrics, models, paths, sample, time, train

SOURCES = {
    "normal": data.standard_normal,
    "8gaussians": data.eight_gaussians,
}
TARGETS = {
    "moons": data.moons,
    "8gaussians": data.eight_gaussians,
    "circles": data.circles,
    "swissroll": data.swissroll,
    "scurve": data.scurve,
    "2spirals": data.two_spirals,
    "checkerboard": data.checkerboard,
}
CFM_METHODS = ("icfm", "otcfm", "otcfm_sinkhorn", "sbcfm", "fm", "vp", "cosine")
DIFFUSION_METHODS = ("vp_eps", "edm")  # Gaussian source only
FLOW_MAP_METHODS = ("meanflow", "shortcut")
METHODS = CFM_METHODS + DIFFUSION_METHODS + FLOW_MAP_METHODS + ("reflow",)
COUPLINGS = ("independent", "exact_ot", "sinkhorn")
RESULT_FIELDS = ("method", "source", "target", "solver", "nfe", "w2", "w2_floor", "npe",
                 "straightness")


def make_method(name: str, config):
    """The (path, coupling, pair_ahead) a method name stands for.

    `pair_ahead` marks couplings that are applied to the K batches of a call
    at once, before the fused steps, rather than inside the loss: exact OT
    then solves its K assignments in parallel host threads (2.5x faster here).
    Sinkhorn stays in the loss: vmapped, it waits for the slowest problem.
    Both give pairs with the same distribution.
    """
    noise = paths.ConstantNoise(config.sigma) if config.sigma > 0 else None
    if name == "icfm":
        return paths.RectifiedFlow(noise=noise), couplings.Independent(), False
    if name == "otcfm":
        return paths.RectifiedFlow(noise=noise), couplings.ExactOT(), True
    if name == "otcfm_sinkhorn":
        return (paths.RectifiedFlow(noise=noise),
                couplings.Sinkhorn(config.sinkhorn_epsilon, scale_free=True), False)
    if name == "sbcfm":
        return (paths.RectifiedFlow(noise=paths.BridgeNoise(config.sb_sigma)),
                couplings.SchrodingerBridge(config.sb_sigma), False)
    if name == "fm":
        return paths.LipmanPath(sigma_min=config.sigma_min), couplings.Independent(), False
    if name == "vp":
        return paths.VP(), couplings.Independent(), False
    if name == "cosine":
        return paths.Cosine(), couplings.Independent(), False
    if name == "vp_eps":
        return paths.VP(), couplings.Independent(), False
    if name == "edm":  # EDM's loss only sees sigma = sigma_bar / alpha: any path would do
        return paths.RectifiedFlow(), couplings.Independent(), False
    raise ValueError(f"config.methods: unknown method {name!r}; "
                     f"choose from {CFM_METHODS + DIFFUSION_METHODS}.")


def prediction_of(run: str):
    """What a run's network (after any preconditioning) predicts."""
    return {"vp_eps": paths.Prediction.NOISE, "edm": paths.Prediction.DATA}.get(
        run, paths.Prediction.VELOCITY)


def diffusion_options(run: str, config) -> dict:
    """The cfm_loss options that make a run a diffusion loss (empty for flow matching).

    `vp_eps` is DDPM's L_simple (noise prediction, uniform t, weight 1); `edm`
    is EDM's loss: log-normal sigma mapped to flow time and lambda(sigma) on the
    preconditioned denoiser (Karras et al. 2022, Table 1).
    """
    if run == "vp_eps":
        return {"prediction": paths.Prediction.NOISE}
    if run == "edm":
        path, _, _ = make_method(run, config)
        return {"prediction": paths.Prediction.DATA,
                "time_sampler": time.EDMLogNormal(path, config.edm.p_mean, config.edm.p_std),
                "weighting": losses.edm_weighting(path, config.edm.sigma_data)}
    return {}


def runs_of(method: str, config) -> tuple[str, ...]:
    """The runs a method name trains: `reflow` is 2-RF, ..., k-RF and the distilled 2-RF."""
    if method != "reflow":
        return (method,)
    runs = tuple(f"reflow-{k}" for k in range(2, config.reflow.rounds + 1))
    return runs + (("reflow-2-distill",) if config.reflow.distill else ())


def _teacher(run: str) -> str:
    """The run whose ODE pairs (and, warm-started, weights) a reflow run trains on."""
    if run == "reflow-2-distill":
        return "reflow-2"
    k = int(run.split("-")[1])
    return "icfm" if k == 2 else f"reflow-{k - 1}"


def _named_coupling(name: str, config):
    """(coupling, pair_ahead) for the couplings the flow-map methods can use."""
    if name == "independent":
        return couplings.Independent(), False
    if name == "exact_ot":
        return couplings.ExactOT(), True
    if name == "sinkhorn":
        return couplings.Sinkhorn(config.sinkhorn_epsilon, scale_free=True), False
    raise ValueError(f"unknown coupling {name!r}; choose from {COUPLINGS}.")


def make_loss(run: str, config, apply_fn):
    """The loss of a run, and the coupling to apply to whole calls ahead of it (or None)."""
    if run in CFM_METHODS + DIFFUSION_METHODS:
        path, coupling, ahead = make_method(run, config)
        loss = functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=path,
                                 **diffusion_options(run, config))
    elif run == "meanflow":
        mf = config.meanflow
        coupling, ahead = _named_coupling(mf.coupling, config)
        times = (time.LogitNormal(mf.logit_loc, mf.logit_scale) if mf.times == "logit_normal"
                 else time.Uniform())
        loss = functools.partial(
            losses.meanflow_loss, apply_fn=apply_fn,
            time_sampler=time.OrderedPairs(times, equal_fraction=mf.equal_fraction),
            weight_power=mf.weight_power, weight_eps=mf.weight_eps)
    elif run == "shortcut":
        coupling, ahead = _named_coupling(config.shortcut.coupling, config)
        loss = functools.partial(losses.shortcut_loss, apply_fn=apply_fn,
                                 finest_steps=config.shortcut.finest_steps,
                                 bootstrap_fraction=config.shortcut.bootstrap_fraction)
    else:  # reflow-k and reflow-2-distill: fixed pairs, no coupling
        return functools.partial(losses.reflow_loss, apply_fn=apply_fn,
                                 distill=run.endswith("distill")), None
    if ahead:
        return functools.partial(loss, coupling=couplings.Independent()), coupling
    return functools.partial(loss, coupling=coupling), None


def make_module(run: str, config):
    """The MLP of a run: two-time for flow maps, with the method's time-embedding scale."""
    if run in FLOW_MAP_METHODS:
        return models.MLP(hidden=tuple(config.hidden), time_dim=config.time_dim, two_times=True,
                          time_scale=config[run].time_scale)
    return models.MLP(hidden=tuple(config.hidden), time_dim=config.time_dim,
                      time_scale=config.time_scale)


def validate_config(config):
    """Checks names and sizes in the config; raises ValueError naming the field."""
    methods = tuple(config.methods)
    if not methods:
        raise ValueError("config.methods must name at least one method.")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"config.methods: unknown method {m!r}; choose from {METHODS}.")
    for s in config.sources:
        if s not in SOURCES:
            raise ValueError(f"config.sources: unknown source {s!r}; choose from {tuple(SOURCES)}.")
    diffusion = [m for m in methods if m in DIFFUSION_METHODS]
    if diffusion and tuple(config.sources) != ("normal",):
        raise ValueError(f"config.sources: the diffusion methods {diffusion} need the Gaussian "
                         "source alone, config.sources = ('normal',).")
    if config.target not in TARGETS:
        raise ValueError(f"config.target: unknown target {config.target!r}; "
                         f"choose from {tuple(TARGETS)}.")
    for field in ("num_train_steps", "batch_size", "steps_per_call", "checkpoint_every",
                  "keep_checkpoints", "max_consecutive_nonfinite"):
        if int(config[field]) < 1:
            raise ValueError(f"config.{field} must be a positive integer, got {config[field]}.")
    validate_sharding(config, config.batch_size)
    if config.num_train_steps % config.steps_per_call:
        raise ValueError("config.num_train_steps must be a multiple of config.steps_per_call.")
    if config.checkpoint_every % config.steps_per_call:
        raise ValueError("config.checkpoint_every must be a multiple of config.steps_per_call.")
    for name in ("meanflow", "shortcut"):
        if config[name].coupling not in COUPLINGS:
            raise ValueError(f"config.{name}.coupling: unknown coupling "
                             f"{config[name].coupling!r}; choose from {COUPLINGS}.")
    if config.meanflow.times not in ("uniform", "logit_normal"):
        raise ValueError("config.meanflow.times must be 'uniform' or 'logit_normal'.")
    if int(config.reflow.rounds) < 2:
        raise ValueError(f"config.reflow.rounds must be >= 2, got {config.reflow.rounds}.")
    for field in ("flow_map_steps", "sde_steps", "heun_steps"):
        for k in config.eval[field]:
            if int(k) < 1:
                raise ValueError(f"config.eval.{field} must be positive, got {k}.")
    n = config.eval.num_samples
    if not 1 < n <= metrics.MAX_W2_POINTS:
        raise ValueError(f"config.eval.num_samples must lie in [2, {metrics.MAX_W2_POINTS}].")


def _run_key(seed: int, source: str, method: str):
    """A key that depends on the run's names, not on its position in the config."""
    key = jax.random.PRNGKey(seed)
    return jax.random.fold_in(key, zlib.crc32(f"{source}/{method}".encode()) & 0x7FFFFFFF)


def _optimizer(config):
    """Adam with linear warm-up, then cosine decay to a tenth of the peak rate."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.num_train_steps,
        end_value=0.1 * config.learning_rate)
    return optax.adam(schedule)


@functools.lru_cache(maxsize=None)
def _compiled_steps(config_json: str, run: str, apply_fn):
    """The jitted K-step function of a run and its state shardings, shared by its sources."""
    import ml_collections

    config = ml_collections.ConfigDict(json.loads(config_json))
    loss_fn, _ = make_loss(run, config, apply_fn)
    optimizer = _optimizer(config)
    mesh = make_mesh(config)
    abstract = jax.eval_shape(lambda: train.create_train_state(
        jax.random.PRNGKey(0), _init_params(config, run, "normal"), optimizer))
    shardings = train.state_shardings(abstract, mesh, strategy(config))
    step = train.make_multi_step(loss_fn, optimizer, ema_decay=config.ema_decay,
                                 state_sharding=shardings,
                                 batch_sharding=train.batch_sharding(mesh, leading=1))
    return optimizer, shardings, step


def sampled_batches(config, source: str, coupling_ahead=None):
    """`make_batches(key) -> {x0, x1}` of K fresh batches, paired ahead if a coupling is given.

    The batches come out split over the run's mesh (rows on axis 1).
    """
    src, tgt = SOURCES[source], TARGETS[config.target]
    k, b = config.steps_per_call, config.batch_size

    @functools.partial(jax.jit, out_shardings=train.batch_sharding(make_mesh(config), leading=1))
    def make_batches(call_key):
        ks, kt, kp = jax.random.split(call_key, 3)
        x0 = src(ks, k * b).reshape(k, b, 2)
        x1 = tgt(kt, k * b).reshape(k, b, 2)
        if coupling_ahead is not None:
            pairs = jax.vmap(coupling_ahead)(jax.random.split(kp, k), x0, x1)
            x0, x1 = pairs.x0, pairs.x1
        return {"x0": x0, "x1": x1}

    return make_batches


def pool_batches(config, x0_pool, x1_pool):
    """`make_batches(key) -> {x0, x1}` of K batches drawn (with replacement) from fixed pairs."""
    k, b = config.steps_per_call, config.batch_size

    @functools.partial(jax.jit, out_shardings=train.batch_sharding(make_mesh(config), leading=1))
    def make_batches(call_key):
        idx = jax.random.randint(call_key, (k, b), 0, x0_pool.shape[0])
        return {"x0": x0_pool[idx], "x1": x1_pool[idx]}

    return make_batches


def train_one(config, workdir: str, source: str, run: str, writer, apply_fn, init_params,
              batches_factory):
    """Trains one (source, run), resuming from its checkpoints; returns the state.

    `batches_factory()` returns `make_batches(key)`; it is called only when
    steps remain, so a finished run costs no data (e.g. no reflow pairs).
    The batches of steps `[s, s + K)` come from `fold_in(data_key, s)`, so
    the input pipeline's position is the step itself: a run resumed from
    step `s` sees the batches an uninterrupted run would. On SIGTERM the
    state is saved at the current step and :class:`Preempted` is raised.

    Steps count batches, skipped (non-finite) ones included. When a logged or
    saved call shows `config.max_consecutive_nonfinite` skipped steps in a
    row, the run stops with :class:`NonFiniteStop` before saving again.
    """
    # Every reflow round k >= 2 has the same loss (only its pairs differ): one compile.
    loss_kind = "reflow-2" if run.startswith("reflow-") and not run.endswith("distill") \
        else run
    optimizer, shardings, multi_step = _compiled_steps(config.to_json(), loss_kind, apply_fn)
    key = _run_key(config.seed, source, run)
    init_key, data_key = jax.random.split(key)
    state = train.shard(train.create_train_state(init_key, init_params, optimizer), shardings)
    k = config.steps_per_call

    ckpt = train.Checkpointer(os.path.join(workdir, "checkpoints", f"{source}_{run}"),
                              save_every=config.checkpoint_every, keep=config.keep_checkpoints,
                              async_save=config.async_checkpoint, catch_sigterm=True)
    restored = restore(ckpt, state)
    if restored is not None:
        state = restored.state
    start = int(state.step + state.nonfinite_total)  # batches used, skipped steps included
    make_batches = batches_factory() if start < config.num_train_steps else None
    limit = config.max_consecutive_nonfinite
    bar = tqdm(total=config.num_train_steps, initial=start, desc=f"{source}->{config.target} "
               f"{run}", leave=False, dynamic_ncols=True)
    prev = None
    try:
        for step in range(start, config.num_train_steps, k):
            batches = make_batches(jax.random.fold_in(data_key, step))
            state, m = multi_step(state, batches)
            if prev is not None:  # log the previous call's metrics: no host sync on this one
                writer.write(prev[0], prev[1], method=run, source=source)
                check_nonfinite(prev[1], limit, prev[0], ckpt)
            done = step + k
            prev = (done, train.summarize_metrics(m))
            bar.update(k)
            preempted = ckpt.reached_preemption(done)
            force = preempted or done == config.num_train_steps
            if force or done % config.checkpoint_every == 0:  # a save syncs anyway
                check_nonfinite(prev[1], limit, done, ckpt)
            ckpt.save(done, state, pipeline={"next_step": done}, config=config, force=force)
            if preempted:
                writer.write(prev[0], prev[1], method=run, source=source)
                raise Preempted(done, ckpt.directory)
        if prev is not None:
            writer.write(prev[0], prev[1], method=run, source=source)
    finally:
        ckpt.close()
        bar.close()
    return state


def _velocity_along(field, trajectory, ts):
    return jax.vmap(lambda x, t: field(x, jnp.full((x.shape[0],), t, x.dtype)))(trajectory, ts)


def evaluate(config, field, x0, euler_steps):
    """Samples with Euler at `euler_steps` and adaptive Dopri5.

    Returns `(runs, trajectory, velocities, ts)`: per-solver (samples, NFE),
    and the Dopri5 trajectory with the field along it (for NPE and straightness).
    """
    runs = {}
    for n in euler_steps:
        sol = sample.solve_ode(field, x0, solver=diffrax.Euler(), num_steps=int(n))
        runs[f"euler-{n}"] = (np.asarray(sol.samples), int(sol.nfe))
    sol = sample.solve_ode(field, x0, solver=diffrax.Dopri5(),
                           adaptive=sample.Adaptive(config.eval.rtol, config.eval.atol),
                           save_trajectory=True, num_save=config.eval.num_save)
    runs["dopri5"] = (np.asarray(sol.samples), int(sol.nfe))
    vel = _velocity_along(field, sol.trajectory, sol.ts)
    return runs, sol.trajectory, vel, sol.ts


class _Instantaneous(eqx.Module):
    """The instantaneous field `u(x, t, t + delta)` of a flow map."""

    flow_map: sample.ModelFlowMap
    delta: float = eqx.field(static=True)

    def __call__(self, x, t):
        return self.flow_map(x, t, t + self.delta)


def evaluate_flow_map(config, run, apply_fn, params, x0):
    """A flow map sampled with K jumps (`<run>-K`), and Dopri5 on its instantaneous field.

    The instantaneous field is `u(x, t, t)` for MeanFlow and the finest
    trained step `u(x, t, t + 1/M)` for a shortcut model.
    """
    if run == "shortcut":
        m = config.shortcut.finest_steps
        steps, delta = [2 ** i for i in range(int(np.log2(m)) + 1)], 1.0 / m
    else:
        steps, delta = list(config.eval.flow_map_steps), 0.0
    flow_map = sample.ModelFlowMap(apply_fn, params)
    runs, traj, vel, ts = evaluate(config, _Instantaneous(flow_map, delta), x0, euler_steps=())
    for k in steps:
        sol = sample.solve_flow_map(flow_map, x0, num_steps=int(k))
        runs[f"{run}-{k}"] = (np.asarray(sol.samples), int(sol.nfe))
    runs = {name: runs[name] for name in [f"{run}-{k}" for k in steps] + ["dopri5"]}
    return runs, traj, vel, ts


def evaluate_diffusion(config, run, apply_fn, params, x0, key):
    """The diffusion samplers of a run: reverse-time SDE (`sde-N`) and EDM's Heun (`heun-N`).

    The reverse SDE uses the path's own forward-SDE diffusion
    (`sample.ReverseDiffusion`); EDM's sampler takes the network's raw
    prediction and starts at sigma_max times the source noise.
    """
    path, _, _ = make_method(run, config)
    raw = sample.ModelVelocity(apply_fn, params)  # the network's own prediction, not converted
    runs = {}
    if run == "vp_eps":  # the SDE needs a finite g at t = 0: VP yes, rectified flow no
        velocity = sample.ModelVelocity(apply_fn, params, path=path, prediction=prediction_of(run))
        for n in config.eval.sde_steps:
            sol = sample.solve_sde(velocity, x0, key=jax.random.fold_in(key, int(n)),
                                   path=path, diffusion=sample.ReverseDiffusion(path),
                                   num_steps=int(n))
            runs[f"sde-{n}"] = (np.asarray(sol.samples), int(sol.nfe))
    e = config.edm
    heun = sample.EDMHeun(path, prediction=prediction_of(run), sigma_max=e.sigma_max)
    for n in config.eval.heun_steps:
        grid = time.edm_grid(int(n), path, sigma_min=e.sigma_min, sigma_max=e.sigma_max,
                             rho=e.rho)
        sol = sample.solve_ode(raw, x0, solver=heun, ts=grid)
        runs[f"heun-{n}"] = (np.asarray(sol.samples), int(sol.nfe))
    return runs


class _Runs:
    """Trains (or restores) the runs of one source on demand, with their reflow teachers."""

    def __init__(self, config, workdir, source, writer):
        self.config, self.workdir, self.source, self.writer = config, workdir, source, writer
        self.states, self.pairs = {}, {}

    def apply_fn(self, run):
        return _apply_fns(self.config.to_json(), run)

    def params(self, run):
        state = self.state(run)
        return state.ema_params if self.config.eval.use_ema else state.params

    def field(self, run, params):
        if run in DIFFUSION_METHODS:
            path, _, _ = make_method(run, self.config)
            return sample.ModelVelocity(self.apply_fn(run), params, path=path,
                                        prediction=prediction_of(run))
        return sample.ModelVelocity(self.apply_fn(run), params)

    def _pairs(self, teacher):
        """The reflow coupling (x0, ODE_teacher(x0)), made once per teacher."""
        if teacher not in self.pairs:
            cfg = self.config
            key = jax.random.fold_in(_run_key(cfg.seed, self.source, teacher), 7)
            x0 = SOURCES[self.source](key, cfg.reflow.num_pairs)
            x1 = sample.reflow_pairs(
                self.field(teacher, self.params(teacher)), x0, chunk_size=cfg.reflow.chunk_size,
                adaptive=sample.Adaptive(cfg.eval.rtol, cfg.eval.atol)).samples
            self.pairs[teacher] = (x0, x1)
        return self.pairs[teacher]

    def state(self, run):
        if run in self.states:
            return self.states[run]
        cfg = self.config
        if run.startswith("reflow-"):
            teacher = _teacher(run)
            init = (self.params(teacher) if cfg.reflow.warm_start else
                    _init_params(cfg, run, self.source))

            def factory():
                return pool_batches(cfg, *self._pairs(teacher))
        else:
            init = _init_params(cfg, run, self.source)
            _, ahead = make_loss(run, cfg, None)

            def factory():
                return sampled_batches(cfg, self.source, ahead)
        self.states[run] = train_one(cfg, self.workdir, self.source, run, self.writer,
                                     self.apply_fn(run), init, factory)
        return self.states[run]


def _apply_fns(config_json: str, run: str):
    """The model function of a run (equal for equal configs, so compiled programs are shared)."""
    import ml_collections

    config = ml_collections.ConfigDict(json.loads(config_json))
    module = make_module(run, config)
    if run == "edm":  # F in D = c_skip x + c_out F(c_in x, c_noise), in flow time
        path, _, _ = make_method(run, config)
        return paths.edm_precondition(models.model_fn(module), path,
                                      sigma_data=config.edm.sigma_data)
    return (models.average_model_fn(module) if run in FLOW_MAP_METHODS
            else models.model_fn(module))


def _init_params(config, run, source):
    module = make_module(run, config)
    x, t = jnp.zeros((1, 2)), jnp.zeros((1,))
    extra = (None, t) if run in FLOW_MAP_METHODS else ()
    return module.init(_run_key(config.seed, source, run), x, t, *extra)["params"]


def train_and_evaluate(config, workdir: str):
    """Runs the whole comparison; returns the list of result rows."""
    validate_config(config)
    writer = start_run(config, workdir)

    n = config.eval.num_samples
    eval_key = jax.random.PRNGKey(config.seed + 1_000_003)
    k_test, k_floor, k_src = jax.random.split(eval_key, 3)
    k_sde = jax.random.fold_in(eval_key, 11)
    tgt = TARGETS[config.target]
    x_test, x_floor = np.asarray(tgt(k_test, n)), np.asarray(tgt(k_floor, n))

    pool = ThreadPoolExecutor(max_workers=2)  # exact W2 on the host, beside training
    w2_floor = pool.submit(metrics.w2, x_test, x_floor)
    pending, samples_for_plot, trajectories = [], {}, {}
    for source in config.sources:
        x0 = SOURCES[source](jax.random.fold_in(k_src, zlib.crc32(source.encode())), n)
        w2_src = pool.submit(metrics.w2, np.asarray(x0), x_test)
        source_runs = _Runs(config, workdir, source, writer)
        for method in config.methods:
            for run in runs_of(method, config):
                params = source_runs.params(run)
                if run in FLOW_MAP_METHODS:
                    runs, traj, vel, ts = evaluate_flow_map(
                        config, run, source_runs.apply_fn(run), params, x0)
                else:
                    runs, traj, vel, ts = evaluate(config, source_runs.field(run, params),
                                                   x0, config.eval.euler_steps)
                if run in DIFFUSION_METHODS:
                    runs.update(evaluate_diffusion(config, run, source_runs.apply_fn(run), params,
                                                   x0, jax.random.fold_in(k_sde, zlib.crc32(
                                                       run.encode()))))
                samples_for_plot[(source, run)] = {s: r[0] for s, r in runs.items()}
                trajectories[(source, run)] = np.asarray(traj)
                straight = metrics.straightness(traj, vel, ts)
                for solver, (xs, nfe) in runs.items():
                    pending.append((dict(method=run, source=source, target=config.target,
                                         solver=solver, nfe=nfe),
                                    pool.submit(metrics.w2, xs, x_test), vel, ts, w2_src,
                                    straight))
    rows = []
    floor = w2_floor.result()
    for base, w2_future, vel, ts, w2_src, straight in pending:
        npe = metrics.normalized_path_energy(vel, ts, w2_src.result() ** 2)
        rows.append({**base, "w2": w2_future.result(), "w2_floor": floor, "npe": npe,
                     "straightness": straight})
    pool.shutdown()
    if not write_results(workdir, rows):
        return rows
    print(format_table(rows))
    if any(r["method"] in DIFFUSION_METHODS for r in rows):
        for source in config.sources:
            print(format_sampler_table(rows, source))
    if config.plot:
        from experiments.toy2d import plots

        plots.plot_samples(os.path.join(workdir, "samples.png"), samples_for_plot, x_test)
        plots.plot_trajectories(os.path.join(workdir, "trajectories.png"), trajectories)
        plots.plot_losses(os.path.join(workdir, "loss.png"), writer.read())
    return rows


def format_table(rows) -> str:
    """The results as a Markdown table."""
    head = "| " + " | ".join(RESULT_FIELDS) + " |"
    lines = [head, "|" + "---|" * len(RESULT_FIELDS)]
    for r in rows:
        cells = []
        for f in RESULT_FIELDS:
            v = r[f]
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nfe_label(solver: str) -> str:
    return "adaptive" if solver == "dopri5" else solver.rsplit("-", 1)[1]


def _sampler_name(solver: str) -> str:
    if solver == "dopri5":
        return "PF-ODE Dopri5"
    kind, n = solver.rsplit("-", 1)
    return {"euler": f"PF-ODE Euler {n}", "sde": f"reverse SDE Euler-Maruyama {n}",
            "heun": f"EDM Heun {n}"}.get(kind, f"{kind} {n}")


def format_sampler_table(rows, source: str) -> str:
    """W2, its ratio to the noise floor and the NFE, a row per (method, sampler), for one source.

    The table of the diffusion comparison: one method may be sampled by the
    probability-flow ODE (Euler, Dopri5), the reverse SDE and EDM's Heun sampler.
    """
    lines = ["| method | sampler | NFE | W2 | W2 / floor |", "|---|---|---|---|---|"]
    for r in rows:
        if r["source"] == source:
            lines.append(f"| {r['method']} | {_sampler_name(r['solver'])} | {r['nfe']} | "
                         f"{r['w2']:.3f} | {r['w2'] / r['w2_floor']:.2f} |")
    return "\n".join(lines)


def format_nfe_table(rows, source: str) -> str:
    """W2 against NFE for one source: a row per method, a column per step count.

    Fixed-step columns hold Euler (velocity fields) or K jumps (flow maps);
    the last column is adaptive Dopri5 with its NFE in brackets.
    """
    rows = [r for r in rows if r["source"] == source  # one column per step count: ODE samplers
            and not r["solver"].startswith(("sde-", "heun-"))]
    cols = sorted({_nfe_label(r["solver"]) for r in rows} - {"adaptive"}, key=int)
    lines = ["| method | " + " | ".join(f"{c} NFE" for c in cols) + " | Dopri5 (NFE) |",
             "|---|" + "---|" * (len(cols) + 1)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {_nfe_label(r["solver"]): r for r in rows if r["method"] == method}
        line = [f"{cells[c]['w2']:.3f}" if c in cells else "" for c in cols]
        ada = cells.get("adaptive")
        line.append(f"{ada['w2']:.3f} ({ada['nfe']})" if ada else "")
        lines.append(f"| {method} | " + " | ".join(line) + " |")
    return "\n".join(lines)
