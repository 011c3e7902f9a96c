"""CIFAR-10 with TorchCFM's OT-CFM recipe (their README reports FID 3.5 with Dopri5).

The recipe of TorchCFM's `examples/images/cifar10/train_cifar10.py`:
unconditional, exact minibatch OT, the 128-channel U-Net with multipliers
(1, 2, 2, 2), two residual blocks a level, attention at 16x16, 4 heads,
dropout 0.1; batch 128, Adam at 2e-4 with a 5,000-step linear warm-up and
then constant, gradient clipping at 1, EMA 0.9999, 400,000 steps,
horizontal flips; sampled with Dopri5 at 1e-5. Needs the tfds `cifar10`
data prepared in `data_dir` (nothing is downloaded) and an accelerator:

    python -m experiments.images --config=experiments/images/configs/cifar10_otcfm.py \
        --workdir=workdir/cifar10_otcfm --config.data_dir=$TFDS_DATA_DIR

Our metrics use the experiment's own classifier; for true FID pass an
Inception feature extractor (`--config.eval.features=module:factory`,
`--config.eval.feature_weights=FILE`). Set `--config.conditional=True
--config.otcfm.coupling=c2ot --config.otcfm.cond_drop_prob=0.1` for the
class-conditional variant with guidance.

`:tiny` gives the same pipeline at toy size (20 steps), for smoke tests:
`--config=experiments/images/configs/cifar10_otcfm.py:tiny`.
"""

from experiments.images.configs import default


def get_config(variant: str = ""):
    config = default.get_config()
    config.dataset = "cifar10"
    config.conditional = False
    config.flip = True
    config.methods = ("otcfm",)
    config.otcfm = default.method("cfm", coupling="exact_ot", cond_drop_prob=0.0)

    m = config.model
    m.name, m.channels, m.channel_mult = "unet", 128, (1, 2, 2, 2)
    m.num_res_blocks, m.attention_resolutions, m.num_heads = 2, (16,), 4
    m.num_groups, m.dropout = 32, 0.1

    config.batch_size = 128
    config.num_train_steps = 400_000
    config.learning_rate = 2e-4
    config.warmup_steps = 5000
    config.schedule = "constant"
    config.grad_clip = 1.0
    config.ema_decay = 0.9999
    config.log_every = 1000
    config.checkpoint_every = 20_000

    e = config.eval
    e.num_samples = 10_000
    e.num_reference = 50_000
    e.guidance_scales = (1.0,)
    e.euler_steps = (10, 100)
    e.midpoint_steps = ()
    e.adaptive = True
    e.rtol = 1e-5
    e.bpd_subset = 256
    e.bpd_probes = 1
    e.bpd_bins = 256
    e.classifier_steps = 20_000
    return tiny(config) if variant == "tiny" else config


def tiny(config):
    """The same pipeline shrunk for a CPU smoke test: 20 steps, a small U-Net, small evaluation."""
    m = config.model
    m.channels, m.channel_mult, m.num_res_blocks, m.attention_resolutions = 8, (1,), 1, ()
    m.num_heads, m.num_groups = 2, 4
    config.batch_size = 8
    config.num_train_steps = 20
    config.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 10
    e = config.eval
    e.num_samples = 16
    e.num_reference = 64
    e.euler_steps = (2,)
    e.adaptive = False
    e.flow_map_steps = (1,)
    e.bpd_subset = 0
    e.classifier_steps = 10
    return config
