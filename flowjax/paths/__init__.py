"""Probability paths x_t = alpha(t) x1 + sigma(t) x0 + gamma(t) z, and prediction conversions."""

from flowjax.paths._conversions import Prediction as Prediction
from flowjax.paths._conversions import convert as convert
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
