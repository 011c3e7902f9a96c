"""Velocity fields and flow maps: flowjax's own Flax modules, and adapters that turn a
Flax linen, Flax NNX or equinox model into the library's `apply_fn(params, x, t, cond)`."""

from flowjax.models._adapters import EquinoxModel as EquinoxModel
from flowjax.models._adapters import LinenModel as LinenModel
from flowjax.models._adapters import NNXModel as NNXModel
from flowjax.models._adapters import average_model_fn as average_model_fn
from flowjax.models._adapters import from_equinox as from_equinox
from flowjax.models._adapters import from_linen as from_linen
from flowjax.models._adapters import from_nnx as from_nnx
from flowjax.models._adapters import model_fn as model_fn
from flowjax.models._dit import DiT as DiT
from flowjax.models._embed import Conditioning as Conditioning
from flowjax.models._embed import sinusoidal_embedding as sinusoidal_embedding
from flowjax.models._mlp import MLP as MLP
from flowjax.models._unet import UNet as UNet
