"""CIFAR-10 with the MeanFlow paper's recipe (Geng et al. 2025 report 1-NFE FID 2.92).

As we read the paper's CIFAR-10 setting: unconditional, a DDPM++-style U-Net
(here our U-Net at 128 channels, multipliers (2, 2, 2), four residual blocks
a level, attention at 16x16), dropout 0.2; batch 1024, Adam at 6e-4,
800,000 steps, EMA 0.99995; 75% of pairs with r != t, times logit-normal
(-2, 2) in the paper's time (mean +2 in ours, t = 1 is data), adaptive
weight p = 0.75; independent coupling; sampled in one step. Needs the tfds
`cifar10` data in `data_dir` and an accelerator:

    python -m experiments.images --config=experiments/images/configs/cifar10_meanflow.py \
        --workdir=workdir/cifar10_meanflow --config.data_dir=$TFDS_DATA_DIR

`:tiny` is the CPU smoke-test size: `--config=...cifar10_meanflow.py:tiny`.
"""

from experiments.images.configs import cifar10_otcfm, default


def get_config(variant: str = ""):
    config = cifar10_otcfm.get_config()
    config.methods = ("meanflow",)
    config.meanflow = default.method(
        "meanflow", coupling="independent", cond_drop_prob=0.0, time_scale=1.0,
        time_sampler="logit_normal", logit_mean=2.0, logit_std=2.0, equal_fraction=0.25,
        weight_power=0.75)
    m = config.model
    m.channels, m.channel_mult, m.num_res_blocks, m.dropout = 128, (2, 2, 2), 4, 0.2
    config.batch_size = 1024
    config.learning_rate = 6e-4
    config.warmup_steps = 10_000
    config.num_train_steps = 800_000
    config.ema_decay = 0.99995
    config.eval.flow_map_steps = (1, 2)
    config.eval.euler_steps = ()
    config.eval.adaptive = False
    return cifar10_otcfm.tiny(config) if variant == "tiny" else config
