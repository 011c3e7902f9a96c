# %% [markdown]
# # Data-parallel training on several devices, and an exact resume
#
# A flowjax train step is one `jax.jit` program; sharding it over devices is
# a matter of telling `jit` where the train state and the batch live. This
# tutorial trains the same model on a mesh of devices, checks it against the
# one-device run, and shows that a run stopped halfway, saved with orbax and
# restored in a new `Checkpointer`, continues to the same parameters, bit
# for bit. You will learn
#
# - how to build a mesh (`fj.train.make_mesh`) and lay out a train state
#   (`fj.train.state_shardings` with `DataParallel` or `FSDP`) and a batch
#   (`fj.train.batch_sharding`),
# - how to jit a sharded step (`fj.train.make_train_step` with
#   `state_sharding=` and `batch_sharding=`),
# - how to save and restore a run with `fj.train.Checkpointer`, including
#   the position of the data stream, and
# - what is exact (a resume on the same layout) and what is only close (a
#   different number of devices).
#
# Set `FLOWJAX_TUTORIAL_SMALL=1` to run a few-second version (the test suite
# does).
#
# ## Devices on a CPU
#
# A CPU is one JAX device, but XLA can split it into several with
# `--xla_force_host_platform_device_count=8`, which is enough to run and test
# sharded code on a laptop (the eight "devices" share the same cores: it is
# not faster). The flag must be set before JAX starts, so the cell below
# sets it only when the environment does not already and JAX is not yet
# imported. In a process where JAX is already running (a notebook after an
# earlier cell, or the test suite, which starts with eight CPU devices) the
# tutorial uses whatever `jax.device_count()` says, one device included.
# On a machine with GPUs or TPUs `jax.devices()` are those and the flag,
# which only concerns the host platform, changes nothing.

# %%
import os
import sys

if "jax" not in sys.modules and \
        "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import functools  # the imports come after XLA_FLAGS is set
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flowjax as fj

SMALL = os.environ.get("FLOWJAX_TUTORIAL_SMALL") == "1"
STEPS = 40 if SMALL else 600  # an even number: the resumed run stops at STEPS // 2
PER_DEVICE = 32
N_DEVICES = jax.device_count()
BATCH = PER_DEVICE * N_DEVICES  # the global batch; each device holds PER_DEVICE rows
print(f"{N_DEVICES} devices: {jax.devices()}")

# %% [markdown]
# ## A mesh and the layouts
#
# `make_mesh()` is a one-axis mesh named `"data"` over every device.
# `DataParallel()` replicates every leaf of the state (params, EMA, Adam's
# moments) and `batch_sharding` splits the batch by rows, so each device
# computes the gradient of its rows and XLA averages them (an all-reduce):
# the step is the one-device step on the global batch. `FSDP(min_size=...)`
# also splits each leaf of at least `min_size` elements along its largest
# axis that the device count divides, so every device stores a fraction of
# the state; XLA gathers the parameters where they are used.

# %%
mesh = fj.train.make_mesh()
module = fj.models.MLP(hidden=(64, 64))
apply_fn = fj.models.model_fn(module)
params = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
optimizer = optax.adam(optax.cosine_decay_schedule(2e-3, STEPS))
loss_fn = functools.partial(fj.losses.cfm_loss, apply_fn=apply_fn,
                            path=fj.paths.RectifiedFlow())
RUN_KEY = jax.random.PRNGKey(1)


def fresh_state():
    """Step 0 of the run (the same values every call)."""
    return fj.train.create_train_state(RUN_KEY, params, optimizer)


state_sh = fj.train.state_shardings(fresh_state(), mesh, fj.train.DataParallel())
fsdp_sh = fj.train.state_shardings(fresh_state(), mesh, fj.train.FSDP(min_size=1024))
batch_sh = fj.train.batch_sharding(mesh)
for name, sh in [("DataParallel", state_sh), ("FSDP", fsdp_sh)]:
    specs = {str(s.spec) for s in jax.tree.leaves(sh.params)}
    print(f"{name:12s} partition specs of the params: {sorted(specs)}")

# %% [markdown]
# ## The data stream
#
# For a resume to be exact, the batches after the restore must be the ones
# the uninterrupted run would have seen. Here batch `i` is a pure function of
# `i` (drawn from `fold_in(key, i)`), so the position in the stream is one
# integer, saved with the checkpoint as the `pipeline` item (for images,
# `fj.data.ImagePipeline.state()` plays this part). The batch is placed
# with `batch_sh`: each device receives its own rows. (With several hosts
# each would build only its rows and join them with `fj.train.global_batch`.)

# %%
DATA_KEY = jax.random.PRNGKey(2)


@jax.jit
def make_batch(i):
    return {"x1": fj.data.eight_gaussians(jax.random.fold_in(DATA_KEY, i), BATCH) / 5.0}


def batch(i, sharding):
    b = make_batch(i)
    return b if sharding is None else jax.device_put(b, sharding)


# %% [markdown]
# ## Training on the mesh
#
# `make_train_step` with both shardings jits the step with them as the
# input and output layouts (the metrics come back replicated); the input
# state is donated, so the step updates it in place. The step's key is
# `fold_in(state.key, step)`, and JAX's random bits do not depend on the
# sharding, so the run is a pure function of its initial state and its
# batches.
#
# On the host platform the loop blocks on every step. The eight CPU
# "devices" are threads of one runtime; with several sharded programs
# queued at once (JAX dispatches asynchronously) an all-reduce can wait for
# a thread that is busy in the next program, and XLA aborts the process
# after its rendezvous timeout. One program in flight at a time avoids it
# (flowjax's own sharding tests block for the same reason). On GPUs and
# TPUs the loop is left asynchronous, so the host prepares the next batch
# while the devices compute.
#
# XLA may also print "Involuntary full rematerialization" while compiling
# the sharded step. It concerns flowjax's compiled value checks (the loss
# checks that the sampled times lie in [0, 1], through `equinox.error_if`,
# which XLA places on one device); the values are unaffected, and
# `fj.set_value_checks(False)` before the step is built (or
# `FLOWJAX_VALUE_CHECKS=0`) leaves the checks, and the message, out.

# %%
BLOCK_EACH_STEP = jax.default_backend() == "cpu"
step = fj.train.make_train_step(loss_fn, optimizer, state_sharding=state_sh,
                                batch_sharding=batch_sh)


def run(state, start, stop, train_step, sharding):
    for i in range(start, stop):
        state, metrics = train_step(state, batch(i, sharding))
        if BLOCK_EACH_STEP:
            jax.block_until_ready(state)
    print(f"  steps {start}-{stop - 1}: last loss {float(metrics['loss']):.4f}")
    return state


print("one go, on the mesh")
straight = run(fj.train.shard(fresh_state(), state_sh), 0, STEPS, step, batch_sh)

# %% [markdown]
# ## Stop halfway, save, restore, continue
#
# The second run trains `STEPS // 2` steps and saves the whole train state
# (params, EMA, optimizer state, step counter, key) with the stream
# position. `save` copies the arrays off the devices before it returns and
# writes in the background; leaving the `with` block waits for the files.
# A new `Checkpointer` on the same directory, as a restarted job would make,
# restores into a template: a fresh state laid out by `state_sh`, whose
# shapes, dtypes and shardings the restored arrays take. Each save also
# stores a checksum of every leaf, verified on restore.

# %%
HALF = STEPS // 2
workdir = tempfile.mkdtemp(prefix="flowjax-tutorial-07-")

print("first half, then a checkpoint")
half = run(fj.train.shard(fresh_state(), state_sh), 0, HALF, step, batch_sh)
with fj.train.Checkpointer(workdir, save_every=HALF) as ckpt:
    assert ckpt.save(int(half.step), half, pipeline={"next_batch": HALF})
del half  # the job ends here

with fj.train.Checkpointer(workdir, save_every=HALF) as ckpt:
    restored = ckpt.restore(fj.train.shard(fresh_state(), state_sh))
print(f"restored step {restored.step}, stream position {restored.pipeline}")
assert restored.step == HALF and int(restored.state.step) == HALF

print("second half, from the checkpoint")
resumed = run(restored.state, restored.pipeline["next_batch"], STEPS, step, batch_sh)

# %% [markdown]
# The resumed run and the run in one go end with the same state, every leaf
# bit for bit: the same program on the same layout, fed the same batches and
# keys, and orbax stores the arrays' exact bits.

# %%
def max_gap(a, b):
    """The largest absolute difference over the leaves, on the host (any devices)."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


bitwise = all(bool(jnp.array_equal(x, y)) for x, y in
              zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True))
print(f"resumed vs one go: every leaf bitwise equal: {bitwise}, "
      f"max |params gap| {max_gap(straight.params, resumed.params):.1e}")
assert bitwise
assert int(resumed.step) == STEPS

# %% [markdown]
# ## Another layout, another device count
#
# A checkpoint is not tied to the layout it was written from. Restoring the
# same file into an FSDP template gives the same values, now split over the
# devices; restoring on one device would work the same way. What is *not*
# bitwise is training on a different number of devices: the gradient is
# then summed in another order, so the runs differ by float32 rounding,
# which the optimizer carries along. The one-device run below (no
# shardings: `make_train_step` without them is a plain jit on the default
# device) stays close to the mesh run, but not equal. On a single device
# the mesh run above *is* a one-device run (a mesh of one): everything here
# runs, with nothing to split.

# %%
with fj.train.Checkpointer(workdir, save_every=HALF) as ckpt:
    as_fsdp = ckpt.restore(fj.train.shard(fresh_state(), fsdp_sh))
    as_data_parallel = ckpt.restore(fj.train.shard(fresh_state(), state_sh))  # (the first
    # restored state was donated to the resumed run's steps)
fsdp_specs = [s.spec for s in jax.tree.leaves(fsdp_sh.params)]
got_specs = [x.sharding.spec for x in jax.tree.leaves(as_fsdp.state.params)]
assert got_specs == fsdp_specs
assert max_gap(as_fsdp.state, as_data_parallel.state) == 0.0

print("one go, on one device")
single_step = fj.train.make_train_step(loss_fn, optimizer)
single = run(fresh_state(), 0, STEPS, single_step, None)
gap = max_gap(single.params, straight.params)
scale = max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(straight.params))
print(f"{N_DEVICES} devices vs 1: max |params gap| {gap:.1e} (largest parameter {scale:.2f})")

# Measured on a 2-core x86 CPU (no GPU) with 8 host devices: the resume is
# bitwise in both sizes; 8 devices vs 1 differ by 2.2e-7 after 40 steps
# (largest parameter 0.32) and by 4.3e-7 after 600 (largest 0.60).
assert gap < 1e-4 * max(1.0, scale)
shutil.rmtree(workdir)  # the checkpoints of this tutorial are not kept
