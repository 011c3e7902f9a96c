"""Samplers: ODE and SDE solves, DPM-Solver++(2M), EDM's Heun, flow maps, likelihoods,
and classifier-free and classifier guidance, all returning one :class:`Solution`.

Fields are pytrees called `field(x, t)` (:class:`ModelVelocity`, the
guidance fields, or any callable pytree); samplers compile over them with
:func:`equinox.filter_jit`, so new parameters reuse the compiled program.
"""

from flowjax.sample._solution import Adaptive as Adaptive
from flowjax.sample._solution import GridSolver as GridSolver
from flowjax.sample._solution import Solution as Solution
from flowjax.sample._fields import ModelFlowMap as ModelFlowMap
from flowjax.sample._fields import ModelVelocity as ModelVelocity
from flowjax.sample._ode import RK4 as RK4
from flowjax.sample._ode import evaluations_per_step as evaluations_per_step
from flowjax.sample._ode import solve_ode as solve_ode
from flowjax.sample._multistep import DPMSolver2M as DPMSolver2M
from flowjax.sample._edm import EDMHeun as EDMHeun
from flowjax.sample._likelihood import Probe as Probe
from flowjax.sample._likelihood import bits_per_dim as bits_per_dim
from flowjax.sample._likelihood import log_likelihood as log_likelihood
from flowjax.sample._likelihood import standard_normal_log_prob as standard_normal_log_prob
from flowjax.sample._sde import AbstractDiffusion as AbstractDiffusion
from flowjax.sample._sde import ConstantDiffusion as ConstantDiffusion
from flowjax.sample._sde import ReverseDiffusion as ReverseDiffusion
from flowjax.sample._sde import SigmaDiffusion as SigmaDiffusion
from flowjax.sample._sde import VanishingDiffusion as VanishingDiffusion
from flowjax.sample._sde import solve_sde as solve_sde
from flowjax.sample._guidance import ClassifierFreeGuidance as ClassifierFreeGuidance
from flowjax.sample._guidance import ClassifierGuidance as ClassifierGuidance
from flowjax.sample._fewstep import reflow_pairs as reflow_pairs
from flowjax.sample._fewstep import solve_flow_map as solve_flow_map
