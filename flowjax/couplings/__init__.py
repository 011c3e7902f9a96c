"""Minibatch couplings, immutable objects called `coupling(key, x0, x1, *, cond=None, state=None)`
and returning a :class:`CouplingResult`: independent, exact OT, Sinkhorn (with warm starts),
Schrödinger bridge, C²OT; the renormalized entropy of a plan."""

from flowjax.couplings._base import AbstractCoupling as AbstractCoupling
from flowjax.couplings._base import CouplingResult as CouplingResult
from flowjax.couplings._base import mean_pair_cost as mean_pair_cost
from flowjax.couplings._bridge import SchrodingerBridge as SchrodingerBridge
from flowjax.couplings._common import sq_distances as sq_distances
from flowjax.couplings._conditional import ConditionAwareOT as ConditionAwareOT
from flowjax.couplings._entropy import renormalized_entropy as renormalized_entropy
from flowjax.couplings._exact import ExactOT as ExactOT
from flowjax.couplings._independent import Independent as Independent
from flowjax.couplings._sinkhorn import Sinkhorn as Sinkhorn
from flowjax.couplings._sinkhorn import SinkhornPotentials as SinkhornPotentials
from flowjax.couplings._sinkhorn import sinkhorn_plan as sinkhorn_plan
