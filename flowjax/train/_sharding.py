"""Sharded training: a device mesh, data-parallel and FSDP layouts, global batches, hosts.

flowjax shards with `jax.jit` and :class:`jax.sharding.NamedSharding` on a
one-axis mesh named `"data"`, the successor of `pmap`: the same jitted step
runs on 1 device, on 8, or on every device of every host, and XLA inserts the
collectives. Two layouts of the train state:

- :class:`DataParallel` (data parallelism, DDP): parameters, EMA and optimizer state are
  replicated; the batch is split along its first axis. The gradient is the
  mean over the global batch, so the step equals the single-device step up
  to the order of the floating-point sums.
- :class:`FSDP` (fully sharded data parallelism, ZeRO-3): every large leaf of the
  state is also split, along its largest axis that the device count divides;
  XLA gathers parameters where they are used and reduce-scatters gradients.
  Same results, `1 / num_devices` of the state's memory per device.

For several hosts, call :func:`initialize_distributed` first: every process
then sees the global device list, builds the same mesh and jits the same step,
and each host feeds only its own rows of the batch (:func:`global_batch`).
"""

from __future__ import annotations

import math
import os

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flowjax._checks import check_instance, check_number
from flowjax._types import PyTree


class AbstractShardingStrategy(eqx.Module):
    """How :func:`state_shardings` lays out each leaf of a train state over a one-axis mesh."""

    def spec(self, shape: tuple[int, ...], num_shards: int, axis: str) -> P:
        """The partition spec of a leaf of this shape."""
        raise NotImplementedError


class DataParallel(AbstractShardingStrategy):
    """Data parallelism: every leaf of the state is replicated on every device."""

    def spec(self, shape, num_shards, axis):
        return P()


class FSDP(AbstractShardingStrategy):
    """Fully sharded data parallelism: each large leaf is split over the devices.

    A leaf of at least `min_size` elements is split along its largest axis
    that the mesh size divides (Adam's moments get the layout of their
    parameter); smaller or indivisible leaves stay replicated (a gather
    costs more than it saves).

    Args:
      min_size: the smallest leaf, in elements, that is split.
    """

    min_size: int = eqx.field(static=True, default=2 ** 14)

    def __check_init__(self):
        check_number("min_size", self.min_size, low=0, integer=True)

    def spec(self, shape, num_shards, axis):
        if num_shards == 1 or math.prod(shape) < self.min_size:
            return P()
        dims = [d for d in sorted(range(len(shape)), key=lambda d: -shape[d])
                if shape[d] % num_shards == 0]
        if not dims:
            return P()
        spec = [None] * len(shape)
        spec[dims[0]] = axis
        return P(*spec)


def make_mesh(devices=None, *, axis_name: str = "data") -> Mesh:
    """A one-axis mesh over `devices` (default: every device of every process).

    The axis type is `Auto`, so jit propagates shardings as `pmap` users
    expect (the default of :func:`jax.make_mesh` is now `Explicit`).
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` must name at least one device.")
    return jax.make_mesh((len(devices),), (axis_name,),
                         axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def _axis(mesh: Mesh) -> str:
    if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
        raise TypeError(f"`mesh` must be a one-axis jax.sharding.Mesh (see make_mesh), got {mesh!r}.")
    return mesh.axis_names[0]


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device of `mesh`."""
    _axis(mesh)
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, *, leading: int = 0) -> NamedSharding:
    """Rows split over the mesh: the batch axis is `leading` (1 for K stacked batches)."""
    return NamedSharding(mesh, P(*([None] * leading), _axis(mesh)))


def state_shardings(state: PyTree, mesh: Mesh,
                    strategy: AbstractShardingStrategy = DataParallel()) -> PyTree:
    """The sharding of every leaf of a train state (a pytree of NamedSharding).

    Args:
      state: a :class:`TrainState` (or any pytree of arrays, concrete or
        `jax.ShapeDtypeStruct`).
      mesh: a one-axis mesh (:func:`make_mesh`).
      strategy: :class:`DataParallel` (every leaf replicated) or
        :class:`FSDP` (large leaves split over the devices).
    """
    axis = _axis(mesh)
    check_instance("strategy", strategy, AbstractShardingStrategy,
                   "a sharding strategy (flowjax.train.DataParallel() or FSDP())")
    return jax.tree.map(
        lambda x: NamedSharding(mesh, strategy.spec(tuple(np.shape(x)), mesh.size, axis)), state)


def shard(tree, shardings):
    """Places `tree` (the same values on every process) with `shardings` (a matching pytree).

    On one process this is `jax.device_put`. With several processes each one
    fills only its own devices' shards from its host copy.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, s):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    return jax.tree.map(put, tree, shardings)


def global_batch(local, sharding: NamedSharding):
    """A global batch from each process's own rows (`make_array_from_process_local_data`).

    Each host passes its `B / num_processes` rows (e.g. from a
    :class:`flowjax.data.ImagePipeline` with its `process_index`); the result
    is one `jax.Array` of `B` rows split by `sharding`. On one process it is
    the batch itself, placed.
    """
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local)


def _on_cluster(env) -> bool:
    """Whether a multi-process SLURM, Open MPI or TPU-pod job is visible in `env`."""
    return (int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
            or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, **kwargs) -> bool:
    """Starts `jax.distributed` when the run spans several processes; returns whether it did.

    The arguments default to the environment variables
    `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`
    and `JAX_PROCESS_ID`. Without them, on a SLURM, Open MPI or TPU-pod job
    JAX detects all three itself; on a single machine with none of these
    nothing happens (one process). Call it before any other JAX call.
    `kwargs` go to :func:`jax.distributed.initialize` (e.g. `local_device_ids`).
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if coordinator_address is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise ValueError("`coordinator_address` (or JAX_COORDINATOR_ADDRESS) is needed "
                             "when `num_processes` or `process_id` is given.")
        if not _on_cluster(env):
            return False
    elif num_processes is None or process_id is None:
        raise ValueError("`num_processes` and `process_id` (or JAX_NUM_PROCESSES and "
                         "JAX_PROCESS_ID) must be given with a coordinator address.")
    if num_processes == 1:
        return False
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    return True
