"""flowjax: flow matching, rectified flow and stochastic interpolants in JAX.

The distribution is `flowjax-fm`; the import name is `flowjax`. Subpackages:
`paths`, `time`, `couplings`, `losses`, `sample`, `metrics`, `analytic`,
`data`, `train`, `models`. Each is imported on first use (`flowjax.losses`
or `import flowjax.losses`), so a loss-and-sampler program never imports the
checkpointing, data-set or plotting dependencies.

`set_value_checks(False)` and the `value_checks(False)` context leave the
compiled value checks (times in [0, 1], finiteness, label ranges) out of
programs traced afterwards; `FLOWJAX_VALUE_CHECKS=0` does so from the start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from flowjax._checks import set_value_checks, value_checks, value_checks_enabled

__version__ = "0.1.0"

_SUBPACKAGES = ("analytic", "couplings", "data", "losses", "metrics", "models", "paths",
                "sample", "time", "train")

__all__ = [*_SUBPACKAGES, "__version__", "set_value_checks", "value_checks",
           "value_checks_enabled"]

if TYPE_CHECKING:  # static analysers see the subpackages; at run time they load lazily
    from flowjax import (analytic, couplings, data, losses, metrics, models, paths, sample,
                         time, train)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"flowjax.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'flowjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES))
