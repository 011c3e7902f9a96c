"""Solver accuracy against the number of function evaluations (NFE).

Problems (velocities in float64):
  (a) mixture2d  - a 2-D mixture of 8 Gaussians on a circle, EXACT marginal velocity;
  (b) mixture32d - a 32-D mixture of 4 Gaussians with full covariances of condition
                   number 1e4 (eigenvalues 1e-4..1, random rotations), EXACT velocity;
  (c) toy2d      - an MLP trained here with I-CFM on 8gaussians -> moons (a network).
Solvers: Euler, Midpoint, Heun, RK4 and DPM-Solver++(2M) with the UniC corrector
("dpm2m-pc"), each on uniform and EDM grids; adaptive Tsit5 / Dopri5 / Dopri8 over a
sweep of tolerances; SDE samplers (Euler-Maruyama, ShARK; vanishing diffusion).
Errors: endpoint RMSE against a Dopri8 solve at rtol = atol = 1e-10 from the same
sources (recorded as `ref_tol`), W2 of the samples to target samples (exact targets: fresh samples; toy2d:
the reference solve), and the error of the mean negative log-likelihood of held-out
points through the divergence ODE solved with the same solver and grid (closed form
for (a), (b); the reference solve for (c); empty where the solver has no likelihood).

    python benchmarks/solver_nfe.py --quick --out workdir/solver_nfe.json

writes the JSON rows (problem, solver, grid, nfe, rmse, w2, nll_error), prints the
table, the NFE each solver needs for RMSE <= 1e-3, and draws a log-log plot with
fitted slopes next to the JSON file. The slopes are fitted only on errors above the
reference's accuracy floor (`ref_floor`: the RMSE between the reference and a Dopri8
solve at 100x its tolerance, an upper bound on the reference's own error).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from flowjax import analytic, data, losses, metrics, models, paths, sample, train  # noqa: E402
from flowjax import time as ftime  # noqa: E402

PATH = paths.RectifiedFlow()
FIXED = {"euler": diffrax.Euler(), "midpoint": diffrax.Midpoint(), "heun": diffrax.Heun(),
         "rk4": sample.RK4()}
ADAPTIVE = {"tsit5": diffrax.Tsit5(), "dopri5": diffrax.Dopri5(), "dopri8": diffrax.Dopri8()}


def _mixture_velocity(target, x, t):
    return analytic.mixture_velocity(PATH, target, x, t)


def _mixture_problem(name, target, n, key):
    field = jax.tree_util.Partial(_mixture_velocity, target)  # the mixture is a leaf
    k0, k1, k2 = jax.random.split(key, 3)
    return dict(name=name, field=field,
                x0=jax.random.normal(k0, (n, target.means.shape[1])),
                target=target.sample(k1, n), holdout=target.sample(k2, 64),
                exact_nll=lambda x: -analytic.mixture_log_prob(PATH, target, x, 1.0))


def mixture2d(n, key):
    angles = jnp.arange(8) * 2 * jnp.pi / 8
    means = 3.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
    covs = jnp.tile(0.15 * jnp.eye(2), (8, 1, 1))
    return _mixture_problem("mixture2d", analytic.GaussianMixture.create(means, covs), n, key)


def mixture32d(n, key, d=32, k=4):
    rng = np.random.default_rng(0)
    covs = []
    for _ in range(k):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        covs.append(q @ np.diag(np.logspace(-4, 0, d)) @ q.T)
    means = 0.5 * rng.normal(size=(k, d))  # overlapping: no mode boundaries to flip across
    target = analytic.GaussianMixture.create(jnp.asarray(means), jnp.asarray(np.stack(covs)))
    return _mixture_problem("mixture32d", target, n, key)


def toy2d(n, key, steps):
    """An MLP trained with I-CFM on 8gaussians -> moons for `steps` steps (batch 256).

    The MLP has flowjax's default (smooth) time embedding."""
    module = models.MLP(hidden=(128, 128, 128), time_dim=32)
    apply_fn = models.model_fn(module)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    loss = functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=PATH)
    opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 2e-3, 100, steps, 2e-4))
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    multi = train.make_multi_step(loss, opt, ema_decay=0.995)
    for i in range(steps // 100):
        kk = jax.random.fold_in(jax.random.PRNGKey(2), i)
        x0 = data.eight_gaussians(jax.random.fold_in(kk, 0), 100 * 256).reshape(100, 256, 2)
        x1 = data.moons(jax.random.fold_in(kk, 1), 100 * 256).reshape(100, 256, 2)
        state, _ = multi(state, {"x0": x0, "x1": x1})
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), state.ema_params)
    field = sample.ModelVelocity(apply_fn, params64)
    k0, k1 = jax.random.split(key)
    return dict(name="toy2d", field=field,
                x0=data.eight_gaussians(k0, n).astype(jnp.float64), target=None,
                holdout=data.moons(k1, 64).astype(jnp.float64), exact_nll=None,
                source_log_prob=None)


def _rmse(a, b):
    return float(jnp.sqrt(jnp.mean((a - b) ** 2)))


def _nll(problem, **solve_kwargs):
    kwargs = {}
    if problem["name"] == "toy2d":  # the source is 8gaussians: use its exact density
        kwargs["source_log_prob"] = _eight_gaussians_log_prob
    logp = sample.log_likelihood(problem["field"], problem["holdout"], **kwargs,
                                 **solve_kwargs).log_prob
    return float(-jnp.mean(logp))


def _eight_gaussians_log_prob(x, radius=5.0, std=0.1 ** 0.25):
    angles = jnp.arange(8) * 2 * jnp.pi / 8
    centers = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
    d2 = jnp.sum((x[:, None, :] - centers[None]) ** 2, -1)
    return (jax.scipy.special.logsumexp(-0.5 * d2 / std ** 2, axis=1) - jnp.log(8.0)
            - jnp.log(2 * jnp.pi * std ** 2))


def run_problem(problem, steps, tolerances, *, nll_everywhere=True, with_nll=True,
                ref_tol=1e-10, fixed=None, adaptive=None, sde=None):
    """All rows of one problem. With `nll_everywhere=False` the likelihood is solved only
    with adaptive Dopri5 (each new grid size is a new compilation, ~1 s here)."""
    fixed = FIXED if fixed is None else fixed
    adaptive = ADAPTIVE if adaptive is None else adaptive
    sde = {"sde-em": diffrax.Euler(), "sde-shark": diffrax.ShARK()} if sde is None else sde
    field, x0 = problem["field"], problem["x0"]

    def reference(tol):
        return sample.solve_ode(field, x0, solver=diffrax.Dopri8(),
                                adaptive=sample.Adaptive(tol, tol, max_steps=400_000)).samples

    tight = sample.Adaptive(ref_tol, ref_tol, max_steps=400_000)  # the reference likelihood

    ref = reference(ref_tol)
    ref_floor = _rmse(reference(100 * ref_tol), ref)
    target = problem["target"] if problem["target"] is not None else ref
    if problem["exact_nll"] is not None:
        ref_nll = float(jnp.mean(problem["exact_nll"](problem["holdout"])))
    else:
        ref_nll = _nll(problem, solver=diffrax.Dopri8(), adaptive=tight)
    rows = []

    def add(solver, grid, nfe, samples, nll):
        rows.append(dict(problem=problem["name"], solver=solver, grid=grid, nfe=int(nfe),
                         ref_tol=ref_tol, ref_floor=ref_floor,
                         rmse=_rmse(samples, ref), w2=metrics.w2(samples, target),
                         nll_error=None if nll is None else abs(nll - ref_nll)))

    for grid_name in ("uniform", "edm"):
        for n in steps:
            ts = ftime.uniform_grid(n) if grid_name == "uniform" else ftime.edm_grid(n, PATH)
            for name, solver in fixed.items():
                sol = sample.solve_ode(field, x0, solver=solver, ts=ts)
                want = with_nll and nll_everywhere
                nll = _nll(problem, solver=solver, ts=ts) if want else None
                add(name, grid_name, sol.nfe, sol.samples, nll)
            sol = sample.solve_ode(field, x0, solver=sample.DPMSolver2M(PATH), ts=ts)
            add("dpm2m-pc", grid_name, sol.nfe, sol.samples, None)
    for tol in tolerances:
        for name, solver in adaptive.items():
            sol = sample.solve_ode(field, x0, solver=solver,
                                   adaptive=sample.Adaptive(tol, tol, max_steps=100_000))
            want = with_nll and (nll_everywhere or name == "dopri5")
            nll = _nll(problem, solver=solver, adaptive=sample.Adaptive(tol, tol)) if want \
                else None
            add(name, f"tol={tol:g}", sol.nfe, sol.samples, nll)
    for n in steps[-1:]:
        for name, solver in sde.items():
            sol = sample.solve_sde(field, x0, key=jax.random.PRNGKey(7), path=PATH,
                                   diffusion=sample.VanishingDiffusion(1.0), num_steps=n,
                                   solver=solver)
            rows.append(dict(problem=problem["name"], solver=name, grid="uniform",
                             nfe=int(sol.nfe), rmse=None, w2=metrics.w2(sol.samples, target),
                             nll_error=None))
    return rows


def nfe_for_rmse(rows, problem, threshold=1e-3):
    """The smallest NFE at which each (solver, grid) reaches RMSE <= threshold."""
    best = {}
    for r in rows:
        if r["problem"] != problem or r["rmse"] is None or r["grid"].startswith("tol"):
            continue
        key = (r["solver"], r["grid"])
        if r["rmse"] <= threshold and r["nfe"] < best.get(key, np.inf):
            best[key] = r["nfe"]
        best.setdefault(key, np.inf)
    return best


def fitted_slopes(rows, min_points=2):
    """log-log slope of RMSE against NFE for each (problem, solver, grid) on fixed grids.

    Only errors above the reference's floor (`ref_floor`) enter the fit; a curve
    with fewer than `min_points` such errors gets no slope."""
    out = {}
    for key in {(r["problem"], r["solver"], r["grid"]) for r in rows
                if r["rmse"] is not None and not r["grid"].startswith("tol")}:
        pts = [(r["nfe"], r["rmse"]) for r in rows
               if (r["problem"], r["solver"], r["grid"]) == key
               and r["rmse"] > max(1e-12, r.get("ref_floor", 0.0))]
        if len(pts) >= min_points:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            out[key] = float(np.polyfit(x, y, 1)[0])
    return out


def plot(rows, slopes, filename):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({r["problem"] for r in rows})
    fig, axes = plt.subplots(1, len(problems), figsize=(5.5 * len(problems), 4.5), squeeze=False)
    for ax, prob in zip(axes[0], problems):
        keys = sorted({(r["solver"], r["grid"]) for r in rows if r["problem"] == prob
                       and r["rmse"] is not None and not r["grid"].startswith("tol")})
        for solver, grid in keys:
            pts = sorted((r["nfe"], r["rmse"]) for r in rows if r["problem"] == prob
                         and (r["solver"], r["grid"]) == (solver, grid))
            slope = slopes.get((prob, solver, grid), float("nan"))
            ax.plot(*zip(*pts), "o-" if grid == "uniform" else "s--", ms=3,
                    label=f"{solver}/{grid} ({slope:.1f})")
        for solver in ADAPTIVE:
            pts = sorted((r["nfe"], r["rmse"]) for r in rows if r["problem"] == prob
                         and r["solver"] == solver and r["grid"].startswith("tol"))
            if pts:
                ax.plot(*zip(*pts), "x:", label=f"{solver} (adaptive)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("endpoint RMSE vs Dopri8 1e-10")
        ax.set_title(prob)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def _fmt(v):
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def _run_named(name, quick):
    """Builds and runs one problem (in a worker process); returns (rows, seconds)."""
    jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    # Each step count and tolerance is a compilation (~1 s here): --quick keeps few.
    steps = [4, 16, 64] if quick else [4, 8, 16, 32, 64, 128, 256, 512]
    tolerances = [1e-3, 1e-6] if quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    n, key = (256 if quick else 1000), jax.random.PRNGKey(0)
    if name == "mixture2d":
        problem = mixture2d(n, key)
    elif name == "mixture32d":
        problem = mixture32d(n, key)
    else:
        problem = toy2d(n, key, steps=1000 if quick else 3000)
    ref_tol = 1e-10
    if quick:  # fewer compilations: no Midpoint, Tsit5, Dopri8 sweep or ShARK
        fixed = {k: v for k, v in FIXED.items() if k != "midpoint"}
        adaptive, sde = {"dopri5": ADAPTIVE["dopri5"]}, {"sde-em": diffrax.Euler()}
    else:
        fixed, adaptive, sde = FIXED, ADAPTIVE, None
    rows = run_problem(problem, steps, tolerances, nll_everywhere=not quick,
                       with_nll=not (quick and name == "mixture32d"), ref_tol=ref_tol,
                       fixed=fixed, adaptive=adaptive, sde=sde)
    return rows, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (under 2 minutes)")
    parser.add_argument("--out", default="workdir/solver_nfe.json")
    args = parser.parse_args()
    start = time.perf_counter()
    # The problems are independent and compile-bound (XLA compiles on one core): one
    # process each.
    names = ("mixture2d", "mixture32d", "toy2d")
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(names), mp_context=ctx) as pool:
        results = list(pool.map(_run_named, names, [args.quick] * len(names)))
    rows = []
    for name, (problem_rows, seconds) in zip(names, results):
        print(f"[{name}: {seconds:.1f} s]", flush=True)
        rows += problem_rows
    slopes = fitted_slopes(rows)

    cols = ("problem", "solver", "grid", "nfe", "rmse", "w2", "nll_error")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    print("\nNFE for endpoint RMSE <= 1e-3 (inf: not reached in the sweep)")
    for prob in ("mixture2d", "mixture32d", "toy2d"):
        need = nfe_for_rmse(rows, prob)
        print(f"  {prob}: " + ", ".join(f"{s}/{g}={v:g}" for (s, g), v in sorted(need.items())))
    floors = {r["problem"]: r["ref_floor"] for r in rows if r.get("ref_floor") is not None}
    print("\nFitted log-log slopes of RMSE vs NFE (fixed grids), fitted only on errors above "
          "the reference floor (RMSE of the reference against a Dopri8 solve at 100x its "
          "tolerance): " + ", ".join(f"{p} {f:.1e}" for p, f in floors.items()))
    for (prob, solver, grid), s in sorted(slopes.items()):
        used = sum(1 for r in rows if (r["problem"], r["solver"], r["grid"]) == (prob, solver, grid)
                   and r["rmse"] is not None and r["rmse"] > max(1e-12, floors[prob]))
        total = sum(1 for r in rows if (r["problem"], r["solver"], r["grid"]) == (prob, solver, grid))
        print(f"  {prob:10s} {solver:9s} {grid:8s} {s:6.2f}  ({used} of {total} points)")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on " \
              f"{jax.devices()[0].platform}"
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "quick": args.quick, "rows": rows,
                   "seconds": time.perf_counter() - start}, f, indent=1)
    plot(rows, slopes, os.path.splitext(args.out)[0] + ".png")
    print(f"\n{machine}; {time.perf_counter() - start:.0f} s; wrote {args.out} and the plot")


if __name__ == "__main__":
    main()
