"""A small Diffusion Transformer (Peebles and Xie 2023): patchify, adaLN-Zero blocks, unpatchify.

Every block is modulated by the conditioning vector (time, optional class
and jump duration) through shift/scale/gate maps initialised at zero, so a
fresh block is the identity and a fresh model predicts 0.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from flowjax._types import Batch, Cond, Times
from flowjax.models._embed import Conditioning, check_multiple


def sincos_2d(grid: int, dim: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding `[grid * grid, dim]` (MAE / DiT)."""
    check_multiple("hidden", dim, 4)  # the DiT width
    omega = 1.0 / 10_000 ** (np.arange(dim // 4) / (dim // 4))
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def one(pos):
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(ys), one(xs)], axis=1).astype(np.float32)


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm attention and MLP, each scaled, shifted and gated by adaLN-Zero."""

    num_heads: int
    mlp_ratio: float
    dtype: object

    @nn.compact
    def __call__(self, x, c):
        d = x.shape[-1]
        mod = nn.Dense(6 * d, dtype=self.dtype, kernel_init=nn.initializers.zeros)(nn.silu(c))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        norm = nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6, dtype=self.dtype)
        h = _modulate(norm(x), shift1, scale1)
        x = x + gate1[:, None] * nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype)(h, h)
        h = _modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6,
                                   dtype=self.dtype)(x), shift2, scale2)
        h = nn.Dense(int(d * self.mlp_ratio), dtype=self.dtype)(h)
        h = nn.Dense(d, dtype=self.dtype)(nn.gelu(h, approximate=True))
        return x + gate2[:, None] * h


class DiT(nn.Module):
    """DiT velocity field `f(x, t, cond) -> [B, H, W, C]` (or a flow map with `two_times`).

    Attributes:
      patch_size: side of the square patches; `H` and `W` must be multiples.
      hidden: token width (divisible by 4 and by `num_heads`).
      depth: number of blocks.
      num_heads: attention heads.
      mlp_ratio: MLP width over `hidden`.
      num_classes: class-conditional with a "no label" index `num_classes`.
      two_times: also embed the jump duration `h` (MeanFlow's `(r, t)` input).
      time_scale: factor applied to t before the sinusoidal embedding (pi: smooth in t;
        see :func:`flowjax.models.sinusoidal_embedding`).
      dtype: computation dtype; the output has the input's dtype.
    """

    patch_size: int = 2
    hidden: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    two_times: bool = False
    time_scale: float = math.pi
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x: Batch, t: Times, cond: Cond = None, h: Times | None = None,
                 train: bool = False) -> Batch:
        del train  # no dropout
        if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[1] % self.patch_size:
            raise ValueError(f"`x` must be square NHWC images with a side divisible by "
                             f"patch_size={self.patch_size}, got shape {x.shape}.")
        b, side, _, ch = x.shape
        p, grid = self.patch_size, x.shape[1] // self.patch_size
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        if h is not None:
            h = jnp.broadcast_to(jnp.asarray(h, jnp.float32), (b,))
        c = Conditioning(self.hidden, freq_dim=256, time_scale=self.time_scale,
                         num_classes=self.num_classes, two_times=self.two_times,
                         dtype=self.dtype)(t, cond, h)
        tokens = nn.Conv(self.hidden, (p, p), strides=(p, p), padding="VALID",
                         dtype=self.dtype)(x.astype(self.dtype)).reshape(b, grid * grid, -1)
        tokens = tokens + jnp.asarray(sincos_2d(grid, self.hidden), self.dtype)[None]
        for _ in range(self.depth):
            tokens = DiTBlock(self.num_heads, self.mlp_ratio, self.dtype)(tokens, c)
        shift, scale = jnp.split(nn.Dense(2 * self.hidden, dtype=self.dtype,
                                          kernel_init=nn.initializers.zeros)(nn.silu(c)), 2, -1)
        tokens = _modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6,
                                        dtype=self.dtype)(tokens), shift, scale)
        out = nn.Dense(p * p * ch, dtype=self.dtype, kernel_init=nn.initializers.zeros)(tokens)
        out = out.reshape(b, grid, grid, p, p, ch).transpose(0, 1, 3, 2, 4, 5)
        return out.reshape(b, side, side, ch).astype(x.dtype)
