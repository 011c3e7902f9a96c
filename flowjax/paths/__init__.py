"""Probability paths x_t = alpha(t) x1 + sigma(t) x0 + gamma(t) z, prediction conversions,
the forward-SDE diffusion of a path, and EDM's preconditioning in flow time."""

from flowjax.paths._constants import T_CLIP as T_CLIP
from flowjax.paths._conversions import Prediction as Prediction
from flowjax.paths._conversions import convert as convert
from flowjax.paths._conversions import noise_ratio as noise_ratio
from flowjax.paths._conversions import sde_diffusion as sde_diffusion
from flowjax.paths._edm import EDMPreconditioned as EDMPreconditioned
from flowjax.paths._edm import edm_precondition as edm_precondition
from flowjax.paths._edm import edm_scalings as edm_scalings
from flowjax.paths._paths import EDGE as EDGE
from flowjax.paths._paths import VE as VE
from flowjax.paths._paths import VP as VP
from flowjax.paths._paths import AffinePath as AffinePath
from flowjax.paths._paths import BridgeNoise as BridgeNoise
from flowjax.paths._paths import CondOT as CondOT
from flowjax.paths._paths import ConstantNoise as ConstantNoise
from flowjax.paths._paths import Cosine as Cosine
from flowjax.paths._paths import LipmanPath as LipmanPath
from flowjax.paths._paths import Polynomial as Polynomial
from flowjax.paths._paths import RectifiedFlow as RectifiedFlow
