"""Smoke-test config: N = 32 points, 200 steps, few samples (seconds).

    python -m experiments.memorization --config=experiments/memorization/configs/tiny.py \
        --workdir=/tmp/memorization_tiny
"""

from experiments.memorization.configs import default


def get_config():
    config = default.get_config()
    config.train_sizes = (32,)
    config.num_heldout = 100
    config.hidden = (32, 32)
    config.num_train_steps = 200
    config.steps_per_call = 100
    config.checkpoint_every = 100
    config.warmup_steps = 10
    config.eval.num_samples = 200
    config.eval.loss_bins = 8
    config.eval.loss_repeats = 1
    config.eval.rtol = 1e-3
    config.eval.atol = 1e-3
    return config
