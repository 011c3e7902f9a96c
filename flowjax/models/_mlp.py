"""A Flax MLP velocity field with a sinusoidal time embedding and optional classes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


def sinusoidal_embedding(t, dim: int, *, max_period: float = 10_000.0, scale: float = 1000.0):
    r"""Transformer-style embedding of times `t: [B]` into `[B, dim]`.

    :math:`[\cos(s t \omega_i), \sin(s t \omega_i)]` with
    :math:`\omega_i = P^{-i/(dim/2)}`; `scale` stretches t in [0, 1] to the
    range DDPM's integer steps had (Vaswani et al. 2017; Ho et al. 2020).
    """
    if dim % 2:
        raise ValueError(f"`dim` must be even, got {dim}.")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = scale * jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class MLP(nn.Module):
    """MLP velocity field `f(x, t, cond) -> [B, *dims]` for flat or small inputs.

    Attributes:
      hidden: widths of the hidden layers.
      time_dim: size of the sinusoidal time embedding.
      num_classes: if set, `cond` is an int label in `[0, num_classes]`; the
        extra index `num_classes` is the "no label" token for classifier-free
        guidance.
      activation: the nonlinearity.
    """

    hidden: Sequence[int] = (256, 256, 256)
    time_dim: int = 64
    num_classes: int | None = None
    activation: Callable = nn.silu

    @nn.compact
    def __call__(self, x, t, cond=None):
        shape = x.shape
        h = x.reshape(shape[0], -1)
        t = jnp.broadcast_to(jnp.asarray(t, h.dtype), shape[:1])
        emb = sinusoidal_embedding(t, self.time_dim)
        emb = nn.Dense(self.time_dim)(emb)
        if self.num_classes is not None:
            if cond is None:
                cond = jnp.full(shape[:1], self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, self.time_dim)(cond)
        emb = self.activation(emb)
        h = jnp.concatenate([h, emb.astype(h.dtype)], axis=-1)
        for width in self.hidden:
            h = self.activation(nn.Dense(width)(h))
        out = nn.Dense(math.prod(shape[1:]), kernel_init=nn.initializers.zeros)(h)
        return out.reshape(shape)


def model_fn(module: nn.Module):
    """Turns a linen module into `apply_fn(params, x, t, cond)`, the library's model function."""

    def apply_fn(params, x, t, cond=None):
        return module.apply({"params": params}, x, t, cond)

    return apply_fn
