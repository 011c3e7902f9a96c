"""Time and class embeddings shared by the models: sinusoids of t, checked labels, and the
conditioning vector of the image models."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from flowjax._checks import error_if
from flowjax._types import Array, Cond, Float, Integer, Times


def check_multiple(name: str, value: int, k: int) -> int:
    """A ValueError naming `name` unless `value` is a multiple of `k`."""
    if value % k:
        raise ValueError(f"`{name}` must be {'even' if k == 2 else f'divisible by {k}'}, "
                         f"got {value}.")
    return value


def sinusoidal_embedding(t: Times, dim: int, *, max_period: float = 10_000.0,
                         scale: float = math.pi) -> Float[Array, "B dim"]:
    r"""Transformer-style embedding of times `t: [B]` into `[B, dim]`.

    :math:`[\cos(s t \omega_i), \sin(s t \omega_i)]` with
    :math:`\omega_i = P^{-i/(dim/2)}` (Vaswani et al. 2017). With the default
    `scale=pi` the fastest sinusoid makes half a turn over t in [0, 1] (period
    2): the features are smooth on [0, 1] and so is a network of them, so
    fixed-step solvers reach their order on trained fields. (`scale=1` is as
    smooth but leaves the features nearly linear in t, and a net learns the
    t-dependence more slowly.) DDPM's `scale=1000` (Ho et al. 2020; t
    stretched to its integer steps) gives periods down to 0.006 in t.
    """
    check_multiple("dim", dim, 2)
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = scale * jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def check_labels(cond: Cond, num_classes: int, batch: int) -> Integer[Array, " B"]:
    """Integer labels `[B]` for an embedding of `num_classes + 1` rows, with a compiled range check.

    `None` is the "no label" index `num_classes` (classifier-free guidance's
    null label) for every sample; any label outside `[0, num_classes]` is an
    error (inside `jit` too, see :func:`flowjax._checks.error_if`), where an
    embedding lookup would wrap a negative index or return NaN.
    """
    if cond is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    cond = jnp.asarray(cond)
    if not jnp.issubdtype(cond.dtype, jnp.integer):
        raise TypeError(f"`cond` must hold integer class labels, got dtype {cond.dtype}.")
    return error_if(cond, jnp.any((cond < 0) | (cond > num_classes)),
                    f"`cond` must hold class labels in [0, num_classes) = [0, {num_classes}), "
                    f"or {num_classes} (num_classes) for no label.")


class Conditioning(nn.Module):
    """`emb = MLP(sin(t)) [+ MLP(sin(h))] [+ Embed(class)]`, `[B, dim]`.

    Attributes:
      dim: output width.
      freq_dim: width of the sinusoidal features.
      time_scale: factor applied to t (and h) before the sinusoids (pi: smooth
        in t on [0, 1]; see :func:`sinusoidal_embedding`).
      num_classes: if set, `cond` is an int label in `[0, num_classes)`; index
        `num_classes` is "no label".
      two_times: also embed the jump duration `h` of a flow map (MeanFlow's `t - r`).
      dtype: computation dtype.
    """

    dim: int
    freq_dim: int = 128
    time_scale: float = math.pi
    num_classes: int | None = None
    two_times: bool = False
    dtype: object = jnp.float32

    def _embed(self, s, name):
        feats = sinusoidal_embedding(s, self.freq_dim, scale=self.time_scale)
        feats = nn.Dense(self.dim, dtype=self.dtype, name=f"{name}_0")(feats)
        return nn.Dense(self.dim, dtype=self.dtype, name=f"{name}_1")(nn.silu(feats))

    @nn.compact
    def __call__(self, t: Float[Array, " B"], cond: Cond = None,
                 h: Float[Array, " B"] | None = None) -> Float[Array, "B dim"]:
        emb = self._embed(t, "time")
        if self.two_times:
            emb = emb + self._embed(jnp.zeros_like(t) if h is None else h, "duration")
        elif h is not None:
            raise ValueError("`h` is only accepted by a model with two_times=True.")
        if self.num_classes is not None:
            labels = check_labels(cond, self.num_classes, t.shape[0])
            emb = emb + nn.Embed(self.num_classes + 1, self.dim, dtype=self.dtype)(labels)
        return emb
