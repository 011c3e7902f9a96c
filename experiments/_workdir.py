"""The files of every experiment run: its workdir, `config.json`, metrics and results.

With several processes (hosts) only the first one writes them; checkpoints
are written by orbax, which coordinates the processes itself.
"""

from __future__ import annotations

import json
import os

import jax

from flowjax import train


def start_run(config, workdir: str) -> train.MetricsWriter:
    """Creates `workdir`, writes the config there as `config.json`, returns its metrics writer."""
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    return train.MetricsWriter(workdir)


def write_results(workdir: str, rows: list[dict]) -> bool:
    """Writes `results.json` on the first process; returns whether this process is that one."""
    if jax.process_index() != 0:
        return False
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return True


class Preempted(Exception):
    """A run stopped on SIGTERM after saving its state at `step` into `directory`."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted (SIGTERM): saved step {step} to {directory}; "
                         "start the same command again to resume")
        self.step, self.directory = step, directory


class BadInput(Exception):
    """Input that does not fit (a data set missing from its data_dir, checkpoints of another
    model in the workdir): exit status 2 from the command line."""


def restore(ckpt: train.Checkpointer, state):
    """`ckpt.restore(state)`, with checkpoints that do not fit the state as :class:`BadInput`.

    A damaged latest checkpoint falls back to the one before (a warning);
    checkpoints whose leaves differ from the state's (another model config
    in the same workdir) stop the run instead of starting it afresh.
    """
    try:
        return ckpt.restore(state)
    except ValueError as e:
        raise BadInput(f"--workdir: {e}") from e


class NonFiniteStop(Exception):
    """A run stopped after `limit` consecutive non-finite steps; its checkpoints are left as is.

    The train step skips a step whose loss or gradients are NaN or infinite
    (:func:`flowjax.train.make_train_step`), so every saved state holds finite
    parameters; the run stops before saving again, so the latest checkpoint
    is the last one written before the streak was seen.
    """

    def __init__(self, step: int, consecutive: int, total: int, directory: str,
                 latest: int | None):
        where = (f"the latest checkpoint is step {latest} in {directory}" if latest is not None
                 else f"no checkpoint was saved yet in {directory}")
        super().__init__(
            f"stopped at step {step}: {consecutive} consecutive non-finite steps (NaN/inf loss "
            f"or gradients, {total} skipped in all, config.max_consecutive_nonfinite reached); "
            f"{where}. Lower the learning rate or check the data, then start the same command "
            "to resume from it")
        self.step, self.consecutive, self.total = step, consecutive, total
        self.directory, self.latest = directory, latest


def check_nonfinite(summary: dict, limit: int, step: int, ckpt) -> None:
    """Raises :class:`NonFiniteStop` if `summary` (of :func:`flowjax.train.summarize_metrics`)
    shows `limit` or more consecutive skipped steps.

    Call it only where the loop syncs with the host anyway (when it logs or
    saves): reading the counter waits for the step that produced it.
    """
    consecutive = int(summary["nonfinite_consecutive"])
    if consecutive >= limit:
        ckpt.wait()
        raise NonFiniteStop(step, consecutive, int(summary["nonfinite_total"]), ckpt.directory,
                            ckpt.latest_step)
