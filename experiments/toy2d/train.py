"""Train and evaluate flow-matching, few-step and diffusion methods on 2D toy problems.

`train_and_evaluate(config, workdir)` trains one model per (source, run) with
the shared loop (:mod:`experiments._loop`), evaluates each, and writes
`config.json`, `metrics.jsonl`, `results.json`, plots and orbax checkpoints
into `workdir`. Velocity fields (the CFM methods and the k-rectified flows of
`reflow`) are sampled with Euler at several step counts and with adaptive
Dopri5; flow maps (`meanflow`, `shortcut`) with `K` jumps (`meanflow-K`,
`shortcut-K`) and with Dopri5 on their instantaneous field. The diffusion
methods (`vp_eps`: DDPM's noise prediction on the VP path; `edm`: EDM's
preconditioned denoiser and loss) also go through the reverse-time SDE
(`sde-N`) and EDM's Heun sampler (`heun-N`, 2N - 1 evaluations). The methods
are objects (:mod:`experiments.toy2d.methods`); evaluation and tables are in
:mod:`experiments.toy2d.evaluate`. Starting again on the same workdir
resumes: finished runs are restored, unfinished ones continue.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from experiments._devices import make_mesh, strategy, validate_sharding
from experiments._loop import (KeyedBatches, console, eval_params, evaluating, named_key,
                               results_in, root_key, train_loop)
from experiments._workdir import start_run, write_results
from experiments.toy2d.evaluate import (RESULT_FIELDS, evaluate, evaluate_diffusion,
                                        evaluate_flow_map, format_nfe_table,
                                        format_sampler_table, format_table)
from experiments.toy2d.methods import (COUPLINGS, DIFFUSION_METHODS, METHODS,
                                       SOURCES, TARGETS, make_methods, runs_of, teacher)
from flowjax import metrics, sample, train

__all__ = ["RESULT_FIELDS", "format_nfe_table", "format_sampler_table", "format_table",
           "train_and_evaluate", "validate_config"]


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


def _stacked(config, draw):
    """`jit(make_batches)` of one call: `[K, B, 2]` leaves (`[B, 2]` when K = 1), split
    over the run's mesh."""
    k, multi = config.steps_per_call, config.steps_per_call > 1
    out = train.batch_sharding(make_mesh(config), leading=int(multi))

    @functools.partial(jax.jit, out_shardings=out)
    def make_batches(call_key):
        batch = draw(call_key, k, config.batch_size)
        return batch if multi else jax.tree.map(lambda a: a[0], batch)

    return make_batches


def sampled_batches(config, source: str, coupling_ahead=None):
    """`make_batches(key) -> {x0, x1}` of one call of fresh batches, paired ahead if a
    coupling is given (one assignment per batch)."""
    src, tgt = SOURCES[source], TARGETS[config.target]

    def draw(key, k, b):
        ks, kt, kp = jax.random.split(key, 3)
        x0, x1 = src(ks, k * b).reshape(k, b, 2), tgt(kt, k * b).reshape(k, b, 2)
        if coupling_ahead is not None:
            pairs = jax.vmap(coupling_ahead)(jax.random.split(kp, k), x0, x1)
            x0, x1 = pairs.x0, pairs.x1
        return {"x0": x0, "x1": x1}

    return _stacked(config, draw)


def pool_batches(config, x0_pool, x1_pool):
    """`make_batches(key) -> {x0, x1}` of one call drawn (with replacement) from fixed pairs."""
    def draw(key, k, b):
        idx = jax.random.randint(key, (k, b), 0, x0_pool.shape[0])
        return {"x0": x0_pool[idx], "x1": x1_pool[idx]}

    return _stacked(config, draw)


class Runs:
    """Trains (or restores) the runs of one source on demand, with their reflow teachers.

    The batches of the call at step `s` come from `fold_in(data_key, s)`
    (:class:`experiments._loop.KeyedBatches`): a resumed run sees the batches
    an uninterrupted one would. A finished run makes no data (no reflow pairs).
    """

    def __init__(self, config, workdir, source, writer, methods):
        self.config, self.workdir, self.source, self.writer = config, workdir, source, writer
        self.methods, self.states, self.pairs = methods, {}, {}
        self.key = named_key(root_key(config), "train", source)

    def params(self, run):
        return eval_params(self.state(run), self.config.eval.use_ema)

    def field(self, run, params):
        method, spec = self.methods[run]
        if spec.kind == "diffusion":
            return sample.ModelVelocity(method.apply_fn, params, path=spec.path,
                                        prediction=spec.prediction)
        return sample.ModelVelocity(method.apply_fn, params)

    def _pairs(self, teacher_run):
        """The reflow coupling (x0, ODE_teacher(x0)), made once per teacher."""
        if teacher_run not in self.pairs:
            cfg = self.config
            evaluating(f"{self.source}/{teacher_run}", "reflow pairs")
            x0 = SOURCES[self.source](named_key(self.key, "reflow pairs", teacher_run),
                                      cfg.reflow.num_pairs)
            x1 = sample.reflow_pairs(
                self.field(teacher_run, self.params(teacher_run)), x0,
                chunk_size=cfg.reflow.chunk_size,
                adaptive=sample.Adaptive(cfg.eval.rtol, cfg.eval.atol)).samples
            self.pairs[teacher_run] = (x0, x1)
        return self.pairs[teacher_run]

    def state(self, run):
        if run not in self.states:
            cfg, (method, _) = self.config, self.methods[run]
            init = None
            if run.startswith("reflow-"):
                init = self.params(teacher(run)) if cfg.reflow.warm_start else None

                def factory():
                    return pool_batches(cfg, *self._pairs(teacher(run)))
            else:
                def factory():
                    return sampled_batches(cfg, self.source, method.coupling)
            key = named_key(self.key, run)
            batches = KeyedBatches(factory, named_key(key, "data"),
                                   steps_per_call=cfg.steps_per_call, lazy=True)
            self.states[run] = train_loop(
                method, batches, key, cfg, self.workdir, name=f"{self.source}/{run}",
                tags={"method": run, "source": self.source}, writer=self.writer,
                init_params=init, mesh=make_mesh(cfg), strategy=strategy(cfg)).state
        return self.states[run]


def train_and_evaluate(config, workdir: str):
    """Runs the whole comparison; returns the list of result rows."""
    validate_config(config)
    writer = start_run(config, workdir)
    runs = [run for m in config.methods for run in runs_of(m, config)]
    methods = make_methods(config, dict.fromkeys(runs + [teacher(r) for r in runs
                                                         if r.startswith("reflow-")]))
    n, key = config.eval.num_samples, named_key(root_key(config), "eval")
    tgt = TARGETS[config.target]
    x_test = np.asarray(tgt(named_key(key, "test"), n))
    x_floor = np.asarray(tgt(named_key(key, "floor"), n))

    pool = ThreadPoolExecutor(max_workers=2)  # exact W2 on the host, beside training
    w2_floor = pool.submit(metrics.w2, x_test, x_floor)
    pending, samples_for_plot, trajectories = [], {}, {}
    for source in config.sources:
        x0 = SOURCES[source](named_key(key, "source", source), n)
        w2_src = pool.submit(metrics.w2, np.asarray(x0), x_test)
        source_runs = Runs(config, workdir, source, writer, methods)
        for run in runs:
            params = source_runs.params(run)
            method, spec = methods[run]
            evaluating(f"{source}/{run}", "ODE samplers" if spec.kind != "diffusion"
                       else "ODE, SDE and Heun samplers")
            if spec.kind == "flow_map":
                out, traj, vel, ts = evaluate_flow_map(config, run, method.apply_fn, params, x0)
            else:
                out, traj, vel, ts = evaluate(config, source_runs.field(run, params), x0,
                                              config.eval.euler_steps)
            if spec.kind == "diffusion":
                out.update(evaluate_diffusion(config, spec, method.apply_fn, params, x0,
                                              named_key(key, "sde", run)))
            samples_for_plot[(source, run)] = {s: r[0] for s, r in out.items()}
            trajectories[(source, run)] = np.asarray(traj)
            straight = metrics.straightness(traj, vel, ts)
            for solver, (xs, nfe) in out.items():
                pending.append((dict(method=run, source=source, target=config.target,
                                     solver=solver, nfe=nfe),
                                pool.submit(metrics.w2, xs, x_test), vel, ts, w2_src, straight))
    evaluating("all runs", "W2 against the test set")
    rows, floor = [], w2_floor.result()
    for base, w2_future, vel, ts, w2_src, straight in pending:
        npe = metrics.normalized_path_energy(vel, ts, w2_src.result() ** 2)
        rows.append({**base, "w2": w2_future.result(), "w2_floor": floor, "npe": npe,
                     "straightness": straight})
    pool.shutdown()
    if not write_results(workdir, rows):
        return rows
    console(format_table(rows))
    if any(r["method"] in DIFFUSION_METHODS for r in rows):
        for source in config.sources:
            console(format_sampler_table(rows, source))
    if config.plot:
        from experiments.toy2d import plots

        plots.plot_samples(os.path.join(workdir, "samples.png"), samples_for_plot, x_test)
        plots.plot_trajectories(os.path.join(workdir, "trajectories.png"), trajectories)
        plots.plot_losses(os.path.join(workdir, "loss.png"), writer.read(),
                          {run: methods[run][0].loss_name for run in runs})
    results_in(workdir)
    return rows
