"""One of the two processes of `test_sharding.test_two_processes_train_save_and_restore`.

Run as `python tests/multihost_worker.py PROCESS_ID PORT WORKDIR`. Each
process has 4 CPU devices; through `jax.distributed` they form one 8-device
mesh. Each host feeds only its own half of every batch. The run trains 5
FSDP steps, saving at steps 3 and 5, restores step 3 (with the pipeline
position) into a fresh sharded state, trains it again to step 5, and checks
that this equals the first run bit for bit. Process 0 writes the gathered
final state to `WORKDIR/final.npz`.
"""

import os
import sys

process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                           "--xla_cpu_collective_call_terminate_timeout_seconds=60")
os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                  JAX_PROCESS_ID=str(process_id))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from flowjax import train  # noqa: E402

assert train.initialize_distributed()
assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_sharding as t  # noqa: E402

mesh = train.make_mesh()
params, loss, opt = t.mlp_problem()
fresh = train.create_train_state(jax.random.PRNGKey(1), params, opt)
shardings = train.state_shardings(fresh, mesh, train.FSDP(min_size=64))
rows = train.batch_sharding(mesh)
step = train.make_train_step(loss, opt, ema_decay=0.9, state_sharding=shardings,
                             batch_sharding=rows)


def local_batch(i):
    """This host's half of global batch `i` (rows `[32 p, 32 p + 32)`)."""
    full = t.global_batches()[i]
    return {k: v[32 * process_id: 32 * (process_id + 1)] for k, v in full.items()}


def run(state, start, stop, ckpt=None):
    for i in range(start, stop):
        state, _ = step(state, train.global_batch(local_batch(i), rows))
        jax.block_until_ready(state)  # block each multi-device step
        if ckpt is not None:
            ckpt.save(i + 1, state, pipeline={"next_batch": i + 1}, config={"run": "multihost"},
                      force=i + 1 == stop)
    return state


ckpt = train.Checkpointer(os.path.join(workdir, "ckpt"), save_every=3, keep=2)
final = run(train.shard(fresh, shardings), 0, 5, ckpt)
ckpt.wait()
assert ckpt.all_steps() == [3, 5], ckpt.all_steps()
restored = ckpt.restore(train.shard(fresh, shardings), step=3)
assert restored.pipeline == {"next_batch": 3} and restored.config == {"run": "multihost"}
again = run(restored.state, restored.pipeline["next_batch"], 5)
ckpt.close()

a = multihost_utils.process_allgather(final, tiled=True)
b = multihost_utils.process_allgather(again, tiled=True)
assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
if process_id == 0:
    np.savez(os.path.join(workdir, "final.npz"), *jax.tree.leaves(a))
print("ok", process_id)
