"""One resolver for exit-policy settings, used by the spaCy components, both batch jobs and every CLI command.

Settings are flat (``entropy``, ``patience``, ``budget``, ``beem``; None = not set) so spaCy config
overrides and command-line flags address them one by one. Each policy *family* owns some
keys; settings from two families (``budget`` with ``entropy``) are one clear error everywhere,
never a silent choice. A new policy slots in with ``register_family`` (its keys, how to build
it) and is then accepted by every caller; a full saved policy (``{"name": ..., ...}``, see
``policies.policy_from_dict``) is accepted as ``policy`` as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .policies import BEEM, BudgetedExit, ExitPolicy, make_policy, policy_from_dict


@dataclass(frozen=True)
class PolicyFamily:
    """A kind of exit policy, the flat setting keys that select it, and how to build it from them."""

    name: str
    keys: tuple[str, ...]
    build: Callable[[dict[str, Any]], ExitPolicy]


FAMILIES: list[PolicyFamily] = [
    PolicyFamily("budgeted exit", ("budget",), lambda s: BudgetedExit(int(s["budget"]))),
    PolicyFamily("EPEE (entropy and/or patience)", ("entropy", "patience"),
                 lambda s: make_policy(s.get("entropy"), s.get("patience"))),
    PolicyFamily("BEEM", ("beem",), lambda s: BEEM(threshold=float(s["beem"]))),
]


def register_family(family: PolicyFamily) -> None:
    """Make a new policy family's settings known to components, jobs and CLI commands."""
    clash = set(family.keys) & set(setting_keys())
    if clash:
        raise ValueError(f"policy setting keys {sorted(clash)} are already taken")
    FAMILIES.append(family)


def setting_keys() -> tuple[str, ...]:
    """Every flat policy setting key, in family order."""
    return tuple(key for family in FAMILIES for key in family.keys)


def given_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The policy keys of ``settings`` that are set (not None); other keys are ignored."""
    return {k: settings[k] for k in setting_keys() if settings and settings.get(k) is not None}


def resolve_policy(settings: Mapping[str, Any] | None = None, policy: Mapping[str, Any] | None = None,
                   prefix: str = "") -> ExitPolicy | None:
    """The ExitPolicy the settings ask for, or None (nothing set: the checkpoint's default).

    ``settings``: flat keys (see ``setting_keys``). ``policy``: a saved policy dict with ``"name"``,
    or a mapping of flat keys (older configs). ``prefix`` spells keys in messages (``"--"`` for flags).
    """
    flat = given_settings(settings)
    if policy is not None:
        if not isinstance(policy, Mapping):
            raise ValueError(f"{prefix}policy must be null or a mapping, got {type(policy).__name__}")
        if flat:
            raise ValueError(f"give either {prefix}policy or {', '.join(prefix + k for k in flat)}, not both")
        if "name" in policy:
            return policy_from_dict(dict(policy))
        unknown = sorted(set(policy) - set(setting_keys()))
        if unknown:
            raise ValueError(f"unknown policy settings {unknown}; use {', '.join(setting_keys())} or name")
        flat = given_settings(policy)
    if not flat:
        return None
    # Config round trips (thinc) turn 0.3 into 0.30000000000000004: thresholds are not that fine.
    flat = {k: round(v, 12) if isinstance(v, float) else v for k, v in flat.items()}
    chosen = [family for family in FAMILIES if any(k in flat for k in family.keys)]
    if len(chosen) > 1:
        parts = [f"{', '.join(prefix + k for k in family.keys if k in flat)} ({family.name})" for family in chosen]
        unset = "leave out" if prefix else "set to null"
        raise ValueError(f"conflicting exit-policy settings: {' and '.join(parts)}; one policy at a time "
                         f"({unset} the others)")
    return chosen[0].build(flat)


def policy_overrides(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Component settings that replace a pipeline's whole policy with the given one ({} when none is given).

    Every policy key is assigned (unset ones to None), so a saved ``budget = 2`` cannot combine
    with a job's ``--entropy 0.3``.
    """
    flat = given_settings(settings)
    if not flat:
        return {}
    resolve_policy(flat, prefix="--")  # validate here, before any pipeline loads
    return {"policy": None, **{k: flat.get(k) for k in setting_keys()}}
