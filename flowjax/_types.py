"""Array type aliases used in flowjax's annotations (jaxtyping).

`B` is the batch axis and `*dims` the event shape of one sample, e.g. `[B, 2]`
for 2-D points or `[B, H, W, C]` for images.
"""

from __future__ import annotations

from typing import Any, Union

import jax
from jaxtyping import Array, ArrayLike, Bool, Float, Integer, Key, PRNGKeyArray, PyTree, Shaped

__all__ = ["Array", "ArrayLike", "Batch", "BatchTimes", "Bool", "Cond", "Float", "Integer",
           "Key", "KeyArray", "Params", "PyTree", "Scalar", "Shaped", "Times", "TimeGrid"]

#: A batch of samples, `[B, *dims]`.
Batch = Float[Array, "B *dims"]
#: One time per sample, `[B]`.
BatchTimes = Float[Array, " B"]
#: A scalar time or one time per sample.
Times = Union[float, Float[Array, ""], Float[Array, " B"]]
#: A time grid `[N + 1]`.
TimeGrid = Float[Array, " N1"]
#: A real scalar (a Python number or a 0-d array).
Scalar = Union[float, int, Float[Array, ""]]
#: A PRNG key: typed (`jax.random.key`) or raw (`jax.random.PRNGKey`).
KeyArray = Union[PRNGKeyArray, jax.Array]
#: Model parameters: any pytree of arrays.
Params = PyTree[Any]
#: A conditioning pytree whose leaves have a leading batch axis, or None.
Cond = Union[PyTree[Any], None]
