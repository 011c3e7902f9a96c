"""Speed and quality of minibatch OT couplings: flowjax's against POT's EMD and SciPy's assignment.

For n = 256 / 1,024 / 4,096 / 16,384 points (--quick: up to 4,096) in d = 2, 784 and
3,072 dimensions, sources x0 ~ N(0, I_d) and targets x1 =
  d = 2      flowjax.data.moons (two moons, TorchCFM's scaling);
  d = 784    scikit-learn's bundled 8x8 digits scaled to [-1, 1], resized to 28x28
             (jax.image.resize, linear), drawn with replacement + N(0, 0.05^2) jitter;
  d = 3,072  the same digits resized to 32x32, three lightly tinted colour channels;
one fixed batch per (n, d) (seeded), float32 for flowjax. Methods:

  scipy_lsa             scipy.optimize.linear_sum_assignment on the float64 cost (NumPy)
  pot_emd               ot.emd(a, b, M), uniform weights, M the same float64 cost (as
                        TorchCFM's OTPlanSampler, which builds M with torch.cdist in
                        float32; numItermax=100,000 and numThreads=1, POT's defaults)
  flowjax_exact         jax.jit(couplings.ExactOT()): SciPy through a host callback
  flowjax_sinkhorn      jax.jit(couplings.Sinkhorn(eps, scale_free=True)), default options
  flowjax_sinkhorn_fast the same with precompute_cost=(d > 2), adaptive ott Momentum and,
                        for eps < 0.05, epsilon annealing from 0.5 std(C)
                        (ott Epsilon(eps, init=0.5/eps, decay=0.8))
  local_exact, local_sinkhorn, global_sinkhorn
                        flowjax.train.LocalCoupling / GlobalCoupling of ExactOT and of
                        the default sinkhorn (--sharded-eps) on 8 host devices
                        (mesh = train.make_mesh()), 2-D only, n in --sharded-sizes

with eps a fraction of std(C) (--eps; default 0.1 0.07 0.05 0.02 0.01 0.005 0.002,
--quick 0.1 0.07 0.05 0.01 0.005); --methods picks a subset. The sharded methods run in
a child process started with XLA_FLAGS=--xla_force_host_platform_device_count=8: on
this 2-core CPU that flag alone makes one-device programs 10-25% slower, so the other
methods run without it.

Time: the median wall time of --repeats calls after a warm-up call (results blocked on);
host solvers include building their float64 cost matrix (`build ms` gives that part).
Jitted methods are compiled ahead of time (`compile s`: trace, lower and compile, the
difference between a first call and the median), so a warm-up slower than --slow-s
seconds is the only sample (likewise for the host solvers). Above --headline-n points a
Sinkhorn configuration is skipped where its time, extrapolated from the previous size as
n^2.5, exceeds --max-call-s; the exact solvers run up to --max-exact-n points (default
4,096; 1,024 with --quick), the sharded methods within --max-call-s.

Quality: `pair` = mean ||x0 - x1||^2 of the returned pairs (exact solvers: their
assignment; EMD: <P, M>); `plan` = <P, C> of the Sinkhorn plan; both divided by W,
the exact OT cost of the same batch (SciPy's assignment in float64) up to
--max-exact-n points, beyond that by LB, a certified lower bound on W (the dual value
of the potentials of the sharpest converged fast Sinkhorn after two hard c-transforms),
so there the ratio is an upper bound on cost / W. `E` = renormalized entropy of the
plan (0 = permutation, 1 = independent). `conv` = Sinkhorn's `converged` (marginal
error < 1e-3) or, for EMD, whether the network simplex finished within numItermax.

Headline (--headline-n, default 1,024, where every configuration runs): per d, the
fastest converged flowjax Sinkhorn configuration whose plan cost is within 1% of W, its
speed-up over POT's EMD and SciPy, and a profile of its call:
the cost matrix (couplings.sq_distances), the solve to the plan (couplings.sinkhorn_plan
with the same options) and the rest (plan cost, entropy, sampling), timed interleaved.

    python benchmarks/coupling_speed.py --quick --out workdir/coupling_speed.json   # ~4-5 min
    python benchmarks/coupling_speed.py --out workdir/coupling_speed_full.json      # ~30 min

(2-core CPU, estimated for the full run: it adds 16,384 points (a Sinkhorn call there
takes 40-60 s; about 10 GB of memory in 3,072-D), eps 0.02 and 0.002, 5 repeats and the
exact solvers at 4,096 points, up to a minute each.) It writes the JSON rows, prints
Markdown tables and draws a plot (--plot, default next to the JSON file). Timings on a
shared 2-core CPU are noisy: compare ratios within one run.
"""

from __future__ import annotations

import os
import sys

_CHILD = "--sharded-child" in sys.argv
if _CHILD and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep XLA's warnings out of the log

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from importlib import metadata  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from flowjax import couplings, data, train  # noqa: E402
from _platform import cpu_name  # noqa: E402  (benchmarks/ is on sys.path)

try:
    import ot  # POT
except ImportError:  # the peer is optional: its rows are skipped and the output says so
    ot = None

EXACT = ("scipy_lsa", "pot_emd", "flowjax_exact")
SINKHORN = ("flowjax_sinkhorn", "flowjax_sinkhorn_fast")
SHARDED = ("local_exact", "local_sinkhorn", "global_sinkhorn")
TARGETS = {2: "moons", 784: "digits 28x28", 3072: "digits 32x32x3"}


def machine() -> dict:
    cpu = cpu_name()
    versions = {}
    for p in ("jax", "jaxlib", "ott-jax", "scipy", "numpy", "POT", "scikit-learn"):
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "versions": versions}


# ----------------------------------------------------------------------------- data

@functools.lru_cache(maxsize=None)
def _digit_bank(d: int) -> jax.Array:
    """scikit-learn's 1,797 bundled 8x8 digits in [-1, 1], resized to 28x28 (d = 784) or to
    32x32 with three tinted channels (d = 3,072), flattened."""
    from sklearn.datasets import load_digits

    img = jnp.asarray(load_digits().images, jnp.float32) / 8.0 - 1.0  # pixels 0..16
    if d == 784:
        big = jax.image.resize(img, (img.shape[0], 28, 28), "linear")
    elif d == 3072:
        big = jax.image.resize(img, (img.shape[0], 32, 32), "linear")
        big = big[..., None] * jnp.array([1.0, 0.85, 0.7]) + jnp.array([0.0, 0.05, 0.1])
    else:
        raise ValueError(f"no image target in {d} dimensions (use 2, 784 or 3072)")
    return jnp.clip(big, -1.0, 1.0).reshape(img.shape[0], -1)


def make_batch(n: int, d: int, seed: int):
    """The fixed batch (x0, x1) of n points in d dimensions, float32 on device 0."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), n), d)
    k0, k1, k2 = jax.random.split(key, 3)
    x0 = jax.random.normal(k0, (n, d), jnp.float32)
    if d == 2:
        x1 = data.moons(k1, n)
    else:
        bank = _digit_bank(d)
        idx = jax.random.randint(k1, (n,), 0, bank.shape[0])
        x1 = bank[idx] + 0.05 * jax.random.normal(k2, (n, d), jnp.float32)
    return jax.block_until_ready((x0, x1.astype(jnp.float32)))


def host_cost(x0, x1):
    """The float64 squared-distance matrix with NumPy (what the host solvers get)."""
    a = np.asarray(x0, np.float64)
    b = np.asarray(x1, np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


@jax.jit
def dual_lower_bound(x0, x1, g):
    """A lower bound on the exact OT cost W from any target potential `g` (weak duality).

    With f_i = min_j (C_ij - g_j), then g_j = min_i (C_ij - f_i) (hard c-transforms, each can
    only raise the dual value), f_i + g_j <= C_ij, so W >= mean(f) + mean(g).
    """
    cost = couplings.sq_distances(x0, x1)
    f = jnp.min(cost - g[None, :], axis=1)
    g = jnp.min(cost - f[:, None], axis=0)
    return jnp.mean(f) + jnp.mean(g)


# ----------------------------------------------------------------------------- methods

def scipy_lsa(x0, x1):
    t = time.perf_counter()
    cost = host_cost(x0, x1)
    build = time.perf_counter() - t
    rows, cols = linear_sum_assignment(cost)
    return {"pair_cost": float(cost[rows, cols].mean()), "build_s": build}


def pot_emd(x0, x1):
    t = time.perf_counter()
    cost = host_cost(x0, x1)
    build = time.perf_counter() - t
    n, m = cost.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    with warnings.catch_warnings():  # "numItermax reached": recorded as converged=False
        warnings.simplefilter("ignore")
        plan, log = ot.emd(a, b, cost, log=True)
    return {"pair_cost": float(np.sum(plan * cost)), "build_s": build,
            "converged": log.get("warning") is None}


def fast_options(eps: float, d: int) -> dict:
    """The fast options, as recorded in the output."""
    opts = dict(precompute_cost=d > 2, momentum="adaptive")
    if eps < 0.05:
        opts.update(epsilon_init=0.5 / eps, epsilon_decay=0.8)
    return opts


def fast_kwargs(eps: float, d: int) -> dict:
    """`fast_options` as Sinkhorn's arguments: ott's Epsilon schedule and adaptive Momentum,
    estimated two error checks (10 iterations apart) after the annealing ends."""
    from ott.geometry.epsilon_scheduler import Epsilon
    from ott.solvers.linear.acceleration import Momentum

    opts = fast_options(eps, d)
    init, decay = opts.pop("epsilon_init", 1.0), opts.pop("epsilon_decay", 1.0)
    done = 0 if init == 1 else math.ceil(math.log(init) / -math.log(decay))
    opts["momentum"] = Momentum(start=10 * (math.ceil(done / 10) + 2))
    if init != 1:
        opts["epsilon_schedule"] = Epsilon(eps, init=init, decay=decay)
    return opts


def jitted_method(name, eps, d, args):
    """The jitted flowjax coupling `(key, x0, x1) -> CouplingResult` of one method."""
    if name == "flowjax_exact":
        return jax.jit(couplings.ExactOT())
    sk = dict(scale_free=True, threshold=args.threshold, max_iterations=args.max_iterations)
    if name == "flowjax_sinkhorn":
        return jax.jit(couplings.Sinkhorn(eps, **sk))
    if name == "flowjax_sinkhorn_fast":  # warm_start=True only to return the potentials (LB)
        return jax.jit(couplings.Sinkhorn(eps, **sk, warm_start=True, **fast_kwargs(eps, d)))
    raise ValueError(name)


def sharded_method(name, eps, mesh, args):
    if name == "local_exact":
        return jax.jit(train.LocalCoupling(couplings.ExactOT(), mesh))
    sk = couplings.Sinkhorn(eps, scale_free=True, threshold=args.threshold,
                            max_iterations=args.max_iterations)
    if name == "local_sinkhorn":
        return jax.jit(train.LocalCoupling(sk, mesh))
    if name == "global_sinkhorn":
        return jax.jit(train.GlobalCoupling(sk, mesh))
    raise ValueError(name)


def _aux(res):
    """A coupling result's scalars as one dict (and a warm start's potentials)."""
    return {"cost": res.cost, **res.stats, "potentials": res.state}


def _scalar(aux, name):
    v = aux.get(name)
    return None if v is None else v.item()


def time_jitted(fn, key, x0, x1, args):
    """(compile s, first call s, [timed s], aux of the last call).

    Compiled ahead of time (trace + lower + compile is `compile s`), then a warm-up call and
    --repeats timed calls; a warm-up slower than --slow-s is the only sample."""
    t = time.perf_counter()
    compiled = fn.lower(key, x0, x1).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    aux = _aux(jax.block_until_ready(compiled(key, x0, x1)))
    first = time.perf_counter() - t
    if first > args.slow_s:
        return compile_s, first, [first], aux
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        aux = _aux(jax.block_until_ready(compiled(key, x0, x1)))
        times.append(time.perf_counter() - t)
    return compile_s, first, times, aux


def time_host(fn, x0, x1, args):
    t = time.perf_counter()
    out = fn(x0, x1)
    first = time.perf_counter() - t
    if first > args.slow_s:
        return first, [first], out
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = fn(x0, x1)
        times.append(time.perf_counter() - t)
    return first, times, out


def _row(n, d, method, eps, first, times, compile_s=None):
    return {"n": n, "d": d, "target": TARGETS[d], "method": method, "eps_rel": eps,
            "time_s": statistics.median(times), "times_s": times, "first_s": first,
            "compile_s": compile_s}


def _sinkhorn_fields(aux):
    iters = _scalar(aux, "n_iters")
    return {"pair_cost": _scalar(aux, "cost"), "plan_cost": _scalar(aux, "plan_cost"),
            "entropy": _scalar(aux, "renormalized_entropy"), "n_iters": iters,
            "converged": _scalar(aux, "converged"), "epsilon": _scalar(aux, "epsilon")}


class Budget:
    """Skips a method at a size where its extrapolated time exceeds --max-call-s."""

    def __init__(self, max_call_s):
        self.max_call_s = max_call_s
        self.last = {}

    def predict(self, key, n, power):
        if key not in self.last:
            return None
        n0, t0 = self.last[key]
        return t0 * (n / n0) ** power

    def allows(self, key, n, power):
        p = self.predict(key, n, power)
        return p is None or p <= self.max_call_s, p

    def record(self, key, n, seconds):
        self.last[key] = (n, seconds)


def bench_size(n, d, args, budget, log):
    x0, x1 = make_batch(n, d, args.seed)
    h0, h1 = np.asarray(x0), np.asarray(x1)  # host copies for the host solvers
    key = jax.random.PRNGKey(1)
    rows, skipped = [], []
    ref = {"n": n, "d": d, "indep": float(jnp.mean(jnp.sum((x0 - x1) ** 2, -1)))}

    def skip(method, eps, why):
        skipped.append({"n": n, "d": d, "method": method, "eps_rel": eps, "why": why})
        log(f"  n={n:6d} d={d:5d} {method:22s} eps {_f(eps, 'g'):6s} skipped: {why}")

    def done(row, t0):
        extra = ""
        if row.get("n_iters") is not None:
            extra = f", {row['n_iters']:.0f} it, conv {row['converged']}"
        log(f"  n={n:6d} d={d:5d} {row['method']:22s} eps {_f(row['eps_rel'], 'g'):6s} "
            f"{row['time_s'] * 1e3:10.1f} ms (first {row['first_s']:.2f} s{extra}; "
            f"compile {_f(row['compile_s'], '.1f')} s; "
            f"{time.perf_counter() - t0:.0f} s in all)")

    # exact solvers (SciPy's also gives W)
    for method in EXACT:
        if method not in args.methods and not (method == "scipy_lsa" and n <= args.max_exact_n):
            continue  # SciPy still runs (untimed rows are not kept) for W up to --max-exact-n
        if n > args.max_exact_n:
            skip(method, None, f"n > --max-exact-n {args.max_exact_n}")
            continue
        if method == "pot_emd" and ot is None:
            skip(method, None, "POT is not installed")
            continue
        t0 = time.perf_counter()
        if method == "flowjax_exact":
            comp, first, times, aux = time_jitted(jitted_method(method, None, d, args), key,
                                                  x0, x1, args)
            row = _row(n, d, method, None, first, times, comp)
            row["pair_cost"] = _scalar(aux, "cost")
        else:
            fn = scipy_lsa if method == "scipy_lsa" else pot_emd
            first, times, out = time_host(fn, h0, h1, args)
            row = _row(n, d, method, None, first, times)
            row.update(out)
            if method == "scipy_lsa":
                ref["W"] = out["pair_cost"]
        if method in args.methods:
            rows.append(row)
            done(row, t0)

    # Sinkhorn couplings
    potentials = {}
    for method in (m for m in SINKHORN if m in args.methods):
        for eps in args.eps:
            ok, pred = budget.allows((method, d, eps), n, 2.5)
            if not ok and n > args.headline_n:  # the headline size is always complete
                skip(method, eps, f"predicted {pred:.0f} s > --max-call-s {args.max_call_s:g}")
                continue
            t0 = time.perf_counter()
            comp, first, times, aux = time_jitted(jitted_method(method, eps, d, args), key,
                                                  x0, x1, args)
            row = _row(n, d, method, eps, first, times, comp)
            row.update(_sinkhorn_fields(aux))
            if method == "flowjax_sinkhorn_fast":
                row["options"] = fast_options(eps, d)
                if row["converged"]:
                    potentials[eps] = aux["potentials"].g
            budget.record((method, d, eps), n, row["time_s"])
            rows.append(row)
            done(row, t0)

    if potentials:  # LB from the sharpest converged plan
        eps = min(potentials)
        ref["LB"] = float(dual_lower_bound(x0, x1, potentials[eps]))
        ref["LB_eps"] = eps
    return rows, skipped, ref


def run_sharded(args, log):
    """In the child process (8 host devices): the local / global couplings in 2-D."""
    mesh = train.make_mesh()
    rows, skipped = [], []
    budget = Budget(args.max_call_s)
    key = jax.random.PRNGKey(1)
    from jax.sharding import NamedSharding, PartitionSpec as P

    shard = NamedSharding(mesh, P(mesh.axis_names[0]))
    for n in args.sharded_sizes:
        x0, x1 = jax.device_put(make_batch(n, 2, args.seed), shard)
        for method in (m for m in SHARDED if m in args.methods):
            eps = None if method == "local_exact" else args.sharded_eps
            power = 3 if method == "local_exact" else 2.5
            ok, pred = budget.allows(method, n, power)
            if not ok:
                skipped.append({"n": n, "d": 2, "method": method, "eps_rel": eps,
                                "why": f"predicted {pred:.0f} s > --max-call-s"})
                continue
            t0 = time.perf_counter()
            comp, first, times, aux = time_jitted(sharded_method(method, eps, mesh, args), key,
                                                  x0, x1, args)
            row = _row(n, 2, method, eps, first, times, comp)
            row.update(_sinkhorn_fields(aux) if eps is not None
                       else {"pair_cost": _scalar(aux, "cost")})
            row["devices"] = mesh.size
            budget.record(method, n, row["time_s"])
            rows.append(row)
            log(f"  n={n:6d} d=    2 {method:22s} eps {_f(eps, 'g'):6s} "
                f"{row['time_s'] * 1e3:10.1f} ms ({mesh.size} devices, first "
                f"{first:.2f} s; {time.perf_counter() - t0:.0f} s in all)")
    return rows, skipped


def spawn_sharded(args, log):
    """Runs the sharded part in a child process with 8 host devices; its rows, or none."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sharded.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--sharded-child", out,
               "--sharded-sizes", *map(str, args.sharded_sizes),
               "--sharded-eps", str(args.sharded_eps), "--seed", str(args.seed),
               "--repeats", str(args.repeats), "--slow-s", str(args.slow_s),
               "--max-call-s", str(args.max_call_s), "--threshold", str(args.threshold),
               "--max-iterations", str(args.max_iterations), "--methods", *args.methods]
        proc = subprocess.run(cmd, check=False)
        if proc.returncode or not os.path.exists(out):
            log(f"  sharded child process failed (exit {proc.returncode}); no sharded rows")
            return [], [], None
        with open(out) as f:
            result = json.load(f)
    return result["rows"], result["skipped"], result["machine"]["devices"]


def profile(rows, n, d, args, log):
    """Where the time of the fastest flowjax Sinkhorn row at (n, d) within 1% of W goes:
    the cost matrix, the solve to the plan (couplings.sinkhorn_plan with the same options:
    cost + std(C) + iterations + exp), and the rest of the coupling (plan cost, entropy,
    sampling, gather)."""
    cands = [r for r in rows if r["n"] == n and r["d"] == d and r["method"] in SINKHORN
             and r.get("plan_ratio") is not None and r["reference"] == "W"
             and r["plan_ratio"] <= 1.01 and r.get("converged")]
    if not cands:
        return None
    best = min(cands, key=lambda r: r["time_s"])
    eps = best["eps_rel"]
    opts = fast_kwargs(eps, d) if best["method"] == "flowjax_sinkhorn_fast" else {}
    x0, x1 = make_batch(n, d, args.seed)
    cost = jax.jit(couplings.sq_distances)
    plan = jax.jit(functools.partial(couplings.sinkhorn_plan, epsilon=eps, scale_free=True,
                                     threshold=args.threshold,
                                     max_iterations=args.max_iterations, **opts))
    full = jitted_method(best["method"], eps, d, args)
    key = jax.random.PRNGKey(1)
    fns = {"cost_s": lambda: cost(x0, x1), "plan_s": lambda: plan(x0, x1),
           "call_s": lambda: full(key, x0, x1)}
    times = {name: [] for name in fns}
    for fn in fns.values():
        jax.block_until_ready(fn())
    for _ in range(max(args.repeats, 5)):  # interleaved, so that load drifts hit all three
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t)
    out = {"n": n, "d": d, "method": best["method"], "eps_rel": eps, "n_iters": best["n_iters"],
           **{name: statistics.median(ts) for name, ts in times.items()}}
    # the default path recomputes the cost inside the loop: all of it counts as the loop there
    fixed = out["cost_s"] if opts.get("precompute_cost") else 0.0
    out["loop_s"] = max(out["plan_s"] - fixed, 0.0)
    out["ms_per_iter"] = out["loop_s"] * 1e3 / best["n_iters"]
    out["rest_s"] = max(out["call_s"] - out["plan_s"], 0.0)
    log(f"  profile n={n} d={d}: {best['method']} eps {eps:g}: {out['call_s'] * 1e3:.1f} ms; "
        f"cost matrix "
        f"{out['cost_s'] * 1e3:.1f} ms, solve to plan {out['plan_s'] * 1e3:.1f} ms "
        f"({out['ms_per_iter']:.2f} ms / iteration), rest {out['rest_s'] * 1e3:.1f} ms")
    return out


def profile_table(profs, rows):
    lines = ["| d | config | ms / call | cost matrix ms | Sinkhorn loop ms (iters, ms / iter) | "
             "plan cost + E + sampling ms | POT EMD ms (of which cost) |",
             "|---|---|---|---|---|---|---|"]
    for p in profs:
        emd = next((r for r in rows if r["method"] == "pot_emd" and r["n"] == p["n"]
                    and r["d"] == p["d"]), None)
        emd_text = "-" if emd is None else \
            f"{emd['time_s'] * 1e3:,.1f} ({emd['build_s'] * 1e3:,.1f})"
        cost_text = (f"{p['cost_s'] * 1e3:,.1f}" if p["method"] == "flowjax_sinkhorn_fast"
                     and p["d"] > 2 else f"({p['cost_s'] * 1e3:,.1f}, in the loop)")
        lines.append(f"| {p['d']} | {p['method']} {p['eps_rel']:g} | {p['call_s'] * 1e3:,.1f} | "
                     f"{cost_text} | {p['loop_s'] * 1e3:,.1f} ({p['n_iters']:.0f}, "
                     f"{p['ms_per_iter']:.2f}) | {p['rest_s'] * 1e3:,.1f} | {emd_text} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report

def attach_ratios(rows, refs):
    by = {(r["n"], r["d"]): r for r in refs}
    for row in rows:
        ref = by.get((row["n"], row["d"]), {})
        w, name = (ref["W"], "W") if "W" in ref else (ref.get("LB"), "LB")
        row["reference"] = name if w is not None else None
        for k in ("pair", "plan"):
            v = row.get(f"{k}_cost")
            row[f"{k}_ratio"] = None if v is None or w is None else v / w
        it = row.get("n_iters")
        row["ms_per_iter"] = row["time_s"] * 1e3 / it if it else None
    for row in rows:  # speed-up over POT's EMD and SciPy at the same (n, d)
        for peer in ("pot_emd", "scipy_lsa"):
            other = next((r for r in rows if r["method"] == peer and r["n"] == row["n"]
                          and r["d"] == row["d"]), None)
            row[f"speedup_vs_{peer}"] = None if other is None else other["time_s"] / row["time_s"]


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def table(rows, d):
    head = ("| n | method | eps / std(C) | ms / call | build ms | compile s | iters | ms / iter | "
            "conv | pair / ref | plan / ref | E | x EMD |")
    lines = [head, "|" + "---|" * 13]
    order = {m: i for i, m in enumerate(EXACT + SINKHORN + SHARDED)}
    for r in sorted((r for r in rows if r["d"] == d),
                    key=lambda r: (r["n"], order[r["method"]], -(r["eps_rel"] or 0))):
        conv = r.get("converged")
        lines.append(
            f"| {r['n']:,} | {r['method']} | {_f(r['eps_rel'], 'g')} | "
            f"{r['time_s'] * 1e3:,.1f} | {_f(r.get('build_s') and r['build_s'] * 1e3, ',.1f')} | "
            f"{_f(r['compile_s'], '.1f')} | {_f(r.get('n_iters'), '.0f')} | "
            f"{_f(r.get('ms_per_iter'), '.2f')} | "
            f"{'-' if conv is None else 'yes' if conv else 'NO'} | "
            f"{_f(r.get('pair_ratio'), '.4f')} | {_f(r.get('plan_ratio'), '.4f')} | "
            f"{_f(r.get('entropy'), '.3f')} | {_f(r.get('speedup_vs_pot_emd'), '.2f')} |")
    return "\n".join(lines)


def ref_table(refs):
    lines = ["| n | d | independent pairs | W (SciPy) | LB (dual, <= W) | indep / W |",
             "|---|---|---|---|---|---|"]
    for r in refs:
        w = r.get("W")
        lines.append(f"| {r['n']:,} | {r['d']} | {r['indep']:.4f} | {_f(w, '.4f')} | "
                     f"{_f(r.get('LB'), '.4f')} | {_f(w and r['indep'] / w, '.3f')} |")
    return "\n".join(lines)


def headline(rows, n, dims, tol=0.01):
    """Per d at n points: the fastest flowjax Sinkhorn with plan cost <= (1 + tol) W."""
    out = []
    for d in dims:
        cands = [r for r in rows if r["d"] == d and r["n"] == n and r["method"] in SINKHORN
                 and r["reference"] == "W" and r.get("plan_ratio") is not None
                 and r["plan_ratio"] <= 1.0 + tol and r.get("converged")]
        best = min(cands, key=lambda r: r["time_s"]) if cands else None
        emd = next((r for r in rows if r["method"] == "pot_emd" and r["n"] == n
                    and r["d"] == d), None)
        lsa = next((r for r in rows if r["method"] == "scipy_lsa" and r["n"] == n
                    and r["d"] == d), None)
        measured = any(r["d"] == d and r["n"] == n and r["method"] in SINKHORN for r in rows)
        entry = {"n": n, "d": d, "measured": measured,
                 "best": None if best is None else
                 {k: best[k] for k in ("method", "eps_rel", "time_s", "plan_ratio", "n_iters",
                                       "converged")},
                 "emd_s": emd and emd["time_s"], "lsa_s": lsa and lsa["time_s"]}
        entry["speedup_vs_emd"] = emd["time_s"] / best["time_s"] if best and emd else None
        entry["speedup_vs_lsa"] = lsa["time_s"] / best["time_s"] if best and lsa else None
        out.append(entry)
    return out


def headline_text(entries, tol=0.01):
    lines = []
    for e in entries:
        b = e["best"]
        if not e["measured"]:
            lines.append(f"- d = {e['d']}, n = {e['n']:,}: not measured (see --sizes).")
            continue
        if b is None:
            lines.append(f"- d = {e['d']}, n = {e['n']:,}: no converged flowjax Sinkhorn "
                         f"configuration reached plan / W <= {1 + tol:g} (or W was not "
                         "computed).")
            continue
        vs_emd = ("POT EMD not measured (not installed?)" if e["emd_s"] is None else
                  f"speed-up {e['speedup_vs_emd']:.2f}x over POT EMD "
                  f"({e['emd_s'] * 1e3:,.1f} ms)")
        vs_lsa = ("" if e["lsa_s"] is None else
                  f", {e['speedup_vs_lsa']:.2f}x over SciPy ({e['lsa_s'] * 1e3:,.1f} ms)")
        lines.append(f"- d = {e['d']}, n = {e['n']:,}: {b['method']} eps {b['eps_rel']:g}: "
                     f"{b['time_s'] * 1e3:,.1f} ms, plan / W = {b['plan_ratio']:.4f}, "
                     f"{b['n_iters']:.0f} iterations: {vs_emd}{vs_lsa}.")
    return "\n".join(lines)


def plot(rows, dims, filename):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, len(dims), figsize=(5.4 * len(dims), 8.4), squeeze=False)
    series = list(dict.fromkeys((r["method"], r["eps_rel"]) for r in rows))
    epss = sorted({e for m, e in series if m in SINKHORN}, reverse=True)
    cmap = plt.get_cmap("viridis")
    fixed = {"scipy_lsa": "k", "pot_emd": "tab:red", "flowjax_exact": "tab:brown",
             "local_exact": "tab:pink", "local_sinkhorn": "tab:orange",
             "global_sinkhorn": "tab:purple"}
    style = {"scipy_lsa": "s--", "pot_emd": "s--", "flowjax_exact": "s:",
             "flowjax_sinkhorn": "o--", "flowjax_sinkhorn_fast": "^-"}
    sizes = sorted({r["n"] for r in rows})
    for col, d in enumerate(dims):
        for method, eps in series:
            pts = sorted((r for r in rows if r["d"] == d and (r["method"], r["eps_rel"])
                          == (method, eps)), key=lambda r: r["n"])
            if not pts:
                continue
            color = (cmap(0.9 * epss.index(eps) / max(len(epss) - 1, 1)) if method in SINKHORN
                     else fixed[method])
            label = method if eps is None else f"{method} {eps:g}"
            kw = dict(label=label, color=color, markersize=4)
            fmt = style.get(method, "D:")
            ns = [r["n"] for r in pts]
            axes[0, col].plot(ns, [r["time_s"] for r in pts], fmt, **kw)
            ratio = [r["plan_ratio"] if r.get("plan_ratio") is not None else r.get("pair_ratio")
                     for r in pts]
            if any(v is not None for v in ratio):
                axes[1, col].plot(ns, [math.nan if v is None else v for v in ratio], fmt, **kw)
        axes[0, col].set(xscale="log", yscale="log", ylabel="seconds per call",
                         title=f"d = {d} ({TARGETS[d]}): time per coupling")
        axes[1, col].set(xscale="log", ylabel="cost / W (beyond --max-exact-n: / LB)",
                         title=f"d = {d}: plan cost (Sinkhorn) or pair cost, over W")
        axes[1, col].axhline(1.01, color="k", lw=0.8, ls=":")
        for ax in axes[:, col]:
            ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("points n")
            ax.grid(alpha=0.3, which="both")
        axes[0, col].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="n up to 4,096, five eps, 2 repeats, exact solvers up to 1,024 "
                             "points, 5 s call budget")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="default 256 1024 4096 16384 (--quick: 256 1024 4096)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 784, 3072],
                        choices=sorted(TARGETS))
    parser.add_argument("--eps", type=float, nargs="+", default=None,
                        help="Sinkhorn eps as fractions of std(C) (default 0.1 0.07 0.05 0.02 "
                             "0.01 0.005 0.002; --quick 0.1 0.07 0.05 0.01 0.005)")
    parser.add_argument("--methods", nargs="+", default=list(EXACT + SINKHORN + SHARDED),
                        choices=EXACT + SINKHORN + SHARDED, metavar="METHOD",
                        help="a subset of: " + " ".join(EXACT + SINKHORN + SHARDED))
    parser.add_argument("--threshold", type=float, default=1e-3)
    parser.add_argument("--max-iterations", type=int, default=5000)
    parser.add_argument("--max-exact-n", type=int, default=None,
                        help="exact solvers and W up to this n (default 4096; --quick 1024)")
    parser.add_argument("--max-call-s", type=float, default=None,
                        help="skip a method whose extrapolated call time exceeds this "
                             "(default 60; --quick 5)")
    parser.add_argument("--slow-s", type=float, default=None,
                        help="a warm-up call slower than this is timed once more only "
                             "(default 10; --quick 1.5)")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (--quick 2)")
    parser.add_argument("--headline-n", type=int, default=1024)
    parser.add_argument("--sharded", action=argparse.BooleanOptionalAction, default=True,
                        help="local / global couplings on 8 host devices (child process)")
    parser.add_argument("--sharded-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--sharded-eps", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="workdir/coupling_speed.json")
    parser.add_argument("--plot", default=None, help="PNG file (default: next to --out)")
    parser.add_argument("--sharded-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    q = args.quick
    if args.sizes is None:
        args.sizes = [256, 1024, 4096] if q else [256, 1024, 4096, 16384]
    if args.eps is None:
        args.eps = ([0.1, 0.07, 0.05, 0.01, 0.005] if q else
                    [0.1, 0.07, 0.05, 0.02, 0.01, 0.005, 0.002])
    if args.max_exact_n is None:
        args.max_exact_n = 1024 if q else 4096
    if args.max_call_s is None:
        args.max_call_s = 5.0 if q else 60.0
    if args.slow_s is None:
        args.slow_s = 1.5 if q else 10.0
    if args.repeats is None:
        args.repeats = 2 if q else 5
    return args


def main():
    args = parse_args()
    log = functools.partial(print, flush=True)
    info = machine()
    if args.sharded_child:
        rows, skipped = run_sharded(args, log)
        with open(args.sharded_child, "w") as f:
            json.dump({"machine": info, "rows": rows, "skipped": skipped}, f)
        return
    start = time.perf_counter()
    log(f"{info['cpu']}, {info['cores']} cores, {info['devices']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    if ot is None:
        log("POT is not installed: pot_emd is skipped (pip install pot)")
    rows, skipped, refs = [], [], []
    budget = Budget(args.max_call_s)
    for n in sorted(args.sizes):
        for d in args.dims:
            r, s, ref = bench_size(n, d, args, budget, log)
            rows += r
            skipped += s
            refs.append(ref)
    sharded_devices = None
    if args.sharded and 2 in args.dims and set(SHARDED) & set(args.methods):
        log("sharded couplings (child process, 8 host devices):")
        r, s, sharded_devices = spawn_sharded(args, log)
        rows += r
        skipped += s
        for n in sorted(set(row["n"] for row in r) - {ref["n"] for ref in refs if ref["d"] == 2}):
            x0, x1 = make_batch(n, 2, args.seed)  # a W for sharded sizes not benched above
            ref = {"n": n, "d": 2, "indep": float(jnp.mean(jnp.sum((x0 - x1) ** 2, -1)))}
            if n <= args.max_exact_n:
                ref["W"] = scipy_lsa(np.asarray(x0), np.asarray(x1))["pair_cost"]
            refs.append(ref)
    attach_ratios(rows, refs)
    heads = headline(rows, args.headline_n, args.dims)
    profs = [p for d in args.dims if (p := profile(rows, args.headline_n, d, args, log))]
    seconds = time.perf_counter() - start

    for d in args.dims:
        print(f"\n### d = {d} ({TARGETS[d]})\n\n" + table(rows, d))
    print("\nReferences (cost of the batch under independent pairs, exact W, dual LB):\n\n"
          + ref_table(refs))
    if skipped:
        print("\nSkipped:\n\n" + "\n".join(
            f"- n = {s['n']:,}, d = {s['d']}: {s['method']}"
            + (f" eps {s['eps_rel']:g}" if s["eps_rel"] is not None else "") + f" ({s['why']})"
            for s in skipped))
    print(f"\nHeadline at n = {args.headline_n:,} (fastest flowjax Sinkhorn with plan / W <= "
          "1.01):\n\n" + headline_text(heads))
    if profs:
        print("\nWhere its time goes (medians; the loop includes std(C) and the plan's exp):\n\n"
              + profile_table(profs, rows))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": info, "sharded_devices": sharded_devices, "args": vars(args),
                   "rows": rows, "skipped": skipped, "references": refs, "headline": heads,
                   "profile": profs, "seconds": seconds}, f, indent=1)
    png = args.plot or os.path.splitext(args.out)[0] + ".png"
    plot(rows, args.dims, png)
    print(f"\n{info['cpu']} ({info['cores']} cores), {info['devices']}; {seconds:.0f} s; "
          f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
