"""Exact marginal fields (velocity, score, log-density) for Gaussian, mixture and empirical targets."""

from flowjax.analytic._mixture import GaussianMixture as GaussianMixture
from flowjax.analytic._mixture import mixture_log_prob as mixture_log_prob
from flowjax.analytic._mixture import mixture_score as mixture_score
from flowjax.analytic._mixture import mixture_velocity as mixture_velocity
from flowjax.analytic._mixture import gaussian_flow_map as gaussian_flow_map
from flowjax.analytic._mixture import gaussian_average_velocity as gaussian_average_velocity
