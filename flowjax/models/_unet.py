"""A U-Net velocity field in the DDPM++ / ADM family (Song et al. 2021; Dhariwal and Nichol 2021).

Residual blocks with group norm and scale-shift conditioning, self-attention
at chosen resolutions, a time (and optional class and jump-duration)
embedding, dropout, and a zero-initialised output so that a fresh model
predicts 0. Inputs are NHWC images `[B, H, W, C]`; `H` and `W` must be
divisible by `2 ** (len(channel_mult) - 1)`.
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowjax._types import Batch, Cond, Times
from flowjax.models._embed import Conditioning


def _groups(channels: int, wanted: int) -> int:
    """The largest group count <= `wanted` that divides `channels`."""
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """GN-SiLU-Conv, scale-shift by the embedding, GN-SiLU-Dropout-Conv(zero), plus skip."""

    out_channels: int
    dropout: float
    num_groups: int
    dtype: object

    @nn.compact
    def __call__(self, x, emb, deterministic: bool):
        c_in = x.shape[-1]
        h = nn.silu(nn.GroupNorm(_groups(c_in, self.num_groups), dtype=self.dtype)(x))
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h)
        scale, shift = jnp.split(
            nn.Dense(2 * self.out_channels, dtype=self.dtype)(nn.silu(emb))[:, None, None], 2,
            axis=-1)
        h = nn.GroupNorm(_groups(self.out_channels, self.num_groups), dtype=self.dtype)(h)
        h = nn.silu(h * (1 + scale) + shift)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype,
                    kernel_init=nn.initializers.zeros)(h)
        if c_in != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype)(x)
        return x + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the pixels, residual, zero-initialised projection."""

    num_heads: int
    num_groups: int
    dtype: object

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = nn.GroupNorm(_groups(c, self.num_groups), dtype=self.dtype)(x).reshape(b, hh * ww, c)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype,
            out_kernel_init=nn.initializers.zeros)(h, h)
        return x + h.reshape(b, hh, ww, c)


class UNet(nn.Module):
    """U-Net velocity field `f(x, t, cond) -> [B, H, W, C]` (or a flow map with `two_times`).

    Attributes:
      channels: base width; level `i` has `channels * channel_mult[i]`.
      channel_mult: width multipliers, one level per entry (downsampling between levels).
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      attention_resolutions: spatial sizes (e.g. 16) at which attention is applied.
      num_heads: attention heads.
      dropout: dropout rate inside residual blocks (active when `train=True`,
        which needs a `dropout` rng).
      num_classes: class-conditional with a "no label" index `num_classes`.
      two_times: also embed the jump duration `h` (MeanFlow's `(r, t)` input).
      time_scale: factor applied to t before the sinusoidal embedding (pi: smooth in t;
        see :func:`flowjax.models.sinusoidal_embedding`).
      num_groups: group-norm groups (fewer if the width is not divisible).
      dtype: computation dtype (`jnp.bfloat16` on accelerators); parameters
        stay float32 and the output has the input's dtype.
    """

    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16,)
    num_heads: int = 4
    dropout: float = 0.1
    num_classes: int | None = None
    two_times: bool = False
    time_scale: float = math.pi
    num_groups: int = 32
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x: Batch, t: Times, cond: Cond = None, h: Times | None = None,
                 train: bool = False) -> Batch:
        if x.ndim != 4:
            raise ValueError(f"`x` must be NHWC images [B, H, W, C], got shape {x.shape}.")
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"image size {x.shape[1:3]} must be divisible by {factor} "
                             f"(2 ** (len(channel_mult) - 1)).")
        out_dtype, det = x.dtype, not train
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        if h is not None:
            h = jnp.broadcast_to(jnp.asarray(h, jnp.float32), x.shape[:1])
        emb = Conditioning(4 * self.channels, freq_dim=self.channels, time_scale=self.time_scale,
                           num_classes=self.num_classes, two_times=self.two_times,
                           dtype=self.dtype)(t, cond, h)
        kw = dict(dropout=self.dropout, num_groups=self.num_groups, dtype=self.dtype)
        attn = dict(num_heads=self.num_heads, num_groups=self.num_groups, dtype=self.dtype)

        z = nn.Conv(self.channels * self.channel_mult[0], (3, 3), dtype=self.dtype)(
            x.astype(self.dtype))
        skips = [z]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                z = ResBlock(self.channels * mult, **kw)(z, emb, det)
                if z.shape[1] in self.attention_resolutions:
                    z = AttnBlock(**attn)(z)
                skips.append(z)
            if level < len(self.channel_mult) - 1:
                z = nn.Conv(z.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype)(z)
                skips.append(z)
        z = ResBlock(z.shape[-1], **kw)(z, emb, det)
        z = AttnBlock(**attn)(z)
        z = ResBlock(z.shape[-1], **kw)(z, emb, det)
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                z = ResBlock(self.channels * mult, **kw)(
                    jnp.concatenate([z, skips.pop()], axis=-1), emb, det)
                if z.shape[1] in self.attention_resolutions:
                    z = AttnBlock(**attn)(z)
            if level > 0:
                b, hh, ww, c = z.shape
                z = jax.image.resize(z, (b, 2 * hh, 2 * ww, c), "nearest")
                z = nn.Conv(c, (3, 3), dtype=self.dtype)(z)
        z = nn.silu(nn.GroupNorm(_groups(z.shape[-1], self.num_groups), dtype=self.dtype)(z))
        out = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype,
                      kernel_init=nn.initializers.zeros)(z)
        return out.astype(out_dtype)
