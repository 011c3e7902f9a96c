"""OT couplings of a batch sharded over 8 host devices: per device (local) or whole batch (global).

For batches of n = 1,024 / 4,096 / 16,384 points of a 2-D toy problem
(x0 ~ N(0, I), x1 ~ two moons, a fresh batch every step), sharded along one
mesh axis "data" of 8 CPU devices, this times and scores:

  local exact      flowjax.train.LocalCoupling(couplings.ExactOT())   8 x (n/8) SciPy problems
  local sinkhorn   LocalCoupling(couplings.Sinkhorn(eps, scale_free))  8 x (n/8) Sinkhorn problems
  global sinkhorn  GlobalCoupling(couplings.Sinkhorn(...))  one n x n Sinkhorn, plan row-sharded
    cold           every step starts from zero potentials
    warm           every step starts from the previous step's potentials (Klein et al. 2025)
  global exact     GlobalCoupling(couplings.ExactOT()): the batch gathered to SciPy (n = 1,024)

with eps = 0.05 std(C) at every size and a sharper eps = 0.003 std(C) up to 1,024
(--quick) or 4,096 points (its Sinkhorn needs ~15x the iterations).

Time: median wall time per step after compiling and one warm-up call; at n > 4,096 a
step takes minutes, so the warm-up call is timed too and --quick times 2 cold steps and
1 warm step there. Quality, on one batch: `pair cost` = mean ||x0 - x1||^2 of the
returned pairs; `plan cost` = <P, C> of the Sinkhorn plan; both divided by W, the exact
OT cost of the whole batch (SciPy, up to 4,096 points), or else by LB, a certified lower
bound on W (the dual value of the sharpest global Sinkhorn potentials after two hard
c-transforms: LB <= W), so that ratio is an upper bound on (cost / W). `E` = renormalized
entropy of the plan (0 = permutation, 1 = independent coupling; for local couplings the
mean over the 8 shards). `--train` (default) also times a jitted data-parallel CFM step
(small MLP, Adam) with each coupling.

    python benchmarks/ot_scale.py --quick --out workdir/ot_scale.json   # ~9 minutes here

writes the JSON rows, prints Markdown tables and draws a plot (`--plot`, default next to the
JSON file). Timings on a shared 2-core CPU are noisy: compare ratios within one run.
"""

from __future__ import annotations

import os

_DEVICES = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICES).strip()
# XLA warns ("Involuntary full rematerialization") that the global exact coupling moves the
# batch to one device for its host callback: that is what it does; keep the log readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from flowjax import couplings, data, losses, models, paths, train  # noqa: E402
from _platform import cpu_name  # noqa: E402  (benchmarks/ is on sys.path)


def machine() -> dict:
    cpu = cpu_name()
    versions = {p: metadata.version(p)
                for p in ("jax", "jaxlib", "flax", "optax", "ott-jax", "scipy")}
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}", "versions": versions}


def batch(key, n, rows):
    k0, k1 = jax.random.split(key)
    return (jax.device_put(data.standard_normal(k0, n), rows),
            jax.device_put(data.moons(k1, n), rows))


@jax.jit
def dual_lower_bound(x0, x1, g):
    """A lower bound on the exact OT cost W from any target potential `g` (weak duality).

    With f_i = min_j (C_ij - g_j) and then g_j = min_i (C_ij - f_i) (hard c-transforms,
    each can only raise the dual value), f_i + g_j <= C_ij: (f, g) is feasible for the
    dual of the assignment LP, so W >= mean(f) + mean(g). Row-sharded like the batch.
    """
    cost = couplings.sq_distances(x0, x1)
    f = jnp.min(cost - g[None, :], axis=1)
    g = jnp.min(cost - f[:, None], axis=0)
    return jnp.mean(f) + jnp.mean(g)


def exact_cost(x0, x1):
    return float(couplings.ExactOT()(None, np.asarray(x0), np.asarray(x1)).cost)


def _aux(res):
    """A coupling result's scalars as one dict (and a warm start's potentials)."""
    return {"cost": res.cost, **res.stats, "potentials": res.state}


def _scalars(aux):
    return {k: float(v) for k, v in aux.items() if getattr(v, "ndim", None) == 0}


def run_coupling(coupling, batches, key, *, warm_from=None, time_first=False):
    """Compiles, calls on batches[0] (a warm-up, timed only with `time_first`) and times the
    others; with `warm_from` (the potentials of batches[0]) there is no warm-up call and each
    step starts from the previous step's potentials. Blocking on every result also avoids the
    multi-device deadlock of collectives on the host platform."""
    warm = warm_from is not None
    x0, x1 = batches[0]
    kwargs = {"state": warm_from} if warm else {}
    t = time.perf_counter()
    compiled = jax.jit(coupling).lower(key, x0, x1, **kwargs).compile()
    compile_s = time.perf_counter() - t
    init, times, auxs, first = warm_from, [], [], None
    if not warm:
        t = time.perf_counter()
        first = jax.block_until_ready(compiled(key, x0, x1))
        if time_first:
            times.append(time.perf_counter() - t)
    for i, (x0, x1) in enumerate(batches[1:], start=1):
        kw = {"state": init} if warm else {}
        t = time.perf_counter()
        out = jax.block_until_ready(compiled(jax.random.fold_in(key, i), x0, x1, **kw))
        times.append(time.perf_counter() - t)
        auxs.append(_aux(out))
        if warm:
            init = out.state
    return {"compile_s": compile_s, "times": times, "auxs": auxs, "first": first}


def bench_size(n, mesh, args, log):
    rows = NamedSharding(mesh, P("data"))
    big = n > 4096
    repeats = args.repeats_large if big else args.repeats
    key = jax.random.PRNGKey(n)
    batches = [batch(jax.random.fold_in(key, i), n, rows) for i in range(repeats + 1)]
    x0, x1 = batches[1]  # the batch every cost is scored on
    ref = {"indep": float(jnp.mean(jnp.sum((x0 - x1) ** 2, -1)))}
    methods = [("local exact", None, train.LocalCoupling(couplings.ExactOT(), mesh))]
    for i, eps in enumerate(args.epsilons):
        if i and n > args.sharp_max:  # the sharper plans take 10-20x the iterations
            continue
        sk = dict(epsilon=eps, scale_free=True, threshold=args.threshold,
                  max_iterations=args.max_iterations)
        methods += [
            ("local sinkhorn", eps, train.LocalCoupling(couplings.Sinkhorn(**sk), mesh)),
            ("global sinkhorn cold", eps, train.GlobalCoupling(
                couplings.Sinkhorn(**sk, warm_start=True), mesh)),
            ("global sinkhorn warm", eps, None)]  # the cold coupling, from the previous step
    if n <= args.exact_max:
        methods.append(("global exact", None, train.GlobalCoupling(couplings.ExactOT(), mesh)))
    results, out = {}, []
    for name, eps, coupling in methods:
        t0 = time.perf_counter()
        if coupling is None:  # warm: the cold coupling started from batch 0's potentials
            cold = results[("global sinkhorn cold", eps)]
            coupling = cold["coupling"]
            res = run_coupling(coupling, batches, key, warm_from=cold["first"].state)
        else:  # at n > 4,096 a step takes minutes: the first call (after compile) is timed too
            res = run_coupling(coupling, batches, key, time_first=big)
        res["coupling"] = coupling
        results[(name, eps)] = res
        aux = _scalars(res["auxs"][0])
        row = {"n": n, "method": name, "eps_rel": eps,
               "shards": 8 if name.startswith("local") else 1,
               "points_per_problem": n // 8 if name.startswith("local") else n,
               "step_s": statistics.median(res["times"]), "steps_timed": len(res["times"]),
               "compile_s": res["compile_s"], "pair_cost": aux["cost"],
               "plan_cost": aux.get("plan_cost"), "entropy": aux.get("renormalized_entropy"),
               "n_iters": (statistics.median(float(a["n_iters"]) for a in res["auxs"])
                           if "n_iters" in aux else None),
               "epsilon": aux.get("epsilon"), "converged": aux.get("converged")}
        out.append(row)
        log(f"  n={n:6d} {name:22s} eps {_f(eps, 'g'):6s} {row['step_s'] * 1e3:10.1f} ms/step "
            f"(compile {row['compile_s']:.1f} s, {time.perf_counter() - t0:.0f} s in all)")
        if name == "global exact":
            ref["exact"] = row["pair_cost"]
    sharpest = min(eps for name, eps in results if name == "global sinkhorn cold")
    g = results[("global sinkhorn cold", sharpest)]["auxs"][0]["potentials"].g
    ref["lb"] = float(jax.block_until_ready(dual_lower_bound(x0, x1, g)))
    if "exact" not in ref and n <= args.exact_ref_max:
        t0 = time.perf_counter()
        ref["exact"] = exact_cost(x0, x1)
        log(f"  n={n:6d} exact reference (SciPy, host) {time.perf_counter() - t0:.1f} s")
    w, w_name = (ref["exact"], "W") if "exact" in ref else (ref["lb"], "LB")
    for row in out:
        row.update(indep_cost=ref["indep"], exact_cost=ref.get("exact"), lower_bound=ref["lb"],
                   reference=w_name, pair_ratio=row["pair_cost"] / w,
                   plan_ratio=None if row["plan_cost"] is None else row["plan_cost"] / w)
    return out


def bench_train(n, mesh, args, log):
    """Median time of a jitted data-parallel CFM step (MLP 2-64-64-2, Adam) per coupling."""
    rows, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    module = models.MLP(hidden=(64, 64), time_dim=16)
    apply_fn = models.model_fn(module)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    opt = optax.adam(1e-3)
    sk = dict(epsilon=args.epsilons[0], scale_free=True, threshold=args.threshold,
              max_iterations=args.max_iterations)
    out = []
    for name, coupling in [("independent", couplings.Independent()),
                           ("local exact", train.LocalCoupling(couplings.ExactOT(), mesh)),
                           ("local sinkhorn", train.LocalCoupling(couplings.Sinkhorn(**sk), mesh)),
                           ("global sinkhorn", train.GlobalCoupling(couplings.Sinkhorn(**sk),
                                                                     mesh))]:
        loss = functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=paths.RectifiedFlow(),
                                 coupling=coupling)

        @jax.jit
        def step(p, o, key, b, loss=loss):
            (value, _), grads = jax.value_and_grad(loss, has_aux=True)(p, key, b)
            updates, o = opt.update(grads, o, p)
            return optax.apply_updates(p, updates), o, value

        p, o = jax.device_put((params, opt.init(params)), repl)
        key = jax.random.PRNGKey(1)
        bs = [batch(jax.random.fold_in(key, i), n, rows) for i in range(args.repeats + 1)]
        b0 = {"x0": bs[0][0], "x1": bs[0][1]}
        t = time.perf_counter()
        compiled = step.lower(p, o, key, b0).compile()
        compile_s = time.perf_counter() - t
        times = []
        for i, (x0, x1) in enumerate(bs):
            t = time.perf_counter()
            p, o, value = jax.block_until_ready(compiled(p, o, jax.random.fold_in(key, i),
                                                         {"x0": x0, "x1": x1}))
            if i:
                times.append(time.perf_counter() - t)
        out.append({"n": n, "coupling": name, "step_s": statistics.median(times),
                    "compile_s": compile_s, "loss": float(value)})
        log(f"  train n={n:6d} {name:16s} {out[-1]['step_s'] * 1e3:9.1f} ms/step")
    return out


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def table(rows):
    head = ("| n | method | eps / std(C) | problems x points | ms / step | compile s | iters | "
            "pair cost | plan cost | pair / ref | plan / ref | E |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        ref = r["reference"]
        lines.append(
            f"| {r['n']:,} | {r['method']} | {_f(r['eps_rel'], 'g')} | "
            f"{r['shards']} x {r['points_per_problem']:,} | "
            f"{r['step_s'] * 1e3:,.0f} | {r['compile_s']:.1f} | {_f(r['n_iters'], '.0f')} | "
            f"{r['pair_cost']:.4f} | {_f(r['plan_cost'], '.4f')} | "
            f"{r['pair_ratio']:.4f} ({ref}) | "
            f"{'-' if r['plan_ratio'] is None else format(r['plan_ratio'], '.4f')} | "
            f"{_f(r['entropy'], '.3f')} |")
    return "\n".join(lines)


def ref_table(rows):
    lines = ["| n | independent cost | exact W (SciPy) | LB (dual, <= W) |", "|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        r = next(r for r in rows if r["n"] == n)
        lines.append(f"| {n:,} | {r['indep_cost']:.4f} | {_f(r['exact_cost'], '.4f')} | "
                     f"{r['lower_bound']:.4f} |")
    return "\n".join(lines)


def train_table(rows):
    lines = ["| n | coupling | ms / step | compile s |", "|---|---|---|---|"]
    lines += [f"| {r['n']:,} | {r['coupling']} | {r['step_s'] * 1e3:,.0f} | {r['compile_s']:.1f} |"
              for r in rows]
    return "\n".join(lines)


def plot(rows, filename):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = list(dict.fromkeys((r["method"], r["eps_rel"]) for r in rows))
    for color, (method, eps) in enumerate(series):
        pts = sorted(((r["n"], r) for r in rows if (r["method"], r["eps_rel"]) == (method, eps)),
                     key=lambda p: p[0])
        ns = [p[0] for p in pts]
        style = "s--" if eps is None else ("o-" if len(ns) > 1 else "^")
        label = method if eps is None else f"{method}, eps={eps:g}"
        kw = dict(label=label, color=f"C{color % 10}")
        axes[0].plot(ns, [p[1]["step_s"] for p in pts], style, **kw)
        axes[1].plot(ns, [p[1]["pair_ratio"] for p in pts], style, **kw)
        if eps is not None:
            axes[2].plot(ns, [p[1]["entropy"] for p in pts], style, **kw)
    axes[0].set(xscale="log", yscale="log", xlabel="batch size n", ylabel="seconds per step",
                title="time per coupling step (8 host devices)")
    axes[1].set(xscale="log", xlabel="batch size n", ylabel="pair cost / W (or / LB)",
                title="transport cost of the returned pairs")
    axes[2].set(xscale="log", xlabel="batch size n", ylabel="renormalized entropy E",
                title="sharpness of the Sinkhorn plan", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, one timed step at 16,384, train step at 4,096 only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.05, 0.003],
                        help="Sinkhorn epsilons as fractions of std(cost) (scale_free); the "
                             "first at every size, the others (sharper, slower) up to 1,024 "
                             "(--quick) or 4,096 points")
    parser.add_argument("--threshold", type=float, default=1e-3)
    parser.add_argument("--max-iterations", type=int, default=5000)
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a sharded CFM train step with each coupling")
    parser.add_argument("--out", default="workdir/ot_scale.json")
    parser.add_argument("--plot", default=None, help="PNG file (default: next to --out)")
    args = parser.parse_args()
    args.repeats = 3 if args.quick else 5
    args.repeats_large = 1 if args.quick else 3  # steps timed at n > 4096 (~1-3 min each)
    args.exact_max = 1024  # global exact as a timed method
    args.exact_ref_max = 4096  # SciPy reference W (4,096 points: about a minute)
    args.sharp_max = 1024 if args.quick else 4096
    train_sizes = [n for n in args.sizes if n == 4096] if args.quick else \
        [n for n in args.sizes if n <= 4096]
    start = time.perf_counter()
    mesh = train.make_mesh(jax.devices()[:8])
    info = machine()
    log = functools.partial(print, flush=True)
    log(f"{info['cpu']}, {info['cores']} cores, {info['devices']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    rows, train_rows = [], []
    for n in args.sizes:
        rows += bench_size(n, mesh, args, log)
    if args.train:
        for n in train_sizes:
            train_rows += bench_train(n, mesh, args, log)
    seconds = time.perf_counter() - start
    print("\n" + table(rows) + "\n\nReferences (first timed batch):\n\n" + ref_table(rows))
    if train_rows:
        print("\nSharded CFM train step (MLP 2-64-64-2, Adam):\n\n" + train_table(train_rows))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": info, "args": vars(args), "rows": rows, "train_rows": train_rows,
                   "seconds": seconds}, f, indent=1)
    png = args.plot or os.path.splitext(args.out)[0] + ".png"
    plot(rows, png)
    print(f"\n{info['cpu']} ({info['cores']} cores), {info['devices']}; {seconds:.0f} s; "
          f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
