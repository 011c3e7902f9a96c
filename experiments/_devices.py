"""The experiments' devices: `config.sharding` (strategy and device count) and its mesh.

Every experiment config has

    config.sharding.strategy = "data"   # data parallel; or "fsdp"
    config.sharding.num_devices = 0     # 0: every device of every host

and trains on the one-axis mesh it names (`flowjax.train.make_mesh`).
"""

from __future__ import annotations

import jax

from flowjax import train


STRATEGIES = {"data": train.DataParallel, "fsdp": train.FSDP}


def strategy(config):
    """The sharding strategy object that `config.sharding.strategy` names."""
    return STRATEGIES[config.sharding.strategy]()


def validate_sharding(config, batch_size: int):
    """Checks `config.sharding` against the devices present; raises ValueError naming the field."""
    if config.sharding.strategy not in STRATEGIES:
        raise ValueError(f"config.sharding.strategy must be one of {tuple(STRATEGIES)}, "
                         f"got {config.sharding.strategy!r}.")
    n = int(config.sharding.num_devices) or jax.device_count()
    if not 1 <= n <= jax.device_count():
        raise ValueError(f"config.sharding.num_devices must lie in [0, {jax.device_count()}] "
                         f"(0: all), got {config.sharding.num_devices}.")
    if batch_size % n:
        raise ValueError(f"config.batch_size ({batch_size}) must be a multiple of the "
                         f"number of devices ({n}).")


def make_mesh(config):
    """The run's one-axis mesh: `config.sharding.num_devices` devices (0: all)."""
    return train.make_mesh(jax.devices()[:int(config.sharding.num_devices) or None])
