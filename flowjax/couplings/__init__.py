"""Minibatch couplings `(key, x0, x1) -> ((x0, x1), aux)`: independent, exact OT, Sinkhorn (with
warm starts), SB, C2OT; the renormalized entropy of a plan."""

from flowjax.couplings._couplings import condition_aware_ot as condition_aware_ot
from flowjax.couplings._couplings import exact_ot as exact_ot
from flowjax.couplings._couplings import independent as independent
from flowjax.couplings._couplings import schrodinger_bridge as schrodinger_bridge
from flowjax.couplings._couplings import sinkhorn as sinkhorn
from flowjax.couplings._couplings import sinkhorn_plan as sinkhorn_plan
from flowjax.couplings._couplings import sq_distances as sq_distances
from flowjax.couplings._couplings import SinkhornPotentials as SinkhornPotentials
from flowjax.couplings._couplings import renormalized_entropy as renormalized_entropy
