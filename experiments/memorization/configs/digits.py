"""Memorization on scikit-learn's 8x8 digits (64-D, in [-1, 1]): N = 64 and 256 training images.

Launch (about a minute on a 2-core CPU):

    python -m experiments.memorization --config=experiments/memorization/configs/digits.py \
        --workdir=workdir/memorization_digits

The exact empirical velocity's samples are training images; the MLP's samples
are compared, by pixel distance to the nearest training image, with 500
held-out digits (disjoint random subsets of the 1,797 images).
"""

from experiments.memorization.configs import default


def get_config():
    config = default.get_config()
    config.target = "digits"
    config.num_heldout = 500
    config.hidden = (256, 256, 256)
    config.time_dim = 64
    config.batch_size = 128
    config.learning_rate = 1e-3
    config.eval.num_samples = 500
    return config
