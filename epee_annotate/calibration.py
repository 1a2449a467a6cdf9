"""Choose EPEE's (entropy threshold, patience) on a calibration split for a stated goal.

Goals (metric values are fractions in [0, 1]: ``max_drop=0.005`` means half an accuracy point):

- ``max_drop=D``: the highest speed-up whose metric is >= (last exit's metric - D) on the split;
- ``min_speedup=S``: the best metric among settings with speed-up >= S;
- ``max_disagreement=E, confidence=C``: the highest speed-up whose rate of answers that differ
  from the full-depth (last exit) answer is <= E with confidence C. Each grid point gets an
  exact one-sided Clopper-Pearson upper bound at level 1 - (1 - C) / G, where G is the grid
  size (Bonferroni), so with probability >= C *all* G bounds hold at once and the guarantee
  survives picking the fastest passing point. Full depth never disagrees with itself and
  needs no test; it is the fallback when nothing passes.

Disagreement needs no labels, so that goal can be calibrated on unlabelled data too; the other
two goals use gold labels. Calibration and reporting must not share data: the calibration
record stores a fingerprint of its data (``data_fingerprint``) and ``check_split`` refuses an
evaluation on the same data.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
T = TypeVar("T")


class SameSplitError(ValueError):
    """Evaluation data overlaps the data the checkpoint was calibrated on."""


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """Exact one-sided upper confidence bound on a binomial rate after k events in n trials."""
    from scipy.stats import beta

    if n <= 0:
        raise ValueError("need at least one trial")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if k == n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


@dataclass(frozen=True)
class CalibrationGoal:
    """What calibration optimises: one of ``GOALS`` with its ``value``."""

    kind: str
    value: float
    metric: str = "auto"
    confidence: float = 0.95

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

    def describe(self) -> str:
        if self.kind == "max_disagreement":
            return f"max_disagreement={self.value:g} at confidence {self.confidence:g}"
        return f"{self.kind}={self.value:g} on {self.metric}"


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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, as stored in the checkpoint's ``calibration`` record."""
        keep = ("accuracy", "macro_f1", "micro_f1_positive", "mean_exit_layer", "saved_fraction", "speedup",
                "disagreement", "disagreement_count")
        return {
            "policy": self.policy.to_dict(),
            "policy_name": self.policy.describe(),
            "goal": asdict(self.goal),
            "metrics": {k: self.metrics[k] for k in keep if k in self.metrics},
            "reference": {k: self.reference[k] for k in keep if k in self.reference},
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
        metric = self.goal.metric
        lines = [
            f"goal: {self.goal.describe()}",
            f"chosen: {self.policy.describe()}" + ("  (nothing passed: full depth kept)" if self.fallback else ""),
            f"calibration split: n={self.n}, grid of {self.grid_size} settings, {self.feasible} met the goal",
            f"{metric}: {m[metric]:.4f} (last exit {r[metric]:.4f}, drop {r[metric] - m[metric]:+.4f})",
            f"speed-up: {m['speedup']:.3f}x (mean exit layer {m['mean_exit_layer']:.2f}, "
            f"saved_fraction {m['saved_fraction']:.3f})",
            f"disagreement with full depth: {m['disagreement']:.4f} ({m['disagreement_count']}/{self.n}); "
            f"upper bound {self.bound:.4f} at confidence {self.confidence:g} "
            f"({CORRECTION} over {self.grid_size}; single-point bound {self.bound_uncorrected:.4f})",
        ]
        return "\n".join(lines)


def _is_full_depth(policy: ExitPolicy, num_layers: int) -> bool:
    """True when the policy answers at the last exit for every possible input."""
    if isinstance(policy, EPEE):
        return policy.entropy == 0.0 and (policy.patience == 0 or policy.patience >= num_layers)
    return policy.to_dict() == full_depth().to_dict()


def calibrate(
    table: ExitTable,
    goal: CalibrationGoal,
    taus: Sequence[float] | None = None,
    patiences: Sequence[int] | None = None,
    family: str = "epee",
) -> CalibrationResult:
    """Pick the setting of ``family`` (``evaluation.policy_grid``) on ``table`` (the calibration split) that meets ``goal``."""
    metric = resolve_metric(goal.metric, table)
    goal = CalibrationGoal(goal.kind, goal.value, metric, goal.confidence)
    taus = sorted({float(t) for t in (DEFAULT_TAUS if taus is None else taus)})
    patiences = sorted({int(p) for p in (default_patiences(table.num_layers) if patiences is None else patiences)})
    policies = policy_grid(table, family, taus, patiences)
    rows = [table.evaluate(policy) for policy in policies]
    reference = table.evaluate(full_depth())
    n, size = table.num_rows, len(policies)
    # Bonferroni: each of the G tests at level (1 - C) / G, so all G bounds hold together w.p. >= C.
    level = bonferroni_level(goal.confidence, size)
    bounds = [
        0.0 if _is_full_depth(p, table.num_layers) else clopper_pearson_upper(r["disagreement_count"], n, level)
        for p, r in zip(policies, rows)
    ]

    if goal.kind == "max_drop":
        ok = [i for i, r in enumerate(rows) if r[metric] >= reference[metric] - goal.value - 1e-12]
        key = lambda i: (rows[i]["speedup"], rows[i][metric], -rows[i]["disagreement"])  # noqa: E731
    elif goal.kind == "min_speedup":
        ok = [i for i, r in enumerate(rows) if r["speedup"] >= goal.value - 1e-12]
        if not ok:
            best = max(r["speedup"] for r in rows)
            raise ValueError(f"no setting on the grid reaches speed-up {goal.value:g} on the calibration split "
                             f"(the fastest reaches {best:.3f}); lower --min-speedup or widen the grid")
        key = lambda i: (rows[i][metric], rows[i]["speedup"], -rows[i]["disagreement"])  # noqa: E731
    else:
        ok = [i for i in range(size) if bounds[i] <= goal.value]
        key = lambda i: (rows[i]["speedup"], -bounds[i], rows[i][metric])  # noqa: E731

    fallback = not ok
    if fallback:  # only max_disagreement can get here; full depth meets it trivially
        policy, chosen, bound = full_depth(), reference, 0.0
    else:
        index = max(ok, key=key)
        policy, chosen, bound = policies[index], rows[index], bounds[index]
    uncorrected = 0.0 if _is_full_depth(policy, table.num_layers) else clopper_pearson_upper(
        chosen["disagreement_count"], n, goal.confidence)
    return CalibrationResult(
        policy=policy, goal=goal, metrics=chosen, reference=reference, n=n, grid_size=size, feasible=len(ok),
        bound=bound, bound_uncorrected=uncorrected, confidence=goal.confidence, fallback=fallback,
        grid={"taus": taus, "patiences": patiences, **({"family": family} if family != "epee" else {})},
    )


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
    family: str = "epee",
) -> CalibrationResult:
    """Calibrate the checkpoint in ``directory`` and store the policy as its default."""
    from .evaluation import find_negative_label
    from .model import MultiExitModel

    if model is None:
        model = MultiExitModel.from_pretrained(directory)
    if negative_label is None and model.task == "relation":
        negative_label = find_negative_label(model.labels)
    table = ExitTable.from_model(model, inputs, gold, negative_label=negative_label, batch_size=batch_size,
                                 progress=progress)
    result = calibrate(table, goal, taus, patiences, family)
    result.data = dict(data or {})
    result.data.setdefault("inputs_sha256", inputs_sha256(inputs))
    result.data.setdefault("n", len(inputs))
    if save:
        model.set_default_policy(result.policy, calibration=result.to_dict())
        model.save_config(directory)
    return result


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

