"""Sharded training on 8 host devices: data parallel and FSDP equal one device; checkpoints
restore across meshes; two processes with jax.distributed train, save and restore."""

import functools
import os
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flowjax import losses, models, paths, train


def mlp_problem():
    """A small MLP, its CFM loss and an Adam optimizer (also used by multihost_worker.py)."""
    module = models.MLP(hidden=(64, 64), time_dim=16)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    loss = functools.partial(losses.cfm_loss, apply_fn=models.model_fn(module),
                             path=paths.RectifiedFlow())
    return params, loss, optax.adam(1e-3)


def global_batches(n=5, b=64):
    return [{"x1": np.asarray(jax.random.normal(jax.random.PRNGKey(100 + i), (b, 2))) + 2.0}
            for i in range(n)]


def unet_problem():
    # One level (as in the tiny image configs): residual blocks, attention, classes; it
    # compiles in seconds on 2 cores, where two levels take about a minute for 3 programs.
    module = models.UNet(channels=8, channel_mult=(1,), num_res_blocks=1,
                         attention_resolutions=(8,), num_heads=2, dropout=0.0, num_classes=10,
                         num_groups=4)
    x = jnp.zeros((1, 8, 8, 1))
    params = jax.jit(module.init)(jax.random.PRNGKey(0), x, jnp.zeros((1,)),
                                  jnp.zeros((1,), jnp.int32))
    loss = functools.partial(losses.cfm_loss, apply_fn=models.model_fn(module),
                             path=paths.RectifiedFlow())
    batches = [{"x1": np.asarray(jax.random.normal(jax.random.PRNGKey(i), (16, 8, 8, 1))),
                "cond": np.arange(16, dtype=np.int32) % 10} for i in range(2)]
    # SGD with momentum: Adam's m / sqrt(v) turns last-bit differences of near-zero
    # gradients into differences of order 1e-6 (measured: 1 element in 9,216).
    return params["params"], loss, optax.sgd(1e-2, momentum=0.9), batches


def _train(params, loss, opt, batches, mesh=None, strategy="data", multi=False):
    strategy = {"data": train.DataParallel(), "fsdp": train.FSDP(min_size=64)}[strategy]
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    kw = {}
    if mesh is not None:
        shardings = train.state_shardings(state, mesh, strategy)
        state = train.shard(state, shardings)
        kw = dict(state_sharding=shardings,
                  batch_sharding=train.batch_sharding(mesh, leading=int(multi)))
    if multi:
        step = train.make_multi_step(loss, opt, ema_decay=0.9, **kw)
        state, m = step(state, jax.tree.map(lambda *b: np.stack(b), *batches))
        return state, np.asarray(m["loss"])
    step = train.make_train_step(loss, opt, ema_decay=0.9, **kw)
    out = []
    for b in batches:
        state, m = step(state, b)
        jax.block_until_ready(state)  # block each multi-device step
        out.append(float(m["loss"]))
    return state, np.asarray(out)


def _assert_close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.fast_cases(1)
@pytest.mark.parametrize("strategy", ["data", "fsdp"])
@pytest.mark.parametrize("multi", [False, True])
def test_mlp_steps_on_eight_devices_equal_one_device(strategy, multi):
    assert jax.device_count() == 8
    params, loss, opt = mlp_problem()
    ref, ref_loss = _train(params, loss, opt, global_batches(3))
    out, out_loss = _train(params, loss, opt, global_batches(3), train.make_mesh(), strategy,
                           multi)
    np.testing.assert_allclose(out_loss, ref_loss, rtol=1e-6)
    # FSDP reduce-scatters the gradients (another summation order than one device), and
    # Adam's m / sqrt(v) enlarges last-bit differences of near-zero gradients: measured
    # 1.6e-6 on 1 parameter of 4,096 after 3 steps.
    _assert_close(out, ref, 1e-6 if strategy == "data" else 5e-6)
    assert int(out.step) == 3
    specs = {tuple(x.sharding.spec) for x in jax.tree.leaves(out.params)}
    # FSDP splits the kernels (along their larger axis) and the 64 biases; data parallel
    # replicates all.
    assert specs == ({()} if strategy == "data" else
                     {(), ("data", None), (None, "data"), ("data",)})


@pytest.mark.slow
def test_unet_step_on_eight_devices_equals_one_device():
    params, loss, opt, batches = unet_problem()
    ref, ref_loss = _train(params, loss, opt, batches)
    # FSDP only: it splits the convolution, norm and attention parameters too, where data
    # parallelism (tested on the MLP) only splits the batch.
    out, out_loss = _train(params, loss, opt, batches, train.make_mesh(), "fsdp")
    np.testing.assert_allclose(out_loss, ref_loss, rtol=1e-6)
    _assert_close(out, ref, 1e-6)


@pytest.mark.slow
def test_fsdp_splits_the_state_memory():
    """Each device holds 1/8 of every sharded leaf and all of the small ones."""
    params, _, opt, _ = unet_problem()
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    mesh = train.make_mesh()

    def on_device0(placed):
        return sum(s.data.nbytes for x in jax.tree.leaves(placed) for s in x.addressable_shards
                   if s.device == jax.devices()[0])

    shardings = train.state_shardings(state, mesh, train.FSDP(min_size=256))
    expected = sum(x.nbytes // (8 if any(s.spec) else 1) for x, s in
                   zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True))
    fsdp = on_device0(train.shard(state, shardings))
    data = on_device0(train.shard(state, train.state_shardings(state, mesh, train.DataParallel())))
    assert data == sum(x.nbytes for x in jax.tree.leaves(state))
    assert fsdp == expected < 0.5 * data


@pytest.mark.slow
def test_restore_across_meshes_8_to_1_to_8(tmp_path):
    params, loss, opt = mlp_problem()
    state8, _ = _train(params, loss, opt, global_batches(2), train.make_mesh(), "fsdp")
    saved = jax.tree.map(np.asarray, state8)
    fresh = train.create_train_state(jax.random.PRNGKey(9), params, opt)
    mesh1 = train.make_mesh(jax.devices()[:1])
    with train.Checkpointer(str(tmp_path), save_every=1) as ckpt:
        ckpt.save(2, state8, pipeline={"epoch": 0, "step": 2}, config={"lr": 1e-3})
        ckpt.wait()
        one = ckpt.restore(train.shard(fresh, train.state_shardings(fresh, mesh1)))
        assert (one.step, one.pipeline, one.config) == (2, {"epoch": 0, "step": 2}, {"lr": 1e-3})
        assert all(x.sharding.mesh.size == 1 for x in jax.tree.leaves(one.state))
        ckpt.save(3, one.state, force=True)
        ckpt.wait()
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              fresh, train.state_shardings(fresh, train.make_mesh(),
                                                           train.FSDP(min_size=64)))
        eight = ckpt.restore(target)
    assert eight.step == 3
    assert ("data", None) in {tuple(x.sharding.spec) for x in jax.tree.leaves(eight.state.params)}
    for restored in (one.state, eight.state):
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_async_save_survives_donation_and_keeps_the_latest(tmp_path):
    """`save` returns before the write; the next (donating) step must not corrupt it."""
    params, loss, opt = mlp_problem()
    step = train.make_train_step(loss, opt, ema_decay=0.9)
    state = train.create_train_state(jax.random.PRNGKey(1), params, opt)
    expected = {}
    with train.Checkpointer(str(tmp_path), save_every=2, keep=2) as ckpt:
        for i, b in enumerate(global_batches(5)):
            state, _ = step(state, b)
            if ckpt.save(i + 1, state):
                expected[i + 1] = jax.tree.map(np.asarray, state)
        assert not ckpt.save(5, state)  # not due
        assert ckpt.save(5, state, force=True)
        expected[5] = jax.tree.map(np.asarray, state)
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]  # keep=2
        # A half-written save (orbax's temporary directory) is never the latest.
        os.makedirs(tmp_path / "6.orbax-checkpoint-tmp-1234" / "state")
        assert ckpt.latest_step == 5
        for s in (4, 5):
            got = ckpt.restore(state, step=s).state
            for a, b in zip(jax.tree.leaves(expected[s]), jax.tree.leaves(got), strict=True):
                np.testing.assert_array_equal(a, np.asarray(b))
    assert train.Checkpointer(str(tmp_path), save_every=1).latest_step == 5


def test_sigterm_sets_the_preemption_flag(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    ckpt = train.Checkpointer(str(tmp_path), save_every=10, catch_sigterm=True)
    assert not ckpt.reached_preemption(0)
    os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process lives on
    assert ckpt.reached_preemption(1)
    ckpt.close()
    assert signal.getsignal(signal.SIGTERM) is before


def test_bad_arguments(tmp_path, monkeypatch):
    mesh = train.make_mesh()
    with pytest.raises(TypeError, match="`strategy` must be a sharding strategy.*string 'fsdp'"):
        train.state_shardings({"w": jnp.zeros(8)}, mesh, "fsdp")
    with pytest.raises(TypeError, match="`strategy`.*class FSDP itself"):
        train.state_shardings({"w": jnp.zeros(8)}, mesh, train.FSDP)
    with pytest.raises(ValueError, match="`min_size`"):
        train.FSDP(min_size=-1)
    with pytest.raises(TypeError, match="`mesh`"):
        train.batch_sharding(jax.devices())
    with pytest.raises(ValueError, match="`save_every`"):
        train.Checkpointer(str(tmp_path), save_every=0)
    params, loss, opt = mlp_problem()
    with pytest.raises(ValueError, match="`state_sharding` and `batch_sharding`"):
        train.make_train_step(loss, opt, batch_sharding=train.batch_sharding(mesh))
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert train.initialize_distributed() is False  # one process: nothing to start
    with pytest.raises(ValueError, match="`coordinator_address`"):
        train.initialize_distributed(num_processes=2, process_id=1)
    with pytest.raises(ValueError, match="`num_processes`"):
        train.initialize_distributed("localhost:1234")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_save_and_restore(tmp_path):
    """2 processes x 4 CPU devices (jax.distributed, per-host input) equal 8 local devices."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    worker = os.path.join(root, "tests", "multihost_worker.py")
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, worker, str(i), port, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert out.splitlines()[-1].startswith("ok")  # after gloo's connection lines
    got = np.load(tmp_path / "final.npz")
    params, loss, opt = mlp_problem()
    ref, _ = _train(params, loss, opt, global_batches(5), train.make_mesh(), "fsdp")
    leaves = jax.tree.leaves(ref)
    assert len(got.files) == len(leaves)
    for i, b in enumerate(leaves):
        np.testing.assert_allclose(got[f"arr_{i}"], np.asarray(b), rtol=1e-6, atol=1e-6)
