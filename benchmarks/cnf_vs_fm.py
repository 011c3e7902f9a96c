"""CNF maximum likelihood against flow matching on 2-D targets: held-out NLL against wall-clock.

How does flow matching compare with training the
same continuous normalizing flow by maximum likelihood? Both train the same
velocity field with the same optimizer on fresh batches of the same target:

  model    `models.MLP(hidden=(64, 64, 64), time_dim=None)`: [x, t] -> 3 x Dense(64) +
           SiLU -> 2 (TorchCFM's 2-D MLP shape, with a smooth activation), the same
           initial parameters for both methods
  cnf      `losses.cnf_mle_loss`: the NLL of the batch through the divergence ODE,
           exact Jacobian trace (2-D), adaptive Dopri5 at rtol = atol = --cnf-tol
           (FFJORD's toys: 1e-5), gradient by `RecursiveCheckpointAdjoint`; one
           `train.make_train_step` call per step
  fm       `losses.cfm_loss` with `paths.RectifiedFlow()` and independent pairs (I-CFM):
           one network evaluation per sample and step; `train.make_multi_step` runs
           --fm-k steps per call (its fastest flowjax runner)
  both     Adam(--lr), batch --batch, x0 ~ N(0, I); targets 8gaussians (TorchCFM's: radius
           5, variance sqrt(0.1)) and checkerboard (FFJORD's)

The two methods train in one process, alternating: each runs until its own
training clock (compilation and evaluation excluded) reaches the next checkpoint
time of a geometric grid up to --budget seconds, and is then evaluated, so both
see the same machine load. At every checkpoint the held-out NLL is computed the
same way for both: `sample.log_likelihood` (exact trace, Dopri5 at rtol = atol =
1e-5) on --heldout fresh points of the target, for the raw parameters and for
their exponential moving average (decay --ema, 0.99: a horizon of about 100
steps, short enough for the CNF's few steps; at a constant learning rate the raw
parameters of flow matching jitter by about 0.01 nat). The differential entropy
of the target is the floor of the NLL (8gaussians: log 8 + log(2 pi e sqrt(0.1))
= 3.766, the modes being 6.8 standard deviations apart; checkerboard: log 32 =
3.466).

Reported: time and forward NFE per training step (the CNF's adaptive NFE grows as
its field sharpens; the backward pass adds its own work), the NLL each method
reaches at equal wall-clock, and the first checkpoint time at which flow matching
is at or below the CNF's final NLL, for each kind of parameters (an upper bound
on the crossing time, so the ratio "CNF time / FM time" is a lower bound). A
last table times one step of the CNF variants (continuous adjoint, Hutchinson)
at the CNF's final parameters.

    .venv/bin/python benchmarks/cnf_vs_fm.py --quick --out workdir/cnf_vs_fm_quick.json   # ~2 min
    .venv/bin/python benchmarks/cnf_vs_fm.py --out workdir/cnf_vs_fm.json                 # ~24 min

`--quick` trains on 8gaussians only, 30 s per method, and times only the
Hutchinson and one-step-per-call variants; the full run trains both targets for
300 s per method. Timings on a shared CPU are noisy; the load average
is recorded at every checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time

import diffrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowjax import data, losses, models, paths, sample, train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _platform import cpu_name  # noqa: E402  (benchmarks/ on sys.path)

TARGETS = {
    "8gaussians": (data.eight_gaussians, math.log(8) + math.log(2 * math.pi * math.e * 0.1 ** 0.5)),
    "checkerboard": (data.checkerboard, math.log(32.0)),
}
METHODS = ("cnf", "fm")
PARAMS = {"raw": "nll", "ema": "nll_ema"}  # which parameters are evaluated: curve field


def reach_cnf_final(curves, field):
    """The CNF's final NLL, FM's final NLL, and when FM first gets at or below the former.

    `fm_time_s` is the first FM checkpoint at or below it: an upper bound on the
    crossing time, so `ratio` (the CNF's training time over it) is a lower bound
    on the speed-up. `fm_time_interp_s` and `ratio_interp` place the crossing by
    linear interpolation of the NLL in log-time between that checkpoint and the
    one before it (an estimate, finer than the grid's factor of 1.5).
    """
    cnf_final, cnf_time = curves["cnf"][-1][field], curves["cnf"][-1]["time_s"]
    fm = curves["fm"]
    i = next((i for i in range(1, len(fm)) if fm[i][field] <= cnf_final), None)
    interp = None
    if i is not None:
        interp = fm[i]["time_s"]
        if i > 1 and fm[i - 1][field] > cnf_final:
            (t0, y0), (t1, y1) = ((fm[j]["time_s"], fm[j][field]) for j in (i - 1, i))
            w = (y0 - cnf_final) / (y0 - y1)
            interp = math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))
    return {"cnf_final": cnf_final, "fm_final": fm[-1][field],
            "best": {m: min(c[field] for c in curves[m]) for m in METHODS},
            "fm_time_s": fm[i]["time_s"] if i else None,
            "fm_steps": fm[i]["steps"] if i else None,
            "ratio": cnf_time / fm[i]["time_s"] if i else None,
            "fm_time_interp_s": interp,
            "ratio_interp": cnf_time / interp if interp else None}


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "diffrax": diffrax.__version__,
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}"}


def checkpoint_times(budget: float, first: float = 0.25, ratio: float = 1.5) -> list[float]:
    """A geometric grid of training-clock times from `first` to `budget` (inclusive)."""
    times = [first]
    while times[-1] * ratio < budget:
        times.append(times[-1] * ratio)
    return times + [budget]


class Runner:
    """One method's train state, step, batches and training clock."""

    def __init__(self, name, args, target_fn, apply_fn, params, loss_opts=None, k=1):
        self.name, self.k = name, k
        optimizer = optax.adam(args.lr)
        b = args.batch
        if name == "cnf":
            loss = functools.partial(losses.cnf_mle_loss, apply_fn=apply_fn, **(loss_opts or {}))
            self.step_fn = train.make_train_step(loss, optimizer, ema_decay=args.ema)

            @jax.jit
            def batches(key):
                return {"x1": target_fn(key, b)}
        else:
            loss = functools.partial(losses.cfm_loss, apply_fn=apply_fn,
                                     path=paths.RectifiedFlow())
            make = train.make_train_step if k == 1 else train.make_multi_step
            self.step_fn = make(loss, optimizer, ema_decay=args.ema)

            @jax.jit
            def batches(key):
                k0, k1 = jax.random.split(key)
                x0 = jax.random.normal(k0, (k * b, 2))
                x1 = target_fn(k1, k * b)
                if k == 1:
                    return {"x0": x0, "x1": x1}
                return {"x0": x0.reshape(k, b, 2), "x1": x1.reshape(k, b, 2)}

        self.batches, self.optimizer = batches, optimizer
        self.data_key = jax.random.PRNGKey(args.seed + 1)
        # Compile on a throw-away state (the step donates it), then start from `params`.
        t = time.perf_counter()
        warm = train.create_train_state(jax.random.PRNGKey(args.seed), params, optimizer)
        jax.block_until_ready(self.step_fn(warm, self.batches(self.data_key)))
        self.compile_s = time.perf_counter() - t
        self.state = train.create_train_state(jax.random.PRNGKey(args.seed), params, optimizer)
        self.clock, self.steps, self.nfe_sum, self.calls = 0.0, 0, 0.0, 0

    def train_until(self, clock: float):
        """Steps until this method's training clock reaches `clock` seconds."""
        while self.clock < clock:
            t = time.perf_counter()
            self.state, m = self.step_fn(self.state,
                                         self.batches(jax.random.fold_in(self.data_key,
                                                                         self.steps)))
            jax.block_until_ready(m)
            self.clock += time.perf_counter() - t
            self.steps += self.k
            self.nfe_sum += (float(jnp.mean(m["nfe"])) if "nfe" in m else 1.0) * self.k
            self.calls += 1


def time_steps(step_fn, state, batches, key, n, k=1):
    """Seconds per step and mean forward NFE over `n` calls after a warm-up call."""
    state, m = step_fn(state, batches(key))
    jax.block_until_ready(m)
    t, nfe = time.perf_counter(), []
    for i in range(n):
        state, m = step_fn(state, batches(jax.random.fold_in(key, i)))
        jax.block_until_ready(m)
        nfe.append(float(jnp.mean(m["nfe"])) if "nfe" in m else 1.0)
    return (time.perf_counter() - t) / (n * k), float(np.mean(nfe))


def run_target(name, args, budget):
    target_fn, entropy = TARGETS[name]
    module = models.MLP(hidden=(args.width,) * args.depth, time_dim=None, activation=nn.silu)
    apply_fn = models.model_fn(module)
    params = module.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, 2)), jnp.zeros(1))["params"]
    heldout = target_fn(jax.random.PRNGKey(10_000 + args.seed), args.heldout)
    def nll(p):
        sol = sample.log_likelihood(sample.ModelVelocity(apply_fn, p), heldout,
                                    adaptive=sample.Adaptive(1e-5, 1e-5))
        return float(-jnp.mean(sol.log_prob)), int(sol.nfe)

    nll(params)  # compile the evaluation once
    cnf_opts = dict(adaptive=sample.Adaptive(args.cnf_tol, args.cnf_tol))
    runners = {"cnf": Runner("cnf", args, target_fn, apply_fn, params, cnf_opts),
               "fm": Runner("fm", args, target_fn, apply_fn, params, k=args.fm_k)}
    init_nll, init_nfe = nll(params)
    curves = {m: [{"grid_s": 0.0, "time_s": 0.0, "steps": 0, "nll": init_nll,
                   "nll_ema": init_nll, "eval_nfe": init_nfe, "train_nfe": None,
                   "load": _load()}] for m in METHODS}
    grid = checkpoint_times(budget)
    for i, clock in enumerate(grid):
        order = METHODS if i % 2 == 0 else METHODS[::-1]  # alternate who runs first
        for m in order:
            r = runners[m]
            r.train_until(clock)
            value, eval_nfe = nll(r.state.params)
            value_ema, _ = nll(r.state.ema_params)
            curves[m].append({"grid_s": clock, "time_s": r.clock, "steps": r.steps, "nll": value,
                              "nll_ema": value_ema, "eval_nfe": eval_nfe,
                              "train_nfe": r.nfe_sum / max(r.steps, 1), "load": _load()})
        print(f"  [{name}] t={clock:7.2f}s  " + "  ".join(
            f"{m}: {curves[m][-1]['steps']:>6} steps NLL {curves[m][-1]['nll']:.3f} "
            f"(EMA {curves[m][-1]['nll_ema']:.3f})" for m in METHODS), flush=True)

    summary = {
        "target": name, "entropy": entropy, "budget_s": budget,
        "compile_s": {m: runners[m].compile_s for m in METHODS},
        "steps": {m: runners[m].steps for m in METHODS},
        "s_per_step": {m: runners[m].clock / runners[m].steps for m in METHODS},
        "train_nfe_per_step": {m: runners[m].nfe_sum / runners[m].steps for m in METHODS},
        "reach": {kind: reach_cnf_final(curves, field) for kind, field in PARAMS.items()},
    }

    # One step of each variant at the CNF's final parameters (where its NFE is largest).
    final = runners["cnf"].state.params
    key = jax.random.PRNGKey(args.seed + 2)
    variants = [("cnf exact, RecursiveCheckpointAdjoint (trained)", "cnf", cnf_opts, 1),
                ("cnf exact, BacksolveAdjoint", "cnf",
                 dict(cnf_opts, adjoint=diffrax.BacksolveAdjoint()), 1),
                ("cnf Hutchinson 1 probe, RecursiveCheckpointAdjoint", "cnf",
                 dict(cnf_opts, num_probes=1), 1),
                ("fm, 1 step per call", "fm", None, 1),
                (f"fm, {args.fm_k} steps per call (trained)", "fm", None, args.fm_k)]
    costs = []
    for label, method, opts, k in variants:
        if args.quick and ("Backsolve" in label or "trained" in label):
            continue  # the trained runners' per-step means are in the first table
        r = Runner(method, args, target_fn, apply_fn, final, opts, k=k)
        n = args.cost_steps if method == "cnf" else max(args.cost_steps * 20 // k, 2)
        s, nfe = time_steps(r.step_fn, r.state, r.batches, key, n, k)
        costs.append({"variant": label, "ms_per_step": 1e3 * s, "forward_nfe": nfe,
                      "compile_s": r.compile_s, "load": _load()})
    return {"summary": summary, "curves": curves, "step_costs": costs,
            "checkpoint_grid_s": grid, "ema_decay": args.ema}


def _fmt_time(s):
    return "-" if s is None else f"{s:.2f}"


def tables(results) -> str:
    lines = ["Per training step (means over the whole run; forward NFE = evaluations of the "
             "field, each CNF one with its exact divergence):", "",
             "| target | method | steps | ms / step | forward NFE / step | compile s |",
             "|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        for m in METHODS:
            lines.append(f"| {s['target']} | {m} | {s['steps'][m]:,} | "
                         f"{1e3 * s['s_per_step'][m]:.2f} | {s['train_nfe_per_step'][m]:.1f} | "
                         f"{s['compile_s'][m]:.1f} |")
    lines += ["", "Held-out NLL (nats) at equal training wall-clock, T = the budget, with the raw "
              f"parameters and their EMA (decay {results[0]['ema_decay']:g}); entropy floor in "
              "brackets, the clock at the checkpoint in parentheses:",
              "", "| target | method | params | " + " | ".join(
                  f"T/{d}" if d > 1 else "T" for d in (64, 16, 4, 1)) + " |",
              "|---|---|---|" + "---|" * 4]
    for r in results:
        s = r["summary"]
        for m in METHODS:
            for kind, field in PARAMS.items():
                cells = []
                for f in (1 / 64, 1 / 16, 1 / 4, 1):
                    t = f * s["budget_s"]
                    c = [c for c in r["curves"][m] if c["grid_s"] <= t * (1 + 1e-9)][-1]
                    cells.append(f"{c[field]:.3f} ({c['time_s']:.1f} s)")
                lines.append(f"| {s['target']} [{s['entropy']:.3f}] | {m} | {kind} | "
                             + " | ".join(cells) + " |")
    lines += ["", "Time for flow matching to reach the CNF's final held-out NLL (first checkpoint "
              "at or below it):", "",
              "| target | params | budget s | CNF final NLL | FM final NLL | FM time to CNF final "
              "s (steps) | CNF time / FM time | same, interpolated |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        for kind in PARAMS:
            h = s["reach"][kind]
            ratio = "not reached" if h["ratio"] is None else f">= {h['ratio']:.1f}x"
            interp = "-" if h["ratio_interp"] is None else (
                f"{h['ratio_interp']:.1f}x ({h['fm_time_interp_s']:.1f} s)")
            steps = "" if h["fm_steps"] is None else f" ({h['fm_steps']:,})"
            lines.append(f"| {s['target']} | {kind} | {s['budget_s']:g} | {h['cnf_final']:.3f} | "
                         f"{h['fm_final']:.3f} | {_fmt_time(h['fm_time_s'])}{steps} | {ratio} | "
                         f"{interp} |")
    lines += ["", "One training step at the CNF's final parameters:", "",
              "| target | variant | ms / step | forward NFE |", "|---|---|---|---|"]
    for r in results:
        for c in r["step_costs"]:
            lines.append(f"| {r['summary']['target']} | {c['variant']} | "
                         f"{c['ms_per_step']:.2f} | {c['forward_nfe']:.1f} |")
    return "\n".join(lines)


def plot(results, filename):
    """Held-out NLL against training wall-clock (full range and near the floor) and steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"cnf": "CNF max. likelihood", "fm": "flow matching (I-CFM)"}
    fig, axes = plt.subplots(3, len(results), figsize=(6.5 * len(results), 11), squeeze=False)
    for j, r in enumerate(results):
        s, floor = r["summary"], r["summary"]["entropy"]
        panels = ((0, "time_s", "training wall-clock (s)", floor + 8),
                  (1, "time_s", "training wall-clock (s), near the floor", floor + 0.4),
                  (2, "steps", "training steps", floor + 8))
        for row, xkey, xlabel, top in panels:
            ax = axes[row, j]
            for i, m in enumerate(METHODS):
                pts = r["curves"][m][1:]
                for kind, field in PARAMS.items():
                    ax.plot([c[xkey] for c in pts], [c[field] for c in pts],
                            "o-" if kind == "raw" else "s--", ms=3, color=f"C{i}",
                            alpha=1.0 if kind == "raw" else 0.6, label=f"{names[m]}, {kind}")
            ax.axhline(s["reach"]["raw"]["cnf_final"], color="C0", ls=":", lw=1,
                       label="CNF final NLL (raw)")
            ax.axhline(floor, color="k", ls="--", lw=1, label="entropy (floor)")
            if xkey == "time_s" and s["reach"]["raw"]["fm_time_s"]:
                ax.axvline(s["reach"]["raw"]["fm_time_s"], color="C1", ls=":", lw=1)
            ratios = ", ".join(
                f"{k} >= {h['ratio']:.1f}x (~{h['ratio_interp']:.1f}x)" if h["ratio"]
                else f"{k}: not reached" for k, h in s["reach"].items())
            ax.set(xscale="log", xlabel=xlabel, ylabel="held-out NLL (nats)",
                   ylim=(floor - 0.05, top),
                   title=f"{s['target']}\nFM reaches the CNF's final NLL sooner: {ratios}"
                   if row == 0 else s["target"])
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="8gaussians only, 30 s per method (~2 minutes)")
    parser.add_argument("--targets", nargs="+", default=None, choices=tuple(TARGETS))
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds per method and target (30 quick, 300 full)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.99,
                        help="EMA decay of the parameters (both methods; evaluated beside the raw)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--cnf-tol", type=float, default=1e-5,
                        help="rtol = atol of the CNF's training solves")
    parser.add_argument("--fm-k", type=int, default=20, help="FM steps per jitted call")
    parser.add_argument("--heldout", type=int, default=None, help="held-out points (1000/5000)")
    parser.add_argument("--cost-steps", type=int, default=None,
                        help="CNF steps timed per variant in the step-cost table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="workdir/cnf_vs_fm.json")
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help="print the tables and draw the plot of a saved run (no training)")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        results = saved["results"]
        for r in results:  # summaries are recomputed from the curves
            r["summary"]["reach"] = {k: reach_cnf_final(r["curves"], f) for k, f in PARAMS.items()}
        print(tables(results))
        plot(results, os.path.splitext(args.from_json)[0] + ".png")
        print(f"\n{saved['machine']['cpu']} ({saved['machine']['cores']} cores); load "
              f"{saved['load_average']}; {saved['seconds']:.0f} s")
        return
    targets = args.targets or (["8gaussians"] if args.quick else list(TARGETS))
    budget = args.budget or (30.0 if args.quick else 300.0)
    args.heldout = args.heldout or (1000 if args.quick else 5000)
    args.cost_steps = args.cost_steps or (5 if args.quick else 20)
    for name in ("batch", "width", "depth", "fm_k", "heldout", "cost_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if budget <= 0.25 or not args.cnf_tol > 0 or not args.lr > 0 or not 0 <= args.ema < 1:
        parser.error("--budget must exceed 0.25 s; --cnf-tol and --lr must be positive; "
                     "--ema must lie in [0, 1)")

    start, load_start = time.perf_counter(), _load()
    info = machine()
    print(f"{info['cpu']} ({info['cores']} cores), jax {info['jax']}; load {load_start}; "
          f"{budget:g} s of training per method and target", flush=True)
    results = [run_target(name, args, budget) for name in targets]
    print()
    print(tables(results))
    seconds = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": info, "args": vars(args), "budget_s": budget,
                   "load_average": {"start": load_start, "end": _load()},
                   "shared_machine_note": "other processes shared the CPU: wall-clock "
                   "figures are noisy; both methods alternate, so they see similar load",
                   "results": results, "seconds": seconds}, f, indent=1)
    png = os.path.splitext(args.out)[0] + ".png"
    plot(results, png)
    print(f"\n{info['cpu']} ({info['cores']} cores); load {load_start} -> {_load()}; "
          f"{seconds:.0f} s; wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
