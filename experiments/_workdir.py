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
