"""ODE samplers on diffrax: fixed-step and adaptive solves with NFE, forward and reverse."""

from flowjax.sample._ode import RK4 as RK4
from flowjax.sample._ode import ODESolution as ODESolution
from flowjax.sample._ode import evaluations_per_step as evaluations_per_step
from flowjax.sample._ode import model_velocity as model_velocity
from flowjax.sample._ode import solve_ode as solve_ode
from flowjax.sample._multistep import dpm_solver_2m as dpm_solver_2m
