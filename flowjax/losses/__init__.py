"""Pure losses `(params, key, batch) -> (loss, aux)` once their options are bound: flow
matching (CFM), diffusion (DSM, noise prediction), classifiers, few-step methods and CNF
maximum likelihood. Each method's target is its own function (`cfm_target`,
`meanflow_target`, `shortcut_target`, `reflow_target`) and every regression loss
reduces through `regression`. `aux` holds scalars: integer and bool entries are
counts, floating ones averages."""

from flowjax.losses._cfm import cfm_loss as cfm_loss
from flowjax.losses._cfm import cfm_target as cfm_target
from flowjax.losses._cfm import loss_weighting as loss_weighting
from flowjax.losses._cfm import velocity_weighting as velocity_weighting
from flowjax.losses._cnf import cnf_mle_loss as cnf_mle_loss
from flowjax.losses._cnf import Probe as Probe
from flowjax.losses._classifier import classifier_loss as classifier_loss
from flowjax.losses._core import regression as regression
from flowjax.losses._diffusion import dsm_loss as dsm_loss
from flowjax.losses._diffusion import edm_weighting as edm_weighting
from flowjax.losses._diffusion import likelihood_weighting as likelihood_weighting
from flowjax.losses._diffusion import noise_prediction_loss as noise_prediction_loss
from flowjax.losses._fewstep import meanflow_loss as meanflow_loss
from flowjax.losses._fewstep import meanflow_target as meanflow_target
from flowjax.losses._fewstep import reflow_loss as reflow_loss
from flowjax.losses._fewstep import reflow_target as reflow_target
from flowjax.losses._fewstep import shortcut_loss as shortcut_loss
from flowjax.losses._fewstep import shortcut_target as shortcut_target
