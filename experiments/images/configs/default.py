"""Class-conditional digits (scikit-learn's bundled 8x8 set): OT-CFM with guidance and MeanFlow.

The offline default, sized for a 2-core CPU (under 30 minutes):

    python -m experiments.images --config=experiments/images/configs/digits.py \
        --workdir=workdir/images_digits

Both methods train the same small U-Net. `otcfm` pairs by condition-aware
OT (C2OT) with 10% label dropout and is sampled with classifier-free
guidance; `meanflow` folds guidance into its target and samples in 1 step.
Metrics use a classifier trained on the training split (cached in the
workdir): conditional accuracy, a Fréchet distance and KID in its feature
space, each beside its noise floor (held-out vs training images).
"""

import ml_collections


def method(loss: str, **overrides):
    """A method's options; `loss` is 'cfm' or 'meanflow'."""
    m = ml_collections.ConfigDict()
    m.loss = loss
    m.coupling = "c2ot"  # independent, exact_ot, c2ot (condition-aware OT)
    m.cond_drop_prob = 0.1  # label dropout for classifier-free guidance
    m.time_scale = 1000.0  # t is multiplied by this before the sinusoidal embedding
    m.time_sampler = "uniform"  # uniform, logit_normal
    m.logit_mean = 0.0
    m.logit_std = 1.0
    # MeanFlow only (Geng et al. 2025): (r, t) pairs, adaptive weight, guidance in the target.
    m.equal_fraction = 0.75
    m.weight_power = 1.0
    m.guidance_scale = 1.0  # omega
    m.guidance_mix = 0.0  # kappa
    m.update(overrides)
    return m


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.dataset = "digits"  # or any tfds image set: mnist, fashion_mnist, cifar10, ...
    config.data_dir = ""  # tfds data_dir ("" = tfds' default)
    config.num_classes = 10
    config.conditional = True  # class labels, label dropout and guidance (False: unconditional)
    config.flip = False
    config.methods = ("otcfm", "meanflow")
    config.otcfm = method("cfm")
    config.meanflow = method("meanflow", time_scale=1.0, time_sampler="logit_normal",
                             logit_mean=0.4, equal_fraction=0.5, weight_power=0.5,
                             guidance_scale=2.0, guidance_mix=0.5)

    config.model = ml_collections.ConfigDict()
    config.model.name = "unet"  # unet, dit, mlp
    config.model.channels = 16
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (4,)
    config.model.num_heads = 2
    config.model.num_groups = 8
    config.model.dropout = 0.1
    config.model.patch_size = 2  # dit
    config.model.hidden = 128  # dit
    config.model.depth = 4  # dit
    config.model.mlp_hidden = (512, 512, 512)  # mlp
    config.model.dtype = "float32"  # bfloat16 on accelerators

    config.batch_size = 128
    config.num_train_steps = 3000
    config.learning_rate = 1e-3
    config.warmup_steps = 200
    config.schedule = "cosine"  # cosine (to a tenth) or constant after warm-up
    config.grad_clip = 1.0
    config.ema_decay = 0.999
    config.steps_per_call = 1  # >1 fuses steps in a lax.scan (slow for convolutions on CPU)
    config.log_every = 100
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    # False (the default): each save blocks until it is on disk, so a kill loses at most
    # one interval of steps. True: saves are written in the background while training goes
    # on (faster for large states), and a kill during a write also loses the steps trained
    # since it began.
    config.async_checkpoint = False
    # A step with a NaN/inf loss or gradient is skipped (and counted); this many in a
    # row stop the run (checked when it logs or saves), its last checkpoint kept as it was.
    config.max_consecutive_nonfinite = 20

    # Devices: one mesh axis "data" (batch split over it); "data" replicates the
    # state (data parallel), "fsdp" splits large parameters and Adam's moments too.
    config.sharding = ml_collections.ConfigDict()
    config.sharding.strategy = "data"  # data | fsdp
    config.sharding.num_devices = 0  # 0: every device (of every host)

    config.eval = ml_collections.ConfigDict()
    config.eval.num_samples = 297  # = the held-out split, so the floor has the same n
    config.eval.num_reference = 10_000  # training images (at most) for the feature statistics
    config.eval.guidance_scales = (1.0, 2.0)
    config.eval.guidance_interval = (0.0, 1.0)
    config.eval.euler_steps = (2, 4, 10)
    config.eval.midpoint_steps = (5,)
    config.eval.adaptive = True  # Dopri5
    config.eval.rtol = 1e-5
    config.eval.flow_map_steps = (1, 2)
    config.eval.bpd_subset = 64  # held-out images for bits/dim (0 to skip)
    config.eval.bpd_probes = 4  # Hutchinson probes (0 = exact trace)
    config.eval.bpd_bins = 16  # digits have 17 levels, 2/16 apart on [-1, 1]; 256 for 8-bit
    config.eval.classifier_steps = 1500
    # Classifier guidance (see digits_guidance.py): the unconditional field (null
    # label) steered by a time-dependent classifier on noisy images, Euler steps.
    config.eval.classifier_guidance_scales = ()  # e.g. (0.0, 1.0, 2.0, 4.0); () = off
    config.eval.classifier_guidance_steps = 20
    config.eval.classifier_guidance_interval = (0.0, 1.0)
    config.eval.noisy_classifier_steps = 2000
    config.eval.features = "classifier"  # or "module:factory" (e.g. Inception; see README)
    config.eval.feature_weights = ""  # weights file handed to the factory
    config.plot = True
    return config
