"""Time samplers `(key, shape) -> t` and time warps, in flow time (t = 1 is data)."""

from flowjax.time._samplers import beta as beta
from flowjax.time._samplers import logit_normal as logit_normal
from flowjax.time._samplers import mode as mode
from flowjax.time._samplers import shift_time as shift_time
from flowjax.time._samplers import shifted as shifted
from flowjax.time._samplers import uniform as uniform
