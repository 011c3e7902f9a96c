"""A Flax MLP velocity field with a sinusoidal time embedding and optional classes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from flowjax._types import Batch, Cond, Times
from flowjax.models._embed import check_labels, sinusoidal_embedding


class MLP(nn.Module):
    """MLP velocity field `f(x, t, cond) -> [B, *dims]` for flat or small inputs.

    With `two_times=True` it is an average-velocity (flow-map) model: the call
    takes the duration `h` of the jump as well, `f(x, t, cond, h=h)`, and
    embeds `(t, h)` as MeanFlow does with `(t, t - r)` (Geng et al. 2025);
    :func:`flowjax.models.average_model_fn` exposes it as
    `apply_fn(params, x, r, t, cond)`.

    Attributes:
      hidden: widths of the hidden layers.
      time_dim: size of the sinusoidal time embedding; `None` appends the raw
        time (and `h`) to the input instead, the plain `[x, t]` MLP of
        TorchCFM's `MLP(time_varying=True)` and Meta flow_matching's 2D example.
      num_classes: if set, `cond` is an int label in `[0, num_classes)`; the
        extra index `num_classes` is the "no label" token for classifier-free
        guidance (a label outside both is an error, also under `jit`).
      activation: the nonlinearity.
      time_scale: the factor applied to t before the sinusoidal embedding.
        The default pi keeps every frequency at most pi rad per unit time
        (period 2), so the field is smooth in t on [0, 1]: fixed-step solvers
        converge at their order and `jax.jvp` targets stay tame. DDPM's 1000
        makes a trained field oscillate in t with periods down to 0.006.
      two_times: also embed the jump duration `h`.
    """

    hidden: Sequence[int] = (256, 256, 256)
    time_dim: int | None = 64
    num_classes: int | None = None
    activation: Callable = nn.silu
    time_scale: float = math.pi
    two_times: bool = False

    @nn.compact
    def __call__(self, x: Batch, t: Times, cond: Cond = None, h: Times | None = None) -> Batch:
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
            labels = check_labels(cond, self.num_classes, t.shape[0])
            emb = emb + nn.Embed(self.num_classes + 1, self.time_dim)(labels)
        return self.activation(emb)
