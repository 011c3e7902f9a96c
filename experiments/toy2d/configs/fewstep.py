"""One- and few-step generation: MeanFlow, reflow and shortcut models beside I-CFM.

N(0, I) -> moons and 8gaussians -> moons, every method with the same step
budget as the default config (2,000 steps of 256). `reflow` trains 2-RF and
3-RF on Dopri5 pairs of I-CFM (warm-started) and distils 2-RF into one step.
About 6 minutes on a 2-core CPU:

    python -m experiments.toy2d --config=experiments/toy2d/configs/fewstep.py \
        --workdir=workdir/toy2d_fewstep
"""

from experiments.toy2d.configs import default


def get_config():
    config = default.get_config()
    config.methods = ("icfm", "otcfm", "sbcfm", "meanflow", "shortcut", "reflow")
    config.eval.euler_steps = (1, 2, 4, 8, 128)
    return config
