"""Default toy2d comparison: I-CFM, OT-CFM, SB-CFM on N(0, I) -> moons and 8gaussians -> moons.

Launch (this is what `make demo` runs; about 2.5 minutes on a 2-core CPU):

    python -m experiments.toy2d --config=experiments/toy2d/configs/default.py \
        --workdir=workdir/toy2d_demo

Override any field on the command line, e.g. `--config.methods="('icfm','vp')"`.
Methods: icfm, otcfm, otcfm_sinkhorn, sbcfm, fm (Lipman), vp, cosine.
Sources: normal, 8gaussians. Targets: moons, 8gaussians, circles, swissroll,
scurve, 2spirals, checkerboard.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.methods = ("icfm", "otcfm", "sbcfm")
    config.sources = ("normal", "8gaussians")
    config.target = "moons"

    # Model: TorchCFM's 2D examples use a 3x64 MLP; we use 3x128 with SiLU.
    config.hidden = (128, 128, 128)
    config.time_dim = 32

    # Optimisation (same budget for every method).
    config.num_train_steps = 2000
    config.batch_size = 256
    config.learning_rate = 2e-3
    config.warmup_steps = 100
    config.ema_decay = 0.995
    config.steps_per_call = 100  # optimizer steps fused in one lax.scan call
    config.checkpoint_every = 1000

    # Method options.
    config.sigma = 0.0  # TorchCFM's constant sigma for icfm / otcfm
    config.sb_sigma = 1.0  # SB-CFM (TorchCFM's default): bridge noise, entropic eps = 2 sigma^2
    config.sinkhorn_epsilon = 0.05  # otcfm_sinkhorn: a fraction of the cost matrix's std
    config.sigma_min = 0.01  # Lipman's FM path

    # Evaluation.
    config.eval = ml_collections.ConfigDict()
    config.eval.num_samples = 2000
    config.eval.euler_steps = (1, 2, 4, 8, 100)
    config.eval.rtol = 1e-5
    config.eval.atol = 1e-5
    config.eval.num_save = 101  # trajectory points for NPE and straightness
    config.eval.use_ema = True
    config.plot = True
    return config
