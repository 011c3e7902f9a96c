"""Diffusion in the flow view: DDPM's noise prediction and EDM beside flow matching.

N(0, I) -> moons, the default budget for every method (2,000 steps of 256, a
3x128 MLP, EMA 0.995). `vp_eps` is DDPM's L_simple on the VP path, sampled by
the probability-flow ODE (Euler, Dopri5), by the reverse-time SDE
(Euler-Maruyama, `sde-N`) and by EDM's Heun sampler (`heun-N`); `edm` is
EDM's preconditioned denoiser trained with its log-normal noise and weighting,
sampled by its Heun sampler on the rho = 7 grid and by the probability-flow ODE.
About 4 minutes on a 2-core CPU:

    python -m experiments.toy2d --config=experiments/toy2d/configs/diffusion.py \
        --workdir=workdir/toy2d_diffusion
"""

from experiments.toy2d.configs import default


def get_config():
    config = default.get_config()
    config.methods = ("icfm", "otcfm", "sbcfm", "vp_eps", "edm")
    config.sources = ("normal",)
    config.eval.euler_steps = (8, 100)
    return config
