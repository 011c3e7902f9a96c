"""Time samplers `(key, shape) -> t`, time warps and solver grids, in flow time (t = 1 is data)."""

from flowjax.time._samplers import beta as beta
from flowjax.time._samplers import logit_normal as logit_normal
from flowjax.time._samplers import mode as mode
from flowjax.time._samplers import ordered_pairs as ordered_pairs
from flowjax.time._samplers import shift_time as shift_time
from flowjax.time._samplers import shifted as shifted
from flowjax.time._samplers import uniform as uniform
from flowjax.time._grids import edm_grid as edm_grid
from flowjax.time._grids import edm_sigmas as edm_sigmas
from flowjax.time._edm import edm_lognormal as edm_lognormal
from flowjax.time._grids import shifted_grid as shifted_grid
from flowjax.time._grids import time_of_noise_ratio as time_of_noise_ratio
from flowjax.time._grids import uniform_grid as uniform_grid
