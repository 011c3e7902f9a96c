"""Smoke test on digits: both methods, a few steps, small model and evaluation (seconds).

    python -m experiments.images --config=experiments/images/configs/digits_tiny.py \
        --workdir=/tmp/images_tiny
"""

from experiments.images.configs import default


def get_config():
    config = default.get_config()
    config.model.channels = 8
    config.model.channel_mult = (1,)  # one level: a small graph that compiles fast
    config.model.attention_resolutions = ()
    config.model.num_groups = 4
    config.batch_size = 32
    config.num_train_steps = 20
    config.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 10
    config.eval.num_samples = 40
    config.eval.guidance_scales = (1.0, 2.0)
    config.eval.euler_steps = (2,)
    config.eval.midpoint_steps = ()
    config.eval.adaptive = False
    config.eval.flow_map_steps = (1,)
    config.eval.bpd_subset = 4
    config.eval.bpd_probes = 1
    config.eval.classifier_steps = 50
    return config
