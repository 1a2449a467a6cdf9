"""The registered exit policies and the one resolver of policy settings.

Settings are flat (``entropy``, ``patience``, ``budget``, ``beem``, ...; None = not set) so spaCy
config overrides and command-line flags address them one by one. Settings of two policies at
once are one error with one message, whether they come from the CLI, a ``.cfg``, a job or
Python. A full saved policy (``{"name": ..., ...}``) is accepted as ``policy`` as well.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import beem, budget, epee, maxprob
from .base import ExitPolicy
from .spec import Family, GridContext, PolicySettingError, PolicySpec, Setting

# One line per policy; order = order of flags, config keys and report sections.
REGISTRY: list[PolicySpec] = [epee.SPEC, budget.SPEC, beem.SPEC, maxprob.SPEC]


def settings() -> tuple[Setting, ...]:
    """Every flat policy setting, in registry order."""
    return tuple(s for spec in REGISTRY for s in spec.settings)


def setting_keys() -> tuple[str, ...]:
    """Every flat policy setting key, in registry order."""
    return tuple(s.key for s in settings())


def families(report_only: bool = False) -> list[Family]:
    """Every candidate family (``report_only``: those ``evaluate --grid`` sweeps), in registry order."""
    return [f for spec in REGISTRY for f in spec.families if f.in_report or not report_only]


def family(name: str) -> Family:
    """The family called ``name``, or an error listing the known ones."""
    for candidate in families():
        if candidate.name == name:
            return candidate
    raise PolicySettingError(f"unknown policy family {name!r}; known: {', '.join(f.name for f in families())}")


def grid_context(num_layers: int, taus: Sequence[float] | None = None, patiences: Sequence[int] | None = None,
                 exit_accuracies: Sequence[float] | None = None) -> GridContext:
    """The grid axes (defaults: ``epee.DEFAULT_TAUS`` and patience 1..M), checked."""
    taus = tuple(sorted({float(t) for t in (epee.DEFAULT_TAUS if taus is None else taus)}))
    patiences = tuple(sorted({int(p) for p in (epee.default_patiences(num_layers) if patiences is None
                                               else patiences)}))
    if not taus or not patiences:
        raise PolicySettingError("the grid needs at least one entropy threshold and one patience value")
    for tau in taus:
        epee.ENTROPY.check(tau)
    for p in patiences:
        epee.PATIENCE.check(p)
    return GridContext(num_layers, taus, patiences, tuple(exit_accuracies) if exit_accuracies else None)


def policy_from_dict(data: Mapping[str, Any] | None) -> ExitPolicy:
    """Rebuild a saved policy (``ExitPolicy.to_dict`` output); ``None`` gives full depth."""
    if data is None:
        return budget.full_depth()
    name = data.get("name")
    for spec in REGISTRY:
        if any(cls.name == name for cls in spec.classes):
            return spec.load(data)
    known = [cls.name for spec in REGISTRY for cls in spec.classes]
    raise PolicySettingError(f"unknown exit policy {name!r}; known: {', '.join(known)}")


def given_settings(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The policy settings of ``values`` that are set (not None); other keys are ignored."""
    return {k: values[k] for k in setting_keys() if values and values.get(k) is not None}


def _conflict_message(chosen: list[tuple[PolicySpec, list[str]]]) -> str:
    parts = [f"{', '.join(keys)} ({spec.title})" for spec, keys in chosen]
    return (f"conflicting exit-policy settings: {' and '.join(parts)}; give the settings of one policy only "
            "(leave the others unset)")


def resolve_policy(values: Mapping[str, Any] | None = None,
                   policy: Mapping[str, Any] | None = None) -> ExitPolicy | None:
    """The ExitPolicy the settings ask for, or None (nothing set: the checkpoint's default).

    ``values``: flat settings (other keys are ignored, so ``vars(args)`` works). ``policy``: a saved
    policy dict with ``"name"``, or a mapping of flat keys (older configs).
    """
    flat = given_settings(values)
    if policy is not None:
        if not isinstance(policy, Mapping):
            raise PolicySettingError(f"policy must be null or a mapping, got {type(policy).__name__}")
        if flat:
            raise PolicySettingError(f"give either policy or {', '.join(flat)}, not both")
        if "name" in policy:
            return policy_from_dict(policy)
        unknown = sorted(set(policy) - set(setting_keys()))
        if unknown:
            raise PolicySettingError(f"unknown policy settings {unknown}; use {', '.join(setting_keys())} or name")
        flat = given_settings(policy)
    if not flat:
        return None
    by_key = {s.key: s for s in settings()}
    flat = {k: by_key[k].check(v) for k, v in flat.items()}
    chosen = [(spec, [k for k in spec.keys if k in flat]) for spec in REGISTRY if any(k in flat for k in spec.keys)]
    if len(chosen) > 1:
        raise PolicySettingError(_conflict_message(chosen))
    spec = chosen[0][0]
    return spec.build({k: flat[k] for k in spec.keys if k in flat})


def settings_table() -> str:
    """The policy settings as a Markdown table (docs/components.md holds this, checked by a test)."""
    rows = ["| setting | CLI flag | policy | range | meaning |", "|---|---|---|---|---|"]
    for spec in REGISTRY:
        for s in spec.settings:
            rows.append(f"| `{s.key}` | `{s.flag} {s.metavar}` | {spec.title} | {s.range_text()} | {s.help} |")
    return "\n".join(rows)


def policy_overrides(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Component settings that replace a pipeline's whole policy with the given one ({} when none is given).

    Every policy key is assigned (unset ones to None), so a saved ``budget = 2`` cannot combine
    with a job's ``entropy = 0.3``.
    """
    flat = given_settings(values)
    if not flat:
        return {}
    resolve_policy(flat)  # validate here, before any pipeline loads
    return {"policy": None, **{k: flat.get(k) for k in setting_keys()}}
