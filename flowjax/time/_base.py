"""The time-sampler protocol: an immutable object drawing training times.

A time sampler is called as ``sampler(key, shape)`` and returns times in
[0, 1] of that shape (float32 unless `dtype` says otherwise); a pair sampler
(:class:`OrderedPairs`) returns two such arrays `(r, t)` with `r <= t`.
Samplers are :class:`equinox.Module` pytrees whose parameters are leaves.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from flowjax._checks import check_key, check_shape
from flowjax._types import Array, Float, KeyArray


class AbstractTimeSampler(eqx.Module):
    """Base class of every time sampler.

    Subclasses implement `_draw(key, shape)`; calling checks the key and the
    shape (at trace time) and casts to `dtype`.

    Class attribute `pairs`: True when the sampler returns `(r, t)`.
    """

    pairs: ClassVar[bool] = False

    def __call__(self, key: KeyArray, shape: int | tuple[int, ...],
                 dtype=None) -> Float[Array, "..."] | tuple[Float[Array, "..."], ...]:
        check_key("key", key)
        out = self._draw(key, check_shape("shape", shape))
        if dtype is None:
            return out
        return tuple(jnp.asarray(o, dtype) for o in out) if self.pairs else jnp.asarray(out, dtype)

    def _draw(self, key, shape):
        raise NotImplementedError
