"""Checkpoints under faults: damaged files, a full disk, a model that changed, no unpickling."""

import errno
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath

from flowjax import train

# A failed read or write leaves orbax's asyncio coroutines unfinished; pytest reports them.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(scale=1.0, rows=64):
    params = {"w": scale * jax.random.normal(jax.random.PRNGKey(0), (rows, 8)),
              "b": jnp.full((8,), scale)}
    state = train.create_train_state(jax.random.PRNGKey(1), params, optax.adam(1e-3))
    return state.replace(step=jnp.int32(round(scale)))


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _data_file(step_dir):
    """The largest array-data file of a checkpoint's state (tensorstore's OCDBT store)."""
    data = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    return max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)


def _damage(path, how):
    size = os.path.getsize(path)
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    elif how == "flip":
        with open(path, "r+b") as f:
            f.seek(size // 2)
            b = f.read(4)
            f.seek(size // 2)
            f.write(bytes(x ^ 0xFF for x in b))
    else:
        os.remove(path)


@pytest.fixture
def no_pickle(monkeypatch):
    """Any unpickling during the test raises."""
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, how, no_pickle):
    with train.Checkpointer(str(tmp_path), save_every=1, keep=3) as ckpt:
        ckpt.save(1, _state(1.0), pipeline={"next": 1})
        ckpt.save(2, _state(2.0), pipeline={"next": 2})
    _damage(_data_file(tmp_path / "2"), how)
    ckpt = train.Checkpointer(str(tmp_path), save_every=1, keep=3)
    with pytest.warns(RuntimeWarning, match="checkpoint step 2 .* is damaged"):
        restored = ckpt.restore(_state(0.0))
    assert (restored.step, restored.pipeline, restored.damaged) == (1, {"next": 1}, (2,))
    _assert_same(restored.state, _state(1.0))
    assert ckpt.all_steps() == [1] and os.path.isdir(tmp_path / "2.damaged")
    # Training goes on: step 2 can be saved again, and restores cleanly.
    assert ckpt.save(2, _state(2.0), pipeline={"next": 2})
    ckpt.wait()
    again = ckpt.restore(_state(0.0))
    assert again.step == 2 and again.damaged == ()
    _assert_same(again.state, _state(2.0))
    # With every checkpoint damaged nothing restores and nothing is moved.
    for step in (1, 2):
        _damage(_data_file(tmp_path / str(step)), how)
    with pytest.raises(RuntimeError, match=r"no checkpoint .* restores \(steps \[2, 1\]\)"):
        ckpt.restore(_state(0.0))
    assert ckpt.all_steps() == [1, 2]
    ckpt.close()


def test_full_disk_during_save_raises_a_clear_error_and_keeps_earlier_checkpoints(
        tmp_path, monkeypatch):
    ckpt = train.Checkpointer(str(tmp_path), save_every=1, keep=2)
    ckpt.save(1, _state(1.0))
    ckpt.save(2, _state(2.0))
    ckpt.wait()
    write_text = epath.Path.write_text

    def full(self, *args, **kwargs):  # the disk fills up while step 3 is written
        if str(tmp_path) in str(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(epath.Path, "write_text", full)
    with pytest.raises(OSError, match="cannot save checkpoint step 3 to .*no space left") as err:
        ckpt.save(3, _state(3.0))
        ckpt.wait()  # an asynchronous save fails in the background
    assert err.value.errno == errno.ENOSPC and str(tmp_path) in str(err.value)
    monkeypatch.undo()
    ckpt.close()
    # The two earlier checkpoints are intact (keep=2 deleted neither) and restore.
    ckpt = train.Checkpointer(str(tmp_path), save_every=1, keep=2)
    assert ckpt.all_steps() == [1, 2]
    for step in (1, 2):
        _assert_same(ckpt.restore(_state(0.0), step=step).state, _state(float(step)))
    ckpt.close()


def test_resume_with_other_model_shapes_names_the_leaf(tmp_path):
    with train.Checkpointer(str(tmp_path), save_every=1) as ckpt:
        ckpt.save(1, _state(1.0, rows=64))
        with pytest.raises(ValueError, match=r"leaf 'params/w' is float32\[64, 8\] in the "
                                             r"checkpoint but float32\[32, 8\] in the state"):
            ckpt.restore(_state(0.0, rows=32))
        with pytest.raises(ValueError, match=r"the checkpoint lacks 1 leaves of the state, "
                                             r"e\.g\. \['extra'\]; the state lacks"):
            ckpt.restore({"params": {"w": jnp.zeros((64, 8))}, "extra": jnp.zeros(3)})
        assert ckpt.all_steps() == [1]  # a mismatch is not damage: nothing was moved


def test_state_checksums_see_one_flipped_bit():
    """Orbax reads flipped bytes back silently; the per-leaf checksum changes with any bit."""
    tree = {"f32": jnp.linspace(-1.0, 1.0, 24).reshape(4, 6), "bf16": jnp.ones(5, jnp.bfloat16),
            "i32": jnp.arange(7), "flag": jnp.array([True, False]), "key": jax.random.PRNGKey(3)}
    base = train.state_checksums(tree)
    assert set(base) == set(tree) and train.state_checksums(dict(tree)) == base
    flips = {"f32": (np.float32, np.uint32, (2, 5), 1 << 31), "bf16": (None, None, (4,), 1 << 3),
             "i32": (np.int32, np.uint32, (0,), 1 << 30), "key": (np.uint32, np.uint32, (1,), 1)}
    for name, (dtype, word, index, bit) in flips.items():
        x = np.array(tree[name])
        if name == "bf16":
            x = jnp.asarray(x).at[index].set(jnp.bfloat16(1.0078125))  # the lowest mantissa bit
        else:
            x.view(word)[index] ^= np.array(bit, word)
        got = train.state_checksums({**tree, name: jnp.asarray(x)})
        assert got[name] != base[name], name
        assert all(got[k] == base[k] for k in base if k != name), name
    moved = train.state_checksums({**tree, "f32": jnp.roll(tree["f32"], 1)})
    assert moved["f32"] != base["f32"]  # the same values in another order
