"""The server's heap, kept out of the cyclic garbage collector's way.

A server holds MLflow, pandas, scikit-learn and the model for its whole life: hundreds of
thousands of objects that every full collection walks again, while each request only makes a
few. `settle` hides what is loaded from the collector (`gc.freeze`); called again after a model
swap, it first lets the collector see everything (`gc.unfreeze`), so that the replaced model's
reference cycles are collected rather than frozen for good.
"""

from __future__ import annotations

import gc

__all__ = ["settle"]


def settle() -> None:
    """Collect what is garbage now, then freeze the rest out of the collector's sight."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
