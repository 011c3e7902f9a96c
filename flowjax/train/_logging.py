"""Metrics written as JSON lines: one object per logging step."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np


def _plain(value):
    """JSON-ready Python scalars from JAX/NumPy scalars (non-finite floats become strings)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "shape") or isinstance(value, (np.generic,)):
        value = np.asarray(value)
        value = value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends `{"step": ..., **metrics}` lines to `<workdir>/metrics.jsonl`.

    Opening in append mode keeps the lines of earlier (interrupted) runs.
    With several processes only the first one writes (the metrics of a
    sharded step are global, the same on every process).
    """

    def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, filename)

    def write(self, step: int, metrics: dict, **tags) -> None:
        if jax.process_index() != 0:
            return
        record = {"step": int(step), **_plain(tags), **_plain(metrics)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]
