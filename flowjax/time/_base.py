"""The time-sampler protocol: an immutable object drawing training times.

A time sampler is called as ``sampler(key, shape)`` and returns times in
[0, 1] of that shape (float32 unless `dtype` says otherwise); a pair sampler
(:class:`OrderedPairs`) returns two such arrays `(r, t)` with `r <= t`.
Samplers are :class:`equinox.Module` pytrees whose parameters are leaves.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx


class AbstractTimeSampler(eqx.Module):
    """Base class of every time sampler.

    Class attribute `pairs`: True when the sampler returns `(r, t)`.
    """

    pairs: ClassVar[bool] = False

    def __call__(self, key, shape, dtype=None):
        raise NotImplementedError
