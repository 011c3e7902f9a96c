"""The digits config (the default): class-conditional OT-CFM + guidance and MeanFlow on 8x8 digits.

    python -m experiments.images --config=experiments/images/configs/digits.py \
        --workdir=workdir/images_digits
"""

from experiments.images.configs.default import get_config  # noqa: F401
