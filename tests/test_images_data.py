"""Image pipelines: tfds (mock data) and digits; shapes, range, per-host shards, determinism, resume."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flowjax import data


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_pipeline_with_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=64):
        source = data.tfds_source(name, "train")
        assert len(source) == 64
        first = data.ImagePipeline(source, 16, seed=3, flip=True)
        batch = next(first)
        assert batch["x1"].shape == (16, *shape) and batch["x1"].dtype == np.float32
        assert batch["cond"].shape == (16,) and batch["cond"].dtype == np.int32
        assert -1.0 <= batch["x1"].min() and batch["x1"].max() <= 1.0
        assert batch["x1"].max() - batch["x1"].min() > 1.0  # the whole range is used
        # Same seed, same batches.
        again = data.ImagePipeline(source, 16, seed=3, flip=True)
        np.testing.assert_array_equal(next(again)["x1"], batch["x1"])
        assert not np.array_equal(next(data.ImagePipeline(source, 16, seed=4))["x1"],
                                  batch["x1"])
        # Two hosts: disjoint halves of each global batch that together form it.
        whole = data.ImagePipeline(source, 16, seed=3, process_index=0, process_count=1)
        hosts = [data.ImagePipeline(source, 16, seed=3, process_index=i, process_count=2)
                 for i in range(2)]
        for _ in range(6):  # more than one epoch (4 batches per epoch)
            full = next(whole)["x1"]
            parts = [next(h)["x1"] for h in hosts]
            assert parts[0].shape[0] == 8
            np.testing.assert_array_equal(np.concatenate(parts), full)
            flat = [p.reshape(8, -1) for p in parts]
            assert not any((a == b).all() for a in flat[0] for b in flat[1])


def test_epochs_cover_the_data_once_and_reshuffle():
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
    source = data.ArraySource(images, np.arange(40))
    pipe = data.ImagePipeline(source, 8, seed=0)
    epoch = [next(pipe)["cond"] for _ in range(5)]
    assert sorted(np.concatenate(epoch)) == list(range(40))
    second = [next(pipe)["cond"] for _ in range(5)]
    assert sorted(np.concatenate(second)) == list(range(40))
    assert not np.array_equal(np.concatenate(epoch), np.concatenate(second))
    # Resume from a saved position gives the same stream.
    state = pipe.state()
    expected = next(pipe)["cond"]
    fresh = data.ImagePipeline(source, 8, seed=0)
    fresh.restore(state)
    np.testing.assert_array_equal(next(fresh)["cond"], expected)


def test_digits_source_and_flips():
    train, test = data.digits_source("train"), data.digits_source("test")
    assert len(train) + len(test) == 1797 and len(test) == 297
    ex = train[0]
    assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.uint8
    assert ex["image"].max() <= 255 and 0 <= ex["label"] < 10
    plain = next(data.ImagePipeline(train, 64, seed=1, shuffle=False))["x1"]
    flipped = next(data.ImagePipeline(train, 64, seed=1, shuffle=False, flip=True))["x1"]
    mirrored = [np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p)
                for f, p in zip(flipped, plain)]
    same = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
    assert all(m or s for m, s in zip(mirrored, same)) and 10 < sum(mirrored) < 54


def test_pipeline_errors_name_the_argument():
    source = data.digits_source("test")
    with pytest.raises(ValueError, match="batch_size"):
        data.ImagePipeline(source, 15, process_count=2, process_index=0)
    with pytest.raises(ValueError, match="process_index"):
        data.ImagePipeline(source, 16, process_count=2, process_index=2)
    with pytest.raises(ValueError, match="split"):
        data.digits_source("valid")
    with pytest.raises(ValueError, match="data_dir"):
        data.tfds_source("mnist", data_dir="/nonexistent/tfds")
    with pytest.raises(ValueError, match="images"):
        data.ArraySource(np.zeros((2, 8, 8)), np.zeros(2))
