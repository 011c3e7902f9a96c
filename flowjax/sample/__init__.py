"""Samplers: diffrax ODE/SDE solves with NFE, DPM-Solver++(2M), EDM's Heun, flow maps,
likelihoods, classifier-free and classifier guidance."""

from flowjax.sample._ode import RK4 as RK4
from flowjax.sample._ode import ODESolution as ODESolution
from flowjax.sample._ode import evaluations_per_step as evaluations_per_step
from flowjax.sample._ode import model_velocity as model_velocity
from flowjax.sample._ode import solve_ode as solve_ode
from flowjax.sample._multistep import dpm_solver_2m as dpm_solver_2m
from flowjax.sample._edm import edm_heun as edm_heun
from flowjax.sample._likelihood import Probe as Probe
from flowjax.sample._likelihood import bits_per_dim as bits_per_dim
from flowjax.sample._likelihood import log_likelihood as log_likelihood
from flowjax.sample._likelihood import standard_normal_log_prob as standard_normal_log_prob
from flowjax.sample._sde import SDESolution as SDESolution
from flowjax.sample._sde import constant_diffusion as constant_diffusion
from flowjax.sample._sde import reverse_diffusion as reverse_diffusion
from flowjax.sample._sde import sigma_diffusion as sigma_diffusion
from flowjax.sample._sde import solve_sde as solve_sde
from flowjax.sample._sde import vanishing_diffusion as vanishing_diffusion
from flowjax.sample._guidance import classifier_free_guidance as classifier_free_guidance
from flowjax.sample._guidance import classifier_guidance as classifier_guidance
from flowjax.sample._guidance import guided_model_velocity as guided_model_velocity
from flowjax.sample._fewstep import model_average_velocity as model_average_velocity
from flowjax.sample._fewstep import reflow_pairs as reflow_pairs
from flowjax.sample._fewstep import solve_flow_map as solve_flow_map
