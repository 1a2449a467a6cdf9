"""epee-annotate: batch clinical annotation with early-exit (EPEE) transformers.

The public names below are imported on first access, so ``import epee_annotate`` (and the
command line's ``--help``) does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MultiExitModel": ".model",
    "EPEE": ".policies", "BudgetedExit": ".policies", "EntropyExit": ".policies", "ExitPolicy": ".policies",
    "MaxProbExit": ".policies", "PatienceExit": ".policies", "BEEM": ".policies",
    "Prediction": ".prediction",
    "minilm_path": ".offline",
}

__all__ = [
    "MultiExitModel", "EPEE", "EntropyExit", "PatienceExit", "MaxProbExit", "BudgetedExit", "BEEM", "ExitPolicy",
    "Prediction", "minilm_path", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
