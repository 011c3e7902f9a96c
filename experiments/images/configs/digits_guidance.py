"""Classifier guidance beside classifier-free guidance on the 8x8 digits.

One class-conditional model with 20% label dropout (so its null label is the
unconditional field) on the independent coupling, whose marginals are the
Gaussian path's, as classifier guidance assumes. A time-dependent classifier
is trained on noisy images x_t of the same path (`losses.classifier_loss`,
checkpoints in `checkpoints/noisy_classifier` of the workdir); the unconditional field is sampled
with `sample.ClassifierGuidance` at w = 0, 1, 2, 4 and the conditional model
with classifier-free guidance at w = 1, 2, all with 20 Euler steps, scored
by the clean-image classifier's conditional accuracy (the default
experiment's metrics). About 10 minutes on a 2-core CPU:

    python -m experiments.images --config=experiments/images/configs/digits_guidance.py \
        --workdir=workdir/images_digits_guidance
"""

from experiments.images.configs import default


def get_config():
    config = default.get_config()
    config.methods = ("icfm",)
    config.icfm = default.method("cfm", coupling="independent", cond_drop_prob=0.2)
    config.num_train_steps = 2000
    config.checkpoint_every = 1000
    config.eval.guidance_scales = (1.0, 2.0)
    config.eval.euler_steps = (20,)
    config.eval.midpoint_steps = ()
    config.eval.adaptive = False
    config.eval.bpd_subset = 0
    config.eval.classifier_guidance_scales = (0.0, 1.0, 2.0, 4.0)
    config.eval.classifier_guidance_steps = 20
    config.eval.classifier_guidance_interval = (0.05, 1.0)  # g^2/2 = (1 - t)/t is large near 0
    return config
