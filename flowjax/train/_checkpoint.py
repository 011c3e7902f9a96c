"""Orbax checkpoints of a run: the train state, the input pipeline's position and the config.

One :class:`Checkpointer` per run directory wraps an
`orbax.checkpoint.CheckpointManager`:

- saves every `save_every` steps, asynchronously (the arrays are copied off
  the devices before `save` returns, so the next step may donate them; the
  files are written in a background thread), keeping the latest `keep`;
- each checkpoint holds three items: `state` (the whole :class:`TrainState`,
  sharded or not), `pipeline` (a JSON dict, e.g.
  :meth:`flowjax.data.ImagePipeline.state`) and `config` (JSON);
- a checkpoint is written into a temporary directory and renamed when
  complete, so a run killed mid-save leaves the previous one as the latest
  (orbax's atomic commit); stale temporary directories are removed on start;
- :meth:`restore` places the arrays with the shardings of the state it is
  given, so a run saved on 8 devices restores on 1 and back (orbax reshards);
- with `catch_sigterm=True`, SIGTERM (a preemption notice) only sets a flag:
  the loop asks :meth:`reached_preemption` after each step, saves and exits.
  With several processes orbax's preemption sync point (through
  `jax.distributed`) makes every host agree on the step.

Damage and faults:

- each save also writes an `integrity` item: a 32-bit checksum of every
  leaf of the state, computed on the devices from the arrays' bits
  (:func:`state_checksums`). Orbax reads a flipped byte back without
  complaint; the checksum catches it (any single flipped bit, other damage
  with probability :math:`1 - 2^{-32}`);
- :meth:`restore` (latest step) first compares the checkpoint's metadata
  with the target (a leaf whose shape or dtype differs, or a missing one, is
  a `ValueError` naming the leaf and both shapes: a config that does not
  match the run, never a silent re-initialisation), then reads and checks
  the newest checkpoint. If it cannot be read or fails its checksum, it
  tries the one before, and so on. When an older one restores, the damaged
  newer ones are moved aside (renamed `<step>.damaged`, out of orbax's
  view, so they are neither restored nor counted against `keep` nor
  overwritten) with a `RuntimeWarning` each. If none restores nothing is
  moved: the error of the newest is raised (the same failure on every
  step points at the target or the code, not at the files);
- a save that fails to write (a full disk: `ENOSPC`, whether from orbax's
  Python writes or tensorstore's) raises an `OSError` with that errno
  naming the step and the directory, from :meth:`save`, :meth:`wait` or
  :meth:`close` (asynchronous saves fail in the background). Orbax writes
  into a temporary directory and deletes old checkpoints only after a
  complete save, so the checkpoints already there stay readable;
- nothing is unpickled: the arrays are read by tensorstore (zarr/OCDBT), the
  rest is JSON.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import signal
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from flowjax._types import PyTree


@dataclasses.dataclass
class Restored:
    """What :meth:`Checkpointer.restore` returns.

    `damaged` lists the newer checkpoints that failed to restore and were
    moved aside (oldest first); empty when the latest one restored.
    """

    step: int
    state: PyTree
    pipeline: dict
    config: dict
    damaged: tuple = ()


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _leaf_paths(tree, is_leaf=None) -> dict:
    """`{"params/Dense_0/kernel": leaf}`: paths that match between a state and orbax's metadata."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


_GOLDEN = np.uint32(0x9E3779B2)  # even: i * _GOLDEN + 1 is odd, so no position weighs 0


def _words(x):
    """The bits of `x` as uint32 words (one per element; two for 64-bit types)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jnp.stack([_words(jnp.real(x)), _words(jnp.imag(x))], -1)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 4 or size == 8:  # 64-bit: a trailing axis of two words
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_checksum(x):
    r"""A position-weighted word sum mod :math:`2^{32}`: :math:`\sum_i (2 i \varphi + 1) w_i`."""
    w = _words(x)
    index, stride = jnp.zeros(w.shape, jnp.uint32), 1
    for axis in reversed(range(w.ndim)):  # the flat index, without reshaping a sharded array
        index = index + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * np.uint32(
            stride % 2 ** 32)
        stride *= w.shape[axis]
    return jnp.sum(w * (index * _GOLDEN + np.uint32(1)), dtype=jnp.uint32)


@jax.jit
def _checksum_leaves(leaves):
    return [_leaf_checksum(x) for x in leaves]


def state_checksums(state: PyTree) -> dict[str, int]:
    r"""A 32-bit checksum of each leaf of `state`, `{leaf path: int}`, computed on its devices.

    The weighted sum :math:`\sum_i (2 i \varphi + 1)\, w_i \bmod 2^{32}` of
    the array's bits read as 32-bit words :math:`w_i` (odd weights: a single
    flipped bit always changes it). It reads every array once, where it
    lives (sharded arrays too), and brings back one integer per leaf.

    Args:
      state: any pytree of arrays (a :class:`TrainState`), on any devices.

    Returns:
      `{path: checksum}` with paths like `"params/Dense_0/kernel"`; what
      :class:`Checkpointer` stores with each save and checks on restore.
    """
    leaves = _leaf_paths(state)
    values = _checksum_leaves(list(leaves.values()))
    out = {}
    for path, v in zip(leaves, values):
        if not v.is_fully_addressable:  # several processes: the scalar is replicated
            v = v.addressable_data(0)
        out[path] = int(np.asarray(v))
    return out


class _Damaged(Exception):
    """A checkpoint that cannot be read back as it was written."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _errors(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _reason(e: BaseException) -> str:
    """The first line of the innermost error of the chain (tensorstore's, not orbax's wrapper)."""
    return _first_line(list(_errors(e))[-1])


def _write_errno(e: BaseException) -> int | None:
    """The errno of a failed write anywhere in `e`'s chain (tensorstore reports it in the text)."""
    for err in _errors(e):
        if isinstance(err, OSError) and err.errno:
            return err.errno
        text = str(err)
        if "No space left on device" in text:
            return errno.ENOSPC
        code = re.search(r"os_error_code='(\d+)'", text)
        if code:
            return int(code.group(1))
    return None


_JSON_ITEMS = ("pipeline", "config", "integrity")


def _as_json(config) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_json"):  # ml_collections.ConfigDict
        return json.loads(config.to_json())
    return json.loads(json.dumps(config))


class Checkpointer:
    """Periodic, asynchronous orbax checkpoints of a run (see the module docstring).

    Args:
      directory: where the step directories go (created if needed).
      save_every: save when `step % save_every == 0` (:meth:`save` with
        `force=True` saves at any step).
      keep: how many of the latest checkpoints to keep.
      async_save: write in the background (True) or block in `save`.
      catch_sigterm: install a SIGTERM handler that sets the preemption flag
        (main thread only; the previous handler is put back by :meth:`close`).
        With several processes `jax.distributed`'s own handler is used.
    """

    def __init__(self, directory: str, *, save_every: int, keep: int = 2,
                 async_save: bool = True, catch_sigterm: bool = False):
        if int(save_every) < 1:
            raise ValueError(f"`save_every` must be a positive integer, got {save_every!r}.")
        if int(keep) < 1:
            raise ValueError(f"`keep` must be a positive integer, got {keep!r}.")
        self.directory = os.path.abspath(directory)
        self.save_every = int(save_every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(keep), enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        # The handlers are named up front so that metadata can be read before any restore.
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    **{name: ocp.JsonCheckpointHandler() for name in _JSON_ITEMS}}
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)
        self._saving = None  # the step of the save that may still be running
        self._failed = False  # a failed save was reported to the caller
        self._sigterm = threading.Event()
        self._previous_handler = None
        if catch_sigterm and jax.process_count() == 1:  # with several, jax.distributed catches it
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._sigterm.set()

    @property
    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint kept, oldest first."""
        return sorted(self._manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        """True once a preemption notice arrived (the same answer on every process)."""
        if jax.process_count() > 1:
            return bool(self._manager.reached_preemption(step))
        return self._sigterm.is_set()

    def _write_failed(self, step, e: BaseException) -> BaseException:
        """A failed write as an OSError naming the step and directory (other errors as they are)."""
        code = _write_errno(e)
        if code is None:
            return e
        nospace = code == errno.ENOSPC
        why = "no space left on device" if nospace else _reason(e)
        self._manager.reload()
        kept = self.all_steps()
        return OSError(code, f"cannot save checkpoint step {step} to {self.directory}: {why}. "
                             f"The checkpoints already there are intact (steps {kept}); "
                             f"{'free space and ' if nospace else ''}start the run again to "
                             "resume from the latest")

    def _finish(self):
        """Waits for the running save; a failed write comes back as OSError (see :meth:`save`)."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001  (orbax re-raises the background thread's error)
            step, self._saving = self._saving, None
            if step is None and self._failed:
                return  # orbax raises a failed save's error at every wait: it was reported
            self._failed = True
            err = self._write_failed(step, e)
            raise err from (None if err is e else e)
        self._saving = None

    def save(self, step: int, state: PyTree, *, pipeline: dict | None = None,
             config: dict | None = None, force: bool = False) -> bool:
        """Saves `state` (and the pipeline position and config) at `step` if it is due.

        Returns whether a save was started. A save at a step that is already
        saved is skipped. A write that fails raises `OSError` with its errno
        (`ENOSPC` for a full disk), naming the step and the directory; the
        checkpoints written before stay readable. An asynchronous save that
        failed in the background is reported by the first call after it
        ended, due or not (the check costs nothing while it still runs).
        """
        step = int(step)
        if self._saving is not None and (
                force or step % self.save_every == 0 or not self._manager.is_saving_in_progress()):
            self._finish()  # a background failure is reported at the next call, due or not
        if not force and step % self.save_every:
            return False
        if step in self._manager.all_steps():
            return False
        integrity = {"checksum": "uint32 position-weighted word sum",
                     "leaves": state_checksums(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  pipeline=ocp.args.JsonSave(dict(pipeline or {})),
                                  config=ocp.args.JsonSave(_as_json(config)),
                                  integrity=ocp.args.JsonSave(integrity))
        self._saving = step
        try:
            started = bool(self._manager.save(step, args=args, force=True))
        except Exception as e:  # noqa: BLE001
            self._saving, self._failed = None, True
            err = self._write_failed(step, e)
            raise err from (None if err is e else e)
        return started

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _check_fits(self, step: int, target: dict, metadata: dict):
        """ValueError if the checkpoint's leaves and the target's differ in path, shape or dtype."""
        where = f"checkpoint step {step} in {self.directory} does not fit the state to restore"
        missing = sorted(set(target) - set(metadata))
        extra = sorted(set(metadata) - set(target))
        if missing or extra:
            parts = [f"{what} {len(paths)} leaves of the {whose}, e.g. {paths[:3]}"
                     for what, paths, whose in (("the checkpoint lacks", missing, "state"),
                                                ("the state lacks", extra, "checkpoint"))
                     if paths]
            raise ValueError(
                f"{where}: {'; '.join(parts)}. Was it saved by another model or version? "
                "Resume with the config it was saved with, or use a new directory.")
        bad = [(p, tuple(metadata[p].shape), tuple(target[p].shape),
                str(metadata[p].dtype), str(target[p].dtype)) for p in target
               if tuple(metadata[p].shape) != tuple(target[p].shape)
               or str(metadata[p].dtype) != str(target[p].dtype)]
        if bad:
            p, saved, want, saved_dtype, want_dtype = bad[0]
            more = f" ({len(bad) - 1} more leaves differ)" if len(bad) > 1 else ""
            raise ValueError(
                f"{where}: leaf {p!r} is {saved_dtype}{list(saved)} in the checkpoint but "
                f"{want_dtype}{list(want)} in the state{more}. Does the config's model match "
                "the run's? Resume with the config it was saved with, or use a new directory.")

    def _read(self, step: int, abstract) -> Restored:
        """Reads and verifies one checkpoint; `_Damaged` if it cannot be read as written."""
        try:
            meta = self._manager.item_metadata(step).state
            if meta is None:
                raise _Damaged("no state item")
            saved = _leaf_paths(meta, is_leaf=lambda x: hasattr(x, "shape"))
        except _Damaged:
            raise
        except Exception as e:  # noqa: BLE001  (unreadable or garbled metadata)
            raise _Damaged(f"metadata: {_reason(e)}") from e
        self._check_fits(step, _leaf_paths(abstract), saved)
        items = dict(state=ocp.args.StandardRestore(abstract), pipeline=ocp.args.JsonRestore(),
                     config=ocp.args.JsonRestore())
        verified = os.path.isdir(os.path.join(self._step_dir(step), "integrity"))
        if verified:  # checkpoints written before checksums existed are read unverified
            items["integrity"] = ocp.args.JsonRestore()
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001  (tensorstore and JSON errors of damaged files)
            raise _Damaged(_reason(e)) from e
        if verified:
            expected = dict((out.integrity or {}).get("leaves", {}))
            got = state_checksums(out.state)
            bad = [p for p in got if expected.get(p) != got[p]]
            bad = bad or sorted(set(expected) ^ set(got))
            if bad:
                raise _Damaged(f"checksum mismatch in {bad[:3]}")
        return Restored(step=step, state=out.state, pipeline=dict(out.pipeline or {}),
                        config=dict(out.config or {}))

    def _move_aside(self, step: int) -> str:
        """Renames a damaged step directory out of orbax's view; returns the new path."""
        base = self._step_dir(step) + ".damaged"
        target, n = base, 1
        while os.path.exists(target):
            n += 1
            target = f"{base}-{n}"
        if jax.process_index() == 0:
            os.rename(self._step_dir(step), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"flowjax_checkpoint_move_{step}")
        return target

    def _unrestorable(self, failed, given=False) -> RuntimeError:
        """The error when no checkpoint restores: `failed` lists `(step, error)`, newest first."""
        s, e = failed[0]
        if given:
            return RuntimeError(f"checkpoint step {s} in {self.directory} is damaged: {e}")
        return RuntimeError(
            f"no checkpoint in {self.directory} restores (steps {[f for f, _ in failed]}); the "
            f"newest, step {s}: {e}. Nothing was moved; if the files are damaged, move them "
            "aside to start again from step 0")

    def restore(self, state: PyTree, step: int | None = None) -> Restored | None:
        """The checkpoint at `step` (default: the newest that restores), or None if there is none.

        Args:
          state: the target, a train state (concrete, or of
            `jax.ShapeDtypeStruct`) whose leaves' shapes, dtypes and
            shardings the restored arrays take: e.g. a fresh state placed
            with :func:`state_shardings` on the current mesh.
          step: which checkpoint; given, it is restored or an error raised.

        Raises:
          ValueError: the checkpoint's leaves differ from `state`'s (path,
            shape or dtype), naming the first such leaf and both shapes.
          RuntimeError: no checkpoint restores (the newest one's error is
            the cause); nothing has been moved.

        Without `step`, a damaged newest checkpoint (unreadable, or failing
        its checksum) makes it fall back to the one before, with a
        `RuntimeWarning`; see the module docstring.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        if step is not None:
            try:
                return self._read(int(step), abstract)
            except _Damaged as e:
                raise self._unrestorable([(int(step), e)], given=True) from e
        steps = sorted(self._manager.all_steps(), reverse=True)
        failed = []
        for s in steps:
            try:
                restored = self._read(s, abstract)
            except _Damaged as e:
                failed.append((s, e))
                continue
            for bad, why in failed:  # newer than `s`, and the target fits `s`: damaged files
                moved = self._move_aside(bad)
                warnings.warn(f"checkpoint step {bad} in {self.directory} is damaged ({why}); "
                              f"moved to {moved}, restoring step {s} instead", RuntimeWarning,
                              stacklevel=2)
            if failed:
                self._manager.reload()
            restored.damaged = tuple(sorted(bad for bad, _ in failed))
            return restored
        if not failed:
            return None
        raise self._unrestorable(failed) from failed[0][1]

    def wait(self):
        """Blocks until every started save is complete on disk (OSError if one failed to write)."""
        self._finish()

    def close(self):
        """Waits for pending saves, and puts back the previous SIGTERM handler."""
        try:
            self._finish()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001
                if not self._failed:  # else: the failed save's error again, already reported
                    raise
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)
                self._previous_handler = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
