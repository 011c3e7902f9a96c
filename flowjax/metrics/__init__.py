"""Metrics: exact W2 between point clouds, path energy, straightness; Fréchet distance and KID."""

from flowjax.metrics._features import frechet_distance as frechet_distance
from flowjax.metrics._features import kernel_distance as kernel_distance
from flowjax.metrics._metrics import MAX_W2_POINTS as MAX_W2_POINTS
from flowjax.metrics._metrics import normalized_path_energy as normalized_path_energy
from flowjax.metrics._metrics import path_energy as path_energy
from flowjax.metrics._metrics import straightness as straightness
from flowjax.metrics._metrics import w2 as w2
