"""Smoke-test config: two methods, one source, a few steps (seconds).

    python -m experiments.toy2d --config=experiments/toy2d/configs/tiny.py --workdir=/tmp/toy2d_tiny
"""

from experiments.toy2d.configs import default


def get_config():
    config = default.get_config()
    config.methods = ("icfm", "otcfm")
    config.sources = ("normal",)
    config.hidden = (32, 32)
    config.num_train_steps = 40
    config.steps_per_call = 20
    config.checkpoint_every = 20
    config.warmup_steps = 5
    config.eval.num_samples = 200
    config.eval.euler_steps = (1, 4)
    config.eval.num_save = 11
    config.plot = True
    return config
