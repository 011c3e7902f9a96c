"""SIGKILL a toy2d run at random moments, resume it each time, and compare with a clean run.

    .venv/bin/python benchmarks/preemption.py --kills 10 --out workdir/preemption.json

1. Runs the toy2d experiment once without interruption (workdir `A`).
2. Draws `--kills` distinct random steps over the run. In workdir `B`, for
   each of them: starts the same command (which resumes), waits until the
   run has logged that step, sleeps a random time of up to one save
   interval's worth of training, and sends SIGKILL. It records the progress
   at the kill (the last step logged in `metrics.jsonl`, which trails the
   training by at most one call), the newest complete checkpoint, and any
   half-written (temporary) checkpoint directory. Then it lets the run finish.
3. Checks that the final train states of `A` and `B` (params, EMA, Adam
   state, step, key) are bit-identical, that every training loss logged by
   `B` equals `A`'s at the same step, that `results.json` is identical, and
   that no kill lost more than one save interval (`checkpoint_every`) of
   steps (the steps a restart re-trains).

The run: exact-OT CFM (`otcfm`, SciPy on the host) on N(0, I) -> moons, a
2x32 MLP, `steps_per_call` 10 steps fused per call, a checkpoint every 100
steps (asynchronous orbax saves). Prints a table and writes `--out` (JSON)
and a plot next to it. The machine is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "toy2d", "configs", "tiny.py")


def overrides(steps: int, every: int, per_call: int) -> list[str]:
    return ["--config.methods=('otcfm',)", f"--config.num_train_steps={steps}",
            f"--config.steps_per_call={per_call}", f"--config.checkpoint_every={every}",
            "--config.eval.euler_steps=(1,)", "--config.plot=False"]


def launch(workdir: str, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "experiments.toy2d", f"--config={CONFIG}",
           f"--workdir={workdir}", *extra]
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def logged_steps(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = []
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the kill
                pass
        return rows


def checkpoints(workdir: str) -> tuple[list[int], list[str]]:
    """Complete step directories, and orbax temporary (half-written) ones."""
    d = os.path.join(workdir, "checkpoints", "normal_otcfm")
    names = os.listdir(d) if os.path.isdir(d) else []
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


def final_state(workdir: str, step: int):
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", "normal_otcfm", str(step), "state")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=100, help="checkpoint_every")
    parser.add_argument("--per-call", type=int, default=10, help="steps_per_call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=os.path.join(ROOT, "workdir", "preemption"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    extra = overrides(args.steps, args.every, args.per_call)
    a, b = os.path.join(args.workdir, "A"), os.path.join(args.workdir, "B")
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)

    t0 = time.perf_counter()
    proc = launch(a, extra)
    first = None
    while proc.poll() is None:
        if first is None and logged_steps(a):
            first = time.time()
        time.sleep(0.05)
    if proc.returncode != 0:
        sys.exit(f"uninterrupted run failed:\n{proc.stderr.read()[-2000:]}")
    rows_a = logged_steps(a)
    # Training lasts from the first metrics line to the last write of the file.
    train_seconds = max(os.path.getmtime(os.path.join(a, "metrics.jsonl")) - first, 1.0)
    print(f"uninterrupted run: {time.perf_counter() - t0:.1f} s wall, "
          f"~{train_seconds:.1f} s training")

    # Kill moments: 10 distinct random steps over the run, each plus a random delay
    # of up to one save interval's time, so that some kills land inside a save.
    targets = sorted(rng.sample(range(args.per_call, args.steps - args.every), args.kills))
    seconds_per_interval = train_seconds * args.every / args.steps
    kills = []
    for i, target in enumerate(targets):
        proc = launch(b, extra)
        while proc.poll() is None and max((r["step"] for r in logged_steps(b)),
                                          default=0) < target:
            time.sleep(0.01)
        if proc.poll() is not None:
            sys.exit(f"run {i} ended before its kill:\n{proc.stderr.read()[-2000:]}")
        delay = rng.uniform(0.0, seconds_per_interval)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        progress = max((r["step"] for r in logged_steps(b)), default=0)
        complete, partial = checkpoints(b)
        latest = complete[-1] if complete else 0
        kills.append({"kill": i + 1, "target_step": target, "delay_s": round(delay, 3),
                      "progress": progress, "latest_checkpoint": latest,
                      "steps_lost": progress - latest, "half_written_dirs": len(partial)})
        print(kills[-1])
    proc = launch(b, extra)
    _, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"final resume failed:\n{err[-2000:]}")

    import jax
    import numpy as np

    sa, sb = final_state(a, args.steps), final_state(b, args.steps)
    leaves_a, leaves_b = jax.tree.leaves(sa), jax.tree.leaves(sb)
    identical = len(leaves_a) == len(leaves_b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))
    loss_a = {r["step"]: r["loss"] for r in rows_a}
    rows_b = logged_steps(b)
    same_losses = all(loss_a[r["step"]] == r["loss"] for r in rows_b)
    with open(os.path.join(a, "results.json")) as fa, open(os.path.join(b, "results.json")) as fb:
        same_results = json.load(fa) == json.load(fb)
    max_lost = max(k["steps_lost"] for k in kills)
    summary = {
        "kills": len(kills), "steps": args.steps, "checkpoint_every": args.every,
        "steps_per_call": args.per_call, "final_state_bit_identical": identical,
        "losses_identical": same_losses, "logged_losses_compared": len(rows_b),
        "results_identical": same_results, "max_steps_lost": max_lost,
        "mean_steps_lost": sum(k["steps_lost"] for k in kills) / len(kills),
        "within_one_save_interval": max_lost <= args.every,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "jax": jax.__version__, "wall_s": round(time.perf_counter() - t0, 1),
        "per_kill": kills,
    }
    print("\n| kill | at step | + delay (s) | progress | latest checkpoint | steps lost | "
          "half-written dirs |")
    print("|---|---|---|---|---|---|---|")
    for k in kills:
        print(f"| {k['kill']} | {k['target_step']} | {k['delay_s']} | {k['progress']} | "
              f"{k['latest_checkpoint']} | {k['steps_lost']} | {k['half_written_dirs']} |")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_kill"}, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([k["kill"] for k in kills], [k["steps_lost"] for k in kills])
        ax.axhline(args.every, color="k", ls="--", label="one save interval")
        ax.set_xlabel("kill")
        ax.set_ylabel("steps re-trained")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.splitext(args.out)[0] + ".png", dpi=120)
    ok = identical and same_losses and same_results and summary["within_one_save_interval"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
