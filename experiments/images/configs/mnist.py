"""Class-conditional MNIST (28x28, tfds `mnist` in `data_dir`): OT-CFM + guidance and MeanFlow.

A CPU-hours / single-GPU-minutes run:

    python -m experiments.images --config=experiments/images/configs/mnist.py \
        --workdir=workdir/mnist --config.data_dir=$TFDS_DATA_DIR

The U-Net works at 28 and 14 pixels (attention at 14; 28 is not divisible by 4).
"""

from experiments.images.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "mnist"
    m = config.model
    m.channels, m.channel_mult, m.num_res_blocks, m.attention_resolutions = 64, (1, 2), 2, (14,)
    m.num_groups = 16
    config.batch_size = 128
    config.num_train_steps = 50_000
    config.learning_rate = 2e-4
    config.warmup_steps = 1000
    config.ema_decay = 0.9999
    config.log_every = 500
    config.checkpoint_every = 5000
    config.eval.num_samples = 10_000
    config.eval.euler_steps = (4, 10, 50)
    config.eval.bpd_subset = 256
    config.eval.bpd_probes = 1
    config.eval.bpd_bins = 256
    config.eval.classifier_steps = 5000
    return config
