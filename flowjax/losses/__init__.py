"""Pure losses `(params, key, batch) -> (loss, aux)` once their options are bound."""

from flowjax.losses._cfm import cfm_loss as cfm_loss
from flowjax.losses._cfm import velocity_weighting as velocity_weighting
