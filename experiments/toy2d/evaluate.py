"""Sampling and tables of the toy2d runs: ODE solvers, flow-map jumps, diffusion samplers."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments._loop import named_key
from flowjax import paths, sample, time

RESULT_FIELDS = ("method", "source", "target", "solver", "nfe", "w2", "w2_floor", "npe",
                 "straightness")


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
    return runs, sol.trajectory, _velocity_along(field, sol.trajectory, sol.ts), sol.ts


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


def evaluate_diffusion(config, spec, apply_fn, params, x0, key):
    """The diffusion samplers of a run: reverse-time SDE (`sde-N`) and EDM's Heun (`heun-N`).

    The reverse SDE uses the path's own forward-SDE diffusion
    (`sample.ReverseDiffusion`); it needs a finite g at t = 0 (VP yes,
    rectified flow no), so only noise-prediction runs on VP get it. EDM's
    sampler takes the network's raw prediction and starts at sigma_max times
    the source noise.
    """
    path, runs = spec.path, {}
    if spec.prediction == paths.Prediction.NOISE:
        velocity = sample.ModelVelocity(apply_fn, params, path=path, prediction=spec.prediction)
        for n in config.eval.sde_steps:
            sol = sample.solve_sde(velocity, x0, key=named_key(key, f"sde-{n}"), path=path,
                                   diffusion=sample.ReverseDiffusion(path), num_steps=int(n))
            runs[f"sde-{n}"] = (np.asarray(sol.samples), int(sol.nfe))
    e = config.edm
    heun = sample.EDMHeun(path, prediction=spec.prediction, sigma_max=e.sigma_max)
    raw = sample.ModelVelocity(apply_fn, params)  # the network's own prediction, not converted
    for n in config.eval.heun_steps:
        grid = time.edm_grid(int(n), path, sigma_min=e.sigma_min, sigma_max=e.sigma_max,
                             rho=e.rho)
        sol = sample.solve_ode(raw, x0, solver=heun, ts=grid)
        runs[f"heun-{n}"] = (np.asarray(sol.samples), int(sol.nfe))
    return runs


def format_table(rows) -> str:
    """The results as a Markdown table."""
    lines = ["| " + " | ".join(RESULT_FIELDS) + " |", "|" + "---|" * len(RESULT_FIELDS)]
    for r in rows:
        cells = [f"{r[f]:.4g}" if isinstance(r[f], float) else str(r[f]) for f in RESULT_FIELDS]
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
