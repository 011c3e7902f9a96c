"""Memorization: the exact empirical velocity against a trained MLP, N = 64 and 256 moons points.

Launch (about a minute on a 2-core CPU):

    python -m experiments.memorization --config=experiments/memorization/configs/default.py \
        --workdir=workdir/memorization

Both fields flow N(0, I) to the same small training set along the rectified-flow
path: the exact marginal velocity of its empirical measure (flowjax.analytic),
which is the minimizer of the training CFM loss, and an MLP trained with I-CFM on
it. Targets: moons, 8gaussians, circles, swissroll, scurve, 2spirals, checkerboard.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.target = "moons"
    config.train_sizes = (64, 256)  # nested: the first 64 of the 256 points
    config.num_heldout = 1000  # never trained on: distances (all) and held-out loss (the first N)

    # Model and optimisation: the toy2d experiment's MLP and schedule.
    config.hidden = (128, 128, 128)
    config.time_dim = 32
    config.time_scale = 1000.0
    config.num_train_steps = 5000
    config.batch_size = 256  # drawn with replacement from the N training points
    config.learning_rate = 2e-3
    config.warmup_steps = 100
    config.ema_decay = 0.995
    config.steps_per_call = 100
    config.checkpoint_every = 2500
    config.keep_checkpoints = 1

    config.eval = ml_collections.ConfigDict()
    config.eval.num_samples = 2000  # samples of each field, and fresh data points
    config.eval.rtol = 1e-5  # Dopri5 for both fields
    config.eval.atol = 1e-5
    config.eval.loss_bins = 50  # CFM loss at the midpoints of this many bins of t in [0, 1]
    config.eval.loss_repeats = 4  # source draws per point and time
    config.eval.copy_radius = 0.01  # a sample closer than this to a training point is a copy
    config.eval.use_ema = True
    config.plot = True
    return config
