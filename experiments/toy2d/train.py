"""Train and evaluate flow-matching methods on 2D toy problems.

`train_and_evaluate(config, workdir)` trains one velocity field per
(source, method), evaluates each with Euler at several step counts and with
adaptive Dopri5, and writes `config.json`, `metrics.jsonl`, `results.json`,
plots and orbax checkpoints into `workdir`. Starting again on the same
workdir resumes: finished runs are restored from their checkpoints and
unfinished ones continue from their latest checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from flowjax import couplings, data, losses, metrics, models, paths, sample, train

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
METHODS = ("icfm", "otcfm", "otcfm_sinkhorn", "sbcfm", "fm", "vp", "cosine")
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
        return paths.RectifiedFlow(noise=noise), couplings.independent(), False
    if name == "otcfm":
        return paths.RectifiedFlow(noise=noise), couplings.exact_ot(), True
    if name == "otcfm_sinkhorn":
        return (paths.RectifiedFlow(noise=noise),
                couplings.sinkhorn(config.sinkhorn_epsilon, scale_free=True), False)
    if name == "sbcfm":
        return (paths.RectifiedFlow(noise=paths.BridgeNoise(config.sb_sigma)),
                couplings.schrodinger_bridge(config.sb_sigma), False)
    if name == "fm":
        return paths.LipmanPath(sigma_min=config.sigma_min), couplings.independent(), False
    if name == "vp":
        return paths.VP(), couplings.independent(), False
    if name == "cosine":
        return paths.Cosine(), couplings.independent(), False
    raise ValueError(f"config.methods: unknown method {name!r}; choose from {METHODS}.")


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
    if config.target not in TARGETS:
        raise ValueError(f"config.target: unknown target {config.target!r}; "
                         f"choose from {tuple(TARGETS)}.")
    for field in ("num_train_steps", "batch_size", "steps_per_call", "checkpoint_every"):
        if int(config[field]) < 1:
            raise ValueError(f"config.{field} must be a positive integer, got {config[field]}.")
    if config.num_train_steps % config.steps_per_call:
        raise ValueError("config.num_train_steps must be a multiple of config.steps_per_call.")
    if config.checkpoint_every % config.steps_per_call:
        raise ValueError("config.checkpoint_every must be a multiple of config.steps_per_call.")
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
def _compiled_steps(config_json: str, method: str, apply_fn):
    """The jitted K-step function of a method, shared by its runs (one compilation)."""
    import ml_collections

    config = ml_collections.ConfigDict(json.loads(config_json))
    path, coupling, pair_ahead = make_method(method, config)
    loss_fn = functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=path,
                                coupling=couplings.independent() if pair_ahead else coupling)
    optimizer = _optimizer(config)
    return optimizer, train.make_multi_step(loss_fn, optimizer, ema_decay=config.ema_decay)


def train_one(config, workdir: str, source: str, method: str, writer, apply_fn, init_params):
    """Trains one (source, method) run, resuming from its checkpoints; returns the state."""
    _, coupling, pair_ahead = make_method(method, config)
    optimizer, multi_step = _compiled_steps(config.to_json(), method, apply_fn)
    key = _run_key(config.seed, source, method)
    init_key, data_key = jax.random.split(key)
    state = train.create_train_state(init_key, init_params, optimizer)

    src, tgt = SOURCES[source], TARGETS[config.target]
    k, b = config.steps_per_call, config.batch_size

    @jax.jit
    def make_batches(call_key):
        ks, kt, kp = jax.random.split(call_key, 3)
        x0 = src(ks, k * b).reshape(k, b, 2)
        x1 = tgt(kt, k * b).reshape(k, b, 2)
        if pair_ahead:
            (x0, x1), _ = jax.vmap(coupling)(jax.random.split(kp, k), x0, x1)
        return {"x0": x0, "x1": x1}

    ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints", f"{source}_{method}"))
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=1))
    if manager.latest_step() is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
    start = int(state.step)
    bar = tqdm(total=config.num_train_steps, initial=start, desc=f"{source}->{config.target} "
               f"{method}", leave=False, dynamic_ncols=True)
    prev = None
    for step in range(start, config.num_train_steps, k):
        batches = make_batches(jax.random.fold_in(data_key, step))
        state, m = multi_step(state, batches)
        if prev is not None:  # log the previous call's metrics: no host sync on this one
            writer.write(prev[0], prev[1], method=method, source=source)
        prev = (step + k, jax.tree.map(jnp.mean, m))
        bar.update(k)
        if (step + k) % config.checkpoint_every == 0 or step + k == config.num_train_steps:
            manager.save(step + k, args=ocp.args.StandardSave(state))
    if prev is not None:
        writer.write(prev[0], prev[1], method=method, source=source)
    manager.wait_until_finished()
    manager.close()
    bar.close()
    return state


def _velocity_along(velocity_fn, args, trajectory, ts):
    return jax.vmap(lambda x, t: velocity_fn(x, jnp.full((x.shape[0],), t, x.dtype), args))(
        trajectory, ts)


def evaluate(config, velocity_fn, args, x0, x_test):
    """Samples with every solver; returns per-solver samples and NFE, and path metrics."""
    runs = {}
    for n in config.eval.euler_steps:
        sol = sample.solve_ode(velocity_fn, x0, args, solver=diffrax.Euler(), num_steps=int(n))
        runs[f"euler-{n}"] = (np.asarray(sol.samples), int(sol.nfe))
    sol = sample.solve_ode(velocity_fn, x0, args, solver=diffrax.Dopri5(),
                           rtol=config.eval.rtol, atol=config.eval.atol, save_trajectory=True,
                           num_save=config.eval.num_save)
    runs["dopri5"] = (np.asarray(sol.samples), int(sol.nfe))
    vel = _velocity_along(velocity_fn, args, sol.trajectory, sol.ts)
    return runs, sol.trajectory, vel, sol.ts


def train_and_evaluate(config, workdir: str):
    """Runs the whole comparison; returns the list of result rows."""
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    writer = train.MetricsWriter(workdir)

    module = models.MLP(hidden=tuple(config.hidden), time_dim=config.time_dim)
    apply_fn = models.model_fn(module)
    velocity_fn = sample.model_velocity(apply_fn)
    n = config.eval.num_samples
    eval_key = jax.random.PRNGKey(config.seed + 1_000_003)
    k_test, k_floor, k_src = jax.random.split(eval_key, 3)
    tgt = TARGETS[config.target]
    x_test, x_floor = np.asarray(tgt(k_test, n)), np.asarray(tgt(k_floor, n))

    pool = ThreadPoolExecutor(max_workers=2)  # exact W2 on the host, beside training
    w2_floor = pool.submit(metrics.w2, x_test, x_floor)
    pending, samples_for_plot, trajectories = [], {}, {}
    for source in config.sources:
        x0 = SOURCES[source](jax.random.fold_in(k_src, zlib.crc32(source.encode())), n)
        w2_src = pool.submit(metrics.w2, np.asarray(x0), x_test)
        for method in config.methods:
            init_params = module.init(_run_key(config.seed, source, method),
                                      jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
            state = train_one(config, workdir, source, method, writer, apply_fn, init_params)
            params = state.ema_params if config.eval.use_ema else state.params
            runs, traj, vel, ts = evaluate(config, velocity_fn, (params, None), x0, x_test)
            samples_for_plot[(source, method)] = {s: r[0] for s, r in runs.items()}
            trajectories[(source, method)] = np.asarray(traj)
            straight = metrics.straightness(traj, vel, ts)
            for solver, (xs, nfe) in runs.items():
                pending.append((dict(method=method, source=source, target=config.target,
                                     solver=solver, nfe=nfe), pool.submit(metrics.w2, xs, x_test),
                                vel, ts, w2_src, straight))
    rows = []
    floor = w2_floor.result()
    for base, w2_future, vel, ts, w2_src, straight in pending:
        npe = metrics.normalized_path_energy(vel, ts, w2_src.result() ** 2)
        rows.append({**base, "w2": w2_future.result(), "w2_floor": floor, "npe": npe,
                     "straightness": straight})
    pool.shutdown()
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(format_table(rows))
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
