"""epee-annotate: batch clinical annotation with early-exit (EPEE) transformers."""

__version__ = "0.1.0"

from .model import MultiExitModel  # noqa: E402
from .policies import BEEM, EPEE, BudgetedExit, EntropyExit, ExitPolicy, MaxProbExit, PatienceExit  # noqa: E402
from .prediction import Prediction  # noqa: E402
from .offline import minilm_path  # noqa: E402

__all__ = [
    "MultiExitModel", "EPEE", "EntropyExit", "PatienceExit", "MaxProbExit", "BudgetedExit", "BEEM", "ExitPolicy",
    "Prediction", "minilm_path", "__version__",
]
