"""Training: the train-state pytree, jitted (and scan-fused) steps with EMA, sharding over
devices and hosts, orbax checkpoints, metrics files."""

from flowjax.train._checkpoint import Checkpointer as Checkpointer
from flowjax.train._checkpoint import Restored as Restored
from flowjax.train._checkpoint import state_checksums as state_checksums
from flowjax.train._logging import MetricsWriter as MetricsWriter
from flowjax.train._sharding import AbstractShardingStrategy as AbstractShardingStrategy
from flowjax.train._sharding import DataParallel as DataParallel
from flowjax.train._sharding import FSDP as FSDP
from flowjax.train._sharding import batch_sharding as batch_sharding
from flowjax.train._sharding import global_batch as global_batch
from flowjax.train._sharding import initialize_distributed as initialize_distributed
from flowjax.train._sharding import make_mesh as make_mesh
from flowjax.train._sharding import replicated as replicated
from flowjax.train._sharding import shard as shard
from flowjax.train._sharding import state_shardings as state_shardings
from flowjax.train._step import TrainState as TrainState
from flowjax.train._step import create_train_state as create_train_state
from flowjax.train._step import make_multi_step as make_multi_step
from flowjax.train._step import make_train_step as make_train_step
from flowjax.train._step import summarize_metrics as summarize_metrics
from flowjax.train._sharded_couplings import GlobalCoupling as GlobalCoupling
from flowjax.train._sharded_couplings import LocalCoupling as LocalCoupling
