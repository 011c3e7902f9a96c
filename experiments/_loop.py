"""The training loop shared by the experiments: a method object, batches, a key, a config.

    method = Method(name="otcfm", loss=loss_fn, optimizer=optax.adam(1e-3), init=init_fn)
    batches = KeyedBatches(make_batches, named_key(key, "data"), steps_per_call=k)
    result = train_loop(method, batches, named_key(key, "train", "normal", "otcfm"),
                        config, workdir, name="otcfm/normal", tags={"method": "otcfm"})
    result.state, result.history   # the final TrainState, the records logged by this call

What the loop does (built on :mod:`flowjax.train`):

* **One compiled step per (loss, optimizer).** The K-step function
  (:func:`flowjax.train.make_multi_step`, or :func:`make_train_step` when
  `config.steps_per_call == 1`) is built once per `(method.loss,
  method.optimizer, ema_decay, mesh, strategy)` and kept in :data:`STEPS`;
  `jax.jit` then compiles it once per input shape. Methods that share their
  loss and optimizer objects (e.g. one source after another) share the step.
* **Resume.** Checkpoints go to `workdir/checkpoints/<name>` (orbax, via
  :class:`flowjax.train.Checkpointer`) every `config.checkpoint_every` steps
  and at the end; a new call on the same workdir restores the newest one and
  goes on from its step, with the batches an uninterrupted run would have
  seen (the batch iterator's position is saved with the state). SIGTERM saves
  the current step and raises :class:`experiments._workdir.Preempted`.
* **Non-finite steps** are skipped inside the compiled step and counted;
  `config.max_consecutive_nonfinite` skipped in a row stop the run with
  :class:`experiments._workdir.NonFiniteStop` (checked when the loop syncs
  with the host anyway: when it logs or saves).
* **Logging.** Every `config.log_every` steps one record (loss, gradient norm,
  skipped steps, the loss's aux entries, averaged over those steps) goes to
  `workdir/metrics.jsonl` with the run's `tags`, and into the returned
  history; a multi-step call of K steps yields K / log_every records. Every
  `config.print_every` steps (and at the end) one console line:
  `[otcfm/normal] step 400/2000 loss 0.812 (skipped 0)`. Records are read
  one call late, so logging adds no host sync to the call just started.
* **Keys by name.** :func:`named_key` folds stable hashes of names into a
  key (`named_key(key, "train", source, method)`): a run's random stream
  depends on what it is, not on where it sits in a config. The loop derives
  the init key and the step key from its `key` the same way.

Config fields read (defaults in :data:`DEFAULTS` for those a config lacks):
`num_train_steps`, `steps_per_call`, `log_every`, `print_every`,
`checkpoint_every`, `keep_checkpoints`, `async_checkpoint`,
`max_consecutive_nonfinite`, `ema_decay`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import optax

from experiments._workdir import Preempted, check_nonfinite, restore
from flowjax import train

DEFAULTS = {"steps_per_call": 1, "log_every": None, "print_every": None,
            "checkpoint_every": None, "keep_checkpoints": 2, "async_checkpoint": False,
            "max_consecutive_nonfinite": 20, "ema_decay": 0.999}


# --------------------------------------------------------------------------- keys

def stable_hash(name: str) -> int:
    """A 31-bit hash of `name` that is the same in every process and Python version."""
    digest = hashlib.blake2b(str(name).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def named_key(key, *names: str):
    """`key` with the stable hash of each name folded in, in order.

    `named_key(key, "train", "normal", "otcfm")` is the key of one run;
    another name, or the same names in another order, gives another key.
    """
    for name in names:
        key = jax.random.fold_in(key, stable_hash(name))
    return key


def root_key(config):
    """The experiment's base key, `PRNGKey(config.seed)`; derive every other with :func:`named_key`."""
    return jax.random.PRNGKey(int(config.seed))


# --------------------------------------------------------------------------- methods

@dataclasses.dataclass(frozen=True, eq=False)
class Method:
    """What the loop trains: a loss, its optimizer and the initial parameters.

    Attributes:
      name: the method's name in tables and logs (e.g. "otcfm").
      loss: `loss(params, key, batch) -> (loss, aux)`, e.g. a bound
        :func:`flowjax.losses.cfm_loss`.
      optimizer: an optax `GradientTransformation`.
      init: `init(key) -> params`, the initial parameters.
      apply_fn: the model function `apply_fn(params, x, t, ...)` (for sampling), or None.
      loss_name: what the loss is called on plots (e.g. "CFM loss", "MeanFlow loss").
      coupling: a coupling the batch maker applies to whole calls ahead of the loss, or None.

    Compared by identity: build each method once (one table from config
    names to objects) and pass the same object for every run of it.
    """

    name: str
    loss: Callable
    optimizer: optax.GradientTransformation
    init: Callable
    apply_fn: Callable | None = None
    loss_name: str = "loss"
    coupling: Any = None


# --------------------------------------------------------------------------- batches

class KeyedBatches:
    """An iterator of batches whose position is the step: the call at step `s` gets
    `make_batches(fold_in(key, s))`.

    `make_batches(key) -> batch` returns the stacked batches of one call
    (`[K, B, ...]` leaves for K > 1); `make_batches` may also be a zero-argument
    factory of that function (`lazy=True`), built only when a batch is first
    asked for (a finished run then makes no data). `state()` and `restore()`
    are what the loop saves with each checkpoint and reads back on resume.
    """

    def __init__(self, make_batches: Callable, key, *, steps_per_call: int, lazy: bool = False):
        self._make, self._lazy = make_batches, lazy
        self.key, self.k, self.step = key, int(steps_per_call), 0

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        if self._lazy:
            self._make, self._lazy = self._make(), False
        batch = self._make(jax.random.fold_in(self.key, self.step))
        self.step += self.k
        return batch

    def state(self) -> dict:
        return {"next_step": self.step}

    def restore(self, state: dict) -> None:
        self.step = int(state["next_step"])


# --------------------------------------------------------------------------- compiled steps

#: The built step functions, keyed by (loss, optimizer, ema_decay, multi, mesh, strategy).
STEPS: dict = {}


def _mesh_of(mesh):
    return None if mesh is None else (tuple(d.id for d in mesh.devices.flat), mesh.axis_names)


def compiled_step(method: Method, state, *, ema_decay: float, multi: bool, mesh=None,
                  strategy=None):
    """`(step_fn, state_shardings)` for `method`, built once and kept in :data:`STEPS`.

    With a mesh the state is laid out by `strategy` (data parallel if None)
    and the batch rows split over the mesh (axis 1 of stacked batches).
    """
    strategy = strategy if strategy is not None or mesh is None else train.DataParallel()
    cache_key = (method.loss, method.optimizer, float(ema_decay), bool(multi), _mesh_of(mesh),
                 type(strategy).__name__)
    if cache_key not in STEPS:
        make = train.make_multi_step if multi else train.make_train_step
        if mesh is None:
            shardings = None
            fn = make(method.loss, method.optimizer, ema_decay=ema_decay)
        else:
            abstract = jax.eval_shape(lambda: state)
            shardings = train.state_shardings(abstract, mesh, strategy)
            fn = make(method.loss, method.optimizer, ema_decay=ema_decay,
                      state_sharding=shardings,
                      batch_sharding=train.batch_sharding(mesh, leading=int(multi)))
        STEPS[cache_key] = (fn, shardings)
    return STEPS[cache_key]


# --------------------------------------------------------------------------- the loop

@dataclasses.dataclass
class Result:
    """What :func:`train_loop` returns: the final state and the records it logged."""

    state: train.TrainState
    history: list[dict]


def _setting(config, name):
    if hasattr(config, "get"):
        return config.get(name, DEFAULTS.get(name))
    return getattr(config, name, DEFAULTS.get(name))


def loop_settings(config) -> dict:
    """The loop's settings from `config` (see the module docstring), checked.

    Raises ValueError naming the config field that is missing or does not fit.
    """
    s = {name: _setting(config, name) for name in ("num_train_steps", *DEFAULTS)}
    if s["num_train_steps"] is None:
        raise ValueError("config.num_train_steps is required.")
    n, k = int(s["num_train_steps"]), int(s["steps_per_call"])
    s["log_every"] = int(s["log_every"] or k)
    s["print_every"] = int(s["print_every"] or max(n // 5 // s["log_every"], 1) * s["log_every"])
    s["checkpoint_every"] = int(s["checkpoint_every"] or n)
    for field in ("num_train_steps", "steps_per_call", "log_every", "print_every",
                  "checkpoint_every", "keep_checkpoints", "max_consecutive_nonfinite"):
        if int(s[field]) < 1:
            raise ValueError(f"config.{field} must be a positive integer, got {s[field]}.")
    if n % k:
        raise ValueError(f"config.num_train_steps ({n}) must be a multiple of "
                         f"config.steps_per_call ({k}).")
    if s["checkpoint_every"] % k:
        raise ValueError(f"config.checkpoint_every ({s['checkpoint_every']}) must be a multiple "
                         f"of config.steps_per_call ({k}).")
    log = s["log_every"]
    if (k % log if log < k else log % k):
        raise ValueError(f"config.log_every ({log}) must divide config.steps_per_call ({k}) "
                         "or be a multiple of it.")
    if s["print_every"] % log:
        raise ValueError(f"config.print_every ({s['print_every']}) must be a multiple of "
                         f"config.log_every ({log}).")
    return {**s, "num_train_steps": n, "steps_per_call": k}


def console(line: str) -> None:
    """One line on stdout, flushed (the loop's and the evaluations' progress lines)."""
    print(line, file=sys.stdout, flush=True)


def evaluating(name: str, what: str) -> None:
    """The console line of one evaluation stage: `evaluating otcfm/normal: dopri5`."""
    console(f"evaluating {name}: {what}")


def results_in(workdir: str) -> None:
    """The last console line: where the tables and plots went."""
    console(f"tables and plots written to {os.path.abspath(workdir)}")


def _records(metrics, k: int, log: int, multi: bool):
    """The call's records on device: one per `log` steps (the last `log` when log >= k)."""
    if not multi:
        return [train.summarize_metrics(metrics)]
    if log >= k:
        return [train.summarize_metrics(metrics)]
    chunks = jax.tree.map(lambda a: a.reshape((k // log, log) + a.shape[1:]), metrics)
    stacked = jax.vmap(train.summarize_metrics)(chunks)
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(k // log)]


def _fmt(value) -> str:
    return f"{float(value):.4g}"


def train_loop(method: Method, batches, key, config, workdir: str, *, name: str,
               tags: dict | None = None, writer: train.MetricsWriter | None = None,
               init_params=None, mesh=None, strategy=None,
               checkpoint_dir: str | None = None) -> Result:
    """Trains `method` on `batches` from `key`, resuming from `workdir`'s checkpoints.

    Args:
      method: the :class:`Method` (loss, optimizer, init).
      batches: an iterator of per-call batches (`[K, B, ...]` leaves when
        `config.steps_per_call` K > 1); if it has `state()` and
        `restore(state)` (:class:`KeyedBatches`, `flowjax.data.ImagePipeline`)
        its position is saved with each checkpoint and restored on resume.
        It is not touched when no steps remain.
      key: the run's key; the init key is `named_key(key, "init")` and the
        step key (the state's) `named_key(key, "steps")`.
      config: the loop's settings (module docstring).
      workdir: metrics go to `workdir/metrics.jsonl`, checkpoints to
        `workdir/checkpoints/<checkpoint_dir>`.
      name: the run's name on the console (`"otcfm/normal"`); with "/" made
        "_" it is the default checkpoint directory.
      tags: extra fields of each metrics record (e.g. `{"method": ..., "source": ...}`).
      writer: the metrics writer (default: a new one on `workdir`).
      init_params: parameters to start from instead of `method.init` (a warm start).
      mesh, strategy: the device mesh and sharding strategy (None: one device).

    Returns:
      :class:`Result` with the final state and the records logged by this call
      (`{"step": ..., "loss": ..., ...}`; empty for a finished run).
    """
    s = loop_settings(config)
    n, k, log = s["num_train_steps"], s["steps_per_call"], s["log_every"]
    multi = k > 1
    writer = writer if writer is not None else train.MetricsWriter(workdir)
    tags = dict(tags or {})
    params = init_params if init_params is not None else method.init(named_key(key, "init"))
    state = train.create_train_state(named_key(key, "steps"), params, method.optimizer)
    step_fn, shardings = compiled_step(method, state, ema_decay=s["ema_decay"], multi=multi,
                                       mesh=mesh, strategy=strategy)
    if shardings is not None:
        state = train.shard(state, shardings)

    directory = os.path.join(workdir, "checkpoints", checkpoint_dir or name.replace("/", "_"))
    ckpt = train.Checkpointer(directory, save_every=s["checkpoint_every"],
                              keep=s["keep_checkpoints"], async_save=s["async_checkpoint"],
                              catch_sigterm=True)
    history: list[dict] = []
    limit = s["max_consecutive_nonfinite"]
    pending: list = []  # (step, record on device) of the previous call: read one call late

    def flush(final: bool = False):
        for at, record in pending:
            host = jax.device_get(record)
            writer.write(at, host, **tags)
            history.append({"step": at, **{m: np.asarray(v).item() if np.ndim(v) == 0 else v
                                           for m, v in host.items()}})
            check_nonfinite(host, limit, at, ckpt)
            if at % s["print_every"] == 0 or at == n or (final and at == pending[-1][0]):
                console(f"[{name}] step {at}/{n} loss {_fmt(host['loss'])} "
                        f"(skipped {int(host['nonfinite_total'])})")
        pending.clear()

    # XLA:CPU runs each device of a multi-device program on its own thread; two such
    # programs in flight at once (this call's step and the next call's batches) can
    # deadlock in a collective. On a CPU mesh each call is waited for before the next.
    wait = mesh is not None and mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"
    try:
        restored = restore(ckpt, state)
        if restored is not None:
            state = restored.state
        start = int(state.step + state.nonfinite_total)  # batches used, skipped included
        if start < n and hasattr(batches, "restore"):
            batches.restore(restored.pipeline if restored is not None and restored.pipeline
                            else {"next_step": start})
        for step in range(start, n, k):
            batch = next(batches)
            state, metrics = step_fn(state, batch)
            if wait:
                jax.block_until_ready(state)
            flush()
            done = step + k
            recs = _records(metrics, k, log, multi) if (log < k or done % log == 0
                                                         or done == n) else []
            first = done - k + (log if log < k else k)
            pending.extend(zip(range(first, done + 1, min(log, k)) if log < k else [done], recs))
            preempted = ckpt.reached_preemption(done)
            force = preempted or done == n
            if force or done % s["checkpoint_every"] == 0:  # a save syncs anyway
                flush(final=preempted)
                check_nonfinite(jax.device_get(train.summarize_metrics(metrics)), limit, done,
                                ckpt)
            pipeline = batches.state() if hasattr(batches, "state") else {"next_step": done}
            ckpt.save(done, state, pipeline=pipeline, config=config, force=force)
            if preempted:
                raise Preempted(done, ckpt.directory)
        flush(final=True)
    finally:
        ckpt.close()
    return Result(state=state, history=history)


def eval_params(state: train.TrainState, use_ema: bool = True):
    """The parameters to evaluate: the EMA (default) or the raw ones."""
    return state.ema_params if use_ema else state.params


__all__ = ["DEFAULTS", "KeyedBatches", "Method", "Result", "STEPS", "compiled_step", "console",
           "eval_params", "evaluating", "loop_settings", "named_key", "results_in", "root_key",
           "stable_hash", "train_loop"]
