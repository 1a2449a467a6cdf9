"""Choose an exit policy's settings on a calibration split for a stated goal.

Goals (metric values are fractions in [0, 1]: ``max_drop=0.005`` means half an accuracy point):

- ``max_drop=D``: the highest speed-up whose drop of ``metric`` below the last exit is <= D;
- ``min_speedup=S``: the best ``metric`` among settings with speed-up >= S;
- ``max_disagreement=E``: the highest speed-up whose rate of answers that differ from the
  full-depth (last exit) answer is <= E.

By default each goal is a statement about NEW data from the same distribution, held with
confidence C (``confidence``) simultaneously for every grid point (Bonferroni: each of the G
points is bounded at level 1 - (1 - C) / G, so the guarantee survives picking the best point):

- disagreement: exact one-sided Clopper-Pearson upper bound on the disagreement rate;
- accuracy drop: exact, from the two kinds of discordant pairs (``accuracy_drop_upper``):
  drop = P(last exit right, policy wrong) - P(policy right, last exit wrong) is bounded by the
  Clopper-Pearson upper bound of the first minus the lower bound of the second, each at half
  the error rate;
- macro-F1 / positive micro-F1 drop: approximate, the in-sample drop plus z * the paired
  bootstrap standard error (Poisson resampling, the same resamples for policy and last exit);
- speed-up: approximate, full depth divided by a normal upper bound on the mean exit layer.

A setting is chosen on its bound, not on its in-sample value, which leaves a margin against
small shifts; ``in_sample=True`` restores the in-sample choice and says that it carries no
statement about new data. Whatever the goal, a guard refuses a setting whose in-sample drop
on ANY reported metric exceeds ``guard_drop`` (``force`` overrides, loudly). Full depth never
disagrees with itself and needs no test; it is the fallback when nothing passes.

Disagreement needs no labels, so that goal can be calibrated on unlabelled data too; the other
two goals use gold labels. Calibration and reporting must not share data: the calibration
record stores a fingerprint of its data (``data_fingerprint``) and ``check_split`` refuses an
evaluation on the same data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np
import torch

from .evaluation import DEFAULT_TAUS, ExitTable, default_patiences, policy_grid, resolve_metric
from .policies import EPEE, ExitPolicy, full_depth

log = logging.getLogger(__name__)

GOALS = ("max_drop", "min_speedup", "max_disagreement")
CORRECTION = "bonferroni"
DEFAULT_GUARD_DROP = 0.02  # two points on any reported metric
BOOTSTRAP_RESAMPLES = 1000
T = TypeVar("T")


class SameSplitError(ValueError):
    """Evaluation data overlaps the data the checkpoint was calibrated on."""


class GuardError(ValueError):
    """Every setting that meets the goal loses more than the guard allows on some metric."""


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """Exact one-sided upper confidence bound on a binomial rate after k events in n trials."""
    from scipy.stats import beta

    _check_binomial(k, n, confidence)
    if k == n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """Exact one-sided lower confidence bound on a binomial rate after k events in n trials."""
    from scipy.stats import beta

    _check_binomial(k, n, confidence)
    if k == 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, k, n - k + 1))


def _check_binomial(k: int, n: int, confidence: float) -> None:
    if n <= 0:
        raise ValueError("need at least one trial")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def accuracy_drop_upper(hurt: int, helped: int, n: int, confidence: float) -> float:
    """Upper bound on the population accuracy drop from the discordant pairs of a paired comparison.

    ``hurt``: rows the reference gets right and the policy wrong; ``helped``: the reverse.
    The drop is p_hurt - p_helped; bounding p_hurt above and p_helped below, each with error
    (1 - confidence) / 2, bounds the drop with ``confidence`` (union bound).
    """
    half = 1.0 - (1.0 - confidence) / 2.0
    return clopper_pearson_upper(hurt, n, half) - clopper_pearson_lower(helped, n, half)


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(level))


@dataclass(frozen=True)
class CalibrationGoal:
    """What calibration optimises: one of ``GOALS`` with its ``value``, and how it is checked."""

    kind: str
    value: float
    metric: str = "auto"
    confidence: float = 0.95
    in_sample: bool = False  # choose on in-sample values (no statement about new data)
    guard_drop: float = DEFAULT_GUARD_DROP  # largest in-sample drop allowed on any reported metric
    force: bool = False  # choose even when the guard refuses every setting that meets the goal

    def __post_init__(self) -> None:
        if self.kind not in GOALS:
            raise ValueError(f"goal must be one of {GOALS}, got {self.kind!r}")
        if self.kind == "max_drop" and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"max_drop is an absolute fraction in [0, 1] (0.005 = 0.5 points), got {self.value}")
        if self.kind == "min_speedup" and self.value < 1.0:
            raise ValueError(f"min_speedup must be >= 1, got {self.value}")
        if self.kind == "max_disagreement" and not 0.0 < self.value < 1.0:
            raise ValueError(f"max_disagreement must be in (0, 1), got {self.value}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0.0 <= self.guard_drop <= 1.0:
            raise ValueError(f"guard_drop is an absolute fraction in [0, 1], got {self.guard_drop}")

    @property
    def guard(self) -> float:
        """The guard bound; an explicit max_drop goal larger than the guard widens it."""
        return max(self.guard_drop, self.value) if self.kind == "max_drop" else self.guard_drop

    def describe(self) -> str:
        where = "on the calibration split only (in-sample)" if self.in_sample else \
            f"on new data, confidence {self.confidence:g}"
        if self.kind == "max_disagreement":
            return f"max_disagreement={self.value:g} at confidence {self.confidence:g}"
        return f"{self.kind}={self.value:g} on {self.metric} {where}"


@dataclass
class CalibrationResult:
    """The chosen policy and the evidence for it."""

    policy: ExitPolicy
    goal: CalibrationGoal
    metrics: dict[str, Any]  # the chosen setting's row on the calibration split
    reference: dict[str, Any]  # the full-depth row on the calibration split
    n: int
    grid_size: int
    feasible: int  # grid points that met the goal
    bound: float  # Bonferroni-corrected Clopper-Pearson upper bound on the disagreement rate
    bound_uncorrected: float  # the same bound for this one point alone (not valid after selection)
    confidence: float
    fallback: bool = False  # nothing passed; full depth was kept
    data: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    bounds: dict[str, Any] = field(default_factory=dict)  # the chosen point's bounds (see ``point_bounds``)
    metric_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user must know about this choice
    forced: bool = False  # the guard refused and ``force`` overrode it

    @property
    def drops(self) -> dict[str, float]:
        """In-sample drop below the last exit of every reported metric."""
        return {m: self.reference[m] - self.metrics[m] for m in self.metric_names}

    def guarantee(self) -> str:
        """What the choice promises, in one sentence."""
        if self.goal.in_sample:
            return ("none on new data: an in-sample choice (it met the goal on these "
                    f"{self.n} calibration examples only)")
        b, metric = self.bounds, self.goal.metric
        parts = [f"{metric} drop <= {b['drop_upper'][metric]:.4f}", f"speed-up >= {b['speedup_lower']:.3f}x",
                 f"disagreement <= {b['disagreement_upper']:.4f}"]
        return (f"with confidence {self.confidence:g} each ({CORRECTION} over {self.grid_size} settings), "
                f"on new data from the same distribution: " + ", ".join(parts)
                + f" ({b['method'][metric]} drop bound, {b['method']['speedup']} speed-up bound)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, as stored in the checkpoint's ``calibration`` record."""
        keep = ("accuracy", "macro_f1", "micro_f1_positive", "mean_exit_layer", "saved_fraction", "speedup",
                "disagreement", "disagreement_count", "exit_histogram")
        return {
            "policy": self.policy.to_dict(),
            "policy_name": self.policy.describe(),
            "goal": asdict(self.goal),
            "metrics": {k: self.metrics[k] for k in keep if k in self.metrics},
            "reference": {k: self.reference[k] for k in keep if k in self.reference},
            "drops": self.drops,
            "bounds": self.bounds,
            "guarantee": self.guarantee(),
            "notes": list(self.notes),
            "forced": self.forced,
            "n": self.n,
            "grid_size": self.grid_size,
            "feasible": self.feasible,
            "disagreement_bound": self.bound,
            "disagreement_bound_uncorrected": self.bound_uncorrected,
            "confidence": self.confidence,
            "correction": CORRECTION,
            "fallback": self.fallback,
            "data": self.data,
            "grid": self.grid,
        }

    def summary(self) -> str:
        """One paragraph for the terminal."""
        m, r = self.metrics, self.reference
        lines = [
            f"goal: {self.goal.describe()}",
            f"chosen: {self.policy.describe()}" + ("  (nothing passed: full depth kept)" if self.fallback else "")
            + ("  (FORCED past the guard)" if self.forced else ""),
            f"calibration split: n={self.n}, grid of {self.grid_size} settings, {self.feasible} met the goal",
        ]
        for name in self.metric_names:
            upper = self.bounds.get("drop_upper", {}).get(name)
            lines.append(f"{name}: {m[name]:.4f} (last exit {r[name]:.4f}, drop {r[name] - m[name]:+.4f}"
                         + (f"; upper bound on new data {upper:+.4f}" if upper is not None else "") + ")")
        lines += [
            f"speed-up: {m['speedup']:.3f}x (mean exit layer {m['mean_exit_layer']:.2f}, "
            f"saved_fraction {m['saved_fraction']:.3f}"
            + (f"; lower bound on new data {self.bounds['speedup_lower']:.3f}x" if self.bounds else "") + ")",
            f"disagreement with full depth: {m['disagreement']:.4f} ({m['disagreement_count']}/{self.n}); "
            f"upper bound {self.bound:.4f} at confidence {self.confidence:g} "
            f"({CORRECTION} over {self.grid_size}; single-point bound {self.bound_uncorrected:.4f})",
            f"guarantee: {self.guarantee()}",
            f"guard: no reported metric may drop more than {self.goal.guard:g} in-sample"
            + (" (overridden by --force)" if self.forced else ""),
        ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _is_full_depth(policy: ExitPolicy, num_layers: int) -> bool:
    """True when the policy answers at the last exit for every possible input."""
    if isinstance(policy, EPEE):
        return policy.entropy == 0.0 and (policy.patience == 0 or policy.patience >= num_layers)
    return policy.to_dict() == full_depth().to_dict()


def calibration_grid(table: ExitTable, taus: Sequence[float] | None = None, patiences: Sequence[int] | None = None,
                     family: str = "epee") -> tuple[list[ExitPolicy], dict[str, Any]]:
    """The candidate policies of ``family`` (``evaluation.policy_grid``) and a description of the grid."""
    taus = sorted({float(t) for t in (DEFAULT_TAUS if taus is None else taus)})
    patiences = sorted({int(p) for p in (default_patiences(table.num_layers) if patiences is None else patiences)})
    grid = {"taus": taus, "patiences": patiences, **({"family": family} if family != "epee" else {})}
    return policy_grid(table, family, taus, patiences), grid


# ----- bounds --------------------------------------------------------------------------------------
class _PairedBootstrap:
    """Paired Poisson-bootstrap standard errors of metric drops (same resamples for every policy)."""

    def __init__(self, table: ExitTable, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0):
        self.table, self.k, self.resamples, self.seed = table, len(table.labels), resamples, seed
        self._weights: np.ndarray | None = None
        self.gold = table.gold.numpy()
        self.negative = table.labels.index(table.negative_label) if table.negative_label is not None else None
        self._reference: dict[str, np.ndarray] = {}
        self.reference_pred = table.predictions(torch.full((table.num_rows,), table.num_layers)).numpy()

    @property
    def weights(self) -> np.ndarray:
        """(resamples, n) Poisson(1) weights, drawn once on first use (accuracy needs none)."""
        if self._weights is None:
            rng = np.random.default_rng(self.seed)
            self._weights = rng.poisson(1.0, size=(self.resamples, self.table.num_rows)).astype(np.float32)
        return self._weights

    def _scores(self, predicted: np.ndarray, metric: str) -> np.ndarray:
        k = self.k
        onehot = np.zeros((len(predicted), k * k), dtype=np.float32)
        onehot[np.arange(len(predicted)), self.gold * k + predicted] = 1.0
        conf = (self.weights @ onehot).reshape(-1, k, k)  # [resample, true, predicted]
        tp = np.einsum("bii->bi", conf)
        if metric == "micro_f1_positive":
            keep = [c for c in range(k) if c != self.negative]
            tp_pos = tp[:, keep].sum(1)
            fp = conf[:, :, keep].sum((1, 2)) - tp_pos
            fn = conf[:, keep, :].sum((1, 2)) - tp_pos
            return _safe_f1(tp_pos, fp, fn)
        if metric == "accuracy":
            return tp.sum(1) / np.maximum(conf.sum((1, 2)), 1.0)
        present = sorted(set(self.gold.tolist()) | set(predicted.tolist()) | set(self.reference_pred.tolist()))
        f1 = _safe_f1(tp, conf.sum(1) - tp, conf.sum(2) - tp)
        return f1[:, present].mean(1)

    def drop_se(self, predicted: np.ndarray, metric: str) -> float:
        if metric not in self._reference:
            self._reference[metric] = self._scores(self.reference_pred, metric)
        return float(np.std(self._reference[metric] - self._scores(predicted, metric), ddof=1))


def _safe_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-12), 0.0)


def point_bounds(table: ExitTable, policy: ExitPolicy, row: dict[str, Any], reference: dict[str, Any],
                 level: float, metrics: Sequence[str], bootstrap: _PairedBootstrap) -> dict[str, Any]:
    """Bounds at per-point confidence ``level``: drop of each of ``metrics``, speed-up, disagreement."""
    n, depth = table.num_rows, table.num_layers
    if _is_full_depth(policy, depth):  # identical answers at identical cost: nothing to bound
        return {"drop_upper": {m: 0.0 for m in metrics}, "speedup_lower": 1.0, "disagreement_upper": 0.0,
                "level": level, "method": {**{m: "exact" for m in metrics}, "speedup": "exact"}}
    from .policies import simulate

    exits = simulate(policy, table.probs)
    predicted = table.predictions(exits)
    full = table.predictions(torch.full((n,), depth))
    right, full_right = predicted == table.gold, full == table.gold
    drops, method = {}, {}
    for metric in metrics:
        if metric == "accuracy":
            drops[metric] = accuracy_drop_upper(int((full_right & ~right).sum()), int((right & ~full_right).sum()),
                                                n, level)
            method[metric] = "exact Clopper-Pearson on discordant pairs"
        else:
            drop = reference[metric] - row[metric]
            drops[metric] = drop + _z(level) * bootstrap.drop_se(predicted.numpy(), metric)
            method[metric] = "approximate paired bootstrap"
    layers = exits.double()
    spread = float(layers.std(unbiased=True)) if n > 1 else float(depth - 1)
    mean_upper = min(float(depth), float(layers.mean()) + _z(level) * spread / math.sqrt(n))
    method["speedup"] = "approximate normal"
    return {"drop_upper": drops, "speedup_lower": depth / mean_upper,
            "disagreement_upper": clopper_pearson_upper(row["disagreement_count"], n, level),
            "level": level, "method": method}


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
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> CalibrationResult:
    """Pick the setting on ``table`` (the calibration split) that meets ``goal``.

    ``goal.metric="auto"`` means ``training_metric`` (the metric that chose the checkpoint's
    epoch) when the table can compute it, else ``resolve_metric``'s default. The candidates are
    ``family``'s grid (``evaluation.policy_grid``) on ``taus`` x ``patiences``, or ``policies``.
    """
    if goal.metric in (None, "auto") and training_metric in table.metric_names:
        metric = training_metric
    else:
        metric = resolve_metric(goal.metric, table)
    goal = CalibrationGoal(goal.kind, goal.value, metric, goal.confidence, goal.in_sample, goal.guard_drop,
                           goal.force)
    if policies is None:
        policies, grid = calibration_grid(table, taus, patiences, family)
    else:
        policies, grid = list(policies), {"policies": [p.describe() for p in policies]}
    rows = [table.evaluate(policy) for policy in policies]
    reference = table.evaluate(full_depth())
    n, size, names = table.num_rows, len(policies), table.metric_names
    # Bonferroni: each of the G tests at level (1 - C) / G, so all G bounds hold together w.p. >= C.
    level = bonferroni_level(goal.confidence, size)
    bootstrap = _PairedBootstrap(table, resamples)
    bounds = [point_bounds(table, p, r, reference, level, [metric], bootstrap) for p, r in zip(policies, rows)]

    if goal.kind == "max_drop":
        value = (lambda i: reference[metric] - rows[i][metric]) if goal.in_sample else \
            (lambda i: bounds[i]["drop_upper"][metric])
        ok = [i for i in range(size) if value(i) <= goal.value + 1e-12]
        key = lambda i: (rows[i]["speedup"], rows[i][metric], -rows[i]["disagreement"])  # noqa: E731
    elif goal.kind == "min_speedup":
        speed = (lambda i: rows[i]["speedup"]) if goal.in_sample else (lambda i: bounds[i]["speedup_lower"])
        ok = [i for i in range(size) if speed(i) >= goal.value - 1e-12]
        if not ok:
            best = max(range(size), key=speed)
            what = "reaches" if goal.in_sample else "has a lower confidence bound on new data of"
            raise ValueError(f"no setting on the grid reaches speed-up {goal.value:g} (the fastest {what} "
                             f"{speed(best):.3f}, in-sample {rows[best]['speedup']:.3f}); lower --min-speedup, "
                             "widen the grid, or calibrate on more data")
        key = lambda i: (rows[i][metric], rows[i]["speedup"], -rows[i]["disagreement"])  # noqa: E731
    else:
        ok = [i for i in range(size) if bounds[i]["disagreement_upper"] <= goal.value]
        key = lambda i: (rows[i]["speedup"], -bounds[i]["disagreement_upper"], rows[i][metric])  # noqa: E731

    notes: list[str] = []
    guarded = [i for i in ok if all(reference[m] - rows[i][m] <= goal.guard + 1e-12 for m in names)]
    forced = False
    if ok and not guarded:
        best = max(ok, key=key)
        worst = max(names, key=lambda m: reference[m] - rows[best][m])
        message = (f"refused: every setting that meets the goal loses more than {goal.guard:g} on some reported "
                   f"metric; the best, {policies[best].describe()}, loses {reference[worst] - rows[best][worst]:.4f} "
                   f"{worst} ({reference[worst]:.4f} -> {rows[best][worst]:.4f}; "
                   + ", ".join(f"{m} {reference[m]:.4f} -> {rows[best][m]:.4f}" for m in names) + ")")
        if not goal.force:
            raise GuardError(message + ". Nothing was stored: relax the goal, raise --guard-drop, or pass --force")
        notes.append(message + "; stored anyway because of --force")
        guarded, forced = ok, True
    elif len(guarded) < len(ok):
        notes.append(f"{len(ok) - len(guarded)} of the {len(ok)} settings that met the goal were excluded by the "
                     f"guard (a drop of more than {goal.guard:g} on some reported metric)")

    fallback = not guarded
    if fallback:  # max_drop / max_disagreement: full depth meets them trivially
        policy, chosen = full_depth(), reference
    else:
        index = max(guarded, key=key)
        policy, chosen = policies[index], rows[index]
    chosen_bounds = point_bounds(table, policy, chosen, reference, level, names, bootstrap)
    if _is_full_depth(policy, table.num_layers) and goal.kind != "min_speedup" and not goal.in_sample:
        faster = [b for p, b in zip(policies, bounds) if not _is_full_depth(p, table.num_layers)]
        if goal.kind == "max_drop":
            tightest, what = min((b["drop_upper"][metric] for b in faster), default=float("nan")), f"{metric} drop"
        else:
            tightest, what = min((b["disagreement_upper"] for b in faster), default=float("nan")), "disagreement"
        notes.append(f"no faster setting can be shown to keep the {what} within {goal.value:g} on new data from "
                     f"{n} calibration examples (the tightest upper bound on the grid is {tightest:.4f}); full "
                     "depth was kept. Calibrate on more data, accept a larger value, or choose in-sample with "
                     "--in-sample")
    notes += _degenerate_notes(goal, chosen, reference, len(guarded), size, table.num_layers, fallback)
    uncorrected = 0.0 if _is_full_depth(policy, table.num_layers) else clopper_pearson_upper(
        chosen["disagreement_count"], n, goal.confidence)
    for note in notes:
        log.warning("%s", note)
    return CalibrationResult(
        policy=policy, goal=goal, metrics=chosen, reference=reference, n=n, grid_size=size, feasible=len(ok),
        bound=chosen_bounds["disagreement_upper"], bound_uncorrected=uncorrected, confidence=goal.confidence,
        fallback=fallback, grid=grid, bounds=chosen_bounds, metric_names=names, notes=notes, forced=forced,
    )


def _degenerate_notes(goal: CalibrationGoal, chosen: dict[str, Any], reference: dict[str, Any], feasible: int,
                      size: int, depth: int, fallback: bool) -> list[str]:
    """Warnings for choices that look fine on paper but deserve a second look."""
    notes = []
    if goal.in_sample:
        notes.append("in-sample choice: the goal was met on the calibration examples themselves, which says "
                     "nothing about new data (a setting at the edge of the goal often misses it on a test set); "
                     "drop --in-sample for a choice bounded on new data")
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


def calibrate_checkpoint(
    directory: str | Path,
    inputs: Sequence[Any],
    gold: Sequence[Any],
    goal: CalibrationGoal,
    *,
    data: dict[str, Any] | None = None,
    taus: Sequence[float] | None = None,
    patiences: Sequence[int] | None = None,
    negative_label: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
    model=None,
    save: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    family: str = "epee",
) -> CalibrationResult:
    """Calibrate the checkpoint in ``directory`` and store the policy as its default.

    With ``out``, the checkpoint is copied there (without any training state) and the copy is
    calibrated; ``directory`` is left as it was.
    """
    from .evaluation import find_negative_label
    from .model import MultiExitModel

    if model is None:
        model = MultiExitModel.from_pretrained(directory)
    if negative_label is None and model.task == "relation":
        negative_label = find_negative_label(model.labels)
    table = ExitTable.from_model(model, inputs, gold, negative_label=negative_label, batch_size=batch_size,
                                 progress=progress)
    training_metric = (model.config.training or {}).get("metric")
    result = calibrate(table, goal, taus, patiences, family, training_metric=training_metric)
    result.data = dict(data or {})
    result.data.setdefault("inputs_sha256", inputs_sha256(inputs))
    result.data.setdefault("n", len(inputs))
    if save:
        target = Path(directory) if out is None else copy_checkpoint(directory, out, overwrite)
        model.set_default_policy(result.policy, calibration=result.to_dict())
        model.save_config(target)
    return result


def copy_checkpoint(source: str | Path, target: str | Path, overwrite: bool = False) -> Path:
    """Copy a checkpoint directory (weights, configs, preprocessor; never ``training_state/``)."""
    import shutil

    from .training import STATE_DIR

    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        return target
    if target.exists():
        if not overwrite and any(target.iterdir()):
            raise FileExistsError(f"{str(target)!r} already exists and is not empty; pick another folder")
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(STATE_DIR))
    return target


# ----- data splits and fingerprints ----------------------------------------------------------------
def split_examples(examples: Sequence[T], fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """Deterministic (calibration part, report part); each keeps the original order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"calibration fraction must be in (0, 1), got {fraction}")
    count = len(examples)
    size = int(round(fraction * count))
    if count and not 0 < size < count:
        raise ValueError(f"a fraction of {fraction} leaves one part of {count} examples empty")
    chosen = np.zeros(count, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(count)[:size]] = True
    first = [e for e, c in zip(examples, chosen) if c]
    rest = [e for e, c in zip(examples, chosen) if not c]
    return first, rest


def _item_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return b"s" + item.encode("utf-8")
    if isinstance(item, bytes):
        return b"b" + item
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        return b"a" + f"{item.dtype}{item.shape}".encode() + np.ascontiguousarray(item).tobytes()
    if hasattr(item, "tobytes") and hasattr(item, "mode") and hasattr(item, "size"):  # PIL image
        return b"i" + f"{item.mode}{item.size}".encode() + item.tobytes()
    if isinstance(item, Path):
        return b"p" + str(item).encode("utf-8")
    return b"j" + json.dumps(item, sort_keys=True, default=str).encode("utf-8")


def inputs_sha256(inputs: Sequence[Any]) -> str:
    """A hash of the ordered inputs (no text is stored, only the digest)."""
    digest = hashlib.sha256()
    for item in inputs:
        data = _item_bytes(item)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def path_sha256(path: str | Path) -> str:
    """SHA-256 of a file, or of a directory's relative paths and file contents."""
    from .checkpoint import file_sha256

    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data path {str(path)!r} does not exist")
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode("utf-8") + b"\0" + file_sha256(child).encode())
    return digest.hexdigest()


def data_fingerprint(
    inputs: Sequence[Any],
    *,
    path: str | Path | None = None,
    format: str | None = None,
    split: str | None = None,
    fraction: float | None = None,
    seed: int | None = None,
    part: str = "all",
    holdout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Where a set of examples came from, without any of its content.

    ``holdout`` describes a selection made before the calibration/report split (e.g. the dev
    documents that training held out of the same file); it is part of the data's identity.
    """
    if part not in ("all", "calibration", "report"):
        raise ValueError(f"part must be all, calibration or report, got {part!r}")
    return {
        "path": str(Path(path).resolve()) if path is not None else None,
        "file_sha256": path_sha256(path) if path is not None else None,
        "format": format,
        "split": split,
        "holdout": holdout,
        "fraction": fraction if part != "all" else None,
        "seed": seed if part != "all" else None,
        "part": part,
        "n": len(inputs),
        "inputs_sha256": inputs_sha256(inputs),
    }


def check_split(
    calibration: dict[str, Any] | None, fingerprint: dict[str, Any], allow_same_split: bool = False
) -> str | None:
    """Refuse (or, when allowed, return a warning for) evaluation on the checkpoint's calibration data."""
    cal = (calibration or {}).get("data") or {}
    problem = None
    if cal.get("inputs_sha256") and cal["inputs_sha256"] == fingerprint.get("inputs_sha256"):
        problem = "the evaluation examples are exactly the examples this checkpoint was calibrated on"
    elif cal.get("file_sha256") and cal.get("file_sha256") == fingerprint.get("file_sha256") \
            and cal.get("split") == fingerprint.get("split"):
        complementary = (
            {cal.get("part"), fingerprint.get("part")} == {"calibration", "report"}
            and all(cal.get(key) == fingerprint.get(key) for key in ("fraction", "seed", "holdout"))
        )
        if not complementary:
            problem = "this checkpoint was calibrated on the same data file"
            if cal.get("part") == "calibration":
                options = f"--calibration-fraction {cal.get('fraction')} --seed {cal.get('seed')}"
                if cal.get("holdout"):
                    holdout = cal["holdout"]
                    options += f" --dev-fraction {holdout['dev_fraction']} --dev-seed {holdout['dev_seed']}"
                problem += f" (its calibration part: {options}); pass the same options to evaluate on the other part"
    if problem is None:
        return None
    if not allow_same_split:
        raise SameSplitError(f"{problem}. Numbers on calibration data are optimistic; use held-out data "
                             "(or --allow-same-split to override)")
    message = f"WARNING: {problem}; the reported numbers are optimistic (calibration data reused)"
    log.warning(message)
    return message


def bonferroni_level(confidence: float, grid_size: int) -> float:
    """Per-test confidence that makes ``grid_size`` simultaneous bounds hold with ``confidence``."""
    return 1.0 - (1.0 - confidence) / max(1, grid_size)

