"""Training throughput: flowjax against TorchCFM and Meta flow_matching, side by side.

The same velocity field, the same data, the same optimizer, the same thread count:

  models   `torchcfm`  TorchCFM's 2-D example MLP, `MLP(dim=2, time_varying=True, w=64)`:
                       [x, t] -> 3 x Linear(64) + SELU -> 2 (8,706 parameters)
           `wide`      Meta flow_matching's 2-D example MLP: [x, t] -> 4 x Linear(512) +
                       SiLU -> 2 (791,042 parameters)
           `unet`      (--unet) a small image U-Net on 28x28x1, batch 32: flowjax's UNet
                       against TorchCFM's `UNetModelWrapper` as in its MNIST example
                       (32 channels, mult (1, 2, 2), 1 res block), with attention at
                       the 7x7 level only (full 28x28 attention made the step minutes on
                       2 cores); the two nets are not the same code, so their parameter
                       counts are printed beside them
  data     x0 ~ 8 Gaussians, x1 ~ two moons (TorchCFM's 2-D example), a fresh batch
           every step, drawn natively by each framework (torch ops on the torch side,
           so the peers are not slowed by NumPy); 28x28 images are N(0, I) stand-ins
  methods  `icfm`  independent pairs, the rectified-flow path (sigma = 0)
           `otcfm` exact minibatch OT pairs: TorchCFM's `ExactOptimalTransportConditional
                   FlowMatcher` (POT's `emd`, then a draw from the plan); flowjax's
                   `couplings.ExactOT` (SciPy's assignment through a host callback)
  runners  `flowjax-step`  a jitted `make_batches` + `train.make_train_step`, per step
           `flowjax-scan`  `make_batches` of K batches (OT pairs solved for all K in
                           one host call, in parallel threads) + `make_multi_step(K)`
           `torchcfm`      TorchCFM's `ConditionalFlowMatcher` classes, its example loop
           `flow_matching` Meta's `AffineProbPath(CondOTScheduler())`, its example loop
                           (it has no OT coupling: I-CFM only)

Adam at 1e-3 everywhere; flowjax also keeps an EMA of the parameters (the peers' loops
do not), so it does slightly more work per step. Each case runs in its own process,
pinned to the same `--threads` cores (torch gets `set_num_threads`; XLA's pool follows
the affinity), so that peak memory is per case. Reported: steps/s over at least
`--seconds` of steady state after a warm-up, the ratio to TorchCFM, the time to the
first step (flowjax: tracing + XLA compilation + one step), and the peak resident
memory of the process and its growth after the imports.

    .venv/bin/python benchmarks/train_speed.py --quick --out workdir/train_speed.json
    .venv/bin/python benchmarks/train_speed.py --out workdir/train_speed_full.json --unet

`--quick` runs the batch-256 cases of both MLPs (~3 minutes here); the full run adds
batch 4,096 and `--unet` the image step. Timings on a shared machine are noisy:
compare ratios within one run, with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata

MODELS = {"torchcfm": dict(width=64, depth=3, act="selu"),
          "wide": dict(width=512, depth=4, act="silu")}
PEERS = ("torchcfm", "flow_matching")


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(run_steps, block, seconds, warmup):
    """Steady-state steps/s: calibrate on `warmup` steps, then time >= `seconds`."""
    t = time.perf_counter()
    block(run_steps(warmup))
    per_step = (time.perf_counter() - t) / warmup
    n = max(warmup, int(seconds / max(per_step, 1e-7)))
    t = time.perf_counter()
    block(run_steps(n))
    return n / (time.perf_counter() - t), n


# --------------------------------------------------------------------------- flowjax

def _flowjax_case(case, seconds):
    import functools

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from flowjax import couplings, data, losses, models, paths, train

    base_rss = _rss_mb()
    b, k = case["batch"], case["k"]
    if case["model"] == "unet":
        module = models.UNet(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                             attention_resolutions=(7,), num_heads=1, dropout=0.0,
                             num_groups=32)
        shape = (28, 28, 1)
    else:
        spec = MODELS[case["model"]]
        module = models.MLP(hidden=(spec["width"],) * spec["depth"], time_dim=None,
                            activation=getattr(nn, spec["act"]))
        shape = (2,)
    apply_fn = models.model_fn(module)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape), jnp.zeros(1))["params"]
    optimizer = optax.adam(1e-3)
    loss_fn = functools.partial(losses.cfm_loss, apply_fn=apply_fn, path=paths.RectifiedFlow())
    coupling = couplings.ExactOT() if case["method"] == "otcfm" else None

    @jax.jit
    def make_batches(key):
        k0, k1, kp = jax.random.split(key, 3)
        if case["model"] == "unet":
            x0 = jax.random.normal(k0, (k, b) + shape)
            x1 = jnp.tanh(jax.random.normal(k1, (k, b) + shape))
        else:
            x0 = data.eight_gaussians(k0, k * b).reshape(k, b, 2)
            x1 = data.moons(k1, k * b).reshape(k, b, 2)
        if coupling is not None:
            (x0, x1), _ = jax.vmap(coupling)(jax.random.split(kp, k), x0, x1)
        if case["runner"] == "flowjax-step":
            x0, x1 = x0[0], x1[0]
        return {"x0": x0, "x1": x1}

    if case["runner"] == "flowjax-step":
        step = train.make_train_step(loss_fn, optimizer)
    else:
        step = train.make_multi_step(loss_fn, optimizer)
    state = train.create_train_state(jax.random.PRNGKey(1), params, optimizer)
    data_key = jax.random.PRNGKey(2)
    holder = {"state": state, "i": 0}

    def run_calls(n_calls):
        s = holder["state"]
        for _ in range(n_calls):
            s, _ = step(s, make_batches(jax.random.fold_in(data_key, holder["i"])))
            holder["i"] += 1
        holder["state"] = s
        return s

    t = time.perf_counter()
    jax.block_until_ready(run_calls(1))
    first = time.perf_counter() - t
    calls_per_s, n = _timed(run_calls, jax.block_until_ready, seconds, warmup=max(2, 20 // k))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    return {"steps_per_s": calls_per_s * k, "steps_timed": n * k, "first_step_s": first,
            "params": int(n_params), "base_rss_mb": base_rss}


# --------------------------------------------------------------------------- torch peers

def _torch_samplers(torch):
    """8 Gaussians and two moons as torch ops, the same distributions as flowjax.data."""
    import math

    def eight_gaussians(n, radius=5.0, std=0.1 ** 0.25):
        angles = torch.randint(0, 8, (n,)) * (2 * math.pi / 8)
        centers = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
        return centers + std * torch.randn(n, 2)

    def moons(n, noise=0.2):
        theta = math.pi * torch.rand(n)
        upper = (torch.rand(n) < 0.5)[:, None]
        outer = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
        inner = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], 1)
        return 3.0 * (torch.where(upper, outer, inner) + noise * torch.randn(n, 2)) - 1.0

    return eight_gaussians, moons


def _torch_case(case, seconds, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base_rss = _rss_mb()
    b = case["batch"]
    if case["model"] == "unet":
        from torchcfm.models.unet.unet import UNetModelWrapper

        # attention_resolutions counts image_size // ds: "7" is ds = 4, the 7x7 level.
        net = UNetModelWrapper(dim=(1, 28, 28), num_channels=32, num_res_blocks=1,
                               channel_mult=(1, 2, 2), attention_resolutions="7", dropout=0.0)

        def field(xt, t):
            return net(t, xt)

        def batch():
            return torch.randn(b, 1, 28, 28), torch.tanh(torch.randn(b, 1, 28, 28))
    else:
        spec = MODELS[case["model"]]
        act = {"selu": torch.nn.SELU, "silu": torch.nn.SiLU}[spec["act"]]
        layers, width_in = [], 3
        for _ in range(spec["depth"]):
            layers += [torch.nn.Linear(width_in, spec["width"]), act()]
            width_in = spec["width"]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(width_in, 2))
        if case["model"] == "torchcfm":  # TorchCFM's own class, the same layers
            from torchcfm.models import MLP
            net = MLP(dim=2, time_varying=True, w=64)
        eight_gaussians, moons = _torch_samplers(torch)

        def field(xt, t):
            return net(torch.cat([xt, t[:, None]], dim=-1))

        def batch():
            return eight_gaussians(b), moons(b)

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    if case["runner"] == "torchcfm":
        from torchcfm.conditional_flow_matching import (
            ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher)
        fm = (ExactOptimalTransportConditionalFlowMatcher(sigma=0.0) if case["method"] == "otcfm"
              else ConditionalFlowMatcher(sigma=0.0))

        def one_step():
            opt.zero_grad()
            x0, x1 = batch()
            t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
            loss = torch.mean((field(xt, t) - ut) ** 2)
            loss.backward()
            opt.step()
            return loss
    else:
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler
        path = AffineProbPath(scheduler=CondOTScheduler())

        def one_step():
            x0, x1 = batch()
            t = torch.rand(x1.shape[0])
            s = path.sample(t=t, x_0=x0, x_1=x1)
            loss = torch.pow(field(s.x_t, s.t) - s.dx_t, 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

    def run_steps(n):
        for _ in range(n):
            loss = one_step()
        return loss

    t = time.perf_counter()
    run_steps(1).item()
    first = time.perf_counter() - t
    steps_per_s, n = _timed(run_steps, lambda loss: loss.item(), seconds, warmup=10)
    return {"steps_per_s": steps_per_s, "steps_timed": n, "first_step_s": first,
            "params": int(sum(p.numel() for p in net.parameters())), "base_rss_mb": base_rss}


# --------------------------------------------------------------------------- orchestration

def worker(case, seconds, threads):
    if case["runner"].startswith("flowjax"):
        out = _flowjax_case(case, seconds)
    else:
        out = _torch_case(case, seconds, threads)
    out["peak_rss_mb"] = _rss_mb()
    return out


def _available(module):
    try:
        metadata.version(module)
        return True
    except metadata.PackageNotFoundError:
        return False


def cases_for(args):
    peers = [p for p in PEERS if _available(p)]
    runners = ["flowjax-step", "flowjax-scan"] + peers
    out = []
    for model in args.models:
        for batch in args.batches:
            for method in args.methods:
                for runner in runners:
                    if runner == "flow_matching" and method == "otcfm":
                        continue  # Meta's library has no OT coupling
                    out.append(dict(model=model, batch=batch, method=method, runner=runner,
                                    k=args.k if runner == "flowjax-scan" else 1))
    if args.unet:
        for runner in ["flowjax-step", "flowjax-scan"] + [p for p in peers if p == "torchcfm"]:
            out.append(dict(model="unet", batch=32, method="icfm", runner=runner,
                            k=args.unet_k if runner == "flowjax-scan" else 1))
    return out, [p for p in PEERS if p not in peers]


def run_case(case, args):
    env = dict(os.environ)
    # One CPU device: drop the test suite's 8 fake devices if they are in the environment.
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(case),
           "--seconds", str(args.seconds), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {**case, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return {**case, **json.loads(lines[-1][len("RESULT "):])}


def format_table(rows):
    lines = ["| model | batch | method | runner | steps/s | x TorchCFM | first step | "
             "peak RSS (growth) | params |", "|---|---|---|---|---|---|---|---|---|"]
    ref = {(r["model"], r["batch"], r["method"]): r["steps_per_s"] for r in rows
           if r["runner"] == "torchcfm" and "error" not in r}
    for r in rows:
        name = r["runner"] + (f" (K={r['k']})" if r["runner"] == "flowjax-scan" else "")
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['method']} | {name} | error: "
                         f"{r['error'][:60]} | | | | |")
            continue
        base = ref.get((r["model"], r["batch"], r["method"]))
        ratio = f"{r['steps_per_s'] / base:.1f}x" if base else "-"
        lines.append(
            f"| {r['model']} | {r['batch']:,} | {r['method']} | {name} | "
            f"{r['steps_per_s']:,.0f} | {ratio} | {r['first_step_s']:.2f} s | "
            f"{r['peak_rss_mb']:.0f} MB (+{r['peak_rss_mb'] - r['base_rss_mb']:.0f}) | "
            f"{r['params']:,} |")
    return "\n".join(lines)


def plot(rows, filename):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "error" not in r]
    groups = sorted({(r["model"], r["batch"], r["method"]) for r in good})
    runners = sorted({r["runner"] for r in good})
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups)), 4))
    width = 0.8 / max(len(runners), 1)
    for j, runner in enumerate(runners):
        xs, ys = [], []
        for i, g in enumerate(groups):
            for r in good:
                if (r["model"], r["batch"], r["method"]) == g and r["runner"] == runner:
                    xs.append(i + j * width)
                    ys.append(r["steps_per_s"])
        ax.bar(xs, ys, width=width, label=runner)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{m}\nB={b}\n{meth}" for m, b, meth in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("training steps / s")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)


def machine_info(threads):
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(), "threads": threads}
    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "torchcfm", "flow_matching", "POT",
                "scipy"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 256 only")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=["icfm", "otcfm"],
                        choices=["icfm", "otcfm"])
    parser.add_argument("--k", type=int, default=20, help="steps per scan-fused call")
    parser.add_argument("--unet", action="store_true", help="also time the image U-Net step")
    parser.add_argument("--unet-k", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=None,
                        help="steady-state seconds per case (default 3, --quick 1.5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="workdir/train_speed.json")
    parser.add_argument("--plot", default=None, help="PNG file (default: next to --out)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads < 1 or args.threads > os.cpu_count():
        parser.error(f"--threads must lie in [1, {os.cpu_count()}], got {args.threads}")

    if args.worker is not None:
        os.sched_setaffinity(0, set(range(args.threads)))
        print("RESULT " + json.dumps(worker(json.loads(args.worker), args.seconds,
                                            args.threads)), flush=True)
        return

    args.batches = args.batches or ([256] if args.quick else [256, 4096])
    args.seconds = args.seconds or (1.5 if args.quick else 3.0)
    cases, missing = cases_for(args)
    for peer in missing:
        print(f"[skipped] {peer} is not installed (pip install -e '.[bench]', see "
              "benchmarks/README.md)")
    start = time.perf_counter()
    rows = []
    for case in cases:
        row = run_case(case, args)
        rows.append(row)
        shown = "error" if "error" in row else f"{row['steps_per_s']:,.0f} steps/s"
        print(f"  {case['model']:9s} B={case['batch']:<5d} {case['method']:5s} "
              f"{case['runner']:14s} {shown}", flush=True)
    print()
    print(format_table(rows))
    info = machine_info(args.threads)
    info["wall_s"] = time.perf_counter() - start
    print(f"\n{info}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)
    plot(rows, args.plot or os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
    main()
