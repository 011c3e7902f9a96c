"""Time samplers (objects called `sampler(key, shape) -> t`), time warps and solver grids, in
flow time (t = 1 is data)."""

from flowjax.time._base import AbstractTimeSampler as AbstractTimeSampler
from flowjax.time._edm import EDMLogNormal as EDMLogNormal
from flowjax.time._grids import edm_grid as edm_grid
from flowjax.time._grids import edm_sigmas as edm_sigmas
from flowjax.time._grids import shifted_grid as shifted_grid
from flowjax.time._grids import time_of_noise_ratio as time_of_noise_ratio
from flowjax.time._grids import uniform_grid as uniform_grid
from flowjax.time._samplers import Beta as Beta
from flowjax.time._samplers import LogitNormal as LogitNormal
from flowjax.time._samplers import Mode as Mode
from flowjax.time._samplers import OrderedPairs as OrderedPairs
from flowjax.time._samplers import Shifted as Shifted
from flowjax.time._samplers import Uniform as Uniform
from flowjax.time._samplers import shift_time as shift_time
