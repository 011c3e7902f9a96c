"""Training: the train-state pytree, jitted (and scan-fused) steps with EMA, metrics files."""

from flowjax.train._logging import MetricsWriter as MetricsWriter
from flowjax.train._step import TrainState as TrainState
from flowjax.train._step import create_train_state as create_train_state
from flowjax.train._step import make_multi_step as make_multi_step
from flowjax.train._step import make_train_step as make_train_step
