"""Data: 2D toy samplers `(key, n) -> [n, 2]`, samplers over user arrays, and image pipelines."""

from flowjax.data._toy2d import checkerboard as checkerboard
from flowjax.data._toy2d import circles as circles
from flowjax.data._toy2d import eight_gaussians as eight_gaussians
from flowjax.data._toy2d import from_array as from_array
from flowjax.data._toy2d import moons as moons
from flowjax.data._toy2d import scurve as scurve
from flowjax.data._toy2d import standard_normal as standard_normal
from flowjax.data._toy2d import swissroll as swissroll
from flowjax.data._toy2d import two_spirals as two_spirals
from flowjax.data._images import ArraySource as ArraySource
from flowjax.data._images import ImagePipeline as ImagePipeline
from flowjax.data._images import digits_source as digits_source
from flowjax.data._images import tfds_source as tfds_source
