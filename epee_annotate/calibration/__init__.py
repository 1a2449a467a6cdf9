"""Calibration: choose an exit policy's settings for a stated goal, with a guarantee on new data.

``choose`` picks the setting (Learn-then-Test over ordered candidate paths), ``bounds`` holds the
tests and limits, ``selection`` the fixed-sequence procedure, ``result`` the statements made,
``data`` the fingerprints that keep calibration, model selection and reporting apart, and
``checkpoint`` stores a choice in a checkpoint. docs/evaluation.md explains the guarantee.
"""

from .bounds import (
    binomial_pvalue, clopper_pearson_lower, clopper_pearson_upper, disagreement_for_f1_drop,
    empirical_bernstein_upper, examples_to_certify, f1_drop_bound,
)
from .checkpoint import calibrate_checkpoint, check_dev_overlap, checkpoint_exit_accuracies, copy_checkpoint
from .choose import calibrate, candidates, class_masses, speedup_lower
from .data import (
    SameSplitError, check_split, data_fingerprint, dev_fingerprint, dev_overlap, inputs_sha256, path_sha256,
    split_examples,
)
from .goal import (
    DEFAULT_GUARD_DROP, GOALS, CalibrationGoal, DevOverlapError, GuardError, UncertifiableGoalError,
)
from .result import CalibrationResult, Statement
from .selection import fixed_sequence

__all__ = [
    "DEFAULT_GUARD_DROP", "GOALS", "CalibrationGoal", "CalibrationResult", "DevOverlapError", "GuardError",
    "SameSplitError", "Statement", "UncertifiableGoalError", "binomial_pvalue", "calibrate",
    "calibrate_checkpoint", "candidates", "check_dev_overlap", "check_split", "checkpoint_exit_accuracies",
    "class_masses", "clopper_pearson_lower", "clopper_pearson_upper", "copy_checkpoint", "data_fingerprint",
    "dev_fingerprint", "dev_overlap", "disagreement_for_f1_drop", "empirical_bernstein_upper",
    "examples_to_certify", "f1_drop_bound", "fixed_sequence", "inputs_sha256", "path_sha256", "speedup_lower",
    "split_examples",
]
