"""Inject the faults of long unattended runs, several times each, and tabulate what happened.

    .venv/bin/python benchmarks/fault_injection.py --quick --out workdir/fault_injection.json

Each fault is injected `--tries` times (with `--quick`: fewer of the slow
ones), each time at a random moment or place drawn from `--seed`; a try is
`ok` when the library answered as it should, and `data lost` is the training
progress (in optimizer steps) that a restart would have to redo, which must
not exceed one save interval (`SAVE_EVERY` steps here):

  nan-1-step        one NaN batch somewhere in 40 scan-fused steps (bare train
                    state): the step is skipped and counted, nothing else moves
  nan-K-steps       NaN batches from a random step on (toy2d `train_one`, limit
                    K = 15): the run stops with NonFiniteStop before saving
                    again; the latest checkpoint restores with finite params
  diverge-cli       `python -m experiments.toy2d --config.learning_rate=1e30`:
                    the loss overflows, the run exits 1 with one line naming
                    its last checkpoint, which restores
  sinkhorn          a Sinkhorn coupling in the loss meets batches with costs of
                    ~1e38 (a NaN plan) at random steps, or runs with 10
                    iterations at a tiny epsilon (every batch): those batches
                    are paired independently, `coupling_fallback` counts them,
                    no NaN reaches the loss, no step is skipped
  truncate/flip/delete   a file of the latest of 3 checkpoints (half the time
                    the one holding the arrays, else any) is cut in half /
                    has 4 bytes inverted at a random offset / is deleted:
                    restore falls back to the previous one with a warning (or
                    restores the latest if that file was not needed), and the
                    state it returns equals the one saved, bit for bit
  enospc            the disk "fills up" (OSError ENOSPC from the writes of
                    orbax) during the 2nd or 3rd asynchronous save: a clear
                    OSError naming the directory; the earlier ones restore
  kill-9            SIGKILL of a toy2d training process (3x128 MLP, a save
                    every 500 steps, blocking saves: the configs' default) at a
                    random moment, then the same command again: it resumes and
                    finishes. Lost: the last logged step minus the newest
                    complete checkpoint, at most one interval.
                    `kill-9-async-saves`: the same with
                    `--config.async_checkpoint=True`; a kill that lands while a
                    save is being written in the background (~0.2 s here) also
                    loses the steps trained since that save began
  shape-mismatch    the killed run's workdir resumed with another MLP width:
                    exit 2, one line naming the leaf and both shapes, the
                    checkpoints untouched
  cli-unknown-key / cli-data-dir / cli-workdir   `--config.nope=1`, a data_dir
                    that does not exist or is a file, a workdir that cannot
                    be created: exit 2 and one `error:` line, no traceback,
                    before JAX compiles anything

Prints the table, writes `--out` (JSON, with every try and the machine) and a
bar chart next to it.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from _platform import cpu_name  # noqa: E402  (benchmarks/ is on sys.path)

SAVE_EVERY = 10  # steps between checkpoints in every fault below
TOY = os.path.join(ROOT, "experiments", "toy2d", "configs", "tiny.py")


# --------------------------------------------------------------------------- bare train state

@functools.lru_cache(maxsize=None)
def _problem(coupling_name: str = "independent", per_call: int = 10):
    """A 2x32 MLP learning N(0, I) -> moons with CFM; its K-step function (compiled once)."""
    import jax
    import jax.numpy as jnp
    import optax

    from flowjax import couplings, losses, models, paths, train

    module = models.MLP(hidden=(32, 32), time_dim=16)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    cfm = functools.partial(losses.cfm_loss, apply_fn=models.model_fn(module),
                            path=paths.RectifiedFlow())
    if coupling_name == "independent":
        loss = cfm
    else:  # the coupling's aux forwarded into the step metrics, pairs made on scaled points
        coupling = {"sinkhorn": couplings.Sinkhorn(0.05, scale_free=True),
                    "sinkhorn-10-iterations": couplings.Sinkhorn(1e-4, max_iterations=10)}[
            coupling_name]

        def loss(params, key, batch):
            k_pair, k_loss = jax.random.split(key)
            s = batch["scale"]
            (x0, x1), pair = coupling(k_pair, batch["x0"] * s, batch["x1"] * s)
            value, aux = cfm(params, k_loss, {"x0": x0 / s, "x1": x1 / s})
            return value, {**aux, "coupling_fallback": pair["fallback"],
                           "pairs_finite": jnp.all(jnp.isfinite(x0 / s))}

    opt = optax.adam(1e-3)
    return params, opt, train.make_multi_step(loss, opt, ema_decay=0.99)


def _batches(seed: int, calls: int, per_call: int = 10, batch: int = 128):
    import jax

    from flowjax import data

    k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
    n = calls * per_call * batch
    return {"x0": data.standard_normal(k0, n).reshape(calls, per_call, batch, 2),
            "x1": data.moons(k1, n).reshape(calls, per_call, batch, 2)}


def _leaves_equal(a, b) -> bool:
    import jax
    import numpy as np

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def _finite(tree) -> bool:
    import jax
    import numpy as np

    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


# --------------------------------------------------------------------------- faults

def nan_one_step(rng, workdir):
    import jax
    import numpy as np

    from flowjax import train

    params, opt, steps = _problem()
    bad = rng.randrange(40)
    b = _batches(rng.randrange(10 ** 6), 4)
    b["x1"] = b["x1"].reshape(40, 128, 2).at[bad].set(np.nan).reshape(4, 10, 128, 2)
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    skipped = []
    for c in range(4):
        state, m = steps(state, jax.tree.map(lambda x, c=c: x[c], b))
        skipped += list(np.asarray(m["skipped"]))
    ok = (sum(skipped) == 1 and skipped[bad] == 1 and int(state.step) == 39
          and int(state.nonfinite_total) == 1 and _finite(state.params))
    return dict(ok=ok, lost=0, outcome="skipped 1 step, counted" if ok else "NOT skipped",
                detail=dict(nan_at_step=bad, skipped=int(sum(skipped))))


def nan_k_steps(rng, workdir):
    import jax

    from experiments import _loop
    from experiments._workdir import NonFiniteStop
    from experiments.toy2d import methods as toy_methods
    from experiments.toy2d import train as toy2d
    from experiments.toy2d.configs import tiny
    from flowjax import train

    config = tiny.get_config()
    config.methods, config.sharding.num_devices = ("icfm",), 1
    config.num_train_steps, config.steps_per_call, config.checkpoint_every = 100, 10, SAVE_EVERY
    config.max_consecutive_nonfinite = 15
    start = rng.randrange(12, 45)  # the first NaN step (mid-call in general)
    calls = []

    make = toy2d.sampled_batches(config, "normal")

    def batches(key):
        b = make(key)
        first = len(calls) * 10
        calls.append(key)
        if first + 10 <= start:
            return b
        return {**b, "x1": b["x1"].at[max(start - first, 0):].set(float("nan"))}

    method, _ = toy_methods.make_methods(config, ["icfm"])["icfm"]
    init = method.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(0)
    stream = _loop.KeyedBatches(batches, _loop.named_key(key, "data"), steps_per_call=10)
    try:
        _loop.train_loop(method, stream, key, config, workdir, name="normal/icfm",
                         writer=train.MetricsWriter(workdir))
        return dict(ok=False, lost=None, outcome="did NOT stop", detail={})
    except NonFiniteStop as e:
        stop = e
    ckpt = train.Checkpointer(os.path.join(workdir, "checkpoints", "normal_icfm"),
                              save_every=SAVE_EVERY)
    abstract = jax.eval_shape(lambda: train.create_train_state(
        jax.random.PRNGKey(0), init, method.optimizer))
    restored = ckpt.restore(abstract)
    ckpt.close()
    applied = int(restored.state.step)
    lost = start - applied  # good updates made before the streak that no checkpoint holds
    ok = (restored.step == stop.latest and _finite(restored.state.params)
          and stop.step <= start + 3 * SAVE_EVERY and 0 <= lost <= SAVE_EVERY)
    return dict(ok=ok, lost=lost, save_every=SAVE_EVERY,
                outcome="stopped, last checkpoint restores",
                detail=dict(first_nan=start, stopped_at=stop.step, latest=restored.step,
                            applied_in_latest=applied))


def sinkhorn(rng, workdir):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from flowjax import train

    forced = rng.random() < 0.34  # a solver that cannot converge, on every batch
    params, opt, steps = _problem("sinkhorn-10-iterations" if forced else "sinkhorn")
    b = _batches(rng.randrange(10 ** 6), 2)
    bad = set(range(20)) if forced else set(rng.sample(range(20), 3))
    scale = np.ones((2, 10))
    if not forced:
        for i in bad:  # costs ~1e38 in float32: the plan overflows
            scale[i // 10, i % 10] = 1e19
    b["scale"] = jnp.asarray(scale)[..., None, None]
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    fallbacks, finite, skipped = [], True, 0
    for c in range(2):
        state, m = steps(state, jax.tree.map(lambda x, c=c: x[c], b))
        fallbacks += list(np.asarray(m["coupling_fallback"]))
        finite &= bool(np.all(np.asarray(m["pairs_finite"]))) and bool(
            np.all(np.isfinite(np.asarray(m["loss"]))))
        skipped += int(np.sum(m["skipped"]))
    got = {i for i, f in enumerate(fallbacks) if f}
    ok = got == bad and finite and skipped == 0
    return dict(ok=ok, lost=0, outcome=f"fell back on {len(got)}/{len(bad)} failed batches, "
                f"no NaN, 0 skipped" if ok else "WRONG",
                detail=dict(forced_no_convergence=forced, failed=sorted(bad),
                            fell_back=sorted(got), skipped=skipped))


def _three_checkpoints(rng, directory):
    """Trains 30 steps saving at 10, 20, 30; returns the saved states (host copies)."""
    import jax

    from flowjax import train

    params, opt, steps = _problem()
    b = _batches(rng.randrange(10 ** 6), 3)
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    saved = {}
    with train.Checkpointer(directory, save_every=SAVE_EVERY, keep=3) as ckpt:
        for c in range(3):
            state, _ = steps(state, jax.tree.map(lambda x, c=c: x[c], b))
            saved[int(state.step)] = jax.tree.map(lambda x: x.copy(), jax.device_get(state))
            ckpt.save(int(state.step), state)
    return saved


def damaged(how, rng, workdir):
    from flowjax import train

    saved = _three_checkpoints(rng, workdir)
    step_dir = os.path.join(workdir, "30")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs)
    data = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    arrays = max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)
    target = arrays if rng.random() < 0.5 else rng.choice(files)  # half the time: the arrays
    size = os.path.getsize(target)
    if how == "truncate":
        with open(target, "r+b") as f:
            f.truncate(size // 2)
    elif how == "flip":
        at = rng.randrange(max(size - 4, 1))
        with open(target, "r+b") as f:
            f.seek(at)
            data = f.read(4)
            f.seek(at)
            f.write(bytes(x ^ 0xFF for x in data))
    else:
        os.remove(target)
    ckpt = train.Checkpointer(workdir, save_every=SAVE_EVERY)
    listed = 30 in ckpt.all_steps()  # a step without its commit marker is not complete
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            restored = ckpt.restore(saved[30])
        except Exception as e:  # noqa: BLE001
            return dict(ok=False, lost=None, outcome=f"restore FAILED: {e}"[:120],
                        detail=dict(file=os.path.relpath(target, workdir)))
        finally:
            ckpt.close()
    equal = _leaves_equal(restored.state, saved[restored.step])
    reasons = [str(w.message).split("is damaged (", 1)[1].rsplit("); moved", 1)[0]
               for w in caught if "is damaged" in str(w.message)]
    warned = bool(reasons)
    fell_back = restored.step < 30
    ok = equal and (warned or not listed or not fell_back)
    if not ok:
        outcome = "WRONG STATE" if not equal else "fell back WITHOUT a warning"
    elif not fell_back:
        outcome = "latest restored (file not needed)"
    elif listed:
        outcome = f"fell back to step {restored.step}, warned"
    else:
        outcome = f"latest seen as incomplete, step {restored.step} restored"
    return dict(ok=ok, lost=30 - restored.step, save_every=SAVE_EVERY, outcome=outcome,
                detail=dict(file=os.path.relpath(target, workdir), restored=restored.step,
                            reason=reasons[0][:120] if reasons else None))


def enospc(rng, workdir):
    import jax
    from etils import epath

    from flowjax import train

    params, opt, steps = _problem()
    b = _batches(rng.randrange(10 ** 6), 4)
    b = jax.tree.map(lambda x: x.reshape((8, 5) + x.shape[2:]), b)  # calls of 5 steps
    fail_at = rng.choice([20, 30])  # the disk is full when this save is written
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    saved, error, reported_at = {}, None, None
    write_text = epath.Path.write_text

    def full(self, *args, **kwargs):
        if str(self).startswith(workdir):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_text(self, *args, **kwargs)

    ckpt = train.Checkpointer(workdir, save_every=SAVE_EVERY, keep=2)
    try:
        for c in range(8):
            state, _ = steps(state, jax.tree.map(lambda x, c=c: x[c], b))
            step = int(state.step)
            if step == fail_at:
                ckpt.wait()  # the earlier saves are on disk; the disk fills up now
                epath.Path.write_text = full
            elif step % SAVE_EVERY == 0:
                saved[step] = jax.tree.map(lambda x: x.copy(), jax.device_get(state))
            reported_at = step
            ckpt.save(step, state)  # raises at the first call after the failed write
        ckpt.wait()
    except OSError as e:
        error = e
    finally:
        epath.Path.write_text = write_text
        ckpt.close()
    clear = (error is not None and error.errno == errno.ENOSPC and workdir in str(error)
             and f"step {fail_at}" in str(error))
    ckpt = train.Checkpointer(workdir, save_every=SAVE_EVERY)
    restored = ckpt.restore(saved[SAVE_EVERY])
    ckpt.close()
    ok = clear and restored.step == fail_at - SAVE_EVERY and _leaves_equal(
        restored.state, saved[restored.step])
    # Lost: what the failed save should have kept, beyond the intact checkpoint; the steps
    # trained after it until the error was raised are reported beside it.
    return dict(ok=ok, lost=fail_at - restored.step, save_every=SAVE_EVERY,
                outcome="OSError(ENOSPC) naming the dir; earlier restores" if ok else "WRONG",
                detail=dict(failed_save=fail_at, raised_at_step=reported_at,
                            restored=restored.step, error=str(error)[:160]))


def _cli(module, workdir, *extra, wait=True, env=None):
    cmd = [sys.executable, "-m", module, f"--workdir={workdir}", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))
    if not wait:
        return proc
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _one_error_line(code, err, expected_code, *needles):
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    ok = (code == expected_code and len(lines) == 1 and "Traceback" not in err
          and all(n in lines[0] for n in needles))
    last = lines[0] if lines else (err.strip().splitlines() or [""])[-1]
    return ok, last[:200]


KILL_EVERY, KILL_STEPS = 500, 3000
KILL_ARGS = [f"--config={TOY}", "--config.methods=('icfm',)", "--config.hidden=(128,128,128)",
             f"--config.num_train_steps={KILL_STEPS}", "--config.steps_per_call=50",
             f"--config.checkpoint_every={KILL_EVERY}", "--config.sharding.num_devices=1",
             "--config.eval.euler_steps=(1,)", "--config.eval.num_samples=100",
             "--config.plot=False"]


def _progress(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    steps = []
    if os.path.exists(path):
        for line in open(path):
            try:
                steps.append(json.loads(line)["step"])
            except (json.JSONDecodeError, KeyError):
                pass  # a line cut by the kill
    return max(steps, default=0)


def _complete_steps(directory):
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n) for n in names if n.isdigit())


def _writing_steps(directory):
    """Steps whose save was being written (orbax's temporary directories)."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n.split(".")[0]) for n in names if "orbax-checkpoint-tmp" in n
                  and n.split(".")[0].isdigit())


def kill9(asynchronous, rng, workdir):
    ckpts = os.path.join(workdir, "checkpoints", "normal_icfm")
    args = KILL_ARGS + [f"--config.async_checkpoint={asynchronous}"]
    proc = _cli("experiments.toy2d", workdir, *args, wait=False)
    target = rng.randrange(KILL_EVERY, KILL_STEPS - KILL_EVERY)
    deadline = time.time() + 300
    while proc.poll() is None and _progress(workdir) < target and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.0))
    if proc.poll() is not None:
        return dict(ok=False, lost=None, outcome="run ended before the kill",
                    detail=dict(stderr=proc.stderr.read()[-300:]))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    progress = _progress(workdir)
    latest = (_complete_steps(ckpts) or [0])[-1]
    writing = _writing_steps(ckpts)
    code, err = _cli("experiments.toy2d", workdir, *args)
    resumed = code == 0 and _complete_steps(ckpts)[-1] == KILL_STEPS
    lost = max(progress - latest, 0)
    # A kill while a save is written in the background also loses the steps trained since
    # that save began: the bound is one interval plus those (blocking saves: none).
    during = max(progress - writing[-1], 0) if writing and asynchronous else 0
    ok = resumed and lost <= KILL_EVERY + during
    return dict(ok=ok, lost=lost, save_every=KILL_EVERY, during_save=during,
                outcome=("resumed and finished" + (" (killed during a save)" if writing else ""))
                if ok else f"FAILED (exit {code}, lost {lost})",
                detail=dict(killed_after_step=progress, latest_checkpoint=latest,
                            save_being_written=writing[-1] if writing else None,
                            stderr=err[-300:] if code else ""))


def shape_mismatch(rng, workdir, kill_workdir):
    ckpts = os.path.join(kill_workdir, "checkpoints", "normal_icfm")
    before = _complete_steps(ckpts)
    width = rng.choice([16, 64, 256])
    args = [a for a in KILL_ARGS if not a.startswith("--config.hidden")]
    code, err = _cli("experiments.toy2d", kill_workdir, *args,
                     f"--config.hidden=({width},{width},{width})")
    ok, line = _one_error_line(code, err, 2, "does not fit", "params/", "in the checkpoint but",
                               f"[{width}]")
    ok = ok and _complete_steps(ckpts) == before
    return dict(ok=ok, lost=0, outcome="exit 2, names the leaf" if ok else "WRONG",
                detail=dict(width=width, line=line))


def cli_unknown_key(rng, workdir):
    key = rng.choice(["--config.nope=1", "--config.eval.nokey=2", "--config.learning_rat=1e-3"])
    code, err = _cli("experiments.toy2d", workdir, f"--config={TOY}", key)
    ok, line = _one_error_line(code, err, 2, "unknown config key")
    return dict(ok=ok, lost=0, outcome="exit 2, one line" if ok else "WRONG",
                detail=dict(arg=key, line=line))


def cli_data_dir(rng, workdir):
    path = rng.choice([os.path.join(workdir, "no_such_dir"), os.path.abspath(__file__)])
    code, err = _cli("experiments.images", os.path.join(workdir, "run"),
                     "--config=experiments/images/configs/mnist.py",
                     f"--config.data_dir={path}")
    ok, line = _one_error_line(code, err, 2, "config.data_dir")
    return dict(ok=ok, lost=0, outcome="exit 2, one line" if ok else "WRONG",
                detail=dict(data_dir=path, line=line))


def cli_workdir(rng, workdir):
    blocker = os.path.join(workdir, "a_file")
    open(blocker, "w").close()
    path = rng.choice(["/proc/flowjax_forbidden", os.path.join(blocker, "run")])
    code, err = _cli("experiments.toy2d", path, f"--config={TOY}")
    ok, line = _one_error_line(code, err, 2, "--workdir: cannot write")
    return dict(ok=ok, lost=0, outcome="exit 2, one line" if ok else "WRONG",
                detail=dict(workdir=path, line=line))


def diverge_cli(rng, workdir):
    import jax

    from experiments.toy2d.configs import tiny
    from flowjax import train

    from experiments.toy2d import methods as toy_methods

    lr = rng.choice(["1e30", "1e35"])
    args = [f"--config={TOY}", "--config.methods=('icfm',)", "--config.num_train_steps=200",
            "--config.steps_per_call=10", f"--config.checkpoint_every={SAVE_EVERY}",
            "--config.sharding.num_devices=1", f"--config.learning_rate={lr}",
            "--config.plot=False"]
    code, err = _cli("experiments.toy2d", workdir, *args)
    ok, line = _one_error_line(code, err, 1, "consecutive non-finite steps", "latest checkpoint")
    config = tiny.get_config()
    method, _ = toy_methods.make_methods(config, ["icfm"])["icfm"]
    abstract = jax.eval_shape(lambda: train.create_train_state(
        jax.random.PRNGKey(0), method.init(jax.random.PRNGKey(0)), method.optimizer))
    ckpt = train.Checkpointer(os.path.join(workdir, "checkpoints", "normal_icfm"),
                              save_every=SAVE_EVERY)
    restored = ckpt.restore(abstract)
    ckpt.close()
    ok = ok and restored is not None and _finite(restored.state.params)
    return dict(ok=ok, lost=0, outcome="exit 1, one line; last checkpoint restores" if ok
                else "WRONG", detail=dict(learning_rate=lr, line=line))


# --------------------------------------------------------------------------- driver

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tries of the slow faults")
    parser.add_argument("--tries", type=int, default=None, help="tries of each fast fault")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=os.path.join(ROOT, "workdir", "fault_injection"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    fast = args.tries or (3 if args.quick else 10)
    slow = 2 if args.quick else 5
    rng = random.Random(args.seed)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)

    import jax

    faults = [("nan-1-step", nan_one_step, fast), ("nan-K-steps", nan_k_steps, fast),
              ("diverge-cli", diverge_cli, 1 if args.quick else 2),
              ("sinkhorn", sinkhorn, fast),
              ("truncate", functools.partial(damaged, "truncate"), fast),
              ("flip", functools.partial(damaged, "flip"), fast),
              ("delete", functools.partial(damaged, "delete"), fast),
              ("enospc", enospc, fast), ("kill-9", functools.partial(kill9, False), slow),
              ("kill-9-async-saves", functools.partial(kill9, True), slow),
              ("shape-mismatch", None, slow), ("cli-unknown-key", cli_unknown_key, 2),
              ("cli-data-dir", cli_data_dir, 2), ("cli-workdir", cli_workdir, 2)]
    t0 = time.perf_counter()
    results, kill_dirs = [], []
    for name, fn, tries in faults:
        trials = []
        for i in range(tries):
            workdir = tempfile.mkdtemp(prefix=f"{name}-{i}-", dir=args.workdir)
            start = time.perf_counter()
            try:
                if name == "shape-mismatch":
                    r = shape_mismatch(rng, workdir, kill_dirs[i % len(kill_dirs)])
                else:
                    r = fn(rng, workdir)
            except Exception as e:  # noqa: BLE001  (recorded as a failed try)
                r = dict(ok=False, lost=None, outcome=f"ERROR {type(e).__name__}",
                         detail=dict(error=str(e)[:300]))
            if name.startswith("kill-9"):
                kill_dirs.append(workdir)
            r["seconds"] = round(time.perf_counter() - start, 2)
            trials.append(r)
            print(f"{name} #{i + 1}: {'ok' if r['ok'] else 'FAILED'}, {r['outcome']}, "
                  f"lost {r['lost']}, {r['detail']}", flush=True)
        counts = {}
        for t in trials:
            counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
        outcomes = [f"{o} (x{n})" if len(counts) > 1 else o for o, n in sorted(counts.items())]
        lost = [t["lost"] for t in trials if t["lost"] is not None]
        interval = trials[0].get("save_every")  # None: the fault does not touch checkpoints
        during = max(t.get("during_save", 0) for t in trials)
        results.append(dict(fault=name, tried=len(trials), ok=sum(t["ok"] for t in trials),
                            outcomes=outcomes, max_steps_lost=max(lost) if lost else None,
                            save_every=interval, max_steps_trained_during_a_save=during,
                            trials=trials))

    print("\n| fault | times tried | ok | outcome | data lost (max steps) |")
    print("|---|---|---|---|---|")
    for r in results:
        lost = "-" if r["max_steps_lost"] is None else r["max_steps_lost"]
        every = "" if r["save_every"] is None else f" (interval {r['save_every']})"
        if r["max_steps_trained_during_a_save"]:
            every = (f" (interval {r['save_every']} + {r['max_steps_trained_during_a_save']} "
                     "trained while the save was written)")
        print(f"| {r['fault']} | {r['tried']} | {r['ok']}/{r['tried']} | "
              f"{'; '.join(r['outcomes'])} | {lost}{every} |")
    all_ok = all(r["ok"] == r["tried"] for r in results)  # each try checks its own bound
    wall = time.perf_counter() - t0
    print(f"\nall faults handled: {all_ok}; {wall:.0f} s; {cpu_name()}, {os.cpu_count()} cores")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(dict(all_ok=all_ok, wall_s=round(wall, 1), seed=args.seed,
                           machine=dict(cpu=cpu_name(), cores=os.cpu_count(),
                                        system=platform.system(), jax=jax.__version__),
                           faults=results), f, indent=1)
        _plot(os.path.splitext(args.out)[0] + ".png", results)
    sys.exit(0 if all_ok else 1)


def _plot(path, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["fault"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    ok = [r["ok"] for r in results]
    bad = [r["tried"] - r["ok"] for r in results]
    a.bar(names, ok, color="tab:green", label="handled")
    a.bar(names, bad, bottom=ok, color="tab:red", label="not handled")
    a.set_ylabel("times tried")
    a.legend()
    lost = [(r["max_steps_lost"] or 0) / (r["save_every"] or 1) for r in results]
    b.bar(names, lost, color="tab:blue", label="max steps lost")
    b.axhline(1.0, color="k", ls="--", label="one save interval")
    b.set_ylabel("steps to redo / save interval")
    b.set_ylim(0, 1.4)
    b.legend(loc="upper right")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
