"""The independent coupling (I-CFM)."""

from __future__ import annotations

from typing import Any

from flowjax._types import Batch, Cond, KeyArray
from flowjax.couplings._base import AbstractCoupling, CouplingResult, pairs_result
from flowjax.couplings._common import check_call


class Independent(AbstractCoupling):
    """The independent coupling: returns the batch unchanged (its key may be None)."""

    reorders = False

    def __call__(self, key: KeyArray | None, x0: Batch, x1: Batch, *, cond: Cond = None,
                 state: Any = None) -> CouplingResult:
        x0, x1 = check_call(self, key, x0, x1, cond, key_used=False)
        return pairs_result(x0, x1)
