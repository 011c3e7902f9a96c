"""Flax modules for velocity fields and flow maps; only experiments and tests import them."""

from flowjax.models._dit import DiT as DiT
from flowjax.models._embed import Conditioning as Conditioning
from flowjax.models._mlp import MLP as MLP
from flowjax.models._mlp import average_model_fn as average_model_fn
from flowjax.models._mlp import model_fn as model_fn
from flowjax.models._mlp import sinusoidal_embedding as sinusoidal_embedding
from flowjax.models._unet import UNet as UNet
