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

    With `two_times=True` it is an average-velocity (flow-map) model: the call
    takes the duration `h` of the jump as well, `f(x, t, cond, h=h)`, and
    embeds `(t, h)` as MeanFlow does with `(t, t - r)` (Geng et al. 2025);
    :func:`average_model_fn` exposes it as `apply_fn(params, x, r, t, cond)`.

    Attributes:
      hidden: widths of the hidden layers.
      time_dim: size of the sinusoidal time embedding; `None` appends the raw
        time (and `h`) to the input instead, the plain `[x, t]` MLP of
        TorchCFM's `MLP(time_varying=True)` and Meta flow_matching's 2D example.
      num_classes: if set, `cond` is an int label in `[0, num_classes]`; the
        extra index `num_classes` is the "no label" token for classifier-free
        guidance.
      activation: the nonlinearity.
      time_scale: the factor applied to t before the sinusoidal embedding
        (DDPM's 1000 by default; lower values give a field that varies more
        slowly in t, which fixed-step solvers and `jax.jvp` targets prefer).
      two_times: also embed the jump duration `h`.
    """

    hidden: Sequence[int] = (256, 256, 256)
    time_dim: int | None = 64
    num_classes: int | None = None
    activation: Callable = nn.silu
    time_scale: float = 1000.0
    two_times: bool = False

    @nn.compact
    def __call__(self, x, t, cond=None, h=None):
        shape = x.shape
        feats = x.reshape(shape[0], -1)
        t = jnp.broadcast_to(jnp.asarray(t, feats.dtype), shape[:1])
        if h is not None and not self.two_times:
            raise ValueError("`h` is only accepted by an MLP with two_times=True.")
        if self.two_times:
            h = jnp.zeros_like(t) if h is None else jnp.broadcast_to(
                jnp.asarray(h, feats.dtype), shape[:1])
        if self.time_dim is None:
            if self.num_classes is not None:
                raise ValueError("`num_classes` needs a time embedding: set `time_dim`.")
            times = (t, h) if self.two_times else (t,)
            feats = jnp.concatenate([feats] + [s[:, None] for s in times], axis=-1)
        else:
            feats = jnp.concatenate([feats, self._embedding(t, h, cond).astype(feats.dtype)],
                                    axis=-1)
        for width in self.hidden:
            feats = self.activation(nn.Dense(width)(feats))
        out = nn.Dense(math.prod(shape[1:]), kernel_init=nn.initializers.zeros)(feats)
        return out.reshape(shape)

    def _embedding(self, t, h, cond):
        emb = nn.Dense(self.time_dim)(sinusoidal_embedding(t, self.time_dim,
                                                           scale=self.time_scale))
        if self.two_times:
            emb = emb + nn.Dense(self.time_dim)(
                sinusoidal_embedding(h, self.time_dim, scale=self.time_scale))
        if self.num_classes is not None:
            if cond is None:
                cond = jnp.full(t.shape, self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, self.time_dim)(cond)
        return self.activation(emb)


def _apply(module, params, key, *args):
    if key is None:
        return module.apply({"params": params}, *args)
    return module.apply({"params": params}, *args, train=True, rngs={"dropout": key})


def model_fn(module: nn.Module):
    """Turns a linen module into `apply_fn(params, x, t, cond, key=None)`, the library's model function.

    Given a `key`, the module runs in training mode (`train=True`, dropout on,
    with `key` as its `dropout` rng): what the losses do with `model_key=True`.
    Without one it is deterministic, as samplers want it. Only modules with
    a `train` argument (:class:`UNet`, :class:`DiT`) accept a key.
    """

    def apply_fn(params, x, t, cond=None, key=None):
        return _apply(module, params, key, x, t, cond)

    return apply_fn


def average_model_fn(module: nn.Module):
    """Turns a two-time module into `apply_fn(params, x, r, t, cond)`, an average-velocity model.

    `x` is the state at time `r` and the output the average velocity to time
    `t >= r`, so that `x_t = x + (t - r) * apply_fn(params, x, r, t, cond)`
    (see :func:`flowjax.losses.meanflow_loss`). The module sees the state
    time `r` and the duration `t - r`. A `key` turns on training mode, as
    for :func:`model_fn`.
    """
    if not getattr(module, "two_times", False):
        raise ValueError("`module` must take two times (e.g. MLP(two_times=True)).")

    def apply_fn(params, x, r, t, cond=None, key=None):
        return _apply(module, params, key, x, r, cond, t - r)

    return apply_fn
