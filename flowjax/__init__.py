"""flowjax: flow matching, rectified flow and stochastic interpolants in JAX.

The distribution is `flowjax-fm`; the import name is `flowjax`. Subpackages:
`paths`, `time`, `couplings`, `losses`, `sample`, `metrics`, `analytic`,
`data`, `train`, `models`.
"""

from flowjax import analytic, couplings, data, losses, metrics, models, paths, sample, time, train

__version__ = "0.1.0"

__all__ = ["analytic", "couplings", "data", "losses", "metrics", "models", "paths",
           "sample", "time", "train"]
