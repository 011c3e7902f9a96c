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
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading

import jax
import orbax.checkpoint as ocp


@dataclasses.dataclass
class Restored:
    """What :meth:`Checkpointer.restore` returns."""

    step: int
    state: object
    pipeline: dict
    config: dict


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
        self._manager = ocp.CheckpointManager(self.directory, options=options)
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

    def save(self, step: int, state, *, pipeline: dict | None = None, config=None,
             force: bool = False) -> bool:
        """Saves `state` (and the pipeline position and config) at `step` if it is due.

        Returns whether a save was started. A save at a step that is already
        saved is skipped.
        """
        step = int(step)
        if not force and step % self.save_every:
            return False
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  pipeline=ocp.args.JsonSave(dict(pipeline or {})),
                                  config=ocp.args.JsonSave(_as_json(config)))
        return bool(self._manager.save(step, args=args, force=True))

    def restore(self, state, step: int | None = None) -> Restored | None:
        """The checkpoint at `step` (default: the latest), or None if there is none.

        Args:
          state: the target, a train state (concrete, or of
            `jax.ShapeDtypeStruct`) whose leaves' shapes, dtypes and
            shardings the restored arrays take: e.g. a fresh state placed
            with :func:`state_shardings` on the current mesh.
          step: which checkpoint.
        """
        step = self.latest_step if step is None else int(step)
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), pipeline=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        return Restored(step=step, state=out.state, pipeline=dict(out.pipeline or {}),
                        config=dict(out.config or {}))

    def wait(self):
        """Blocks until every started save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self):
        """Waits for pending saves, and puts back the previous SIGTERM handler."""
        self._manager.wait_until_finished()
        self._manager.close()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
