"""Data: 2D toy samplers `(key, n) -> [n, 2]` and samplers over user arrays."""

from flowjax.data._toy2d import checkerboard as checkerboard
from flowjax.data._toy2d import circles as circles
from flowjax.data._toy2d import eight_gaussians as eight_gaussians
from flowjax.data._toy2d import from_array as from_array
from flowjax.data._toy2d import moons as moons
from flowjax.data._toy2d import scurve as scurve
from flowjax.data._toy2d import standard_normal as standard_normal
from flowjax.data._toy2d import swissroll as swissroll
from flowjax.data._toy2d import two_spirals as two_spirals
