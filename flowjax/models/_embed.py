"""The conditioning vector shared by the image models: time, jump duration and class."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from flowjax.models._mlp import sinusoidal_embedding


class Conditioning(nn.Module):
    """`emb = MLP(sin(t)) [+ MLP(sin(h))] [+ Embed(class)]`, `[B, dim]`.

    Attributes:
      dim: output width.
      freq_dim: width of the sinusoidal features.
      time_scale: factor applied to t (and h) before the sinusoids.
      num_classes: if set, `cond` is an int label; index `num_classes` is "no label".
      two_times: also embed the jump duration `h` of a flow map (MeanFlow's `t - r`).
      dtype: computation dtype.
    """

    dim: int
    freq_dim: int = 128
    time_scale: float = 1000.0
    num_classes: int | None = None
    two_times: bool = False
    dtype: object = jnp.float32

    def _embed(self, s, name):
        feats = sinusoidal_embedding(s, self.freq_dim, scale=self.time_scale)
        feats = nn.Dense(self.dim, dtype=self.dtype, name=f"{name}_0")(feats)
        return nn.Dense(self.dim, dtype=self.dtype, name=f"{name}_1")(nn.silu(feats))

    @nn.compact
    def __call__(self, t, cond=None, h=None):
        emb = self._embed(t, "time")
        if self.two_times:
            emb = emb + self._embed(jnp.zeros_like(t) if h is None else h, "duration")
        elif h is not None:
            raise ValueError("`h` is only accepted by a model with two_times=True.")
        if self.num_classes is not None:
            if cond is None:
                cond = jnp.full(t.shape, self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, self.dim, dtype=self.dtype)(cond)
        return emb
