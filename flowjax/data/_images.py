"""Image input pipelines: tensorflow-datasets by name, or scikit-learn's bundled digits.

Both give a random-access *source* (`len(source)`, `source[i] -> {"image":
uint8 [H, W, C], "label": int}`); :class:`ImagePipeline` turns a source into
deterministic, shuffled, repeated, per-host batches scaled to [-1, 1].
`tfds.data_source` reads prepared array_record files without TensorFlow and
never downloads here: prepare the data set once where there is internet
(`tfds build mnist`) and pass its `data_dir`.
"""

from __future__ import annotations

import os

import numpy as np

from flowjax._checks import check_number


def _check_str(name, value, *, optional=False):
    if not (isinstance(value, str) or (optional and value is None)):
        raise TypeError(f"`{name}` must be a string{' or None' if optional else ''}, "
                        f"got {value!r}.")


def _check_split(split, num_test):
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    check_number("num_test", num_test, low=1, high=1796, integer=True)


def _check_tfds(name, split, data_dir):
    _check_str("name", name)
    _check_str("split", split)
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"`data_dir` must be a path or None, got {data_dir!r}.")


class ArraySource:
    """A random-access source over in-memory arrays `images [N, H, W, C] uint8`, `labels [N]`."""

    def __init__(self, images, labels):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] == 0:
            raise ValueError(f"`images` must be uint8 [N, H, W, C] with N >= 1, got "
                             f"{images.dtype} {images.shape}.")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"`labels` must have shape {images.shape[:1]}, got {labels.shape}.")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"`labels` must be integers, got {labels.dtype}.")
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}


def digits_source(split: str = "train", *, num_test: int = 297) -> ArraySource:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) as a source, offline.

    Pixel values 0..16 are mapped to uint8 0..255; images are `[8, 8, 1]`.
    The split is fixed: the last `num_test` images are `"test"`, the rest `"train"`.
    """
    _check_split(split, num_test)
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    sl = slice(None, -num_test) if split == "train" else slice(-num_test, None)
    return ArraySource(images[sl], d.target[sl])


def tfds_source(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None):
    """A tensorflow-datasets data set by name (`mnist`, `cifar10`, ...) as a random-access source.

    Uses `tfds.data_source` (no TensorFlow needed). Raises a ValueError naming
    `data_dir` if the prepared data are not there (no download is attempted).
    """
    _check_tfds(name, split, data_dir)
    return _open_tfds(name, split, data_dir)


def _open_tfds(name, split, data_dir):
    tfds = _import_tfds()
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as err:  # tfds raises several types for missing data
        raise ValueError(f"cannot open tfds data set {name!r} split {split!r} in "
                         f"data_dir={data_dir!r}: {err}") from err


def _import_tfds():
    """tensorflow-datasets, imported on first use (the `[data]` extra)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError("flowjax.data.tfds_source needs tensorflow-datasets: "
                          "pip install 'flowjax-fm[data]'.") from err
    return tfds


class ImagePipeline:
    """Shuffled, repeated, per-host batches of images in [-1, 1] and labels.

    Every process shuffles the whole data set with the same seed each epoch
    and takes its own contiguous slice of every global batch, so the hosts'
    batches are disjoint and together form the global batch. Iteration is a
    pure function of `(seed, position)`: :meth:`state` and
    :meth:`restore` resume exactly (the position is saved with checkpoints).

    Args:
      source: a random-access source (:func:`tfds_source`, :func:`digits_source`).
      batch_size: the global batch size (divisible by `process_count`).
      seed: the shuffling and flipping seed.
      process_index: this host (`jax.process_index()` by default).
      process_count: the number of hosts (`jax.process_count()` by default).
      shuffle: reshuffle each epoch (else the source order).
      flip: random horizontal flips.
      image_key: the image's field name in the source's examples.
      label_key: the label's field name in the source's examples.
    """

    def __init__(self, source, batch_size: int, *, seed: int = 0, process_index=None,
                 process_count=None, shuffle: bool = True, flip: bool = False,
                 image_key: str = "image", label_key: str = "label"):
        import jax

        if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")) \
                or isinstance(source, (str, bytes, np.ndarray)):
            raise TypeError(f"`source` must be a random-access source (len(source), "
                            f"source[i] -> dict), got {type(source).__name__}.")
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        check_number("process_count", self.process_count, low=1, integer=True)
        check_number("process_index", self.process_index, low=0,
                     high=self.process_count - 1, integer=True)
        check_number("batch_size", batch_size, low=1, integer=True)
        check_number("seed", seed, low=0, integer=True)
        if batch_size % self.process_count:
            raise ValueError(f"`batch_size` must be a positive multiple of process_count="
                             f"{self.process_count}, got {batch_size!r}.")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"`process_index` must lie in [0, {self.process_count}), "
                             f"got {self.process_index}.")
        if len(source) < batch_size:
            raise ValueError(f"the source has {len(source)} examples, fewer than "
                             f"`batch_size`={batch_size}.")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.shuffle, self.flip = shuffle, flip
        self.image_key, self.label_key = image_key, label_key
        self.local_batch = batch_size // self.process_count
        self.steps_per_epoch = len(source) // batch_size
        self.position = 0  # global batches produced so far

    def state(self) -> dict[str, int]:
        """The position in the stream (an int), for checkpoints."""
        return {"position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        """Resumes at the position :meth:`state` returned."""
        self.position = int(state["position"])

    def _order(self, epoch):
        n = len(self.source)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __iter__(self):
        return self

    def __next__(self):
        epoch, step = divmod(self.position, self.steps_per_epoch)
        start = step * self.batch_size + self.process_index * self.local_batch
        idx = self._order(epoch)[start:start + self.local_batch]
        examples = [self.source[int(i)] for i in idx]
        images = np.stack([np.asarray(e[self.image_key]) for e in examples])
        labels = np.asarray([int(e[self.label_key]) for e in examples], np.int32)
        images = images.astype(np.float32) / 127.5 - 1.0
        if self.flip:
            rng = np.random.default_rng([self.seed, epoch, step, self.process_index, 1])
            mirror = rng.random(len(idx)) < 0.5
            images[mirror] = images[mirror, :, ::-1]
        self.position += 1
        return {"x1": images, "cond": labels}
