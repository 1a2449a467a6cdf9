"""Choose an exit policy's settings on a calibration split for a stated goal.

Goals (metric values are fractions in [0, 1]: ``max_drop=0.005`` means half a point):

- ``max_disagreement=E``: the fastest setting certified to disagree with the full-depth answer
  on at most a share E of new inputs;
- ``max_drop=D`` on accuracy: the fastest setting certified to lose at most D accuracy, through
  the share of inputs the last exit gets right and the policy wrong (which bounds the drop);
- ``max_drop=D`` on macro-F1 or positive micro-F1: certified through the worst-case conversion of a
  disagreement rate into an F1 drop (``bounds.f1_drop_bound``), which needs lower limits on the
  class masses; when no disagreement rate can be certified small enough at this n, the goal is
  refused with the n it would need;
- ``min_speedup=S``: the best in-sample metric among settings whose speed-up lower limit is >= S.

Certification is Learn-then-Test (``selection.fixed_sequence``) with exact binomial p-values;
speed-up limits are empirical-Bernstein bounds on the mean exit layer, Bonferroni-corrected over
the grid so they hold for whichever setting is chosen. The error rate 1 - confidence is split
evenly over every statement printed, so all hold jointly with the stated confidence.
``in_sample=True`` chooses on the calibration split's own values and promises nothing about new
data. Whatever the goal, a guard refuses a setting whose in-sample drop on ANY reported metric
exceeds ``guard_drop`` (``force`` overrides, loudly). Full depth never disagrees with itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from ..evaluation import ExitTable, metric_source, resolve_metric
from ..policies import ExitPolicy, family, full_depth, grid_context, simulate
from .bounds import (
    binomial_pvalue, clopper_pearson_lower, clopper_pearson_upper, disagreement_for_f1_drop,
    empirical_bernstein_upper, examples_to_certify, f1_drop_bound,
)
from .goal import F1_METRICS, CalibrationGoal, GuardError, UncertifiableGoalError
from .result import CalibrationResult, Statement
from .selection import fixed_sequence

log = logging.getLogger(__name__)


@dataclass
class Candidates:
    """The candidate settings, their test paths, and each one replayed on the calibration table."""

    policies: list[ExitPolicy]
    paths: list[list[int]]
    grid: dict[str, Any]
    rows: list[dict[str, Any]]
    exits: list[torch.Tensor]
    hurt: list[int]  # rows the last exit gets right and the candidate wrong

    @property
    def size(self) -> int:
        return len(self.policies)


def candidates(table: ExitTable, family_name: str = "epee", taus: Sequence[float] | None = None,
               patiences: Sequence[int] | None = None, exit_accuracies: Sequence[float] | None = None,
               policies: Sequence[ExitPolicy] | None = None) -> Candidates:
    """The family's grid as ordered paths (or ``policies``, each its own path), replayed on ``table``."""
    if policies is None:
        context = grid_context(table.num_layers, taus, patiences, exit_accuracies)
        index: dict[str, int] = {}
        found: list[ExitPolicy] = []
        paths = []
        for path in family(family_name).paths(context):
            for policy in path:
                if policy.describe() not in index:
                    index[policy.describe()] = len(found)
                    found.append(policy)
            paths.append([index[p.describe()] for p in path])
        grid = {"family": family_name, "taus": list(context.taus), "patiences": list(context.patiences)}
    else:
        found = list(policies)
        paths = [[i] for i in range(len(found))]
        grid = {"policies": [p.describe() for p in found]}
    full = table.predictions(torch.full((table.num_rows,), table.num_layers))
    full_right = full == table.gold
    rows, exits, hurt = [], [], []
    for policy in found:
        layers = simulate(policy, table.probs)
        predicted = table.predictions(layers)
        rows.append({"policy": policy.to_dict(), "name": policy.describe(), **table.evaluate_exits(layers)})
        exits.append(layers)
        hurt.append(int((full_right & (predicted != table.gold)).sum()))
    return Candidates(found, paths, grid, rows, exits, hurt)


# ----- statements about new data --------------------------------------------------------------------
def statement_keys(goal: CalibrationGoal) -> list[str]:
    """The statements a goal prints, each given an equal share of the error rate."""
    if goal.in_sample:
        return []
    if goal.kind == "min_speedup":
        return ["speedup", "disagreement"]
    if goal.kind == "max_drop" and goal.metric in F1_METRICS:
        return ["disagreement", "class_mass", "speedup"]
    return ["accuracy_drop" if goal.kind == "max_drop" else "disagreement", "speedup"]


def class_masses(table: ExitTable, metric: str, alpha: float) -> list[float]:
    """Lower limits on (gold rate + full-depth predicted rate) of each class set the F1 averages over."""
    n, k = table.num_rows, len(table.labels)
    full = table.predictions(torch.full((n,), table.num_layers))
    if metric == "micro_f1_positive":
        negative = table.labels.index(table.negative_label)
        sets = [[c for c in range(k) if c != negative]]
    else:
        sets = [[c] for c in range(k)]
    level = 1.0 - alpha / (2 * len(sets))
    masses = []
    for classes in sets:
        members = torch.tensor(classes)
        gold = int(torch.isin(table.gold, members).sum())
        predicted = int(torch.isin(full, members).sum())
        masses.append(clopper_pearson_lower(gold, n, level) + clopper_pearson_lower(predicted, n, level))
    return masses


def speedup_lower(exits: torch.Tensor, depth: int, confidence: float) -> float:
    """Lower limit on the layer speed-up M / E[exit layer] (empirical Bernstein; exit layers lie in [1, M])."""
    return depth / empirical_bernstein_upper(exits.double().numpy(), 1.0, float(depth), confidence)


@dataclass
class Risk:
    """The risk a max_* goal certifies: counts per candidate, the target rate, and how it reads."""

    key: str
    counts: list[int]
    target: float
    text: str


def risk_for(goal: CalibrationGoal, table: ExitTable, found: Candidates, alpha: float) -> Risk:
    """The risk to test for a max_drop / max_disagreement goal; refuses an F1 goal it cannot certify."""
    disagreements = [row["disagreement_count"] for row in found.rows]
    if goal.kind == "max_disagreement":
        return Risk("disagreement", disagreements, goal.value,
                    f"the expected disagreement with full depth is <= {goal.value:.4g}")
    if goal.metric not in F1_METRICS:
        return Risk("accuracy_drop", found.hurt, goal.value,
                    f"the expected accuracy drop below the last exit is <= {goal.value:.4g} (bounded through the "
                    "share of inputs the last exit gets right and the policy wrong)")
    masses = class_masses(table, goal.metric, alpha)
    target = disagreement_for_f1_drop(goal.value, masses)
    per_path = alpha / max(1, len(found.paths))
    needed = examples_to_certify(target, per_path) if target > 0 else float("inf")
    if table.num_rows < needed:
        plug_in = class_masses(table, goal.metric, 1.0 - 1e-9)  # point estimates of the masses
        about = examples_to_certify(disagreement_for_f1_drop(goal.value, plug_in), per_path)
        raise UncertifiableGoalError(
            f"a {goal.metric} drop <= {goal.value:g} cannot be certified from {table.num_rows} calibration examples: "
            f"F1 is certified through the disagreement rate, and even 0 disagreements in {table.num_rows} examples "
            f"cannot show a rate below {target:.2g}, the most that keeps a worst-case {goal.metric} drop within "
            f"{goal.value:g} (the rarest class sets it). That needs about {about} examples with this class balance. "
            "Use a disagreement goal or an accuracy goal instead, or calibrate on more data")
    drop = f1_drop_bound(target, masses)
    return Risk("disagreement", disagreements, target,
                f"the expected disagreement with full depth is <= {target:.4g}, so the {goal.metric} drop below "
                f"the last exit is <= {drop:.4g} (worst case, with the class masses bounded below)")


def certify(risk: Risk, found: Candidates, n: int, depth: int, alpha: float) -> set[int]:
    """Candidates certified at ``risk.target`` by fixed-sequence testing; full-depth ones need no test."""
    pvalues = [0.0 if policy.is_full_depth(depth) or risk.target >= 1.0 else binomial_pvalue(count, n, risk.target)
               for policy, count in zip(found.policies, risk.counts)]
    return fixed_sequence(found.paths, pvalues, alpha)


# ----- choosing ------------------------------------------------------------------------------------
def calibrate(
    table: ExitTable,
    goal: CalibrationGoal,
    taus: Sequence[float] | None = None,
    patiences: Sequence[int] | None = None,
    family: str = "epee",
    *,
    policies: Sequence[ExitPolicy] | None = None,
    training_metric: str | None = None,
    exit_accuracies: Sequence[float] | None = None,
) -> CalibrationResult:
    """Pick the setting on ``table`` (the calibration split) that meets ``goal``.

    ``goal.metric="auto"`` means the checkpoint's metric (``evaluation.resolve_metric``). The
    candidates are ``family``'s grid on ``taus`` x ``patiences`` (``exit_accuracies``, measured on
    other data, weight BEEM's exits for ``beem-accuracy``), or ``policies``.
    """
    requested = goal.metric
    goal = replace(goal, metric=resolve_metric(goal.metric, table, training_metric))
    found = candidates(table, family, taus, patiences, exit_accuracies, policies)
    reference = table.evaluate(full_depth())
    n, depth, size, names = table.num_rows, table.num_layers, found.size, table.metric_names
    keys = statement_keys(goal)
    alpha = (1.0 - goal.confidence) / max(1, len(keys))
    speed_level = 1.0 - alpha / size  # Bonferroni over the grid: holds for whichever setting is chosen
    ok, risk = _feasible(goal, table, found, reference, alpha, speed_level)
    notes: list[str] = []
    index, fallback, forced, guard_notes = _choose(goal, found, reference, ok, names)
    notes += guard_notes
    policy, chosen = (full_depth(), reference) if fallback else (found.policies[index], found.rows[index])
    statements = [] if policy.is_full_depth(depth) else _statements(
        goal, keys, risk, found, index, n, depth, alpha, speed_level)
    if policy.is_full_depth(depth) and goal.kind != "min_speedup" and not goal.in_sample:
        notes.append(_no_faster_note(goal, risk, found, n, depth, alpha))
    notes += _degenerate_notes(goal, chosen, reference, len(ok), size, depth, fallback)
    for note in notes:
        log.warning("%s", note)
    return CalibrationResult(
        policy=policy, goal=goal, metrics=chosen, reference=reference, n=n, grid_size=size, feasible=len(ok),
        statements=statements, fallback=fallback, grid=found.grid, metric_names=_main_first(goal.metric, names),
        notes=notes, forced=forced, metric_source=metric_source(requested, training_metric, goal.metric),
    )


def _feasible(goal: CalibrationGoal, table: ExitTable, found: Candidates, reference: dict[str, Any], alpha: float,
              speed_level: float) -> tuple[list[int], Risk | None]:
    """The candidates that meet the goal (certified, or in-sample), and the risk tested (max_* goals)."""
    if goal.in_sample:
        return _in_sample_feasible(goal, found, reference), None
    if goal.kind == "min_speedup":
        depth = table.num_layers
        lower = [speedup_lower(e, depth, speed_level) for e in found.exits]
        ok = [i for i in range(found.size) if lower[i] >= goal.value - 1e-12]
        if not ok:
            best = max(range(found.size), key=lower.__getitem__)
            raise ValueError(f"no setting on the grid reaches speed-up {goal.value:g} (the fastest has a lower "
                             f"confidence bound on new data of {lower[best]:.3f}, in-sample "
                             f"{found.rows[best]['speedup']:.3f}); lower the speed-up goal, widen the grid, or "
                             "calibrate on more data")
        return ok, None
    risk = risk_for(goal, table, found, alpha)
    return sorted(certify(risk, found, table.num_rows, table.num_layers, alpha)), risk


def _main_first(metric: str, names: Sequence[str]) -> list[str]:
    return [metric, *(m for m in names if m != metric)]


def _in_sample_feasible(goal: CalibrationGoal, found: Candidates, reference: dict[str, Any]) -> list[int]:
    rows = found.rows
    if goal.kind == "max_drop":
        return [i for i, r in enumerate(rows) if reference[goal.metric] - r[goal.metric] <= goal.value + 1e-12]
    if goal.kind == "min_speedup":
        ok = [i for i, r in enumerate(rows) if r["speedup"] >= goal.value - 1e-12]
        if not ok:
            best = max(rows, key=lambda r: r["speedup"])
            raise ValueError(f"no setting on the grid reaches speed-up {goal.value:g} (the fastest reaches "
                             f"{best['speedup']:.3f}); lower the speed-up goal or widen the grid")
        return ok
    return [i for i, r in enumerate(rows) if r["disagreement"] <= goal.value]


def _key(goal: CalibrationGoal, row: dict[str, Any]) -> tuple:
    if goal.kind == "min_speedup":
        return row[goal.metric], row["speedup"], -row["disagreement"]
    return row["speedup"], row[goal.metric], -row["disagreement"]


def _choose(goal: CalibrationGoal, found: Candidates, reference: dict[str, Any], ok: list[int],
            names: Sequence[str]) -> tuple[int | None, bool, bool, list[str]]:
    """(index of the chosen candidate, fallback to full depth, forced past the guard, notes)."""
    rows, notes = found.rows, []
    guarded = [i for i in ok if all(reference[m] - rows[i][m] <= goal.guard + 1e-12 for m in names)]
    forced = False
    if ok and not guarded:
        best = max(ok, key=lambda i: _key(goal, rows[i]))
        worst = max(names, key=lambda m: reference[m] - rows[best][m])
        message = (f"refused: every setting that meets the goal loses more than {goal.guard:g} on some reported "
                   f"metric; the best, {found.policies[best].describe()}, loses "
                   f"{reference[worst] - rows[best][worst]:.4f} {worst} ({reference[worst]:.4f} -> "
                   f"{rows[best][worst]:.4f}; " + ", ".join(f"{m} {reference[m]:.4f} -> {rows[best][m]:.4f}"
                                                            for m in names) + ")")
        if not goal.force:
            raise GuardError(message + ". Nothing was stored: relax the goal, raise the guard, or force the choice")
        notes.append(message + "; stored anyway because the choice was forced")
        guarded, forced = ok, True
    elif len(guarded) < len(ok):
        notes.append(f"{len(ok) - len(guarded)} of the {len(ok)} settings that met the goal were excluded by the "
                     f"guard (a drop of more than {goal.guard:g} on some reported metric)")
    if not guarded:  # max_drop / max_disagreement: full depth meets them trivially
        return None, True, forced, notes
    return max(guarded, key=lambda i: _key(goal, rows[i])), False, forced, notes


def _statements(goal: CalibrationGoal, keys: list[str], risk: Risk | None, found: Candidates, index: int, n: int,
                depth: int, alpha: float, speed_level: float) -> list[Statement]:
    """What holds on new data for the chosen candidate; one share of alpha each."""
    if goal.in_sample:
        return []
    size = found.size
    speed = speedup_lower(found.exits[index], depth, speed_level)
    out = []
    if risk is not None:
        out.append(Statement(risk.key, risk.text, risk.target, alpha,
                             f"exact binomial tests, fixed sequence along {len(found.paths)} path(s)"))
        if "class_mass" in keys:  # spent on the class-mass limits that the F1 conversion uses
            out.append(Statement("class_mass", "the class masses are at least their Clopper-Pearson lower limits",
                                 0.0, alpha, "Clopper-Pearson, Bonferroni over the class sets"))
    else:  # min_speedup
        count = found.rows[index]["disagreement_count"]
        upper = clopper_pearson_upper(count, n, 1.0 - alpha / size)
        out.append(Statement("disagreement", f"the expected disagreement with full depth is <= {upper:.4g}", upper,
                             alpha, f"Clopper-Pearson, Bonferroni over {size} settings"))
    out.append(Statement("speedup", f"the layer speed-up is >= {speed:.3f}x", speed, alpha,
                         f"empirical Bernstein on the mean exit layer, Bonferroni over {size} settings"))
    return out


def _no_faster_note(goal: CalibrationGoal, risk: Risk | None, found: Candidates, n: int, depth: int,
                    alpha: float) -> str:
    faster = [c for p, c in zip(found.policies, risk.counts if risk else []) if not p.is_full_depth(depth)]
    needed = examples_to_certify(risk.target, alpha / max(1, len(found.paths))) if risk and risk.target < 1 else None
    fewest = min(faster, default=None)
    return (f"no faster setting can be certified to keep the {risk.key.replace('_', ' ') if risk else 'risk'} "
            f"within {risk.target if risk else goal.value:.4g} on new data from {n} calibration examples"
            + (f" (the best candidate had {fewest} of {n})" if fewest is not None else "")
            + "; full depth was kept. "
            + (f"With no disagreements at all it would take at least {needed} examples; " if needed else "")
            + "calibrate on more data, accept a larger value, or choose in-sample")


def _degenerate_notes(goal: CalibrationGoal, chosen: dict[str, Any], reference: dict[str, Any], feasible: int,
                      size: int, depth: int, fallback: bool) -> list[str]:
    """Warnings for choices that look fine on paper but deserve a second look."""
    notes = []
    if goal.in_sample:
        notes.append("in-sample choice: the goal was met on the calibration examples themselves, which says "
                     "nothing about new data (a setting at the edge of the goal often misses it on a test set); "
                     "choose without in_sample for a choice bounded on new data")
    if feasible == size and size > 1:
        notes.append(f"every one of the {size} grid settings met the goal, so the goal did not constrain the choice "
                     "(the fastest/best setting on the grid was taken); a stricter goal or a wider grid may be "
                     "what you meant")
    histogram = chosen.get("exit_histogram") or []
    used = [m for m, count in enumerate(histogram, start=1) if count]
    if not fallback and len(used) == 1 and used[0] < depth:
        better = chosen[goal.metric] >= reference[goal.metric]
        notes.append(f"degenerate setting: every calibration input exits at layer {used[0]} of {depth}, so the later "
                     f"layers are never run" + (f"; exit {used[0]} scores at least as well as the last exit here "
                                                f"({chosen[goal.metric]:.4f} vs {reference[goal.metric]:.4f} "
                                                f"{goal.metric}), which usually means a small or easy calibration "
                                                "split or under-trained later exits" if better else "")
                     + "; check it on held-out data before relying on it")
    return notes

