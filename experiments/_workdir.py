"""The start of every experiment run: its workdir, `config.json` and metrics writer."""

from __future__ import annotations

import os

from flowjax import train


def start_run(config, workdir: str) -> train.MetricsWriter:
    """Creates `workdir`, writes the config there as `config.json`, returns its metrics writer."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    return train.MetricsWriter(workdir)


class Preempted(Exception):
    """A run stopped on SIGTERM after saving its state at `step` into `directory`."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted (SIGTERM): saved step {step} to {directory}; "
                         "start the same command again to resume")
        self.step, self.directory = step, directory
