"""ODE sampling speed: flowjax (diffrax) against torchdiffeq through Meta flow_matching's ODESolver.

The same velocity network, with the same float32 weights, is sampled from the same
sources x0 ~ N(0, I) in both frameworks (time runs 0 -> 1, noise -> data):

  2d      the MLP [x, t] -> 64 -> 64 -> 64 -> 2 with SELU: TorchCFM's own
          `torchcfm.models.MLP(dim=2, time_varying=True, w=64)` on the torch side,
          `flowjax.models.MLP(hidden=(64, 64, 64), time_dim=None, activation=selu)` here,
          trained here with I-CFM on two moons (2,000 Adam steps of batch 256);
          10,000 samples (the headline figure) and 1,000.
  digits  an MLP [x, t] -> 256 -> 256 -> 256 -> 64 with SiLU (a torch.nn.Sequential on
          the torch side) on the flattened 8x8 scikit-learn digits scaled to [-1, 1],
          trained here with I-CFM (1,000 steps; 2,000 without --quick); 1,000 images
          (and 10,000 without --quick).
  unet    flowjax only, for reference: the small class-conditional U-Net of
          experiments/images/configs/digits.py (channels 16, mult (1, 2), attention at
          4x4; untrained parameters, labels 0..9), Euler with 100 steps.

Solvers: Euler with 100 steps (flowjax `solve_ode(..., solver=diffrax.Euler(),
num_steps=100)`; torch `ODESolver.sample(x, step_size=0.01, method="euler")`) and
adaptive Dopri5 at rtol = atol = 1e-5 (diffrax's PID controller; torchdiffeq's
"dopri5"), both under no-grad / jit, float32. The `jax-loop` rows are a hand-written
jitted `lax.fori_loop` Euler on the same network: the floor for a JAX sampler, so
`flowjax - jax-loop` is what diffrax costs.

Timing: the torch side runs in a separate spawned process that stays up, so neither
framework shares a process (or thread pool) with the other; both use every core
(`torch.set_num_threads(os.cpu_count())`; XLA by default). Each sampler is called once
to warm up (for flowjax this compiles: `compile s` = first call - median), then the
two frameworks take turns, `--rounds` rounds of `--repeats` calls each, so that a
change in the machine's load hits both; reported: the median wall time of all timed
calls, blocking on the result (`jax.block_until_ready`). NFE: flowjax's `nfe`; on the
torch side the calls of the wrapped model. `max |diff|`: the largest absolute
difference between the two frameworks' samples from the same x0; `max |err|`: that
against a flowjax Dopri5 solve at rtol = atol = 1e-7. The profile times the bare
network call on the same batch in each framework (`model ms`, best of 20), so
`overhead ms/NFE` = solve time per NFE - model ms is what the solver adds per
evaluation; the op rows time one hidden layer of the 2-D network and its parts.

    python benchmarks/sampling_speed.py --quick --out workdir/sampling_speed.json   # ~2 min idle
    python benchmarks/sampling_speed.py --out workdir/sampling_speed_full.json       # ~6 min idle

writes the JSON rows, prints Markdown tables and the headline 2-D Euler ratio
(flowjax's samples/s over torchdiffeq's), and draws a plot next to the JSON
file. A missing peer (torch, torchdiffeq, flow_matching) skips the torch side and
says so. Timings on a shared 2-core CPU are noisy: `other cores` is the CPU time other
processes took during each row's timed calls (0 on an idle machine). A disturbed block
is retimed after waiting for an idle CPU, within `--wait-idle` seconds in all; a block
stops after 4 s and a sampler's turns after 6 s in all (--quick; 30 s and 60 s
otherwise), so a busy machine cannot stretch the run much. torch, with one OpenMP
thread per core, slows down 10-30x when another process holds a core (its barriers
wait for a descheduled thread), XLA about 2x: the headline line says UNRELIABLE when
its rows were disturbed.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowjax import data, losses, models, paths, sample, train
from _platform import cpu_name  # benchmarks/ is on sys.path

PATH = paths.RectifiedFlow()
TOL = 1e-5
REF_TOL = 1e-7  # the reference solve (float32: about the smallest tolerance that means anything)
EULER_STEPS = 100
ACTIVATIONS = {"selu": jax.nn.selu, "silu": jax.nn.silu}
SOLVER_NAMES = {"euler": f"euler-{EULER_STEPS}", "dopri5": f"dopri5-{TOL:g}"}


# --------------------------------------------------------------------------- machine


def _version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    cpu = cpu_name()
    names = ("jax", "jaxlib", "diffrax", "equinox", "flax", "optax", "numpy", "scikit-learn",
             "torch", "torchdiffeq", "flow_matching", "torchcfm")
    versions = {p: _version(p) or "not installed" for p in names}
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "versions": versions, "x64": bool(jax.config.jax_enable_x64)}


def missing_peers() -> list[str]:
    """The peers the torch side needs that are not importable (torchcfm is optional)."""
    return [p for p in ("torch", "torchdiffeq", "flow_matching")
            if importlib.util.find_spec(p) is None]


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- timing


def _busy_seconds():
    """CPU seconds all processes have spent busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Cores kept busy by *other* processes while a block runs: (busy CPU time of the
    machine - this process's CPU time) / wall time; ~0 on an idle machine."""

    def __enter__(self):
        self.busy, self.cpu, self.wall = _busy_seconds(), time.process_time(), time.perf_counter()
        self.cores = None
        return self

    def __exit__(self, *exc):
        busy, wall = _busy_seconds(), time.perf_counter() - self.wall
        if busy is not None and self.busy is not None:
            self.cores = max(0.0, (busy - self.busy - (time.process_time() - self.cpu))
                             / max(wall, 1e-9))
        return False


BUSY = 0.2  # cores of other processes above which a timed block counts as disturbed
WAIT = {"budget_s": 0.0, "waited_s": 0.0}  # this process's budget for waiting on an idle CPU
BLOCK_S = [10.0]  # a timed block stops after this many seconds (with at least one call)
ROW_S = [60.0]  # a sampler takes no more turns once its timed calls add up to this


def wait_idle(max_seconds, log=None):
    """Waits up to max_seconds until other processes use under BUSY cores over 2 s.

    Returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_seconds:
        with OtherLoad() as other:
            time.sleep(min(2.0, max(0.1, max_seconds - (time.perf_counter() - t0))))
        if other.cores is None or other.cores < BUSY:
            break
        if log:
            log(f"  waiting for an idle CPU (other processes use {other.cores:.2f} cores) ...")
    return time.perf_counter() - t0


def warm_up(fn):
    """(output, seconds) of a first call: compilation for jitted code."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def time_block(fn, repeats):
    """(seconds of `repeats` calls, cores of other processes meanwhile).

    Stops early once the block has taken BLOCK_S seconds (a busy machine can slow torch
    down 30x). If other processes kept more than BUSY cores busy, waits for an idle CPU
    and times again (at most 3 tries, within WAIT's budget), keeping the least disturbed
    try."""
    best = None
    for _ in range(3):
        times = []
        with OtherLoad() as other:
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
                if sum(times) > BLOCK_S[0]:
                    break
        if best is None or (other.cores or 0.0) < (best[1] or 0.0):
            best = (times, other.cores)
        left = WAIT["budget_s"] - WAIT["waited_s"]
        if other.cores is None or other.cores < BUSY or left <= 0:
            break
        WAIT["waited_s"] += wait_idle(left)
    return best


# --------------------------------------------------------------------------- training


def _mlp(hidden, activation):
    return models.MLP(hidden=tuple(hidden), time_dim=None, activation=ACTIVATIONS[activation])


def _digits():
    """The training split of scikit-learn's digits, flattened and scaled to [-1, 1]: [N, 64]."""
    source = data.digits_source("train")
    return source.images.reshape(len(source), -1).astype(np.float32) / 127.5 - 1.0


def train_mlp(problem, steps, batch=256, chunk=100, lr=1e-3):
    """Trains the problem's MLP with I-CFM (x0 ~ N(0, I), Adam); returns (params, info)."""
    t0 = time.perf_counter()
    if problem == "2d":
        module, dim = _mlp((64, 64, 64), "selu"), 2
        sampler = data.moons
    else:
        module, dim = _mlp((256, 256, 256), "silu"), 64
        pixels = jnp.asarray(_digits())
        sampler = lambda key, n: pixels[jax.random.randint(key, (n,), 0, len(pixels))]  # noqa: E731
    apply_fn = models.model_fn(module)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, dim)), jnp.zeros((1,)))["params"]
    loss = functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=PATH)
    opt = optax.adam(lr)
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    multi = train.make_multi_step(loss, opt)
    chunk = min(chunk, steps)
    calls = max(1, steps // chunk)
    for i in range(calls):
        key = jax.random.fold_in(jax.random.PRNGKey(2), i)
        x0 = jax.random.normal(jax.random.fold_in(key, 0), (chunk, batch, dim))
        x1 = sampler(jax.random.fold_in(key, 1), chunk * batch).reshape(chunk, batch, dim)
        state, metrics = multi(state, {"x0": x0, "x1": x1})
    info = {"problem": problem, "steps": calls * chunk, "batch": batch, "lr": lr,
            "final_loss": float(jnp.mean(metrics["loss"][-10:])),
            "seconds": time.perf_counter() - t0}
    return jax.tree.map(lambda p: np.asarray(p, np.float32), state.params), info


def torch_layers(params):
    """A flowjax MLP's Dense_i (kernel [in, out], bias) as torch Linear (weight [out, in], bias)."""
    names = sorted(params, key=lambda k: int(k.split("_")[1]))
    return [(np.ascontiguousarray(np.asarray(params[k]["kernel"]).T),
             np.asarray(params[k]["bias"]).copy()) for k in names]


# --------------------------------------------------------------------------- flowjax side


@jax.jit
def _fori_euler(velocity, x0):
    """Euler with EULER_STEPS uniform steps as a bare lax.fori_loop (no diffrax)."""
    dt = 1.0 / EULER_STEPS

    def body(i, x):
        t = jnp.full((x.shape[0],), i * dt, x.dtype)
        return x + dt * velocity(x, t)

    return jax.lax.fori_loop(0, EULER_STEPS, body, x0)


def flowjax_samplers(module, params, x0, cond, methods, *, loop=True):
    """{(framework, method): fn() -> (samples, nfe)} and the bare network call fn()."""
    apply_fn = models.model_fn(module)
    velocity = sample.ModelVelocity(apply_fn, params, cond)

    def solve(method):
        if method == "euler":
            sol = sample.solve_ode(velocity, x0, solver=diffrax.Euler(), num_steps=EULER_STEPS)
        else:
            sol = sample.solve_ode(velocity, x0, solver=diffrax.Dopri5(),
                                   adaptive=sample.Adaptive(TOL, TOL))
        return jax.block_until_ready(sol.samples), sol.nfe

    fns = {}
    for method in methods:
        fns[("flowjax", method)] = functools.partial(solve, method)
        if loop and method == "euler":
            fns[("jax-loop", method)] = lambda: (
                jax.block_until_ready(_fori_euler(velocity, x0)), EULER_STEPS)
    call = jax.jit(lambda p, x, c: apply_fn(p, x, jnp.full((x.shape[0],), 0.5, x.dtype), c))
    return fns, lambda: jax.block_until_ready(call(params, x0, cond))


def reference(module, params, x0, cond):
    """A tight solve of the same ODE (flowjax Dopri5 at rtol = atol = REF_TOL, float32)."""
    velocity = sample.ModelVelocity(models.model_fn(module), params, cond)
    sol = sample.solve_ode(velocity, x0, solver=diffrax.Dopri5(),
                           adaptive=sample.Adaptive(REF_TOL, REF_TOL, max_steps=100_000))
    return np.asarray(sol.samples), int(sol.nfe)


def flowjax_ops(n, repeats):
    """One hidden layer of the 2-D MLP on n rows (ms): x @ W + b, SELU, both, and the
    elementwise functions SELU is made of (jax.nn.selu uses expm1) beside ReLU."""
    x = jax.random.normal(jax.random.PRNGKey(3), (n, 64))
    w = 0.1 * jax.random.normal(jax.random.PRNGKey(4), (64, 64))
    b = jnp.zeros((64,))
    ops = {"linear 64x64": lambda x, w, b: x @ w + b,
           "selu": lambda x, w, b: jax.nn.selu(x),
           "linear + selu": lambda x, w, b: jax.nn.selu(x @ w + b),
           "expm1 (in selu)": lambda x, w, b: jnp.expm1(x),
           "exp": lambda x, w, b: jnp.exp(x),
           "relu": lambda x, w, b: jax.nn.relu(x)}
    out = {}
    for name, fn in ops.items():
        f = jax.jit(fn)
        run = lambda: jax.block_until_ready(f(x, w, b))  # noqa: E731
        warm_up(run)
        out[name] = 1e3 * min(time_block(run, repeats)[0])
    return out


# --------------------------------------------------------------------------- torch side
# These run in the spawned torch process; it keeps its samplers in _TORCH between calls.

_TORCH = {}


def torch_setup(job):
    """Builds the torch network from the copied weights, wraps it for flow_matching's
    ODESolver and calls each sampler once (the warm-up).

    `job`: key, activation, layers [(weight [out, in], bias)], x0 [n, d], methods,
    threads, torchcfm (use TorchCFM's own MLP class: the 2-D network)."""
    import torch
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    torch.set_num_threads(job["threads"])
    layers = job["layers"]
    net, network = None, "torch.nn.Sequential of Linear / activation"
    if job["torchcfm"]:
        try:
            from torchcfm.models import MLP as TorchCFMMLP

            dim, width = layers[0][0].shape[1] - 1, layers[0][0].shape[0]
            net = TorchCFMMLP(dim=dim, time_varying=True, w=width).net
            network = f"torchcfm.models.MLP(dim={dim}, time_varying=True, w={width})"
        except Exception:  # noqa: BLE001 - torchcfm absent or broken: the same Sequential
            net = None
    if net is None:
        act = {"selu": torch.nn.SELU, "silu": torch.nn.SiLU}[job["activation"]]
        mods = []
        for i, (w, _) in enumerate(layers):
            mods.append(torch.nn.Linear(w.shape[1], w.shape[0]))
            if i < len(layers) - 1:
                mods.append(act())
        net = torch.nn.Sequential(*mods)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, (w, b) in zip(linears, layers, strict=True):
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
    net.eval()

    class Velocity(ModelWrapper):
        """u(x, t) = net([x, t]); torchdiffeq passes a scalar t. Counts its calls (NFE)."""

        def __init__(self, model):
            super().__init__(model)
            self.calls = 0

        def forward(self, x, t, **extras):
            self.calls += 1
            return self.model(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1)], dim=1))

    velocity = Velocity(net)
    solver = ODESolver(velocity_model=velocity)
    x0 = torch.from_numpy(np.array(job["x0"], np.float32))
    grid = torch.tensor([0.0, 1.0])

    def run(method):
        velocity.calls = 0
        with torch.no_grad():
            if method == "euler":
                out = solver.sample(x0, step_size=1.0 / EULER_STEPS, method="euler",
                                    time_grid=grid)
            else:
                out = solver.sample(x0, step_size=None, method="dopri5", atol=TOL, rtol=TOL,
                                    time_grid=grid)
        return out, velocity.calls

    half = torch.tensor(0.5)

    def call():
        with torch.no_grad():
            return velocity(x0, half)

    _TORCH[job["key"]] = {m: functools.partial(run, m) for m in job["methods"]}
    _TORCH[job["key"]]["model"] = call
    result = {"network": network, "threads": torch.get_num_threads(), "samples": {}, "nfe": {},
              "first_s": {}}
    for method in job["methods"]:
        (out, nfe), first = warm_up(_TORCH[job["key"]][method])
        result["samples"][method], result["nfe"][method] = out.numpy(), nfe
        result["first_s"][method] = first
    warm_up(call)
    return result


def torch_time(key, name, repeats, wait_budget_s, block_s):
    """(seconds of `repeats` calls of sampler `name` (or "model"), other cores, seconds waited)."""
    WAIT.update(budget_s=wait_budget_s, waited_s=0.0)
    BLOCK_S[0] = block_s
    times, cores = time_block(_TORCH[key][name], repeats)
    return times, cores, WAIT["waited_s"]


def torch_ops(n, repeats, threads):
    """One hidden layer of the 2-D MLP on n rows in torch (ms), as flowjax_ops."""
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=gen)
    w, b = 0.1 * torch.randn(64, 64, generator=gen), torch.zeros(64)
    fns = {"linear 64x64": lambda: torch.nn.functional.linear(x, w, b),
           "selu": lambda: torch.selu(x),
           "linear + selu": lambda: torch.selu(torch.nn.functional.linear(x, w, b)),
           "expm1 (in selu)": lambda: torch.expm1(x),
           "exp": lambda: torch.exp(x),
           "relu": lambda: torch.relu(x)}
    out = {}
    with torch.no_grad():
        for name, fn in fns.items():
            warm_up(fn)
            out[name] = 1e3 * min(time_block(fn, repeats)[0])
    return out


# --------------------------------------------------------------------------- report


def ratios(rows):
    """flowjax / torch samples/s for each (problem, n, solver) both frameworks ran."""
    out = []
    for r in rows:
        if r["framework"] != "flowjax":
            continue
        peer = [p for p in rows if p["framework"] == "torch"
                and (p["problem"], p["n"], p["solver"]) == (r["problem"], r["n"], r["solver"])]
        if peer:
            out.append({"problem": r["problem"], "n": r["n"], "solver": r["solver"],
                        "flowjax_samples_per_s": r["samples_per_s"],
                        "torch_samples_per_s": peer[0]["samples_per_s"],
                        "ratio": r["samples_per_s"] / peer[0]["samples_per_s"],
                        "nfe_flowjax": r["nfe"], "nfe_torch": peer[0]["nfe"],
                        "max_abs_diff": r["max_abs_diff"]})
    return out


def _g(v, fmt="{:.3g}"):
    return "-" if v is None else fmt.format(v)


def tables(rows, rat, profiles, ops, refs):
    lines = ["| problem | n | solver | framework | NFE | median s | samples/s | ms/NFE | "
             "compile s | max abs diff vs torch | max abs err vs ref | other cores |",
             "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['n']:,} | {r['solver']} | {r['framework']} | "
                     f"{r['nfe']} | {r['seconds']:.3f} | {r['samples_per_s']:,.0f} | "
                     f"{r['ms_per_nfe']:.3f} | {_g(r['compile_s'], '{:.2f}')} | "
                     f"{_g(r['max_abs_diff'], '{:.1e}')} | {_g(r['max_abs_err'], '{:.1e}')} | "
                     f"{_g(r['other_cores'], '{:.2f}')} |")
    if refs:
        lines += ["", f"ref: flowjax Dopri5 at rtol = atol = {REF_TOL:g} (float32), NFE "
                  + ", ".join(f"{p} {n:,}: {nfe}" for (p, n), nfe in refs.items())
                  + ". other cores: CPU time of other processes during the timed calls "
                  "(the largest of the rounds; 0 = idle machine)."]
    if rat:
        lines += ["", "| problem | n | solver | flowjax samples/s | torch samples/s | "
                  "flowjax / torch | NFE flowjax / torch |", "|" + "---|" * 7]
        for r in rat:
            lines.append(f"| {r['problem']} | {r['n']:,} | {r['solver']} | "
                         f"{r['flowjax_samples_per_s']:,.0f} | {r['torch_samples_per_s']:,.0f} | "
                         f"**{r['ratio']:.2f}x** | {r['nfe_flowjax']} / {r['nfe_torch']} |")
    lines += ["", "Profile: the bare network call on the same batch (best of 20: one jitted or "
              "eager call), and what each solver adds per evaluation (ms/NFE of the solve - "
              "model ms; a jitted solve can beat a lone call, which pays a dispatch):", "",
              "| problem | n | framework | model ms | solver | ms/NFE | overhead ms/NFE |",
              "|" + "---|" * 7]
    for p in profiles:
        for r in rows:
            fw = "flowjax" if r["framework"] == "jax-loop" else r["framework"]
            if (r["problem"], r["n"], fw) == (p["problem"], p["n"], p["framework"]):
                name = r["solver"] + (" (jax-loop)" if r["framework"] == "jax-loop" else "")
                lines.append(f"| {p['problem']} | {p['n']:,} | {p['framework']} | "
                             f"{p['model_ms']:.3f} | {name} | {r['ms_per_nfe']:.3f} | "
                             f"{r['ms_per_nfe'] - p['model_ms']:+.3f} |")
    if ops:
        names = list(next(iter(ops.values())))
        lines += ["", "One hidden layer of the 2-D MLP, [n, 64], on the same rows "
                  "(ms, best of 20):", "",
                  "| op | " + " | ".join(ops) + " |", "|" + "---|" * (len(ops) + 1)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{ops[fw][name]:.3f}" for fw in ops) + " |")
    return "\n".join(lines)


def plot(rows, profiles, filename):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["problem"], r["n"], r["solver"]) for r in rows))
    frameworks = ("flowjax", "jax-loop", "torch")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    width = 0.8 / len(frameworks)
    for j, fw in enumerate(frameworks):
        xs, ys = [], []
        for i, g in enumerate(groups):
            hit = [r for r in rows if (r["problem"], r["n"], r["solver"]) == g
                   and r["framework"] == fw]
            if hit:
                xs.append(i + (j - 1) * width)
                ys.append(hit[0]["samples_per_s"])
        if xs:
            axes[0].bar(xs, ys, width, label=fw, color=f"C{j}")
    axes[0].set_xticks(range(len(groups)))
    axes[0].set_xticklabels([f"{p}\n{n:,}\n{s}" for p, n, s in groups], fontsize=7)
    axes[0].set(yscale="log", ylabel="samples / s (higher is better)",
                title="ODE sampling throughput")
    labels, model, over = [], [], []
    for p in profiles:
        if p["problem"] == "unet":  # flowjax only, 10-100x the others: left out of this panel
            continue
        for r in rows:
            fw = "flowjax" if r["framework"] == "jax-loop" else r["framework"]
            if (r["problem"], r["n"], fw) == (p["problem"], p["n"], p["framework"]):
                labels.append(f"{r['problem']} {r['n']:,} {r['solver'].split('-')[0]} "
                              f"{r['framework']}")
                model.append(p["model_ms"])
                over.append(max(r["ms_per_nfe"] - p["model_ms"], 0.0))
    xs = np.arange(len(labels))
    axes[1].bar(xs, model, 0.6, label="network call", color="C7")
    axes[1].bar(xs, over, 0.6, bottom=model, label="solver overhead", color="C3")
    axes[1].set_xticks(xs)
    axes[1].set_xticklabels(labels, fontsize=6, rotation=90)
    axes[1].set(ylabel="ms per evaluation",
                title="time per NFE: network call (bare) + solver overhead")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def _row(problem, method, framework, n, nfe, first, times, other):
    med = statistics.median(times)
    return {"problem": problem, "solver": SOLVER_NAMES[method], "framework": framework, "n": n,
            "nfe": int(nfe), "seconds": med, "samples_per_s": n / med,
            "ms_per_nfe": 1e3 * med / int(nfe), "first_s": first,
            "compile_s": first - med if framework != "torch" else None, "times": times,
            "other_cores": other, "max_abs_diff": None, "max_abs_err": None}


def _log_row(log, r):
    other = "" if r["other_cores"] is None else f"  (other processes: {r['other_cores']:.2f} cores)"
    log(f"  {r['framework']:8s} {r['problem']:7s} {r['n']:6d} {r['solver']:12s} "
        f"{r['seconds']:8.3f} s  NFE {r['nfe']}{other}")


class TorchSide:
    """The spawned torch process (or nothing, when a peer is missing)."""

    def __init__(self, enabled):
        self.pool = None
        if enabled:
            ctx = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx)

    def __call__(self, fn, *args):
        return self.pool.submit(fn, *args).result()

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


def bench_case(problem, module, params, x0, cond, methods, args, torch_side, log, *, job=None,
               loop=True):
    """Rows and the profile of one (network, batch): flowjax and, given `job`, torch, taking
    turns for args.rounds rounds of args.repeats calls."""
    n, key = x0.shape[0], f"{problem}-{x0.shape[0]}"
    fns, call = flowjax_samplers(module, params, x0, cond, methods, loop=loop)
    first, samples, nfe = {}, {}, {}
    for label, fn in fns.items():
        (out, nfe[label]), first[label] = warm_up(fn)
        samples[label] = np.asarray(out)
    warm_up(call)
    setup = torch_side(torch_setup, job) if job is not None else None
    if setup is not None:
        for m in methods:
            first[("torch", m)], nfe[("torch", m)] = setup["first_s"][m], setup["nfe"][m]
            samples[("torch", m)] = setup["samples"][m]
    times = {label: [] for label in first}
    other = {label: [] for label in first}
    done = lambda label: sum(times[label]) > ROW_S[0]  # noqa: E731 - slow (busy CPU): enough
    for _ in range(args.rounds if setup is not None else 1):
        for label, fn in fns.items():
            if done(label):
                continue
            reps = args.repeats if setup is not None else args.repeats * args.rounds
            t, o = time_block(fn, reps)
            times[label] += t
            other[label].append(o)
        if setup is not None:
            for m in methods:
                if done(("torch", m)):
                    continue
                t, o, waited = torch_side(torch_time, key, m, args.repeats,
                                          WAIT["budget_s"] - WAIT["waited_s"], BLOCK_S[0])
                WAIT["waited_s"] += waited
                times[("torch", m)] += t
                other[("torch", m)].append(o)
    rows = []
    for label in first:
        cores = [o for o in other[label] if o is not None]
        rows.append(_row(problem, label[1], label[0], n, nfe[label], first[label], times[label],
                         max(cores) if cores else None))
        _log_row(log, rows[-1])
    # The bare network call on the same batch: the best of `reps` (one jitted / eager call).
    reps = max(20, 4 * args.repeats)
    t, o = time_block(call, reps)
    profiles = [{"problem": problem, "framework": "flowjax", "n": n,
                 "model_ms": 1e3 * min(t), "other_cores": o}]
    if setup is not None:
        t, o, waited = torch_side(torch_time, key, "model", reps,
                                  WAIT["budget_s"] - WAIT["waited_s"], BLOCK_S[0])
        WAIT["waited_s"] += waited
        profiles.append({"problem": problem, "framework": "torch", "n": n,
                         "model_ms": 1e3 * min(t), "other_cores": o})
    return rows, samples, profiles, setup


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds of 2 calls, digits at 1,000 images only, a smaller U-Net "
                             "batch (2-3 minutes on 2 idle cores)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="turns each framework takes (3 with --quick, else 5)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per round (2 with --quick, else 3)")
    parser.add_argument("--n2d", type=int, nargs="+", default=[10_000, 1000],
                        help="2-D samples per solve (the headline ratio is at 10,000)")
    parser.add_argument("--digits-n", type=int, nargs="+", default=None,
                        help="digits images per solve (1,000 with --quick, else 1,000 10,000; "
                             "0: skip)")
    parser.add_argument("--unet-n", type=int, default=None,
                        help="U-Net images (flowjax only; 256 with --quick, else 1,000; 0: skip)")
    parser.add_argument("--train-steps", type=int, default=2000, help="2-D training steps")
    parser.add_argument("--digits-steps", type=int, default=None,
                        help="digits training steps (1,000 with --quick, else 2,000)")
    parser.add_argument("--no-torch", action="store_true", help="flowjax only")
    parser.add_argument("--wait-idle", type=float, default=None, metavar="SECONDS",
                        help="in all, how long to wait for an idle CPU before timing and to "
                             "retime disturbed blocks (40 with --quick, else 600; 0: never)")
    parser.add_argument("--out", default="workdir/sampling_speed.json")
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.digits_n = args.digits_n or ([1000] if args.quick else [1000, 10_000])
    args.unet_n = (256 if args.quick else 1000) if args.unet_n is None else args.unet_n
    args.digits_steps = args.digits_steps or (1000 if args.quick else 2000)
    args.wait_idle = (40.0 if args.quick else 600.0) if args.wait_idle is None else args.wait_idle
    WAIT["budget_s"] = args.wait_idle
    BLOCK_S[0] = 4.0 if args.quick else 30.0
    ROW_S[0] = 6.0 if args.quick else 60.0
    start = time.perf_counter()
    log = functools.partial(print, flush=True)
    info = machine()
    load_start = _load()
    log(f"{info['cpu']}, {info['cores']} cores, {info['devices']}; load {load_start}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    missing = [] if args.no_torch else missing_peers()
    if missing:
        log(f"SKIPPED the torch side: {', '.join(missing)} not installed")
    use_torch = not args.no_torch and not missing
    torch_side = TorchSide(use_torch)
    methods = ("euler", "dopri5")

    log("training (I-CFM, x0 ~ N(0, I), Adam 1e-3, batch 256) ...")
    params2d, train2d = train_mlp("2d", args.train_steps)
    log(f"  2d: {train2d['steps']} steps, loss {train2d['final_loss']:.3f}, "
        f"{train2d['seconds']:.1f} s")
    trained, params_dg = [train2d], None
    if any(n > 0 for n in args.digits_n):
        params_dg, train_dg = train_mlp("digits", args.digits_steps)
        trained.append(train_dg)
        log(f"  digits: {train_dg['steps']} steps, loss {train_dg['final_loss']:.3f}, "
            f"{train_dg['seconds']:.1f} s")

    cases = [("2d", _mlp((64, 64, 64), "selu"), "selu", params2d, 2, n) for n in args.n2d]
    cases += [("digits", _mlp((256, 256, 256), "silu"), "silu", params_dg, 64, n)
              for n in args.digits_n if n > 0]
    WAIT["waited_s"] += wait_idle(args.wait_idle / 2, log)
    rows, profiles, refs, torch_info = [], [], {}, {}
    log(f"timing: {args.rounds} rounds of {args.repeats} calls per sampler and framework ...")
    try:
        for i, (problem, module, act, params, dim, n) in enumerate(cases):
            x0 = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(10), i), (n, dim))
            params = jax.tree.map(jnp.asarray, params)
            job = None
            if use_torch:
                job = {"key": f"{problem}-{n}", "activation": act, "layers": torch_layers(params),
                       "x0": np.asarray(x0), "methods": methods, "threads": os.cpu_count(),
                       "torchcfm": problem == "2d"}
            r, samples, p, setup = bench_case(problem, module, params, x0, None, methods, args,
                                              torch_side, log, job=job)
            ref, refs[(problem, n)] = reference(module, params, x0, None)
            for row in r:
                mine = samples[(row["framework"], "euler" if row["solver"].startswith("euler")
                                else "dopri5")]
                row["max_abs_err"] = float(np.max(np.abs(mine - ref)))
                theirs = samples.get(("torch", "euler" if row["solver"].startswith("euler")
                                      else "dopri5"))
                if theirs is not None and row["framework"] != "torch":
                    row["max_abs_diff"] = float(np.max(np.abs(mine - theirs)))
            rows += r
            profiles += p
            if setup is not None:
                torch_info[problem] = setup["network"]
                torch_info["threads"] = setup["threads"]
        reps = max(20, 4 * args.repeats)
        ops = {"flowjax": flowjax_ops(max(args.n2d), reps)}
        if use_torch:
            ops["torch"] = torch_side(torch_ops, max(args.n2d), reps, os.cpu_count())
        if args.unet_n:
            unet = models.UNet(channels=16, channel_mult=(1, 2), num_res_blocks=1,
                               attention_resolutions=(4,), num_heads=2, num_groups=8,
                               dropout=0.1, num_classes=10)
            x0 = jax.random.normal(jax.random.PRNGKey(11), (args.unet_n, 8, 8, 1))
            labels = jnp.arange(args.unet_n) % 10
            uparams = unet.init(jax.random.PRNGKey(0), x0[:1], jnp.zeros((1,)),
                                labels[:1])["params"]
            unet_args = argparse.Namespace(rounds=1, repeats=2)
            r, _, p, _ = bench_case("unet", unet, uparams, x0, labels, ("euler",), unet_args,
                                    torch_side, log, loop=False)
            rows += r
            profiles += p
    finally:
        torch_side.close()

    order = {"flowjax": 0, "jax-loop": 1, "torch": 2}
    rows.sort(key=lambda r: (r["problem"] == "unet", r["problem"], r["n"], r["solver"],
                             order[r["framework"]]))
    profiles.sort(key=lambda p: (p["problem"] == "unet", p["problem"], p["n"],
                                 order[p["framework"]]))
    rat = ratios(rows)
    seconds = time.perf_counter() - start

    print("\n" + tables(rows, rat, profiles, ops, refs))
    print("\n(unet: flowjax only, untrained, for reference; jax-loop: a bare lax.fori_loop "
          "Euler on the same network)")
    if missing:
        print(f"\nThe torch side was SKIPPED: {', '.join(missing)} not installed.")
    busy = [r for r in rows if (r["other_cores"] or 0) > BUSY]
    if busy:
        print(f"\nWARNING: other processes kept up to "
              f"{max(r['other_cores'] for r in busy):.2f} cores busy during {len(busy)} of the "
              f"timed rows: these timings (torch's above all) are not reliable; rerun on an "
              f"idle machine (--wait-idle SECONDS waits longer for one).")
    headline = sorted((r for r in rat if r["problem"] == "2d" and r["solver"].startswith("euler")),
                      key=lambda r: (r["n"] != 10_000, -r["n"]))  # 10,000 points, else the most
    disturbed = None
    if headline:
        r = headline[0]
        disturbed = any(b["problem"] == "2d" and b["solver"] == r["solver"] and b["n"] == r["n"]
                        and b["framework"] in ("flowjax", "torch") for b in busy)
        print(f"\nHEADLINE (2-D Euler-100, {r['n']:,} samples): flowjax / torchdiffeq = "
              f"{r['ratio']:.2f}x samples/s"
              + (" [UNRELIABLE: the machine was busy, see the warning]" if disturbed else ""))
    else:
        print("\nHEADLINE: not measured (no torch side)")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": info, "args": vars(args), "missing_peers": missing,
                   "torch": torch_info, "train": trained,
                   "reference": {"solver": "flowjax dopri5", "tol": REF_TOL,
                                 "nfe": {f"{p} {n}": v for (p, n), v in refs.items()}},
                   "load_average": {"start": load_start, "end": _load()},
                   "busy_rows": len(busy), "waited_s": WAIT["waited_s"], "rows": rows,
                   "ratios": rat, "profile": profiles, "ops_ms": ops,
                   "headline": {"ratio": headline[0]["ratio"] if headline else None,
                                "disturbed": disturbed},
                   "seconds": seconds}, f, indent=1)
    png = os.path.splitext(args.out)[0] + ".png"
    plot(rows, profiles, png)
    print(f"\n{info['cpu']} ({info['cores']} cores); load {load_start} -> {_load()}; waited "
          f"{WAIT['waited_s']:.0f} s for an idle CPU; {seconds:.0f} s; wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
