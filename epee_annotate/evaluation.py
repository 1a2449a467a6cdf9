"""Evaluation of a multi-exit model from one full-depth pass.

``model.exit_probs`` gives every exit's probabilities, an (N, M, K) tensor. Every exit policy
is then replayed on that tensor with ``policies.simulate`` at no model cost, so the two modes
of the EPEE paper come from a single pass:

- budgeted mode: every input answers at exit m (per-exit accuracy, macro-F1, mean entropy);
- dynamic mode: a grid of entropy thresholds x patience values (EPEE), with the entropy-only
  (DeeBERT) and patience-only (PABEE) baselines on the same grid, and BEEM (weighted expert
  confidences) on a grid of score thresholds.

Only wall-clock time needs the real early-exit engine (``model.predict``), so it is measured
for a few chosen policies (``time_policies``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .metrics import classification_metrics
from .policies import ExitPolicy, families, family, full_depth, grid_context, normalized_entropy, simulate
from .timing import time_paired
from .vocab import METRICS

# Label names that mean "no relation" (the DDI 2013 metric is micro-F1 over the other labels).
NEGATIVE_LABEL_NAMES = ("none", "negative", "no_relation", "no-relation", "false")


def find_negative_label(labels: Sequence[str]) -> str | None:
    """The label that means "no relation" (e.g. ``none``), if there is one."""
    for label in labels:
        if str(label).strip().lower() in NEGATIVE_LABEL_NAMES:
            return str(label)
    return None


def encode_gold(gold: Sequence[Any], labels: Sequence[str]) -> torch.Tensor:
    """Gold label names -> ids of ``labels``; a clear error names labels the checkpoint lacks."""
    index = {str(label): i for i, label in enumerate(labels)}
    unseen = sorted({str(label) for label in gold} - set(index))
    if unseen:
        raise ValueError(
            f"the data has labels the checkpoint does not know: {unseen[:10]}"
            f"{' ...' if len(unseen) > 10 else ''}; checkpoint labels: {list(labels)}"
        )
    return torch.tensor([index[str(label)] for label in gold], dtype=torch.long)


# ----- metrics --------------------------------------------------------------------------------
def compute_metrics(
    gold: torch.Tensor, predicted: torch.Tensor, labels: Sequence[str], negative_label: str | None = None
) -> dict[str, float]:
    """accuracy and macro-F1 over all of ``labels``, plus micro-F1 over positive classes with a negative label.

    Macro-F1 averages over the model's whole label set, never over the classes that happen to be
    present: a policy and the last exit are then always averaged over the same classes.
    """
    negative = list(labels).index(negative_label) if negative_label is not None else None
    return classification_metrics(gold, predicted, negative, num_labels=len(labels))


# ----- the exit table ---------------------------------------------------------------------------
@dataclass
class ExitTable:
    """Every exit's probabilities (N, M, K) for N labelled inputs: all that evaluation needs."""

    probs: torch.Tensor
    gold: torch.Tensor
    labels: list[str]
    negative_label: str | None = None
    # Rows a rule answered with negative_label before the model (the DDI 2013 negative rules, as
    # ``epee_ddi`` applies them): their prediction is fixed at every exit and they run no layer.
    ruled: torch.Tensor | None = None
    _last: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.probs = torch.as_tensor(self.probs, dtype=torch.float32).cpu()
        self.gold = torch.as_tensor(self.gold, dtype=torch.long).cpu()
        self.labels = [str(label) for label in self.labels]
        if self.probs.dim() != 3:
            raise ValueError(f"exit probabilities must be (N, M, K), got shape {tuple(self.probs.shape)}")
        if self.probs.size(0) == 0:
            raise ValueError("cannot evaluate on zero examples")
        if self.gold.shape != (self.probs.size(0),):
            raise ValueError(f"need one gold label per row: {tuple(self.gold.shape)} vs {self.probs.size(0)} rows")
        if self.probs.size(2) != len(self.labels):
            raise ValueError(f"{self.probs.size(2)} classes in the probabilities but {len(self.labels)} label names")
        if self.gold.min() < 0 or self.gold.max() >= len(self.labels):
            raise ValueError("gold label ids out of range")
        if self.negative_label is not None and self.negative_label not in self.labels:
            raise ValueError(f"negative label {self.negative_label!r} is not one of {self.labels}")
        if self.ruled is not None:
            self.ruled = torch.as_tensor(self.ruled, dtype=torch.bool).cpu()
            if self.ruled.shape != (self.probs.size(0),):
                raise ValueError(f"need one rule flag per row: {tuple(self.ruled.shape)} vs {self.probs.size(0)} rows")
            if self.negative_label is None:
                raise ValueError("rows answered by a rule need the negative label they are answered with")
            if bool(self.ruled.all()):
                raise ValueError(f"rules answer all {self.num_rows} rows: the model answers none to evaluate")
        self._last = self.predictions(torch.full((self.num_rows,), self.num_layers))

    @classmethod
    def from_model(
        cls,
        model,
        inputs: Sequence[Any],
        gold: Sequence[Any],
        *,
        negative_label: str | None = None,
        ruled: Sequence[bool] | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> "ExitTable":
        """One full-depth pass of ``model`` over ``inputs`` (gold given as label names)."""
        if len(inputs) != len(gold):
            raise ValueError(f"{len(inputs)} inputs but {len(gold)} gold labels")
        if not inputs:
            raise ValueError("cannot evaluate on zero examples")
        gold_ids = encode_gold(gold, model.labels)
        probs = model.exit_probs(list(inputs), batch_size=batch_size, progress=progress)
        return cls(probs, gold_ids, list(model.labels), negative_label,
                   None if ruled is None else torch.tensor(list(ruled), dtype=torch.bool))

    @property
    def num_rows(self) -> int:
        return self.probs.size(0)

    @property
    def num_layers(self) -> int:
        return self.probs.size(1)

    @property
    def rule_rows(self) -> int:
        return 0 if self.ruled is None else int(self.ruled.sum())

    def model_rows(self) -> "ExitTable":
        """The rows the model answers (all of them without rules)."""
        if self.ruled is None:
            return self
        keep = ~self.ruled
        return ExitTable(self.probs[keep], self.gold[keep], self.labels, self.negative_label)

    @property
    def metric_names(self) -> list[str]:
        return list(METRICS) if self.negative_label is not None else list(METRICS[:2])

    def predictions(self, exit_layer: torch.Tensor) -> torch.Tensor:
        """Argmax of the exit each row answered at (1-based ``exit_layer``)."""
        rows = torch.arange(self.num_rows)
        predicted = self.probs[rows, exit_layer.long() - 1].argmax(-1)
        if self.ruled is not None:
            predicted[self.ruled] = self.labels.index(self.negative_label)
        return predicted

    def metrics(self, predicted: torch.Tensor) -> dict[str, float]:
        return compute_metrics(self.gold, predicted, self.labels, self.negative_label)

    def evaluate_exits(self, exit_layer: torch.Tensor) -> dict[str, Any]:
        """Quality, cost and agreement with full depth when row i answers at ``exit_layer[i]``.

        Quality and agreement count every row; cost counts the rows the model answers (a row a
        rule answered runs no layer at any setting, full depth included).
        """
        exit_layer = exit_layer.long().cpu()
        predicted = self.predictions(exit_layer)
        n, depth = self.num_rows, self.num_layers
        modelled = exit_layer if self.ruled is None else exit_layer[~self.ruled]
        run, used = modelled.numel(), int(modelled.sum())
        disagreements = int((predicted != self._last).sum())
        row = {
            **self.metrics(predicted),
            "mean_exit_layer": used / run,
            # Eq. 5 of the EPEE paper: the fraction of layer computations skipped.
            "saved_fraction": 1.0 - used / (run * depth),
            # The same as a ratio: full-depth layers per layer actually run.
            "speedup": depth * run / used,
            "disagreement": disagreements / n,
            "disagreement_count": disagreements,
            "exit_histogram": torch.bincount(modelled, minlength=depth + 1)[1:].tolist(),
        }
        if self.ruled is not None:
            row["rule_rows"] = self.rule_rows
        return row

    def evaluate(self, policy: ExitPolicy) -> dict[str, Any]:
        """One policy replayed on the table: a report row."""
        exits = simulate(policy, self.probs)
        return {"policy": policy.to_dict(), "name": policy.describe(), **self.evaluate_exits(exits)}


# ----- the two modes ----------------------------------------------------------------------------
def budgeted(table: ExitTable) -> list[dict[str, Any]]:
    """Budgeted mode (paper Fig. 3): every input answers at exit m, for each m."""
    rows = []
    for m in range(1, table.num_layers + 1):
        row = table.evaluate_exits(torch.full((table.num_rows,), m, dtype=torch.long))
        rows.append({
            "layer": m,
            **{name: row[name] for name in table.metric_names},
            "mean_entropy": float(normalized_entropy(table.probs[:, m - 1]).mean()),
            "speedup": row["speedup"],
            "saved_fraction": row["saved_fraction"],
            "disagreement": row["disagreement"],
        })
    return rows


def policy_grid(table: ExitTable, name: str, taus: Sequence[float] | None = None,
                patiences: Sequence[int] | None = None,
                exit_accuracies: Sequence[float] | None = None) -> list[ExitPolicy]:
    """The candidate policies of the registered family ``name`` on ``table``'s depth."""
    return family(name).candidates(grid_context(table.num_layers, taus, patiences, exit_accuracies))


def dynamic(
    table: ExitTable,
    taus: Sequence[float] | None = None,
    patiences: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Dynamic mode: every registered family that evaluation reports (EPEE, its baselines, BEEM, ...)."""
    context = grid_context(table.num_layers, taus, patiences)
    grids = {f.name: f.candidates(context) for f in families(report_only=True)}
    total = sum(len(v) for v in grids.values())
    out: dict[str, Any] = {"taus": list(context.taus), "patiences": list(context.patiences)}
    with tqdm(total=total, desc="grid", unit="policy", disable=not progress) as bar:
        for name, policies in grids.items():
            rows = []
            for policy in policies:
                rows.append({"family": name, **_knobs(policy), **table.evaluate(policy)})
                bar.update()
            out[name] = rows
    return out


def _knobs(policy: ExitPolicy) -> dict[str, Any]:
    return {"entropy": getattr(policy, "entropy", None), "patience": getattr(policy, "patience", None),
            "threshold": getattr(policy, "threshold", None)}


def pareto_front(rows: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows no other row beats on both speed-up and ``metric``, by increasing speed-up."""
    ordered = sorted(rows, key=lambda r: (-r["speedup"], -r[metric]))
    front, best = [], float("-inf")
    for row in ordered:
        if row[metric] > best + 1e-12:
            front.append(row)
            best = row[metric]
    return front[::-1]


# ----- wall-clock time ---------------------------------------------------------------------------
def time_policies(
    model,
    inputs: Sequence[Any],
    policies: dict[str, ExitPolicy],
    *,
    batch_size: int = 32,
    repeats: int = 3,
    table: ExitTable | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Time the real early-exit ``model.predict`` for each named policy (full depth always included).

    Paired batch by batch (``timing.time_paired``): each of the length buckets ``predict`` forms is
    one ``predict`` call per policy and repeat; CPU time of this process (all threads) is kept too.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    policies = {"full_depth": full_depth(), **policies}
    inputs = list(inputs)
    buckets = model.batches(model.encode(inputs), batch_size)
    # One small warm-up call so the first timed policy does not pay for lazy initialisation.
    model.predict(inputs[: min(len(inputs), batch_size)], policy=full_depth(), batch_size=batch_size)
    exit_layers = {name: [model.num_layers] * len(inputs) for name in policies}

    def runner(policy: ExitPolicy):
        return lambda bucket: model.predict([inputs[i] for i in bucket], policy=policy, batch_size=batch_size)

    def record(name: str, bucket: Sequence[int], predictions) -> None:
        for i, prediction in zip(bucket, predictions):
            exit_layers[name][i] = prediction.exit_layer

    times = time_paired({name: runner(policy) for name, policy in policies.items()}, buckets, repeats,
                        on_result=record, synchronize=lambda: _synchronize(model), progress=progress)
    out: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        seconds = times[name].seconds
        exits = torch.tensor(exit_layers[name])
        entry: dict[str, Any] = {
            "policy": policy.to_dict(),
            "name": policy.describe(),
            "seconds": seconds,
            "seconds_runs": times[name].repeat_seconds,
            "cpu_seconds": times[name].cpu_seconds,
            "items_per_second": len(inputs) / seconds if seconds > 0 else float("inf"),
            "mean_exit_layer": float(exits.float().mean()),
        }
        if table is not None:
            # The engine runs layer by layer on compacted batches; tiny numeric differences can move
            # a row that sits on a threshold, so report how often it matches the replayed exit.
            entry["exit_layer_match"] = float((simulate(policy, table.probs) == exits).float().mean())
        out[name] = entry
    base, base_cpu = out["full_depth"]["seconds"], out["full_depth"]["cpu_seconds"]
    for entry in out.values():
        entry["wall_speedup"] = base / entry["seconds"] if entry["seconds"] > 0 else float("inf")
        entry["cpu_speedup"] = base_cpu / entry["cpu_seconds"] if entry["cpu_seconds"] > 0 else float("inf")
    return out


def _synchronize(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


# ----- the whole evaluation ------------------------------------------------------------------------
def resolve_metric(metric: str | None, table: ExitTable, training_metric: str | None = None) -> str:
    """The metric every command reports first: ``metric``, or for ``auto``/None the checkpoint's own.

    The checkpoint's metric is the one training selected its epoch on (``training_metric``); without
    a training record, positive micro-F1 when there is a negative label, else accuracy.
    """
    if metric in (None, "auto"):
        if training_metric in table.metric_names:
            return str(training_metric)
        return "micro_f1_positive" if table.negative_label is not None else "accuracy"
    if metric not in table.metric_names:
        hint = " (it needs a negative label such as 'none')" if metric == "micro_f1_positive" else ""
        raise ValueError(f"metric {metric!r} is not available{hint}; choose from {table.metric_names}")
    return metric


def metric_source(requested: str | None, training_metric: str | None, resolved: str) -> str:
    """Where the main metric came from, for reports."""
    if requested not in (None, "auto"):
        return "given"
    if training_metric == resolved:
        return "the checkpoint's: training selected its epoch on it"
    return "default: no training record"


def evaluate_table(
    table: ExitTable,
    *,
    policy: ExitPolicy | None = None,
    grid: bool = True,
    taus: Sequence[float] | None = None,
    patiences: Sequence[int] | None = None,
    metric: str | None = None,
    training_metric: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Budgeted mode, full depth, an optional selected policy and optionally the dynamic grid."""
    requested, metric = metric, resolve_metric(metric, table, training_metric)
    report: dict[str, Any] = {
        "n": table.num_rows,
        "rule_rows": table.rule_rows,  # of n: answered by a rule before the model, outside cost and timing
        "num_layers": table.num_layers,
        "labels": table.labels,
        "negative_label": table.negative_label,
        "metric": metric,
        "metric_source": metric_source(requested, training_metric, metric),
        "metric_names": [metric, *(m for m in table.metric_names if m != metric)],  # the main metric first
        "gold_counts": dict(zip(table.labels, torch.bincount(table.gold, minlength=len(table.labels)).tolist())),
        "budgeted": budgeted(table),
        "full_depth": table.evaluate(full_depth()),
    }
    if policy is not None:
        report["selected"] = table.evaluate(policy)
    if grid:
        report["dynamic"] = dynamic(table, taus, patiences, progress=progress)
        report["dynamic"]["front"] = {
            f.name: [row["name"] for row in pareto_front(report["dynamic"][f.name], metric)]
            for f in families(report_only=True)
        }
    return report


def evaluate_model(
    model,
    inputs: Sequence[Any],
    gold: Sequence[Any],
    *,
    policy: ExitPolicy | None = None,
    grid: bool = True,
    taus: Sequence[float] | None = None,
    patiences: Sequence[int] | None = None,
    metric: str | None = None,
    timing: str = "selected",
    timing_repeats: int = 3,
    negative_label: str | None = None,
    ruled: Sequence[bool] | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Full evaluation of ``model`` on labelled ``inputs``; ``timing`` is none, selected or all.

    ``ruled`` marks the inputs a rule answers with ``negative_label`` before the model (as
    ``epee_ddi`` does): they count in every quality figure and are left out of cost and timing.
    """
    if timing not in ("none", "selected", "all"):
        raise ValueError(f"timing must be none, selected or all, got {timing!r}")
    if negative_label is None and model.task == "relation":
        negative_label = find_negative_label(model.labels)
    table = ExitTable.from_model(model, inputs, gold, negative_label=negative_label, ruled=ruled,
                                 batch_size=batch_size, progress=progress)
    report = evaluate_table(table, policy=policy, grid=grid, taus=taus, patiences=patiences, metric=metric,
                            training_metric=checkpoint_metric(model), progress=progress)
    report["checkpoint"] = {
        "id": model.checkpoint_id,
        "runtime": model.runtime,
        "task": model.task,
        "num_layers": model.num_layers,
        "labels": list(model.labels),
        "default_policy": model.config.default_policy,
        "calibration": model.config.calibration,
    }
    if timing != "none":
        chosen: dict[str, ExitPolicy] = {}
        if policy is not None:
            chosen["selected"] = policy
        if timing == "all" and grid:
            for f in families(report_only=True):
                for row in report["dynamic"][f.name]:
                    chosen[row["name"]] = _policy_of(row)
        timed = inputs if ruled is None else [x for x, r in zip(inputs, ruled) if not r]
        measured = time_policies(model, timed, chosen, batch_size=batch_size, repeats=timing_repeats,
                                 table=table.model_rows(), progress=progress)
        report["timing"] = {"device": str(model.device), "batch_size": batch_size, "repeats": timing_repeats,
                            "policies": measured}
        if timing == "all" and grid:
            for f in families(report_only=True):
                for row in report["dynamic"][f.name]:
                    row["wall_seconds"] = measured[row["name"]]["seconds"]
                    row["wall_speedup"] = measured[row["name"]]["wall_speedup"]
    return report


def checkpoint_metric(model) -> str | None:
    """The metric training selected the checkpoint on (None without a training record)."""
    return ((model.config.training or {}) if model is not None else {}).get("metric")


def _policy_of(row: dict[str, Any]) -> ExitPolicy:
    from .policies import policy_from_dict

    return policy_from_dict(row["policy"])
