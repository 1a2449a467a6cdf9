"""Exit policies: when may an input stop at layer m?

Every policy has one decision function, ``step`` (see ``base.ExitPolicy``). ``simulate`` replays
a policy over precomputed per-exit probabilities, which is how evaluation and calibration sweep
settings without re-running the model.

Each policy lives in its own module with a ``SPEC`` (``spec.PolicySpec``): its flat settings with
type, range and help, how to build it, its saved forms, its candidate grids and plot style.
``registry.REGISTRY`` lists them; every entry point derives its options from it. Writing a new
policy: docs/evaluation.md, "Writing a new exit policy".
"""

from __future__ import annotations

from .base import ExitPolicy, normalized_entropy, simulate
from .beem import BEEM, beem_grid, cost_weights
from .budget import BudgetedExit, full_depth
from .epee import EPEE, DEFAULT_TAUS, EntropyExit, PatienceExit, default_patiences
from .maxprob import MaxProbExit
from .registry import (
    REGISTRY, families, family, given_settings, grid_context, policy_from_dict, policy_overrides, resolve_policy,
    setting_keys, settings, settings_table,
)
from .spec import Family, GridContext, PolicySettingError, PolicySpec, Setting

__all__ = [
    "BEEM", "DEFAULT_TAUS", "EPEE", "REGISTRY", "BudgetedExit", "EntropyExit", "ExitPolicy", "Family", "GridContext",
    "MaxProbExit", "PatienceExit", "PolicySettingError", "PolicySpec", "Setting", "beem_grid", "cost_weights",
    "default_patiences", "families", "family", "full_depth", "given_settings", "grid_context", "normalized_entropy",
    "policy_from_dict", "policy_overrides", "resolve_policy", "setting_keys", "settings", "settings_table", "simulate",
]
