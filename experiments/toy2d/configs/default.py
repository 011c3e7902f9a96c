"""Default toy2d comparison: I-CFM, OT-CFM, SB-CFM on N(0, I) -> moons and 8gaussians -> moons.

Launch (this is what `make demo` runs; about 2 minutes on a 2-core CPU):

    python -m experiments.toy2d --config=experiments/toy2d/configs/default.py \
        --workdir=workdir/toy2d_demo

Override any field on the command line, e.g. `--config.methods="('icfm','vp')"`.
Methods: icfm, otcfm, otcfm_sinkhorn, sbcfm, fm (Lipman), vp, cosine, the
few-step methods meanflow, shortcut and reflow (see `fewstep.py`), and the
diffusion methods vp_eps and edm (Gaussian source only; see `diffusion.py`).
Sources: normal, 8gaussians. Targets: moons, 8gaussians, circles, swissroll,
scurve, 2spirals, checkerboard.
"""

import math

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
    config.time_scale = math.pi  # t's factor in the sinusoidal embedding (period 2: smooth in t)

    # Optimisation (same budget for every method).
    config.num_train_steps = 2000
    config.batch_size = 256
    config.learning_rate = 2e-3
    config.warmup_steps = 100
    config.ema_decay = 0.995
    config.steps_per_call = 100  # optimizer steps fused in one lax.scan call
    config.log_every = 20  # one metrics record (and loss-plot point) per this many steps
    config.print_every = 500  # one console line per this many steps (and at the end)
    config.checkpoint_every = 1000  # orbax saves every this many steps
    config.keep_checkpoints = 2
    # False (the default): each save blocks until it is on disk, so a kill loses at most
    # one interval of steps. True: saves are written in the background while training goes
    # on (faster for large states), and a kill during a write also loses the steps trained
    # since it began.
    config.async_checkpoint = False
    # A step with a NaN/inf loss or gradient is skipped (and counted); this many in a
    # row stop the run (checked when it logs), its last checkpoint kept as it was.
    config.max_consecutive_nonfinite = 20

    # Devices: one mesh axis "data"; the batch is split over it. "data" keeps the
    # state replicated (data parallel), "fsdp" splits large parameters too.
    config.sharding = ml_collections.ConfigDict()
    config.sharding.strategy = "data"  # data | fsdp
    config.sharding.num_devices = 0  # 0: every device (of every host)

    # Method options.
    config.sigma = 0.0  # TorchCFM's constant sigma for icfm / otcfm
    config.sb_sigma = 1.0  # SB-CFM (TorchCFM's default): bridge noise, entropic eps = 2 sigma^2
    config.sinkhorn_epsilon = 0.05  # otcfm_sinkhorn: a fraction of the cost matrix's std
    config.sigma_min = 0.01  # Lipman's FM path

    # MeanFlow (Geng et al. 2025): an average-velocity MLP u(x, r, t).
    config.meanflow = ml_collections.ConfigDict()
    config.meanflow.coupling = "exact_ot"  # independent | exact_ot | sinkhorn
    config.meanflow.times = "uniform"  # or logit_normal (the paper's, loc 0.4 / scale 1.0 here)
    config.meanflow.logit_loc = 0.4
    config.meanflow.logit_scale = 1.0
    config.meanflow.equal_fraction = 0.5  # share of (r, t) pairs with r = t
    config.meanflow.weight_power = 0.5  # adaptive loss weight (|d|^2 + eps)^-p; the paper's p = 1
    config.meanflow.weight_eps = 1e-3
    config.meanflow.time_scale = 1.0  # slow time embedding: jvp targets differentiate it

    # Shortcut models (Frans et al. 2024).
    config.shortcut = ml_collections.ConfigDict()
    config.shortcut.coupling = "exact_ot"
    config.shortcut.finest_steps = 128
    config.shortcut.bootstrap_fraction = 0.25
    config.shortcut.time_scale = 1.0

    # Reflow (Liu et al. 2022): k-rectified flows on ODE pairs of the (k-1)-th, from icfm.
    config.reflow = ml_collections.ConfigDict()
    config.reflow.rounds = 3  # train 2-RF, ..., rounds-RF
    config.reflow.distill = True  # also distil 2-RF into a one-step map
    config.reflow.num_pairs = 16384  # fixed pool of (x0, ODE(x0)) pairs per round
    config.reflow.chunk_size = 4096
    config.reflow.warm_start = True  # start k-RF from the (k-1)-RF weights

    # Diffusion methods (vp_eps, edm; see diffusion.py). EDM (Karras et al. 2022): the
    # paper's log-normal noise and rho = 7 grid; sigma_data ~ the std of moons (2.2).
    config.edm = ml_collections.ConfigDict()
    config.edm.sigma_data = 2.2
    config.edm.p_mean = -1.2
    config.edm.p_std = 1.2
    config.edm.sigma_min = 0.002
    config.edm.sigma_max = 80.0
    config.edm.rho = 7.0

    # Evaluation.
    config.eval = ml_collections.ConfigDict()
    config.eval.num_samples = 2000
    config.eval.euler_steps = (1, 2, 4, 8, 100)
    config.eval.flow_map_steps = (1, 2, 4)  # MeanFlow jumps (shortcut: 1, 2, 4, ..., finest_steps)
    config.eval.sde_steps = (100, 1000)  # reverse-time SDE (vp_eps), Euler-Maruyama steps
    config.eval.heun_steps = (9, 18, 32)  # EDM's Heun sampler (diffusion methods): 2N - 1 NFE
    config.eval.rtol = 1e-5
    config.eval.atol = 1e-5
    config.eval.num_save = 101  # trajectory points for NPE and straightness
    config.eval.use_ema = True
    config.plot = True
    return config
